"""Per-channel kernels over (N, C, inner) views: affine (inference BatchNorm), InstanceNorm, LRN;
and LayerNorm over (rows, n) views."""
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf, powf

from kernels.parallel cimport threads_for
from kernels.simd cimport use_simd
from kernels.sums cimport ember_row_inv_std

use_simd()


cdef extern from "simd.h" nogil:
    void ember_act_span(float *p, long n, int code, float a, float b)


def channel_affine(float[:, :, ::1] x, float[::1] scale, float[::1] shift, float[:, :, ::1] y,
                   int act, float act_a, float act_b, int nthreads):
    """y = act(x·scale[c] + shift[c]); y may be x."""
    cdef long N = x.shape[0], C = x.shape[1], L = x.shape[2], p, i
    cdef float s, t
    cdef const float *xr
    cdef float *yr
    if N * C * L == 0:
        return
    cdef const float *xp = &x[0, 0, 0]
    cdef float *yp = &y[0, 0, 0]
    with nogil:
        for p in prange(N * C, num_threads=threads_for(nthreads, N * C * L), schedule='static'):
            s = scale[p % C]
            t = shift[p % C]
            xr = xp + p * L
            yr = yp + p * L
            for i in range(L):
                yr[i] = xr[i] * s + t
            ember_act_span(yr, L, act, act_a, act_b)


def instance_norm(float[:, :, ::1] x, float[::1] scale, float[::1] bias, float[:, :, ::1] y,
                  float eps, int nthreads):
    """Per (n, c) plane: (x − mean)/√(var + eps)·scale[c] + bias[c], two passes in double."""
    cdef long N = x.shape[0], C = x.shape[1], L = x.shape[2], p, i
    cdef double mean, var, d
    cdef float k, t
    cdef const float *xr
    cdef float *yr
    if N * C * L == 0:
        return
    cdef const float *xp = &x[0, 0, 0]
    cdef float *yp = &y[0, 0, 0]
    with nogil:
        for p in prange(N * C, num_threads=threads_for(nthreads, N * C * L), schedule='static'):
            xr = xp + p * L
            yr = yp + p * L
            mean = 0.0
            for i in range(L):
                mean = mean + xr[i]
            mean = mean / L
            var = 0.0
            for i in range(L):
                d = xr[i] - mean
                var = var + d * d
            var = var / L
            k = scale[p % C] / sqrtf(<float> var + eps)
            t = <float> (bias[p % C] - mean * k)
            for i in range(L):
                yr[i] = xr[i] * k + t


def lrn(float[:, :, ::1] x, float[:, :, ::1] y, int size, float alpha, float beta, float bias,
        int nthreads):
    """ONNX LRN: the square sum over channels [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉] is built in y,
    then y = x / (bias + alpha/size · sum)^beta in place."""
    cdef long N = x.shape[0], C = x.shape[1], L = x.shape[2], p, i, c, n, q, lo, hi
    cdef float k = alpha / size
    cdef const float *xr
    cdef float *yr
    if N * C * L == 0:
        return
    cdef const float *xp = &x[0, 0, 0]
    cdef float *yp = &y[0, 0, 0]
    with nogil:
        for p in prange(N * C, num_threads=threads_for(nthreads, N * C * L), schedule='static'):
            n = p // C
            c = p % C
            lo = c - (size - 1) // 2
            hi = c + size // 2
            if lo < 0:
                lo = 0
            if hi > C - 1:
                hi = C - 1
            yr = yp + p * L
            for i in range(L):
                yr[i] = 0.0
            for q in range(lo, hi + 1):
                xr = xp + (n * C + q) * L
                for i in range(L):
                    yr[i] = yr[i] + xr[i] * xr[i]
            xr = xp + p * L
            for i in range(L):
                yr[i] = xr[i] / powf(bias + k * yr[i], beta)


cdef void layer_norm_row(const float *x, const float *s, const float *b, float *y, long L,
                         float eps, float *mean_out, float *inv_out) noexcept nogil:
    """One row of layer_norm; b, mean_out and inv_out may be NULL."""
    cdef double m
    cdef double inv = ember_row_inv_std(x, L, eps, &m)
    cdef float mean = <float> (x[0] + m), k = <float> inv
    cdef long i
    if b != NULL:
        for i in range(L):
            y[i] = (x[i] - mean) * k * s[i] + b[i]
    else:
        for i in range(L):
            y[i] = (x[i] - mean) * k * s[i]
    if mean_out != NULL:
        mean_out[0] = mean
    if inv_out != NULL:
        inv_out[0] = k


def layer_norm(float[:, ::1] x, float[::1] scale, bias, float[:, ::1] y, mean_out, inv_out,
               float eps, int nthreads):
    """Each row of x (rows, n): y = (x − mean)·inv·scale + bias, inv = 1/√(var + eps), the
    population variance, parallel over rows. The statistics come from one vectorised pass of
    sums shifted by the row's first value (kernels/sums_kernel.h: float lanes flushed into double
    every 512 values; the shift keeps E[d²] − E[d]² from cancelling when the mean is large).
    bias (float[::1] of n) may be None; mean_out / inv_out (float[::1] of rows, or None)
    receive each row's mean and inv. n ≥ 1."""
    cdef long R = x.shape[0], L = x.shape[1], r
    cdef float[::1] b_v
    cdef float[::1] mo_v
    cdef float[::1] io_v
    cdef const float *bp = NULL
    cdef float *mop = NULL
    cdef float *iop = NULL
    if R == 0 or L == 0:
        return
    if bias is not None:
        b_v = bias
        bp = &b_v[0]
    if mean_out is not None:
        mo_v = mean_out
        mop = &mo_v[0]
    if inv_out is not None:
        io_v = inv_out
        iop = &io_v[0]
    cdef const float *xp = &x[0, 0]
    cdef float *yp = &y[0, 0]
    cdef const float *sp = &scale[0]
    with nogil:
        for r in prange(R, num_threads=threads_for(nthreads, R * L), schedule='static'):
            layer_norm_row(xp + r * L, sp, bp, yp + r * L, L, eps,
                           mop + r if mop != NULL else NULL, iop + r if iop != NULL else NULL)
