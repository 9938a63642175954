#include "engine/threadpool.h"
#include "engine/kernels.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SPIN_ITERS 20000 /* ~tens of microseconds of polling before sleeping */

struct cs_pool {
    int n;
    pthread_t *threads;
    _Atomic uint32_t gen;     /* bumped for every job (futex word) */
    _Atomic int pending;      /* workers still running the current job */
    _Atomic int stop;
    cs_pool_fn fn;
    void *ctx;
};

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

typedef struct worker_arg {
    cs_pool *p;
    int tid;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *wa = arg;
    cs_pool *p = wa->p;
    const int tid = wa->tid;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ITERS) cpu_relax();
            else futex_wait(&p->gen, seen);
        }
        seen = g;
        if (atomic_load(&p->stop)) {
            cs_kern_thread_cleanup();
            return NULL;
        }
        p->fn(p->ctx, tid, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

int cs_pool_create(cs_pool **out, int n, cs_err *err) {
    *out = NULL;
    if (n <= 0) n = cs_cpu_count();
    cs_pool *p = calloc(1, sizeof *p);
    if (!p) return cs_err_set(err, "out of memory");
    p->n = n;
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return cs_err_set(err, "out of memory");
    }
    for (int i = 1; i < n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            p->n = i;
            cs_pool_free(p);
            return cs_err_set(err, "out of memory");
        }
        *wa = (worker_arg){p, i};
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i;
            cs_pool_free(p);
            return cs_err_set(err, "cannot start thread %d of %d", i, n);
        }
    }
    *out = p;
    return 0;
}

void cs_pool_free(cs_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    futex_wake_all(&p->gen);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
}

int cs_pool_size(const cs_pool *p) { return p->n; }

void cs_pool_run(cs_pool *p, cs_pool_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    futex_wake_all(&p->gen);
    fn(ctx, 0, p->n);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) cpu_relax();
}

/* ceil(quota / period) from cgroup v2 cpu.max or v1 cfs files; 0 if unlimited/unknown. */
static int cgroup_cpus(void) {
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    long long q = -1, per = 0;
    if (f) {
        char buf[64] = {0};
        if (fscanf(f, "%63s %lld", buf, &per) == 2 && strcmp(buf, "max") != 0) q = atoll(buf);
        fclose(f);
    } else {
        f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r");
        if (f) {
            if (fscanf(f, "%lld", &q) != 1) q = -1;
            fclose(f);
        }
        f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r");
        if (f) {
            if (fscanf(f, "%lld", &per) != 1) per = 0;
            fclose(f);
        }
    }
    if (q <= 0 || per <= 0) return 0;
    return (int)((q + per - 1) / per);
}

int cs_cpu_count(void) {
    const char *env = getenv("CS_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int q = cgroup_cpus();
    if (q > 0 && q < n) n = q;
    return n > 0 ? n : 1;
}
