# The dispatch table (simd.h) as the kernel modules see it: `use_simd()` at a module's import
# points its wrappers (ember_sgemm, ember_act_span, …) at the table ember.kernels.simd chose.
from cpython.pycapsule cimport PyCapsule_GetPointer


cdef extern from "simd.h" nogil:
    ctypedef struct ember_simd:
        const char *name
        int isa
        int needs
    const ember_simd *ember_simd_in_use


cdef inline int use_simd() except -1:
    """Call once at a kernel module's import, before any of its kernels runs."""
    global ember_simd_in_use
    from ember.kernels import simd
    ember_simd_in_use = <const ember_simd *> PyCapsule_GetPointer(simd.table_capsule,
                                                                  b"ember.kernels.simd.table")
    return 0
