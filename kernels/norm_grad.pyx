"""BatchNormalization in training: the forward with batch statistics (and the running-stat
update), and the gradient. Both work per channel over x viewed as (N, C, L), parallel over
channels. The per-channel sums (Σd, Σd², Σdy, Σdy·d with d = x − shift, shift = the channel's
first value) take one vectorised pass (kernels/sums_kernel.h: float lanes flushed into double
every 512 values); the shift keeps E[d²] − E[d]² from cancelling when the mean is large.

LayerNormalization's gradient (at the end) works per row of x viewed as (rows, n)."""
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE

from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd
from kernels.sums cimport ember_moment_sums, ember_row_inv_std

use_simd()


cdef void channel_sums(const float *x, const float *g, long N, long C, long L, long c,
                       float shift, double *s) noexcept nogil:
    """s = (Σd, Σd², Σg, Σg·d) over channel c, d = x − shift (g may be NULL: s[2] = s[3] = 0)."""
    cdef long n
    s[0] = 0.0
    s[1] = 0.0
    s[2] = 0.0
    s[3] = 0.0
    for n in range(N):
        ember_moment_sums(x + (n * C + c) * L, g + (n * C + c) * L if g != NULL else NULL, L,
                          shift, s)


cdef inline void moments_from(double *s, long M, float shift, double *mean,
                              double *var) noexcept nogil:
    """Batch mean and population variance from the shifted sums."""
    cdef double m = s[0] / M, v = s[1] / M - m * m
    mean[0] = shift + m
    var[0] = v if v > 0.0 else 0.0


cdef struct Moments:
    double mean, var


cdef Moments train_channel(const float *xp, float *yp, long N, long C, long L, long c,
                           float scale, float bias, float eps) noexcept nogil:
    """Normalise channel c with its batch statistics, which it returns (a value: each task gets
    its own)."""
    cdef long n, i
    cdef double sums[4]
    cdef float shift = xp[c * L], a, m
    cdef const float *seg
    cdef float *out
    cdef Moments st
    channel_sums(xp, NULL, N, C, L, c, shift, sums)
    moments_from(sums, N * L, shift, &st.mean, &st.var)
    a = <float> (scale / sqrt(st.var + eps))
    m = <float> st.mean
    for n in range(N):
        seg = xp + (n * C + c) * L
        out = yp + (n * C + c) * L
        for i in range(L):
            out[i] = (seg[i] - m) * a + bias
    return st


# One batch_norm_train call with its arguments resolved (see BatchNormTrainStep).
cdef struct TrainCall:
    const float *x
    const float *scale
    const float *bias
    const float *mean_in
    const float *var_in
    float *y
    float *mean_out        # NULL: not asked for
    float *var_out
    long N, C, L
    float eps, momentum
    double var_factor
    int nthreads


cdef void train_channel_task(void *ctx, long c, int worker) noexcept nogil:
    """Channel c normalised with its batch statistics, its running ones updated."""
    cdef TrainCall *t = <TrainCall *> ctx
    cdef Moments st = train_channel(t.x, t.y, t.N, t.C, t.L, c, t.scale[c], t.bias[c], t.eps)
    if t.mean_out != NULL:
        t.mean_out[c] = <float> (t.mean_in[c] * t.momentum + st.mean * (1.0 - t.momentum))
    if t.var_out != NULL:
        t.var_out[c] = <float> (t.var_in[c] * t.momentum
                                + st.var * t.var_factor * (1.0 - t.momentum))


cdef int train_run(TrainCall *t) noexcept nogil:
    """Every channel normalised with its batch statistics, the running ones updated; always 0."""
    if t.C == 0 or t.N * t.L == 0:
        return 0
    ember_parallel(t.nthreads, t.C, train_channel_task, t)
    return 0


cdef int train_native(void *state) noexcept nogil:
    return train_run(<TrainCall *> state)


cdef inline float *optional_ptr(a, long need) except? NULL:
    """The first float of a 1-D float32 array (None: NULL); ValueError when shorter than need."""
    cdef float[::1] v
    if a is None:
        return NULL
    v = a
    if v.shape[0] < need:
        raise ValueError(f"expected at least {need} floats, got {v.shape[0]}")
    return &v[0] if v.shape[0] > 0 else NULL


cdef class BatchNormTrainStep:
    """batch_norm_train with its arguments resolved once (bind time): calling it, or running it
    inside a ``plan.PlanRunner`` with no Python in between. The parameters and running
    statistics are read through pointers taken here, so they must be updated in place (the
    Trainer's optimizers and buffer commits do). Holds its arrays."""
    cdef TrainCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, ::1] x, float[::1] scale, float[::1] bias,
                 float[::1] mean_in, float[::1] var_in, float[:, :, ::1] y, mean_out, var_out,
                 float eps, float momentum, int nthreads, double var_factor=1.0):
        cdef TrainCall *t = &self.call
        t.N, t.C, t.L = x.shape[0], x.shape[1], x.shape[2]
        if y.shape[0] != t.N or y.shape[1] != t.C or y.shape[2] != t.L:
            raise ValueError("batch_norm_train: y's shape differs from x's")
        for name, v in (("scale", scale), ("bias", bias), ("mean", mean_in), ("var", var_in)):
            if v.shape[0] != t.C:
                raise ValueError(f"batch_norm_train: {name} has {v.shape[0]} values, x has "
                                 f"{t.C} channels")
        t.mean_out = optional_ptr(mean_out, t.C)
        t.var_out = optional_ptr(var_out, t.C)
        t.eps, t.momentum, t.var_factor = eps, momentum, var_factor
        t.nthreads = threads_for(nthreads, t.N * t.C * t.L)
        empty = t.C == 0 or t.N * t.L == 0
        t.x = NULL if empty else &x[0, 0, 0]
        t.y = NULL if empty else &y[0, 0, 0]
        t.scale = NULL if t.C == 0 else &scale[0]
        t.bias = NULL if t.C == 0 else &bias[0]
        t.mean_in = NULL if t.C == 0 else &mean_in[0]
        t.var_in = NULL if t.C == 0 else &var_in[0]
        self.keep = (x, scale, bias, mean_in, var_in, y, mean_out, var_out)
        self.native.fn = train_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            train_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def batch_norm_train(x, scale, bias, mean_in, var_in, y, mean_out, var_out, float eps,
                     float momentum, int nthreads, double var_factor=1.0):
    """y = scale·(x − μ)/√(σ² + ε) + bias with the batch's μ and population σ²; mean_out /
    var_out (float[::1] or None) = running·momentum + batch·(1 − momentum) (ONNX opset 15),
    the batch variance multiplied by ``var_factor`` first (n/(n − 1): torch's unbiased update;
    1: ONNX's population one)."""
    BatchNormTrainStep(x, scale, bias, mean_in, var_in, y, mean_out, var_out, eps, momentum,
                       nthreads, var_factor)()


cdef void grad_channel(const float *gp, const float *xp, float *dxp, float *dsp, float *dbp,
                       long N, long C, long L, long c, float scale, const float *mp,
                       const float *vp, float eps, bint training) noexcept nogil:
    """Channel c of BatchNormalization's gradient (see batch_norm_grad)."""
    cdef long M = N * L, n, i
    cdef double sums[4]
    cdef double mu = 0.0, v = 0.0, inv, s_dy, s_dy_xhat
    cdef float shift = 0.0, k_dy, k_x, k_0, m
    cdef const float *gs
    cdef const float *xs
    cdef float *out
    if training:
        shift = xp[c * L] if M > 0 else 0.0
    else:
        shift = mp[c]
    channel_sums(xp, gp, N, C, L, c, shift, sums)
    if not training:
        mu = mp[c]
        v = vp[c]
    elif M > 0:
        moments_from(sums, M, shift, &mu, &v)
    inv = 1.0 / sqrt(v + eps)
    s_dy = sums[2]
    s_dy_xhat = (sums[3] - (mu - shift) * sums[2]) * inv     # Σ dy·(x − μ)·inv = Σ dy·x̂
    if dsp != NULL:
        dsp[c] = <float> s_dy_xhat
    if dbp != NULL:
        dbp[c] = <float> s_dy
    if dxp == NULL or M == 0:
        return
    # dx = k_dy·dy + k_x·(x − μ) + k_0: the formula expanded into per-channel constants
    m = <float> mu
    k_dy = <float> (scale * inv)
    k_x = <float> (-scale * inv * inv * s_dy_xhat / M) if training else 0.0
    k_0 = <float> (-scale * inv * s_dy / M) if training else 0.0
    for n in range(N):
        gs = gp + (n * C + c) * L
        xs = xp + (n * C + c) * L
        out = dxp + (n * C + c) * L
        for i in range(L):
            out[i] = k_dy * gs[i] + k_x * (xs[i] - m) + k_0


# One batch_norm_grad call with its arguments resolved (see BatchNormGradStep).
cdef struct GradCall:
    const float *dy
    const float *x
    const float *scale
    const float *mean      # the frozen statistics (not training), else NULL
    const float *var
    float *dx              # NULL: not asked for
    float *dscale
    float *dbias
    long N, C, L
    float eps
    bint training
    int nthreads


cdef void grad_channel_task(void *ctx, long c, int worker) noexcept nogil:
    cdef GradCall *g = <GradCall *> ctx
    grad_channel(g.dy, g.x, g.dx, g.dscale, g.dbias, g.N, g.C, g.L, c, g.scale[c], g.mean,
                 g.var, g.eps, g.training)


cdef int grad_run(GradCall *g) noexcept nogil:
    """Every channel's gradients; always 0."""
    ember_parallel(g.nthreads, g.C, grad_channel_task, g)
    return 0


cdef int grad_native(void *state) noexcept nogil:
    return grad_run(<GradCall *> state)


cdef class BatchNormGradStep:
    """batch_norm_grad with its arguments resolved once (bind time): calling it, or running it
    inside a ``plan.PlanRunner`` with no Python in between. Holds its arrays."""
    cdef GradCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, ::1] dy, float[:, :, ::1] x, float[::1] scale, mean, var,
                 dx, dscale, dbias, float eps, bint training, int nthreads):
        cdef GradCall *g = &self.call
        cdef float[:, :, ::1] dx_v
        g.N, g.C, g.L = x.shape[0], x.shape[1], x.shape[2]
        if dy.shape[0] != g.N or dy.shape[1] != g.C or dy.shape[2] != g.L:
            raise ValueError("batch_norm_grad: dy's shape differs from x's")
        if scale.shape[0] != g.C:
            raise ValueError(f"batch_norm_grad: scale has {scale.shape[0]} values, x has "
                             f"{g.C} channels")
        g.mean = g.var = NULL
        if not training:
            if mean is None or var is None:
                raise ValueError("batch_norm_grad: inference mode needs mean and var")
            g.mean = optional_ptr(mean, g.C)
            g.var = optional_ptr(var, g.C)
        g.dx = NULL
        if dx is not None:
            dx_v = dx
            if dx_v.shape[0] != g.N or dx_v.shape[1] != g.C or dx_v.shape[2] != g.L:
                raise ValueError("batch_norm_grad: dx's shape differs from x's")
            g.dx = &dx_v[0, 0, 0] if g.N * g.C * g.L > 0 else NULL
        g.dscale = optional_ptr(dscale, g.C)
        g.dbias = optional_ptr(dbias, g.C)
        empty = g.N * g.C * g.L == 0
        g.dy = NULL if empty else &dy[0, 0, 0]
        g.x = NULL if empty else &x[0, 0, 0]
        g.scale = NULL if g.C == 0 else &scale[0]
        g.eps, g.training = eps, training
        g.nthreads = threads_for(nthreads, g.N * g.C * g.L)
        self.keep = (dy, x, scale, mean, var, dx, dscale, dbias)
        self.native.fn = grad_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            grad_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def batch_norm_grad(dy, x, scale, mean, var, dx, dscale, dbias, float eps, bint training,
                    int nthreads):
    """Gradients of BatchNormalization; any of dx (N, C, L) / dscale (C) / dbias (C) may be None.
    training: μ, σ² are the batch's (recomputed from x; mean/var may be None) and
        dx = scale·inv/M·(M·dy − Σdy − x̂·Σdy·x̂),  M = N·L, inv = 1/√(σ² + ε), x̂ = (x − μ)·inv
    else: μ, σ² are the given (frozen) statistics and dx = dy·scale·inv.
    Both: dscale = Σ dy·x̂, dbias = Σ dy."""
    BatchNormGradStep(dy, x, scale, mean, var, dx, dscale, dbias, eps, training, nthreads)()


# ---- LayerNormalization ----------------------------------------------------------------------
cdef enum:
    # Columns one thread sums dscale/dbias over at a time: one cache line of each row.
    COLUMN_BLOCK = 16


cdef void layer_norm_row_grad(const float *g, const float *x, const float *s, float *dx, long L,
                              float eps, float *stat) noexcept nogil:
    """One row: stat = (mean, inv); dx (when not NULL) = inv·(gs − Σgs/n − x̂·Σ(gs·x̂)/n),
    gs = g·s. Shifted sums (kernels/sums_kernel.h) give the statistics, then, with gs written
    into dx, both gradient sums; the statistics never depend on whether dx is asked for."""
    cdef long i
    cdef double sums[4]
    cdef double m
    cdef double inv = ember_row_inv_std(x, L, eps, &m)
    cdef float shift = x[0], a, b
    cdef float mean = <float> (shift + m), k = <float> inv
    stat[0] = mean
    stat[1] = k
    if dx == NULL:
        return
    for i in range(L):
        dx[i] = g[i] * s[i]
    sums[0] = sums[1] = sums[2] = sums[3] = 0.0
    ember_moment_sums(x, dx, L, shift, sums)
    # Σ gs·x̂ = (Σ gs·(x − shift) − (mean − shift)·Σ gs)·inv; subtracted before scaling by
    # inv, so that a row whose terms cancel (n = 1) gives 0
    a = <float> (sums[2] / L)
    b = <float> ((sums[3] - m * sums[2]) * inv / L)
    for i in range(L):
        dx[i] = k * ((dx[i] - a) - (x[i] - mean) * k * b)


cdef void layer_norm_column_sums(const float *g, const float *x, const float *stats, float *ds,
                                 float *db, long R, long L, long j0, long w) noexcept nogil:
    """ds[j] = Σ_rows g·x̂ and db[j] = Σ_rows g for the w ≤ COLUMN_BLOCK columns from j0 (either
    may be NULL), in double."""
    cdef double sd[COLUMN_BLOCK]
    cdef double sb[COLUMN_BLOCK]
    cdef long r, j
    cdef float m, k
    cdef const float *gr
    cdef const float *xr
    for j in range(w):
        sd[j] = 0.0
        sb[j] = 0.0
    for r in range(R):
        m = stats[2 * r]
        k = stats[2 * r + 1]
        gr = g + r * L + j0
        xr = x + r * L + j0
        for j in range(w):
            sb[j] += gr[j]
            sd[j] += gr[j] * ((xr[j] - m) * k)
    for j in range(w):
        if ds != NULL:
            ds[j0 + j] = <float> sd[j]
        if db != NULL:
            db[j0 + j] = <float> sb[j]


cdef struct LayerNormGradJob:
    const float *g
    const float *x
    const float *scale
    float *dx              # NULL: not asked for
    float *dscale
    float *dbias
    float *stats
    long R, L
    float eps


cdef void layer_norm_row_task(void *ctx, long r, int worker) noexcept nogil:
    cdef LayerNormGradJob *j = <LayerNormGradJob *> ctx
    layer_norm_row_grad(j.g + r * j.L, j.x + r * j.L, j.scale,
                        j.dx + r * j.L if j.dx != NULL else NULL, j.L, j.eps, j.stats + 2 * r)


cdef void layer_norm_column_task(void *ctx, long blk, int worker) noexcept nogil:
    cdef LayerNormGradJob *j = <LayerNormGradJob *> ctx
    layer_norm_column_sums(j.g, j.x, j.stats, j.dscale, j.dbias, j.R, j.L, blk * COLUMN_BLOCK,
                           min(<long> COLUMN_BLOCK, j.L - blk * COLUMN_BLOCK))


def layer_norm_grad(float[:, ::1] dy, float[:, ::1] x, float[::1] scale, dx, dscale, dbias,
                    float[::1] stats, float eps, int nthreads):
    """Gradients of LayerNormalization over rows (rows, n) of x, n ≥ 1; any of dx (rows, n) /
    dscale (n) / dbias (n) may be None. With x̂ = (x − mean)·inv, inv = 1/√(var + eps):
    dx = inv·(g − Σg/n − x̂·Σ(g·x̂)/n), g = dy·scale (parallel over rows); dscale = Σ_rows dy·x̂,
    dbias = Σ_rows dy (parallel over blocks of columns). ``stats`` (2·rows floats, scratch)
    holds each row's mean and inv between the two loops."""
    cdef long R = x.shape[0], L = x.shape[1]
    cdef float[:, ::1] dx_v
    cdef float[::1] ds_v
    cdef float[::1] db_v
    cdef LayerNormGradJob job
    cdef int nthreads_used
    if L == 0:
        return
    if stats.shape[0] < 2 * R:
        raise ValueError(f"layer_norm_grad needs {2 * R} floats of stats, got {stats.shape[0]}")
    if R == 0:
        if dscale is not None:
            ds_v = dscale
            ds_v[:] = 0.0
        if dbias is not None:
            db_v = dbias
            db_v[:] = 0.0
        return
    job.dx = job.dscale = job.dbias = NULL
    if dx is not None:
        dx_v = dx
        job.dx = &dx_v[0, 0]
    if dscale is not None:
        ds_v = dscale
        job.dscale = &ds_v[0]
    if dbias is not None:
        db_v = dbias
        job.dbias = &db_v[0]
    job.g, job.x, job.scale, job.stats = &dy[0, 0], &x[0, 0], &scale[0], &stats[0]
    job.R, job.L, job.eps = R, L, eps
    nthreads_used = threads_for(nthreads, R * L)
    with nogil:
        ember_parallel(nthreads_used, R, layer_norm_row_task, &job)
        if job.dscale != NULL or job.dbias != NULL:
            ember_parallel(nthreads_used, (L + COLUMN_BLOCK - 1) // COLUMN_BLOCK,
                           layer_norm_column_task, &job)
