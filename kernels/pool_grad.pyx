"""Gradients of max / average / global-average pooling over NCHW planes; one plane per task (the
dispatched kernels of kernels/pool_kernel.h), so overlapping windows accumulate into a plane only
one thread writes."""
from cython.parallel cimport prange

from kernels.parallel cimport threads_for
from kernels.pool_kernel cimport (ember_pool_window, pool_window, ember_max_pool_grad_plane,
                                  ember_avg_pool_grad_plane)
from kernels.simd cimport use_simd
from kernels.window cimport window_work

use_simd()


def max_pool2d_grad(float[:, :, :, ::1] dy, float[:, :, :, ::1] x, float[:, :, :, ::1] dx,
                    long kh, long kw, long stride_h, long stride_w, long pad_top, long pad_left,
                    long dil_h, long dil_w, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW) and the pooled input x; the argmax is recomputed
    from x: each window's dY goes to its first maximum in row-major window order (PyTorch's tie
    rule), a NaN beats any number and the first NaN stays. ceil_mode only changes OH/OW, which
    come from dy."""
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = dy.shape[2], OW = dy.shape[3]
    cdef long p
    if N * C == 0 or H * W == 0:
        return
    cdef ember_pool_window g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top,
                                           pad_left, 0, 0, dil_h, dil_w, False)
    cdef const float *dyp = &dy[0, 0, 0, 0] if OH * OW > 0 else NULL
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *dxp = &dx[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W),
                                                 N * C * H * W))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            ember_max_pool_grad_plane(dyp + p * OH * OW, xp + p * H * W, dxp + p * H * W, &g)


def avg_pool2d_grad(float[:, :, :, ::1] dy, float[:, :, :, ::1] dx, long kh, long kw,
                    long stride_h, long stride_w, long pad_top, long pad_left, long pad_bottom,
                    long pad_right, long dil_h, long dil_w, bint count_include_pad, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW): each window spreads dY/count over its in-image
    taps, count exactly avg_pool2d's / ONNX AveragePool's divisor (the ceil_mode overhang past
    the end pads never counts)."""
    cdef long N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef long OH = dy.shape[2], OW = dy.shape[3]
    cdef long p
    if N * C == 0 or H * W == 0:
        return
    cdef ember_pool_window g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top,
                                           pad_left, pad_bottom, pad_right, dil_h, dil_w,
                                           count_include_pad)
    cdef const float *dyp = &dy[0, 0, 0, 0] if OH * OW > 0 else NULL
    cdef float *dxp = &dx[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W),
                                                 N * C * H * W))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            ember_avg_pool_grad_plane(dyp + p * OH * OW, dxp + p * H * W, &g)


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
