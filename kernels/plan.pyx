"""Run a context's steps in order, with no Python between consecutive native steps.

A step is any zero-argument callable. One that also carries a native entry point (a `_native`
capsule, see native_step.h — e.g. conv.Conv2dStep) is run from C: a run of consecutive native
steps executes inside one `nogil` block. Why: a Python loop re-acquires the GIL after every
kernel, and while other Python threads hold it (an HTTP server parsing requests) each
re-acquisition can wait a whole switch interval (5 ms) — per node.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from libc.stdlib cimport malloc, free

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport ember_pool_hold
from kernels.simd cimport use_simd

use_simd()


cdef class PlanRunner:
    cdef ember_native_step *native   # per step: its entry point, fn NULL for a Python step
    cdef Py_ssize_t n
    cdef list steps                  # keeps every step (and so every native state) alive

    def __cinit__(self, steps):
        self.steps = list(steps)
        self.n = len(self.steps)
        self.native = <ember_native_step *> malloc(sizeof(ember_native_step) * max(self.n, 1))
        if self.native == NULL:
            raise MemoryError("PlanRunner: cannot allocate the step table")
        cdef Py_ssize_t i
        cdef ember_native_step *p
        for i in range(self.n):
            self.native[i].fn = NULL
            self.native[i].state = NULL
            cap = getattr(self.steps[i], "_native", None)
            if cap is not None and PyCapsule_IsValid(cap, EMBER_NATIVE_CAPSULE):
                p = <ember_native_step *> PyCapsule_GetPointer(cap, EMBER_NATIVE_CAPSULE)
                self.native[i] = p[0]

    def __dealloc__(self):
        free(self.native)

    def __len__(self):
        return self.n

    @property
    def native_steps(self):
        """How many steps run from C."""
        return sum(1 for i in range(self.n) if self.native[i].fn != NULL)

    def run(self):
        """Every step once, in order. The thread pool is held for the whole run, so its
        workers spin between the steps' parallel regions instead of sleeping."""
        ember_pool_hold(1)
        try:
            self._run()
        finally:
            ember_pool_hold(-1)

    cdef _run(self):
        cdef Py_ssize_t i = 0
        cdef int rc = 0
        while i < self.n:
            if self.native[i].fn == NULL:
                self.steps[i]()
                i += 1
                continue
            with nogil:
                while i < self.n and self.native[i].fn != NULL:
                    rc = self.native[i].fn(self.native[i].state)
                    if rc != 0:
                        break
                    i += 1
            if rc != 0:
                self.steps[i].raise_for(rc)
                raise RuntimeError(f"step {i} failed with code {rc}")


cdef struct ChainState:
    ember_native_step *steps
    Py_ssize_t n
    Py_ssize_t failed        # the step whose code ended the last run


cdef int chain_run(void *state) noexcept nogil:
    cdef ChainState *c = <ChainState *> state
    cdef Py_ssize_t i
    cdef int rc
    for i in range(c.n):
        rc = c.steps[i].fn(c.steps[i].state)
        if rc != 0:
            c.failed = i
            return rc
    return 0


cdef class NativeChain:
    """Native steps run in order as one step: a node whose kernel is several calls (ConvGradInput
    on Winograd transforms the weights, then convolves) stays one native step of the plan.
    Every part must offer a ``_native`` capsule (ValueError otherwise). Takes attributes, as
    the closures it replaces did (e.g. ``winograd_tile``)."""
    cdef ChainState state
    cdef ember_native_step native
    cdef list parts
    cdef dict __dict__

    def __cinit__(self, parts):
        self.parts = list(parts)
        self.state.n = len(self.parts)
        self.state.failed = 0
        self.state.steps = <ember_native_step *> malloc(sizeof(ember_native_step) *
                                                         max(self.state.n, 1))
        if self.state.steps == NULL:
            raise MemoryError("NativeChain: cannot allocate the step table")
        cdef Py_ssize_t i
        for i in range(self.state.n):
            cap = getattr(self.parts[i], "_native", None)
            if cap is None or not PyCapsule_IsValid(cap, EMBER_NATIVE_CAPSULE):
                free(self.state.steps)
                self.state.steps = NULL
                raise ValueError(f"NativeChain: part {i} ({type(self.parts[i]).__name__}) has "
                                 f"no native entry point")
            self.state.steps[i] = (<ember_native_step *> PyCapsule_GetPointer(
                cap, EMBER_NATIVE_CAPSULE))[0]
        self.native.fn = chain_run
        self.native.state = &self.state

    def __dealloc__(self):
        free(self.state.steps)

    def __call__(self):
        cdef int rc
        with nogil:
            rc = chain_run(&self.state)
        if rc != 0:
            self.raise_for(rc)

    def raise_for(self, int rc):
        self.parts[self.state.failed].raise_for(rc)
        raise RuntimeError(f"chained step {self.state.failed} failed with code {rc}")

    @property
    def _native(self):
        """A capsule holding the chain's C entry point, for PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)
