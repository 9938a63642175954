/* Engine modes against each other: batched steps vs one sequence at a time,
 * thread counts, kernel tables, the packed-weights cache, and the bf16/int8
 * weight formats against fp32 (errors reported and bounded). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/gpt2.h"
#include "engine/threadpool.h"
#include "testutil.h"

/* Bounds for the reduced-precision weight formats (measured values are printed;
 * see README "Weight formats"). Errors are max |x - x_fp32| / max |x_fp32|. */
#define BF16_MAX_REL 2e-2
#define INT8_MAX_REL 6e-2
#define BF16_MIN_AGREE 0.97
#define INT8_MIN_AGREE 0.90

static cs_gpt2 *load(const char *name, cs_wdtype dt, const cs_kern *k, const char *cache_dir) {
    char path[256];
    cs_gpt2_config cfg;
    cs_err err;
    snprintf(path, sizeof path, "build/models/%s/config.json", name);
    if (cs_gpt2_config_load(&cfg, path, &err)) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "build/models/%s/model.safetensors", name);
    cs_gpt2_opts o = {.dtype = dt, .kern = k, .no_cache = cache_dir == NULL, .cache_dir = cache_dir};
    cs_gpt2 *m = NULL;
    if (cs_gpt2_load(&m, &cfg, path, &o, &err)) fail_msg("%s", err.msg);
    return m;
}

static const int32_t P0[] = {7454, 2402, 257, 640, 11, 612, 373, 257, 1310};
static const int32_t P1[] = {464, 2068, 7586, 21831};
static const int32_t P2[] = {15496, 11, 995, 0, 40, 1101, 1654, 345, 1183, 766, 484, 1053, 1760, 340, 13};

/* Logits of the last token after feeding `ids` one chunk at a time. */
static void single(const cs_gpt2 *m, cs_pool *pool, const int32_t *ids, size_t n, float *out) {
    cs_gpt2_state st;
    cs_err err;
    assert_int_equal(cs_gpt2_state_init(&st, m, 64, 64, pool, &err), 0);
    assert_int_equal(cs_gpt2_forward(m, &st, ids, n, out, 0, &err), 0);
    cs_gpt2_state_free(&st);
}

/* Three sequences in one step (two prompts and a continuation of a cached
 * one), then a decode step for all three: same logits as one at a time. */
static void test_batch_equals_single(void **state) {
    (void)state;
    cs_gpt2 *m = load("tiny", CS_W_F32, NULL, NULL);
    const size_t V = (size_t)m->cfg.vocab_size;
    float *ref = malloc(3 * V * sizeof(float)), *got = malloc(3 * V * sizeof(float));
    cs_gpt2_kv kv[3];
    cs_gpt2_ws ws;
    cs_err err;
    for (int i = 0; i < 3; i++) assert_int_equal(cs_gpt2_kv_init(&kv[i], m, 64, CS_KV_F32, &err), 0);
    assert_int_equal(cs_gpt2_ws_init(&ws, m, 32, 3, NULL, &err), 0);
    /* sequence 2 has 10 tokens cached already */
    cs_gpt2_seq pre = {.kv = &kv[2], .tokens = P2, .n = 10};
    assert_int_equal(cs_gpt2_step(m, &ws, &pre, 1, &err), 0);
    cs_gpt2_seq b[3] = {{.kv = &kv[0], .tokens = P0, .n = 9, .logits = got},
                        {.kv = &kv[1], .tokens = P1, .n = 4, .logits = got + V},
                        {.kv = &kv[2], .tokens = P2 + 10, .n = 5, .logits = got + 2 * V}};
    assert_int_equal(cs_gpt2_step(m, &ws, b, 3, &err), 0);
    single(m, NULL, P0, 9, ref);
    single(m, NULL, P1, 4, ref + V);
    single(m, NULL, P2, 15, ref + 2 * V);
    assert_memory_equal(got, ref, 3 * V * sizeof(float)); /* same per-row arithmetic: bitwise equal */
    assert_int_equal(kv[0].n_past, 9);
    assert_int_equal(kv[2].n_past, 15);
    /* one decode token each, logits rows in reverse order (not one array in
     * step order: the step writes its own buffer and copies) */
    const int32_t nxt[3] = {100, 200, 300};
    for (int i = 0; i < 3; i++)
        b[i] = (cs_gpt2_seq){.kv = &kv[i], .tokens = &nxt[i], .n = 1, .logits = got + (size_t)(2 - i) * V};
    assert_int_equal(cs_gpt2_step(m, &ws, b, 3, &err), 0);
    int32_t s0[10], s1[5], s2[16];
    memcpy(s0, P0, sizeof P0);
    s0[9] = 100;
    memcpy(s1, P1, sizeof P1);
    s1[4] = 200;
    memcpy(s2, P2, sizeof P2);
    s2[15] = 300;
    single(m, NULL, s0, 10, ref + 2 * V);
    single(m, NULL, s1, 5, ref + V);
    single(m, NULL, s2, 16, ref);
    assert_memory_equal(got, ref, 3 * V * sizeof(float));
    /* a batch over the workspace, or a bad id anywhere, fails and changes no cache */
    int32_t bad[2] = {5, (int32_t)V};
    b[0] = (cs_gpt2_seq){.kv = &kv[0], .tokens = bad, .n = 2};
    assert_int_equal(cs_gpt2_step(m, &ws, b, 1, &err), -1);
    assert_int_equal(kv[0].n_past, 10);
    int32_t many[40] = {0};
    b[0] = (cs_gpt2_seq){.kv = &kv[0], .tokens = many, .n = 40};
    assert_int_equal(cs_gpt2_step(m, &ws, b, 1, &err), -1);
    assert_non_null(strstr(err.msg, "workspace"));
    for (int i = 0; i < 3; i++) cs_gpt2_kv_free(&kv[i]);
    cs_gpt2_ws_free(&ws);
    free(ref);
    free(got);
    cs_gpt2_free(m);
}

static void test_threads_and_kernels_agree(void **state) {
    (void)state;
    cs_gpt2 *m = load("distil", CS_W_F32, NULL, NULL);
    cs_gpt2 *ms = load("tiny", CS_W_F32, &cs_kern_scalar, NULL), *mb = load("tiny", CS_W_F32, NULL, NULL);
    const size_t V = (size_t)m->cfg.vocab_size;
    float *a = malloc(V * sizeof(float)), *b = malloc(V * sizeof(float));
    cs_pool *pool;
    cs_err err;
    assert_int_equal(cs_pool_create(&pool, 3, &err), 0);
    single(m, NULL, P2, 15, a);
    single(m, pool, P2, 15, b);
    assert_memory_equal(a, b, V * sizeof(float)); /* work split never changes the arithmetic */
    /* int8 and bf16 too: with a pool, an int8 matmul's input is quantized once
     * (by rows on the pool for the 60 x 3072 fc projection input) and shared
     * by the threads' panel ranges; 60 tokens take one chunk */
    int32_t p60[60];
    for (int i = 0; i < 60; i++) p60[i] = P2[i % 15] + i;
    for (int dt = CS_W_BF16; dt <= CS_W_I8; dt++) {
        cs_gpt2 *mq = load("distil", (cs_wdtype)dt, NULL, NULL);
        single(mq, NULL, p60, 60, a);
        single(mq, pool, p60, 60, b);
        assert_memory_equal(a, b, V * sizeof(float));
        single(mq, NULL, P2, 15, a);
        single(mq, pool, P2, 15, b);
        assert_memory_equal(a, b, V * sizeof(float));
        cs_gpt2_free(mq);
    }
    single(ms, NULL, P0, 9, a);
    single(mb, pool, P0, 9, b);
    double md = 0, mx = 0;
    for (size_t i = 0; i < V; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs(a[i]));
    }
    printf("  %s vs scalar kernels, whole model: max rel logits difference %.3g\n", mb->kern->name, md / mx);
    assert_true(md / mx < 1e-5);
    cs_pool_free(pool);
    free(a);
    free(b);
    cs_gpt2_free(m);
    cs_gpt2_free(ms);
    cs_gpt2_free(mb);
}

static void test_pack_cache(void **state) {
    (void)state;
    char dir[] = "/tmp/cs-pack-XXXXXX", cmd[300];
    assert_non_null(mkdtemp(dir));
    cs_gpt2 *a = load("tiny", CS_W_I8, NULL, dir);
    assert_int_equal(a->from_cache, 0);
    cs_gpt2 *b = load("tiny", CS_W_I8, NULL, dir);
    assert_int_equal(b->from_cache, 1);
    assert_int_equal(b->blob_mapped, 1);
    const size_t V = (size_t)a->cfg.vocab_size;
    float *la = malloc(V * 4), *lb = malloc(V * 4);
    single(a, NULL, P1, 4, la);
    single(b, NULL, P1, 4, lb);
    assert_memory_equal(la, lb, V * 4);
    cs_gpt2_free(b);
    /* a truncated or foreign cache file is rebuilt, not trusted */
    snprintf(cmd, sizeof cmd, "for f in '%s'/*.cspack; do head -c 5000 \"$f\" > \"$f.t\" && mv \"$f.t\" \"$f\"; done", dir);
    assert_int_equal(system(cmd), 0);
    b = load("tiny", CS_W_I8, NULL, dir);
    assert_int_equal(b->from_cache, 0);
    single(b, NULL, P1, 4, lb);
    assert_memory_equal(la, lb, V * 4);
    cs_gpt2_free(b);
    snprintf(cmd, sizeof cmd, "for f in '%s'/*.cspack; do printf 'XXXXXXXX' | dd of=\"$f\" conv=notrunc 2>/dev/null; done", dir);
    assert_int_equal(system(cmd), 0);
    b = load("tiny", CS_W_I8, NULL, dir);
    assert_int_equal(b->from_cache, 0);
    cs_gpt2_free(b);
    /* another dtype is another file */
    b = load("tiny", CS_W_BF16, NULL, dir);
    assert_int_equal(b->from_cache, 0);
    cs_gpt2_free(b);
    cs_gpt2_free(a);
    free(la);
    free(lb);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Teacher-forced comparison on fp32's own greedy continuations. */
static void compare_dtype(const char *name, cs_wdtype dt, double max_rel_bound, double min_agree) {
    cs_gpt2 *f = load(name, CS_W_F32, NULL, NULL), *q = load(name, dt, NULL, NULL);
    const size_t V = (size_t)f->cfg.vocab_size;
    char path[256];
    snprintf(path, sizeof path, "tests/data/ref/%s/meta.json", name);
    json_t *meta = tu_load_json(path);
    json_t *prompts = json_object_get(meta, "prompts"), *greedy = json_object_get(meta, "greedy");
    size_t n_prompts = json_array_size(prompts);
    if (tu_quick()) n_prompts = 2;
    float *lf = malloc(128 * V * 4), *lq = malloc(128 * V * 4);
    size_t agree = 0, total = 0;
    double max_rel = 0, sum_rel = 0;
    for (size_t pi = 0; pi < n_prompts; pi++) {
        int32_t ids[128];
        size_t n = 0;
        json_t *pa = json_array_get(prompts, pi), *ga = json_array_get(greedy, pi);
        for (size_t i = 0; i < json_array_size(pa); i++) ids[n++] = (int32_t)json_integer_value(json_array_get(pa, i));
        const size_t np = n;
        for (size_t i = 0; i < json_array_size(ga) && n < 128; i++)
            ids[n++] = (int32_t)json_integer_value(json_array_get(ga, i));
        cs_gpt2_state sf, sq;
        cs_err err;
        assert_int_equal(cs_gpt2_state_init(&sf, f, 128, 128, NULL, &err), 0);
        assert_int_equal(cs_gpt2_state_init(&sq, q, 128, 128, NULL, &err), 0);
        assert_int_equal(cs_gpt2_forward(f, &sf, ids, n - 1, lf, 1, &err), 0);
        assert_int_equal(cs_gpt2_forward(q, &sq, ids, n - 1, lq, 1, &err), 0);
        for (size_t t = np - 1; t < n - 1; t++) {
            const float *a = lf + t * V, *b = lq + t * V;
            double md = 0, mx = 0, sd = 0;
            size_t af = 0, aq = 0;
            for (size_t i = 0; i < V; i++) {
                const double d = fabs((double)a[i] - b[i]);
                md = fmax(md, d);
                sd += d;
                mx = fmax(mx, fabs(a[i]));
                if (a[i] > a[af]) af = i;
                if (b[i] > b[aq]) aq = i;
            }
            max_rel = fmax(max_rel, md / mx);
            sum_rel += sd / (double)V / mx;
            agree += af == aq;
            total++;
        }
        cs_gpt2_state_free(&sf);
        cs_gpt2_state_free(&sq);
    }
    printf("  %-7s %s vs fp32: max rel logits error %.3g, mean %.3g, greedy agreement %zu/%zu (%.1f%%)\n", name,
           cs_wdtype_name(dt), max_rel, sum_rel / (double)total, agree, total, 100.0 * (double)agree / (double)total);
    assert_true(max_rel <= max_rel_bound);
    assert_true((double)agree / (double)total >= min_agree);
    json_decref(meta);
    free(lf);
    free(lq);
    cs_gpt2_free(f);
    cs_gpt2_free(q);
}

static void test_bf16_int8_error(void **state) {
    (void)state;
    compare_dtype("tiny", CS_W_BF16, BF16_MAX_REL, BF16_MIN_AGREE);
    compare_dtype("tiny", CS_W_I8, INT8_MAX_REL, INT8_MIN_AGREE);
    compare_dtype("distil", CS_W_BF16, BF16_MAX_REL, BF16_MIN_AGREE);
    compare_dtype("distil", CS_W_I8, INT8_MAX_REL, INT8_MIN_AGREE);
}

typedef struct sum_ctx {
    _Atomic long sum;
    int seen[64];
} sum_ctx;

static void job_sum(void *vc, int tid, int n) {
    sum_ctx *c = vc;
    size_t b, e;
    cs_split(100000, tid, n, &b, &e);
    long s = 0;
    for (size_t i = b; i < e; i++) s += (long)i;
    c->sum += s;
    c->seen[tid]++;
}

static void test_pool(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        cs_pool *p;
        assert_int_equal(cs_pool_create(&p, n, NULL), 0);
        assert_int_equal(cs_pool_size(p), n);
        sum_ctx c = {0};
        for (int rep = 0; rep < 500; rep++) cs_pool_run(p, job_sum, &c);
        assert_int_equal(c.sum, 500L * (99999L * 100000L / 2));
        for (int t = 0; t < n; t++) assert_int_equal(c.seen[t], 500);
        cs_pool_free(p);
    }
    setenv("CS_THREADS", "3", 1);
    assert_int_equal(cs_cpu_count(), 3);
    unsetenv("CS_THREADS");
    assert_true(cs_cpu_count() >= 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_single), cmocka_unit_test(test_threads_and_kernels_agree),
        cmocka_unit_test(test_pack_cache), cmocka_unit_test(test_bf16_int8_error), cmocka_unit_test(test_pool)};
    return cmocka_run_group_tests_name("modes", tests, NULL, NULL);
}
