"""Sums that gradients need: a bias's gradient and the reduction of a broadcast operand's gradient
back to its shape, both the same "sum everything but one (flattened) axis" reduction."""
from cython.parallel cimport prange
from cpython.pycapsule cimport PyCapsule_New

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
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


cdef struct ChannelSumCall:
    const float *x
    float *y
    long O, C, I
    int nthreads


cdef int channel_sum_run(const ChannelSumCall *s) noexcept nogil:
    """y[c] = Σ_o Σ_i x[o, c, i]; always 0."""
    cdef long O = s.O, C = s.C, I = s.I, c, o, b, nblocks = (s.C + BLOCK - 1) // BLOCK
    cdef double acc
    if C == 0:
        return 0
    if O == 0 or I == 0:
        for c in range(C):
            s.y[c] = 0.0
    elif I == 1:   # (rows, C): blocks of columns, each task reading its block of every row
        for b in prange(nblocks, num_threads=threads_for(s.nthreads, O * C), schedule='static'):
            column_block_sum(s.x, s.y, O, C, b * BLOCK, min(C, (b + 1) * BLOCK))
    else:
        for c in prange(C, num_threads=threads_for(s.nthreads, O * C * I), schedule='static'):
            acc = 0.0
            for o in range(O):
                acc = acc + ember_sum(s.x + (o * C + c) * I, I)
            s.y[c] = <float> acc
    return 0


cdef int channel_sum_native(void *state) noexcept nogil:
    return channel_sum_run(<const ChannelSumCall *> state)


cdef class ChannelSumStep:
    """channel_sum resolved once (bind time): callable, or run by plan.PlanRunner without the
    GIL. Holds its arrays."""
    cdef ChannelSumCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[:, :, ::1] x, float[::1] y, int nthreads):
        if y.shape[0] != x.shape[1]:
            raise ValueError("channel_sum: y needs one value per channel of x")
        self.keep = (x, y)
        self.call.O, self.call.C, self.call.I = x.shape[0], x.shape[1], x.shape[2]
        self.call.nthreads = nthreads
        if y.shape[0]:
            self.call.y = &y[0]
        if x.shape[0] * x.shape[1] * x.shape[2]:
            self.call.x = &x[0, 0, 0]
        self.native.fn = channel_sum_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            channel_sum_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def channel_sum(x, y, int nthreads):
    """y[c] = Σ_o Σ_i x[o, c, i], x (outer, C, inner): float lanes per segment (sums_kernel.h),
    double across segments."""
    ChannelSumStep(x, y, nthreads)()
