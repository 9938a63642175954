/* AVX-512 kernels (compiled for any x86-64 target with per-function target
 * attributes; only called when CPUID reports AVX-512F/BW/VL). */
#include "engine/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INL __attribute__((always_inline)) inline

#define LOADW_F32(p) _mm512_loadu_ps((const float *)(p))

/* Every packed format stores a panel as R rows of 64 bytes (fp32: one k, bf16:
 * a k pair, int8: a k quad). The weight block after rows [r0, r1) of panels
 * [p, p + np) is the same panels further on, else the next np panels from row
 * 0; NULL past p1 or where that block would be shorter. */
static INL const char *next_block(const void *w, size_t R, size_t p, size_t np, size_t p1, size_t r0, size_t r1) {
    const size_t pn = r1 < R ? p : p + np, rn = r1 < R ? r1 : 0;
    return pn + np <= p1 && rn + (r1 - r0) <= R ? (const char *)w + (pn * R + rn) * 64 : NULL;
}

/* Row i of each of the CP panels of the block at pf, into L2 (the tiles call it
 * once per row while they work on the block before it). */
static INL void prefetch_rows(const char *pf, size_t R, int CP, size_t i) {
    for (int c = 0; c < CP; c++) _mm_prefetch(pf + ((size_t)c * R + i) * 64, _MM_HINT_T1);
}

/* Register tile: RT rows of x times CP panels (16 columns each) over k in
 * [k0, k1). Accumulators start at zero (first) or from the partial sums left in
 * y by the previous k-block; the last block applies scale and bias. Every
 * output element is the same sequential FMA chain over k whatever the tile
 * shape or blocking, so a row's result does not depend on the batch around it. */
#define DEFINE_TILE(S, TYPE, LOADW, KB)                                                               \
    static INL T512 void tile_##S(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, \
                                  size_t p, size_t k0, size_t k1, int first, int last, const int RT,   \
                                  const int CP, const char *pf) {                                      \
        const size_t K = m->K;                                                                        \
        const TYPE *w = (const TYPE *)m->w + p * K * CS_PANEL;                                        \
        __m512 acc[6][8];                                                                             \
        __mmask16 mk[8];                                                                              \
        for (int c = 0; c < CP; c++) {                                                                \
            const size_t n0 = (p + (size_t)c) * CS_PANEL;                                             \
            mk[c] = n0 >= m->N ? 0 : m->N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m->N - n0)) - 1); \
        }                                                                                             \
        for (int r = 0; r < RT; r++)                                                                  \
            for (int c = 0; c < CP; c++)                                                              \
                acc[r][c] = first ? _mm512_setzero_ps()                                               \
                                  : _mm512_maskz_loadu_ps(mk[c], y + (size_t)r * ldy + (p + (size_t)c) * CS_PANEL); \
        for (size_t k = k0; k < k1; k++) {                                                            \
            __m512 wv[8];                                                                             \
            if (pf) prefetch_rows(pf, K, CP, k - k0);                                                 \
            for (int c = 0; c < CP; c++) wv[c] = LOADW(w + ((size_t)c * K + k) * CS_PANEL);           \
            for (int r = 0; r < RT; r++) {                                                            \
                const __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + k]);                             \
                for (int c = 0; c < CP; c++) acc[r][c] = _mm512_fmadd_ps(xb, wv[c], acc[r][c]);       \
            }                                                                                         \
        }                                                                                             \
        for (int c = 0; c < CP; c++) {                                                                \
            const size_t n0 = (p + (size_t)c) * CS_PANEL;                                             \
            __m512 sc = _mm512_set1_ps(1.0f), bi = _mm512_setzero_ps();                               \
            if (last && m->scale) sc = _mm512_loadu_ps(m->scale + n0);                                \
            if (last && m->bias) bi = _mm512_maskz_loadu_ps(mk[c], m->bias + n0);                     \
            for (int r = 0; r < RT; r++) {                                                            \
                __m512 v = acc[r][c];                                                                 \
                if (last) v = m->scale ? _mm512_fmadd_ps(v, sc, bi) : _mm512_add_ps(v, bi);           \
                _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk[c], v);                            \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    /* Rows in tiles of up to 6 (4 panels), or 1-2 rows over 8 panels so a decode  \
     * step still has 8 independent FMA chains. */                                \
    static INL T512 void rows_##S(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y,    \
                                  size_t ldy, size_t p, size_t np, size_t k0, size_t k1, int first, int last, const char *pf) { \
        size_t t = 0;                                                                                 \
        if (np == 8) {                                                                                \
            for (; t + 2 <= T; t += 2) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 2, 8, t ? NULL : pf); \
            if (t < T) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 1, 8, t ? NULL : pf); \
            return;                                                                                   \
        }                                                                                             \
        if (np == 1) {                                                                                \
            for (; t + 6 <= T; t += 6) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 6, 1, NULL); \
            for (; t < T; t++) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 1, 1, NULL); \
            return;                                                                                   \
        }                                                                                             \
        for (; t + 6 <= T; t += 6) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 6, 4, t ? NULL : pf); \
        const float *xt = x + t * ldx;                                                                \
        float *yt = y + t * ldy;                                                                      \
        switch (T - t) {                                                                              \
        case 5: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 5, 4, t ? NULL : pf); break;                   \
        case 4: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 4, 4, t ? NULL : pf); break;                   \
        case 3: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 3, 4, t ? NULL : pf); break;                   \
        case 2: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 2, 4, t ? NULL : pf); break;                   \
        case 1: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 1, 4, t ? NULL : pf); break;                   \
        default: break;                                                                               \
        }                                                                                             \
    }                                                                                                 \
    static T512 void matmul_##S(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, \
                                size_t p0, size_t p1) {                                               \
        const size_t K = m->K, wide = T <= 2 ? 8 : 4;                                                 \
        size_t p = p0;                                                                                \
        while (p < p1) {                                                                              \
            const size_t np = p + wide <= p1 ? wide : p + 4 <= p1 ? 4 : 1;                            \
            for (size_t k0 = 0; k0 < K; k0 += KB) {                                                   \
                const size_t k1 = k0 + KB < K ? k0 + KB : K;                                          \
                rows_##S(m, x, ldx, T, y, ldy, p, np, k0, k1, k0 == 0, k1 == K,                       \
                         next_block(m->w, K, p, np, p1, k0, k1));                                      \
            }                                                                                         \
            p += np;                                                                                  \
        }                                                                                             \
    }

/* k-blocks sized so a 4-panel weight block (~32 KB) stays in L1 across row tiles */
DEFINE_TILE(f32, float, LOADW_F32, 128)

/* bf16 (see kernels.h): per pair of k, the even-k weights of 4 panels are
 * widened (shift) and used by every row, then the odd-k ones (mask): one
 * integer op per 16 weights, and the same FMA order over k as fp32. */
#define BF16_HALF(H, SHIFT)                                                                        \
    if ((H) == 0 || 2 * j + 1 < K) {                                                                \
        for (int c = 0; c < CP; c++) wv[c] = SHIFT;                                                   \
        for (int r = 0; r < RT; r++) {                                                              \
            const __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + 2 * j + (H)]);                      \
            for (int c = 0; c < CP; c++) acc[r][c] = _mm512_fmadd_ps(xb, wv[c], acc[r][c]);         \
        }                                                                                           \
    }

static INL T512 void tile_bf16(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, size_t p,
                               size_t j0, size_t j1, int first, int last, const int RT, const int CP, const char *pf) {
    const size_t K = m->K, K2 = (K + 1) / 2;
    const uint16_t *w = (const uint16_t *)m->w + p * K2 * 32;
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 acc[6][4];
    __mmask16 mk[4];
    for (int c = 0; c < CP; c++) {
        const size_t n0 = (p + (size_t)c) * CS_PANEL;
        mk[c] = n0 >= m->N ? 0 : m->N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m->N - n0)) - 1);
    }
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CP; c++)
            acc[r][c] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(mk[c], y + (size_t)r * ldy + (p + (size_t)c) * CS_PANEL);
    for (size_t j = j0; j < j1; j++) {
        __m512i raw[4];
        if (pf) prefetch_rows(pf, K2, CP, j - j0);
        __m512 wv[4];
        for (int c = 0; c < CP; c++) raw[c] = _mm512_loadu_si512((const void *)(w + ((size_t)c * K2 + j) * 32));
        BF16_HALF(0, _mm512_castsi512_ps(_mm512_slli_epi32(raw[c], 16)))
        BF16_HALF(1, _mm512_castsi512_ps(_mm512_and_si512(raw[c], hi)))
    }
    for (int c = 0; c < CP; c++) {
        const size_t n0 = (p + (size_t)c) * CS_PANEL;
        const __m512 bi = last && m->bias ? _mm512_maskz_loadu_ps(mk[c], m->bias + n0) : _mm512_setzero_ps();
        for (int r = 0; r < RT; r++)
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk[c], last ? _mm512_add_ps(acc[r][c], bi) : acc[r][c]);
    }
}

static T512 void matmul_bf16(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                             size_t p1) {
    const size_t K2 = (m->K + 1) / 2, JB = 128; /* 4 panels x 128 pairs = 32 KB */
    size_t p = p0;
    while (p < p1) {
        const int np = p + 4 <= p1 ? 4 : 1;
        for (size_t j0 = 0; j0 < K2; j0 += JB) {
            const size_t j1 = j0 + JB < K2 ? j0 + JB : K2;
            const int first = j0 == 0, last = j1 == K2;
            const char *pf = np == 4 ? next_block(m->w, K2, p, 4, p1, j0, j1) : NULL;
            size_t t = 0;
#define TB(rt, cp) tile_bf16(m, x + t * ldx, ldx, y + t * ldy, ldy, p, j0, j1, first, last, rt, cp, t ? NULL : pf)
            if (np == 1) {
                for (; t < T; t++) TB(1, 1);
                continue;
            }
            for (; t + 6 <= T; t += 6) TB(6, 4);
            switch (T - t) {
            case 5: TB(5, 4); break;
            case 4: TB(4, 4); break;
            case 3: TB(3, 4); break;
            case 2: TB(2, 4); break;
            case 1: TB(1, 4); break;
            default: break;
            }
#undef TB
        }
        p += (size_t)np;
    }
}

/* int8 with AVX512-VNNI: vpdpbusd multiplies 4 unsigned activation bytes
 * (xq + 128) with 4 signed weight bytes per column and adds into int32;
 * 128 * colsum[n] removes the offset, so the sum is exactly sum xq * q. Partial
 * sums between k-blocks are kept in y as int32 bits. */
#define TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
static INL TVNNI void tile_vnni(const cs_pmat *m, const uint8_t *qu, size_t ldq, const float *sx, float *y, size_t ldy,
                                size_t p, size_t kq0, size_t kq1, int first, int last, const int RT, const int CP,
                                const char *pf) {
    const size_t K4 = ldq / 4;
    const int8_t *w = (const int8_t *)m->w + p * K4 * 64;
    __m512i acc[6][8];
    __mmask16 mk[8];
    for (int c = 0; c < CP; c++) {
        const size_t n0 = (p + (size_t)c) * CS_PANEL;
        mk[c] = n0 >= m->N ? 0 : m->N - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m->N - n0)) - 1);
    }
    for (int r = 0; r < RT; r++)
        for (int c = 0; c < CP; c++)
            acc[r][c] = first ? _mm512_setzero_si512()
                              : _mm512_maskz_loadu_epi32(mk[c], y + (size_t)r * ldy + (p + (size_t)c) * CS_PANEL);
    for (size_t kq = kq0; kq < kq1; kq++) {
        __m512i wv[8];
        if (pf) prefetch_rows(pf, K4, CP, kq - kq0);
        for (int c = 0; c < CP; c++) wv[c] = _mm512_loadu_si512((const void *)(w + ((size_t)c * K4 + kq) * 64));
        for (int r = 0; r < RT; r++) {
            int32_t xq4;
            memcpy(&xq4, qu + (size_t)r * ldq + 4 * kq, 4);
            const __m512i xb = _mm512_set1_epi32(xq4);
            for (int c = 0; c < CP; c++) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xb, wv[c]);
        }
    }
    for (int c = 0; c < CP; c++) {
        const size_t n0 = (p + (size_t)c) * CS_PANEL;
        if (!last) {
            for (int r = 0; r < RT; r++) _mm512_mask_storeu_epi32(y + (size_t)r * ldy + n0, mk[c], acc[r][c]);
            continue;
        }
        const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(m->colsum + n0)), 7);
        const __m512 sc = _mm512_loadu_ps(m->scale + n0);
        const __m512 bi = m->bias ? _mm512_maskz_loadu_ps(mk[c], m->bias + n0) : _mm512_setzero_ps();
        for (int r = 0; r < RT; r++) {
            const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], off));
            const __m512 v = _mm512_add_ps(_mm512_mul_ps(f, _mm512_mul_ps(_mm512_set1_ps(sx[r]), sc)), bi);
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk[c], v);
        }
    }
}

static INL TVNNI void rows_vnni(const cs_pmat *m, const uint8_t *qu, size_t ldq, const float *sx, size_t T, float *y,
                                size_t ldy, size_t p, size_t np, size_t kq0, size_t kq1, int first, int last,
                                const char *pf) {
    size_t t = 0;
#define TV(rt, cp) tile_vnni(m, qu + t * ldq, ldq, sx + t, y + t * ldy, ldy, p, kq0, kq1, first, last, rt, cp, \
                             t || cp == 1 ? NULL : pf)
    if (np == 8) {
        for (; t + 2 <= T; t += 2) TV(2, 8);
        if (t < T) TV(1, 8);
        return;
    }
    if (np == 1) {
        for (; t + 6 <= T; t += 6) TV(6, 1);
        for (; t < T; t++) TV(1, 1);
        return;
    }
    for (; t + 6 <= T; t += 6) TV(6, 4);
    switch (T - t) {
    case 5: TV(5, 4); break;
    case 4: TV(4, 4); break;
    case 3: TV(3, 4); break;
    case 2: TV(2, 4); break;
    case 1: TV(1, 4); break;
    default: break;
    }
#undef TV
}

/* The VNNI tiles on qu = xq + 128 (unsigned bytes, see rows_vnni). */
static TVNNI void q8u_vnni(const cs_pmat *m, const uint8_t *qu, size_t ldq, const float *sx, const float *x,
                           size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
    const size_t KQB = 128; /* 4 panels x 128 quads = 32 KB */
    const size_t K4 = ldq / 4;
    const size_t wide = T <= 2 ? 8 : 4;
    size_t p = p0;
    while (p < p1) {
        const size_t np = p + wide <= p1 ? wide : p + 4 <= p1 ? 4 : 1;
        for (size_t kq0 = 0; kq0 < K4; kq0 += KQB) {
            const size_t kq1 = kq0 + KQB < K4 ? kq0 + KQB : K4;
            rows_vnni(m, qu, ldq, sx, T, y, ldy, p, np, kq0, kq1, kq0 == 0, kq1 == K4,
                      next_block(m->w, K4, p, np, p1, kq0, kq1));
        }
        p += np;
    }
    cs_pmat_outliers(m, x, ldx, T, y, ldy, p0, p1);
}

static TVNNI void matmul_i8_vnni(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                                 size_t p0, size_t p1) {
    size_t ldq;
    float *sx;
    int8_t *q = cs_kern_quantize(&cs_kern_avx512, m, x, ldx, T, &ldq, &sx);
    if (!q) return;
    uint8_t *qu = (uint8_t *)q;
    for (size_t i = 0; i < T * ldq; i++) qu[i] ^= 0x80; /* xq + 128 as unsigned */
    q8u_vnni(m, qu, ldq, sx, x, ldx, T, y, ldy, p0, p1);
}

/* Shared quantized rows are read only: the unsigned copy goes to this
 * thread's scratch. */
static TVNNI void matmul_q8_vnni(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x,
                                 size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
    float *unused;
    uint8_t *qu = (uint8_t *)cs_kern_qscratch(T * ldq, &unused, 0);
    if (!qu) return;
    const uint8_t *qs = (const uint8_t *)q;
    for (size_t i = 0; i < T * ldq; i++) qu[i] = qs[i] ^ 0x80;
    q8u_vnni(m, qu, ldq, sx, x, ldx, T, y, ldy, p0, p1);
}

static T512 void matmul_q8_avx512(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x,
                                  size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
    if (__builtin_cpu_supports("avx512vnni")) matmul_q8_vnni(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1);
    else cs_kern_avx2.matmul_q8(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1); /* same exact integer result */
}

static T512 void matmul_avx512(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                               size_t p0, size_t p1) {
    switch (m->dt) {
    case CS_W_F32: matmul_f32(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_BF16: matmul_bf16(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_I8:
        if (__builtin_cpu_supports("avx512vnni")) matmul_i8_vnni(m, x, ldx, T, y, ldy, p0, p1);
        else cs_kern_avx2.matmul(m, x, ldx, T, y, ldy, p0, p1); /* same exact integer result */
        break;
    }
}

/* exp(x), relative error ~2e-7 on [-87, 88]: 2^n * poly(r), r = x - n ln2. */
static INL T512 __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static INL T512 __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

static T512 void layernorm_avx512(float *y, const float *x, const float *w, const float *b, size_t C, float eps) {
    __m512 s = _mm512_setzero_ps();
    for (size_t i = 0; i < C; i += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask(C - i), x + i));
    const float mean = _mm512_reduce_add_ps(s) / (float)C;
    const __m512 mv = _mm512_set1_ps(mean);
    __m512 q = _mm512_setzero_ps();
    for (size_t i = 0; i < C; i += 16) {
        const __mmask16 mk = tail_mask(C - i);
        const __m512 d = _mm512_maskz_sub_ps(mk, _mm512_maskz_loadu_ps(mk, x + i), mv);
        q = _mm512_fmadd_ps(d, d, q);
    }
    const float rstd = 1.0f / sqrtf(_mm512_reduce_add_ps(q) / (float)C + eps);
    const __m512 rv = _mm512_set1_ps(rstd);
    for (size_t i = 0; i < C; i += 16) {
        const __mmask16 mk = tail_mask(C - i);
        const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), mv), rv);
        _mm512_mask_storeu_ps(y + i, mk,
                              _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(mk, w + i), _mm512_maskz_loadu_ps(mk, b + i)));
    }
}

/* 0.5 x (1 + tanh(u)) == x * sigmoid(2u) == x / (1 + exp(-2u)). */
static T512 void gelu_avx512(float *x, size_t n) {
    const __m512 c0 = _mm512_set1_ps(-2.0f * 0.7978845608028654f), c1 = _mm512_set1_ps(0.044715f),
                 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(mk, x + i);
        const __m512 u = _mm512_mul_ps(c0, _mm512_fmadd_ps(_mm512_mul_ps(c1, v), _mm512_mul_ps(v, v), v));
        _mm512_mask_storeu_ps(x + i, mk, _mm512_div_ps(v, _mm512_add_ps(one, exp512(u))));
    }
}

static T512 float dot_avx512(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i), _mm512_maskz_loadu_ps(mk, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static T512 void axpy_avx512(float *y, float a, const float *x, size_t n) {
    const __m512 av = _mm512_set1_ps(a);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, mk,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk, x + i), _mm512_maskz_loadu_ps(mk, y + i)));
    }
}

static T512 void softmax_avx512(float *x, size_t n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (size_t i = 0; i < n; i += 16)
        mx = _mm512_mask_max_ps(mx, tail_mask(n - i), mx, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 s = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        const __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), m)));
        _mm512_mask_storeu_ps(x + i, mk, e);
        s = _mm512_add_ps(s, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(s));
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 mk = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), inv));
    }
}

/* Attention for head sizes that are a multiple of 16 up to 128: q and the
 * output stay in registers, four key rows are dotted at once, and each value
 * row is loaded once (the generic form reloads and stores out per row). */
static INL T512 void attend_nv(const float *q, const cs_kvhead *kv, size_t n, float scale, float *att, float *out,
                               const int NV) {
    const size_t ld = kv->ld;
    __m512 qv[8], o[8];
    for (int c = 0; c < NV; c++) qv[c] = _mm512_loadu_ps(q + 16 * c);
    size_t j = 0;
    for (; j + 4 <= n; j += 4) { /* 4 | CS_KV_BLOCK: the four rows share a block */
        const float *k0 = cs_kv_krow(kv, j);
        __m512 s0 = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k0)), s1 = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k0 + ld));
        __m512 s2 = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k0 + 2 * ld));
        __m512 s3 = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k0 + 3 * ld));
        for (int c = 1; c < NV; c++) {
            s0 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + 16 * c), s0);
            s1 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + ld + 16 * c), s1);
            s2 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + 2 * ld + 16 * c), s2);
            s3 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k0 + 3 * ld + 16 * c), s3);
        }
        att[j] = _mm512_reduce_add_ps(s0) * scale;
        att[j + 1] = _mm512_reduce_add_ps(s1) * scale;
        att[j + 2] = _mm512_reduce_add_ps(s2) * scale;
        att[j + 3] = _mm512_reduce_add_ps(s3) * scale;
    }
    for (; j < n; j++) {
        const float *kj = cs_kv_krow(kv, j);
        __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kj));
        for (int c = 1; c < NV; c++) s = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kj + 16 * c), s);
        att[j] = _mm512_reduce_add_ps(s) * scale;
    }
    softmax_avx512(att, n);
    for (int c = 0; c < NV; c++) o[c] = _mm512_setzero_ps();
    for (j = 0; j < n; j++) {
        const __m512 a = _mm512_set1_ps(att[j]);
        const float *vj = cs_kv_vrow(kv, j);
        for (int c = 0; c < NV; c++) o[c] = _mm512_fmadd_ps(a, _mm512_loadu_ps(vj + 16 * c), o[c]);
    }
    for (int c = 0; c < NV; c++) _mm512_storeu_ps(out + 16 * c, o[c]);
}

static T512 void attend_avx512(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                               float *out) {
    switch (hd) {
    case 16: attend_nv(q, kv, n, scale, att, out, 1); return;
    case 32: attend_nv(q, kv, n, scale, att, out, 2); return;
    case 48: attend_nv(q, kv, n, scale, att, out, 3); return;
    case 64: attend_nv(q, kv, n, scale, att, out, 4); return;
    case 80: attend_nv(q, kv, n, scale, att, out, 5); return;
    case 96: attend_nv(q, kv, n, scale, att, out, 6); return;
    case 128: attend_nv(q, kv, n, scale, att, out, 8); return;
    default: cs_attend_generic(&cs_kern_avx512, q, kv, n, hd, scale, att, out);
    }
}

/* attend_causal: one attend call per query. The blocked form (every loaded key
 * and value shared by several queries, as the AVX2 and scalar tables do) is
 * not used here until it has been checked bit for bit against attend_nv on
 * AVX-512 hardware (tests/engine/test_attention.c). */
static T512 void attend_causal_avx512(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                                      size_t hd, float scale, float *att, float *out, size_t ldo) {
    cs_attend_causal_generic(&cs_kern_avx512, q, ldq, kv, p0, nq, hd, scale, att, out, ldo);
}

/* cs_quantize_rows with the same arithmetic (see quantize_avx2). */
static INL T512 void quantize_row_avx512(const float *xr, size_t K, const float *r, int8_t *qr, size_t ldq, float *sx,
                                         const int HR) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
#define XR16(mk, k) (HR ? _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + (k)), _mm512_maskz_loadu_ps(mk, r + (k))) \
                        : _mm512_maskz_loadu_ps(mk, xr + (k)))
    __m512 mv = _mm512_setzero_ps();
    for (size_t k = 0; k < K; k += 16) mv = _mm512_max_ps(mv, _mm512_abs_ps(XR16(tail_mask(K - k), k)));
    const float mx = _mm512_reduce_max_ps(mv);
    const float inv = mx > 0 ? 127.0f / mx : 0.0f;
    *sx = mx > 0 ? mx / 127.0f : 1.0f;
    const __m512 iv = _mm512_set1_ps(inv);
    for (size_t k = 0; k < ldq; k += 16) {
        /* past K: masked-off lanes load 0, which quantizes to the zero padding */
        const __mmask16 lm = k < K ? tail_mask(K - k) : 0;
        __m512i i = _mm512_cvtps_epi32(_mm512_mul_ps(XR16(lm, k), iv));
        i = _mm512_min_epi32(_mm512_max_epi32(i, lo), hi);
        _mm512_mask_cvtepi32_storeu_epi8(qr + k, tail_mask(ldq - k), i);
    }
#undef XR16
}

static T512 void quantize_avx512(const float *x, size_t ldx, size_t T, size_t K, const float *r, int8_t *q,
                                 size_t ldq, float *sx) {
    for (size_t t = 0; t < T; t++) {
        if (r) quantize_row_avx512(x + t * ldx, K, r, q + t * ldq, ldq, sx + t, 1);
        else quantize_row_avx512(x + t * ldx, K, NULL, q + t * ldq, ldq, sx + t, 0);
    }
}

const cs_kern cs_kern_avx512 = {
    .name = "avx512", .isa = CS_ISA_AVX512, .matmul = matmul_avx512, .matmul_q8 = matmul_q8_avx512, .layernorm = layernorm_avx512,
    .gelu_tanh = gelu_avx512, .dot = dot_avx512, .axpy = axpy_avx512, .softmax = softmax_avx512,
    .dot_bf16 = cs_dot_bf16_avx2, .axpy_bf16 = cs_axpy_bf16_avx2, .attend_bf16 = cs_attend_bf16_avx2,
    .attend_causal_bf16 = cs_attend_causal_bf16_avx2, .dot_i8 = cs_dot_i8_avx2, .axpy_i8 = cs_axpy_i8_avx2,
    .attend_i8 = cs_attend_i8_avx2, .attend_causal_i8 = cs_attend_causal_i8_avx2, .fwht = cs_fwht_avx2,
    .kv_quantize_row = cs_kv_quantize_row_avx2,
    .quantize_rows = quantize_avx512, .attend = attend_avx512, .attend_causal = attend_causal_avx512,
};

#else /* not x86-64: the table exists but cs_kern_for never returns it */
const cs_kern cs_kern_avx512 = {0};
#endif
