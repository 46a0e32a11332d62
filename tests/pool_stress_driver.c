/* A stress driver for kernels/thread_pool.c alone (tests/test_pool_attack.py compiles and runs it):
 * caller threads run jobs of random sizes and thread counts, some holding the pool, some
 * calling in from inside a task, one forking now and then; every task must run exactly once,
 * on a worker index below the job's nthreads that no other task of the job uses at that moment,
 * and the forked child must run its own jobs. Build with -fsanitize=thread for a race check. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <unistd.h>
#include <sys/wait.h>
#include "thread_pool.h"
typedef struct { _Atomic int *hits; long n; int nthreads; int nest; _Atomic int busy[64]; } job;
static void task(void *ctx, long t, int worker) {
    job *j = ctx;
    if (worker < 0 || worker >= j->nthreads) { fprintf(stderr, "bad worker %d\n", worker); abort(); }
    if (atomic_fetch_add(&j->busy[worker], 1) != 0) { fprintf(stderr, "worker %d twice\n", worker); abort(); }
    atomic_fetch_add(&j->hits[t], 1);
    if (j->nest && t % 7 == 0) {
        job inner = {0}; _Atomic int h[5] = {0}; inner.hits = h; inner.n = 5; inner.nthreads = 3;
        ember_pool_run(3, 5, task, &inner);
        for (int i = 0; i < 5; ++i) if (h[i] != 1) abort();
    }
    atomic_fetch_sub(&j->busy[worker], 1);
}
static void *caller(void *arg) {
    long id = (long)arg;
    unsigned seed = (unsigned)id * 7919u + 1;
    for (int it = 0; it < 3000; ++it) {
        int hold = rand_r(&seed) % 3 == 0;
        if (hold) ember_thread_pool_instance.hold(1);
        long n = 1 + rand_r(&seed) % 40;
        int nt = 1 + rand_r(&seed) % 6;
        job j = {0}; _Atomic int hits[40] = {0};
        j.hits = hits; j.n = n; j.nthreads = nt; j.nest = rand_r(&seed) % 4 == 0;
        ember_pool_run(nt, n, task, &j);
        for (long i = 0; i < n; ++i) if (hits[i] != 1) { fprintf(stderr, "task %ld ran %d\n", i, hits[i]); abort(); }
        if (hold) ember_thread_pool_instance.hold(-1);
        if (id == 0 && it % 500 == 0) {
            pid_t p = fork();
            if (p == 0) {
                job c = {0}; _Atomic int h[30] = {0}; c.hits = h; c.n = 30; c.nthreads = 4;
                ember_pool_run(4, 30, task, &c);
                for (int i = 0; i < 30; ++i) if (h[i] != 1) _exit(3);
                _exit(0);
            }
            int st; waitpid(p, &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st)) { fprintf(stderr, "child %d\n", st); abort(); }
        }
    }
    return NULL;
}
int main(int argc, char **argv) {
    int ncallers = argc > 1 ? atoi(argv[1]) : 4;
    pthread_t th[16];
    for (long i = 0; i < ncallers; ++i) pthread_create(&th[i], NULL, caller, (void *)i);
    for (int i = 0; i < ncallers; ++i) pthread_join(th[i], NULL);
    long s[6]; ember_pool_stats(s);
    printf("ok workers=%ld holds=%ld jobs=%ld inline=%ld wakes=%ld\n", s[0], s[1], s[3], s[4], s[5]);
    return 0;
}
