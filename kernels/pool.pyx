"""Max / average pooling over NCHW planes and global pooling over rows: the arguments are checked
here, the planes (or rows) split over the threads, and each plane pooled by the dispatched
kernels of kernels/pool_kernel.h."""
from cython.parallel cimport prange
from libc.math cimport INFINITY

from kernels.parallel cimport threads_for
from kernels.pool_kernel cimport (ember_pool_window, pool_window, ember_max_pool_plane,
                                  ember_avg_pool_plane, ember_global_pool_rows)
from kernels.simd cimport use_simd
from kernels.window cimport window_work

use_simd()


def max_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw, long stride_h,
               long stride_w, long pad_top, long pad_left, long dil_h, long dil_w, int nthreads):
    """Padded positions never win (an all-padding window gives -inf); a NaN wins."""
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef ember_pool_window g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top,
                                           pad_left, 0, 0, dil_h, dil_w, False)
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W), 0))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            ember_max_pool_plane(xp + p * H * W, yp + p * OH * OW, &g)


def avg_pool2d(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw, long stride_h,
               long stride_w, long pad_top, long pad_left, long pad_bottom, long pad_right,
               bint count_include_pad, int nthreads):
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = y.shape[2], OW = y.shape[3]
    cdef long p
    if N * C == 0 or OH * OW == 0:
        return
    cdef ember_pool_window g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top,
                                           pad_left, pad_bottom, pad_right, 1, 1,
                                           count_include_pad)
    cdef const float *xp = &x[0, 0, 0, 0]
    cdef float *yp = &y[0, 0, 0, 0]
    nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W), 0))
    with nogil:
        for p in prange(<long> N * C, num_threads=nthreads, schedule='static'):
            ember_avg_pool_plane(xp + p * H * W, yp + p * OH * OW, &g)


def global_pool(float[:, ::1] x, float[::1] y, bint is_max, int nthreads):
    """y[r] = max (a NaN wins) or mean of row r (rows are N·C planes of H·W)."""
    cdef long R = x.shape[0], L = x.shape[1], r, t, per
    if R == 0:
        return
    if L == 0:
        for r in range(R):
            y[r] = -INFINITY if is_max else 0.0
        return
    cdef const float *xp = &x[0, 0]
    cdef float *yp = &y[0]
    nthreads = threads_for(nthreads, R * L)
    per = (R + nthreads - 1) // nthreads
    with nogil:
        for t in prange(nthreads, num_threads=nthreads, schedule='static'):
            if t * per < R:
                ember_global_pool_rows(xp + t * per * L, yp + t * per, min(per, R - t * per), L,
                                       is_max)
