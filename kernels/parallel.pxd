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


# ember's thread pool (thread_pool.h), through the dispatch table: a module using it calls
# simd.use_simd() at import. fn(ctx, task, worker) runs once per task in [0, ntasks) with
# worker in [0, nthreads), never two tasks on one worker at once (it indexes per-thread
# scratch); the caller is worker 0, and a call from inside a task runs inline.
cdef extern from "simd.h" nogil:
    ctypedef void (*ember_task_fn)(void *ctx, long task, int worker) noexcept nogil
    void ember_parallel(int nthreads, long ntasks, ember_task_fn fn, void *ctx)
    void ember_pool_hold(int delta)
    int ember_pool_workers()


cdef struct ItemBlocks:
    ember_task_fn fn
    void *ctx
    long n
    long per


cdef inline void item_block_task(void *ctx, long block, int worker) noexcept nogil:
    cdef ItemBlocks *b = <ItemBlocks *> ctx
    cdef long i, end = min(b.n, (block + 1) * b.per)
    for i in range(block * b.per, end):
        b.fn(b.ctx, i, worker)


cdef inline void parallel_items(int nthreads, long n, ember_task_fn fn, void *ctx) noexcept nogil:
    """fn(ctx, i, worker) for i in [0, n), handed out in contiguous blocks, about four per
    thread: for many small items (rows, planes), where claiming each one would cost about as
    much as computing it, while the spare blocks still let a free thread take a slow one's."""
    cdef ItemBlocks b
    if nthreads <= 1 or n <= 1:
        for b.n in range(n):
            fn(ctx, b.n, 0)
        return
    b.fn = fn
    b.ctx = ctx
    b.n = n
    b.per = max(1, (n + 4 * nthreads - 1) // (4 * nthreads))
    ember_parallel(nthreads, (n + b.per - 1) // b.per, item_block_task, &b)
