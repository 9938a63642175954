/* cs_pool: a persistent fork-join thread pool for the forward pass.
 *
 * cs_pool_run(fn, ctx) calls fn(ctx, tid, n) once for every tid in [0, n) and
 * returns when all have finished; the calling thread runs tid 0. Workers spin
 * briefly between jobs (a decode step issues dozens of short jobs) and then
 * sleep on a futex, so an idle pool costs no CPU.
 *
 * One cs_pool_run at a time per pool (the caller serialises); fn must not call
 * cs_pool_run on the same pool. */
#ifndef CS_THREADPOOL_H
#define CS_THREADPOOL_H

#include "engine/err.h"

typedef struct cs_pool cs_pool;
typedef void (*cs_pool_fn)(void *ctx, int tid, int n);

/* n_threads <= 0 means cs_cpu_count(). */
int cs_pool_create(cs_pool **out, int n_threads, cs_err *err);
void cs_pool_free(cs_pool *p); /* NULL is a no-op */
int cs_pool_size(const cs_pool *p);
void cs_pool_run(cs_pool *p, cs_pool_fn fn, void *ctx);

/* CPUs this process may use: the affinity mask, capped by a cgroup v2/v1 CPU
 * quota (rounded up); CS_THREADS in the environment overrides. At least 1. */
int cs_cpu_count(void);

/* Splits [0, total) into n nearly equal parts; part i is [*b, *e). */
static inline void cs_split(size_t total, int i, int n, size_t *b, size_t *e) {
    *b = total * (size_t)i / (size_t)n;
    *e = total * (size_t)(i + 1) / (size_t)n;
}

#endif
