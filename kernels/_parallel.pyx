"""OpenMP facts for the runtime: how many threads OpenMP would use by default."""
cimport openmp


def max_threads():
    return openmp.omp_get_max_threads()
