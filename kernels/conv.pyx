"""2-D convolution (ONNX cross-correlation) and transposed convolution over NCHW float32.

conv2d picks its algorithm per call: 1x1 stride-1 unpadded -> GEMM straight on x; depthwise
(group == C == M) -> a direct vectorised kernel (depthwise_kernel.h); anything else -> a GEMM whose B
panels are packed straight from the image (implicit im2col, conv_pack.h), or, for planes under
256 pixels, im2col of one image/group into scratch, then GEMM. Bias and activation ride in the
GEMM epilogue. Batches that divide evenly over the threads run one image per thread
(single-threaded GEMMs, one scratch slot each); otherwise the images run in turn and each GEMM
uses the whole team.

Conv2dStep is conv2d with its arguments resolved once, runnable GIL-free inside a plan.PlanRunner.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free
from cpython.pycapsule cimport PyCapsule_New
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.activation cimport apply_act_span
from kernels.sgemm cimport (ember_sgemm, ember_sgemm_im2col, ember_bias_act, ember_im2col_src,
                            epilogue_for)
from kernels.simd cimport use_simd
from kernels.parallel cimport threads_for
from kernels.conv_common cimport (ConvShape, conv_shape, is_pointwise, is_depthwise, col_floats,
                                  images_in_parallel, im2col_rows, col2im_channel)
from kernels.depthwise cimport (ember_dw_geom, dw_geom, ember_dw_alloc, ember_dw_buffer_floats,
                                ember_dw_set_taps, ember_dw_forward_plane, ember_dw8_buffer_floats,
                                ember_dw8_forward, ember_dw_group, DW8_MAX_PIXELS, dw8_grouped,
                                dw8_groups, dw8_channels)

use_simd()


def conv2d_scratch_floats(int C, int H, int W, int M, int KH, int KW, int OH, int OW,
                          int stride_h, int stride_w, int pad_top, int pad_left, int dil_h,
                          int dil_w, int group, int nthreads):
    """Floats of scratch conv2d needs: 0 for the pointwise and depthwise paths, else one im2col
    panel (C/group·KH·KW × OH·OW) per thread (the batch size is unknown here, and with a batch
    that splits over the threads each thread fills its own panel)."""
    cdef ConvShape s = conv_shape(1, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    if is_pointwise(&s) or is_depthwise(&s):
        return 0
    return col_floats(&s) * max(nthreads, 1)


cdef int conv_image(const float *x, const float *w, const float *bias, float *y, float *col,
                    ConvShape *s, int act, float act_a, float act_b, int nthreads) noexcept nogil:
    """One image through GEMM (pointwise or im2col), all groups. Returns 0 when out of memory."""
    cdef int g, Cg = s.C // s.group, Mg = s.M // s.group
    cdef int K = Cg * s.KH * s.KW
    cdef long ohw = <long> s.OH * s.OW, hw = <long> s.H * s.W
    cdef ember_bias_act ctx
    cdef int ok = 1, r
    ctx.bias_axis = 0
    ctx.act = act
    ctx.act_a = act_a
    ctx.act_b = act_b
    cdef ember_im2col_src src
    src.H = s.H; src.W = s.W; src.KH = s.KH; src.KW = s.KW; src.OW = s.OW
    src.sh = s.sh; src.sw = s.sw; src.pt = s.pt; src.pl = s.pl; src.dh = s.dh; src.dw = s.dw
    for g in range(s.group):
        ctx.bias = bias + g * Mg if bias != NULL else NULL
        if is_pointwise(s):
            ok = ember_sgemm(0, 0, Mg, <int> ohw, K, 1.0, w + <long> g * Mg * K, K,
                             x + g * Cg * hw, ohw, 0.0, y + g * Mg * ohw, ohw,
                             epilogue_for(&ctx), nthreads) and ok
        elif ohw < 256:   # small planes: implicit panels would cross rows too often
            if threads_for(nthreads, K * ohw) > 1:
                for r in prange(K, num_threads=nthreads, schedule='static'):
                    im2col_rows(x + g * Cg * hw, col, s, r, r + 1)
            else:
                im2col_rows(x + g * Cg * hw, col, s, 0, K)
            ok = ember_sgemm(0, 0, Mg, <int> ohw, K, 1.0, w + <long> g * Mg * K, K, col, ohw,
                             0.0, y + g * Mg * ohw, ohw, epilogue_for(&ctx), nthreads) and ok
        else:   # implicit im2col: the GEMM packs its B panels straight from the image
            src.x = x + g * Cg * hw
            ok = ember_sgemm_im2col(Mg, <int> ohw, K, w + <long> g * Mg * K, K, 0.0,
                                    y + g * Mg * ohw, ohw, epilogue_for(&ctx), nthreads,
                                    &src) and ok
    return ok


# The plane size up to which depthwise takes the channel-group path with a partial group
# (depthwise.pxd's rule); set_depthwise_grouped_max_pixels moves it for tests.
cdef long dw8_max_pixels = DW8_MAX_PIXELS


cdef int depthwise_forward(const float *xp, const float *wp, const float *bias_ptr, float *yp,
                           ConvShape *s, int act, float act_a, float act_b,
                           int nthreads) noexcept nogil:
    """Depthwise conv, parallel over (n, c) planes — or over (n, channel groups) for small
    planes; each thread packs into its own buffer (depthwise_kernel.h) and runs vectorised tap
    loops, bias and activation fused. Returns 0, or 1 when a buffer cannot be allocated."""
    cdef ember_dw_geom g = dw_geom(s)
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW
    cdef int taps = s.KH * s.KW
    cdef bint grouped = dw8_grouped(s, plane_out, dw8_max_pixels)
    cdef int group = ember_dw_group(), groups = dw8_groups(s.C)
    cdef long nbuf = ember_dw8_buffer_floats(&g) if grouped else ember_dw_buffer_floats(&g)
    cdef int p, c, k, n, nch, failed = 0, failed_grouped = 0
    cdef long first
    cdef float *buf = NULL
    cdef long *tap_table = <long *> malloc(sizeof(long) * taps)
    if tap_table == NULL:
        return 1
    ember_dw_set_taps(&g, tap_table)
    nthreads = threads_for(nthreads, <long> s.N * s.C * plane_out * taps)
    with parallel(num_threads=nthreads):
        buf = ember_dw_alloc(nbuf)
        if grouped:
            for p in prange(s.N * groups, schedule='static'):
                if buf == NULL:
                    failed_grouped += 1
                else:
                    n = p // groups
                    c = (p % groups) * group
                    nch = dw8_channels(s.C, c)
                    first = <long> n * s.C + c
                    if not ember_dw8_forward(&g, xp + first * plane_in, plane_in, wp + c * taps,
                                             bias_ptr + c if bias_ptr != NULL else NULL,
                                             yp + first * plane_out, plane_out, nch, buf, act,
                                             act_a, act_b):
                        for k in range(nch):
                            apply_act_span(yp + (first + k) * plane_out, plane_out, act, act_a,
                                           act_b)
        else:
            for p in prange(s.N * s.C, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    c = p % s.C
                    if not ember_dw_forward_plane(&g, xp + p * plane_in, wp + c * taps,
                                                  bias_ptr[c] if bias_ptr != NULL else 0.0,
                                                  yp + p * plane_out, buf, act, act_a, act_b):
                        apply_act_span(yp + p * plane_out, plane_out, act, act_a, act_b)
        free(buf)
    free(tap_table)
    return 1 if failed or failed_grouped else 0


cdef struct ConvCall:
    # everything one conv2d needs, resolved once: conv2d fills it per call, Conv2dStep at bind
    ConvShape s
    const float *x
    const float *w
    const float *bias
    float *y
    float *col
    long col_n
    long slots
    bint per_thread
    bint empty
    int act
    float act_a
    float act_b
    int nthreads


cdef int conv_prepare(ConvCall *c, float[:, :, :, ::1] x, float[:, :, :, ::1] w,
                      float[::1] bias, float[:, :, :, ::1] y, float[::1] scratch, int stride_h,
                      int stride_w, int pad_top, int pad_left, int dil_h, int dil_w, int group,
                      int act, float act_a, float act_b, int nthreads) except -1:
    """Shapes, pointers and the algorithm's parameters; ValueError for a short scratch."""
    cdef ConvShape *s = &c.s
    cdef long have = 0
    c.s = conv_shape(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1], w.shape[2],
                     w.shape[3], y.shape[2], y.shape[3], stride_h, stride_w, pad_top, pad_left,
                     dil_h, dil_w, group)
    c.nthreads = nthreads if nthreads > 1 else 1
    c.act = act; c.act_a = act_a; c.act_b = act_b
    c.empty = s.N == 0 or s.M == 0 or s.OH == 0 or s.OW == 0
    c.x = c.w = c.bias = c.y = c.col = NULL
    c.col_n = col_floats(s)
    c.slots = 1
    c.per_thread = images_in_parallel(s.N, c.nthreads)
    if c.empty:
        return 0
    c.x = &x[0, 0, 0, 0]
    c.w = &w[0, 0, 0, 0]
    c.y = &y[0, 0, 0, 0]
    if bias is not None:
        c.bias = &bias[0]
    if is_depthwise(s):
        return 0
    if not is_pointwise(s):
        if scratch is not None:
            have = scratch.shape[0]
        if have < c.col_n:
            raise ValueError(f"conv2d: scratch holds {have} floats, needs {c.col_n} per slot")
        if have > 0:
            c.col = &scratch[0]
        c.slots = have // c.col_n if c.col_n > 0 else 1
    else:
        c.slots = c.nthreads   # GEMM straight on x: no scratch, no limit on parallel images
    if c.per_thread and c.slots < 2:
        c.per_thread = False
    return 0


cdef int conv_run(ConvCall *c) noexcept nogil:
    """The convolution itself, GIL-free. Returns 0, or 1 when out of memory."""
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef int n, ok = 1, nthreads = c.nthreads
    if c.empty:
        return 0
    if is_depthwise(s):
        return depthwise_forward(c.x, c.w, c.bias, c.y, s, c.act, c.act_a, c.act_b, nthreads)
    if c.per_thread:
        nthreads = <int> min(<long> nthreads, c.slots)
        for n in prange(s.N, num_threads=nthreads, schedule='dynamic'):
            ok &= conv_image(c.x + n * x_img, c.w, c.bias, c.y + n * y_img,
                             c.col + threadid() * c.col_n if c.col != NULL else NULL,
                             s, c.act, c.act_a, c.act_b, 1)
    else:
        for n in range(s.N):
            ok = conv_image(c.x + n * x_img, c.w, c.bias, c.y + n * y_img, c.col, s, c.act,
                            c.act_a, c.act_b, nthreads) and ok
    return 0 if ok else 1


def set_depthwise_grouped_max_pixels(int n):
    """For tests: the plane size up to which the channel-group depthwise path is taken even with a
    partial group (0: never take it); returns the previous value."""
    global dw8_max_pixels
    old = dw8_max_pixels
    dw8_max_pixels = n
    return old


def conv2d(float[:, :, :, ::1] x, float[:, :, :, ::1] w, bias, float[:, :, :, ::1] y, scratch,
           int stride_h, int stride_w, int pad_top, int pad_left, int dil_h, int dil_w,
           int group, int act, float act_a, float act_b, int nthreads):
    cdef ConvCall c
    cdef int rc
    conv_prepare(&c, x, w, bias, y, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                 dil_w, group, act, act_a, act_b, nthreads)
    with nogil:
        rc = conv_run(&c)
    if rc:
        raise MemoryError("conv2d: cannot allocate GEMM packing or depthwise buffers")


cdef int conv_native(void *state) noexcept nogil:
    return conv_run(<ConvCall *> state)


cdef class Conv2dStep:
    """conv2d with its arguments resolved once (bind time): calling it, or running it inside a
    ``plan.PlanRunner`` with no Python in between, is conv2d(*args) without the per-call argument
    conversion. Holds its arrays, so their buffers outlive the step."""
    cdef ConvCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, :, ::1] x, float[:, :, :, ::1] w, bias,
                 float[:, :, :, ::1] y, scratch, int stride_h, int stride_w, int pad_top,
                 int pad_left, int dil_h, int dil_w, int group, int act, float act_a,
                 float act_b, int nthreads):
        conv_prepare(&self.call, x, w, bias, y, scratch, stride_h, stride_w, pad_top, pad_left,
                     dil_h, dil_w, group, act, act_a, act_b, nthreads)
        self.keep = (x, w, bias, y, scratch)
        self.native.fn = conv_native
        self.native.state = &self.call

    def __call__(self):
        cdef int rc
        with nogil:
            rc = conv_run(&self.call)
        if rc:
            self.raise_for(rc)

    def raise_for(self, int rc):
        raise MemoryError("conv2d: cannot allocate GEMM packing or depthwise buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def conv_transpose2d_scratch_floats(int C, int H, int W, int M, int KH, int KW, int group,
                                    int nthreads):
    """Floats of scratch conv_transpose2d needs: one column buffer (M/group·KH·KW × H·W)."""
    return <long> (M // group) * KH * KW * H * W


def conv_transpose2d(float[:, :, :, ::1] x, float[:, :, :, ::1] w, bias,
                     float[:, :, :, ::1] y, scratch, int stride_h, int stride_w, int pad_top,
                     int pad_left, int dil_h, int dil_w, int group, int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int M = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef int KH = w.shape[2], KW = w.shape[3]
    cdef int Cg = C // group, Mg = M // group
    cdef int rows = Mg * KH * KW
    cdef long hw = <long> H * W, ohw = <long> OH * OW
    cdef long need = <long> rows * hw
    cdef float[::1] bias_view
    cdef float[::1] scratch_view
    cdef const float *bias_ptr = NULL
    cdef int n, g, m, ok = 1
    # y is the input gradient of the conv that maps y's shape to x's: the same col2im
    cdef ConvShape s = conv_shape(N, M, OH, OW, C, KH, KW, H, W, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    if nthreads < 1:
        nthreads = 1
    if N == 0 or M == 0 or OH == 0 or OW == 0:
        return
    if bias is not None:
        bias_view = bias
        bias_ptr = &bias_view[0]
    cdef float *col = NULL
    if need > 0:
        if scratch is None or len(scratch) < need:
            raise ValueError(f"conv_transpose2d: scratch needs {need} floats")
        scratch_view = scratch
        col = &scratch_view[0]
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef const float *wp = &w[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    with nogil:
        for n in range(N):
            for g in range(group):
                if Cg > 0 and hw > 0:
                    ok = ember_sgemm(1, 0, rows, <int> hw, Cg, 1.0, wp + <long> g * Cg * rows,
                                     rows, xp + (<long> n * C + g * Cg) * hw, hw, 0.0, col, hw,
                                     NULL, nthreads) and ok
                elif need > 0:
                    memset(col, 0, sizeof(float) * need)
                for m in prange(Mg, num_threads=nthreads, schedule='static'):
                    col2im_channel(col, yp + (<long> n * M + g * Mg + m) * ohw, m, &s,
                                   bias_ptr[g * Mg + m] if bias_ptr != NULL else 0.0)
    if not ok:
        raise MemoryError("conv_transpose2d: cannot allocate GEMM packing buffers")
