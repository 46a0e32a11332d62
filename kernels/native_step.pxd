# The native-step protocol (native_step.h) shared by plan.pyx and kernels that offer steps.
cdef extern from "native_step.h" nogil:
    ctypedef int (*ember_native_fn)(void *state) noexcept nogil
    ctypedef struct ember_native_step:
        ember_native_fn fn
        void *state
    const char *EMBER_NATIVE_CAPSULE
