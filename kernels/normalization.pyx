"""Per-channel kernels over (N, C, inner) views: affine (inference BatchNorm), InstanceNorm, LRN;
and LayerNorm over (rows, n) views."""
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, sqrtf, powf

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel, parallel_items
from kernels.simd cimport use_simd
from kernels.sums cimport ember_row_inv_std

use_simd()


cdef extern from "simd.h" nogil:
    void ember_act_span(float *p, long n, int code, float a, float b)


cdef struct AffineCall:
    const float *x
    float *y
    const float *scale
    const float *shift
    long N, C, L
    int act
    float act_a, act_b
    int nthreads


cdef void affine_plane_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p = (n, c): y = act(x·scale[c] + shift[c])."""
    cdef const AffineCall *c = <const AffineCall *> ctx
    cdef long i, L = c.L
    cdef float s = c.scale[p % c.C], t = c.shift[p % c.C]
    cdef const float *xr = c.x + p * L
    cdef float *yr = c.y + p * L
    for i in range(L):
        yr[i] = xr[i] * s + t
    ember_act_span(yr, L, c.act, c.act_a, c.act_b)


cdef int affine_run(const AffineCall *c) noexcept nogil:
    """y = act(x·scale[c] + shift[c]) plane by plane; always 0."""
    if c.N * c.C * c.L == 0:
        return 0
    parallel_items(threads_for(c.nthreads, c.N * c.C * c.L), c.N * c.C, affine_plane_task,
                   <void *> c)
    return 0


cdef int affine_native(void *state) noexcept nogil:
    return affine_run(<const AffineCall *> state)


cdef class ChannelAffineStep:
    """channel_affine resolved once (bind time): callable, or run by plan.PlanRunner without
    the GIL. It reads scale and shift live, so a caller may refresh them between runs."""
    cdef AffineCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[:, :, ::1] x, float[::1] scale, float[::1] shift,
                  float[:, :, ::1] y, int act, float act_a, float act_b, int nthreads):
        if x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1] or x.shape[2] != y.shape[2]:
            raise ValueError("channel_affine: x and y differ in shape")
        if scale.shape[0] != x.shape[1] or shift.shape[0] != x.shape[1]:
            raise ValueError("channel_affine: scale and shift need one value per channel")
        cdef AffineCall *c = &self.call
        self.keep = (x, scale, shift, y)
        c.N, c.C, c.L = x.shape[0], x.shape[1], x.shape[2]
        c.act, c.act_a, c.act_b, c.nthreads = act, act_a, act_b, nthreads
        if c.N * c.C * c.L:
            c.x, c.y, c.scale, c.shift = &x[0, 0, 0], &y[0, 0, 0], &scale[0], &shift[0]
        self.native.fn = affine_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            affine_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def channel_affine(x, scale, shift, y, int act, float act_a, float act_b, int nthreads):
    """y = act(x·scale[c] + shift[c]); y may be x."""
    ChannelAffineStep(x, scale, shift, y, act, act_a, act_b, nthreads)()


cdef struct PlaneJob:
    # instance_norm and lrn: N·C planes of L floats
    const float *x
    float *y
    const float *scale     # instance_norm
    const float *bias      # instance_norm
    long C, L
    float eps              # instance_norm
    int size               # lrn
    float k, beta, offset  # lrn: alpha/size, beta, bias


cdef void instance_norm_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p = (n, c): two passes in double for the mean and variance."""
    cdef const PlaneJob *j = <const PlaneJob *> ctx
    cdef long i, L = j.L
    cdef const float *xr = j.x + p * L
    cdef float *yr = j.y + p * L
    cdef double mean = 0.0, var = 0.0, d
    for i in range(L):
        mean = mean + xr[i]
    mean = mean / L
    for i in range(L):
        d = xr[i] - mean
        var = var + d * d
    var = var / L
    cdef float k = j.scale[p % j.C] / sqrtf(<float> var + j.eps)
    cdef float t = <float> (j.bias[p % j.C] - mean * k)
    for i in range(L):
        yr[i] = xr[i] * k + t


def instance_norm(float[:, :, ::1] x, float[::1] scale, float[::1] bias, float[:, :, ::1] y,
                  float eps, int nthreads):
    """Per (n, c) plane: (x − mean)/√(var + eps)·scale[c] + bias[c], two passes in double."""
    cdef long N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef PlaneJob j
    if scale.shape[0] < C or bias.shape[0] < C:
        raise ValueError(f"instance_norm: scale and bias need {C} values, have "
                         f"{scale.shape[0]} and {bias.shape[0]}")
    if N * C * L == 0:
        return
    j.x = &x[0, 0, 0]
    j.y = &y[0, 0, 0]
    j.scale = &scale[0]
    j.bias = &bias[0]
    j.C = C
    j.L = L
    j.eps = eps
    with nogil:
        parallel_items(threads_for(nthreads, N * C * L), N * C, instance_norm_task, &j)


cdef void lrn_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p = (n, c): the square sum over its channel window built in y, then y = x / (bias
    + alpha/size · sum)^beta in place."""
    cdef const PlaneJob *j = <const PlaneJob *> ctx
    cdef long i, q, L = j.L, C = j.C, n = p // C, c = p % C
    cdef long lo = max(<long> 0, c - (j.size - 1) // 2), hi = min(C - 1, c + j.size // 2)
    cdef const float *xr
    cdef float *yr = j.y + p * L
    for i in range(L):
        yr[i] = 0.0
    for q in range(lo, hi + 1):
        xr = j.x + (n * C + q) * L
        for i in range(L):
            yr[i] = yr[i] + xr[i] * xr[i]
    xr = j.x + p * L
    for i in range(L):
        yr[i] = xr[i] / powf(j.offset + j.k * yr[i], j.beta)


def lrn(float[:, :, ::1] x, float[:, :, ::1] y, int size, float alpha, float beta, float bias,
        int nthreads):
    """ONNX LRN: the square sum over channels [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉] is built in y,
    then y = x / (bias + alpha/size · sum)^beta in place."""
    cdef long N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef PlaneJob j
    if N * C * L == 0:
        return
    j.x = &x[0, 0, 0]
    j.y = &y[0, 0, 0]
    j.C = C
    j.L = L
    j.size = size
    j.k = alpha / size
    j.beta = beta
    j.offset = bias
    with nogil:
        parallel_items(threads_for(nthreads, N * C * L), N * C, lrn_task, &j)


cdef void layer_norm_row(const float *x, const float *s, const float *b, float *y, long L,
                         float eps, float *mean_out, float *inv_out) noexcept nogil:
    """One row of layer_norm; b, mean_out and inv_out may be NULL."""
    cdef double m
    cdef double inv = ember_row_inv_std(x, L, eps, &m)
    cdef float mean = <float> (x[0] + m), k = <float> inv
    cdef long i
    if b != NULL:
        for i in range(L):
            y[i] = (x[i] - mean) * k * s[i] + b[i]
    else:
        for i in range(L):
            y[i] = (x[i] - mean) * k * s[i]
    if mean_out != NULL:
        mean_out[0] = mean
    if inv_out != NULL:
        inv_out[0] = k


cdef struct LayerNormCall:
    const float *x
    const float *scale
    const float *bias         # or NULL
    float *y
    float *mean_out           # or NULL
    float *inv_out            # or NULL
    long R, L
    float eps
    int nthreads


cdef void layer_norm_task(void *ctx, long r, int worker) noexcept nogil:
    cdef const LayerNormCall *c = <const LayerNormCall *> ctx
    layer_norm_row(c.x + r * c.L, c.scale, c.bias, c.y + r * c.L, c.L, c.eps,
                   c.mean_out + r if c.mean_out != NULL else NULL,
                   c.inv_out + r if c.inv_out != NULL else NULL)


cdef int layer_norm_run(const LayerNormCall *c) noexcept nogil:
    """Every row, parallel over rows; always 0."""
    if c.R == 0 or c.L == 0:
        return 0
    parallel_items(threads_for(c.nthreads, c.R * c.L), c.R, layer_norm_task, <void *> c)
    return 0


cdef int layer_norm_native(void *state) noexcept nogil:
    return layer_norm_run(<const LayerNormCall *> state)


cdef class LayerNormStep:
    """layer_norm resolved once (bind time): callable, or run by plan.PlanRunner without the
    GIL. Reads scale and bias live. Arguments as ``layer_norm``'s."""
    cdef LayerNormCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[:, ::1] x, float[::1] scale, bias, float[:, ::1] y, mean_out,
                  inv_out, float eps, int nthreads):
        cdef float[::1] b_v
        cdef float[::1] mo_v
        cdef float[::1] io_v
        cdef LayerNormCall *c = &self.call
        if x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1] or scale.shape[0] != x.shape[1]:
            raise ValueError("layer_norm: x, y and scale disagree in shape")
        self.keep = (x, scale, bias, y, mean_out, inv_out)
        c.R, c.L, c.eps, c.nthreads = x.shape[0], x.shape[1], eps, nthreads
        c.bias, c.mean_out, c.inv_out = NULL, NULL, NULL
        self.native.fn = layer_norm_native
        self.native.state = &self.call
        if c.R == 0 or c.L == 0:
            return
        if bias is not None:
            b_v = bias
            if b_v.shape[0] != c.L:
                raise ValueError("layer_norm: bias has the wrong size")
            c.bias = &b_v[0]
        if mean_out is not None:
            mo_v = mean_out
            if mo_v.shape[0] != c.R:
                raise ValueError("layer_norm: mean_out has the wrong size")
            c.mean_out = &mo_v[0]
        if inv_out is not None:
            io_v = inv_out
            if io_v.shape[0] != c.R:
                raise ValueError("layer_norm: inv_out has the wrong size")
            c.inv_out = &io_v[0]
        c.x, c.scale, c.y = &x[0, 0], &scale[0], &y[0, 0]

    def __call__(self):
        with nogil:
            layer_norm_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def layer_norm(x, scale, bias, y, mean_out, inv_out, float eps, int nthreads):
    """Each row of x (rows, n): y = (x − mean)·inv·scale + bias, inv = 1/√(var + eps), the
    population variance, parallel over rows. The statistics come from one vectorised pass of
    sums shifted by the row's first value (kernels/sums_kernel.h: float lanes flushed into double
    every 512 values; the shift keeps E[d²] − E[d]² from cancelling when the mean is large).
    bias (float[::1] of n) may be None; mean_out / inv_out (float[::1] of rows, or None)
    receive each row's mean and inv. n ≥ 1."""
    LayerNormStep(x, scale, bias, y, mean_out, inv_out, eps, nthreads)()