"""Sums that gradients need: a bias's gradient and the reduction of a broadcast operand's gradient
back to its shape, both the same "sum everything but one (flattened) axis" reduction."""
from cpython.pycapsule cimport PyCapsule_New

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
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


cdef void column_block_task(void *ctx, long b, int worker) noexcept nogil:
    """(rows, C) with I == 1: block b of columns, read from every row."""
    cdef const ChannelSumCall *s = <const ChannelSumCall *> ctx
    column_block_sum(s.x, s.y, s.O, s.C, b * BLOCK, min(s.C, (b + 1) * BLOCK))


cdef void channel_task(void *ctx, long c, int worker) noexcept nogil:
    """y[c]: channel c's O segments of I, each summed in float lanes, added in double."""
    cdef const ChannelSumCall *s = <const ChannelSumCall *> ctx
    cdef double acc = 0.0
    cdef long o
    for o in range(s.O):
        acc = acc + ember_sum(s.x + (o * s.C + c) * s.I, s.I)
    s.y[c] = <float> acc


cdef int channel_sum_run(const ChannelSumCall *s) noexcept nogil:
    """y[c] = Σ_o Σ_i x[o, c, i]; always 0."""
    cdef long O = s.O, C = s.C, I = s.I, c, nblocks = (s.C + BLOCK - 1) // BLOCK
    if C == 0:
        return 0
    if O == 0 or I == 0:
        for c in range(C):
            s.y[c] = 0.0
    elif I == 1:   # (rows, C): blocks of columns, each task reading its block of every row
        ember_parallel(threads_for(s.nthreads, O * C), nblocks, column_block_task, <void *> s)
    else:
        ember_parallel(threads_for(s.nthreads, O * C * I), C, channel_task, <void *> s)
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
