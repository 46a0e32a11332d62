# How many OpenMP threads a kernel's loop gets: the one rule every kernel cimports.


cdef enum:
    # Work (element-taps, or elements of an elementwise loop) below which one thread runs the
    # loop: ~32K simple float operations take ~10 µs on one core, about what waking a team and
    # joining it at the barrier costs on an idle machine; on a busy one that barrier may wait a
    # whole scheduler slice for a descheduled teammate. Below this, threads cost more than they
    # save; above it the loop is long enough to share.
    PARALLEL_MIN_WORK = 32768


cdef inline int threads_for(int nthreads, long work) noexcept nogil:
    """nthreads for a loop of `work` units, 1 below PARALLEL_MIN_WORK (or when nthreads < 1)."""
    if nthreads < 1 or work < PARALLEL_MIN_WORK:
        return 1
    return nthreads
