"""Max / average pooling over NCHW planes and global pooling over rows; one plane per task."""
from cython.parallel cimport prange
from libc.math cimport INFINITY


cdef inline int first_inside(int start, int step, int lo_bound) noexcept nogil:
    """Smallest k >= 0 with start + k*step >= lo_bound."""
    if start >= lo_bound:
        return 0
    return (lo_bound - start + step - 1) // step


cdef inline int end_inside(int start, int step, int count, int hi_bound) noexcept nogil:
    """One past the largest k < count with start + k*step < hi_bound (>= 0)."""
    cdef int k
    if start >= hi_bound:
        return 0
    k = (hi_bound - 1 - start) // step + 1
    return k if k < count else count


cdef void max_plane(const float *x, float *y, int H, int W, int OH, int OW, int kh, int kw,
                    int sh, int sw, int pt, int pl, int dh, int dw) noexcept nogil:
    cdef int oh, ow, i, j, h0, w0, ilo, ihi, jlo, jhi
    cdef float m, v
    cdef const float *row
    for oh in range(OH):
        h0 = oh * sh - pt
        ilo = first_inside(h0, dh, 0)
        ihi = end_inside(h0, dh, kh, H)
        for ow in range(OW):
            w0 = ow * sw - pl
            jlo = first_inside(w0, dw, 0)
            jhi = end_inside(w0, dw, kw, W)
            m = -INFINITY
            for i in range(ilo, ihi):
                row = x + <long> (h0 + i * dh) * W + w0
                for j in range(jlo, jhi):
                    v = row[j * dw]
                    if v > m or v != v:
                        m = v
            y[<long> oh * OW + ow] = m


def max_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, int kh, int kw, int stride_h,
               int stride_w, int pad_top, int pad_left, int dil_h, int dil_w, int nthreads):
    """Padded positions never win (an all-padding window would give -inf)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    with nogil:
        for p in prange(<long> N * C, num_threads=max(nthreads, 1), schedule='static'):
            max_plane(xp + p * H * W, yp + p * OH * OW, H, W, OH, OW, kh, kw, stride_h,
                      stride_w, pad_top, pad_left, dil_h, dil_w)


cdef void avg_plane(const float *x, float *y, int H, int W, int OH, int OW, int kh, int kw,
                    int sh, int sw, int pt, int pl, int pb, int pr,
                    bint include_pad) noexcept nogil:
    cdef int oh, ow, i, j, h0, w0, ilo, ihi, jlo, jhi, plo, phi, qlo, qhi, count
    cdef float s
    cdef const float *row
    for oh in range(OH):
        h0 = oh * sh - pt
        ilo = first_inside(h0, 1, 0)
        ihi = end_inside(h0, 1, kh, H)
        plo = first_inside(h0, 1, -pt)
        phi = end_inside(h0, 1, kh, H + pb)
        for ow in range(OW):
            w0 = ow * sw - pl
            jlo = first_inside(w0, 1, 0)
            jhi = end_inside(w0, 1, kw, W)
            s = 0.0
            for i in range(ilo, ihi):
                row = x + <long> (h0 + i) * W + w0
                for j in range(jlo, jhi):
                    s = s + row[j]
            if include_pad:
                qlo = first_inside(w0, 1, -pl)
                qhi = end_inside(w0, 1, kw, W + pr)
                count = (phi - plo) * (qhi - qlo)
            else:
                count = (ihi - ilo) * (jhi - jlo)
            y[<long> oh * OW + ow] = s / count if count > 0 else 0.0


def avg_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, int kh, int kw, int stride_h,
               int stride_w, int pad_top, int pad_left, int pad_bottom, int pad_right,
               bint count_include_pad, int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    with nogil:
        for p in prange(<long> N * C, num_threads=max(nthreads, 1), schedule='static'):
            avg_plane(xp + p * H * W, yp + p * OH * OW, H, W, OH, OW, kh, kw, stride_h,
                      stride_w, pad_top, pad_left, pad_bottom, pad_right, count_include_pad)


def global_pool(float[:, ::1] x, float[::1] y, bint is_max, int nthreads):
    """y[r] = max or mean of row r (rows are N·C planes of H·W)."""
    cdef long R = x.shape[0], L = x.shape[1], r, i
    cdef double s
    cdef float m, v
    cdef const float *row
    if R == 0:
        return
    if L == 0:
        for r in range(R):
            y[r] = -INFINITY if is_max else 0.0
        return
    cdef const float *xp = &x[0, 0]
    with nogil:
        for r in prange(R, num_threads=max(nthreads, 1), schedule='static'):
            row = xp + r * L
            if is_max:
                m = row[0]
                for i in range(1, L):
                    v = row[i]
                    if v > m or v != v:
                        m = v
                y[r] = m
            else:
                s = 0.0
                for i in range(L):
                    s = s + row[i]
                y[r] = <float> (s / L)
