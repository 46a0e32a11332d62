"""2-D convolution (ONNX cross-correlation) and transposed convolution over NCHW float32.

conv2d picks its algorithm per call: 1x1 stride-1 unpadded -> GEMM straight on x; depthwise
(group == C == M) -> a direct vectorised kernel (depthwise_kernel.h); anything else -> a GEMM whose B
panels are packed straight from the image (implicit im2col, conv_pack.h), or, for planes under
256 pixels, im2col of one image/group into scratch, then GEMM. Bias and activation ride in the
GEMM epilogue. Batches that divide evenly over the threads run one image per thread
(single-threaded GEMMs, one scratch slot each); otherwise the images run in turn and each GEMM
uses the whole team.

Conv2dStep is conv2d with its arguments resolved once, runnable GIL-free inside a plan.PlanRunner.
PackedConvStep (below) is the other orientation, pixels × output channels over weights packed
once, which the Conv binder picks where it measures faster (small planes, wide layers).
"""
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free
from cpython.pycapsule cimport PyCapsule_New
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.activation cimport apply_act_span
from kernels.sgemm cimport (ember_sgemm, ember_sgemm_im2col, ember_bias_act, ember_im2col_src,
                            ember_packed_gemm_sliced, ember_sgemm_packed_a, ember_gemm_mr,
                            ember_gemm_nr,
                            ember_gemm_kc,
                            epilogue_for)
from kernels.simd cimport use_simd
from kernels.window cimport span_inside

cdef extern from "transpose.h" nogil:
    void ember_transpose(const float *src, long lds, float *dst, long ldd, long rows, long cols)
from kernels.parallel cimport threads_for, ember_parallel
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


cdef struct Im2colJob:
    const float *x
    float *col
    ConvShape *s


cdef void im2col_row_task(void *ctx, long r, int worker) noexcept nogil:
    cdef Im2colJob *j = <Im2colJob *> ctx
    im2col_rows(j.x, j.col, j.s, <int> r, <int> r + 1)


cdef int conv_image(const float *x, const float *w, const float *bias, float *y, float *col,
                    ConvShape *s, int act, float act_a, float act_b, int nthreads) noexcept nogil:
    """One image through GEMM (pointwise or im2col), all groups. Returns 0 when out of memory."""
    cdef int g, Cg = s.C // s.group, Mg = s.M // s.group
    cdef int K = Cg * s.KH * s.KW
    cdef long ohw = <long> s.OH * s.OW, hw = <long> s.H * s.W
    cdef ember_bias_act ctx
    cdef Im2colJob rows_job
    cdef int ok = 1
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
                rows_job.x = x + g * Cg * hw
                rows_job.col = col
                rows_job.s = s
                ember_parallel(nthreads, K, im2col_row_task, &rows_job)
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


cdef struct DepthwiseJob:
    ember_dw_geom *g
    const float *xp
    const float *wp
    const float *bias
    float *yp
    float *bufs            # one buffer of buf_stride floats per worker
    long buf_stride
    long plane_in
    long plane_out
    int taps
    int C
    int groups             # channel groups per image (grouped path)
    int group
    int act
    float act_a
    float act_b


cdef void depthwise_group_task(void *ctx, long p, int worker) noexcept nogil:
    """One image's group of up to `group` channels, channel-interleaved (ember_dw8_forward)."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef long n = p // j.groups
    cdef int c = <int> (p % j.groups) * j.group
    cdef int k, nch = dw8_channels(j.C, c)
    cdef long first = n * j.C + c
    if not ember_dw8_forward(j.g, j.xp + first * j.plane_in, j.plane_in, j.wp + c * j.taps,
                             j.bias + c if j.bias != NULL else NULL,
                             j.yp + first * j.plane_out, j.plane_out, nch,
                             j.bufs + worker * j.buf_stride, j.act, j.act_a, j.act_b):
        for k in range(nch):
            apply_act_span(j.yp + (first + k) * j.plane_out, j.plane_out, j.act, j.act_a,
                           j.act_b)


cdef void depthwise_plane_task(void *ctx, long p, int worker) noexcept nogil:
    """One (image, channel) plane."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef int c = <int> (p % j.C)
    if not ember_dw_forward_plane(j.g, j.xp + p * j.plane_in, j.wp + c * j.taps,
                                  j.bias[c] if j.bias != NULL else 0.0,
                                  j.yp + p * j.plane_out, j.bufs + worker * j.buf_stride,
                                  j.act, j.act_a, j.act_b):
        apply_act_span(j.yp + p * j.plane_out, j.plane_out, j.act, j.act_a, j.act_b)


cdef int depthwise_forward(const float *xp, const float *wp, const float *bias_ptr, float *yp,
                           ConvShape *s, int act, float act_a, float act_b,
                           int nthreads) noexcept nogil:
    """Depthwise conv, parallel over (n, c) planes — or over (n, channel groups) for small
    planes; each worker packs into its own buffer (depthwise_kernel.h) and runs vectorised tap
    loops, bias and activation fused. Returns 0, or 1 when a buffer cannot be allocated."""
    cdef ember_dw_geom g = dw_geom(s)
    cdef DepthwiseJob j
    cdef bint grouped
    cdef long nbuf
    cdef long *tap_table = <long *> malloc(sizeof(long) * (s.KH * s.KW))
    if tap_table == NULL:
        return 1
    ember_dw_set_taps(&g, tap_table)
    j.g = &g
    j.xp = xp; j.wp = wp; j.bias = bias_ptr; j.yp = yp
    j.plane_in = <long> s.H * s.W
    j.plane_out = <long> s.OH * s.OW
    j.taps = s.KH * s.KW
    j.C = s.C
    j.group = ember_dw_group()
    j.groups = dw8_groups(s.C)
    j.act = act; j.act_a = act_a; j.act_b = act_b
    grouped = dw8_grouped(s, j.plane_out, dw8_max_pixels)
    nbuf = ember_dw8_buffer_floats(&g) if grouped else ember_dw_buffer_floats(&g)
    nthreads = threads_for(nthreads, <long> s.N * s.C * j.plane_out * j.taps)
    j.buf_stride = (nbuf + 15) // 16 * 16     # whole cache lines: workers never share one
    j.bufs = ember_dw_alloc(j.buf_stride * nthreads)
    if j.bufs == NULL:
        free(tap_table)
        return 1
    if grouped:
        ember_parallel(nthreads, <long> s.N * j.groups, depthwise_group_task, &j)
    else:
        ember_parallel(nthreads, <long> s.N * s.C, depthwise_plane_task, &j)
    free(j.bufs)
    free(tap_table)
    return 0


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


cdef struct ImagesJob:
    ConvCall *c
    long x_img
    long y_img
    int ok


cdef void conv_image_task(void *ctx, long n, int worker) noexcept nogil:
    """Image n on one thread, in the worker's own im2col slot."""
    cdef ImagesJob *j = <ImagesJob *> ctx
    cdef ConvCall *c = j.c
    if not conv_image(c.x + n * j.x_img, c.w, c.bias, c.y + n * j.y_img,
                      c.col + worker * c.col_n if c.col != NULL else NULL,
                      &c.s, c.act, c.act_a, c.act_b, 1):
        j.ok = 0


cdef int conv_run(ConvCall *c) noexcept nogil:
    """The convolution itself, GIL-free. Returns 0, or 1 when out of memory."""
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef int n, ok = 1, nthreads = c.nthreads
    cdef ImagesJob images
    if c.empty:
        return 0
    if is_depthwise(s):
        return depthwise_forward(c.x, c.w, c.bias, c.y, s, c.act, c.act_a, c.act_b, nthreads)
    if c.per_thread:
        images.c = c
        images.x_img = x_img
        images.y_img = y_img
        images.ok = 1
        ember_parallel(<int> min(<long> nthreads, c.slots), s.N, conv_image_task, &images)
        ok = images.ok
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


cdef struct Col2imJob:
    const float *col
    float *y              # the group's first output channel
    const float *bias     # the group's first bias, NULL for none
    long ohw
    ConvShape *s


cdef void col2im_task(void *ctx, long m, int worker) noexcept nogil:
    cdef Col2imJob *j = <Col2imJob *> ctx
    col2im_channel(j.col, j.y + m * j.ohw, <int> m, j.s, j.bias[m] if j.bias != NULL else 0.0)


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
    cdef int n, g, ok = 1
    cdef Col2imJob col2im
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
    col2im.col = col
    col2im.ohw = ohw
    col2im.s = &s
    with nogil:
        for n in range(N):
            for g in range(group):
                if Cg > 0 and hw > 0:
                    ok = ember_sgemm(1, 0, rows, <int> hw, Cg, 1.0, wp + <long> g * Cg * rows,
                                     rows, xp + (<long> n * C + g * Cg) * hw, hw, 0.0, col, hw,
                                     NULL, nthreads) and ok
                elif need > 0:
                    memset(col, 0, sizeof(float) * need)
                col2im.y = yp + (<long> n * M + g * Mg) * ohw
                col2im.bias = bias_ptr + g * Mg if bias_ptr != NULL else NULL
                ember_parallel(nthreads, Mg, col2im_task, &col2im)
    if not ok:
        raise MemoryError("conv_transpose2d: cannot allocate GEMM packing buffers")


# ---- packed-weight conv: output tiles of pixels × output channels -------------------------------
# For planes too small to fill the GEMM's columns (ResNet's 7×7 stage: 49 pixels against a
# 16-wide micro-kernel), strided convs (whose implicit im2col packs gather) and layers whose weights
# are larger than what the conv computes per call, the roles turn around: the product is
# C'(pixels × M) = A'(pixels × K) · W'(K × M), with W' packed once at bind time in the GEMM's
# B-panel layout (NR output channels a panel) and A' packed per call straight from the image in its
# A-panel layout (MR pixels a panel, over every image of the batch). So the micro-kernel holds a
# block of MR pixels × NR output channels in registers, the weights are never repacked, and the
# batch fills the pixel dimension. C' is then turned back into NCHW, bias and activation applied
# on its rows while they are in cache.

cdef enum:
    # A' and C' of one chunk of pixels stay in L2 between the packing, the product and the way
    # back to NCHW: 512 KiB; unless the weights are so much larger that streaming them once per
    # chunk would cost more than A' falling out to L3 — then up to a quarter of the weights, at
    # most 4 MiB (ResNet's 7×7 stage: all 49 pixels in one chunk)
    PACKED_CHUNK_FLOATS = 1 << 17
    PACKED_CHUNK_MAX_FLOATS = 1 << 20
    PACKED_OUT_BLOCK = 16           # pixels a thread turns back into NCHW at a time
    PACKED_MAX_MR = 8


cdef inline long round_up_to(long n, long m) noexcept nogil:
    return (n + m - 1) // m * m


def packed_conv_weight_floats(int M, int C, int KH, int KW, int group):
    """Floats of the packed weights: per group, Cg·KH·KW rows × Mg columns rounded up to the
    micro-kernel's NR (zero columns past Mg)."""
    cdef long K = <long> (C // group) * KH * KW
    return group * K * round_up_to(M // group, ember_gemm_nr())


def pack_conv_weights(float[:, :, :, ::1] w, float[::1] packed, int group):
    """packed (from packed_conv_weight_floats, its start 64-byte aligned) = w (M × C/group × KH × KW)
    as the GEMM's B operand per group, K = C/group·KH·KW rows by Mp = Mg rounded up to NR
    columns, in K slices of the GEMM's KC rows (packed_gemm.h, ember_packed_gemm_sliced): row k of
    slice k0 = k − k % KC (kc rows long) and column m sit at g·K·Mp + k0·Mp + (m / NR)·kc·NR +
    (k − k0)·NR + m % NR."""
    cdef int M = w.shape[0], nr = ember_gemm_nr(), KC = ember_gemm_kc()
    cdef long K = <long> w.shape[1] * w.shape[2] * w.shape[3]
    cdef int Mg = M // group
    cdef long Mp = round_up_to(Mg, nr), need = group * K * Mp
    cdef int g, m
    cdef long k, k0, kc
    if group < 1 or M % group:
        raise ValueError(f"pack_conv_weights: {M} output channels do not split into {group} groups")
    if packed.shape[0] < need:
        raise ValueError(f"pack_conv_weights: packed holds {packed.shape[0]} floats, needs {need}")
    if need == 0:
        return
    if (<size_t> &packed[0]) % 64:
        raise ValueError("pack_conv_weights: packed must start on a 64-byte boundary")
    with nogil:
        pack_slices(&w[0, 0, 0, 0], &packed[0], Mg, K, group, nr, KC)


cdef void pack_slices(const float *src, float *dst, int Mg, long K, int group, int nr,
                      int KC) noexcept nogil:
    """pack_conv_weights' layout (see there)."""
    cdef long Mp = round_up_to(Mg, nr), k, k0, kc
    cdef int g, m
    memset(dst, 0, sizeof(float) * group * K * Mp)
    for g in range(group):
        for k in range(K):
            k0 = k - k % KC
            kc = min(<long> KC, K - k0)
            for m in range(Mg):
                dst[g * K * Mp + k0 * Mp + (m // nr) * kc * nr + (k - k0) * nr + m % nr] = \
                    src[(<long> g * Mg + m) * K + k]


cdef struct PackedConvCall:
    ConvShape s
    const float *x
    const float *wp        # packed_conv_weights
    const float *bias
    float *y
    float *a_pack          # per thread, one chunk of A' (chunk × K, in MR-pixel panels), of
                           # C' (chunk × Mp) and one im2col row (chunk)
    long P                 # pixels over the batch: N·OH·OW
    long chunk             # pixels per chunk, a multiple of MR
    int K, Mg, Mp, mr, nr
    int act
    float act_a, act_b
    int nthreads
    bint empty


cdef inline long packed_chunk(long P, long K, long Mp, int mr) noexcept nogil:
    """Pixels per chunk: all of them when A' and C' fit the budget, else as many MR panels as do
    (at least one)."""
    cdef long budget = max(<long> PACKED_CHUNK_FLOATS,
                           min(<long> PACKED_CHUNK_MAX_FLOATS, K * Mp // 4))
    cdef long fit = budget // ((K + Mp) * mr)
    return mr * max(1, min(fit, (P + mr - 1) // mr))


def packed_conv_scratch_floats(int N, int C, int M, int KH, int KW, int OH, int OW, int group,
                               int nthreads):
    """Floats of scratch PackedConvStep needs: one chunk's A', C' and im2col row per thread."""
    cdef int mr = ember_gemm_mr()
    cdef long K = <long> (C // group) * KH * KW, Mp = round_up_to(M // group, ember_gemm_nr())
    cdef long P = <long> N * OH * OW
    if P == 0 or K == 0:
        return 0
    return packed_chunk(P, K, Mp, mr) * (K + Mp + 1) * max(nthreads, 1)


cdef inline void take_even(float *dst, const float *src, long n) noexcept nogil:
    """dst[0, n) = src[0], src[2], …: a stride-2 conv's im2col row. Stepped by pointers, which
    cannot wrap, so that GCC vectorises it (with -fwrapv an index 2·j might, and it gives up)."""
    cdef float *end = dst + n
    while dst < end:
        dst[0] = src[0]
        dst += 1
        src += 2


cdef void pack_pixels_taps(const float *x, ConvShape *s, int g, int c, int kh, long p0,
                           long rows, long rows_pad, float *pa, int mr, int K,
                           float *line) noexcept nogil:
    """Rows k = (c, kh, kw), kw < KW, of A' for pixels [p0, p0 + rows) of the batch (group g's
    channel c): pa[(q / mr)·K·mr + k·mr + q % mr] = x[n, g·Cg + c, oh·sh − pt + kh·dh,
    ow·sw − pl + kw·dw] for pixel p0 + q = (n, oh, ow), 0 outside the image and for q ≥ rows.
    Each row k is first laid out whole in ``line`` (rows_pad floats: the im2col row, a copy per
    output-row segment), then dealt out to the panels mr floats at a time."""
    cdef long ohw = <long> s.OH * s.OW, hw = <long> s.H * s.W, panel = <long> K * mr
    cdef long q, p, n, oh, ow, seg, lo, hi, j, jlo, jhi, t
    cdef int kw, ih, r, k
    cdef const float *row
    cdef float *dst
    for kw in range(s.KW):
        k = (c * s.KH + kh) * s.KW + kw
        span_inside(kw * s.dw - s.pl, s.sw, s.OW, 0, s.W, &lo, &hi)
        q = 0
        while q < rows:   # one output row segment (n, oh, [ow, ow + seg)) at a time
            p = p0 + q
            n = p // ohw
            oh = p % ohw // s.OW
            ow = p % s.OW
            seg = min(<long> s.OW - ow, rows - q)
            ih = <int> oh * s.sh - s.pt + kh * s.dh
            jlo = jhi = ow   # the in-image taps of this segment: [jlo, jhi)
            if ih >= 0 and ih < s.H:
                jlo = min(max(lo, ow), ow + seg)
                jhi = max(min(hi, ow + seg), jlo)
            row = x + (n * s.C + <long> g * (s.C // s.group) + c) * hw + <long> ih * s.W + \
                kw * s.dw - s.pl
            dst = line + q - ow
            for j in range(ow, jlo):
                dst[j] = 0.0
            if s.sw == 1:
                if jhi > jlo:
                    memcpy(dst + jlo, row + jlo, sizeof(float) * (jhi - jlo))
            elif s.sw == 2:
                take_even(dst + jlo, row + 2 * jlo, jhi - jlo)
            else:
                for j in range(jlo, jhi):
                    dst[j] = row[j * s.sw]
            for j in range(jhi, ow + seg):
                dst[j] = 0.0
            q += seg
        for q in range(rows, rows_pad):
            line[q] = 0.0
        dst = pa + k * mr
        if mr == 6:
            for t in range(rows_pad // 6):
                memcpy(dst + t * panel, line + t * 6, 6 * sizeof(float))
        else:
            for t in range(rows_pad // mr):
                for r in range(mr):
                    dst[t * panel + r] = line[t * mr + r]


cdef void packed_out_block(PackedConvCall *c, const float *c_out, int g, long p0, long q0,
                           long q1, int m0, int m1) noexcept nogil:
    """Pixels [q0, q1) of the chunk starting at pixel p0, output channels [m0, m1) of group g:
    bias and activation on their C' rows, then to the NCHW output (one plane per channel)."""
    cdef ConvShape *s = &c.s
    cdef long ohw = <long> s.OH * s.OW, q, p, n, pix, run
    cdef int m
    cdef float *row
    cdef const float *bias = c.bias + g * c.Mg if c.bias != NULL else NULL
    for q in range(q0, q1):
        row = <float *> c_out + q * c.Mp
        if bias != NULL:
            for m in range(m0, m1):
                row[m] += bias[m]
        apply_act_span(row + m0, m1 - m0, c.act, c.act_a, c.act_b)
    q = q0
    while q < q1:   # runs of pixels within one image
        p = p0 + q
        n = p // ohw
        pix = p % ohw
        run = min(ohw - pix, q1 - q)
        ember_transpose(c_out + q * c.Mp + m0, c.Mp,
                        c.y + (n * s.M + <long> g * c.Mg + m0) * ohw + pix, ohw, run, m1 - m0)
        q += run


cdef void packed_conv_share(PackedConvCall *c, int t, int nt) noexcept nogil:
    """Thread t's share of the conv, start to end with no barrier, in its own A' and C': chunk by
    chunk of pixels and group by group, either a share of the chunk's pixels (packed, multiplied
    by all of W', written back) or, when the chunk has too few pixel panels to split, all of its
    pixels and a share of the output channels."""
    cdef ConvShape *s = &c.s
    cdef long p0 = 0, rows, rows_pad, rpanels, r0, r1, q, ctap, mine
    cdef long ctaps = <long> (s.C // s.group) * s.KH
    cdef int g, npanels = c.Mp // c.nr, m0, m1
    cdef bint split_pixels
    # this thread's own A' and C': nothing is shared, so no thread waits for another
    cdef float *a_pack = c.a_pack + t * c.chunk * (c.K + c.Mp + 1)
    cdef float *c_out = a_pack + c.chunk * c.K
    cdef float *line = c_out + c.chunk * c.Mp   # one im2col row of the chunk
    while p0 < c.P:
        rows = min(c.chunk, c.P - p0)
        rows_pad = round_up_to(rows, c.mr)
        rpanels = rows_pad // c.mr
        split_pixels = nt == 1 or rpanels >= 4 * nt or npanels < nt
        if split_pixels:   # panels [r0, r1) of the chunk, every output channel
            r0 = rpanels * t // nt
            r1 = rpanels * (t + 1) // nt
            m0, m1 = 0, c.Mg
        else:              # every panel, output-channel panels [m0, m1) (as channels)
            r0, r1 = 0, rpanels
            m0 = <int> (npanels * t // nt) * c.nr
            m1 = min(<int> (npanels * (t + 1) // nt) * c.nr, c.Mg)
        if r1 > r0 and m1 > m0:
            for g in range(s.group):
                for ctap in range(ctaps):
                    pack_pixels_taps(c.x, s, g, <int> (ctap // s.KH), <int> (ctap % s.KH),
                                     p0 + r0 * c.mr, min(rows, r1 * c.mr) - r0 * c.mr,
                                     (r1 - r0) * c.mr, a_pack, c.mr, c.K, line)
                ember_packed_gemm_sliced(a_pack, c.wp + <long> g * c.K * c.Mp, c.Mp, m0,
                                         c_out + m0, <int> ((r1 - r0) * c.mr), c.K,
                                         <int> round_up_to(m1 - m0, c.nr), c.Mp)
                mine = min(rows, r1 * c.mr) - r0 * c.mr   # this thread's pixels, from p0 + r0·MR
                q = 0
                while q < mine:
                    packed_out_block(c, c_out, g, p0 + r0 * c.mr, q,
                                     min(mine, q + PACKED_OUT_BLOCK), m0, m1)
                    q += PACKED_OUT_BLOCK
        p0 += rows


cdef void packed_conv_share_task(void *ctx, long t, int worker) noexcept nogil:
    cdef PackedConvCall *c = <PackedConvCall *> ctx
    packed_conv_share(c, <int> t, c.nthreads)


cdef int packed_conv_run(PackedConvCall *c) noexcept nogil:
    """The conv: one share per thread (packed_conv_share), no barrier but the last. Always 0."""
    cdef int t
    if c.empty:
        return 0
    if c.nthreads == 1:
        packed_conv_share(c, 0, 1)
        return 0
    ember_parallel(c.nthreads, c.nthreads, packed_conv_share_task, c)
    return 0


cdef int packed_conv_native(void *state) noexcept nogil:
    return packed_conv_run(<PackedConvCall *> state)


cdef class PackedConvStep:
    """A conv through packed weights (pack_conv_weights) with its arguments resolved once: called,
    or run inside a ``plan.PlanRunner`` with no Python in between. Holds its arrays."""
    cdef PackedConvCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, :, ::1] x, float[::1] packed_w, bias, float[:, :, :, ::1] y,
                 scratch, int KH, int KW, int stride_h, int stride_w, int pad_top,
                 int pad_left, int dil_h, int dil_w, int group, int act, float act_a,
                 float act_b, int nthreads):
        cdef PackedConvCall *c = &self.call
        cdef float[::1] b, scr
        cdef long need
        c.s = conv_shape(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1], KH, KW,
                         y.shape[2], y.shape[3], stride_h, stride_w, pad_top, pad_left, dil_h,
                         dil_w, group)
        c.mr, c.nr = ember_gemm_mr(), ember_gemm_nr()
        if group < 1 or c.s.C % group or c.s.M % group:
            raise ValueError(f"PackedConvStep: {c.s.C} inputs and {c.s.M} outputs do not split "
                             f"into {group} groups")
        if c.mr > PACKED_MAX_MR:
            raise ValueError("PackedConvStep: the GEMM's micro-kernel has too many rows")
        c.K = (c.s.C // group) * KH * KW
        c.Mg = c.s.M // group
        c.Mp = <int> round_up_to(c.Mg, c.nr)
        c.P = <long> c.s.N * c.s.OH * c.s.OW
        c.act, c.act_a, c.act_b = act, act_a, act_b
        c.nthreads = threads_for(nthreads, c.P * c.K * c.s.M)
        c.empty = c.P == 0 or c.s.M == 0
        c.x = c.wp = c.bias = NULL
        c.y = c.a_pack = NULL
        c.chunk = 0
        self.keep = (x, packed_w, bias, y, scratch)
        self.native.fn = packed_conv_native
        self.native.state = &self.call
        if c.empty:
            return
        if c.K == 0:
            raise ValueError("PackedConvStep: a conv with no input channel takes another path")
        if packed_w.shape[0] < <long> group * c.K * c.Mp:
            raise ValueError(f"PackedConvStep: packed weights hold {packed_w.shape[0]} floats, "
                             f"need {group * c.K * c.Mp}")
        if (<size_t> &packed_w[0]) % 64:
            raise ValueError("PackedConvStep: packed weights must start on a 64-byte boundary")
        c.chunk = packed_chunk(c.P, c.K, c.Mp, c.mr)
        need = c.chunk * (c.K + c.Mp + 1) * c.nthreads
        if scratch is None or len(scratch) < need:
            raise ValueError(f"PackedConvStep: scratch needs {need} floats")
        scr = scratch
        c.a_pack = &scr[0]
        if bias is not None:
            b = bias
            if b.shape[0] < c.s.M:
                raise ValueError(f"PackedConvStep: bias has {b.shape[0]} values, needs {c.s.M}")
            c.bias = &b[0]
        c.x = &x[0, 0, 0, 0]
        c.wp = &packed_w[0]
        c.y = &y[0, 0, 0, 0]

    def __call__(self):
        with nogil:
            packed_conv_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


# ---- direct conv -------------------------------------------------------------------------------
# A network's first layer (3 colour channels, 7×7/2 or 3×3/2) and LeNet's: C·KH·KW taps per pixel
# used by few output channels each, so any packing of the taps costs as much as the FMAs; and,
# chosen by measurement, mid-sized layers, where a register block of EMBER_DC_MB channels × up to
# three vectors of positions beats im2col + GEMM once the packing is gone. The direct kernel
# (conv_direct_kernel.h) reads the taps straight from a zero-padded, phase-split copy of the input.

cdef extern from "simd.h" nogil:
    ctypedef struct ember_dc_geom:
        int C, M, KH, KW, OH, OW
        long PW, CS
        const long *tap
        int nv, mbv
        int act
        float act_a, act_b
    void ember_direct_conv_rows(const ember_dc_geom *g, const float *xp, const float *wp,
                                const float *bias, float *y, int oh0, int oh1, int mb0, int mb1)
    void ember_direct_conv_pixels(const ember_dc_geom *g, const float *xp, const float *wp,
                                  const float *bias, float *y, long q0, long q1, int mb0,
                                  int mb1)
    ctypedef struct ember_dc_prep:
        long H, W, pt, pl, sh, sw
        long shp, swp, PH, PW, PS
    void ember_direct_prepare(const ember_dc_prep *p, const float *xc, long r0, long r1,
                              float *dst)
    int ember_direct_conv_mb()
    int ember_direct_conv_vw()
    int ember_direct_conv_mbv()


cdef inline int direct_block_vectors(int M) noexcept nogil:
    """The pixels kernel's vectors of output channels a block: as many as M fills, up to its
    most."""
    cdef int vw = ember_direct_conv_vw()
    return <int> max(1, min(<long> ember_direct_conv_mbv(), (<long> M + vw - 1) // vw))


cdef inline int direct_block_channels(int M, bint lanes) noexcept nogil:
    """Output channels a register block, the packed weights' block: the rows kernel's
    EMBER_DC_MB, or (output channels in the lanes) the pixels kernel's vectors × the width."""
    return direct_block_vectors(M) * ember_direct_conv_vw() if lanes else ember_direct_conv_mb()


cdef struct DirectSizes:
    int shp, swp           # phase planes: row phases, column phases
    long PH, PW, PS, CS    # rows and columns of a plane, floats of a plane, floats of a channel
    int nv                 # the register block's vectors of positions


cdef inline void direct_sizes(DirectSizes *d, int KH, int KW, int OH, int OW, int sh, int sw,
                              int dh, int dw) noexcept nogil:
    """The prepared image: per channel, shp × swp phase planes, x̃[phr][phc][r][j] = the padded
    input at row r·sh + phr, column j·sw + phc. The tap (kh, kw) of output (oh, ow) is then
    plane (kh·dh mod sh, kw·dw mod sw) at row oh + ⌊kh·dh / sh⌋, column ow + ⌊kw·dw / sw⌋, and
    the kernel runs over positions j = oh·PW + ow flattened (the PW − OW columns past each row
    computed and dropped), so narrow planes still fill its vectors, whatever the stride. A stride
    past the kernel's reach (an output one pixel wide) keeps (K − 1)·d + 1 phases, the only ones
    the taps reach, not one plane per unit of stride. Each plane has the widest register block's
    positions twice over as slack for the last block's reads. nv: the block width (1 to 3
    vectors) that wastes least on the image's positions, a wider one winning ties by 1:2:3 cost
    weights plus a half per block (its broadcasts)."""
    cdef int vw = ember_direct_conv_vw(), nv
    cdef long P, best = -1, cost
    d.shp = <int> min(<long> sh, <long> (KH - 1) * dh + 1)
    d.swp = <int> min(<long> sw, <long> (KW - 1) * dw + 1)
    d.PH = OH + <long> (KH - 1) * dh // sh
    d.PW = OW + <long> (KW - 1) * dw // sw
    d.PS = d.PH * d.PW + 6 * vw
    d.CS = <long> d.shp * d.swp * d.PS
    P = (OH - 1) * d.PW + OW
    d.nv = 3
    for nv in range(3, 0, -1):
        cost = (P + nv * vw - 1) // (nv * vw) * (2 * nv + 1)
        if best < 0 or cost < best:
            best, d.nv = cost, nv


def direct_conv_weight_floats(int M, int C, int KH, int KW, bint lanes=False):
    """Floats of the packed weights: M rounded up to the kernel's block of channels × C·KH·KW
    (lanes: the kernel with output channels in the vector lanes)."""
    cdef int mb = direct_block_channels(M, lanes)
    return round_up_to(M, mb) * C * KH * KW


def pack_direct_conv_weights(float[:, :, :, ::1] w, float[::1] packed, bint lanes=False):
    """packed[((b·C + c)·KH + kh)·KW + kw][i] = w[b·MB + i, c, kh, kw] (0 past M): a tap's MB
    weights side by side, broadcast one by one by the rows kernel, or loaded as MB / VW vectors
    by the pixels kernel (lanes)."""
    cdef int M = w.shape[0], C = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef int mb = direct_block_channels(M, lanes), m
    cdef long taps = <long> C * KH * KW, t
    cdef long need = round_up_to(M, mb) * taps
    if packed.shape[0] < need:
        raise ValueError(f"pack_direct_conv_weights: packed holds {packed.shape[0]} floats, "
                         f"needs {need}")
    if need == 0:
        return
    with nogil:
        pack_channel_blocks(&w[0, 0, 0, 0], &packed[0], M, taps, mb)


cdef void pack_channel_blocks(const float *src, float *dst, int M, long taps,
                              int mb) noexcept nogil:
    """pack_direct_conv_weights' layout (see there)."""
    cdef int m
    cdef long t
    memset(dst, 0, sizeof(float) * round_up_to(M, mb) * taps)
    for m in range(M):
        for t in range(taps):
            dst[((m // mb) * taps + t) * mb + m % mb] = src[m * taps + t]


def direct_conv_scratch_floats(int C, int M, int KH, int KW, int OH, int OW, int stride_h,
                               int stride_w, int dil_h, int dil_w, int nthreads):
    """Floats of scratch DirectConvStep needs: one prepared image per thread."""
    cdef DirectSizes d
    if OH <= 0 or OW <= 0:
        return 0
    direct_sizes(&d, KH, KW, OH, OW, stride_h, stride_w, dil_h, dil_w)
    return <long> C * d.CS * max(nthreads, 1)


cdef struct DirectConvCall:
    ember_dc_geom g
    DirectSizes d
    ember_dc_prep prep     # d and the input's geometry, for the kernel's preparation
    long *taps             # g.tap: owned, one offset per tap
    const float *x
    const float *wp
    const float *bias
    float *y
    float *slots           # per thread, one prepared image (C × d.CS floats)
    long slot_floats
    int N
    bint lanes             # the pixels kernel (output channels in the lanes), else the rows one
    int bm                 # output channels a block of the packed weights
    int row_blocks         # units an image: row blocks × channel-block chunks, when the batch
    int m_chunks           # is smaller than the team
    int nthreads
    bint empty


cdef void direct_prepare_rows(DirectConvCall *c, int n, long r0, long r1,
                              float *xp) noexcept nogil:
    """Rows [r0, r1) of every phase plane of image n (see direct_prepare_channel)."""
    cdef int ch
    for ch in range(c.g.C):
        direct_prepare_channel(c, n, ch, r0, r1, xp + ch * c.d.CS)


cdef inline void direct_prepare_channel(DirectConvCall *c, int n, int ch, long r0, long r1,
                                        float *xc) noexcept nogil:
    """Rows [r0, r1) of the phase planes of channel ch of image n, at xc (conv_direct_kernel.h
    ember_direct_prepare)."""
    ember_direct_prepare(&c.prep, c.x + (<long> n * c.g.C + ch) * c.prep.H * c.prep.W, r0, r1,
                         xc)


cdef void direct_unit(DirectConvCall *c, long u, float *xp) noexcept nogil:
    """Unit u: image u / (row_blocks · m_chunks), one of its row blocks × chunks of channel
    blocks: prepare the input rows the block reaches, then its output channels and rows."""
    cdef ember_dc_geom *g = &c.g
    cdef long per_image = <long> c.row_blocks * c.m_chunks
    cdef int n = <int> (u // per_image), part = <int> (u % per_image)
    cdef int rb = part // c.m_chunks, mc = part % c.m_chunks
    cdef int mblocks = <int> ((g.M + c.bm - 1) // c.bm)
    cdef int oh0 = <int> (<long> g.OH * rb // c.row_blocks)
    cdef int oh1 = <int> (<long> g.OH * (rb + 1) // c.row_blocks)
    cdef int mb0 = <int> (<long> mblocks * mc // c.m_chunks)
    cdef int mb1 = <int> (<long> mblocks * (mc + 1) // c.m_chunks)
    if oh1 <= oh0 or mb1 <= mb0:
        return
    direct_prepare_rows(c, n, oh0, oh1 + (c.d.PH - g.OH), xp)
    if c.lanes:
        ember_direct_conv_pixels(g, xp, c.wp, c.bias, c.y + <long> n * g.M * g.OH * g.OW,
                                 <long> oh0 * g.OW, <long> oh1 * g.OW, mb0, mb1)
    else:
        ember_direct_conv_rows(g, xp, c.wp, c.bias, c.y + <long> n * g.M * g.OH * g.OW, oh0,
                               oh1, mb0, mb1)


cdef void direct_unit_task(void *ctx, long u, int worker) noexcept nogil:
    cdef DirectConvCall *c = <DirectConvCall *> ctx
    direct_unit(c, u, c.slots + worker * c.slot_floats)


cdef int direct_conv_run(DirectConvCall *c) noexcept nogil:
    """Units of (image, row block, channel chunk) over the team, each thread in its own slot.
    Always 0."""
    cdef long u, units = <long> c.N * c.row_blocks * c.m_chunks
    if c.empty:
        return 0
    if c.nthreads == 1:
        for u in range(units):
            direct_unit(c, u, c.slots)
        return 0
    ember_parallel(c.nthreads, units, direct_unit_task, c)
    return 0


cdef int direct_conv_native(void *state) noexcept nogil:
    return direct_conv_run(<DirectConvCall *> state)


cdef class DirectConvStep:
    """A direct conv (group 1) through weights packed by pack_direct_conv_weights (with the same
    ``lanes``), its arguments resolved once: called, or run inside a ``plan.PlanRunner`` with no
    Python in between. Holds its arrays. ``lanes``: the kernel with output channels in the
    vector lanes (small planes), else output positions."""
    cdef DirectConvCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.taps = NULL

    def __dealloc__(self):
        free(self.call.taps)

    def __init__(self, float[:, :, :, ::1] x, float[::1] packed_w, bias, float[:, :, :, ::1] y,
                 scratch, int KH, int KW, int stride_h, int stride_w, int pad_top, int pad_left,
                 int dil_h, int dil_w, int act, float act_a, float act_b, int nthreads,
                 bint lanes=False):
        cdef DirectConvCall *c = &self.call
        cdef float[::1] b, scr
        cdef long need, split
        cdef int C = x.shape[1], M = y.shape[1], OH = y.shape[2], OW = y.shape[3], kh, kw
        cdef int mblocks
        c.lanes, c.bm = lanes, direct_block_channels(M, lanes)
        c.g.mbv = direct_block_vectors(M)
        mblocks = (M + c.bm - 1) // c.bm
        cdef DirectSizes *d = &c.d
        c.N = x.shape[0]
        c.g.C, c.g.M, c.g.KH, c.g.KW, c.g.OH, c.g.OW = C, M, KH, KW, OH, OW
        c.g.act, c.g.act_a, c.g.act_b = act, act_a, act_b
        c.empty = c.N == 0 or M == 0 or OH == 0 or OW == 0
        c.x = c.wp = c.bias = NULL
        c.y = c.slots = NULL
        c.g.tap = NULL
        c.nthreads = threads_for(nthreads, <long> c.N * M * OH * OW * C * KH * KW)
        # a batch smaller than the team: split each image, by channel blocks while there are
        # enough of them (each part prepares the whole image: cheap beside its FMAs), else by rows
        split = 1 if c.N >= c.nthreads or c.N == 0 else (c.nthreads + c.N - 1) // c.N
        c.m_chunks = <int> split if mblocks >= split else 1
        c.row_blocks = 1 if mblocks >= split else <int> split
        c.slot_floats = 0
        self.keep = (x, packed_w, bias, y, scratch)
        self.native.fn = direct_conv_native
        self.native.state = &self.call
        if c.empty:
            return
        if C == 0:
            raise ValueError("DirectConvStep: a conv with no input channel takes another path")
        direct_sizes(d, KH, KW, OH, OW, stride_h, stride_w, dil_h, dil_w)
        c.g.PW, c.g.CS, c.g.nv = d.PW, d.CS, d.nv
        c.prep.H, c.prep.W, c.prep.pt, c.prep.pl = x.shape[2], x.shape[3], pad_top, pad_left
        c.prep.sh, c.prep.sw, c.prep.shp, c.prep.swp = stride_h, stride_w, d.shp, d.swp
        c.prep.PH, c.prep.PW, c.prep.PS = d.PH, d.PW, d.PS
        c.slot_floats = <long> C * d.CS
        need = round_up_to(M, c.bm) * C * KH * KW
        if packed_w.shape[0] < need:
            raise ValueError(f"DirectConvStep: packed weights hold {packed_w.shape[0]} floats, "
                             f"need {need}")
        need = c.slot_floats * c.nthreads
        if scratch is None or len(scratch) < need:
            raise ValueError(f"DirectConvStep: scratch needs {need} floats")
        scr = scratch
        c.slots = &scr[0]
        if bias is not None:
            b = bias
            if b.shape[0] < M:
                raise ValueError(f"DirectConvStep: bias has {b.shape[0]} values, needs {M}")
            c.bias = &b[0]
        c.taps = <long *> malloc(sizeof(long) * KH * KW)
        if c.taps == NULL:
            raise MemoryError("DirectConvStep: no memory for the tap offsets")
        for kh in range(KH):
            for kw in range(KW):
                c.taps[kh * KW + kw] = \
                    ((<long> kh * dil_h % stride_h) * d.swp + <long> kw * dil_w % stride_w) * d.PS \
                    + <long> kh * dil_h // stride_h * d.PW + <long> kw * dil_w // stride_w
        c.g.tap = c.taps
        c.x = &x[0, 0, 0, 0]
        c.wp = &packed_w[0]
        c.y = &y[0, 0, 0, 0]

    def __call__(self):
        with nogil:
            direct_conv_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)



# ---- pointwise conv through weights packed once ---------------------------------------------------
# A 1×1, stride-1, unpadded conv is Y = W·X per image (M × C times C × H·W): conv2d's pointwise path
# packs W into the GEMM's micro-panels on every call — on a 7×7 plane (N = 49) a sixth of the
# layer's time. Here W is packed once (the binder's "pointwise" algorithm) and X read in place.

def pointwise_weight_floats(int M, int K):
    """Floats of W packed as the GEMM packs A: M rounded up to its micro-kernel's rows × K."""
    return round_up_to(M, ember_gemm_mr()) * K


def pack_pointwise_weights(float[:, :, :, ::1] w, float[::1] packed):
    """packed[(m/MR)·K·MR + k·MR + m%MR] = w[m, k] (K = C·KH·KW), 0 past M."""
    cdef int M = w.shape[0]
    cdef long K = <long> w.shape[1] * w.shape[2] * w.shape[3]
    cdef long need = round_up_to(M, ember_gemm_mr()) * K
    if packed.shape[0] < need:
        raise ValueError(f"pack_pointwise_weights: packed holds {packed.shape[0]} floats, "
                         f"needs {need}")
    if need == 0:
        return
    with nogil:   # the direct conv's channel blocks, MR channels a block: the same layout
        pack_channel_blocks(&w[0, 0, 0, 0], &packed[0], M, K, ember_gemm_mr())


cdef struct PointwiseCall:
    const float *x
    const float *wp
    float *y
    ember_bias_act epi
    int N, C, M
    long hw
    int nthreads
    bint empty


cdef int pointwise_run(PointwiseCall *c) noexcept nogil:
    """Every image, 0 when the GEMM's packing buffers cannot be allocated."""
    cdef int n, ok = 1
    if c.empty:
        return 1
    for n in range(c.N):
        ok = ember_sgemm_packed_a(c.M, <int> c.hw, c.C, c.wp, c.x + <long> n * c.C * c.hw,
                                  c.hw, c.y + <long> n * c.M * c.hw, c.hw,
                                  epilogue_for(&c.epi), c.nthreads) and ok
    return ok


cdef int pointwise_native(void *state) noexcept nogil:
    return 0 if pointwise_run(<PointwiseCall *> state) else 1


cdef class PointwiseConvStep:
    """y = act(W·x + bias) per image for a 1×1, stride-1, unpadded, group-1 conv, W packed by
    pack_pointwise_weights: called, or run inside a ``plan.PlanRunner``. Holds its arrays."""
    cdef PointwiseCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, :, ::1] x, float[::1] packed_w, bias, float[:, :, :, ::1] y,
                 int act, float act_a, float act_b, int nthreads):
        cdef PointwiseCall *c = &self.call
        cdef float[::1] b
        cdef long need
        c.N, c.C, c.M = x.shape[0], x.shape[1], y.shape[1]
        c.hw = <long> x.shape[2] * x.shape[3]
        if y.shape[0] != c.N or <long> y.shape[2] * y.shape[3] != c.hw:
            raise ValueError(f"PointwiseConvStep: y {tuple(y.shape)[:4]} does not match x "
                             f"{tuple(x.shape)[:4]}")
        c.epi.bias, c.epi.bias_axis = NULL, 0
        c.epi.act, c.epi.act_a, c.epi.act_b = act, act_a, act_b
        c.nthreads = nthreads
        c.empty = c.N == 0 or c.M == 0 or c.hw == 0
        c.x = c.wp = NULL
        c.y = NULL
        self.keep = (x, packed_w, bias, y)
        self.native.fn = pointwise_native
        self.native.state = &self.call
        if c.empty:
            return
        if c.C == 0:
            raise ValueError("PointwiseConvStep: a conv with no input channel takes another path")
        need = round_up_to(c.M, ember_gemm_mr()) * c.C
        if packed_w.shape[0] < need:
            raise ValueError(f"PointwiseConvStep: packed weights hold {packed_w.shape[0]} "
                             f"floats, need {need}")
        if bias is not None:
            b = bias
            if b.shape[0] < c.M:
                raise ValueError(f"PointwiseConvStep: bias has {b.shape[0]} values, needs {c.M}")
            c.epi.bias = &b[0]
        c.x = &x[0, 0, 0, 0]
        c.wp = &packed_w[0]
        c.y = &y[0, 0, 0, 0]

    def __call__(self):
        cdef int ok
        with nogil:
            ok = pointwise_run(&self.call)
        if not ok:
            self.raise_for(1)

    def raise_for(self, int rc):
        raise MemoryError("PointwiseConvStep: cannot allocate GEMM packing buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)



# ---- run-time weights: packing as a plan step ---------------------------------------------------
cdef struct WeightsPackCall:
    const float *w
    float *packed
    int direct             # 0: pack_conv_weights' layout, 1: pack_direct_conv_weights'
                           # (blocks of mb channels)
    int M, group, nr, KC, mb
    long K


cdef int weights_pack_native(void *state) noexcept nogil:
    cdef WeightsPackCall *c = <WeightsPackCall *> state
    if c.M == 0 or c.K == 0:
        return 0
    if c.direct:
        pack_channel_blocks(c.w, c.packed, c.M, c.K, c.mb)
    else:
        pack_slices(c.w, c.packed, c.M // c.group, c.K, c.group, c.nr, c.KC)
    return 0


cdef class ConvWeightsPackStep:
    """pack_conv_weights (``direct`` False) or pack_direct_conv_weights (True, with ``lanes``;
    or, ``pointwise``, pack_pointwise_weights: channel blocks of the GEMM's MR rows) with its
    arguments resolved once, for weights that change between runs (training's parameters): a
    native step the plan runner chains before the conv (plan.NativeChain). Holds its arrays."""
    cdef WeightsPackCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, :, ::1] w, float[::1] packed, int group, bint direct,
                 bint lanes=False, bint pointwise=False):
        cdef WeightsPackCall *c = &self.call
        cdef long need
        direct = direct or pointwise
        c.M, c.group, c.direct = w.shape[0], group, direct
        c.nr, c.KC = ember_gemm_nr(), ember_gemm_kc()
        c.mb = ember_gemm_mr() if pointwise else direct_block_channels(c.M, lanes)
        c.K = <long> w.shape[1] * w.shape[2] * w.shape[3]
        if group < 1 or c.M % group or (direct and group != 1):
            raise ValueError(f"ConvWeightsPackStep: {c.M} output channels, group {group}")
        need = round_up_to(c.M, c.mb) * c.K if direct else \
            group * c.K * round_up_to(c.M // group, c.nr)
        if packed.shape[0] < need:
            raise ValueError(f"ConvWeightsPackStep: packed holds {packed.shape[0]} floats, "
                             f"needs {need}")
        c.w = c.packed = NULL
        if c.M and c.K:
            c.w = &w[0, 0, 0, 0]
            c.packed = &packed[0]
        self.keep = (w, packed)
        self.native.fn = weights_pack_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            weights_pack_native(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)
