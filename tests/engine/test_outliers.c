/* Reduced-precision weight formats on checkpoints with outlier features.
 *
 * Trained GPT-2 models carry a few residual / LayerNorm-output channels tens
 * of times larger than the rest; one int8 activation scale per row then spends
 * its whole range on them and rounds every other channel to a few levels.
 * Random weights have no such channels, so each outlier checkpoint (cs-synth
 * --outliers / --mlp-outliers, tests/data/ref/models.txt) is compared with the
 * plain checkpoint of the same shape and seed. fp32 is the reference (it
 * matches transformers to ~2.5e-6, tests/engine/test_gpt2.c):
 *   - teacher-forced on fp32's greedy continuation: max |x - x_fp32| /
 *     max |x_fp32| over the logits, and top-1 agreement per position;
 *   - free-running greedy: tokens generated before the first divergence from
 *     fp32, as a fraction of the continuation.
 * int8 must stay within 2x of its plain-weights error (4x at 60x, see there)
 * and within 10 points of its plain agreement and greedy prefix on the outlier
 * models, and bf16 within its bounds. The previous int8 (one activation scale
 * per row, no calibration) fails all but the 5x checkpoint. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/gpt2.h"
#include "engine/threadpool.h"
#include "testutil.h"

#define N_NEW 32            /* greedy continuation length per prompt */
#define N_PROMPTS 12        /* the first of tests/data/ref/distil's prompts */
#define MAX_SEQ 128
#define INT8_ERR_RATIO 2.0  /* outlier error <= this x plain error */
#define AGREE_DROP 0.10     /* outlier agreement >= plain - this */
#define BF16_MAX_REL 2e-2
#define BF16_MAX_REL_OUTLIERS 3e-2
#define BF16_MIN_AGREE 0.95
#define INT8_MAX_REL 6e-2
#define INT8_MIN_AGREE 0.85

typedef struct stats {
    double max_rel, mean_rel, agree, prefix; /* prefix: mean tokens before divergence / N_NEW */
} stats;

static cs_gpt2 *load(const char *name, cs_wdtype dt) {
    char path[256];
    cs_gpt2_config cfg;
    cs_err err;
    snprintf(path, sizeof path, "build/models/%s/config.json", name);
    if (cs_gpt2_config_load(&cfg, path, &err)) fail_msg("%s (run 'make models')", err.msg);
    snprintf(path, sizeof path, "build/models/%s/model.safetensors", name);
    cs_gpt2_opts o = {.dtype = dt, .no_cache = 1};
    cs_gpt2 *m = NULL;
    if (cs_gpt2_load(&m, &cfg, path, &o, &err)) fail_msg("%s", err.msg);
    return m;
}

static size_t argmax(const float *x, size_t n) {
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation of prompt ids[0..np) into ids[np..np+N_NEW). */
static void greedy(const cs_gpt2 *m, int32_t *ids, size_t np, float *logits) {
    cs_gpt2_state st;
    cs_err err;
    const size_t V = (size_t)m->cfg.vocab_size;
    assert_int_equal(cs_gpt2_state_init(&st, m, MAX_SEQ, MAX_SEQ, NULL, &err), 0);
    assert_int_equal(cs_gpt2_forward(m, &st, ids, np, logits, 0, &err), 0);
    for (size_t i = 0; i < N_NEW; i++) {
        ids[np + i] = (int32_t)argmax(logits, V);
        if (i + 1 < N_NEW) assert_int_equal(cs_gpt2_forward(m, &st, &ids[np + i], 1, logits, 0, &err), 0);
    }
    cs_gpt2_state_free(&st);
}

typedef struct prompts {
    size_t n;
    int32_t ids[32][MAX_SEQ];
    size_t len[32];
} prompts;

static void load_prompts(prompts *p) {
    json_t *meta = tu_load_json("tests/data/ref/distil/meta.json");
    assert_non_null(meta);
    json_t *arr = json_object_get(meta, "prompts");
    p->n = json_array_size(arr) < N_PROMPTS ? json_array_size(arr) : N_PROMPTS;
    for (size_t i = 0; i < p->n; i++) {
        json_t *a = json_array_get(arr, i);
        p->len[i] = json_array_size(a);
        assert_true(p->len[i] + N_NEW <= MAX_SEQ);
        for (size_t k = 0; k < p->len[i]; k++) p->ids[i][k] = (int32_t)json_integer_value(json_array_get(a, k));
    }
    json_decref(meta);
}

/* bf16 (st[0]) and int8 (st[1]) against fp32 on one checkpoint. */
static void measure(const char *name, const prompts *pr, stats st[2]) {
    cs_gpt2 *f = load(name, CS_W_F32), *qs[2] = {load(name, CS_W_BF16), load(name, CS_W_I8)};
    const size_t V = (size_t)f->cfg.vocab_size;
    float *lf = malloc(MAX_SEQ * V * 4), *lq = malloc(MAX_SEQ * V * 4);
    size_t total = 0, agree[2] = {0}, prefix[2] = {0};
    memset(st, 0, 2 * sizeof *st);
    for (size_t pi = 0; pi < pr->n; pi++) {
        int32_t ref[MAX_SEQ], got[MAX_SEQ];
        const size_t np = pr->len[pi], n = np + N_NEW;
        memcpy(ref, pr->ids[pi], np * sizeof(int32_t));
        greedy(f, ref, np, lf);
        cs_gpt2_state sf;
        cs_err err;
        /* teacher-forced on fp32's continuation */
        assert_int_equal(cs_gpt2_state_init(&sf, f, MAX_SEQ, MAX_SEQ, NULL, &err), 0);
        assert_int_equal(cs_gpt2_forward(f, &sf, ref, n - 1, lf, 1, &err), 0);
        cs_gpt2_state_free(&sf);
        for (int d = 0; d < 2; d++) {
            const cs_gpt2 *q = qs[d];
            memcpy(got, pr->ids[pi], np * sizeof(int32_t));
            greedy(q, got, np, lq);
            size_t k = 0;
            while (k < N_NEW && got[np + k] == ref[np + k]) k++;
            prefix[d] += k;
            cs_gpt2_state sq;
            assert_int_equal(cs_gpt2_state_init(&sq, q, MAX_SEQ, MAX_SEQ, NULL, &err), 0);
            assert_int_equal(cs_gpt2_forward(q, &sq, ref, n - 1, lq, 1, &err), 0);
            cs_gpt2_state_free(&sq);
            for (size_t t = np - 1; t < n - 1; t++) {
                const float *a = lf + t * V, *b = lq + t * V;
                double md = 0, mx = 0, sd = 0;
                for (size_t i = 0; i < V; i++) {
                    const double dd = fabs((double)a[i] - b[i]);
                    md = fmax(md, dd);
                    sd += dd;
                    mx = fmax(mx, fabs(a[i]));
                }
                st[d].max_rel = fmax(st[d].max_rel, md / mx);
                st[d].mean_rel += sd / (double)V / mx;
                agree[d] += argmax(a, V) == argmax(b, V);
                if (d == 0) total++;
            }
        }
    }
    for (int d = 0; d < 2; d++) {
        st[d].mean_rel /= (double)total;
        st[d].agree = (double)agree[d] / (double)total;
        st[d].prefix = (double)prefix[d] / (double)(pr->n * N_NEW);
        printf("  %-17s %s vs fp32: max rel logits error %.3g (mean %.3g), top-1 agreement %.1f%%, greedy %.1f of %d "
               "tokens before divergence\n",
               name, cs_wdtype_name(qs[d]->wdtype), st[d].max_rel, st[d].mean_rel, 100 * st[d].agree,
               st[d].prefix * N_NEW, N_NEW);
        cs_gpt2_free(qs[d]);
    }
    free(lf);
    free(lq);
    cs_gpt2_free(f);
}

/* An outlier checkpoint against the plain one of the same shape and seed
 * (whose numbers are measured once and kept for the next pair). */
static void check_pair(const char *plain, const char *outl, double err_ratio, double bf16_max_rel) {
    static char last_plain[64];
    static stats p[2];
    if (tu_quick() && strcmp(outl, "small-ln20") != 0) { /* sanitizer builds: one pair, all prompts */
        printf("  %s: skipped in quick mode\n", outl);
        return;
    }
    prompts *pr = malloc(sizeof *pr);
    stats o[2];
    load_prompts(pr);
    if (strcmp(last_plain, plain) != 0) {
        measure(plain, pr, p);
        snprintf(last_plain, sizeof last_plain, "%s", plain);
    }
    measure(outl, pr, o);
    free(pr);
    /* bf16 rounds weights only; the outlier models are more sensitive, so its bound is looser there */
    assert_true(p[0].max_rel <= BF16_MAX_REL && p[0].agree >= BF16_MIN_AGREE);
    assert_true(o[0].max_rel <= bf16_max_rel && o[0].agree >= BF16_MIN_AGREE);
    assert_true(p[1].max_rel <= INT8_MAX_REL && p[1].agree >= INT8_MIN_AGREE);
    if (!(o[1].max_rel <= err_ratio * p[1].max_rel))
        fail_msg("%s int8 max rel error %.3g > %.1f x plain %.3g", outl, o[1].max_rel, err_ratio, p[1].max_rel);
    if (!(o[1].agree >= p[1].agree - AGREE_DROP))
        fail_msg("%s int8 top-1 agreement %.3f < plain %.3f - %.2f", outl, o[1].agree, p[1].agree, AGREE_DROP);
    if (!(o[1].prefix >= p[1].prefix - AGREE_DROP))
        fail_msg("%s int8 greedy prefix %.3f < plain %.3f - %.2f", outl, o[1].prefix, p[1].prefix, AGREE_DROP);
}

/* LayerNorm-gain outliers at 5x (below the fp32 split: smoothing alone),
 * 20x and 60x, MLP hidden-unit outliers at 30x (small shape), and the
 * distilgpt2 shape with 4 channels at 40x. */
static void test_small_ln5(void **state) {
    (void)state;
    check_pair("small", "small-ln5", INT8_ERR_RATIO, BF16_MAX_REL_OUTLIERS);
}

static void test_small_ln20(void **state) {
    (void)state;
    check_pair("small", "small-ln20", INT8_ERR_RATIO, BF16_MAX_REL_OUTLIERS);
}

/* At 60x the network itself is far more sensitive: bf16, which rounds only
 * the weights, has 4.7x its plain error there (measured 0.048 vs 0.010), so
 * int8's logits bound is 4x plain (measured 3.3x); agreement and greedy keep
 * the usual bounds. */
static void test_small_ln60(void **state) {
    (void)state;
    check_pair("small", "small-ln60", 4.0, 6e-2);
}

static void test_small_mlp30(void **state) {
    (void)state;
    check_pair("small", "small-mlp30", INT8_ERR_RATIO, BF16_MAX_REL_OUTLIERS);
}

static void test_distil_ln40(void **state) {
    (void)state;
    check_pair("distil", "distil-ln40", INT8_ERR_RATIO, BF16_MAX_REL_OUTLIERS);
}

/* int8 with smoothing and fp32 outlier rows keeps the engine's guarantee: a
 * row's logits do not depend on the batch around it or the thread count. */
static void test_int8_batch_and_threads(void **state) {
    (void)state;
    cs_gpt2 *m = load("small-ln5", CS_W_I8);
    const size_t V = (size_t)m->cfg.vocab_size;
    size_t n_out = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) n_out += m->layers[l].qkv.n_out + m->layers[l].fc.n_out;
    assert_true(n_out > 0); /* the fp32 rows are in play */
    prompts *pr = malloc(sizeof *pr);
    load_prompts(pr);
    float *a = malloc(2 * V * 4), *b = malloc(2 * V * 4);
    cs_pool *pool;
    cs_err err;
    assert_int_equal(cs_pool_create(&pool, 3, &err), 0);
    cs_gpt2_kv kv[2];
    cs_gpt2_ws ws;
    for (int i = 0; i < 2; i++) assert_int_equal(cs_gpt2_kv_init(&kv[i], m, MAX_SEQ, CS_KV_F32, &err), 0);
    assert_int_equal(cs_gpt2_ws_init(&ws, m, 2 * MAX_SEQ, 2, pool, &err), 0);
    cs_gpt2_seq q[2] = {{.kv = &kv[0], .tokens = pr->ids[1], .n = (int)pr->len[1], .logits = a},
                        {.kv = &kv[1], .tokens = pr->ids[2], .n = (int)pr->len[2], .logits = a + V}};
    assert_int_equal(cs_gpt2_step(m, &ws, q, 2, &err), 0);
    for (int i = 0; i < 2; i++) {
        cs_gpt2_state st;
        assert_int_equal(cs_gpt2_state_init(&st, m, MAX_SEQ, MAX_SEQ, NULL, &err), 0);
        assert_int_equal(cs_gpt2_forward(m, &st, pr->ids[1 + i], pr->len[1 + i], b + i * V, 0, &err), 0);
        cs_gpt2_state_free(&st);
    }
    assert_memory_equal(a, b, 2 * V * 4);
    for (int i = 0; i < 2; i++) cs_gpt2_kv_free(&kv[i]);
    cs_gpt2_ws_free(&ws);
    cs_pool_free(pool);
    free(pr);
    free(a);
    free(b);
    cs_gpt2_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_small_ln5), cmocka_unit_test(test_small_ln20),
                                       cmocka_unit_test(test_small_ln60),
                                       cmocka_unit_test(test_small_mlp30), cmocka_unit_test(test_distil_ln40),
                                       cmocka_unit_test(test_int8_batch_and_threads)};
    if (getenv("CS_TEST_FILTER")) cmocka_set_test_filter(getenv("CS_TEST_FILTER")); /* e.g. "*small*" */
    return cmocka_run_group_tests_name("outliers", tests, NULL, NULL);
}
