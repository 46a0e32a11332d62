/* ember's thread pool: see thread_pool.h for why and for the contract.
 *
 * One job at a time. A caller that wins `busy` publishes the job (fn, ctx, ntasks, nthreads) and
 * then a ticket (generation << 32 | next task) and the generation; workers 1..nthreads-1 and the
 * caller claim tasks by compare-and-swap on the ticket, and the caller returns once `done`
 * counts every task, so a worker that wakes late finds nothing left and costs nothing. A claim
 * succeeds only while the ticket still carries the job's generation, and the job's fields are
 * rewritten only after every task of it was claimed and done, so a late worker can never run a
 * task of a job it read half of.
 *
 * Waiting: an idle worker spins (pause) while one plan run holds the pool — up to HOLD_SPIN_NS
 * without work, yielding the core now and then so a process sharing it is not starved — and
 * otherwise for IDLE_SPIN_NS; then it sleeps on a condition variable until the next job. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "thread_pool.h"

#define MAX_WORKERS 255
#define IDLE_SPIN_NS 30000L      /* ~ the gap between two kernel calls from Python */
#define SPIN_ENV "EMBER_POOL_SPIN_US"  /* overrides IDLE_SPIN_NS, in microseconds */
#define MAX_SPIN_NS 10000000000L
#define HOLD_SPIN_NS 5000000L    /* a held run with no parallel work for 5 ms: sleep anyway */
#define YIELD_EVERY_NS 100000L   /* while spinning, give the core away this often */
#define MAX_TASKS 0xffffffffL    /* the task counter is the ticket's low 32 bits */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

static struct {
    /* the job */
    _Atomic(ember_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic long ntasks;
    _Atomic int nthreads;
    _Atomic unsigned long long ticket; /* generation << 32 | next task */
    _Atomic long done;
    /* the pool */
    _Atomic unsigned gen;     /* the latest job's generation */
    _Atomic int busy;         /* a caller owns the pool */
    _Atomic int hold;         /* plan runs in progress */
    _Atomic int sleepers;     /* workers asleep (or about to be) on `wake` */
    unsigned nudges;          /* under `lock`: bumped to wake sleepers without a job */
    _Atomic long jobs, busy_inline, wakes; /* counters for ember_pool_stats */
    _Atomic int nworkers;
    pthread_mutex_t lock;     /* guards sleeping and waking */
    pthread_cond_t wake;
    pthread_mutex_t grow;     /* serialises starting workers */
    int atfork_done;
    _Atomic long idle_spin_ns;
} P = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .grow = PTHREAD_MUTEX_INITIALIZER,
    .idle_spin_ns = IDLE_SPIN_NS,
};

/* EMBER_POOL_SPIN_US: how long an idle worker spins when no run holds the pool (a latency-bound
 * service may want the workers hot between requests, as onnxruntime's spinning pool keeps
 * them); read once, when the first worker starts. Junk or negative values keep the default. */
static void read_spin_setting(void)
{
    const char *v = getenv(SPIN_ENV);
    if (v == NULL || *v == 0)
        return;
    char *end = NULL;
    long long us = strtoll(v, &end, 10);
    if (end == v || *end != 0 || us < 0)
        return;
    long long ns = us > MAX_SPIN_NS / 1000 ? MAX_SPIN_NS : us * 1000;
    atomic_store(&P.idle_spin_ns, (long)ns);
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claim and run tasks of job `gen` as `worker` until none is left (or the job is another's). */
static void take_tasks(unsigned gen, int worker)
{
    for (;;) {
        unsigned long long t = atomic_load_explicit(&P.ticket, memory_order_acquire);
        if ((unsigned)(t >> 32) != gen)
            return;
        long task = (long)(t & 0xffffffffULL);
        long ntasks = atomic_load_explicit(&P.ntasks, memory_order_relaxed);
        int nthreads = atomic_load_explicit(&P.nthreads, memory_order_relaxed);
        ember_task_fn fn = atomic_load_explicit(&P.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&P.ctx, memory_order_relaxed);
        if (task >= ntasks || worker >= nthreads)
            return;
        if (!atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        fn(ctx, task, worker);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

typedef struct {
    int id;
    unsigned start_gen;
} worker_arg;

static worker_arg worker_args[MAX_WORKERS + 1];

static void *worker_main(void *arg)
{
    const worker_arg *me = (const worker_arg *)arg;
    unsigned seen = me->start_gen;
    long idle_from = now_ns(), last_yield = idle_from;
    for (;;) {
        unsigned g = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (g != seen) {
            seen = g;
            take_tasks(g, me->id);
            idle_from = last_yield = now_ns();
            continue;
        }
        /* poll the generation at every pause: a job is seen within ~20 ns of its publication */
        for (int i = 0; i < 64 && atomic_load_explicit(&P.gen, memory_order_relaxed) == seen; ++i)
            cpu_relax();
        long t = now_ns();
        long idle = atomic_load_explicit(&P.idle_spin_ns, memory_order_relaxed);
        long limit = atomic_load_explicit(&P.hold, memory_order_relaxed) == 1 && idle < HOLD_SPIN_NS
                         ? HOLD_SPIN_NS : idle;
        if (t - idle_from < limit) {
            if (t - last_yield > YIELD_EVERY_NS) {
                sched_yield();
                last_yield = t;
            }
            continue;
        }
        pthread_mutex_lock(&P.lock);
        atomic_fetch_add(&P.sleepers, 1);
        unsigned nudge = P.nudges;
        while (atomic_load(&P.gen) == seen && P.nudges == nudge)
            pthread_cond_wait(&P.wake, &P.lock);
        atomic_fetch_sub(&P.sleepers, 1);
        pthread_mutex_unlock(&P.lock);
        idle_from = last_yield = now_ns();
    }
    return NULL;
}

static void wake_sleepers(int nudge)
{
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.lock);
        atomic_fetch_add_explicit(&P.wakes, 1, memory_order_relaxed);
        P.nudges += nudge;
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.lock);
    }
}

/* In a child after fork() only the forking thread exists: forget the workers. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&P.lock, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_mutex_init(&P.grow, NULL);
    atomic_store(&P.nworkers, 0);
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.busy, 0);
    atomic_store(&P.hold, 0);
}

/* Start workers until `want` run (or thread creation fails: fewer workers only means the
 * caller claims more of the tasks). Workers start with every signal blocked, so signals reach
 * the threads Python runs. */
static void ensure_workers(int want)
{
    if (want > MAX_WORKERS)
        want = MAX_WORKERS;
    if (atomic_load_explicit(&P.nworkers, memory_order_acquire) >= want)
        return;
    pthread_mutex_lock(&P.grow);
    if (!P.atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        read_spin_setting();
        P.atfork_done = 1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int n = atomic_load(&P.nworkers);
    while (n < want) {
        pthread_t th;
        pthread_attr_t attr;
        worker_args[n + 1].id = n + 1;
        worker_args[n + 1].start_gen = atomic_load(&P.gen);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&th, &attr, worker_main, &worker_args[n + 1]);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        atomic_store_explicit(&P.nworkers, ++n, memory_order_release);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_unlock(&P.grow);
}

static void run_inline(long ntasks, ember_task_fn fn, void *ctx)
{
    for (long t = 0; t < ntasks; ++t)
        fn(ctx, t, 0);
}

void ember_pool_run(int nthreads, long ntasks, ember_task_fn fn, void *ctx)
{
    if (ntasks <= 0)
        return;
    if (nthreads > ntasks)
        nthreads = (int)ntasks;
    int expected = 0;
    if (nthreads <= 1 || ntasks > MAX_TASKS) {
        run_inline(ntasks, fn, ctx);
        return;
    }
    /* Admission: while two or more plan runs are in progress (a service's request threads
     * sharing the cores) each runs its tasks on its own thread — as many busy threads as runs,
     * which Session's max_concurrent_runs keeps at the core count — instead of one run taking
     * the pool and the others oversubscribing the cores beside it. */
    if (atomic_load_explicit(&P.hold, memory_order_relaxed) > 1 ||
        !atomic_compare_exchange_strong(&P.busy, &expected, 1)) {
        atomic_fetch_add_explicit(&P.busy_inline, 1, memory_order_relaxed);
        run_inline(ntasks, fn, ctx);
        return;
    }
    ensure_workers(nthreads - 1);
    int have = atomic_load(&P.nworkers) + 1;
    if (nthreads > have)
        nthreads = have;
    if (nthreads <= 1) {
        atomic_store(&P.busy, 0);
        run_inline(ntasks, fn, ctx);
        return;
    }
    atomic_fetch_add_explicit(&P.jobs, 1, memory_order_relaxed);
    unsigned gen = atomic_load_explicit(&P.gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&P.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&P.ntasks, ntasks, memory_order_relaxed);
    atomic_store_explicit(&P.nthreads, nthreads, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    atomic_store_explicit(&P.ticket, (unsigned long long)gen << 32, memory_order_release);
    atomic_store(&P.gen, gen); /* seq_cst: ordered before the sleepers check in wake_sleepers */
    wake_sleepers(0);
    take_tasks(gen, 0);
    /* wait for tasks other workers claimed; yield if that takes long (one may be descheduled) */
    long spins = 0;
    while (atomic_load_explicit(&P.done, memory_order_acquire) < ntasks) {
        cpu_relax();
        if (++spins > 20000)
            sched_yield();
    }
    atomic_store_explicit(&P.busy, 0, memory_order_release);
}

static void ember_pool_hold(int delta)
{
    if (atomic_fetch_add(&P.hold, delta) <= 0 && delta > 0)
        wake_sleepers(1); /* a run starts: have the workers spinning by its first region */
}

void ember_pool_stats(long *out)
{
    out[0] = atomic_load(&P.nworkers);
    out[1] = atomic_load(&P.hold);
    out[2] = atomic_load(&P.sleepers);
    out[3] = atomic_load(&P.jobs);
    out[4] = atomic_load(&P.busy_inline);
    out[5] = atomic_load(&P.wakes);
}

static int ember_pool_workers(void) { return atomic_load(&P.nworkers); }

const ember_thread_pool ember_thread_pool_instance = {
    .run = ember_pool_run,
    .hold = ember_pool_hold,
    .workers = ember_pool_workers,
};
