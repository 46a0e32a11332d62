"""Sums that gradients need: a bias's gradient and the reduction of a broadcast operand's gradient
back to its shape, both the same "sum everything but one (flattened) axis" reduction."""
from cython.parallel cimport prange

from kernels.parallel cimport threads_for
from kernels.simd cimport use_simd
from kernels.sums cimport ember_sum

use_simd()

cdef enum:
    BLOCK = 64   # columns per task when the kept axis is the last one


cdef void column_block_sum(const float *x, float *y, long rows, long cols, long c0,
                           long c1) noexcept nogil:
    """y[c] = Σ_r x[r, c] for c in [c0, c1): rows are read contiguously, sums kept in double."""
    cdef double acc[BLOCK]
    cdef long r, c
    cdef const float *row
    for c in range(c1 - c0):
        acc[c] = 0.0
    for r in range(rows):
        row = x + r * cols + c0
        for c in range(c1 - c0):
            acc[c] += row[c]
    for c in range(c1 - c0):
        y[c0 + c] = <float> acc[c]


def channel_sum(float[:, :, ::1] x, float[::1] y, int nthreads):
    """y[c] = Σ_o Σ_i x[o, c, i], x (outer, C, inner): float lanes per segment (sums_kernel.h),
    double across segments."""
    cdef long O = x.shape[0], C = x.shape[1], I = x.shape[2], c, o, b
    cdef double acc
    if C == 0:
        return
    if O == 0 or I == 0:
        for c in range(C):
            y[c] = 0.0
        return
    cdef const float *xp = &x[0, 0, 0]
    cdef float *yp = &y[0]
    cdef long nblocks = (C + BLOCK - 1) // BLOCK
    with nogil:
        if I == 1:   # (rows, C): blocks of columns, each task reading its block of every row
            for b in prange(nblocks, num_threads=threads_for(nthreads, O * C),
                            schedule='static'):
                column_block_sum(xp, yp, O, C, b * BLOCK, min(C, (b + 1) * BLOCK))
        else:
            for c in prange(C, num_threads=threads_for(nthreads, O * C * I), schedule='static'):
                acc = 0.0
                for o in range(O):
                    acc = acc + ember_sum(xp + (o * C + c) * I, I)
                yp[c] = <float> acc
