"""Softmax / log-softmax along the middle axis of an (outer, n, inner) view, max-subtracted."""
from cython.parallel cimport prange
from libc.math cimport expf, logf

from kernels.parallel cimport threads_for


cdef void softmax_column(const float *x, float *y, long n, long stride, bint log) noexcept nogil:
    """One softmax over n values spaced `stride` apart (stride 1 is the common, contiguous case)."""
    cdef long k
    cdef float m = x[0], v
    cdef double s = 0.0
    for k in range(1, n):
        v = x[k * stride]
        if v > m:
            m = v
    if log:
        for k in range(n):
            s += expf(x[k * stride] - m)
        v = logf(<float> s)
        for k in range(n):   # (x - m) is exact-ish; folding m into v would round at |m|'s ulp
            y[k * stride] = (x[k * stride] - m) - v
    else:
        for k in range(n):
            v = expf(x[k * stride] - m)
            y[k * stride] = v
            s += v
        v = <float> (1.0 / s)
        for k in range(n):
            y[k * stride] = y[k * stride] * v


def softmax(float[:, :, ::1] x, float[:, :, ::1] y, bint log, int nthreads):
    cdef long outer = x.shape[0], n = x.shape[1], inner = x.shape[2], t, o, j
    if outer * n * inner == 0:
        return
    cdef const float *xp = &x[0, 0, 0]
    cdef float *yp = &y[0, 0, 0]
    with nogil:
        for t in prange(outer * inner, num_threads=threads_for(nthreads, outer * n * inner), schedule='static'):
            o = t // inner
            j = t % inner
            softmax_column(xp + o * n * inner + j, yp + o * n * inner + j, n, inner, log)
