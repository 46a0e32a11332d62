"""The module kernels/__init__.py imports to load libgomp, and a build fact for CI.

max_threads references OpenMP, which keeps libgomp among this module's dependencies even though
the linker drops unused libraries (--as-needed): importing it is what loads libgomp while
GOMP_SPINCOUNT is set. bounds_checked tells CI whether bounds checks are compiled in."""
cimport openmp
import numpy as np


def max_threads():
    return openmp.omp_get_max_threads()


def bounds_checked():
    """True when this build has Cython's bounds checking on (``EMBER_BOUNDSCHECK=1``): indexing
    one past the end of a 1-element view then raises instead of reading the next element (the
    view is cut from a 2-element array, so an unchecked read stays inside real memory)."""
    backing = np.zeros(2)
    cdef double[::1] view = backing[:1]
    cdef Py_ssize_t i = 1
    try:
        view[i]
    except IndexError:
        return True
    return False
