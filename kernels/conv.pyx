"""2-D convolution (ONNX cross-correlation) and transposed convolution over NCHW float32.

conv2d picks its algorithm per call: 1x1 stride-1 unpadded -> GEMM straight on x; depthwise
(group == C == M) -> a direct kernel; anything else -> im2col of one image/group into scratch,
then GEMM. Bias and activation ride in the GEMM epilogue. Batches that divide evenly over the
threads run one image per thread (single-threaded GEMMs, one scratch slot each); otherwise the
images run in turn and each GEMM uses the whole team.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.string cimport memset, memcpy

from kernels.activation cimport apply_act, apply_act_span
from kernels.sgemm cimport ember_sgemm, ember_epilogue_fn, EpilogueCtx, epilogue_for
from kernels.conv_common cimport (ConvShape, threads_for, is_pointwise, is_depthwise,
                                  col_floats, images_in_parallel, im2col_rows)


cdef extern from "conv_pack.h" nogil:
    ctypedef void (*ember_pack_b_fn)(int kc, int nc, int p0, int j0, float *pb,
                                     const void *ctx) noexcept nogil
    ctypedef struct ember_im2col_src:
        const float *x
        int H, W, KH, KW, OW
        int sh, sw, pt, pl, dh, dw
    void ember_pack_b_im2col(int kc, int nc, int p0, int j0, float *pb, const void *ctx)
    int ember_sgemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const float *A, long lda, const float *B, long ldb, float beta, float *C,
                       long ldc, ember_epilogue_fn epi, void *ctx, int nthreads,
                       ember_pack_b_fn pack_b, const void *pack_ctx)


cdef bint implicit_im2col = True


def set_implicit_im2col(bint on):
    """A/B switch for benchmarks: False restores im2col into scratch, then a plain GEMM."""
    global implicit_im2col
    implicit_im2col = on


def conv2d_scratch_floats(int C, int H, int W, int M, int KH, int KW, int OH, int OW,
                          int stride_h, int stride_w, int pad_top, int pad_left, int dil_h,
                          int dil_w, int group, int nthreads):
    """Floats of scratch conv2d needs: 0 for the pointwise and depthwise paths, else one im2col
    panel (C/group·KH·KW × OH·OW) per thread (the batch size is unknown here, and with a batch
    that splits over the threads each thread fills its own panel)."""
    cdef ConvShape s
    s.C = C; s.H = H; s.W = W; s.M = M; s.KH = KH; s.KW = KW; s.OH = OH; s.OW = OW
    s.sh = stride_h; s.sw = stride_w; s.pt = pad_top; s.pl = pad_left; s.dh = dil_h
    s.dw = dil_w; s.group = group
    if is_pointwise(&s) or is_depthwise(&s):
        return 0
    return col_floats(&s) * max(nthreads, 1)


cdef int conv_image(const float *x, const float *w, const float *bias, float *y, float *col,
                    ConvShape *s, int act, float act_a, float act_b, int nthreads) noexcept nogil:
    """One image through GEMM (pointwise or im2col), all groups. Returns 0 when out of memory."""
    cdef int g, Cg = s.C // s.group, Mg = s.M // s.group
    cdef int K = Cg * s.KH * s.KW
    cdef long ohw = <long> s.OH * s.OW, hw = <long> s.H * s.W
    cdef EpilogueCtx ctx
    cdef int ok = 1, r, nrows
    cdef const float *b_ptr
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
                             epilogue_for(&ctx), &ctx, nthreads) and ok
        elif not implicit_im2col or ohw < 256:   # small planes: panels cross rows too often
            if threads_for(nthreads, K * ohw) > 1:
                for r in prange(K, num_threads=nthreads, schedule='static'):
                    im2col_rows(x + g * Cg * hw, col, s, r, r + 1)
            else:
                im2col_rows(x + g * Cg * hw, col, s, 0, K)
            ok = ember_sgemm(0, 0, Mg, <int> ohw, K, 1.0, w + <long> g * Mg * K, K, col, ohw,
                             0.0, y + g * Mg * ohw, ohw, epilogue_for(&ctx), &ctx,
                             nthreads) and ok
        else:   # implicit im2col: the GEMM packs its B panels straight from the image
            src.x = x + g * Cg * hw
            ok = ember_sgemm_ex(0, 0, Mg, <int> ohw, K, 1.0, w + <long> g * Mg * K, K, NULL,
                                ohw, 0.0, y + g * Mg * ohw, ohw, epilogue_for(&ctx), &ctx,
                                nthreads, ember_pack_b_im2col, &src) and ok
    return ok


cdef void depthwise_plane(const float *x, const float *w, float bv, float *y, ConvShape *s,
                          int act, float act_a, float act_b) noexcept nogil:
    """One channel plane of a depthwise conv: rows accumulated tap by tap over the valid ow span,
    with a register-accumulating interior for 3x3 undilated kernels."""
    cdef int oh, ow, kh, kw, ih, iw, lo, hi, off, ilo, ihi
    cdef float wv, acc
    cdef float *yrow
    cdef const float *xrow
    cdef const float *r0
    cdef const float *r1
    cdef const float *r2
    cdef bint fast3 = s.KH == 3 and s.KW == 3 and s.dh == 1 and s.dw == 1
    cdef int sw = s.sw
    cdef float w0 = 0, w1 = 0, w2 = 0, w3 = 0, w4 = 0, w5 = 0, w6 = 0, w7 = 0, w8 = 0
    if fast3:
        w0 = w[0]; w1 = w[1]; w2 = w[2]; w3 = w[3]; w4 = w[4]
        w5 = w[5]; w6 = w[6]; w7 = w[7]; w8 = w[8]
    # ow span where every kw tap is inside the row (for the 3x3 interior)
    ilo = 0
    while ilo < s.OW and ilo * s.sw - s.pl < 0:
        ilo += 1
    ihi = s.OW
    while ihi > ilo and (ihi - 1) * s.sw - s.pl + (s.KW - 1) * s.dw >= s.W:
        ihi -= 1
    for oh in range(s.OH):
        yrow = y + <long> oh * s.OW
        ih = oh * s.sh - s.pt
        if fast3 and ih >= 0 and ih + 2 < s.H and ihi > ilo:
            r0 = x + <long> ih * s.W - s.pl
            r1 = r0 + s.W
            r2 = r1 + s.W
            if sw == 1:   # unit stride: the compiler vectorises this over ow
                for ow in range(ilo, ihi):
                    yrow[ow] = (bv + w0 * r0[ow] + w1 * r0[ow + 1] + w2 * r0[ow + 2]
                                + w3 * r1[ow] + w4 * r1[ow + 1] + w5 * r1[ow + 2]
                                + w6 * r2[ow] + w7 * r2[ow + 1] + w8 * r2[ow + 2])
            else:
                for ow in range(ilo, ihi):
                    iw = ow * sw
                    yrow[ow] = (bv + w0 * r0[iw] + w1 * r0[iw + 1] + w2 * r0[iw + 2]
                                + w3 * r1[iw] + w4 * r1[iw + 1] + w5 * r1[iw + 2]
                                + w6 * r2[iw] + w7 * r2[iw + 1] + w8 * r2[iw + 2])
            # the border columns, tap by tap with bounds
            ow = 0
            while ow < s.OW:
                if ow == ilo:
                    ow = ihi
                    continue
                acc = bv
                for kh in range(3):
                    for kw in range(3):
                        iw = ow * s.sw - s.pl + kw
                        if iw >= 0 and iw < s.W:
                            acc = acc + w[kh * 3 + kw] * x[<long> (ih + kh) * s.W + iw]
                yrow[ow] = acc
                ow += 1
        else:
            for ow in range(s.OW):
                yrow[ow] = bv
            for kh in range(s.KH):
                ih = oh * s.sh - s.pt + kh * s.dh
                if ih < 0 or ih >= s.H:
                    continue
                xrow = x + <long> ih * s.W
                for kw in range(s.KW):
                    wv = w[kh * s.KW + kw]
                    off = kw * s.dw - s.pl
                    lo = 0
                    while lo < s.OW and lo * s.sw + off < 0:
                        lo += 1
                    hi = s.OW
                    while hi > lo and (hi - 1) * s.sw + off >= s.W:
                        hi -= 1
                    if s.sw == 1:
                        for ow in range(lo, hi):
                            yrow[ow] += wv * xrow[ow + off]
                    else:
                        for ow in range(lo, hi):
                            yrow[ow] += wv * xrow[ow * s.sw + off]
        apply_act_span(yrow, s.OW, act, act_a, act_b)


def conv2d(float[:, :, :, ::1] x, float[:, :, :, ::1] w, bias, float[:, :, :, ::1] y, scratch,
           int stride_h, int stride_w, int pad_top, int pad_left, int dil_h, int dil_w,
           int group, int act, float act_a, float act_b, int nthreads):
    cdef ConvShape s
    s.N = x.shape[0]; s.C = x.shape[1]; s.H = x.shape[2]; s.W = x.shape[3]
    s.M = y.shape[1]; s.OH = y.shape[2]; s.OW = y.shape[3]
    s.KH = w.shape[2]; s.KW = w.shape[3]
    s.sh = stride_h; s.sw = stride_w; s.pt = pad_top; s.pl = pad_left
    s.dh = dil_h; s.dw = dil_w; s.group = group
    if nthreads < 1:
        nthreads = 1
    if s.N == 0 or s.M == 0 or s.OH == 0 or s.OW == 0:
        return
    cdef float[::1] bias_view
    cdef float[::1] scratch_view
    cdef const float *bias_ptr = NULL
    cdef float *col = NULL
    cdef long col_n = col_floats(&s), slots = 1, have = 0
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef const float *wp = &w[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    cdef int n, p, ok = 1, c
    cdef bint per_thread = images_in_parallel(s.N, nthreads)
    if bias is not None:
        bias_view = bias
        bias_ptr = &bias_view[0]

    if is_depthwise(&s):
        nthreads = threads_for(nthreads, <long> s.N * s.C * plane_out * s.KH * s.KW)
        with nogil:
            for p in prange(s.N * s.C, num_threads=nthreads, schedule='static'):
                c = p % s.C
                depthwise_plane(xp + p * plane_in, wp + c * s.KH * s.KW,
                                bias_ptr[c] if bias_ptr != NULL else 0.0,
                                yp + p * plane_out, &s, act, act_a, act_b)
        return

    if not is_pointwise(&s):
        if scratch is not None:
            scratch_view = scratch
            have = scratch_view.shape[0]
        if have < col_n:
            raise ValueError(f"conv2d: scratch holds {have} floats, needs {col_n} per slot")
        col = &scratch_view[0]
        slots = have // col_n
    else:
        slots = nthreads   # GEMM straight on x: no scratch, no limit on parallel images
    if per_thread and slots < 2:
        per_thread = False
    with nogil:
        if per_thread:
            nthreads = <int> min(<long> nthreads, slots)
            for n in prange(s.N, num_threads=nthreads, schedule='dynamic'):
                ok &= conv_image(xp + n * x_img, wp, bias_ptr, yp + n * y_img,
                                 col + threadid() * col_n if col != NULL else NULL,
                                 &s, act, act_a, act_b, 1)
        else:
            for n in range(s.N):
                ok = conv_image(xp + n * x_img, wp, bias_ptr, yp + n * y_img, col, &s, act,
                                act_a, act_b, nthreads) and ok
    if not ok:
        raise MemoryError("conv2d: cannot allocate GEMM packing buffers")


def conv_transpose2d_scratch_floats(int C, int H, int W, int M, int KH, int KW, int group,
                                    int nthreads):
    """Floats of scratch conv_transpose2d needs: one column buffer (M/group·KH·KW × H·W)."""
    return <long> (M // group) * KH * KW * H * W


cdef void col2im_channel(const float *col, float *yplane, int m, float bv, int H, int W, int OH,
                         int OW, int KH, int KW, int sh, int sw, int pt, int pl, int dh,
                         int dw) noexcept nogil:
    """y[m] = bias + scatter-add of the col rows (m, kh, kw) to oh = ih·sh − pt + kh·dh, …"""
    cdef int kh, kw, ih, iw, oh, ow, lo, hi
    cdef const float *crow
    cdef float *yrow
    cdef long i
    for i in range(<long> OH * OW):
        yplane[i] = bv
    for kh in range(KH):
        for kw in range(KW):
            crow = col + (<long> (m * KH + kh) * KW + kw) * H * W
            lo = 0
            while lo < W and lo * sw - pl + kw * dw < 0:
                lo += 1
            hi = W
            while hi > lo and (hi - 1) * sw - pl + kw * dw >= OW:
                hi -= 1
            for ih in range(H):
                oh = ih * sh - pt + kh * dh
                if oh < 0 or oh >= OH:
                    continue
                yrow = yplane + <long> oh * OW - pl + kw * dw
                for iw in range(lo, hi):
                    yrow[iw * sw] += crow[<long> ih * W + iw]


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
                                     NULL, NULL, nthreads) and ok
                elif need > 0:
                    memset(col, 0, sizeof(float) * need)
                for m in prange(Mg, num_threads=nthreads, schedule='static'):
                    col2im_channel(col, yp + (<long> n * M + g * Mg + m) * ohw, m,
                                   bias_ptr[g * Mg + m] if bias_ptr != NULL else 0.0,
                                   H, W, OH, OW, KH, KW, stride_h, stride_w, pad_top, pad_left,
                                   dil_h, dil_w)
    if not ok:
        raise MemoryError("conv_transpose2d: cannot allocate GEMM packing buffers")
