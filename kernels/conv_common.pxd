# Geometry and im2col shared by the forward convolution (conv.pyx) and its gradients
# (conv_grad.pyx): one definition of "which pixel sits under tap (kh, kw) of output (oh, ow)".
from libc.string cimport memset, memcpy


cdef struct ConvShape:
    int N, C, H, W, M, KH, KW, OH, OW
    int sh, sw, pt, pl, dh, dw, group


cdef inline int threads_for(int nthreads, long work) noexcept nogil:
    """1 below ~32K element-taps: waking a team (and waiting at its barrier for a thread the OS
    may have descheduled on a busy machine) costs more than the loop itself."""
    if nthreads < 1 or work < 32768:
        return 1
    return nthreads


cdef inline bint is_pointwise(ConvShape *s) noexcept nogil:
    return (s.KH == 1 and s.KW == 1 and s.sh == 1 and s.sw == 1 and s.pt == 0 and s.pl == 0
            and s.OH == s.H and s.OW == s.W)


cdef inline bint is_depthwise(ConvShape *s) noexcept nogil:
    return s.group == s.C and s.M == s.C and s.group > 1 or (s.C == 1 and s.M == 1)


cdef inline long col_floats(ConvShape *s) noexcept nogil:
    return <long> (s.C // s.group) * s.KH * s.KW * s.OH * s.OW


cdef inline bint images_in_parallel(int N, int nthreads) noexcept nogil:
    """One image per thread when that splits evenly (or there are many images)."""
    return nthreads > 1 and N >= nthreads and (N % nthreads == 0 or N >= 4 * nthreads)


cdef inline void valid_ow_span(ConvShape *s, int kw, int *lo, int *hi) noexcept nogil:
    """[lo, hi): the output columns whose input column iw = ow·sw − pl + kw·dw lies in [0, W)."""
    cdef int off = kw * s.dw - s.pl
    lo[0] = 0
    while lo[0] < s.OW and lo[0] * s.sw + off < 0:
        lo[0] += 1
    hi[0] = s.OW
    while hi[0] > lo[0] and (hi[0] - 1) * s.sw + off >= s.W:
        hi[0] -= 1


cdef inline void im2col_rows(const float *x, float *col, ConvShape *s, int r0,
                             int r1) noexcept nogil:
    """Rows [r0, r1) of the im2col panel of one image-group: row (c, kh, kw), column (oh, ow)."""
    cdef int r, c, kh, kw, oh, ow, ih, lo, hi
    cdef int hw = s.H * s.W
    cdef const float *xrow
    cdef float *dst
    for r in range(r0, r1):
        kw = r % s.KW
        kh = (r // s.KW) % s.KH
        c = r // (s.KW * s.KH)
        dst = col + <long> r * s.OH * s.OW
        valid_ow_span(s, kw, &lo, &hi)
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
