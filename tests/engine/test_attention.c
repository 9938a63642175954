/* Blocked causal attention (attend_causal) against the per-query kernel
 * (attend), bit for bit, for every kernel table the CPU has, over an fp32
 * cache, (attend_causal_bf16 against attend_bf16) over a bf16 one and
 * (attend_causal_i8 against attend_i8) over an int8 one: the engine's
 * promise that a token's logits do not depend on how its prompt was chunked or
 * batched rests on this. Shapes cover head sizes with and without each
 * table's fast path, vector tails, ragged query blocks and the causal
 * triangle at every offset. Tables the CPU lacks are reported and skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"

#define TU_RNG_SEED 0x9e3779b97f4a7c15ull /* this test's own input stream */
#include "testutil.h"
#define frand tu_frand
#define fill tu_fill

#define SENTINEL 12345.678f

/* One shape: nq queries at positions p0 .. p0 + nq - 1 over p0 + nq cached
 * rows (row stride ld; cache dtype dt), q rows ldq apart, outputs ldo
 * apart. Returns the number of mismatching floats (and names the first). */
static size_t check_shape_as(const cs_kern *k, size_t hd, size_t p0, size_t nq, size_t ld, size_t ldq, size_t ldo,
                             float qscale, cs_kvdtype dt) {
    const size_t npos = p0 + nq;
    float *q = malloc(nq * ldq * sizeof(float)), *kc = malloc(npos * ld * sizeof(float));
    float *vc = malloc(npos * ld * sizeof(float)), *att = malloc(nq * npos * sizeof(float));
    float *o0 = malloc(nq * ldo * sizeof(float)), *o1 = malloc(nq * ldo * sizeof(float));
    assert_non_null(q);
    assert_non_null(kc);
    assert_non_null(vc);
    assert_non_null(att);
    assert_non_null(o0);
    assert_non_null(o1);
    fill(q, nq * ldq, qscale);
    fill(kc, npos * ld, 1.0f);
    fill(vc, npos * ld, 2.0f);
    for (size_t i = 0; i < nq * ldo; i++) o0[i] = o1[i] = SENTINEL;
    const float scale = 1.0f / sqrtf((float)hd);
    tu_paged pg;
    if (dt == CS_KV_I8) tu_paged_make_i8(&pg, kc, vc, npos, ld, hd);
    else tu_paged_make(&pg, kc, vc, npos, ld, dt == CS_KV_BF16 ? 2 : 4);
    for (size_t i = 0; i < nq; i++) /* the per-query path, as the forward pass runs decode rows */
        (dt == CS_KV_I8     ? k->attend_i8
         : dt == CS_KV_BF16 ? k->attend_bf16
                            : k->attend)(q + i * ldq, &pg.h, p0 + i + 1, hd, scale, att, o0 + i * ldo);
    for (size_t i = 0; i < nq * npos; i++) att[i] = NAN; /* the blocked kernel must not read stale scores */
    (dt == CS_KV_I8     ? k->attend_causal_i8
     : dt == CS_KV_BF16 ? k->attend_causal_bf16
                        : k->attend_causal)(q, ldq, &pg.h, p0, nq, hd, scale, att, o1, ldo);
    tu_paged_free(&pg);
    size_t bad = 0;
    for (size_t i = 0; i < nq; i++)
        for (size_t e = 0; e < ldo; e++) {
            const float a = o0[i * ldo + e], b = o1[i * ldo + e];
            if (memcmp(&a, &b, sizeof a) != 0) {
                if (!bad)
                    print_error("%s %s hd=%zu p0=%zu nq=%zu ld=%zu: query %zu elem %zu: %.9g (attend) vs %.9g\n",
                                k->name, cs_kvdtype_name(dt), hd, p0, nq, ld, i, e, a, b);
                bad++;
            }
        }
    free(q); free(kc); free(vc); free(att); free(o0); free(o1);
    return bad;
}

/* Every cache dtype. */
static size_t check_shape(const cs_kern *k, size_t hd, size_t p0, size_t nq, size_t ld, size_t ldq, size_t ldo,
                          float qscale) {
    return check_shape_as(k, hd, p0, nq, ld, ldq, ldo, qscale, CS_KV_F32) +
           check_shape_as(k, hd, p0, nq, ld, ldq, ldo, qscale, CS_KV_BF16) +
           check_shape_as(k, hd, p0, nq, ld, ldq, ldo, qscale, CS_KV_I8);
}

static const cs_kern *table(int i) { return cs_kern_for((cs_isa)i); }

static void test_blocked_matches_per_query(void **state) {
    (void)state;
    /* head sizes: scalar tails (1, 3, 12, 20), the AVX2 16/8/scalar split (8,
     * 24, 72, 130), AVX-512's per-query fast forms (16 .. 128 step 16 but 112)
     * and its generic form (112, 72) */
    const size_t hds[] = {1, 3, 8, 12, 16, 20, 24, 32, 48, 64, 72, 80, 96, 112, 128, 130};
    const size_t p0s[] = {0, 1, 2, 7, 16, 33};
    const size_t nqs[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17};
    size_t checked = 0;
    for (int ti = 0; ti < CS_ISA_COUNT; ti++) {
        const cs_kern *k = table(ti);
        if (!k) {
            printf("  (kernel table %d: not supported by this CPU, skipped)\n", ti);
            continue;
        }
        assert_non_null(k->attend_causal);
        assert_non_null(k->attend_causal_bf16);
        assert_non_null(k->attend_causal_i8);
        size_t bad = 0;
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (size_t pi = 0; pi < sizeof p0s / sizeof *p0s; pi++)
                for (size_t ni = 0; ni < sizeof nqs / sizeof *nqs; ni++) {
                    const size_t hd = hds[hi], p0 = p0s[pi], nq = nqs[ni];
                    /* packed heads (ld = 3 * hd + 5, odd), and a qkv-like layout */
                    bad += check_shape(k, hd, p0, nq, 3 * hd + 5, 3 * hd + 1, hd + 3, 1.0f);
                    bad += check_shape(k, hd, p0, nq, 4 * hd, 12 * hd, 4 * hd, 4.0f);
                    checked += 6; /* each check_shape: fp32, bf16 and int8 caches */
                }
        if (bad) fail_msg("%s: %zu output floats differ from attend", k->name, bad);
    }
    printf("  %zu shapes checked bitwise\n", checked);
}

/* Long contexts (the fast paths' key loops run many full blocks) and peaked
 * softmaxes (large scores: most probabilities underflow to 0). */
static void test_long_and_peaked(void **state) {
    (void)state;
    for (int ti = 0; ti < CS_ISA_COUNT; ti++) {
        const cs_kern *k = table(ti);
        if (!k) continue;
        size_t bad = 0;
        bad += check_shape(k, 64, 500, 37, 768, 2304, 768, 1.0f);
        bad += check_shape(k, 64, 0, 64, 768, 2304, 768, 30.0f);
        bad += check_shape(k, 128, 250, 19, 1600, 4800, 1600, 8.0f);
        bad += check_shape(k, 80, 100, 16, 1280, 3840, 1280, 1.0f);
        if (bad) fail_msg("%s: %zu output floats differ from attend", k->name, bad);
    }
}

/* The generic form is attend per query: the reference for tables without a
 * blocked form. */
static void test_generic_reference(void **state) {
    (void)state;
    const size_t hd = 24, p0 = 5, nq = 6, ld = 50;
    float q[6 * 24], kc[11 * 50], vc[11 * 50], att[6 * 11], o0[6 * 24], o1[6 * 24];
    fill(q, sizeof q / sizeof *q, 1.0f);
    fill(kc, sizeof kc / sizeof *kc, 1.0f);
    fill(vc, sizeof vc / sizeof *vc, 1.0f);
    tu_paged pg;
    tu_paged_make(&pg, kc, vc, p0 + nq, ld, 4);
    for (size_t i = 0; i < nq; i++) cs_kern_scalar.attend(q + i * hd, &pg.h, p0 + i + 1, hd, 0.5f, att, o0 + i * hd);
    cs_attend_causal_generic(&cs_kern_scalar, q, hd, &pg.h, p0, nq, hd, 0.5f, att, o1, hd);
    tu_paged_free(&pg);
    assert_memory_equal(o0, o1, sizeof o0);
}

/* Paged attention follows the block table: the same keys and values in one
 * contiguous block of rows and in blocks scattered (reversed) in memory give
 * the same bits. And over a bf16 cache, every table's attend_bf16 gives the
 * bits of its fp32 attend over the rounded values (widening is exact), and
 * the rounding's effect on the output stays within bf16's relative step. */
static void test_paged_and_bf16(void **state) {
    (void)state;
    const size_t hds[] = {16, 24, 64, 72, 128}, ns[] = {1, 15, 16, 17, 33, 100};
    for (int ti = 0; ti < CS_ISA_COUNT; ti++) {
        const cs_kern *k = table(ti);
        if (!k) continue;
        assert_non_null(k->attend_bf16);
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                const size_t hd = hds[hi], n = ns[ni], ld = 2 * hd + 3;
                float *q = malloc(hd * 4), *kc = malloc(n * ld * 4), *vc = malloc(n * ld * 4);
                float *kr = malloc(n * ld * 4), *vr = malloc(n * ld * 4), *att = malloc(n * 4);
                float o_ref[128], o_bf[128], o_rnd[128], o_one[128];
                fill(q, hd, 2.0f);
                fill(kc, n * ld, 1.0f);
                fill(vc, n * ld, 2.0f);
                for (size_t i = 0; i < n * ld; i++) {
                    kr[i] = cs_f32_from_bf16(cs_bf16_from_f32(kc[i]));
                    vr[i] = cs_f32_from_bf16(cs_bf16_from_f32(vc[i]));
                }
                tu_paged pf, pb, pr;
                tu_paged_make(&pf, kc, vc, n, ld, 4);
                tu_paged_make(&pb, kc, vc, n, ld, 2);
                tu_paged_make(&pr, kr, vr, n, ld, 4);
                k->attend(q, &pf.h, n, hd, 0.125f, att, o_ref);
                k->attend_bf16(q, &pb.h, n, hd, 0.125f, att, o_bf);
                k->attend(q, &pr.h, n, hd, 0.125f, att, o_rnd);
                if (memcmp(o_bf, o_rnd, hd * 4))
                    fail_msg("%s attend_bf16 hd=%zu n=%zu: differs from attend over the rounded cache", k->name, hd, n);
                /* the same rows contiguous: one allocation, blocks in order */
                float *cont = malloc(2 * ((n + CS_KV_BLOCK - 1) / CS_KV_BLOCK) * CS_KV_BLOCK * ld * 4);
                const void *tab[16];
                const size_t nb = (n + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
                for (size_t b = 0; b < nb; b++) {
                    tab[b] = cont + b * 2 * CS_KV_BLOCK * ld;
                    for (size_t r = 0; r < CS_KV_BLOCK && b * CS_KV_BLOCK + r < n; r++) {
                        memcpy((float *)tab[b] + r * ld, kc + (b * CS_KV_BLOCK + r) * ld, ld * 4);
                        memcpy((float *)tab[b] + (CS_KV_BLOCK + r) * ld, vc + (b * CS_KV_BLOCK + r) * ld, ld * 4);
                    }
                }
                cs_kvhead ho = {.blk = tab, .koff = 0, .voff = CS_KV_BLOCK * ld, .ld = ld};
                k->attend(q, &ho, n, hd, 0.125f, att, o_one);
                if (memcmp(o_one, o_ref, hd * 4)) fail_msg("%s attend hd=%zu n=%zu: depends on block placement", k->name, hd, n);
                float vmax = 0, err = 0;
                for (size_t e = 0; e < hd; e++) {
                    vmax = fmaxf(vmax, fabsf(o_ref[e]));
                    err = fmaxf(err, fabsf(o_bf[e] - o_ref[e]));
                }
                /* |v| <= 2, scores within +-0.125 * 2 * hd: bf16's 2^-8 relative step on q.k and v */
                if (err > 0.02f * (vmax > 0.05f ? vmax : 0.05f))
                    fail_msg("%s attend_bf16 hd=%zu n=%zu: error %g vs max %g", k->name, hd, n, err, vmax);
                tu_paged_free(&pf);
                tu_paged_free(&pb);
                tu_paged_free(&pr);
                free(cont); free(q); free(kc); free(vc); free(kr); free(vr); free(att);
            }
    }
}

/* int8 cache (kernels.h): every table's dot_i8 / axpy_i8 give the bits of its
 * dot / axpy over the widened row, its attend_i8 those of
 * cs_attend_i8_generic over them, and the output stays within the bound the
 * quantization implies: a key row quantized with step s_k moves its score by
 * at most d_j = scale * sum|q| * s_k / 2, so each probability by a factor
 * within e^(+-2 max d), and a value row with step s_v moves by s_v / 2:
 *   |out - out_fp32| <= (e^(2 max d) - 1) * max|v| + max s_v / 2 (+ rounding).
 * Rows include adversarial ones: a single outlier channel 100x the rest
 * (the others then keep under 2 bits), all-zero rows, and tiny magnitudes. */
static void test_int8_cache(void **state) {
    (void)state;
    const size_t hds[] = {8, 16, 24, 64, 72, 128}, ns[] = {1, 5, 16, 17, 64, 100};
    size_t cases = 0;
    for (int ti = 0; ti < CS_ISA_COUNT; ti++) {
        const cs_kern *k = table(ti);
        if (!k) continue;
        assert_non_null(k->attend_i8);
        assert_non_null(k->dot_i8);
        assert_non_null(k->axpy_i8);
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
                for (int kind = 0; kind < 3; kind++) {
                    const size_t hd = hds[hi], n = ns[ni], ld = hd + 3;
                    float *q = malloc(hd * 4), *kc = malloc(n * ld * 4), *vc = malloc(n * ld * 4), *att = malloc(n * 4);
                    float o_ref[128], o_i8[128], o_gen[128];
                    fill(q, hd, 2.0f);
                    fill(kc, n * ld, 1.0f);
                    fill(vc, n * ld, 2.0f);
                    for (size_t j = 0; j < n; j++) {
                        if (kind == 1) { /* one outlier channel per row, as trained GPT-2's activations have */
                            kc[j * ld + (j * 7) % hd] = 100.0f;
                            vc[j * ld + (j * 5 + 1) % hd] = -200.0f;
                        } else if (kind == 2) { /* zero rows between rows of tiny values */
                            for (size_t e = 0; e < hd; e++) {
                                kc[j * ld + e] = j % 3 ? kc[j * ld + e] * 1e-30f : 0.0f;
                                vc[j * ld + e] = j % 2 ? vc[j * ld + e] * 1e-30f : 0.0f;
                            }
                        }
                    }
                    tu_paged pf, p8;
                    tu_paged_make(&pf, kc, vc, n, ld, 4);
                    tu_paged_make_i8(&p8, kc, vc, n, ld, hd);
                    const float scale = 0.125f;
                    /* dot_i8 / axpy_i8: dot / axpy of the widened row */
                    float wide[128], y0[128], y1[128];
                    const int8_t *r0 = cs_kv_krow8(&p8.h, 0);
                    for (size_t e = 0; e < hd; e++) {
                        wide[e] = (float)r0[e];
                        y0[e] = y1[e] = q[e];
                    }
                    const float d0 = k->dot_i8(q, r0, hd), d1 = k->dot(q, wide, hd);
                    if (memcmp(&d0, &d1, 4)) fail_msg("%s dot_i8 hd=%zu: %.9g vs dot %.9g", k->name, hd, d0, d1);
                    k->axpy_i8(y0, 0.37f, r0, hd);
                    k->axpy(y1, 0.37f, wide, hd);
                    if (memcmp(y0, y1, hd * 4)) fail_msg("%s axpy_i8 hd=%zu differs from axpy", k->name, hd);
                    k->attend(q, &pf.h, n, hd, scale, att, o_ref);
                    k->attend_i8(q, &p8.h, n, hd, scale, att, o_i8);
                    cs_attend_i8_generic(k, q, &p8.h, n, hd, scale, att, o_gen);
                    if (memcmp(o_i8, o_gen, hd * 4))
                        fail_msg("%s attend_i8 hd=%zu n=%zu kind=%d: differs from cs_attend_i8_generic", k->name, hd, n,
                                 kind);
                    float qsum = 0, dmax = 0, vmax = 0, svmax = 0, err = 0;
                    for (size_t e = 0; e < hd; e++) qsum += fabsf(q[e]);
                    for (size_t j = 0; j < n; j++) {
                        dmax = fmaxf(dmax, scale * qsum * cs_kv_row_scale(cs_kv_krow8(&p8.h, j), hd) / 2);
                        svmax = fmaxf(svmax, cs_kv_row_scale(cs_kv_vrow8(&p8.h, j), hd) / 2);
                        for (size_t e = 0; e < hd; e++) vmax = fmaxf(vmax, fabsf(vc[j * ld + e]));
                    }
                    for (size_t e = 0; e < hd; e++) err = fmaxf(err, fabsf(o_i8[e] - o_ref[e]));
                    const float bound = (expf(2 * dmax) - 1) * vmax + svmax;
                    if (!(err <= bound * 1.001f + 1e-6f * vmax))
                        fail_msg("%s attend_i8 hd=%zu n=%zu kind=%d: error %g above the quantization bound %g", k->name,
                                 hd, n, kind, err, bound);
                    if (kind == 0 && !(err > 0)) fail_msg("%s attend_i8 hd=%zu n=%zu: no error: not int8?", k->name, hd, n);
                    tu_paged_free(&pf);
                    tu_paged_free(&p8);
                    free(q); free(kc); free(vc); free(att);
                    cases++;
                }
    }
    printf("  %zu int8-cache cases within their bound\n", cases);
}

/* cs_kv_quantize_row: within half a step of every input, the scale right
 * after the row, zero rows exact, non-finite rows poison their scale. */
static void test_kv_quantize_row(void **state) {
    (void)state;
    float x[67];
    int8_t row[67 + 4];
    for (int kind = 0; kind < 4; kind++) {
        fill(x, 67, kind == 0 ? 1.0f : kind == 1 ? 3e-38f : 1e30f);
        if (kind == 3) x[40] = 5e3f; /* an outlier */
        cs_kv_quantize_row(x, 67, row);
        float mx = 0;
        for (int e = 0; e < 67; e++) mx = fmaxf(mx, fabsf(x[e]));
        const float s = cs_kv_row_scale(row, 67);
        assert_true(s == mx / 127.0f);
        for (int e = 0; e < 67; e++) {
            assert_true(row[e] >= -127 && row[e] <= 127);
            /* half a step, and the scale's own rounding (denormal below ~1.5e-36) */
            if (!(fabsf((float)row[e] * s - x[e]) <= s * 0.5f * 1.0001f + 127 * 1.401298e-45f))
                fail_msg("kind %d elem %d: %g -> %d * %g", kind, e, x[e], row[e], s);
        }
    }
    memset(x, 0, sizeof x);
    cs_kv_quantize_row(x, 67, row);
    assert_true(cs_kv_row_scale(row, 67) == 0.0f);
    for (int e = 0; e < 67; e++) assert_int_equal(row[e], 0);
    x[3] = NAN;
    memset(row, 0x55, sizeof row);
    cs_kv_quantize_row(x, 67, row);
    assert_true(isnan(cs_kv_row_scale(row, 67)));
    for (int e = 0; e < 67; e++) assert_int_equal(row[e], 0); /* defined bytes, not a NaN's conversion */
    x[3] = INFINITY;
    cs_kv_quantize_row(x, 67, row);
    assert_false(isfinite(cs_kv_row_scale(row, 67)));
}

/* The int8 cache's append: every table's fwht and kv_quantize_row give the
 * scalar reference's bits (sizes with and without vector tails, rows with an
 * outlier, tiny rows that take the double path, non-finite rows); and the
 * transform is what it claims: H H x = n x, exactly for small integers. */
static void test_rotate_quantize_tables(void **state) {
    (void)state;
    float x[256], y[256], z[256];
    int8_t r0[260], r1[260];
    for (int ti = 0; ti < CS_ISA_COUNT; ti++) {
        const cs_kern *k = table(ti);
        if (!k) continue;
        assert_non_null(k->fwht);
        assert_non_null(k->kv_quantize_row);
        for (size_t n = 1; n <= 256; n *= 2)
            for (int post = 0; post < 2; post++) {
                fill(x, n, 3.0f);
                memcpy(y, x, n * 4);
                memcpy(z, x, n * 4);
                const float p = post ? 1.0f / (float)n : 1.0f;
                cs_fwht(y, n, p);
                k->fwht(z, n, p);
                if (memcmp(y, z, n * 4)) fail_msg("%s fwht n=%zu post=%g differs from cs_fwht", k->name, n, p);
                for (size_t i = 0; i < n; i++) y[i] = z[i] = (float)((int)(i * 7 % 11) - 5);
                k->fwht(z, n, 1.0f);
                k->fwht(z, n, 1.0f / (float)n);
                assert_memory_equal(y, z, n * 4);
            }
        const size_t hds[] = {1, 7, 8, 16, 24, 64, 67, 128, 256};
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (int kind = 0; kind < 5; kind++) {
                const size_t hd = hds[hi];
                fill(x, hd, kind == 2 ? 1e-33f : kind == 3 ? 3e37f : 1.5f);
                if (kind == 1) x[hd / 2] = -300.0f;
                if (kind == 4) x[hd - 1] = (hd & 1) ? INFINITY : NAN;
                memset(r0, 0x33, sizeof r0);
                memset(r1, 0x44, sizeof r1);
                cs_kv_quantize_row(x, hd, r0);
                k->kv_quantize_row(x, hd, r1);
                if (memcmp(r0, r1, hd + 4))
                    fail_msg("%s kv_quantize_row hd=%zu kind=%d differs from cs_kv_quantize_row", k->name, hd, kind);
            }
    }
}

/* The AVX-512 table's decode attention is its own code (16-lane registers,
 * rows walked block by block) that must give the AVX2 table's bits for every
 * cache type: over short and long contexts, partial last blocks, head sizes
 * it takes (multiples of 16) and those it hands back, and odd row strides. */
static void test_decode_tables_agree(void **state) {
    (void)state;
    const cs_kern *a = table(CS_ISA_AVX2), *z = table(CS_ISA_AVX512);
    if (!a || !z) {
        printf("  (AVX2 or AVX-512 not supported by this CPU: skipped)\n");
        skip();
    }
    const size_t hds[] = {16, 32, 48, 64, 72, 80, 96, 128, 130};
    const size_t ns[] = {1, 2, 3, 4, 5, 15, 16, 17, 31, 33, 64, 67, 300};
    size_t checked = 0;
    for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int dt = CS_KV_F32; dt <= CS_KV_I8; dt++) {
                const size_t hd = hds[hi], n = ns[ni], ld = 3 * hd + 5;
                float *q = malloc(hd * sizeof(float)), *kc = malloc(n * ld * sizeof(float));
                float *vc = malloc(n * ld * sizeof(float)), *att = malloc(n * sizeof(float));
                float *o0 = malloc(hd * sizeof(float)), *o1 = malloc(hd * sizeof(float));
                assert_true(q && kc && vc && att && o0 && o1);
                fill(q, hd, ni % 2 ? 6.0f : 1.0f); /* odd: peaked softmaxes */
                fill(kc, n * ld, 1.0f);
                fill(vc, n * ld, 2.0f);
                tu_paged pg;
                if (dt == CS_KV_I8) tu_paged_make_i8(&pg, kc, vc, n, ld, hd);
                else tu_paged_make(&pg, kc, vc, n, ld, dt == CS_KV_BF16 ? 2 : 4);
                const float scale = 1.0f / sqrtf((float)hd);
                const cs_kern *ks[2] = {a, z};
                float *os[2] = {o0, o1};
                for (int t = 0; t < 2; t++)
                    (dt == CS_KV_I8     ? ks[t]->attend_i8
                     : dt == CS_KV_BF16 ? ks[t]->attend_bf16
                                        : ks[t]->attend)(q, &pg.h, n, hd, scale, att, os[t]);
                if (memcmp(o0, o1, hd * sizeof(float)))
                    fail_msg("%s cache hd=%zu n=%zu: avx512 attend differs from avx2", cs_kvdtype_name((cs_kvdtype)dt),
                             hd, n);
                tu_paged_free(&pg);
                free(q); free(kc); free(vc); free(att); free(o0); free(o1);
                checked++;
            }
    printf("  %zu shapes checked bitwise\n", checked);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_blocked_matches_per_query),
                                       cmocka_unit_test(test_long_and_peaked),
                                       cmocka_unit_test(test_generic_reference),
                                       cmocka_unit_test(test_paged_and_bf16),
                                       cmocka_unit_test(test_int8_cache),
                                       cmocka_unit_test(test_kv_quantize_row),
                                       cmocka_unit_test(test_rotate_quantize_tables),
                                       cmocka_unit_test(test_decode_tables_agree)};
    return cmocka_run_group_tests_name("attention", tests, NULL, NULL);
}
