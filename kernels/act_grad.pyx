"""Elementwise training kernels: activation gradients, Dropout's training forward and gradient.

Dropout draws its mask from a counter-based generator: element i at step r of a node seeded s
keeps its value when a 24-bit hash of (key(s, r), i) reaches ratio·2²⁴ (key: splitmix64 of seed
and step; per element: two rounds of a 32-bit integer hash), so any thread can draw any element,
a mask is reproducible from (seed, step) whatever the thread count, and nothing is allocated or
carried between calls. The step is the caller's: the training step (the Dropout node's 4th
input, graph/TRAINING.md §1) or a run count. graph/ops/tensor.py's ``dropout_keep`` is the same
hash in numpy; tests/test_grad_kernels.py holds the two to bit equality.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint64_t, uint32_t, uint8_t

from kernels.elementwise_simd cimport ember_act_grad_span, ember_dropout_span
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd

use_simd()


cdef enum:
    CHUNK = 8192   # elements per task: big enough to amortise the call, small enough to share


cdef struct ActGradCall:
    const float *dy
    const float *t
    float *dx
    long n
    int act
    float a, b
    int nthreads


cdef void act_grad_chunk_task(void *ctx, long k, int worker) noexcept nogil:
    """Chunk k of dx = dy · act'(t)."""
    cdef const ActGradCall *c = <const ActGradCall *> ctx
    cdef long lo = k * CHUNK
    ember_act_grad_span(c.dy + lo, c.t + lo, c.dx + lo, min(<long> CHUNK, c.n - lo), c.act, c.a,
                        c.b)


cdef int act_grad_run(const ActGradCall *c) noexcept nogil:
    """dx = dy · act'(t) chunk by chunk; always 0."""
    cdef long chunks = (c.n + CHUNK - 1) // CHUNK
    if c.n == 0:
        return 0
    ember_parallel(threads_for(c.nthreads, c.n), chunks, act_grad_chunk_task, <void *> c)
    return 0


cdef int act_grad_native(void *state) noexcept nogil:
    return act_grad_run(<const ActGradCall *> state)


cdef class ActivationGradStep:
    """activation_grad resolved once (bind time): callable, or run by plan.PlanRunner without
    the GIL. Holds its arrays."""
    cdef ActGradCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[::1] dy, float[::1] t, float[::1] dx, int act, float a, float b,
                  int nthreads):
        if not dy.shape[0] == t.shape[0] == dx.shape[0]:
            raise ValueError("activation_grad: dy, t and dx differ in size")
        self.keep = (dy, t, dx)
        self.call.n, self.call.act, self.call.a, self.call.b = dx.shape[0], act, a, b
        self.call.nthreads = nthreads
        if dx.shape[0]:
            self.call.dy, self.call.t, self.call.dx = &dy[0], &t[0], &dx[0]
        self.native.fn = act_grad_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            act_grad_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def activation_grad(dy, t, dx, int act, float a, float b, int nthreads):
    """dx = dy · act'(…) elementwise, t being the forward output Y (Relu, Sigmoid, Tanh) or
    input X (the rest; elementwise_kernel.h). dx may be dy itself."""
    ActivationGradStep(dy, t, dx, act, a, b, nthreads)()


cdef inline uint64_t splitmix64(uint64_t z) noexcept nogil:
    """The splitmix64 finaliser: a bijection whose outputs on consecutive inputs look random."""
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef uint64_t GOLDEN = <uint64_t> 0x9E3779B97F4A7C15ULL   # 2⁶⁴/φ, splitmix64's increment


cdef struct DropoutJob:
    const float *x
    float *y
    uint8_t *mask
    long offset, n, first_chunk
    uint32_t k1, k2, threshold
    float scale


cdef void dropout_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    """Chunk c: global indices [(first_chunk + c)·CHUNK, … + CHUNK) ∩ [offset, offset + n)."""
    cdef DropoutJob *j = <DropoutJob *> ctx
    cdef long g0 = max((j.first_chunk + c) * CHUNK, j.offset)
    cdef long hi = min((j.first_chunk + c + 1) * CHUNK, j.offset + j.n)
    cdef long lo = g0 - j.offset
    ember_dropout_span(j.x + lo, j.y + lo, j.mask + lo, g0, hi - g0, j.k1, j.k2, j.threshold,
                       j.scale)


def dropout_forward(float[::1] x, float[::1] y, uint8_t[::1] mask, float ratio,
                    unsigned long long seed, unsigned long long run, int nthreads,
                    long offset=0):
    """y = x·mask/(1 − ratio), mask[i] = 1 with probability 1 − ratio, drawn from (seed, run,
    offset + i) (``run``: the step the mask is for; ``offset``: where this tensor starts in a
    larger one — a rank's rows of a global batch draw that batch's masks).
    ratio 1 drops everything (y = 0). Chunks are aligned on the global index offset + i, so none
    straddles a multiple of 2³² elements and the high half of the index is constant in one."""
    cdef long n = x.shape[0]
    if offset < 0:
        raise ValueError(f"dropout_forward: offset {offset} must be ≥ 0")
    cdef uint64_t key = splitmix64(splitmix64(<uint64_t> seed) ^ (<uint64_t> run * GOLDEN))
    cdef uint32_t k1 = <uint32_t> key, k2 = <uint32_t> (key >> 32)
    # keep when the draw u ∈ [0, 2²⁴) reaches ratio·2²⁴ (ratio 1 → 2²⁴: nothing kept)
    cdef uint32_t threshold = <uint32_t> (<double> ratio * 16777216.0)
    cdef float scale = 1.0 / (1.0 - ratio) if ratio < 1.0 else 0.0
    if n == 0:
        return
    cdef DropoutJob job
    job.x, job.y, job.mask = &x[0], &y[0], &mask[0]
    job.offset, job.n = offset, n
    job.first_chunk = offset // CHUNK
    job.k1, job.k2, job.threshold, job.scale = k1, k2, threshold, scale
    cdef long chunks = (offset + n + CHUNK - 1) // CHUNK - job.first_chunk
    with nogil:
        ember_parallel(threads_for(nthreads, n), chunks, dropout_chunk_task, &job)


cdef struct DropoutGradJob:
    const float *dy
    const uint8_t *mask
    float *dx
    long n
    float scale


cdef void dropout_grad_chunk_task(void *ctx, long k, int worker) noexcept nogil:
    """Chunk k of dx = dy·mask·scale."""
    cdef DropoutGradJob *j = <DropoutGradJob *> ctx
    cdef long i, lo = k * CHUNK, hi = min(lo + CHUNK, j.n)
    for i in range(lo, hi):
        j.dx[i] = j.dy[i] * (j.scale if j.mask[i] else 0.0)


def dropout_grad(float[::1] dy, uint8_t[::1] mask, float[::1] dx, float ratio, int nthreads):
    """dx = dy·mask/(1 − ratio); 0 when ratio = 1."""
    cdef long n = dx.shape[0]
    cdef DropoutGradJob job
    if n == 0:
        return
    job.dy, job.mask, job.dx, job.n = &dy[0], &mask[0], &dx[0], n
    job.scale = 1.0 / (1.0 - ratio) if ratio < 1.0 else 0.0
    with nogil:
        ember_parallel(threads_for(nthreads, n), (n + CHUNK - 1) // CHUNK,
                       dropout_grad_chunk_task, &job)
