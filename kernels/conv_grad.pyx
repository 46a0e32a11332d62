"""Gradients of the 2-D convolution (ONNX cross-correlation, NCHW float32).

With K = C/group·KH·KW rows (c, kh, kw) and P = OH·OW columns (oh, ow), per image n and group g:

    dW[g] += dY[n, g] · col(X[n, g])ᵀ        (Mg × P) · (P × K)
    dX[n, g] = col2im(W[g]ᵀ · dY[n, g])       (K × Mg) · (Mg × P), then scatter-add

where col(X) is the im2col panel conv2d multiplies by. Pointwise convolutions (1×1, stride 1,
no padding) skip im2col/col2im: their panel *is* the image. Depthwise ones (group == C == M) get
the vectorised plane kernels of depthwise_kernel.h, parallel over channels (dW) or planes (dX).

Parallelism: a batch that splits evenly over the threads runs one image per thread — each
thread accumulates dW into its own partial (thread 0's is dW itself; the others live in scratch
and are summed at the end), so no two threads ever write the same float. Otherwise images run in
turn and each GEMM (and the im2col/col2im around it) uses the whole team.

ConvGradStep is either gradient with its arguments resolved once, runnable GIL-free inside a
plan.PlanRunner.
"""
from cython.parallel cimport prange, parallel, threadid
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memset
from libc.stdlib cimport malloc, free

from kernels.activation cimport ACT_IDENTITY
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.sgemm cimport ember_sgemm
from kernels.simd cimport use_simd
from kernels.parallel cimport threads_for
from kernels.conv_common cimport (ConvShape, conv_shape, is_pointwise, is_depthwise, col_floats,
                                  images_in_parallel, im2col_rows, col2im_channel)
from kernels.depthwise cimport (ember_dw_geom, dw_geom, ember_dw_alloc, ember_dw_buffer_floats,
                                ember_dw_set_taps, ember_dw_input_grad_geom,
                                ember_dw_input_grad_plane, ember_dw_weight_grad_plane,
                                ember_dw8_buffer_floats, ember_dw8_grad_buffer_floats,
                                ember_dw8_forward, ember_dw8_weight_grad,
                                ember_dw8_input_grad_scatter, ember_dw_group,
                                DW8_MAX_PIXELS, dw8_grouped, dw8_groups, dw8_channels)


use_simd()

cdef enum:
    OUT_OF_MEMORY = 1     # a step's error code (GEMM packing or depthwise buffers)

# Depthwise gradients take the channel-group path by the forward's rule (depthwise.pxd) unless a
# test turns it off.
cdef bint dw_grouped = True


def set_depthwise_grouped(bint on):
    """For tests: False keeps depthwise gradients on the per-plane path; returns the previous
    setting."""
    global dw_grouped
    old = dw_grouped
    dw_grouped = on
    return old


cdef inline bint use_grouped(ConvShape *s, long plane) noexcept nogil:
    return dw8_grouped(s, plane, DW8_MAX_PIXELS if dw_grouped else 0)


cdef inline int slots_for(ConvShape *s, int nthreads) noexcept nogil:
    """Images processed at once: one per thread when the batch splits evenly, else 1."""
    return nthreads if images_in_parallel(s.N, nthreads) else 1


cdef inline long weight_floats(ConvShape *s) noexcept nogil:
    return <long> s.M * (s.C // s.group) * s.KH * s.KW


# ---- scratch ------------------------------------------------------------------------------------
cdef long grad_weight_need(ConvShape *s, int slots) noexcept nogil:
    """Scratch floats: an im2col panel per slot (none when pointwise) + a dW partial per slot
    beyond the first."""
    if is_depthwise(s):
        return 0
    return (0 if is_pointwise(s) else col_floats(s) * slots) + weight_floats(s) * (slots - 1)


cdef long grad_input_need(ConvShape *s, int slots) noexcept nogil:
    """Scratch floats: one column panel (K × P) per slot; none for pointwise and depthwise."""
    if is_depthwise(s) or is_pointwise(s):
        return 0
    return col_floats(s) * slots


def conv_grad_weight_scratch_floats(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                    int OW, int stride_h, int stride_w, int pad_top,
                                    int pad_left, int dil_h, int dil_w, int group, int nthreads):
    """Floats of scratch conv_grad_weight needs for this case (0 for depthwise)."""
    cdef ConvShape s = conv_shape(N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    return grad_weight_need(&s, slots_for(&s, max(nthreads, 1)))


def conv_grad_input_scratch_floats(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                   int OW, int stride_h, int stride_w, int pad_top, int pad_left,
                                   int dil_h, int dil_w, int group, int nthreads):
    """Floats of scratch conv_grad_input needs (0 for pointwise and depthwise)."""
    cdef ConvShape s = conv_shape(N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    return grad_input_need(&s, slots_for(&s, max(nthreads, 1)))


# ---- dW -----------------------------------------------------------------------------------------
cdef int weight_grad_image(const float *dy, const float *x, float *acc, float *col, ConvShape *s,
                           int nthreads) noexcept nogil:
    """acc (M × K) += dY[n] · col(X[n])ᵀ, group by group. Returns 0 when out of memory."""
    cdef int g, r, ok = 1
    cdef int Cg = s.C // s.group, Mg = s.M // s.group, K = Cg * s.KH * s.KW
    cdef int P = s.OH * s.OW
    cdef long hw = <long> s.H * s.W
    cdef const float *panel
    for g in range(s.group):
        if is_pointwise(s):
            panel = x + g * Cg * hw          # the image-group is its own K × P panel
        else:
            if threads_for(nthreads, <long> K * P) > 1:
                for r in prange(K, num_threads=nthreads, schedule='static'):
                    im2col_rows(x + g * Cg * hw, col, s, r, r + 1)
            else:
                im2col_rows(x + g * Cg * hw, col, s, 0, K)
            panel = col
        # (Mg × P) · (K × P)ᵀ: B is the panel read transposed (trans_b), accumulated (beta = 1)
        ok = ember_sgemm(0, 1, Mg, K, P, 1.0, dy + <long> g * Mg * P, P, panel, P, 1.0,
                         acc + <long> g * Mg * K, K, NULL, nthreads) and ok
    return ok


# ---- dW of depthwise convs -----------------------------------------------------------------------
cdef int depthwise_weight_grad(const float *dyp, const float *xp, float *dwp, ConvShape *s,
                               int nthreads) noexcept nogil:
    """dW[c, kh, kw] = Σ_n Σ_(oh,ow) dY[n, c, oh, ow] · X[n, c, oh·sh − pt + kh·dh, ow·sw − pl
    + kw·dw]: parallel over channels; per plane the input is packed into phase planes and each
    tap is one vectorised dot (depthwise_kernel.h), float lanes summed into a double per
    channel. Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom g = dw_geom(s)
    cdef int taps = s.KH * s.KW, c, n, t, k, nch, failed = 0
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW
    cdef bint grouped = use_grouped(s, plane_out)
    cdef int group = ember_dw_group(), groups = dw8_groups(s.C)
    cdef long nbuf = ember_dw8_grad_buffer_floats(&g) if grouped else ember_dw_buffer_floats(&g)
    cdef float *buf = NULL
    cdef double *acc = NULL
    cdef long *tap_table = <long *> malloc(sizeof(long) * taps)
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    nthreads = threads_for(nthreads, <long> s.N * s.C * plane_out * taps)
    if grouped:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            acc = <double *> malloc(sizeof(double) * group * taps)
            for c in prange(groups, schedule='static'):
                if buf == NULL or acc == NULL:
                    failed += 1
                else:
                    nch = dw8_channels(s.C, c * group)
                    for t in range(group * taps):
                        acc[t] = 0.0
                    for n in range(s.N):
                        ember_dw8_weight_grad(&g, xp + (<long> n * s.C + c * group) * plane_in,
                                              plane_in,
                                              dyp + (<long> n * s.C + c * group) * plane_out,
                                              plane_out, nch, buf, acc)
                    for k in range(nch):
                        for t in range(taps):
                            dwp[(<long> c * group + k) * taps + t] = <float> acc[t * group + k]
            free(buf)
            free(acc)
    else:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            acc = <double *> malloc(sizeof(double) * taps)
            for c in prange(s.C, schedule='static'):
                if buf == NULL or acc == NULL:
                    failed += 1
                else:
                    for t in range(taps):
                        acc[t] = 0.0
                    for n in range(s.N):
                        ember_dw_weight_grad_plane(&g, xp + (<long> n * s.C + c) * plane_in,
                                                   dyp + (<long> n * s.C + c) * plane_out, acc,
                                                   buf)
                    for t in range(taps):
                        dwp[<long> c * taps + t] = <float> acc[t]
            free(buf)
            free(acc)
    free(tap_table)
    return OUT_OF_MEMORY if failed else 0


# ---- dX -----------------------------------------------------------------------------------------
cdef int input_grad_image(const float *dy, const float *w, float *dx, float *col, ConvShape *s,
                          int nthreads) noexcept nogil:
    """dX[n] = col2im(Wᵀ · dY[n]) group by group. Returns 0 when out of memory."""
    cdef int g, c, ok = 1
    cdef int Cg = s.C // s.group, Mg = s.M // s.group, K = Cg * s.KH * s.KW
    cdef int P = s.OH * s.OW
    cdef long hw = <long> s.H * s.W
    for g in range(s.group):
        if is_pointwise(s):   # the K × P product is dX[n, g] itself
            ok = ember_sgemm(1, 0, K, P, Mg, 1.0, w + <long> g * Mg * K, K,
                             dy + <long> g * Mg * P, P, 0.0, dx + g * Cg * hw, P, NULL,
                             nthreads) and ok
            continue
        # (Mg × K)ᵀ · (Mg × P): A is W[g] read transposed (trans_a)
        ok = ember_sgemm(1, 0, K, P, Mg, 1.0, w + <long> g * Mg * K, K, dy + <long> g * Mg * P,
                         P, 0.0, col, P, NULL, nthreads) and ok
        if threads_for(nthreads, <long> K * P) > 1:
            for c in prange(Cg, num_threads=nthreads, schedule='static'):
                col2im_channel(col, dx + (g * Cg + c) * hw, c, s, 0.0)
        else:
            for c in range(Cg):
                col2im_channel(col, dx + (g * Cg + c) * hw, c, s, 0.0)
    return ok


cdef int depthwise_input_grad(const float *dyp, const float *wp, float *dxp, ConvShape *s,
                              int nthreads) noexcept nogil:
    """dX of a depthwise conv, parallel over (n, c) planes: each plane is the stride-1
    correlation of its dY — zero-inserted by the stride, padded by (K − 1)·dil − pad — with
    the flipped kernel (depthwise_kernel.h), so it runs the forward's vectorised tap loops.
    Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom fwd = dw_geom(s)
    cdef ember_dw_geom g = ember_dw_input_grad_geom(&fwd)
    cdef int taps = s.KH * s.KW, p, c, k, t, nch, failed = 0
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW, first
    cdef bint grouped = use_grouped(s, plane_in)
    cdef int group = ember_dw_group(), groups = dw8_groups(s.C)
    cdef long nbuf = ember_dw8_buffer_floats(&g) + group * taps if grouped else \
        ember_dw_buffer_floats(&g)
    cdef float *buf = NULL
    cdef float *wflip
    cdef long *tap_table = <long *> malloc(sizeof(long) * taps)
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    nthreads = threads_for(nthreads, <long> s.N * s.C * plane_in * taps)
    if grouped and (s.sh > 1 or s.sw > 1):   # strided: scatter, no work on the stride's holes
        nbuf = ember_dw8_buffer_floats(&fwd)   # the scatter needs what the forward does
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * groups, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    c = (p % groups) * group
                    nch = dw8_channels(s.C, c)
                    first = <long> (p // groups) * s.C + c
                    ember_dw8_input_grad_scatter(&fwd, dyp + first * plane_out, plane_out,
                                                 wp + <long> c * taps, dxp + first * plane_in,
                                                 plane_in, nch, buf)
            free(buf)
    elif grouped:   # the forward's channel-group kernel on dY with the flipped weights
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * groups, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    c = (p % groups) * group
                    nch = dw8_channels(s.C, c)
                    first = <long> (p // groups) * s.C + c
                    wflip = buf + nbuf - group * taps
                    for k in range(nch):
                        for t in range(taps):
                            wflip[k * taps + t] = wp[(<long> c + k) * taps + taps - 1 - t]
                    ember_dw8_forward(&g, dyp + first * plane_out, plane_out, wflip, NULL,
                                      dxp + first * plane_in, plane_in, nch, buf,
                                      ACT_IDENTITY, 0.0, 0.0)
            free(buf)
    else:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * s.C, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    ember_dw_input_grad_plane(&g, dyp + p * plane_out, wp + (p % s.C) * taps,
                                              dxp + p * plane_in, buf)
            free(buf)
    free(tap_table)
    return OUT_OF_MEMORY if failed else 0


# ---- the calls, resolved once -----------------------------------------------------------------
cdef enum GradPath:
    PATH_NOTHING      # nothing to write
    PATH_ZERO         # the gradient is all zeros (no taps)
    PATH_DEPTHWISE
    PATH_GEMM         # GEMMs (+ im2col for dW, col2im for dX)

cdef enum GradKind:
    GRAD_WEIGHT
    GRAD_INPUT


cdef struct GradCall:
    ConvShape s
    int kind, path, slots, nthreads
    const float *dy
    const float *other     # x for dW, w for dX
    float *out
    float *scratch
    long out_floats


cdef int weight_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long wsize = c.out_floats, i
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef long col_n = 0 if is_pointwise(s) else col_floats(s)
    cdef float *partials = c.scratch + col_n * c.slots if c.scratch != NULL else NULL
    cdef float *acc
    cdef int t, n, ok = 1
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * wsize)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_weight_grad(c.dy, c.other, c.out, s, c.nthreads)
    memset(c.out, 0, sizeof(float) * wsize)
    if c.slots > 1:
        # slot t takes images t, t + slots, …; each slot owns its accumulator (t > 0: scratch)
        for t in prange(c.slots, num_threads=c.slots, schedule='static'):
            acc = c.out if t == 0 else partials + (t - 1) * wsize
            if t > 0:
                memset(acc, 0, sizeof(float) * wsize)
            n = t
            while n < s.N:
                ok &= weight_grad_image(c.dy + n * y_img, c.other + n * x_img, acc,
                                        c.scratch + t * col_n if c.scratch != NULL else NULL,
                                        s, 1)
                n = n + c.slots
        for i in prange(wsize, num_threads=threads_for(c.nthreads, wsize * c.slots),
                        schedule='static'):
            for t in range(1, c.slots):
                c.out[i] += partials[(t - 1) * wsize + i]
    else:
        for n in range(s.N):
            ok = weight_grad_image(c.dy + n * y_img, c.other + n * x_img, c.out, c.scratch, s,
                                   c.nthreads) and ok
    return 0 if ok else OUT_OF_MEMORY


cdef int input_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef long col_n = col_floats(s)
    cdef int n, ok = 1
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * c.out_floats)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_input_grad(c.dy, c.other, c.out, s, c.nthreads)
    if c.slots > 1:
        for n in prange(s.N, num_threads=c.slots, schedule='static'):
            ok &= input_grad_image(c.dy + n * y_img, c.other, c.out + n * x_img,
                                   c.scratch + threadid() * col_n if c.scratch != NULL else NULL,
                                   s, 1)
    else:
        for n in range(s.N):
            ok = input_grad_image(c.dy + n * y_img, c.other, c.out + n * x_img, c.scratch, s,
                                  c.nthreads) and ok
    return 0 if ok else OUT_OF_MEMORY


cdef int grad_run(GradCall *c) noexcept nogil:
    return weight_run(c) if c.kind == GRAD_WEIGHT else input_run(c)


cdef int grad_native(void *state) noexcept nogil:
    return grad_run(<GradCall *> state)


cdef float *scratch_start(scratch, long *have) except? NULL:
    """The scratch's first float (``have`` gets its length), NULL when there is none."""
    cdef float[::1] view
    have[0] = 0
    if scratch is None:
        return NULL
    view = scratch
    if view.shape[0] == 0:
        return NULL
    have[0] = view.shape[0]
    return &view[0]


cdef int weight_prepare(GradCall *c, float[:, :, :, ::1] dy, float[:, :, :, ::1] x,
                        float[:, :, :, ::1] dweight, scratch, int stride_h, int stride_w,
                        int pad_top, int pad_left, int dil_h, int dil_w, int group,
                        int nthreads) except -1:
    """Check the arguments and fill ``c`` for dW; ValueError when the scratch is short."""
    c.s = conv_shape(x.shape[0], x.shape[1], x.shape[2], x.shape[3], dy.shape[1],
                     dweight.shape[2], dweight.shape[3], dy.shape[2], dy.shape[3], stride_h,
                     stride_w, pad_top, pad_left, dil_h, dil_w, group)
    cdef ConvShape *s = &c.s
    cdef long have = 0, need
    c.kind, c.nthreads, c.slots, c.scratch = GRAD_WEIGHT, max(nthreads, 1), 1, NULL
    c.out_floats = weight_floats(s)
    c.path = PATH_NOTHING
    if c.out_floats == 0:
        return 0
    c.out = &dweight[0, 0, 0, 0]
    if s.N == 0 or s.OH == 0 or s.OW == 0 or s.C == 0:
        c.path = PATH_ZERO
        return 0
    c.dy, c.other = &dy[0, 0, 0, 0], &x[0, 0, 0, 0]
    if is_depthwise(s):
        c.path = PATH_DEPTHWISE
        return 0
    c.path = PATH_GEMM
    c.scratch = scratch_start(scratch, &have)
    c.slots = slots_for(s, c.nthreads)
    while c.slots > 1 and have < grad_weight_need(s, c.slots):
        c.slots -= 1          # less scratch than planned: fewer images at once, same result
    need = grad_weight_need(s, 1)
    if c.slots == 1 and need > have:
        raise ValueError(f"conv_grad_weight: scratch holds {have} floats, needs {need}")
    return 0


cdef int input_prepare(GradCall *c, float[:, :, :, ::1] dy, float[:, :, :, ::1] w,
                       float[:, :, :, ::1] dx, scratch, int stride_h, int stride_w, int pad_top,
                       int pad_left, int dil_h, int dil_w, int group, int nthreads) except -1:
    """Check the arguments and fill ``c`` for dX; ValueError when the scratch is short."""
    c.s = conv_shape(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1],
                     w.shape[2], w.shape[3], dy.shape[2], dy.shape[3], stride_h, stride_w,
                     pad_top, pad_left, dil_h, dil_w, group)
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, col_n = col_floats(s), have = 0
    c.kind, c.nthreads, c.slots, c.scratch = GRAD_INPUT, max(nthreads, 1), 1, NULL
    c.path = PATH_NOTHING
    c.out_floats = s.N * x_img
    if s.N == 0 or x_img == 0:
        return 0
    c.out = &dx[0, 0, 0, 0]
    if s.M == 0 or s.OH == 0 or s.OW == 0:
        c.path = PATH_ZERO
        return 0
    c.dy, c.other = &dy[0, 0, 0, 0], &w[0, 0, 0, 0]
    if is_depthwise(s):
        c.path = PATH_DEPTHWISE
        return 0
    c.path = PATH_GEMM
    c.slots = slots_for(s, c.nthreads)
    if not is_pointwise(s):
        c.scratch = scratch_start(scratch, &have)
        if have < col_n:
            raise ValueError(f"conv_grad_input: scratch holds {have} floats, needs {col_n}")
        c.slots = <int> min(<long> c.slots, have // col_n)
    return 0


cdef class ConvGradStep:
    """conv_grad_weight or conv_grad_input with its arguments resolved once (bind time):
    calling it, or running it inside a ``plan.PlanRunner`` with no Python in between. Made by
    ``conv_grad_weight_step`` / ``conv_grad_input_step``; holds its arrays."""
    cdef GradCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.path = PATH_NOTHING
        self.native.fn = grad_native
        self.native.state = &self.call

    def __call__(self):
        cdef int rc
        with nogil:
            rc = grad_run(&self.call)
        if rc:
            self.raise_for(rc)

    def raise_for(self, int rc):
        what = "conv_grad_weight" if self.call.kind == GRAD_WEIGHT else "conv_grad_input"
        raise MemoryError(f"{what}: cannot allocate GEMM packing or depthwise buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def conv_grad_weight_step(float[:, :, :, ::1] dy, float[:, :, :, ::1] x,
                          float[:, :, :, ::1] dweight, scratch, int stride_h, int stride_w,
                          int pad_top, int pad_left, int dil_h, int dil_w, int group,
                          int nthreads):
    """conv_grad_weight resolved once: a ConvGradStep."""
    cdef ConvGradStep step = ConvGradStep()
    weight_prepare(&step.call, dy, x, dweight, scratch, stride_h, stride_w, pad_top, pad_left,
                   dil_h, dil_w, group, nthreads)
    step.keep = (dy, x, dweight, scratch)
    return step


def conv_grad_input_step(float[:, :, :, ::1] dy, float[:, :, :, ::1] w, float[:, :, :, ::1] dx,
                         scratch, int stride_h, int stride_w, int pad_top, int pad_left,
                         int dil_h, int dil_w, int group, int nthreads):
    """conv_grad_input resolved once: a ConvGradStep."""
    cdef ConvGradStep step = ConvGradStep()
    input_prepare(&step.call, dy, w, dx, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                  dil_w, group, nthreads)
    step.keep = (dy, w, dx, scratch)
    return step


def conv_grad_weight(dy, x, dweight, scratch, int stride_h, int stride_w, int pad_top,
                     int pad_left, int dil_h, int dil_w, int group, int nthreads):
    """dweight (M, C/group, KH, KW) = gradient of the loss w.r.t. the conv weight, given dy
    (N, M, OH, OW) and the conv input x (N, C, H, W). Bottom/right pads are implied by OH/OW."""
    conv_grad_weight_step(dy, x, dweight, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                          dil_w, group, nthreads)()


def conv_grad_input(dy, w, dx, scratch, int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int group, int nthreads):
    """dx (N, C, H, W) = gradient of the loss w.r.t. the conv input, given dy (N, M, OH, OW) and
    the weight w (M, C/group, KH, KW)."""
    conv_grad_input_step(dy, w, dx, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                         dil_w, group, nthreads)()
