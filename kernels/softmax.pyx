"""Softmax / log-softmax along the middle axis of an (outer, n, inner) view, max-subtracted."""
from cpython.pycapsule cimport PyCapsule_New

from kernels.elementwise_simd cimport ember_softmax_line
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel, parallel_items
from kernels.simd cimport use_simd

use_simd()


cdef struct SoftmaxCall:
    const float *x
    float *y
    long outer, n, inner
    bint log
    int nthreads


cdef void softmax_line_task(void *ctx, long t, int worker) noexcept nogil:
    """Line t = (outer o, inner j) along the middle axis."""
    cdef const SoftmaxCall *c = <const SoftmaxCall *> ctx
    cdef long o = t // c.inner, j = t % c.inner
    ember_softmax_line(c.x + o * c.n * c.inner + j, c.y + o * c.n * c.inner + j, c.n, c.inner,
                       c.log)


cdef int softmax_run(const SoftmaxCall *c) noexcept nogil:
    """Each (outer, inner) line along the middle axis; always 0."""
    if c.outer * c.n * c.inner == 0:
        return 0
    parallel_items(threads_for(c.nthreads, c.outer * c.n * c.inner), c.outer * c.inner,
                   softmax_line_task, <void *> c)
    return 0


cdef int softmax_native(void *state) noexcept nogil:
    return softmax_run(<const SoftmaxCall *> state)


cdef class SoftmaxStep:
    """A softmax call resolved once (bind time): callable, or run by plan.PlanRunner without
    the GIL. Holds its arrays."""
    cdef SoftmaxCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, float[:, :, ::1] x, float[:, :, ::1] y, bint log, int nthreads):
        if x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1] or x.shape[2] != y.shape[2]:
            raise ValueError("softmax: x and y differ in shape")
        self.keep = (x, y)
        self.call.outer, self.call.n, self.call.inner = x.shape[0], x.shape[1], x.shape[2]
        self.call.log, self.call.nthreads = log, nthreads
        if x.shape[0] * x.shape[1] * x.shape[2]:
            self.call.x, self.call.y = &x[0, 0, 0], &y[0, 0, 0]
        self.native.fn = softmax_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            softmax_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def softmax(x, y, bint log, int nthreads):
    """Softmax (or log-softmax) of x (outer, n, inner) along n into y."""
    SoftmaxStep(x, y, log, nthreads)()
