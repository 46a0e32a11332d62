/* ember's own thread pool (thread_pool.c): one per process, reached through the dispatch table
 * (simd.h: ember_parallel) by the kernel modules and directly by the kernel templates.
 *
 * Why not OpenMP: a libgomp team's waiting threads spin a fixed number of rounds (read once, at
 * load) and then sleep in the kernel. A short spin makes every parallel region of a plan wake its
 * team again (tens of microseconds on a VM, ~100 regions a run: MobileNetV2 at 2 threads took
 * 14.4 ms against 9.9 ms with a long spin); a long spin burns the cores between requests and
 * collapses when another process shares them. This pool spins while a plan run holds it
 * (ember_pool_hold) and only briefly otherwise, and hands out tasks one at a time, so a thread
 * that is descheduled mid-region leaves its tasks to the others instead of stalling the team.
 *
 * A parallel call runs fn(ctx, task, worker) once for every task in [0, ntasks): `worker` is in
 * [0, nthreads) and no two tasks run on the same worker at once, so it indexes per-thread
 * scratch. The caller is worker 0. A call made while the pool is busy (a task calling in, or
 * another thread's run), or while more than one plan run holds it (concurrent runs: each then
 * keeps to its own thread, see ember_pool_run), runs its tasks on the calling thread, in
 * order, as worker 0. */
#ifndef EMBER_THREAD_POOL_H
#define EMBER_THREAD_POOL_H

typedef void (*ember_task_fn)(void *ctx, long task, int worker);

typedef struct ember_thread_pool {
    void (*run)(int nthreads, long ntasks, ember_task_fn fn, void *ctx);
    /* +1 when a plan run starts, -1 when it ends: while any run holds the pool its idle
     * workers keep spinning between regions instead of sleeping */
    void (*hold)(int delta);
    int (*workers)(void); /* threads started so far (not counting callers) */
} ember_thread_pool;

/* defined in thread_pool.c, linked into ember.kernels.simd only */
extern const ember_thread_pool ember_thread_pool_instance;
void ember_pool_run(int nthreads, long ntasks, ember_task_fn fn, void *ctx);
/* out[0..5]: workers started, runs holding the pool, workers asleep, jobs handed to the pool,
 * jobs run inline because the pool was busy, times sleeping workers were woken */
void ember_pool_stats(long *out);

#endif
