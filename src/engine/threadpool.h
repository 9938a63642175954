/* cs_pool: a persistent fork-join thread pool for the forward pass that
 * degrades gracefully when other processes compete for its CPUs.
 *
 * Jobs (the calling thread always takes part, as thread 0):
 *   cs_pool_for(p, n, grain, fn, ctx): fn(ctx, tid, b, e) over chunks [b, e)
 *     that cover [0, n) exactly once, each at least `grain` items (but the last);
 *   cs_pool_run(p, fn, ctx): fn(ctx, i, size) once for every i in [0, size).
 * Chunks are handed out by an atomic counter (dynamic scheduling): a thread
 * that another process keeps off its CPU takes fewer chunks and the running
 * ones take the rest, instead of everyone waiting at the end for its fixed
 * share. `tid` is the running thread's index in [0, cs_pool_size()), so fn may
 * index per-thread scratch with it; which thread runs which chunk, and where
 * chunks start, vary from run to run, so fn's results must not depend on them
 * (the forward pass's do not: each output is computed whole by one call).
 *
 * Waiting is bounded: idle workers poll for a new job for a few tens of
 * microseconds (a decode step issues dozens of short jobs), then sleep on a
 * futex, so an idle pool costs no CPU. The caller, once no chunk is left to
 * claim, polls briefly for the chunks still running elsewhere and then sleeps
 * until the last one wakes it.
 *
 * Contended CPUs: every pool thread reads its own run-queue delay
 * (/proc/thread-self/schedstat) every 10 ms. When one of them waited for a
 * CPU more than 10% of that time, another process competes for the pool's
 * CPUs, and for the next 100 ms nobody polls: workers sleep as soon as a job
 * is done and the caller sleeps after 5 us. A polling thread would hold a CPU
 * that a preempted thread of the pool needs, and it would spend the share of
 * its CPU that the scheduler gives it against the neighbour, getting it
 * preempted in the middle of its next chunk.
 *
 * Adaptive width: over windows of jobs (>= 64 jobs and 100 ms), the pool
 * compares what the workers' chunks would have cost the caller (its own time
 * per chunk, job by job) with the time it spent waiting for them once its own
 * chunks were done. When the waiting costs more than that help (workers
 * descheduled in the middle of their chunks again and again, a throttled
 * cgroup), fewer threads finish sooner: the pool uses one thread less and
 * probes the full width again after a back-off (200 ms, doubling up to 3.2 s
 * while the probes keep failing). The width is also capped, re-read every second, by
 * the CPUs in the caller's affinity mask and the cgroup CPU quota.
 * No allocation after cs_pool_create.
 *
 * Threading: one job at a time per pool: cs_pool_for/run/width/stats are
 * called from one thread at a time (the caller serialises); fn must not start a
 * job on the same pool. cs_pool_size may be called from any thread. */
#ifndef CS_THREADPOOL_H
#define CS_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct cs_pool cs_pool;
typedef void (*cs_pool_fn)(void *ctx, int tid, int n);
typedef void (*cs_pool_range_fn)(void *ctx, int tid, size_t b, size_t e);

typedef struct cs_pool_opts {
    int adapt;          /* 1: adaptive width (default); 0: always all threads */
    int spin_us;        /* idle workers poll this long before sleeping (default 50) */
    int chunks;         /* chunks per thread and job (default 4) */
    int jitter_us;      /* test aid: workers sleep a random 0..jitter_us before each chunk (0: off) */
} cs_pool_opts;

/* Defaults, overridden by CS_POOL_ADAPT, CS_POOL_SPIN_US, CS_POOL_CHUNKS in the
 * environment (for measurements; out-of-range values are ignored). */
cs_pool_opts cs_pool_default_opts(void);

/* n_threads <= 0 means cs_cpu_count(); at most CS_POOL_MAX_THREADS. opts NULL:
 * cs_pool_default_opts(). */
#define CS_POOL_MAX_THREADS 256
int cs_pool_create(cs_pool **out, int n_threads, cs_err *err);
int cs_pool_create_opts(cs_pool **out, int n_threads, const cs_pool_opts *opts, cs_err *err);
void cs_pool_free(cs_pool *p); /* NULL is a no-op */
int cs_pool_size(const cs_pool *p);

void cs_pool_for(cs_pool *p, size_t n, size_t grain, cs_pool_range_fn fn, void *ctx);
void cs_pool_run(cs_pool *p, cs_pool_fn fn, void *ctx);

/* Threads the next jobs will use (1..size), after adaptation and caps. */
int cs_pool_width(const cs_pool *p);

/* Counters since creation (for benchmarks and tests). */
typedef struct cs_pool_stats {
    uint64_t jobs;          /* cs_pool_for + cs_pool_run calls */
    uint64_t narrow_jobs;   /* of those, run with fewer threads than the pool has */
    uint64_t chunks;        /* chunks run, all threads */
    uint64_t worker_chunks; /* of those, run by workers */
    uint64_t caller_sleeps; /* times the caller slept waiting for a worker */
    uint64_t narrowings;    /* times the width was lowered */
    uint64_t wait_ns;       /* caller time spent waiting for workers */
    uint64_t job_ns;        /* caller time in multi-threaded jobs */
    uint64_t busy_samples;  /* run-queue delay samples that found the CPUs contended */
} cs_pool_stats;
void cs_pool_get_stats(const cs_pool *p, cs_pool_stats *out);

/* CPUs this process may use: the affinity mask, capped by a cgroup v2/v1 CPU
 * quota (rounded up); CS_THREADS in the environment overrides. At least 1. */
int cs_cpu_count(void);

/* Splits [0, total) into n nearly equal parts; part i is [*b, *e). */
static inline void cs_split(size_t total, int i, int n, size_t *b, size_t *e) {
    *b = total * (size_t)i / (size_t)n;
    *e = total * (size_t)(i + 1) / (size_t)n;
}

#endif
