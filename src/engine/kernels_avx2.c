/* AVX2 + FMA kernels (per-function target attributes; used when CPUID reports
 * AVX2 and FMA but not AVX-512, or when CS_KERNELS=avx2). */
#include "engine/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T256 __attribute__((target("avx2,fma")))
#define INL __attribute__((always_inline)) inline

#define LOADW_F32(p) _mm256_loadu_ps((const float *)(p))

static INL T256 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Stores 8 lanes to y[n0..n0+8) but only those below N. */
static INL T256 void store_tail(float *y, size_t left, __m256 v) {
    if (left >= 8) {
        _mm256_storeu_ps(y, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(y, tmp, left * sizeof(float));
    }
}

static INL T256 __m256 load_tail(const float *x, size_t left) {
    if (left >= 8) return _mm256_loadu_ps(x);
    float tmp[8] = {0};
    memcpy(tmp, x, left * sizeof(float));
    return _mm256_loadu_ps(tmp);
}

/* Register tile: RT rows times CP panels; each panel is two 8-float halves. */
#define DEFINE_TILE(S, TYPE, LOADW)                                                                    \
    static INL T256 void tile_##S(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy,  \
                                  size_t p, const int RT, const int CP) {                              \
        const size_t K = m->K;                                                                         \
        const TYPE *w = (const TYPE *)m->w + p * K * CS_PANEL;                                         \
        __m256 acc[3][4];                                                                              \
        for (int r = 0; r < RT; r++)                                                                   \
            for (int c = 0; c < 2 * CP; c++) acc[r][c] = _mm256_setzero_ps();                          \
        for (size_t k = 0; k < K; k++) {                                                               \
            __m256 wv[4];                                                                              \
            for (int c = 0; c < CP; c++) {                                                             \
                wv[2 * c] = LOADW(w + ((size_t)c * K + k) * CS_PANEL);                                 \
                wv[2 * c + 1] = LOADW(w + ((size_t)c * K + k) * CS_PANEL + 8);                         \
            }                                                                                          \
            for (int r = 0; r < RT; r++) {                                                             \
                const __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ldx + k);                        \
                for (int c = 0; c < 2 * CP; c++) acc[r][c] = _mm256_fmadd_ps(xb, wv[c], acc[r][c]);    \
            }                                                                                          \
        }                                                                                              \
        for (int c = 0; c < 2 * CP; c++) {                                                             \
            const size_t n0 = p * CS_PANEL + (size_t)c * 8;                                            \
            if (n0 >= m->N) break;                                                                     \
            const size_t left = m->N - n0;                                                             \
            const __m256 sc = m->scale ? _mm256_loadu_ps(m->scale + n0) : _mm256_set1_ps(1.0f);        \
            const __m256 bi = m->bias ? load_tail(m->bias + n0, left) : _mm256_setzero_ps();           \
            for (int r = 0; r < RT; r++) {                                                             \
                __m256 v = m->scale ? _mm256_fmadd_ps(acc[r][c], sc, bi) : _mm256_add_ps(acc[r][c], bi); \
                store_tail(y + (size_t)r * ldy + n0, left, v);                                         \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    static T256 void matmul_##S(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, \
                                size_t p0, size_t p1) {                                                \
        size_t p = p0;                                                                                 \
        for (; p + 2 <= p1; p += 2) {                                                                  \
            size_t t = 0;                                                                              \
            for (; t + 3 <= T; t += 3) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 3, 2);       \
            switch (T - t) {                                                                           \
            case 2: tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 2, 2); break;                   \
            case 1: tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 1, 2); break;                   \
            }                                                                                          \
        }                                                                                              \
        for (; p < p1; p++) {                                                                          \
            size_t t = 0;                                                                              \
            for (; t + 3 <= T; t += 3) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 3, 1);       \
            for (; t < T; t++) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 1, 1);               \
        }                                                                                              \
    }

DEFINE_TILE(f32, float, LOADW_F32)

/* bf16 (see kernels.h): per pair of k, even-k weights are the low half of each
 * 32-bit lane (shift), odd-k the high half (mask); same FMA order as fp32. */
static T256 void matmul_bf16(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                             size_t p0, size_t p1) {
    const size_t K = m->K, K2 = (K + 1) / 2;
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    for (size_t p = p0; p < p1; p++)
        for (size_t t = 0; t < T; t++) {
            const uint16_t *w = (const uint16_t *)m->w + p * K2 * 32;
            const float *xr = x + t * ldx;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (size_t j = 0; j < K2; j++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + j * 32));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + j * 32 + 16));
                const __m256 xe = _mm256_set1_ps(xr[2 * j]);
                a0 = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), a0);
                a1 = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), a1);
                if (2 * j + 1 < K) {
                    const __m256 xo = _mm256_set1_ps(xr[2 * j + 1]);
                    a0 = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(w0, hi)), a0);
                    a1 = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(w1, hi)), a1);
                }
            }
            const __m256 acc[2] = {a0, a1};
            for (int h = 0; h < 2; h++) {
                const size_t n0 = p * CS_PANEL + (size_t)h * 8;
                if (n0 >= m->N) break;
                const size_t left = m->N - n0;
                const __m256 bi = m->bias ? load_tail(m->bias + n0, left) : _mm256_setzero_ps();
                store_tail(y + t * ldy + n0, left, _mm256_add_ps(acc[h], bi));
            }
        }
}

/* int8 (see kernels.h): exact integer dot products with vpmaddubsw, which
 * multiplies unsigned by signed bytes and adds adjacent products into int16
 * with saturation. Both sides are clamped to [-127, 127] (the packer and the
 * quantizer), so |w| as the unsigned side times the activation carrying w's
 * sign (vpsignb) gives each product exactly, at most 127 x 127, and a pair sum
 * of at most 32258 < 32767 never saturates (a weight byte of -128 would still
 * be exact: |w| reads as 128 unsigned); vpmaddwd by ones then adds the two
 * pairs of each column's group of 4 k into int32, lanes in column order. (The
 * unsigned-offset form of the VNNI kernel, xq + 128, would saturate here.)
 * A tile is RT rows x one panel: the panel's two weight vectors and their
 * absolute values are loaded once per group of 4 k for all RT rows. */
#define I8_RT 4 /* rows per tile: 2 x RT accumulators + 4 weight registers fit in 16 ymm */

/* One row's group of 4 k against both halves of the panel. */
static INL T256 void row_i8(const int8_t *xq, __m256i w0, __m256i w1, __m256i u0, __m256i u1, __m256i ones,
                            __m256i *a0, __m256i *a1) {
    int32_t x4;
    memcpy(&x4, xq, 4);
    const __m256i xb = _mm256_set1_epi32(x4);
    const __m256i p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(xb, w0));
    const __m256i p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(xb, w1));
    *a0 = _mm256_add_epi32(*a0, _mm256_madd_epi16(p0, ones));
    *a1 = _mm256_add_epi32(*a1, _mm256_madd_epi16(p1, ones));
}

static INL T256 void tile_i8(const int8_t *wp, const int8_t *q, size_t ldq, size_t K4, __m256i acc[I8_RT][2],
                             const int RT) {
    const __m256i ones = _mm256_set1_epi16(1);
    /* named accumulators rather than an array: they stay in registers */
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
    for (size_t kq = 0; kq < K4; kq++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(wp + kq * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(wp + kq * 64 + 32));
        const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
        const int8_t *xq = q + 4 * kq;
        row_i8(xq, w0, w1, u0, u1, ones, &a00, &a01);
        if (RT > 1) row_i8(xq + ldq, w0, w1, u0, u1, ones, &a10, &a11);
        if (RT > 2) row_i8(xq + 2 * ldq, w0, w1, u0, u1, ones, &a20, &a21);
        if (RT > 3) row_i8(xq + 3 * ldq, w0, w1, u0, u1, ones, &a30, &a31);
    }
    acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11;
    acc[2][0] = a20, acc[2][1] = a21, acc[3][0] = a30, acc[3][1] = a31;
}

/* The float epilogue of RT rows of panel p, in the scalar reference's order:
 * (float)acc * (sx * scale) + bias (0 without), then cs_pmat_outliers'
 * arithmetic (a multiply, then an add, channel by channel) on the registers;
 * out_w rows are padded to whole panels. */
static INL T256 void store_i8(const cs_pmat *m, __m256i acc[I8_RT][2], const float *sx, const float *x, size_t ldx,
                              float *y, size_t ldy, size_t p, const int RT) {
    for (int h = 0; h < 2; h++) {
        const size_t n0 = p * CS_PANEL + (size_t)h * 8;
        if (n0 >= m->N) break;
        const size_t left = m->N - n0;
        const __m256 sc = _mm256_loadu_ps(m->scale + n0);
        const __m256 bi = m->bias ? load_tail(m->bias + n0, left) : _mm256_setzero_ps();
        for (int r = 0; r < RT; r++) {
            const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][h]), _mm256_mul_ps(_mm256_set1_ps(sx[r]), sc));
            __m256 v = _mm256_add_ps(f, bi);
            for (size_t j = 0; j < m->n_out; j++)
                v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(x[(size_t)r * ldx + m->out_idx[j]]),
                                                   _mm256_loadu_ps(m->out_w + j * m->n_panels * CS_PANEL + n0)));
            store_tail(y + (size_t)r * ldy + n0, left, v);
        }
    }
}

static INL T256 void rows_i8(const cs_pmat *m, const int8_t *wp, const int8_t *q, size_t ldq, const float *sx,
                             const float *x, size_t ldx, float *y, size_t ldy, size_t p, const int RT) {
    __m256i acc[I8_RT][2];
    tile_i8(wp, q, ldq, ldq / 4, acc, RT);
    store_i8(m, acc, sx, x, ldx, y, ldy, p, RT);
}

static T256 void matmul_i8(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                           size_t p1) {
    size_t ldq;
    float *sx;
    int8_t *q = cs_kern_quantize(&cs_kern_avx2, m, x, ldx, T, &ldq, &sx);
    if (!q) return;
    const size_t K4 = ldq / 4;
    for (size_t p = p0; p < p1; p++) {
        const int8_t *wp = (const int8_t *)m->w + p * K4 * 64;
        size_t t = 0;
#define RI8(rt) rows_i8(m, wp, q + t * ldq, ldq, sx + t, x + t * ldx, ldx, y + t * ldy, ldy, p, rt)
        for (; t + I8_RT <= T; t += I8_RT) RI8(I8_RT);
        switch (T - t) {
        case 3: RI8(3); break;
        case 2: RI8(2); break;
        case 1: RI8(1); break;
        default: break;
        }
#undef RI8
    }
}

static T256 void matmul_avx2(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                             size_t p0, size_t p1) {
    switch (m->dt) {
    case CS_W_F32: matmul_f32(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_BF16: matmul_bf16(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_I8: matmul_i8(m, x, ldx, T, y, ldy, p0, p1); break;
    }
}

/* exp(x) on [-87, 88], relative error ~2e-7. */
static INL T256 __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static T256 void layernorm_avx2(float *y, const float *x, const float *w, const float *b, size_t C, float eps) {
    __m256 s = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= C; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + i));
    float sum = hsum256(s);
    for (; i < C; i++) sum += x[i];
    const float mean = sum / (float)C;
    const __m256 mv = _mm256_set1_ps(mean);
    __m256 q = _mm256_setzero_ps();
    for (i = 0; i + 8 <= C; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv);
        q = _mm256_fmadd_ps(d, d, q);
    }
    float var = hsum256(q);
    for (; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / sqrtf(var / (float)C + eps);
    const __m256 rv = _mm256_set1_ps(rstd);
    for (i = 0; i + 8 <= C; i += 8) {
        const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), rv);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < C; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

static T256 void gelu_avx2(float *x, size_t n) {
    const __m256 c0 = _mm256_set1_ps(-2.0f * 0.7978845608028654f), c1 = _mm256_set1_ps(0.044715f),
                 one = _mm256_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 8) {
        const size_t left = n - i;
        const __m256 v = load_tail(x + i, left);
        const __m256 u = _mm256_mul_ps(c0, _mm256_fmadd_ps(_mm256_mul_ps(c1, v), _mm256_mul_ps(v, v), v));
        store_tail(x + i, left, _mm256_div_ps(v, _mm256_add_ps(one, exp256(u))));
    }
}

static T256 float dot_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static T256 void axpy_avx2(float *y, float a, const float *x, size_t n) {
    const __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* 8 bf16 values widened to fp32 (a bf16 is the top half of its fp32). */
static INL T256 __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
}

/* dot_avx2's sum with b widened from bf16. */
T256 float cs_dot_bf16_avx2(const float *a, const uint16_t *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_bf16x8(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_bf16x8(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_bf16x8(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * cs_f32_from_bf16(b[i]);
    return s;
}

T256 void cs_axpy_bf16_avx2(float *y, float a, const uint16_t *x, size_t n) {
    const __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load_bf16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * cs_f32_from_bf16(x[i]);
}

static T256 void softmax_avx2(float *x, size_t n) {
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const __m256 m = _mm256_set1_ps(mx);
    __m256 s = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        s = _mm256_add_ps(s, e);
    }
    float sum = hsum256(s);
    for (; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    const float inv = 1.0f / sum;
    for (i = 0; i < n; i++) x[i] *= inv;
}

/* cs_quantize_rows with the same arithmetic: |x r| max, (x r) * (127 / max),
 * rounded to nearest even (cvtps uses the current rounding mode, as nearbyintf
 * does). HR: smoothing factors given (a constant, so each form is its own loop). */
static INL T256 void quantize_row_avx2(const float *xr, size_t K, const float *r, int8_t *qr, size_t ldq, float *sx,
                                       const int HR) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
#define XR8(k) (HR ? _mm256_mul_ps(_mm256_loadu_ps(xr + (k)), _mm256_loadu_ps(r + (k))) : _mm256_loadu_ps(xr + (k)))
#define XR1(k) (HR ? xr[k] * r[k] : xr[k])
    __m256 mv = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= K; k += 8) mv = _mm256_max_ps(mv, _mm256_and_ps(XR8(k), absm));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    for (; k < K; k++) mx = fmaxf(mx, fabsf(XR1(k)));
    const float inv = mx > 0 ? 127.0f / mx : 0.0f;
    *sx = mx > 0 ? mx / 127.0f : 1.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    for (k = 0; k + 8 <= K; k += 8) {
        __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(XR8(k), iv));
        i = _mm256_min_epi32(_mm256_max_epi32(i, lo), hi);
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(void *)(qr + k), _mm_packs_epi16(w, w));
    }
    for (; k < K; k++) {
        const float v = nearbyintf(XR1(k) * inv);
        qr[k] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
    for (k = K; k < ldq; k++) qr[k] = 0;
#undef XR8
#undef XR1
}

static T256 void quantize_avx2(const float *x, size_t ldx, size_t T, size_t K, const float *r, int8_t *q, size_t ldq,
                               float *sx) {
    for (size_t t = 0; t < T; t++) {
        if (r) quantize_row_avx2(x + t * ldx, K, r, q + t * ldq, ldq, sx + t, 1);
        else quantize_row_avx2(x + t * ldx, K, NULL, q + t * ldq, ldq, sx + t, 0);
    }
}

static void attend_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                        float *out) {
    cs_attend_generic(&cs_kern_avx2, q, kv, n, hd, scale, att, out);
}

/* Also the AVX-512 table's (kernels_avx512.c): same sums, bf16 widened on load. */
void cs_attend_bf16_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                         float *out) {
    cs_attend_bf16_generic(&cs_kern_avx2, q, kv, n, hd, scale, att, out);
}

/* attend_causal in blocks of up to ATT_QB queries that share every key and
 * value vector they load (attend reloads both once per query, and calls dot
 * and axpy once per key). For each (query, key) the score is dot_avx2's sum
 * (two 8-lane chains over 16-float steps, one more 8-float step, hsum256, the
 * scalar tail), softmax_avx2 is the same call, and each output element is
 * axpy_avx2's chain over keys (FMA on the first hd / 8 * 8 elements, multiply
 * then add past them), so the bits are attend_avx2's. */
#define ATT_QB 6

/* Scores of NB queries (qi) against key row kj. */
static INL T256 void scores_avx2(const float *const *qi, const float *kj, size_t hd, float scale, float *sc,
                                 const int NB) {
    __m256 s0[ATT_QB], s1[ATT_QB];
    for (int i = 0; i < NB; i++) s0[i] = s1[i] = _mm256_setzero_ps();
    size_t e = 0;
    for (; e + 16 <= hd; e += 16) {
        const __m256 k0 = _mm256_loadu_ps(kj + e), k1 = _mm256_loadu_ps(kj + e + 8);
        for (int i = 0; i < NB; i++) {
            s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e), k0, s0[i]);
            s1[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e + 8), k1, s1[i]);
        }
    }
    for (; e + 8 <= hd; e += 8) {
        const __m256 k0 = _mm256_loadu_ps(kj + e);
        for (int i = 0; i < NB; i++) s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e), k0, s0[i]);
    }
    for (int i = 0; i < NB; i++) {
        float s = hsum256(_mm256_add_ps(s0[i], s1[i]));
        for (size_t t = e; t < hd; t++) s += qi[i][t] * kj[t];
        sc[i] = s * scale;
    }
}

/* Columns [e, e + 8 NV) of the NB outputs: query i weighs value rows
 * 0 .. last + i by its probabilities ai[i]. */
static INL T256 void pv_avx2(float *const *ai, const cs_kvhead *kv, size_t last, float *const *oi, size_t e,
                             const int NB, const int NV) {
    __m256 o[ATT_QB][2];
    for (int i = 0; i < NB; i++) o[i][0] = o[i][1] = _mm256_setzero_ps();
    for (size_t j = 0; j <= last; j++) { /* keys every query sees */
        const float *vj = cs_kv_vrow(kv, j) + e;
        const __m256 v0 = _mm256_loadu_ps(vj), v1 = NV > 1 ? _mm256_loadu_ps(vj + 8) : v0;
        for (int i = 0; i < NB; i++) {
            const __m256 a = _mm256_broadcast_ss(ai[i] + j);
            o[i][0] = _mm256_fmadd_ps(a, v0, o[i][0]);
            if (NV > 1) o[i][1] = _mm256_fmadd_ps(a, v1, o[i][1]);
        }
    }
    for (int t = 1; t < NB; t++) { /* the causal triangle: key last + t for queries t.. */
        const float *vj = cs_kv_vrow(kv, last + (size_t)t) + e;
        const __m256 v0 = _mm256_loadu_ps(vj), v1 = NV > 1 ? _mm256_loadu_ps(vj + 8) : v0;
        for (int i = 0; i < NB; i++) {
            if (i < t) continue;
            const __m256 a = _mm256_broadcast_ss(ai[i] + last + t);
            o[i][0] = _mm256_fmadd_ps(a, v0, o[i][0]);
            if (NV > 1) o[i][1] = _mm256_fmadd_ps(a, v1, o[i][1]);
        }
    }
    for (int i = 0; i < NB; i++) {
        _mm256_storeu_ps(oi[i] + e, o[i][0]);
        if (NV > 1) _mm256_storeu_ps(oi[i] + e + 8, o[i][1]);
    }
}

/* NB queries whose first sits at position last (att rows la floats apart). */
static INL T256 void causal_block_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t last, size_t hd,
                                       float scale, float *att, size_t la, float *out, size_t ldo, const int NB) {
    const float *qi[ATT_QB];
    float *ai[ATT_QB], *oi[ATT_QB], sc[ATT_QB];
    for (int i = 0; i < NB; i++) {
        qi[i] = q + (size_t)i * ldq;
        ai[i] = att + (size_t)i * la;
        oi[i] = out + (size_t)i * ldo;
    }
    for (size_t j = 0; j <= last; j++) {
        scores_avx2(qi, cs_kv_krow(kv, j), hd, scale, sc, NB);
        for (int i = 0; i < NB; i++) ai[i][j] = sc[i];
    }
    for (int t = 1; t < NB; t++) { /* the triangle: scores past a query's position are dropped */
        scores_avx2(qi, cs_kv_krow(kv, last + (size_t)t), hd, scale, sc, NB);
        for (int i = t; i < NB; i++) ai[i][last + (size_t)t] = sc[i];
    }
    for (int i = 0; i < NB; i++) softmax_avx2(ai[i], last + (size_t)i + 1);
    size_t e = 0;
    for (; e + 16 <= hd; e += 16) pv_avx2(ai, kv, last, oi, e, NB, 2);
    for (; e + 8 <= hd; e += 8) pv_avx2(ai, kv, last, oi, e, NB, 1);
    for (; e < hd; e++) /* axpy_avx2's scalar tail */
        for (int i = 0; i < NB; i++) {
            float o = 0;
            for (size_t j = 0; j <= last + (size_t)i; j++) o += ai[i][j] * cs_kv_vrow(kv, j)[e];
            oi[i][e] = o;
        }
}

static T256 void attend_causal_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                                    size_t hd, float scale, float *att, float *out, size_t ldo) {
    const size_t la = p0 + nq;
    for (size_t b = 0; b < nq; b += ATT_QB) {
        const float *qb = q + b * ldq;
        float *ab = att + b * la, *ob = out + b * ldo;
        switch (nq - b < ATT_QB ? nq - b : ATT_QB) {
        case 6: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 6); break;
        case 5: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 5); break;
        case 4: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 4); break;
        case 3: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 3); break;
        case 2: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 2); break;
        default: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 1); break;
        }
    }
}

const cs_kern cs_kern_avx2 = {
    .name = "avx2", .isa = CS_ISA_AVX2, .matmul = matmul_avx2, .layernorm = layernorm_avx2,
    .gelu_tanh = gelu_avx2, .dot = dot_avx2, .axpy = axpy_avx2, .softmax = softmax_avx2,
    .quantize_rows = quantize_avx2, .attend = attend_avx2, .attend_causal = attend_causal_avx2,
    .dot_bf16 = cs_dot_bf16_avx2, .axpy_bf16 = cs_axpy_bf16_avx2, .attend_bf16 = cs_attend_bf16_avx2,
};

#else
const cs_kern cs_kern_avx2 = {0};
#endif
