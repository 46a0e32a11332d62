"""A build fact for CI: whether this build has Cython's bounds checks compiled in.

(The module once loaded libgomp with ember's spin setting; the kernels now run on ember's own
thread pool, kernels/thread_pool.c, and nothing links OpenMP.)"""
import numpy as np


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
