/* Every SIMD kernel against the scalar reference (same packed inputs), for
 * every weight dtype, on shapes that hit all tile and tail paths. Kernels the
 * CPU lacks are reported and skipped. */
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

#include "testutil.h" /* default stream: the seed this test always used */
#define frand tu_frand
#define fill tu_fill

static double max_rel(const float *a, const float *b, size_t n) {
    double md = 0, mb = 1e-30;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs(b[i]));
    }
    return md / mb;
}

static void test_pack_roundtrip(void **state) {
    (void)state;
    const size_t K = 37, N = 45;
    float *W = malloc(K * N * sizeof(float));
    fill(W, K * N, 2.0f);
    for (int dt = CS_W_F32; dt <= CS_W_I8; dt++) {
        void *w = malloc(cs_pmat_wbytes((cs_wdtype)dt, K, N));
        float *sc = malloc(cs_pmat_sbytes((cs_wdtype)dt, N) + 4);
        cs_pmat_pack((cs_wdtype)dt, W, K, N, N, 0, w, sc);
        cs_pmat m = cs_pmat_view((cs_wdtype)dt, K, N, w, sc, NULL);
        for (size_t k = 0; k < K; k++)
            for (size_t n = 0; n < N; n++) {
                float got = cs_pmat_get(&m, k, n), want = W[k * N + n];
                if (dt == CS_W_F32) assert_true(got == want);
                else if (dt == CS_W_BF16) assert_true(fabsf(got - want) <= fabsf(want) * (1.0f / 256));
                else assert_true(fabsf(got - want) <= sc[n] * 0.5f * 1.0001f);
            }
        /* transposed input gives the same packing */
        float *Wt = malloc(K * N * sizeof(float));
        for (size_t k = 0; k < K; k++)
            for (size_t n = 0; n < N; n++) Wt[n * K + k] = W[k * N + n];
        void *w2 = malloc(cs_pmat_wbytes((cs_wdtype)dt, K, N));
        float *sc2 = malloc(cs_pmat_sbytes((cs_wdtype)dt, N) + 4);
        cs_pmat_pack((cs_wdtype)dt, Wt, K, N, K, 1, w2, sc2);
        assert_memory_equal(w, w2, cs_pmat_wbytes((cs_wdtype)dt, K, N));
        free(Wt);
        free(w2);
        free(sc2);
        free(w);
        free(sc);
    }
    free(W);
}

/* matmul_q8 of this table and of the scalar one, on rows quantized once
 * and split into two panel ranges: matmul's bits (y0), q left unchanged. */
static void check_matmul_q8(const cs_kern *kern, const cs_pmat *m, const float *x, size_t ldx, size_t T,
                            const float *y0, size_t ldy) {
    const size_t ldq = (m->K + 3) / 4 * 4, P = m->n_panels;
    int8_t *q = malloc(T * ldq), *q_copy = malloc(T * ldq);
    float *sx = malloc(T * 4), *y = malloc(T * ldy * 4);
    kern->quantize_rows(x, ldx, T, m->K, m->smooth, q, ldq, sx);
    memcpy(q_copy, q, T * ldq);
    const cs_kern *ks[2] = {kern, &cs_kern_scalar};
    for (int i = 0; i < 2; i++) {
        memset(y, 0, T * ldy * 4);
        ks[i]->matmul_q8(m, q, ldq, sx, x, ldx, T, y, ldy, 0, P / 2);
        ks[i]->matmul_q8(m, q, ldq, sx, x, ldx, T, y, ldy, P / 2, P);
        if (memcmp(y, y0, T * ldy * 4))
            fail_msg("%s matmul_q8 K=%zu N=%zu T=%zu: differs from matmul", ks[i]->name, m->K, m->N, T);
        assert_memory_equal(q, q_copy, T * ldq);
    }
    free(q); free(q_copy); free(sx); free(y);
}

/* The SIMD configurations the matmul tests run: each table the CPU has, and
 * the AVX-512 one again without its optional instructions (VNNI, BF16) when
 * the CPU has any, so both of its paths meet the scalar bits. */
#define N_CONFIGS 3
static const cs_kern *config(int c) {
    cs_kern_avx512_cap(~0u);
    if (c == 0) return cs_kern_for(CS_ISA_AVX2);
    const cs_kern *k = cs_kern_for(CS_ISA_AVX512);
    if (c == 2) {
        if (!k || !(__builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avx512bf16"))) return NULL;
        cs_kern_avx512_cap(0);
        printf("  matmul: avx512 without VNNI / BF16\n");
    }
    return k;
}

static void test_matmul_vs_scalar(void **state) {
    (void)state;
    const size_t Ks[] = {1, 7, 64, 100, 600, 2053}, Ns[] = {1, 15, 16, 17, 50, 64, 65, 130}, Ts[] = {1, 2, 3, 4, 5, 7, 9};
    int checked = 0;
    for (int cf = 0; cf < N_CONFIGS; cf++) {
        const cs_kern *kern = config(cf);
        if (!kern) {
            if (cf < 2) printf("  matmul: %s not supported by this CPU, skipped\n", cf == 0 ? "avx2" : "avx512");
            continue;
        }
        for (int dt = CS_W_F32; dt <= CS_W_I8; dt++)
            for (size_t ki = 0; ki < 6; ki++)
                for (size_t ni = 0; ni < 8; ni++)
                    for (size_t ti = 0; ti < 7; ti++) {
                        const size_t K = Ks[ki], N = Ns[ni], T = Ts[ti], P = (N + 15) / 16;
                        const size_t ldx = K + 3, ldy = N + 5;
                        float *W = malloc(K * N * 4), *x = malloc(T * ldx * 4), *bias = malloc(N * 4);
                        float *y0 = calloc(T * ldy, 4), *y1 = calloc(T * ldy, 4);
                        fill(W, K * N, 1.0f);
                        fill(x, T * ldx, 1.0f);
                        fill(bias, N, 1.0f);
                        void *w = malloc(cs_pmat_wbytes((cs_wdtype)dt, K, N));
                        float *sc = malloc(cs_pmat_sbytes((cs_wdtype)dt, N) + 4);
                        /* int8, every other shape: smoothing factors and up to two fp32 outlier rows */
                        const int smooth = dt == CS_W_I8 && (ki + ni) % 2;
                        float *sm = malloc(K * 4), *r = malloc(K * 4), *ow = malloc(2 * P * 16 * 4);
                        uint32_t oi[2] = {0, (uint32_t)(K / 2)};
                        const size_t n_out = K >= 3 ? 2 : K == 2 ? 1 : 0;
                        for (size_t k = 0; k < K; k++) sm[k] = 0.25f + 2.0f * fabsf(frand());
                        for (size_t j = 0; j < n_out; j++) sm[oi[j]] = 0.0f;
                        for (size_t k = 0; k < K; k++) r[k] = sm[k] > 0 ? 1.0f / sm[k] : 0.0f;
                        cs_pmat_pack_smooth((cs_wdtype)dt, W, K, N, N, 0, smooth ? sm : NULL, w, sc);
                        cs_pmat m = cs_pmat_view((cs_wdtype)dt, K, N, w, sc, (ti & 1) ? bias : NULL);
                        if (smooth) {
                            for (size_t j = 0; j < n_out; j++) x[oi[j]] *= 30.0f; /* an outlier channel */
                            cs_pmat_pack_outliers(W, K, N, N, 0, oi, n_out, ow);
                            m.smooth = r;
                            m.n_out = n_out;
                            m.out_idx = oi;
                            m.out_w = ow;
                            /* what the format promises: W as packed, smoothing undone */
                            for (size_t k = 0; k < K; k++)
                                for (size_t n = 0; n < N; n++)
                                    assert_true(fabsf(cs_pmat_get(&m, k, n) - W[k * N + n]) <=
                                                sc[n] * 0.5f * 1.0001f * r[k]); /* exact for outlier rows (r 0) */
                        }
                        cs_kern_scalar.matmul(&m, x, ldx, T, y0, ldy, 0, m.n_panels);
                        /* SIMD in two panel ranges, as threads split the work */
                        kern->matmul(&m, x, ldx, T, y1, ldy, 0, P / 2);
                        kern->matmul(&m, x, ldx, T, y1, ldy, P / 2, P);
                        double e = max_rel(y1, y0, T * ldy);
                        /* int8 is exact integer arithmetic with the same final float ops, and bf16 the
                         * same chain of exact products (vdpbf16ps or FMA): equal bits */
                        if (dt != CS_W_F32 && memcmp(y1, y0, T * ldy * 4))
                            fail_msg("%s %s K=%zu N=%zu T=%zu: differs from scalar (rel %g)", kern->name,
                                     cs_wdtype_name((cs_wdtype)dt), K, N, T, e);
                        if (e > 1e-5)
                            fail_msg("%s %s K=%zu N=%zu T=%zu: rel error %g", kern->name,
                                     cs_wdtype_name((cs_wdtype)dt), K, N, T, e);
                        /* padding between rows (ldy > N) must be untouched */
                        for (size_t t = 0; t < T; t++)
                            for (size_t n = N; n < ldy; n++) assert_true(y1[t * ldy + n] == 0.0f);
                        if (dt == CS_W_I8) /* rows quantized once, shared read-only by both ranges */
                            check_matmul_q8(kern, &m, x, ldx, T, y0, ldy);
                        checked++;
                        free(W); free(x); free(bias); free(y0); free(y1); free(w); free(sc); free(sm); free(r); free(ow);
                    }
    }
    cs_kern_avx512_cap(~0u);
    printf("  matmul: %d SIMD configurations match the scalar reference\n", checked);
}

/* int8 at the ends of the range: every weight and activation quantizes to
 * +-127, so adjacent products reach 2 x 127 x 127 = 32258 and a kernel that
 * adds byte products in saturating int16 (vpmaddubsw) must keep them below
 * 32767 (offset activations, xq + 128, would reach 64770 and clip). Sign
 * patterns: all products positive, all negative, and mixed; shapes with K off
 * every vector width and N off whole panels. */
static void test_matmul_i8_extremes(void **state) {
    (void)state;
    const size_t Ks[] = {1, 2, 3, 5, 13, 31, 33, 67, 770}, Ns[] = {1, 15, 16, 17, 33, 50}, Ts[] = {1, 2, 3, 5, 64};
    int checked = 0;
    for (int cf = 0; cf < N_CONFIGS; cf++) {
        const cs_kern *kern = config(cf);
        if (!kern) continue;
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
                for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++)
                    for (int pat = 0; pat < 3; pat++) {
                        const size_t K = Ks[ki], N = Ns[ni], T = Ts[ti], P = (N + 15) / 16, ldx = K + 1, ldy = N;
                        float *W = malloc(K * N * 4), *x = malloc(T * ldx * 4);
                        float *y0 = calloc(T * ldy, 4), *y1 = calloc(T * ldy, 4), *y2 = calloc(T * ldy, 4);
                        /* pat 0: w = x = +-1 with the same sign (products +127^2); 1: opposite signs;
                         * 2: independent random signs. Row t > 0 flips some activations. */
                        for (size_t k = 0; k < K; k++)
                            for (size_t n = 0; n < N; n++)
                                W[k * N + n] = pat == 2 ? (frand() < 0 ? -1.0f : 1.0f) : ((k * 7 + n) % 3 ? 1.0f : -1.0f);
                        for (size_t t = 0; t < T; t++)
                            for (size_t k = 0; k < K; k++) {
                                const float s = pat == 2 ? (frand() < 0 ? -1.0f : 1.0f)
                                                         : (k * 7 % 3 ? 1.0f : -1.0f) * (pat ? -1.0f : 1.0f);
                                x[t * ldx + k] = t % 2 && k % 5 == 1 ? -s : s;
                            }
                        void *w = malloc(cs_pmat_wbytes(CS_W_I8, K, N));
                        float *sc = malloc(cs_pmat_sbytes(CS_W_I8, N));
                        cs_pmat_pack(CS_W_I8, W, K, N, N, 0, w, sc);
                        const cs_pmat m = cs_pmat_view(CS_W_I8, K, N, w, sc, NULL);
                        cs_kern_scalar.matmul(&m, x, ldx, T, y0, ldy, 0, P);
                        kern->matmul(&m, x, ldx, T, y1, ldy, 0, P);
                        if (memcmp(y0, y1, T * ldy * 4))
                            fail_msg("%s int8 extremes K=%zu N=%zu T=%zu pattern %d: differs from scalar", kern->name,
                                     K, N, T, pat);
                        /* column 0 of row 0, pattern 0: every product is +127^2, scale 1/127 each side */
                        if (pat == 0) assert_true(fabsf(y0[0] - (float)K) <= 1e-5f * (float)K);
                        /* and the same again after another call has used the scratch */
                        kern->matmul(&m, x, ldx, T, y2, ldy, 0, P);
                        assert_memory_equal(y1, y2, T * ldy * 4);
                        checked++;
                        free(W); free(x); free(y0); free(y1); free(y2); free(w); free(sc);
                    }
    }
    cs_kern_avx512_cap(~0u);
    printf("  matmul int8 extremes: %d SIMD configurations match the scalar reference\n", checked);
}

static void test_vector_kernels(void **state) {
    (void)state;
    const size_t lens[] = {1, 3, 8, 15, 16, 17, 33, 64, 100, 768, 3072};
    for (int isa = CS_ISA_AVX2; isa < CS_ISA_COUNT; isa++) {
        const cs_kern *k = cs_kern_for((cs_isa)isa);
        if (!k) continue;
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            const size_t n = lens[li];
            float *a = malloc(n * 4), *b = malloc(n * 4), *w = malloc(n * 4), *bb = malloc(n * 4);
            float *r0 = malloc(n * 4), *r1 = malloc(n * 4);
            fill(a, n, 3.0f);
            fill(b, n, 1.0f);
            fill(w, n, 1.0f);
            fill(bb, n, 0.5f);
            float d0 = cs_kern_scalar.dot(a, b, n), d1 = k->dot(a, b, n);
            assert_true(fabsf(d0 - d1) <= 1e-5f * (1 + fabsf(d0)) * sqrtf((float)n));
            memcpy(r0, b, n * 4);
            memcpy(r1, b, n * 4);
            cs_kern_scalar.axpy(r0, 0.7f, a, n);
            k->axpy(r1, 0.7f, a, n);
            assert_true(max_rel(r1, r0, n) <= 1e-6);
            if (n > 1) {
                cs_kern_scalar.layernorm(r0, a, w, bb, n, 1e-5f);
                k->layernorm(r1, a, w, bb, n, 1e-5f);
                assert_true(max_rel(r1, r0, n) <= 1e-5);
            }
            /* GELU over a wide range, including saturation on both sides */
            for (size_t i = 0; i < n; i++) r0[i] = r1[i] = a[i] * 4.0f;
            cs_kern_scalar.gelu_tanh(r0, n);
            k->gelu_tanh(r1, n);
            for (size_t i = 0; i < n; i++)
                if (fabsf(r0[i] - r1[i]) > 2e-6f * (1 + fabsf(r0[i])))
                    fail_msg("%s gelu(%g): %.9g vs %.9g", k->name, a[i] * 4.0f, r1[i], r0[i]);
            for (size_t i = 0; i < n; i++) r0[i] = r1[i] = a[i] * 10.0f;
            cs_kern_scalar.softmax(r0, n);
            k->softmax(r1, n);
            for (size_t i = 0; i < n; i++) assert_true(fabsf(r0[i] - r1[i]) <= 2e-6f * (r0[i] + 1e-6f) + 1e-9f);
            free(a); free(b); free(w); free(bb); free(r0); free(r1);
        }
        /* attention over n positions for head sizes with and without a fast path */
        const size_t hds[] = {4, 16, 48, 64, 72, 128}, ns[] = {1, 3, 4, 5, 17, 64};
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                const size_t hd = hds[hi], n = ns[ni], ld = 3 * hd + 5;
                float *q = malloc(hd * 4), *kc = malloc(n * ld * 4), *vc = malloc(n * ld * 4), *att = malloc(n * 4);
                float *o0 = malloc(hd * 4), *o1 = malloc(hd * 4);
                fill(q, hd, 1.0f);
                fill(kc, n * ld, 1.0f);
                fill(vc, n * ld, 2.0f);
                tu_paged pg;
                tu_paged_make(&pg, kc, vc, n, ld, 4);
                cs_kern_scalar.attend(q, &pg.h, n, hd, 0.125f, att, o0);
                k->attend(q, &pg.h, n, hd, 0.125f, att, o1);
                tu_paged_free(&pg);
                if (max_rel(o1, o0, hd) > 2e-6) fail_msg("%s attend hd=%zu n=%zu: rel %g", k->name, hd, n, max_rel(o1, o0, hd));
                free(q); free(kc); free(vc); free(att); free(o0); free(o1);
            }
        float big[3] = {-100.0f, 0.0f, 100.0f}; /* extremes stay finite */
        k->gelu_tanh(big, 3);
        assert_true(fabsf(big[0]) < 1e-6f && big[1] == 0.0f && big[2] == 100.0f);
    }
}

/* int8 activation quantization: every ISA's must give the scalar bits (the
 * matmuls are exact integer arithmetic after it, so this is what keeps int8
 * results identical everywhere). Includes exact .5 ties (max 127: scale 1),
 * an all-zero row, tails of every length and padding up to ldq. */
static void test_quantize_rows(void **state) {
    (void)state;
    const size_t lens[] = {1, 3, 4, 7, 15, 16, 17, 31, 33, 100, 768, 3072};
    for (int isa = CS_ISA_AVX2; isa < CS_ISA_COUNT; isa++) {
        const cs_kern *k = cs_kern_for((cs_isa)isa);
        if (!k) continue;
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            const size_t K = lens[li], ldq = (K + 3) / 4 * 4 + 4, T = 4, ldx = K + 5;
            float *x = malloc(T * ldx * 4), sx0[4], sx1[4];
            int8_t *q0 = malloc(T * ldq), *q1 = malloc(T * ldq);
            fill(x, T * ldx, 2.0f);
            for (size_t i = 0; i < K; i++) {
                x[ldx + i] = (float)((int)(i % 255) - 127) + (i % 2 ? 0.5f : 0.0f); /* ties */
                x[2 * ldx + i] = 0.0f;
            }
            x[ldx + K / 2] = -127.0f; /* max |x| = 127 exactly: inv = 1 */
            x[3 * ldx + K - 1] = 1e-30f;
            memset(q0, 0x55, T * ldq);
            memset(q1, 0x55, T * ldq);
            /* without and with smoothing factors (one of them 0: a channel taken out) */
            float *r = malloc(K * 4);
            for (size_t i = 0; i < K; i++) r[i] = i % 5 == 0 ? 1.0f : 0.125f + fabsf(frand()) * 4.0f;
            r[K / 3] = 0.0f;
            for (int hr = 0; hr < 2; hr++) {
                memset(q0, 0x55, T * ldq);
                memset(q1, 0x55, T * ldq);
                cs_quantize_rows(x, ldx, T, K, hr ? r : NULL, q0, ldq, sx0);
                k->quantize_rows(x, ldx, T, K, hr ? r : NULL, q1, ldq, sx1);
                for (size_t t = 0; t < T; t++) {
                    assert_memory_equal(&sx0[t], &sx1[t], sizeof(float));
                    for (size_t i = 0; i < ldq; i++)
                        if (q0[t * ldq + i] != q1[t * ldq + i])
                            fail_msg("%s K=%zu r=%d row %zu [%zu]: x=%.9g scalar %d simd %d", k->name, K, hr, t, i,
                                     i < K ? x[t * ldx + i] : 0.0, q0[t * ldq + i], q1[t * ldq + i]);
                }
                assert_true(sx0[2] == 1.0f && q0[2 * ldq] == 0);
                if (hr && K > 1) assert_int_equal(q0[K / 3], 0);
            }
            free(r);
            free(x);
            free(q0);
            free(q1);
        }
    }
}

static void test_dispatch(void **state) {
    (void)state;
    const cs_kern *best = cs_kern_best();
    assert_non_null(best);
    assert_non_null(best->matmul);
    printf("  best kernels on this CPU: %s\n", best->name);
    assert_ptr_equal(cs_kern_for(CS_ISA_SCALAR), &cs_kern_scalar);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_roundtrip), cmocka_unit_test(test_matmul_vs_scalar),
        cmocka_unit_test(test_matmul_i8_extremes),
        cmocka_unit_test(test_vector_kernels), cmocka_unit_test(test_quantize_rows),
        cmocka_unit_test(test_dispatch)};
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
