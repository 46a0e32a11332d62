# Geometry, im2col and col2im shared by the convolutions (conv.pyx) and their gradients
# (conv_grad.pyx): one definition of "which pixel sits under tap (kh, kw) of output (oh, ow)".
from libc.string cimport memset, memcpy

from kernels.window cimport span_inside


cdef struct ConvShape:
    int N, C, H, W, M, KH, KW, OH, OW
    int sh, sw, pt, pl, dh, dw, group


cdef inline ConvShape conv_shape(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                 int OW, int sh, int sw, int pt, int pl, int dh, int dw,
                                 int group) noexcept nogil:
    cdef ConvShape s
    s.N = N; s.C = C; s.H = H; s.W = W; s.M = M; s.KH = KH; s.KW = KW; s.OH = OH; s.OW = OW
    s.sh = sh; s.sw = sw; s.pt = pt; s.pl = pl; s.dh = dh; s.dw = dw; s.group = group
    return s


cdef inline bint is_pointwise(ConvShape *s) noexcept nogil:
    return (s.KH == 1 and s.KW == 1 and s.sh == 1 and s.sw == 1 and s.pt == 0 and s.pl == 0
            and s.OH == s.H and s.OW == s.W)


cdef enum:
    # The depthwise kernels (depthwise_kernel.h) copy each plane's padded, strided, dilated window into
    # a per-thread buffer, forward and gradient alike. Real layers' windows are a few times
    # their planes; a geometry whose pads, strides or dilations make the window far larger than
    # the data (e.g. pads of 2^30 around an 8-pixel plane) takes the grouped GEMM path instead,
    # whose memory follows the input and output. Below DW_MAX_WINDOW_FLOATS every int the
    # depthwise kernels form from the window (8 channels × a padded row included) fits an int32.
    DW_WINDOW_PER_PIXEL = 4
    DW_WINDOW_SLACK = 65536
    DW_MAX_WINDOW_FLOATS = 1 << 27


cdef inline long depthwise_window(ConvShape *s) noexcept nogil:
    """Floats of one plane's window as the depthwise kernels pack it (an upper bound over the
    forward's phase planes and 8-channel rows and the input gradient's zero-inserted dY)."""
    cdef long rows = <long> s.OH * s.sh + <long> (s.KH - 1) * s.dh + s.H
    cdef long cols = <long> s.OW * s.sw + <long> (s.KW - 1) * s.dw + s.W
    return rows * cols


cdef inline bint is_depthwise(ConvShape *s) noexcept nogil:
    """One input channel per output channel (group == C == M, or C == M == 1), with a window
    the depthwise kernels' buffers can hold."""
    cdef long window
    if not (s.group == s.C and s.M == s.C and s.group > 1 or (s.C == 1 and s.M == 1)):
        return False
    window = depthwise_window(s)
    return window <= DW_MAX_WINDOW_FLOATS and window <= DW_WINDOW_PER_PIXEL * (
        <long> s.H * s.W + <long> s.OH * s.OW) + DW_WINDOW_SLACK


cdef inline long col_floats(ConvShape *s) noexcept nogil:
    return <long> (s.C // s.group) * s.KH * s.KW * s.OH * s.OW


cdef inline bint images_in_parallel(int N, int nthreads) noexcept nogil:
    """One image per thread when that splits evenly (or there are many images)."""
    return nthreads > 1 and N >= nthreads and (N % nthreads == 0 or N >= 4 * nthreads)


cdef inline void im2col_rows(const float *x, float *col, ConvShape *s, int r0,
                             int r1) noexcept nogil:
    """Rows [r0, r1) of the im2col panel of one image-group: row (c, kh, kw), column (oh, ow)."""
    cdef int r, c, kh, kw, oh, ow, ih
    cdef long lo, hi
    cdef long hw = <long> s.H * s.W
    cdef const float *xrow
    cdef float *dst
    for r in range(r0, r1):
        kw = r % s.KW
        kh = (r // s.KW) % s.KH
        c = r // (s.KW * s.KH)
        dst = col + <long> r * s.OH * s.OW
        span_inside(kw * s.dw - s.pl, s.sw, s.OW, 0, s.W, &lo, &hi)
        for oh in range(s.OH):
            ih = oh * s.sh - s.pt + kh * s.dh
            if ih < 0 or ih >= s.H:
                memset(dst, 0, sizeof(float) * s.OW)
            else:
                xrow = x + <long> c * hw + <long> ih * s.W - s.pl + kw * s.dw
                for ow in range(lo):
                    dst[ow] = 0.0
                if s.sw == 1:
                    if hi > lo:
                        memcpy(dst + lo, xrow + lo, sizeof(float) * (hi - lo))
                else:
                    for ow in range(lo, hi):
                        dst[ow] = xrow[ow * s.sw]
                for ow in range(hi, s.OW):
                    dst[ow] = 0.0
            dst += s.OW


cdef inline void col2im_channel(const float *col, float *plane, int c, ConvShape *s,
                                float fill) noexcept nogil:
    """plane (H × W) = fill + scatter-add of the column rows (c, kh, kw): column (oh, ow) of row
    (c, kh, kw) lands on pixel (oh·sh − pt + kh·dh, ow·sw − pl + kw·dw) when that is inside the
    plane. The adjoint of im2col: a conv's input gradient, and a transposed conv's output."""
    cdef int kh, kw, oh, ow, ih
    cdef long i, lo, hi, P = <long> s.OH * s.OW
    cdef const float *crow
    cdef float *row
    for i in range(<long> s.H * s.W):
        plane[i] = fill
    for kh in range(s.KH):
        for kw in range(s.KW):
            crow = col + ((<long> c * s.KH + kh) * s.KW + kw) * P
            span_inside(kw * s.dw - s.pl, s.sw, s.OW, 0, s.W, &lo, &hi)
            for oh in range(s.OH):
                ih = oh * s.sh - s.pt + kh * s.dh
                if ih >= 0 and ih < s.H:
                    row = plane + <long> ih * s.W - s.pl + kw * s.dw
                    if s.sw == 1:
                        for ow in range(lo, hi):
                            row[ow] += crow[ow]
                    else:
                        for ow in range(lo, hi):
                            row[ow * s.sw] += crow[ow]
                crow += s.OW
