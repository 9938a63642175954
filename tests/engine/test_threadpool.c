/* cs_pool: dynamic chunks cover every item exactly once, per-thread ids are
 * never shared by two running chunks, cs_pool_run still calls every index once,
 * the width narrows when workers run late and widens again, and the forward
 * pass gives the same bits whatever the pool does (thread counts, chunk sizes,
 * late workers, narrowing in the middle of a step). */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/gpt2.h"
#include "engine/threadpool.h"
#include "testutil.h"

#define MAX_ITEMS 100003

/* Checks made inside workers are counted here and asserted by the test thread
 * (cmocka's asserts must not run on other threads). */
typedef struct cover_ctx {
    _Atomic uint8_t *hits;      /* (n) times each item was run */
    _Atomic int inuse[CS_POOL_MAX_THREADS];
    _Atomic int bad_tid, shared_tid, short_chunk, empty_chunk;
    size_t n, grain;
    int size;
} cover_ctx;

static void job_cover(void *vc, int tid, size_t b, size_t e) {
    cover_ctx *c = vc;
    if (tid < 0 || tid >= c->size) {
        c->bad_tid++;
        return;
    }
    if (atomic_exchange(&c->inuse[tid], 1)) c->shared_tid++;
    if (e <= b) c->empty_chunk++;
    if (e - b < c->grain && e != c->n) c->short_chunk++;
    for (size_t i = b; i < e && i < c->n; i++) c->hits[i]++;
    atomic_store(&c->inuse[tid], 0);
}

static void test_for_covers_once(void **state) {
    (void)state;
    static const size_t ns[] = {1, 2, 3, 7, 64, 1000, MAX_ITEMS};
    static const size_t grains[] = {1, 3, 64};
    static const int chunks[] = {1, 4, 64};
    cover_ctx c;
    memset(&c, 0, sizeof c);
    c.hits = calloc(MAX_ITEMS, 1);
    for (int t = 1; t <= 4; t++)
        for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++) {
            cs_pool_opts o = cs_pool_default_opts();
            o.chunks = chunks[ci];
            o.jitter_us = ci == 1 ? 20 : 0;
            cs_pool *p;
            assert_int_equal(cs_pool_create_opts(&p, t, &o, NULL), 0);
            assert_int_equal(cs_pool_size(p), t);
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
                for (size_t gi = 0; gi < sizeof grains / sizeof *grains; gi++) {
                    c.n = ns[ni];
                    c.grain = grains[gi];
                    c.size = t;
                    memset((void *)c.hits, 0, c.n);
                    for (int rep = 0; rep < 3; rep++) cs_pool_for(p, c.n, c.grain, job_cover, &c);
                    for (size_t i = 0; i < c.n; i++)
                        if (c.hits[i] != 3) fail_msg("threads %d chunks %d n %zu grain %zu: item %zu run %d times", t,
                                                     chunks[ci], c.n, c.grain, i, c.hits[i]);
                }
            cs_pool_for(p, 0, 1, job_cover, &c); /* nothing to do: no call */
            assert_int_equal(c.bad_tid, 0);
            assert_int_equal(c.shared_tid, 0);
            assert_int_equal(c.short_chunk, 0);
            assert_int_equal(c.empty_chunk, 0);
            cs_pool_stats st;
            cs_pool_get_stats(p, &st);
            assert_true(st.chunks >= st.worker_chunks);
            if (t == 1) assert_int_equal(st.worker_chunks, 0);
            cs_pool_free(p);
        }
    free((void *)c.hits);
}

typedef struct run_ctx {
    _Atomic int seen[8];
    _Atomic int bad;
} run_ctx;

static void job_run(void *vc, int i, int n) {
    run_ctx *c = vc;
    if (i < 0 || i >= n || n > 8) c->bad++;
    else c->seen[i]++;
}

/* cs_pool_run calls every index once per run, also with late workers (the
 * width then narrows and the caller runs the indices the workers do not). */
static void test_run_each_index_once(void **state) {
    (void)state;
    for (int t = 1; t <= 4; t++) {
        cs_pool_opts o = cs_pool_default_opts();
        o.jitter_us = t == 3 ? 2000 : 0;
        cs_pool *p;
        assert_int_equal(cs_pool_create_opts(&p, t, &o, NULL), 0);
        run_ctx c;
        memset(&c, 0, sizeof c);
        const int reps = t == 3 ? 100 : 500;
        for (int rep = 0; rep < reps; rep++) cs_pool_run(p, job_run, &c);
        assert_int_equal(c.bad, 0);
        for (int i = 0; i < t; i++) assert_int_equal(c.seen[i], reps);
        cs_pool_free(p);
    }
}

static void spin_us(int us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

typedef struct late_ctx {
    int late; /* workers' chunks sleep this long (us); the caller's compute for 100 us */
} late_ctx;

static void job_late(void *vc, int tid, size_t b, size_t e) {
    late_ctx *c = vc;
    (void)b;
    (void)e;
    if (tid != 0 && c->late) usleep((useconds_t)c->late);
    else spin_us(100);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Workers that keep the caller waiting make the pool use fewer threads; once
 * they keep up again, a probe brings the width back. */
/* Back-to-back jobs of alternating sizes, each item counted: a worker still
 * finishing job k must never run a chunk of job k+1 with job k's claim (that
 * ran a chunk twice and took one decrement too many from the pool's count of
 * chunks left, so the caller waited forever: seen as a server that stopped
 * answering). Each item must run exactly once; alarm() turns a hang into a
 * failure. */
typedef struct {
    _Atomic int *count;
} stress_ctx;

static void stress_fn(void *ctx, int tid, size_t b, size_t e) {
    (void)tid;
    stress_ctx *c = ctx;
    for (size_t i = b; i < e; i++) atomic_fetch_add_explicit(&c->count[i], 1, memory_order_relaxed);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_back_to_back_jobs: the pool hung\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

static void test_back_to_back_jobs(void **state) {
    (void)state;
    enum { MAXN = 64 };
    static _Atomic int count[MAXN];
    signal(SIGALRM, on_alarm);
    alarm(120);
    cs_pool_opts o = cs_pool_default_opts();
    o.adapt = 0;
    cs_pool *p = NULL;
    assert_int_equal(cs_pool_create_opts(&p, 3, &o, NULL), 0);
    stress_ctx c = {count};
    for (int it = 0; it < 300000; it++) {
        const size_t n = (it & 1) ? 3 : (size_t)(8 + it % 48);
        for (size_t i = 0; i < n; i++) atomic_store_explicit(&count[i], 0, memory_order_relaxed);
        cs_pool_for(p, n, 1, stress_fn, &c);
        for (size_t i = 0; i < n; i++)
            if (atomic_load_explicit(&count[i], memory_order_relaxed) != 1)
                fail_msg("job %d: item %zu of %zu ran %d times", it, i, n, atomic_load(&count[i]));
    }
    cs_pool_free(p);
    alarm(0);
}

static void test_width_follows_lateness(void **state) {
    (void)state;
    cs_pool_opts o = cs_pool_default_opts();
    o.adapt = 1;
    cs_pool *p;
    assert_int_equal(cs_pool_create_opts(&p, 2, &o, NULL), 0);
    assert_int_equal(cs_pool_width(p), 2);
    late_ctx c = {.late = 5000};
    double t0 = now_s();
    while (cs_pool_width(p) == 2 && now_s() - t0 < 10) cs_pool_for(p, 8, 1, job_late, &c);
    cs_pool_stats st;
    cs_pool_get_stats(p, &st);
    printf("  late workers: width 1 after %.2f s, %llu jobs\n", now_s() - t0, (unsigned long long)st.jobs);
    assert_int_equal(cs_pool_width(p), 1);
    assert_true(st.narrowings >= 1);
    /* at width 1 the caller runs every chunk itself */
    cs_pool_for(p, 8, 1, job_late, &c);
    cs_pool_stats st2;
    cs_pool_get_stats(p, &st2);
    assert_int_equal(st2.worker_chunks, st.worker_chunks);
    assert_true(st2.narrow_jobs > st.narrow_jobs);
    /* workers on time again: a probe (after 50 ms at first) restores the width */
    c.late = 0;
    t0 = now_s();
    while (cs_pool_width(p) == 1 && now_s() - t0 < 10) cs_pool_for(p, 8, 1, job_late, &c);
    printf("  workers on time: width 2 again after %.2f s\n", now_s() - t0);
    assert_int_equal(cs_pool_width(p), 2);
    cs_pool_free(p);

    /* adapt = 0: the width never changes */
    o.adapt = 0;
    assert_int_equal(cs_pool_create_opts(&p, 2, &o, NULL), 0);
    c.late = 5000;
    for (int i = 0; i < 60; i++) cs_pool_for(p, 8, 1, job_late, &c);
    assert_int_equal(cs_pool_width(p), 2);
    cs_pool_get_stats(p, &st);
    assert_int_equal(st.narrowings, 0);
    assert_int_equal(st.narrow_jobs, 0);
    cs_pool_free(p);
}

static _Atomic int hog_stop;

static void *hog(void *arg) {
    (void)arg;
    while (!atomic_load_explicit(&hog_stop, memory_order_relaxed)) {
    }
    return NULL;
}

/* The pool, a worker and a busy thread on one CPU: each waits for that CPU
 * most of the time, which the run-queue delay samples must report. */
static void test_sees_contended_cpu(void **state) {
    (void)state;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (!f) {
        printf("  /proc/thread-self/schedstat unreadable: skipped\n");
        return;
    }
    fclose(f);
    cpu_set_t old, one;
    assert_int_equal(sched_getaffinity(0, sizeof old, &old), 0);
    int cpu = 0;
    while (!CPU_ISSET(cpu, &old)) cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0); /* threads created now inherit it */
    cs_pool *p;
    assert_int_equal(cs_pool_create(&p, 2, NULL), 0);
    pthread_t th;
    atomic_store(&hog_stop, 0);
    assert_int_equal(pthread_create(&th, NULL, hog, NULL), 0);
    late_ctx c = {0};
    cs_pool_stats st = {0};
    const double t0 = now_s();
    while (st.busy_samples == 0 && now_s() - t0 < 10) {
        cs_pool_for(p, 8, 1, job_late, &c);
        cs_pool_get_stats(p, &st);
    }
    atomic_store(&hog_stop, 1);
    pthread_join(th, NULL);
    printf("  one CPU shared by 3 threads: contended after %.2f s (%llu samples)\n", now_s() - t0,
           (unsigned long long)st.busy_samples);
    cs_pool_free(p);
    assert_int_equal(sched_setaffinity(0, sizeof old, &old), 0);
    assert_true(st.busy_samples >= 1);
}

/* ------------------------------------------------ the forward pass, bitwise */

static cs_gpt2 *load(const char *name, cs_wdtype dt) {
    char path[256];
    cs_gpt2_config cfg;
    cs_err err;
    snprintf(path, sizeof path, "build/models/%s/config.json", name);
    if (cs_gpt2_config_load(&cfg, path, &err)) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "build/models/%s/model.safetensors", name);
    cs_gpt2_opts o = {.dtype = dt, .no_cache = 1};
    cs_gpt2 *m = NULL;
    if (cs_gpt2_load(&m, &cfg, path, &o, &err)) fail_msg("%s", err.msg);
    return m;
}

static const int32_t P0[] = {7454, 2402, 257, 640, 11, 612, 373, 257, 1310};
static const int32_t P1[] = {464, 2068, 7586, 21831};
static const int32_t P2[] = {15496, 11, 995, 0, 40, 1101, 1654, 345, 1183, 766, 484, 1053, 1760, 340, 13};

/* Three prompts in one step, then `steps` decode steps of the three (greedy
 * on the logits); all logits of every step written to out (steps + 1, 3, V). */
static void run_batch(const cs_gpt2 *m, cs_pool *pool, int steps, float *out) {
    const size_t V = (size_t)m->cfg.vocab_size;
    cs_gpt2_kv kv[3];
    cs_gpt2_ws ws;
    cs_err err;
    for (int i = 0; i < 3; i++) assert_int_equal(cs_gpt2_kv_init(&kv[i], m, 64, CS_KV_F32, &err), 0);
    assert_int_equal(cs_gpt2_ws_init(&ws, m, 32, 3, pool, &err), 0);
    cs_gpt2_seq b[3] = {{.kv = &kv[0], .tokens = P0, .n = 9, .logits = out},
                        {.kv = &kv[1], .tokens = P1, .n = 4, .logits = out + V},
                        {.kv = &kv[2], .tokens = P2, .n = 15, .logits = out + 2 * V}};
    assert_int_equal(cs_gpt2_step(m, &ws, b, 3, &err), 0);
    int32_t next[3];
    for (int s = 1; s <= steps; s++) {
        float *prev = out + (size_t)(s - 1) * 3 * V, *cur = out + (size_t)s * 3 * V;
        for (int i = 0; i < 3; i++) {
            size_t best = 0;
            for (size_t v = 1; v < V; v++)
                if (prev[i * V + v] > prev[i * V + best]) best = v;
            next[i] = (int32_t)best;
            b[i] = (cs_gpt2_seq){.kv = &kv[i], .tokens = &next[i], .n = 1, .logits = cur + i * V};
        }
        assert_int_equal(cs_gpt2_step(m, &ws, b, 3, &err), 0);
    }
    for (int i = 0; i < 3; i++) cs_gpt2_kv_free(&kv[i]);
    cs_gpt2_ws_free(&ws);
}

static void forward_identical(const char *name, cs_wdtype dt) {
    cs_gpt2 *m = load(name, dt);
    const int steps = tu_quick() ? 2 : 4;
    const size_t n = (size_t)(steps + 1) * 3 * (size_t)m->cfg.vocab_size;
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    run_batch(m, NULL, steps, ref);
    static const struct {
        int threads, chunks, jitter_us;
    } cfgs[] = {{2, 4, 0}, {2, 1, 0}, {3, 7, 0}, {2, 64, 300}, {4, 4, 300}};
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        cs_pool_opts o = cs_pool_default_opts();
        o.adapt = 1;
        o.chunks = cfgs[i].chunks;
        o.jitter_us = cfgs[i].jitter_us;
        cs_pool *p;
        assert_int_equal(cs_pool_create_opts(&p, cfgs[i].threads, &o, NULL), 0);
        memset(got, 0, n * sizeof(float));
        run_batch(m, p, steps, got);
        cs_pool_stats st;
        cs_pool_get_stats(p, &st);
        printf("  %s %s, %d threads, %d chunks/thread, jitter %d us: %llu jobs, %llu of %llu chunks by workers, "
               "%llu jobs narrowed\n",
               name, cs_wdtype_name(dt), cfgs[i].threads, cfgs[i].chunks, cfgs[i].jitter_us,
               (unsigned long long)st.jobs, (unsigned long long)st.worker_chunks, (unsigned long long)st.chunks,
               (unsigned long long)st.narrow_jobs);
        assert_memory_equal(got, ref, n * sizeof(float)); /* the split never changes the arithmetic */
        cs_pool_free(p);
    }
    free(ref);
    free(got);
    cs_gpt2_free(m);
}

static void test_forward_bitwise_any_split(void **state) {
    (void)state;
    forward_identical("tiny", CS_W_F32);
    forward_identical("distil", CS_W_F32);
    forward_identical("distil", CS_W_I8);
    if (!tu_quick()) forward_identical("distil", CS_W_BF16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_for_covers_once), cmocka_unit_test(test_run_each_index_once),
        cmocka_unit_test(test_back_to_back_jobs),
        cmocka_unit_test(test_width_follows_lateness), cmocka_unit_test(test_sees_contended_cpu),
        cmocka_unit_test(test_forward_bitwise_any_split)};
    return cmocka_run_group_tests_name("threadpool", tests, NULL, NULL);
}
