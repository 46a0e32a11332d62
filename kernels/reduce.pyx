"""ReduceSum / Mean / Max / Min / Prod over one contiguous block of axes of a float32 tensor, seen
as (outer, n, inner) and reduced along n, as a native step (``ReduceStep``).

Sums, means and products accumulate in double (numpy's float32 pairwise sum is the reference:
double is at least as close to the exact value). Max and min propagate NaN, as numpy's and
onnxruntime's do. With inner > 1 the block is walked row by row of n (contiguous reads) into a
stack accumulator of up to ``ACC`` columns, so no run allocates.
"""
from cpython.pycapsule cimport PyCapsule_New

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel, parallel_items
from kernels.simd cimport use_simd

use_simd()

REDUCE_SUM, REDUCE_MEAN, REDUCE_MAX, REDUCE_MIN, REDUCE_PROD = range(5)

cdef enum:
    SUM = 0
    MEAN = 1
    MAX = 2
    MIN = 3
    PROD = 4
    ACC = 256        # columns of inner accumulated at once


cdef struct ReduceCall:
    const float *x
    float *y
    long outer, n, inner
    int kind
    int nthreads


cdef inline double combine(int kind, double acc, double v) noexcept nogil:
    if kind == MAX:
        return v if (v > acc or v != v) and acc == acc else acc
    if kind == MIN:
        return v if (v < acc or v != v) and acc == acc else acc
    if kind == PROD:
        return acc * v
    return acc + v


cdef inline double finish(int kind, double acc, long n) noexcept nogil:
    return acc / n if kind == MEAN else acc


cdef void reduce_columns(const ReduceCall *c, long o, long j0, long m) noexcept nogil:
    """y[o, j0:j0+m] from the n rows of x[o, :, j0:j0+m]."""
    cdef double acc[ACC]
    cdef const float *row = c.x + o * c.n * c.inner + j0
    cdef long k, j
    for j in range(m):
        acc[j] = row[j]
    for k in range(1, c.n):
        row = row + c.inner
        for j in range(m):
            acc[j] = combine(c.kind, acc[j], row[j])
    for j in range(m):
        c.y[o * c.inner + j0 + j] = <float> finish(c.kind, acc[j], c.n)


cdef void reduce_row(const ReduceCall *c, long o) noexcept nogil:
    """y[o] from the contiguous row x[o, :] (inner = 1)."""
    cdef const float *row = c.x + o * c.n
    cdef double acc = row[0]
    cdef long k
    if c.kind == SUM or c.kind == MEAN:
        for k in range(1, c.n):
            acc = acc + row[k]
    else:
        for k in range(1, c.n):
            acc = combine(c.kind, acc, row[k])
    c.y[o] = <float> finish(c.kind, acc, c.n)


cdef void reduce_row_task(void *ctx, long t, int worker) noexcept nogil:
    reduce_row(<const ReduceCall *> ctx, t)


cdef void reduce_columns_task(void *ctx, long t, int worker) noexcept nogil:
    """ACC columns of outer row t // chunks."""
    cdef const ReduceCall *c = <const ReduceCall *> ctx
    cdef long chunks = (c.inner + ACC - 1) // ACC
    reduce_columns(c, t // chunks, (t % chunks) * ACC,
                   min(<long> ACC, c.inner - (t % chunks) * ACC))


cdef int reduce_run(const ReduceCall *c) noexcept nogil:
    """The reduction, parallel over outer rows (and column chunks); always 0."""
    cdef long chunks = (c.inner + ACC - 1) // ACC
    cdef int nt = threads_for(c.nthreads, c.outer * c.n * c.inner)
    if c.outer * c.n * c.inner == 0:
        return 0
    if c.inner == 1:
        parallel_items(nt, c.outer, reduce_row_task, <void *> c)
    else:
        parallel_items(nt, c.outer * chunks, reduce_columns_task, <void *> c)
    return 0


cdef int reduce_native(void *state) noexcept nogil:
    return reduce_run(<const ReduceCall *> state)


cdef class ReduceStep:
    """y[o, j] = reduce over k of x[o, k, j] (kind: REDUCE_*), resolved once at bind time:
    callable, or run by plan.PlanRunner without the GIL. n ≥ 1. Holds its arrays."""
    cdef ReduceCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[:, :, ::1] x, float[:, ::1] y, int kind, int nthreads):
        if not SUM <= kind <= PROD:
            raise ValueError(f"reduce: unknown kind {kind}")
        if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[1]:
            raise ValueError("reduce: y is not x's (outer, inner)")
        if x.shape[1] < 1:
            raise ValueError("reduce: an empty reduction")
        self.keep = (x, y)
        self.call.outer, self.call.n, self.call.inner = x.shape[0], x.shape[1], x.shape[2]
        self.call.kind, self.call.nthreads = kind, nthreads
        if x.shape[0] * x.shape[2]:
            self.call.x, self.call.y = &x[0, 0, 0], &y[0, 0]
        self.native.fn = reduce_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            reduce_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)
