/* Sampling filters against transformers' logits processors
 * (tests/data/ref/sampler.json, written by tools/make_reference.py), plus the
 * properties of the draw itself. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/sampler.h"
#include "testutil.h"

static void test_filters_match_transformers(void **state) {
    (void)state;
    json_t *doc = tu_load_json("tests/data/ref/sampler.json");
    assert_non_null(doc);
    const size_t V = (size_t)json_integer_value(json_object_get(doc, "vocab"));
    json_t *scores = json_object_get(doc, "scores"), *cases = json_object_get(doc, "cases");
    assert_true(json_array_size(cases) > 100);
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, V, NULL), 0);
    float *buf = malloc(V * sizeof(float));
    unsigned char *ref_mark = malloc(V);
    int32_t hist[64];
    size_t idx;
    json_t *c;
    size_t set_ok = 0;
    json_array_foreach(cases, idx, c) {
        json_t *sv = json_array_get(scores, (size_t)json_integer_value(json_object_get(c, "scores")));
        for (size_t i = 0; i < V; i++) buf[i] = (float)json_real_value(json_array_get(sv, i));
        json_t *h = json_object_get(c, "history");
        size_t nh = json_array_size(h);
        assert_true(nh <= 64);
        for (size_t i = 0; i < nh; i++) hist[i] = (int32_t)json_integer_value(json_array_get(h, i));
        cs_sample_params p = {
            .do_sample = 1,
            .top_k = (int)json_integer_value(json_object_get(c, "top_k")),
            .top_p = (float)json_number_value(json_object_get(c, "top_p")),
            .temperature = (float)json_number_value(json_object_get(c, "temperature")),
            .repetition_penalty = (float)json_number_value(json_object_get(c, "repetition_penalty")),
        };
        cs_sampler_process(&s, &p, buf, hist, nh);
        /* Exact id set, except that among scores tied exactly at the top-p cut
         * the choice is arbitrary (torch.sort is not stable): there, ids may
         * differ but the kept count and the multiset of kept scores may not. */
        json_t *kept = json_object_get(c, "kept"), *vals = json_object_get(c, "kept_values");
        size_t nref = json_array_size(kept), nk = 0;
        float cut = INFINITY; /* smallest kept score */
        for (size_t i = 0; i < V; i++)
            if (buf[i] != -INFINITY) {
                nk++;
                if (buf[i] < cut) cut = buf[i];
            }
        int same = nk == nref;
        memset(ref_mark, 0, V);
        for (size_t j = 0; same && j < nref; j++) {
            size_t id = (size_t)json_integer_value(json_array_get(kept, j));
            float want = (float)json_real_value(json_array_get(vals, j));
            ref_mark[id] = 1;
            if (buf[id] == -INFINITY) {
                same = fabsf(want - cut) <= 1e-6f * fmaxf(1.0f, fabsf(cut)); /* a tie at the cut */
            } else if (fabsf(buf[id] - want) > 1e-6f * fmaxf(1.0f, fabsf(want))) {
                printf("  case %zu: score of id %zu: %.9g vs %.9g\n", idx, id, buf[id], want);
                same = 0;
            }
        }
        for (size_t i = 0; same && i < V; i++)
            if (buf[i] != -INFINITY && !ref_mark[i]) same = buf[i] == cut; /* ours kept: must be the tie */
        if (!same)
            printf("  case %zu (top_k=%d top_p=%g T=%g rep=%g): kept %zu ids, transformers kept %zu\n", idx, p.top_k,
                   p.top_p, p.temperature, p.repetition_penalty, nk, nref);
        set_ok += same;
    }
    printf("  %zu/%zu cases keep exactly transformers' token set\n", set_ok, json_array_size(cases));
    assert_int_equal(set_ok, json_array_size(cases));
    free(buf);
    free(ref_mark);
    cs_sampler_free(&s);
    json_decref(doc);
}

static void test_greedy_takes_first_argmax(void **state) {
    (void)state;
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, 6, NULL), 0);
    float sc[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.0f};
    cs_sample_params p = {.do_sample = 0, .temperature = 1, .top_k = 50, .top_p = 1, .repetition_penalty = 1};
    assert_int_equal(cs_sampler_pick(&s, &p, sc, NULL, 0, NULL), 1);
    /* The repetition penalty applies to greedy decoding too: 2.0 / 4 < 1.0. */
    float sc2[6] = {0.5f, 2.0f, -1.0f, 1.5f, 1.0f, 0.0f};
    int32_t hist[] = {1, 1, 3};
    p.repetition_penalty = 4.0f;
    assert_int_equal(cs_sampler_pick(&s, &p, sc2, hist, 3, NULL), 4);
    cs_sampler_free(&s);
}

static void test_seeded_draws_reproducible_and_distributed(void **state) {
    (void)state;
    enum { V = 4, N = 40000 };
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, V, NULL), 0);
    const float base[V] = {0.0f, logf(2.0f), logf(3.0f), logf(4.0f)}; /* probabilities 1:2:3:4 */
    cs_sample_params p = {.do_sample = 1, .temperature = 1, .top_k = 0, .top_p = 1, .repetition_penalty = 1};
    cs_rng a, b;
    cs_rng_seed(&a, 42);
    cs_rng_seed(&b, 42);
    int counts[V] = {0};
    for (int i = 0; i < N; i++) {
        float x[V], y[V];
        memcpy(x, base, sizeof x);
        memcpy(y, base, sizeof y);
        int32_t ta = cs_sampler_pick(&s, &p, x, NULL, 0, &a), tb = cs_sampler_pick(&s, &p, y, NULL, 0, &b);
        assert_int_equal(ta, tb);
        assert_true(ta >= 0 && ta < V);
        counts[ta]++;
    }
    for (int i = 0; i < V; i++) {
        double expect = N * (i + 1) / 10.0, sd = sqrt(expect);
        assert_true(fabs(counts[i] - expect) < 6 * sd); /* ~6 sigma: fails only if the draw is biased */
    }
    /* top_k = 1 leaves exactly one candidate whatever the draw. */
    p.top_k = 1;
    for (int i = 0; i < 100; i++) {
        float x[V];
        memcpy(x, base, sizeof x);
        assert_int_equal(cs_sampler_pick(&s, &p, x, NULL, 0, &a), 3);
    }
    cs_sampler_free(&s);
}

/* A temperature so small that logit / T overflows: the draw must tend to greedy
 * (the argmax), not fall apart on inf - inf. Several positive logits would all
 * become +inf without care, and the last of them would be drawn. */
static void test_tiny_temperature_is_greedy(void **state) {
    (void)state;
    enum { V = 5 };
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, V, NULL), 0);
    const float base[V] = {1.0f, 3.0f, -2.0f, 2.5f, 0.5f};
    const float temps[] = {1e-40f, 1e-30f, 1e-6f};
    const float tps[] = {1.0f, 0.9f};
    cs_rng r;
    cs_rng_seed(&r, 7);
    for (size_t t = 0; t < sizeof temps / sizeof *temps; t++)
        for (size_t q = 0; q < 2; q++) {
            cs_sample_params p = {.do_sample = 1, .temperature = temps[t], .top_k = 0, .top_p = tps[q],
                                  .repetition_penalty = 1};
            for (int i = 0; i < 50; i++) {
                float x[V];
                memcpy(x, base, sizeof x);
                assert_int_equal(cs_sampler_pick(&s, &p, x, NULL, 0, &r), 1);
            }
        }
    cs_sampler_free(&s);
}

/* The fast filters (heap top-k, radix-sorted top-p) against plain
 * sort-everything versions on a GPT-2-sized vocabulary with many ties and
 * both zero signs. */
static int cmp_desc(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}
static const float *g_sc;
static int cmp_asc_id(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_sc[x] != g_sc[y]) return g_sc[x] < g_sc[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static void test_filters_vs_sorting(void **state) {
    (void)state;
    enum { V = 50257 };
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, V, NULL), 0);
    float *x = malloc(V * sizeof *x), *ref = malloc(V * sizeof *ref), *tmp = malloc(V * sizeof *tmp);
    int32_t *id = malloc(V * sizeof *id);
    uint64_t r = 12345;
    const int ks[] = {1, 2, 50, 640, V - 1};
    const float ps[] = {0.1f, 0.5f, 0.9f, 0.999f};
    for (int trial = 0; trial < 6; trial++) {
        for (size_t i = 0; i < V; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            const int q = (int)((r >> 33) % (trial < 3 ? 64 : 100000)); /* few distinct values: ties */
            x[i] = (float)(q - 32) * (trial % 2 ? 0.25f : 0.001f);
            if (q == 32 && (r >> 20) % 2) x[i] = -0.0f;
        }
        x[(r >> 7) % V] = 9.0f; /* a clear maximum for the peaked cases */
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
            memcpy(tmp, x, V * sizeof *x);
            qsort(tmp, V, sizeof *tmp, cmp_desc);
            const float kth = tmp[ks[ki] - 1];
            memcpy(ref, x, V * sizeof *x);
            cs_sampler_top_k(&s, ref, ks[ki]);
            for (size_t i = 0; i < V; i++) assert_true((ref[i] != -INFINITY) == (x[i] >= kth));
        }
        for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
            /* reference: sort all ids ascending by (score, id), cut the cumulative mass */
            float mx = -INFINITY, sum = 0;
            for (size_t i = 0; i < V; i++) id[i] = (int32_t)i, mx = x[i] > mx ? x[i] : mx;
            g_sc = x;
            qsort(id, V, sizeof *id, cmp_asc_id);
            for (size_t i = 0; i < V; i++) sum += (tmp[i] = expf(x[id[i]] - mx));
            const float thresh = (float)(1.0 - (double)ps[pi]);
            double cum = 0;
            size_t cut = 0;
            for (; cut + 1 < V; cut++) {
                cum += (double)(tmp[cut] / sum);
                if (!((float)cum <= thresh)) break;
            }
            memcpy(ref, x, V * sizeof *x);
            cs_sampler_top_p(&s, ref, ps[pi]);
            for (size_t j = 0; j < V; j++) assert_true((ref[id[j]] == -INFINITY) == (j < cut));
        }
    }
    free(x);
    free(ref);
    free(tmp);
    free(id);
    cs_sampler_free(&s);
    /* -0 and +0 are the same score: ties go by id, so the lowest ids go first. */
    assert_int_equal(cs_sampler_init(&s, 8, NULL), 0);
    float z[8] = {0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f};
    cs_sampler_top_p(&s, z, 0.5f);
    for (int i = 0; i < 8; i++) assert_true((z[i] == -INFINITY) == (i < 4));
    cs_sampler_free(&s);
}

/* The reference draw, written from the contract in sampler.h: over the ids
 * the processors left finite, in id order, weights exp(score - max) in double,
 * one uniform times their total, walked until it is passed. */
static int32_t ref_draw(const float *sc, size_t V, cs_rng *r) {
    float mx = -INFINITY;
    size_t best = 0;
    for (size_t i = 0; i < V; i++)
        if (sc[i] > mx) mx = sc[i], best = i;
    double total = 0;
    for (size_t i = 0; i < V; i++)
        if (sc[i] != -INFINITY) total += exp((double)(sc[i] - mx));
    const double u = cs_rng_uniform(r) * total;
    double acc = 0;
    size_t last = best;
    for (size_t i = 0; i < V; i++) {
        if (sc[i] == -INFINITY) continue;
        acc += exp((double)(sc[i] - mx));
        last = i;
        if (u < acc) return (int32_t)i;
    }
    return (int32_t)last;
}

/* cs_sampler_pick with top-k finds its candidates without dividing and
 * masking the vocabulary; it must draw exactly what the processors in turn
 * and the draw above give, for the same generator: scores packed a few ulps
 * apart (a temperature above 1 maps neighbours below the k-th onto its
 * quotient, and they survive), both zero signs, -inf scores and overflowing
 * temperatures (the paths it hands back), with top-p and a repetition penalty. */
static void test_top_k_pick_matches_processors(void **state) {
    (void)state;
    enum { V = 50257, TRIALS = 4 * 7 * 6 * 3 };
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, V, NULL), 0);
    float *x = malloc(V * sizeof *x), *a = malloc(V * sizeof *a), *b = malloc(V * sizeof *b);
    const float temps[] = {1.0f, 0.7f, 3.99f, 37.5f, 1e-3f, 1e-38f, 100.0f};
    const int ks[] = {1, 2, 50, 640, 3000, V - 1};
    const float tps[] = {1.0f, 0.9f, 0.5f};
    const int32_t hist[] = {3, 17, 17, 50000, 4};
    uint64_t r = 99;
    int differ = 0, ties_seen = 0, made_ties = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        const float t = temps[trial % 7]; /* every combination once */
        const int k = ks[(trial / 7) % 6];
        const float tp = tps[(trial / 42) % 3];
        const int shape = trial / 126;
        for (size_t i = 0; i < V; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            const uint32_t q = (uint32_t)(r >> 33);
            if (shape == 0) { /* a cluster of scores a few ulps apart just below 8: over 3.99 the quotients
                                 are just above 2, where a float's step is half of x's own step / 3.99 */
                x[i] = 8.0f;
                x[i] = nextafterf(x[i], 0.0f) - (float)(q % 2000) * 0x1p-21f; /* q + 1 steps of 2^-21 below 8 */
                if (q % 7 == 0) x[i] = (float)(q % 1000) * -0.01f;
            } else if (shape == 1) { /* logits-like spread, both zero signs */
                x[i] = ((float)(q % 200000) - 150000.0f) * 1e-4f;
                if (q % 97 == 0) x[i] = (q & 1) ? -0.0f : 0.0f;
            } else if (shape == 2) { /* few distinct values */
                x[i] = (float)(q % 9) - 4.0f;
            } else { /* some -inf (already filtered) */
                x[i] = ((float)(q % 5000)) * 1e-3f;
                if (q % 5 == 0) x[i] = -INFINITY;
            }
        }
        if (trial % 11 == 0) x[r % V] = 3e38f; /* overflows / t for t < 1 */
        const cs_sample_params p = {.do_sample = 1, .temperature = t, .top_k = k, .top_p = tp,
                                    .repetition_penalty = trial % 2 ? 1.3f : 1.0f};
        memcpy(a, x, V * sizeof *x);
        memcpy(b, x, V * sizeof *x);
        cs_rng ra, rb;
        cs_rng_seed(&ra, (uint64_t)trial);
        cs_rng_seed(&rb, (uint64_t)trial);
        const int32_t got = cs_sampler_pick(&s, &p, a, hist, 5, &ra);
        cs_sampler_process(&s, &p, b, hist, 5);
        size_t kept = 0;
        for (size_t i = 0; i < V; i++) kept += b[i] != -INFINITY;
        ties_seen += tp == 1.0f && kept > (size_t)k;
        if (t != 1.0f && tp == 1.0f) { /* more kept than top-k of the undivided scores: the division made ties */
            memcpy(a, x, V * sizeof *x);
            cs_sampler_repetition_penalty(&s, a, hist, 5, p.repetition_penalty);
            cs_sampler_top_k(&s, a, k);
            size_t kept_raw = 0;
            for (size_t i = 0; i < V; i++) kept_raw += a[i] != -INFINITY;
            made_ties += kept > kept_raw;
            memcpy(a, x, V * sizeof *x);
        }
        const int32_t want = ref_draw(b, V, &rb);
        if (got != want) differ++;
        assert_int_equal(got, want);
        assert_true(cs_rng_next(&ra) == cs_rng_next(&rb)); /* one uniform each */
    }
    print_message("top-k picks: %d trials, %d differ, %d kept ties, %d made by the division\n", TRIALS, differ,
                  ties_seen, made_ties);
    assert_int_equal(differ, 0);
    assert_true(ties_seen > 10); /* the cases meant to keep more than k did */
    assert_true(made_ties > 0);  /* and some only after the division (the inputs are fixed) */
    free(x);
    free(a);
    free(b);
    cs_sampler_free(&s);
}

/* The k-th largest, minimum and maximum against a sort, at lengths around
 * the AVX-512 pass's 128 groups and 16 lanes, with the extremes in the tail
 * (where the full registers stop), -inf scores, ties and both zero signs. */
static void check_kth(cs_sampler *s) {
    float *x = malloc(1100 * sizeof *x), *srt = malloc(1100 * sizeof *srt);
    const size_t ns[] = {1, 17, 255, 256, 257, 271, 383, 384, 1000, 1001, 1100};
    const int ks[] = {1, 2, 3, 50, 127, 128, 129, 200};
    uint64_t r = 7;
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
        for (int shape = 0; shape < 4; shape++) {
            const size_t n = ns[ni];
            for (size_t i = 0; i < n; i++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                const uint32_t q = (uint32_t)(r >> 33);
                x[i] = shape == 1 ? (float)(q % 5) - 2.0f : ((float)(q % 100000) - 50000.0f) * 1e-3f;
                if (shape == 2 && q % 3 == 0) x[i] = -INFINITY;
                if (shape == 3 && q % 11 == 0) x[i] = q & 1 ? -0.0f : 0.0f;
            }
            if (shape != 1) { /* the largest and smallest last */
                x[n - 1] = 1000.0f;
                if (n > 1) x[n - 2] = -1000.0f;
                if (n > 2) x[n - 3] = 999.0f;
            }
            memcpy(srt, x, n * sizeof *x);
            qsort(srt, n, sizeof *srt, cmp_desc);
            for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
                if ((size_t)ks[ki] > n) continue;
                float mn = NAN, mx = NAN;
                const float kth = cs_sampler_kth(s, x, n, ks[ki], &mn, &mx);
                if (kth != srt[ks[ki] - 1] || mn != srt[n - 1] || mx != srt[0])
                    fail_msg("n %zu shape %d k %d: kth %g min %g max %g, sorted %g %g %g", n, shape, ks[ki], kth, mn, mx,
                             srt[ks[ki] - 1], srt[n - 1], srt[0]);
            }
        }
    free(x);
    free(srt);
}

static void test_kth_largest_min_max(void **state) {
    (void)state;
    cs_sampler s;
    assert_int_equal(cs_sampler_init(&s, 1100, NULL), 0);
    check_kth(&s);
    cs_sampler_simd(0);
    check_kth(&s);
    cs_sampler_simd(1);
    cs_sampler_free(&s);
}

/* The top-k tests again with the SSE scan where the AVX-512 one is the
 * default (the same answers are the contract; on a CPU without AVX-512 this
 * repeats the same path). */
static void test_top_k_with_sse_scan(void **state) {
    cs_sampler_simd(0);
    test_filters_vs_sorting(state);
    test_top_k_pick_matches_processors(state);
    cs_sampler_simd(1);
}

static void test_params_check(void **state) {
    (void)state;
    cs_err e;
    cs_sample_params ok = {.do_sample = 1, .temperature = 1, .top_k = 0, .top_p = 1, .repetition_penalty = 1};
    assert_int_equal(cs_sample_params_check(&ok, &e), 0);
    cs_sample_params p = ok;
    p.temperature = 0;
    assert_int_equal(cs_sample_params_check(&p, &e), -1);
    assert_non_null(strstr(e.msg, "temperature"));
    p = ok;
    p.top_p = 0;
    assert_int_equal(cs_sample_params_check(&p, &e), -1);
    assert_non_null(strstr(e.msg, "top_p"));
    p = ok;
    p.top_p = 1.5f;
    assert_int_equal(cs_sample_params_check(&p, &e), -1);
    p = ok;
    p.top_k = -1;
    assert_int_equal(cs_sample_params_check(&p, &e), -1);
    assert_non_null(strstr(e.msg, "top_k"));
    p = ok;
    p.repetition_penalty = NAN;
    assert_int_equal(cs_sample_params_check(&p, &e), -1);
    assert_non_null(strstr(e.msg, "repetition_penalty"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filters_match_transformers),
        cmocka_unit_test(test_greedy_takes_first_argmax),
        cmocka_unit_test(test_seeded_draws_reproducible_and_distributed),
        cmocka_unit_test(test_params_check),
        cmocka_unit_test(test_tiny_temperature_is_greedy),
        cmocka_unit_test(test_filters_vs_sorting),
        cmocka_unit_test(test_top_k_pick_matches_processors),
        cmocka_unit_test(test_top_k_with_sse_scan),
        cmocka_unit_test(test_kth_largest_min_max),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
