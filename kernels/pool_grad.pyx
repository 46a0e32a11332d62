"""Gradients of max / average / global-average pooling over NCHW planes; one plane per task, so
overlapping windows accumulate into a plane only one thread writes."""
from cython.parallel cimport prange
from libc.string cimport memset

from kernels.parallel cimport threads_for
from kernels.window cimport span_inside, interior_columns, window_work


cdef extern from "pool_rows.h" nogil:
    long ember_window_argmax(const float *x, long W, long h0, long dh, long ilo, long ihi,
                             long w0, long dw, long jlo, long jhi)
    void ember_max2x2_grad_row(const float *r0, const float *r1, const float *g, float *d0,
                               float *d1, long n)


cdef void max_grad_plane(const float *dy, const float *x, float *dx, long H, long W, long OH,
                         long OW, long kh, long kw, long sh, long sw, long pt, long pl, long dh,
                         long dw) noexcept nogil:
    """Each window's dY goes to its first maximum in row-major window order (PyTorch's tie
    rule); a NaN beats any number. Padding is −inf: it never wins, so only in-image taps are
    visited. Window arithmetic in 64 bits (see window.pxd)."""
    cdef long oh, ow, h0, w0, ilo, ihi, jlo, jhi, olo, ohi
    cdef long best_at
    cdef bint pair_rows = kh == 2 and kw == 2 and sh == 2 and sw == 2 and dh == 1 and dw == 1
    memset(dx, 0, sizeof(float) * H * W)
    interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi)
    for oh in range(OH):
        h0 = oh * sh - pt
        span_inside(h0, dh, kh, 0, H, &ilo, &ihi)
        if pair_rows and ilo == 0 and ihi == 2 and ohi > olo:
            ember_max2x2_grad_row(x + h0 * W + olo * 2 - pl, x + (h0 + 1) * W + olo * 2 - pl,
                                  dy + oh * OW + olo, dx + h0 * W + olo * 2 - pl,
                                  dx + (h0 + 1) * W + olo * 2 - pl, ohi - olo)
        for ow in range(OW):
            w0 = ow * sw - pl
            if pair_rows and ilo == 0 and ihi == 2 and olo <= ow < ohi:
                continue      # done by the 2x2 row above
            if olo <= ow < ohi:
                jlo, jhi = 0, kw
            else:
                span_inside(w0, dw, kw, 0, W, &jlo, &jhi)
            if ilo >= ihi or jlo >= jhi:
                continue      # a window of padding only: no pixel receives its gradient
            best_at = ember_window_argmax(x, W, h0, dh, ilo, ihi, w0, dw, jlo, jhi)
            dx[best_at] += dy[oh * OW + ow]


def max_pool2d_grad(float[:, :, :, ::1] dy, float[:, :, :, ::1] x, float[:, :, :, ::1] dx,
                    long kh, long kw, long stride_h, long stride_w, long pad_top, long pad_left,
                    long dil_h, long dil_w, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW) and the pooled input x; the argmax is recomputed
    from x. ceil_mode only changes OH/OW, which come from dy."""
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = dy.shape[2], OW = dy.shape[3]
    cdef long p
    if N * C == 0 or H * W == 0:
        return
    cdef const float *dyp = &dy[0, 0, 0, 0] if OH * OW > 0 else NULL
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *dxp = &dx[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W),
                                                 N * C * H * W))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            max_grad_plane(dyp + p * OH * OW, xp + p * H * W, dxp + p * H * W, H, W, OH, OW,
                           kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)


cdef void avg_grad_plane(const float *dy, float *dx, long H, long W, long OH, long OW, long kh,
                         long kw, long sh, long sw, long pt, long pl, long pb, long pr, long dh,
                         long dw, bint include_pad) noexcept nogil:
    """Each window spreads dY/count over its in-image taps. count is the forward's divisor: the
    taps inside [−pt, H+pb) × [−pl, W+pr) with count_include_pad, else those inside the image
    (the ceil_mode overhang past the end pads never counts). Window arithmetic and tap counts in
    64 bits (see window.pxd)."""
    cdef long oh, ow, i, j, h0, w0, ilo, ihi, jlo, jhi, plo, phi, qlo, qhi, count, olo, ohi
    cdef long rows_in, rows_all
    cdef float share
    cdef float *row
    memset(dx, 0, sizeof(float) * H * W)
    interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi)
    for oh in range(OH):
        h0 = oh * sh - pt
        span_inside(h0, dh, kh, 0, H, &ilo, &ihi)
        rows_in = ihi - ilo
        span_inside(h0, dh, kh, -pt, H + pb, &plo, &phi)
        rows_all = phi - plo
        for ow in range(OW):
            w0 = ow * sw - pl
            if olo <= ow < ohi:   # the whole row of the window is inside, pads or not
                jlo, jhi = 0, kw
                count = (rows_all if include_pad else rows_in) * kw
            else:
                span_inside(w0, dw, kw, 0, W, &jlo, &jhi)
                if include_pad:
                    span_inside(w0, dw, kw, -pl, W + pr, &qlo, &qhi)
                    count = rows_all * (qhi - qlo)
                else:
                    count = rows_in * (jhi - jlo)
            if count <= 0:
                continue
            share = dy[oh * OW + ow] / count
            for i in range(ilo, ihi):
                row = dx + (h0 + i * dh) * W + w0
                for j in range(jlo, jhi):
                    row[j * dw] += share


def avg_pool2d_grad(float[:, :, :, ::1] dy, float[:, :, :, ::1] dx, long kh, long kw,
                    long stride_h, long stride_w, long pad_top, long pad_left, long pad_bottom,
                    long pad_right, long dil_h, long dil_w, bint count_include_pad, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW); divisor exactly as avg_pool2d / ONNX AveragePool."""
    cdef long N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef long OH = dy.shape[2], OW = dy.shape[3]
    cdef long p
    if N * C == 0 or H * W == 0:
        return
    cdef const float *dyp = &dy[0, 0, 0, 0] if OH * OW > 0 else NULL
    cdef float *dxp = &dx[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W),
                                                 N * C * H * W))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            avg_grad_plane(dyp + p * OH * OW, dxp + p * H * W, H, W, OH, OW, kh, kw, stride_h,
                           stride_w, pad_top, pad_left, pad_bottom, pad_right, dil_h, dil_w,
                           count_include_pad)


def global_avg_pool_grad(float[::1] dy, float[:, ::1] dx, int nthreads):
    """dx[r, :] = dy[r] / L for rows r = (n, c) of L = H·W pixels."""
    cdef long R = dx.shape[0], L = dx.shape[1], r, i
    cdef float share
    if R == 0 or L == 0:
        return
    cdef float *dxp = &dx[0, 0]
    with nogil:
        for r in prange(R, num_threads=threads_for(nthreads, R * L), schedule='static'):
            share = dy[r] / L
            for i in range(L):
                dxp[r * L + i] = share
