"""Softmax / log-softmax along the middle axis of an (outer, n, inner) view, max-subtracted."""
from cython.parallel cimport prange

from kernels.elementwise_simd cimport ember_softmax_line
from kernels.parallel cimport threads_for
from kernels.simd cimport use_simd

use_simd()


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
            ember_softmax_line(xp + o * n * inner + j, yp + o * n * inner + j, n, inner, log)
