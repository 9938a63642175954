/* GPT-2 forward pass and greedy generation against Hugging Face transformers.
 *
 * For every synthetic checkpoint in tests/data/ref/models.txt (built under
 * build/models by `make models`), tests/data/ref/NAME holds transformers'
 * logits and greedy continuations (tools/make_reference.py).
 *
 * Metric: max |ours - ref| / max |ref| over the compared logits; bound 1e-4.
 * Greedy: token-for-token identical to generate(do_sample=False). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <unistd.h>

#include "engine/generate.h"
#include "engine/gpt2.h"
#include "testutil.h"

#define LOGIT_REL_BOUND 1e-4

typedef struct ref_model {
    char name[64];
    cs_gpt2 *m;
    json_t *meta;
    float *last; /* (n_full, V) */
    float *pos;  /* (T, K) */
} ref_model;

static int n_models;
static ref_model models[16];

static int32_t *ids_of(json_t *arr, size_t *n) {
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

static int setup(void **state) {
    (void)state;
    FILE *f = fopen("tests/data/ref/models.txt", "r");
    assert_non_null(f);
    char line[512];
    while (fgets(line, sizeof line, f) && n_models < 16) {
        if (line[0] == '#' || line[0] == '\n') continue;
        ref_model *r = &models[n_models];
        sscanf(line, "%63s", r->name);
        char path[512];
        /* Checkpoints without a transformers reference (the outlier set, compared
         * with fp32 in test_outliers.c) are not for this test. */
        snprintf(path, sizeof path, "tests/data/ref/%s/meta.json", r->name);
        if (access(path, F_OK) != 0) {
            printf("  %-16s no transformers reference in tests/data/ref, skipped\n", r->name);
            continue;
        }
        cs_err err = {{0}};
        cs_gpt2_config cfg;
        snprintf(path, sizeof path, "build/models/%s/config.json", r->name);
        if (cs_gpt2_config_load(&cfg, path, &err)) fail_msg("%s", err.msg);
        snprintf(path, sizeof path, "build/models/%s/model.safetensors", r->name);
        cs_gpt2_opts o = {.no_cache = 1};
        if (cs_gpt2_load(&r->m, &cfg, path, &o, &err)) fail_msg("%s", err.msg);
        snprintf(path, sizeof path, "tests/data/ref/%s/meta.json", r->name);
        r->meta = tu_load_json(path);
        assert_non_null(r->meta);
        size_t len;
        snprintf(path, sizeof path, "tests/data/ref/%s/logits_last.f32", r->name);
        r->last = tu_read_file(path, &len);
        assert_non_null(r->last);
        assert_int_equal(len, json_integer_value(json_object_get(r->meta, "n_full")) * cfg.vocab_size * 4);
        snprintf(path, sizeof path, "tests/data/ref/%s/logits_pos.f32", r->name);
        r->pos = tu_read_file(path, &len);
        assert_non_null(r->pos);
        n_models++;
    }
    fclose(f);
    assert_true(n_models >= 4);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < n_models; i++) {
        cs_gpt2_free(models[i].m);
        json_decref(models[i].meta);
        free(models[i].last);
        free(models[i].pos);
    }
    return 0;
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return md / mb;
}

/* Last-position logits for the full-vocabulary reference prompts, three ways:
 * whole prompt in one chunk, in chunks of 3, and token by token through the KV cache. */
static void test_logits_last(void **state) {
    (void)state;
    for (int mi = 0; mi < n_models; mi++) {
        ref_model *r = &models[mi];
        const size_t V = (size_t)r->m->cfg.vocab_size;
        float *logits = malloc(V * sizeof(float));
        json_t *prompts = json_object_get(r->meta, "prompts");
        int n_full = (int)json_integer_value(json_object_get(r->meta, "n_full"));
        double worst = 0;
        for (int pi = 0; pi < n_full; pi++) {
            size_t n;
            int32_t *ids = ids_of(json_array_get(prompts, (size_t)pi), &n);
            const int chunks[] = {64, 3, 1};
            for (int ci = 0; ci < 3; ci++) {
                cs_gpt2_state st;
                cs_err err;
                assert_int_equal(cs_gpt2_state_init(&st, r->m, 0, chunks[ci], NULL, &err), 0);
                if (chunks[ci] == 1) {
                    for (size_t t = 0; t < n; t++)
                        assert_int_equal(cs_gpt2_forward(r->m, &st, &ids[t], 1, logits, 0, &err), 0);
                } else {
                    assert_int_equal(cs_gpt2_forward(r->m, &st, ids, n, logits, 0, &err), 0);
                }
                assert_int_equal(st.n_past, (int)n);
                double e = rel_err(logits, r->last + (size_t)pi * V, V);
                if (e > worst) worst = e;
                cs_gpt2_state_free(&st);
            }
            free(ids);
        }
        printf("  %-10s last-position logits: max rel error %.3g (bound %.0e)\n", r->name, worst, LOGIT_REL_BOUND);
        assert_true(worst <= LOGIT_REL_BOUND);
        free(logits);
    }
}

/* Logits at every position of one prompt (all_logits), at sampled vocab ids. */
static void test_logits_all_positions(void **state) {
    (void)state;
    for (int mi = 0; mi < n_models; mi++) {
        ref_model *r = &models[mi];
        const size_t V = (size_t)r->m->cfg.vocab_size;
        size_t n;
        int pp = (int)json_integer_value(json_object_get(r->meta, "pos_prompt"));
        int32_t *ids = ids_of(json_array_get(json_object_get(r->meta, "prompts"), (size_t)pp), &n);
        json_t *vidx = json_object_get(r->meta, "pos_vocab_idx");
        const size_t K = json_array_size(vidx);
        float *all = malloc(n * V * sizeof(float)), *mine = malloc(n * K * sizeof(float));
        cs_gpt2_state st;
        cs_err err;
        assert_int_equal(cs_gpt2_state_init(&st, r->m, 0, 5, NULL, &err), 0);
        assert_int_equal(cs_gpt2_forward(r->m, &st, ids, n, all, 1, &err), 0);
        for (size_t t = 0; t < n; t++)
            for (size_t k = 0; k < K; k++)
                mine[t * K + k] = all[t * V + (size_t)json_integer_value(json_array_get(vidx, k))];
        double e = rel_err(mine, r->pos, n * K);
        printf("  %-10s all-position logits (%zu x %zu): max rel error %.3g\n", r->name, n, K, e);
        assert_true(e <= LOGIT_REL_BOUND);
        cs_gpt2_state_free(&st);
        free(all);
        free(mine);
        free(ids);
    }
}

static void test_greedy(void **state) {
    (void)state;
    for (int mi = 0; mi < n_models; mi++) {
        ref_model *r = &models[mi];
        json_t *prompts = json_object_get(r->meta, "prompts"), *greedy = json_object_get(r->meta, "greedy");
        int n_new = (int)json_integer_value(json_object_get(r->meta, "greedy_new_tokens"));
        size_t n_prompts = json_array_size(prompts);
        if (tu_quick() && r->m->cfg.n_embd > 256) n_prompts = 2;
        cs_gen g;
        cs_err err;
        assert_int_equal(cs_gen_init(&g, r->m, 0, &err), 0);
        cs_gen_params p;
        cs_gen_params_builtin(&p);
        p.max_new_tokens = n_new;
        p.eos_token_id = 50256;
        p.ignore_eos = 1;
        size_t total = 0, same = 0;
        for (size_t pi = 0; pi < n_prompts; pi++) {
            size_t n, ne;
            int32_t *ids = ids_of(json_array_get(prompts, pi), &n);
            int32_t *exp = ids_of(json_array_get(greedy, pi), &ne);
            assert_int_equal(ne, (size_t)n_new);
            cs_gen_result res;
            if (cs_gen_run(&g, &p, ids, n, NULL, NULL, NULL, &res, &err)) fail_msg("%s", err.msg);
            assert_int_equal(res.n_tokens, (size_t)n_new);
            size_t k = 0;
            while (k < ne && res.tokens[k] == exp[k]) k++;
            if (k < ne) printf("  %s prompt %zu: first difference at new token %zu: %d vs %d\n", r->name, pi, k,
                               res.tokens[k], exp[k]);
            same += k == ne;
            total++;
            free(ids);
            free(exp);
        }
        printf("  %-10s greedy: %zu/%zu prompts identical over %d new tokens\n", r->name, same, total, n_new);
        assert_int_equal(same, total);
        cs_gen_free(&g);
    }
}

static void test_forward_rejects_bad_input(void **state) {
    (void)state;
    ref_model *r = &models[0];
    cs_gpt2_state st;
    cs_err err = {{0}};
    assert_int_equal(cs_gpt2_state_init(&st, r->m, 8, 4, NULL, &err), 0);
    float *logits = malloc((size_t)r->m->cfg.vocab_size * sizeof(float));
    int32_t bad[2] = {1, r->m->cfg.vocab_size};
    assert_int_equal(cs_gpt2_forward(r->m, &st, bad, 2, logits, 0, &err), -1);
    assert_non_null(strstr(err.msg, "outside vocabulary"));
    assert_int_equal(st.n_past, 0);
    int32_t neg = -1;
    assert_int_equal(cs_gpt2_forward(r->m, &st, &neg, 1, logits, 0, &err), -1);
    int32_t many[9] = {0};
    assert_int_equal(cs_gpt2_forward(r->m, &st, many, 9, logits, 0, &err), -1);
    assert_non_null(strstr(err.msg, "context length"));
    assert_int_equal(cs_gpt2_forward(r->m, &st, many, 8, logits, 0, &err), 0);
    assert_int_equal(cs_gpt2_forward(r->m, &st, many, 1, logits, 0, &err), -1);
    assert_int_equal(cs_gpt2_forward(r->m, &st, many, 0, logits, 0, &err), -1);
    free(logits);
    cs_gpt2_state_free(&st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_last),
        cmocka_unit_test(test_logits_all_positions),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_forward_rejects_bad_input),
    };
    return cmocka_run_group_tests_name("gpt2", tests, setup, teardown);
}
