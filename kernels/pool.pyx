"""Max / average pooling over NCHW planes and global pooling over rows; one plane per task."""
from cython.parallel cimport prange
from libc.math cimport INFINITY

from kernels.parallel cimport threads_for
from kernels.window cimport span_inside, interior_columns, window_work


cdef extern from "pool_rows.h" nogil:
    float ember_nan_max(float m, float v)
    void ember_max_row(float *y, const float *r, long n, long stride)


cdef void max_plane(const float *x, float *y, long H, long W, long OH, long OW, long kh, long kw,
                    long sh, long sw, long pt, long pl, long dh, long dw) noexcept nogil:
    """Tap by tap over the interior ow span (a vectorisable select per tap), windowed scalar
    loop for the border columns. Window arithmetic in 64 bits (see window.pxd)."""
    cdef long oh, ow, i, j, h0, w0, ilo, ihi, jlo, jhi, olo, ohi
    cdef float m
    cdef const float *row
    cdef float *yrow
    interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi)
    for oh in range(OH):
        h0 = oh * sh - pt
        span_inside(h0, dh, kh, 0, H, &ilo, &ihi)
        yrow = y + oh * OW
        if ohi > olo:
            for ow in range(olo, ohi):
                yrow[ow] = -INFINITY
            for i in range(ilo, ihi):
                row = x + (h0 + i * dh) * W - pl
                for j in range(kw):
                    ember_max_row(yrow + olo, row + olo * sw + j * dw, ohi - olo, sw)
        for ow in range(OW):
            if olo <= ow < ohi:
                continue      # done by the rows above
            w0 = ow * sw - pl
            span_inside(w0, dw, kw, 0, W, &jlo, &jhi)
            m = -INFINITY
            for i in range(ilo, ihi):
                row = x + (h0 + i * dh) * W + w0
                for j in range(jlo, jhi):
                    m = ember_nan_max(m, row[j * dw])
            yrow[ow] = m


def max_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw, long stride_h,
               long stride_w, long pad_top, long pad_left, long dil_h, long dil_w, int nthreads):
    """Padded positions never win (an all-padding window would give -inf)."""
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W), 0))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            max_plane(xp + p * H * W, yp + p * OH * OW, H, W, OH, OW, kh, kw, stride_h,
                      stride_w, pad_top, pad_left, dil_h, dil_w)


cdef void avg_plane(const float *x, float *y, long H, long W, long OH, long OW, long kh, long kw,
                    long sh, long sw, long pt, long pl, long pb, long pr,
                    bint include_pad) noexcept nogil:
    """Window arithmetic and tap counts in 64 bits (see window.pxd)."""
    cdef long oh, ow, i, j, h0, w0, ilo, ihi, jlo, jhi, plo, phi, qlo, qhi, count
    cdef float s
    cdef const float *row
    for oh in range(OH):
        h0 = oh * sh - pt
        span_inside(h0, 1, kh, 0, H, &ilo, &ihi)
        span_inside(h0, 1, kh, -pt, H + pb, &plo, &phi)
        for ow in range(OW):
            w0 = ow * sw - pl
            span_inside(w0, 1, kw, 0, W, &jlo, &jhi)
            s = 0.0
            for i in range(ilo, ihi):
                row = x + (h0 + i) * W + w0
                for j in range(jlo, jhi):
                    s = s + row[j]
            if include_pad:
                span_inside(w0, 1, kw, -pl, W + pr, &qlo, &qhi)
                count = (phi - plo) * (qhi - qlo)
            else:
                count = (ihi - ilo) * (jhi - jlo)
            y[oh * OW + ow] = s / count if count > 0 else 0.0


def avg_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw, long stride_h,
               long stride_w, long pad_top, long pad_left, long pad_bottom, long pad_right,
               bint count_include_pad, int nthreads):
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W), 0))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
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
    nthreads = threads_for(nthreads, R * L)
    with nogil:
        for r in prange(R, num_threads=nthreads, schedule='static'):
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
