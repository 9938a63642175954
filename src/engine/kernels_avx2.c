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

/* fp32 and bf16 matmuls run the batch in register tiles over k-blocks: for
 * each group of panels and each block of k, every row tile of the batch runs
 * over the block while its weights are in cache. Partial sums wait in y
 * between blocks: the first block starts from zero, the others reload them,
 * the last adds the scale and bias, so every output is the same sequential
 * FMA chain over k whatever the tile shape or blocking (and a row's result
 * does not depend on the batch around it).
 * Blocks are sized for L2, not L1d: on Zen 3 the L2 streams a panel pair to
 * the FMAs fast enough, and L1d-sized blocks (64..256 k) measured 4-10%
 * slower at 64 rows (reloading partial sums, more x and y rows touched per
 * block), so a block only splits a K whose panels would crowd L2.
 * The loops over a tile's rows and columns carry "GCC unroll": unrolled that
 * early, acc[][] becomes registers; otherwise GCC keeps the array in memory
 * and stores every accumulator on every k step (12 stores per 12 FMAs),
 * which held these kernels under a third of the FMA peak. */
#define F32_KC 2048 /* k per block: a panel pair's block is 2 x 2048 x 64 B = 256 KB, half of L2 */
#define BF16_JC 1024 /* k pairs per block: 1024 x 64 B = 64 KB per bf16 panel */
#define F32_RT 3     /* rows per fp32 tile: 3 x 4 accumulators + 4 weight vectors + 1 broadcast ~ 16 ymm */
#define BF16_RT 4    /* rows per bf16 tile (one panel): 4 x 2 accumulators + raw and widened weights */

/* Accumulators of RT rows x 2*CP 8-column halves at column p*16: zero for the
 * first block, else the partial sums in y (only columns below N exist there). */
static INL T256 void acc_load(const cs_pmat *m, const float *y, size_t ldy, size_t p, int first, __m256 acc[][8],
                              const int RT, const int CP) {
    _Pragma("GCC unroll 8")
    for (int c = 0; c < 2 * CP; c++) {
        const size_t n0 = p * CS_PANEL + (size_t)c * 8;
        _Pragma("GCC unroll 8")
        for (int r = 0; r < RT; r++)
            acc[r][c] = first || n0 >= m->N ? _mm256_setzero_ps() : load_tail(y + (size_t)r * ldy + n0, m->N - n0);
    }
}

/* Stores the accumulators to y: partial sums, or after the last block the
 * result with scale (if any) and bias. */
static INL T256 void acc_store(const cs_pmat *m, float *y, size_t ldy, size_t p, int last, __m256 acc[][8],
                               const int RT, const int CP) {
    _Pragma("GCC unroll 8")
    for (int c = 0; c < 2 * CP; c++) {
        const size_t n0 = p * CS_PANEL + (size_t)c * 8;
        if (n0 >= m->N) break;
        const size_t left = m->N - n0;
        if (!last) {
            _Pragma("GCC unroll 8")
            for (int r = 0; r < RT; r++) store_tail(y + (size_t)r * ldy + n0, left, acc[r][c]);
            continue;
        }
        const __m256 sc = m->scale ? _mm256_loadu_ps(m->scale + n0) : _mm256_set1_ps(1.0f);
        const __m256 bi = m->bias ? load_tail(m->bias + n0, left) : _mm256_setzero_ps();
        _Pragma("GCC unroll 8")
        for (int r = 0; r < RT; r++) {
            __m256 v = m->scale ? _mm256_fmadd_ps(acc[r][c], sc, bi) : _mm256_add_ps(acc[r][c], bi);
            store_tail(y + (size_t)r * ldy + n0, left, v);
        }
    }
}

/* fp32 tile: RT rows x CP panels over k in [k0, k1). */
static INL T256 void tile_f32(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, size_t p,
                              size_t k0, size_t k1, const int RT, const int CP) {
    const size_t K = m->K;
    const float *w = (const float *)m->w + p * K * CS_PANEL;
    __m256 acc[F32_RT][8];
    acc_load(m, y, ldy, p, k0 == 0, acc, RT, CP);
    for (size_t k = k0; k < k1; k++) {
        __m256 wv[4];
        _Pragma("GCC unroll 8")
        for (int c = 0; c < CP; c++) {
            wv[2 * c] = LOADW_F32(w + ((size_t)c * K + k) * CS_PANEL);
            wv[2 * c + 1] = LOADW_F32(w + ((size_t)c * K + k) * CS_PANEL + 8);
        }
        _Pragma("GCC unroll 8")
        for (int r = 0; r < RT; r++) {
            const __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            _Pragma("GCC unroll 8")
            for (int c = 0; c < 2 * CP; c++) acc[r][c] = _mm256_fmadd_ps(xb, wv[c], acc[r][c]);
        }
    }
    acc_store(m, y, ldy, p, k1 == K, acc, RT, CP);
}

static INL T256 void rows_f32(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p,
                              size_t k0, size_t k1, const int CP) {
    size_t t = 0;
    for (; t + F32_RT <= T; t += F32_RT) tile_f32(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, F32_RT, CP);
    switch (T - t) {
    case 2: tile_f32(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, 2, CP); break;
    case 1: tile_f32(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, 1, CP); break;
    default: break;
    }
}

static T256 void matmul_f32(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                            size_t p1) {
    const size_t K = m->K, kc = T > F32_RT ? F32_KC : K; /* one row tile: nothing to reuse, no blocks */
    for (size_t p = p0; p < p1;) {
        const int CP = p + 2 <= p1 ? 2 : 1;
        size_t k0 = 0;
        do { /* K = 0 still takes one (empty) block, which writes the bias */
            const size_t k1 = k0 + kc < K ? k0 + kc : K;
            if (CP == 2) rows_f32(m, x, ldx, T, y, ldy, p, k0, k1, 2);
            else rows_f32(m, x, ldx, T, y, ldy, p, k0, k1, 1);
            k0 = k1;
        } while (k0 < K);
        p += (size_t)CP;
    }
}

/* bf16 (see kernels.h), on x rounded to bf16 (cs_bf16_round_rows_avx2): per
 * pair of k, even-k weights are the low half of each 32-bit lane (shift),
 * odd-k the high half (mask). A tile is RT rows x CP panels over pairs
 * [j0, j1): each panel's odd-k weights are widened once for all rows, then its
 * even-k ones, so each output gets the odd-k FMA and then the even-k FMA of
 * every pair in order: products of two bf16 are exact in fp32, so these are
 * vdpbf16ps's bits. */
static INL T256 void bf16_half(const float *x, size_t ldx, size_t k, __m256 w0, __m256 w1, __m256 acc[][8], int c,
                               const int RT) {
    _Pragma("GCC unroll 8")
    for (int r = 0; r < RT; r++) {
        const __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
        acc[r][2 * c] = _mm256_fmadd_ps(xb, w0, acc[r][2 * c]);
        acc[r][2 * c + 1] = _mm256_fmadd_ps(xb, w1, acc[r][2 * c + 1]);
    }
}

/* Pair j of CP panels (odd: also its odd k) for RT rows. */
static INL T256 void bf16_pair(const float *x, size_t ldx, const uint16_t *w, size_t K2, size_t j, int odd,
                               __m256 acc[][8], const int RT, const int CP) {
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    _Pragma("GCC unroll 8")
    for (int c = 0; c < CP; c++) {
        const uint16_t *wj = w + ((size_t)c * K2 + j) * 32;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wj);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wj + 16));
        if (odd)
            bf16_half(x, ldx, 2 * j + 1, _mm256_castsi256_ps(_mm256_and_si256(w0, hi)),
                      _mm256_castsi256_ps(_mm256_and_si256(w1, hi)), acc, c, RT);
        bf16_half(x, ldx, 2 * j, _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)),
                  _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), acc, c, RT);
    }
}

static INL T256 void tile_bf16(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, size_t p,
                               size_t j0, size_t j1, const int RT, const int CP) {
    const size_t K = m->K, K2 = (K + 1) / 2, jf = j1 < K / 2 ? j1 : K / 2; /* pairs below jf hold both k */
    const uint16_t *w = (const uint16_t *)m->w + p * K2 * 32;
    __m256 acc[BF16_RT][8];
    acc_load(m, y, ldy, p, j0 == 0, acc, RT, CP);
    size_t j = j0;
    for (; j < jf; j++) bf16_pair(x, ldx, w, K2, j, 1, acc, RT, CP);
    if (j < j1) bf16_pair(x, ldx, w, K2, j, 0, acc, RT, CP); /* odd K: the last pair has only its even k */
    const cs_pmat mb = {.N = m->N, .bias = m->bias};         /* bf16 matrices carry no scale */
    acc_store(&mb, y, ldy, p, j1 == K2, acc, RT, CP);
}

/* Rows in tiles of 4 over one panel; a batch of 1 or 2 rows takes 4 or 2
 * panels at a time instead, so a decode step still has 8 independent FMA
 * chains rather than 2 (one row on one panel is FMA-latency bound). */
static T256 void matmul_bf16(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                             size_t p0, size_t p1) {
    const size_t K2 = (m->K + 1) / 2, wide = T == 1 ? 4 : T == 2 ? 2 : 1;
    const size_t jc = T > BF16_RT ? BF16_JC : K2; /* one row tile: nothing to reuse, no blocks */
    for (size_t p = p0; p < p1;) {
        const size_t np = p + wide <= p1 ? wide : 1;
        size_t j0 = 0;
        do {
            const size_t j1 = j0 + jc < K2 ? j0 + jc : K2;
            size_t t = 0;
            if (np == 4) tile_bf16(m, x, ldx, y, ldy, p, j0, j1, 1, 4);
            else if (np == 2) tile_bf16(m, x, ldx, y, ldy, p, j0, j1, 2, 2);
            else
                for (; t + BF16_RT <= T; t += BF16_RT)
                    tile_bf16(m, x + t * ldx, ldx, y + t * ldy, ldy, p, j0, j1, BF16_RT, 1);
            const float *xt = x + t * ldx;
            float *yt = y + t * ldy;
            if (np == 1) switch (T - t) {
                case 3: tile_bf16(m, xt, ldx, yt, ldy, p, j0, j1, 3, 1); break;
                case 2: tile_bf16(m, xt, ldx, yt, ldy, p, j0, j1, 2, 1); break;
                case 1: tile_bf16(m, xt, ldx, yt, ldy, p, j0, j1, 1, 1); break;
                default: break;
                }
            j0 = j1;
        } while (j0 < K2);
        p += np;
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

static T256 void matmul_q8_avx2(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x,
                                size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
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

static T256 void matmul_i8(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                           size_t p1) {
    size_t ldq;
    float *sx;
    const int8_t *q = cs_kern_quantize(&cs_kern_avx2, m, x, ldx, T, &ldq, &sx);
    if (q) matmul_q8_avx2(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1);
}

/* cs_bf16_round (kernels.h) on 8 floats. */
static INL T256 __m256 bf16_round8(__m256 x) {
    const __m256i u = _mm256_castps_si256(x), expo = _mm256_set1_epi32(0x7F800000),
                  absm = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i up = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                                            _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), expo);
    const __m256i den = _mm256_cmpeq_epi32(_mm256_and_si256(u, expo), _mm256_setzero_si256());
    __m256i r = _mm256_blendv_epi8(up, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), nan);
    r = _mm256_blendv_epi8(r, _mm256_and_si256(u, _mm256_set1_epi32((int)0x80000000u)), den);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* Also the AVX-512 table's where the CPU lacks AVX512_BF16. */
T256 const float *cs_bf16_round_rows_avx2(const float *x, size_t ldx, size_t T, size_t K) {
    float *unused;
    float *r = (float *)(void *)cs_kern_qscratch(T * K * sizeof(float), &unused, 0);
    if (!r) return NULL;
    for (size_t t = 0; t < T; t++) {
        size_t k = 0;
        for (; k + 8 <= K; k += 8) _mm256_storeu_ps(r + t * K + k, bf16_round8(_mm256_loadu_ps(x + t * ldx + k)));
        for (; k < K; k++) r[t * K + k] = cs_bf16_round(x[t * ldx + k]);
    }
    return r;
}

static T256 void matmul_avx2(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                             size_t p0, size_t p1) {
    switch (m->dt) {
    case CS_W_F32: matmul_f32(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_BF16: {
        const float *xr = cs_bf16_round_rows_avx2(x, ldx, T, m->K);
        if (xr) matmul_bf16(m, xr, m->K, T, y, ldy, p0, p1);
        break;
    }
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

/* 8 bf16 values widened to fp32 (a bf16 is the top half of its fp32). */
static INL T256 __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
}
static INL T256 __m256 load_i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

/* Elements of a KV cache's dtype DT (cs_kvdtype, a compile-time constant in
 * every caller) widened to fp32: 8 from row + e, or the one at row[e]. */
static INL T256 size_t kv_esize(const int DT) { return DT == CS_KV_F32 ? 4 : DT == CS_KV_BF16 ? 2 : 1; }
static INL T256 __m256 kv_load8(const void *row, size_t e, const int DT) {
    if (DT == CS_KV_I8) return load_i8x8((const int8_t *)row + e);
    return DT == CS_KV_BF16 ? load_bf16x8((const uint16_t *)row + e) : _mm256_loadu_ps((const float *)row + e);
}
static INL T256 float kv_at(const void *row, size_t e, const int DT) {
    if (DT == CS_KV_I8) return (float)((const int8_t *)row)[e];
    return DT == CS_KV_BF16 ? cs_f32_from_bf16(((const uint16_t *)row)[e]) : ((const float *)row)[e];
}

/* dot and axpy with x / b in dtype DT widened on load (exact): the fp32 forms
 * are the table's dot and axpy; bf16 and int8 the same sum and chain. */
static INL T256 float dot_dt(const float *a, const void *b, size_t n, const int DT) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), kv_load8(b, i, DT), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), kv_load8(b, i + 8, DT), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), kv_load8(b, i, DT), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * kv_at(b, i, DT);
    return s;
}

static INL T256 void axpy_dt(float *y, float a, const void *x, size_t n, const int DT) {
    const __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, kv_load8(x, i, DT), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * kv_at(x, i, DT);
}

T256 float cs_dot_avx2(const float *a, const float *b, size_t n) { return dot_dt(a, b, n, CS_KV_F32); }
T256 void cs_axpy_avx2(float *y, float a, const float *x, size_t n) { axpy_dt(y, a, x, n, CS_KV_F32); }
T256 float cs_dot_bf16_avx2(const float *a, const uint16_t *b, size_t n) { return dot_dt(a, b, n, CS_KV_BF16); }
T256 void cs_axpy_bf16_avx2(float *y, float a, const uint16_t *x, size_t n) { axpy_dt(y, a, x, n, CS_KV_BF16); }
T256 float cs_dot_i8_avx2(const float *a, const int8_t *b, size_t n) { return dot_dt(a, b, n, CS_KV_I8); }
T256 void cs_axpy_i8_avx2(float *y, float a, const int8_t *x, size_t n) { axpy_dt(y, a, x, n, CS_KV_I8); }

T256 void cs_softmax_avx2(float *x, size_t n) {
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

/* attend for one query: the same dot products, softmax and weighted sum as
 * the table's dot, softmax and axpy (so the same bits as attend_causal_avx2), but
 * without a call per key: four keys' scores share each load of q, and the
 * weighted sum of values keeps up to 64 output floats in registers over all
 * keys (axpy's per-element FMA chain in key order). DT bf16: the cache holds bf16,
 * widened on load (exact), so the bits are those of the fp32 kernel over the
 * rounded cache and of dot_bf16 / axpy_bf16 key by key; this reads half the
 * bytes per key, which is what decode attention over long contexts waits on.
 * DT int8: rows widened the same way, each row's scale applied once (a
 * quarter of fp32's bytes); the bits of cs_attend_i8_generic over this
 * table's dot_i8 / axpy_i8. */
/* Key (V = 0) or value (V = 1) row j through kernels.h's block-table lookup.
 * DT is the cache's cs_kvdtype, a compile-time constant in every caller. */
static INL T256 const void *kv_row(const cs_kvhead *kv, const int V, size_t j, const int DT) {
    if (DT == CS_KV_I8) return V ? (const void *)cs_kv_vrow8(kv, j) : (const void *)cs_kv_krow8(kv, j);
    if (DT == CS_KV_BF16) return V ? (const void *)cs_kv_vrow16(kv, j) : (const void *)cs_kv_krow16(kv, j);
    return V ? (const void *)cs_kv_vrow(kv, j) : (const void *)cs_kv_krow(kv, j);
}
static INL T256 const void *kv_next(const void *row, size_t ld, const int DT) { /* the row below, same block */
    return (const char *)row + ld * kv_esize(DT);
}
/* A key row's score from its dot product (int8: times the row's scale first,
 * as cs_attend_i8_generic), and a value row's weight from its probability. */
static INL T256 float kv_score(float dot, const void *row, size_t hd, float scale, const int DT) {
    return DT == CS_KV_I8 ? dot * cs_kv_row_scale((const int8_t *)row, hd) * scale : dot * scale;
}
static INL T256 float kv_weight(float a, const void *row, size_t hd, const int DT) {
    return DT == CS_KV_I8 ? a * cs_kv_row_scale((const int8_t *)row, hd) : a;
}

/* Prefetches the lines of cached key or value row j (elements [e0, e1); an
 * int8 row's scale too when e1 = hd) when j < n, into L1 (far = 0) or L2.
 * A block's rows of one head are their own 2-4 KiB, blocks lie wherever the
 * pool put them, and the hardware's stream prefetchers stop at page
 * boundaries, so without this every block began with misses to memory. The
 * decode kernels ask for each row twice: one block ahead into L1 and three
 * blocks ahead into L2 (KV_FAR), so that more misses are in flight than L1's
 * fill buffers allow. Decode attention of 32 sequences x 12 heads x 6 layers
 * (one thread, blocks interleaved as lockstep sequences allocate them; Zen 4
 * EPYC, 3 runs each, ms): 256 positions fp32 29-33 -> 21-22, bf16 14.5-16 ->
 * 11-12, int8 10-11 -> 8-11; 1,024 positions fp32 122-131 -> 73-85, bf16
 * 59-63 -> 42-49 (one block ahead into L1 alone, on Zen 3 before: 35-42 ->
 * ~30 ms fp32 and 26-31 -> 18-20 bf16 at 256 positions, against none). */
#define KV_FAR (3 * CS_KV_BLOCK)
static INL T256 void kv_prefetch(const cs_kvhead *kv, const int V, size_t j, size_t n, size_t e0, size_t e1,
                                 const int DT, const int far) {
    if (j >= n) return;
    const char *r = (const char *)kv_row(kv, V, j, DT);
    const size_t b1 = e1 * kv_esize(DT) + (DT == CS_KV_I8 ? sizeof(float) : 0);
    for (size_t b = e0 * kv_esize(DT); b < b1; b += 64) {
        if (far) _mm_prefetch(r + b, _MM_HINT_T1);
        else _mm_prefetch(r + b, _MM_HINT_T0);
    }
    if (DT == CS_KV_I8) { /* the line the scale ends in */
        if (far) _mm_prefetch(r + b1 - 1, _MM_HINT_T1);
        else _mm_prefetch(r + b1 - 1, _MM_HINT_T0);
    }
}

/* The next head's four rows after row (and the three below it, same block)
 * into L2: the forward pass calls attend head by head, and the next head's
 * rows lie right after this head's in every block (kvpool.h), so the next
 * call reads L2, not DRAM (as kernels_avx512.c's attend_z; after the last
 * head these lines are the next layer's or past the block: wasted, and a
 * prefetch does not fault). */
static INL T256 void kv_prefetch_next_head(const void *row, size_t ld, const int DT) {
    const size_t rb = ld * kv_esize(DT);
    const char *p = (const char *)row + CS_KV_BLOCK * rb;
    for (size_t o = 0; o < 4 * rb; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

static INL T256 void attend_scores_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                                        float *att, const int DT) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) { /* 4 | CS_KV_BLOCK: the four rows share a block */
        const void *k0 = kv_row(kv, 0, j, DT), *k1 = kv_next(k0, kv->ld, DT), *k2 = kv_next(k1, kv->ld, DT),
                   *k3 = kv_next(k2, kv->ld, DT);
        for (size_t r = 0; r < 4; r++) {
            kv_prefetch(kv, 0, j + CS_KV_BLOCK + r, n, 0, hd, DT, 0);
            kv_prefetch(kv, 0, j + KV_FAR + r, n, 0, hd, DT, 1);
        }
        kv_prefetch_next_head(k0, kv->ld, DT);
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        size_t e = 0;
        for (; e + 16 <= hd; e += 16) {
            const __m256 qa = _mm256_loadu_ps(q + e), qb = _mm256_loadu_ps(q + e + 8);
            a0 = _mm256_fmadd_ps(qa, kv_load8(k0, e, DT), a0);
            b0 = _mm256_fmadd_ps(qb, kv_load8(k0, e + 8, DT), b0);
            a1 = _mm256_fmadd_ps(qa, kv_load8(k1, e, DT), a1);
            b1 = _mm256_fmadd_ps(qb, kv_load8(k1, e + 8, DT), b1);
            a2 = _mm256_fmadd_ps(qa, kv_load8(k2, e, DT), a2);
            b2 = _mm256_fmadd_ps(qb, kv_load8(k2, e + 8, DT), b2);
            a3 = _mm256_fmadd_ps(qa, kv_load8(k3, e, DT), a3);
            b3 = _mm256_fmadd_ps(qb, kv_load8(k3, e + 8, DT), b3);
        }
        for (; e + 8 <= hd; e += 8) {
            const __m256 qa = _mm256_loadu_ps(q + e);
            a0 = _mm256_fmadd_ps(qa, kv_load8(k0, e, DT), a0);
            a1 = _mm256_fmadd_ps(qa, kv_load8(k1, e, DT), a1);
            a2 = _mm256_fmadd_ps(qa, kv_load8(k2, e, DT), a2);
            a3 = _mm256_fmadd_ps(qa, kv_load8(k3, e, DT), a3);
        }
        float s0 = hsum256(_mm256_add_ps(a0, b0)), s1 = hsum256(_mm256_add_ps(a1, b1));
        float s2 = hsum256(_mm256_add_ps(a2, b2)), s3 = hsum256(_mm256_add_ps(a3, b3));
        for (; e < hd; e++) {
            s0 += q[e] * kv_at(k0, e, DT);
            s1 += q[e] * kv_at(k1, e, DT);
            s2 += q[e] * kv_at(k2, e, DT);
            s3 += q[e] * kv_at(k3, e, DT);
        }
        att[j] = kv_score(s0, k0, hd, scale, DT);
        att[j + 1] = kv_score(s1, k1, hd, scale, DT);
        att[j + 2] = kv_score(s2, k2, hd, scale, DT);
        att[j + 3] = kv_score(s3, k3, hd, scale, DT);
    }
    for (; j < n; j++) {
        const void *kj = kv_row(kv, 0, j, DT);
        const float d = DT == CS_KV_I8    ? cs_dot_i8_avx2(q, (const int8_t *)kj, hd)
                        : DT == CS_KV_BF16 ? cs_dot_bf16_avx2(q, (const uint16_t *)kj, hd)
                                           : cs_dot_avx2(q, (const float *)kj, hd);
        att[j] = kv_score(d, kj, hd, scale, DT);
    }
}

/* out[e0 .. e0 + 8 NV) = sum over keys of att[j] v_j, in key order. */
static INL T256 void attend_pv_avx2(const float *att, const cs_kvhead *kv, size_t n, size_t hd, size_t e0,
                                    float *out, const int NV, const int DT) {
    __m256 o[8];
    for (int c = 0; c < NV; c++) o[c] = _mm256_setzero_ps();
    for (size_t j = 0; j < n; j++) {
        const void *vj = kv_row(kv, 1, j, DT);
        const __m256 a = _mm256_set1_ps(kv_weight(att[j], vj, hd, DT));
        kv_prefetch(kv, 1, j + CS_KV_BLOCK, n, e0, e0 + 8 * (size_t)NV, DT, 0);
        kv_prefetch(kv, 1, j + KV_FAR, n, e0, e0 + 8 * (size_t)NV, DT, 1);
        if (e0 == 0 && j % 4 == 0) kv_prefetch_next_head(vj, kv->ld, DT);
        for (int c = 0; c < NV; c++) o[c] = _mm256_fmadd_ps(a, kv_load8(vj, e0 + 8 * (size_t)c, DT), o[c]);
    }
    for (int c = 0; c < NV; c++) _mm256_storeu_ps(out + e0 + 8 * c, o[c]);
}

static INL T256 void attend_any_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                                     float *att, float *out, const int DT) {
    attend_scores_avx2(q, kv, n, hd, scale, att, DT);
    cs_softmax_avx2(att, n);
    size_t e = 0;
    for (; e + 64 <= hd; e += 64) attend_pv_avx2(att, kv, n, hd, e, out, 8, DT);
    switch ((hd - e) / 8) {
    case 7: attend_pv_avx2(att, kv, n, hd, e, out, 7, DT); break;
    case 6: attend_pv_avx2(att, kv, n, hd, e, out, 6, DT); break;
    case 5: attend_pv_avx2(att, kv, n, hd, e, out, 5, DT); break;
    case 4: attend_pv_avx2(att, kv, n, hd, e, out, 4, DT); break;
    case 3: attend_pv_avx2(att, kv, n, hd, e, out, 3, DT); break;
    case 2: attend_pv_avx2(att, kv, n, hd, e, out, 2, DT); break;
    case 1: attend_pv_avx2(att, kv, n, hd, e, out, 1, DT); break;
    }
    e += (hd - e) / 8 * 8;
    for (; e < hd; e++) { /* axpy_avx2's scalar tail, key by key */
        float o = 0;
        for (size_t j = 0; j < n; j++) {
            const void *vj = kv_row(kv, 1, j, DT);
            o += kv_weight(att[j], vj, hd, DT) * kv_at(vj, e, DT);
        }
        out[e] = o;
    }
}

T256 void cs_attend_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                             float *out) {
    attend_any_avx2(q, kv, n, hd, scale, att, out, CS_KV_F32);
}

/* Same sums, bf16 widened on load. The AVX-512 table's decode kernel
 * (kernels_avx512.c, attend_z) gives these bits, and falls back to this one
 * for head sizes that are not multiples of 16 up to 128. */
T256 void cs_attend_bf16_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                              float *out) {
    attend_any_avx2(q, kv, n, hd, scale, att, out, CS_KV_BF16);
}

/* attend_causal in blocks of up to ATT_QB queries that share every key and
 * value vector they load (attend reloads both once per query, and calls dot
 * and axpy once per key). For each (query, key) the score is cs_dot_avx2's sum
 * (two 8-lane chains over 16-float steps, one more 8-float step, hsum256, the
 * scalar tail), cs_softmax_avx2 is the same call, and each output element is
 * cs_axpy_avx2's chain over keys (FMA on the first hd / 8 * 8 elements, multiply
 * then add past them), so the bits are cs_attend_avx2's. */
#define ATT_QB 6

/* Scores of NB queries (qi) against key row kj (of the cache's dtype DT). */
static INL T256 void scores_avx2(const float *const *qi, const void *kj, size_t hd, float scale, float *sc,
                                 const int NB, const int DT) {
    __m256 s0[ATT_QB], s1[ATT_QB];
    for (int i = 0; i < NB; i++) s0[i] = s1[i] = _mm256_setzero_ps();
    size_t e = 0;
    for (; e + 16 <= hd; e += 16) {
        const __m256 k0 = kv_load8(kj, e, DT), k1 = kv_load8(kj, e + 8, DT);
        for (int i = 0; i < NB; i++) {
            s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e), k0, s0[i]);
            s1[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e + 8), k1, s1[i]);
        }
    }
    for (; e + 8 <= hd; e += 8) {
        const __m256 k0 = kv_load8(kj, e, DT);
        for (int i = 0; i < NB; i++) s0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qi[i] + e), k0, s0[i]);
    }
    for (int i = 0; i < NB; i++) {
        float s = hsum256(_mm256_add_ps(s0[i], s1[i]));
        for (size_t t = e; t < hd; t++) s += qi[i][t] * kv_at(kj, t, DT);
        sc[i] = kv_score(s, kj, hd, scale, DT);
    }
}

/* Columns [e, e + 8 NV) of the NB outputs: query i weighs value rows
 * 0 .. last + i by its probabilities ai[i]. */
static INL T256 void pv_avx2(float *const *ai, const cs_kvhead *kv, size_t last, float *const *oi, size_t hd,
                             size_t e, const int NB, const int NV, const int DT) {
    __m256 o[ATT_QB][2];
    for (int i = 0; i < NB; i++) o[i][0] = o[i][1] = _mm256_setzero_ps();
    for (size_t j = 0; j <= last; j++) { /* keys every query sees */
        const void *vj = kv_row(kv, 1, j, DT);
        const __m256 v0 = kv_load8(vj, e, DT), v1 = NV > 1 ? kv_load8(vj, e + 8, DT) : v0;
        for (int i = 0; i < NB; i++) {
            const __m256 a = _mm256_set1_ps(kv_weight(ai[i][j], vj, hd, DT));
            o[i][0] = _mm256_fmadd_ps(a, v0, o[i][0]);
            if (NV > 1) o[i][1] = _mm256_fmadd_ps(a, v1, o[i][1]);
        }
    }
    for (int t = 1; t < NB; t++) { /* the causal triangle: key last + t for queries t.. */
        const void *vj = kv_row(kv, 1, last + (size_t)t, DT);
        const __m256 v0 = kv_load8(vj, e, DT), v1 = NV > 1 ? kv_load8(vj, e + 8, DT) : v0;
        for (int i = 0; i < NB; i++) {
            if (i < t) continue;
            const __m256 a = _mm256_set1_ps(kv_weight(ai[i][last + (size_t)t], vj, hd, DT));
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
                                       float scale, float *att, size_t la, float *out, size_t ldo, const int NB,
                                       const int DT) {
    const float *qi[ATT_QB];
    float *ai[ATT_QB], *oi[ATT_QB], sc[ATT_QB];
    for (int i = 0; i < NB; i++) {
        qi[i] = q + (size_t)i * ldq;
        ai[i] = att + (size_t)i * la;
        oi[i] = out + (size_t)i * ldo;
    }
    for (size_t j = 0; j <= last; j++) {
        scores_avx2(qi, kv_row(kv, 0, j, DT), hd, scale, sc, NB, DT);
        for (int i = 0; i < NB; i++) ai[i][j] = sc[i];
    }
    for (int t = 1; t < NB; t++) { /* the triangle: scores past a query's position are dropped */
        scores_avx2(qi, kv_row(kv, 0, last + (size_t)t, DT), hd, scale, sc, NB, DT);
        for (int i = t; i < NB; i++) ai[i][last + (size_t)t] = sc[i];
    }
    for (int i = 0; i < NB; i++) cs_softmax_avx2(ai[i], last + (size_t)i + 1);
    size_t e = 0;
    for (; e + 16 <= hd; e += 16) pv_avx2(ai, kv, last, oi, hd, e, NB, 2, DT);
    for (; e + 8 <= hd; e += 8) pv_avx2(ai, kv, last, oi, hd, e, NB, 1, DT);
    for (; e < hd; e++) /* axpy_avx2's scalar tail */
        for (int i = 0; i < NB; i++) {
            float o = 0;
            for (size_t j = 0; j <= last + (size_t)i; j++) {
                const void *vj = kv_row(kv, 1, j, DT);
                o += kv_weight(ai[i][j], vj, hd, DT) * kv_at(vj, e, DT);
            }
            oi[i][e] = o;
        }
}

static INL T256 void causal_any_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                                     float scale, float *att, float *out, size_t ldo, const int DT) {
    const size_t la = p0 + nq;
    for (size_t b = 0; b < nq; b += ATT_QB) {
        const float *qb = q + b * ldq;
        float *ab = att + b * la, *ob = out + b * ldo;
        switch (nq - b < ATT_QB ? nq - b : ATT_QB) {
        case 6: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 6, DT); break;
        case 5: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 5, DT); break;
        case 4: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 4, DT); break;
        case 3: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 3, DT); break;
        case 2: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 2, DT); break;
        default: causal_block_avx2(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 1, DT); break;
        }
    }
}

T256 void cs_attend_causal_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                                    size_t hd, float scale, float *att, float *out, size_t ldo) {
    causal_any_avx2(q, ldq, kv, p0, nq, hd, scale, att, out, ldo, CS_KV_F32);
}

/* Also the AVX-512 table's: the bits of cs_attend_bf16_avx2 per query. */
T256 void cs_attend_causal_bf16_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                                     size_t hd, float scale, float *att, float *out, size_t ldo) {
    causal_any_avx2(q, ldq, kv, p0, nq, hd, scale, att, out, ldo, CS_KV_BF16);
}

/* cs_fwht's butterflies: spans 1, 2 and 4 inside each 8-float vector (the
 * partner lanes swapped in, sums kept in the low lane of each pair and
 * low - high differences in the high one), then spans of 8 and more between
 * vectors; each output is the same add or subtract of the same two values as
 * in the scalar form. Also the AVX-512 table's. */
T256 void cs_fwht_avx2(float *x, size_t n, float post) {
    if (n < 8) {
        cs_fwht(x, n, post);
        return;
    }
    for (size_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), sw;
        sw = _mm256_permute_ps(v, 0xB1); /* span 1 */
        v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xAA);
        sw = _mm256_permute_ps(v, 0x4E); /* span 2 */
        v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xCC);
        sw = _mm256_permute2f128_ps(v, v, 0x01); /* span 4 */
        v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xF0);
        _mm256_storeu_ps(x + i, v);
    }
    for (size_t h = 8; h < n; h *= 2)
        for (size_t i = 0; i < n; i += 2 * h)
            for (size_t j = i; j < i + h; j += 8) {
                const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
            }
    if (post != 1.0f) {
        const __m256 p = _mm256_set1_ps(post);
        for (size_t i = 0; i < n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), p));
    }
}

/* cs_kv_quantize_row with the same arithmetic: the largest magnitude (exact
 * in any order), 127 / max, and x * inv rounded by adding and taking away
 * 1.5 * 2^23 (no FMA). Rows that are not finite or below 1e-30 go to the
 * scalar form. Also the AVX-512 table's. */
T256 void cs_kv_quantize_row_avx2(const float *x, size_t hd, int8_t *row) {
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    __m256 mv = zero, bad = zero; /* bad: x * 0 is NaN for inf and NaN */
    size_t e = 0;
    for (; e + 8 <= hd; e += 8) {
        const __m256 v = _mm256_loadu_ps(x + e);
        mv = _mm256_max_ps(mv, _mm256_andnot_ps(sign, v));
        bad = _mm256_add_ps(bad, _mm256_mul_ps(v, zero));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    int finite = hsum256(bad) == 0.0f;
    for (size_t t = e; t < hd; t++) {
        finite &= isfinite(x[t]) != 0;
        mx = fmaxf(mx, fabsf(x[t]));
    }
    if (!finite || mx < 1e-30f) {
        cs_kv_quantize_row(x, hd, row);
        return;
    }
    const float inv = 127.0f / mx, s = mx / 127.0f, magic = 12582912.0f;
    const __m256 iv = _mm256_set1_ps(inv), mg = _mm256_set1_ps(magic);
    for (e = 0; e + 8 <= hd; e += 8) {
        const __m256 v = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + e), iv), mg), mg);
        const __m256i i = _mm256_cvtps_epi32(v); /* integral already: exact */
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(void *)(row + e), _mm_packs_epi16(w, w));
    }
    for (; e < hd; e++) {
        const float v = (x[e] * inv + magic) - magic;
        row[e] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
    memcpy(row + hd, &s, sizeof s);
}

/* int8 rows widened on load, each row's scale applied once (to its dot
 * product, or to its probability); the AVX-512 table's fallback, as above. */
T256 void cs_attend_i8_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                            float *out) {
    attend_any_avx2(q, kv, n, hd, scale, att, out, CS_KV_I8);
}

T256 void cs_attend_causal_i8_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                                   float scale, float *att, float *out, size_t ldo) {
    causal_any_avx2(q, ldq, kv, p0, nq, hd, scale, att, out, ldo, CS_KV_I8);
}

const cs_kern cs_kern_avx2 = {
    .name = "avx2", .isa = CS_ISA_AVX2, .matmul = matmul_avx2, .matmul_q8 = matmul_q8_avx2, .layernorm = layernorm_avx2,
    .gelu_tanh = gelu_avx2, .dot = cs_dot_avx2, .axpy = cs_axpy_avx2, .softmax = cs_softmax_avx2,
    .quantize_rows = quantize_avx2, .attend = cs_attend_avx2, .attend_causal = cs_attend_causal_avx2,
    .dot_bf16 = cs_dot_bf16_avx2, .axpy_bf16 = cs_axpy_bf16_avx2, .attend_bf16 = cs_attend_bf16_avx2,
    .attend_causal_bf16 = cs_attend_causal_bf16_avx2, .dot_i8 = cs_dot_i8_avx2, .axpy_i8 = cs_axpy_i8_avx2,
    .attend_i8 = cs_attend_i8_avx2, .attend_causal_i8 = cs_attend_causal_i8_avx2, .fwht = cs_fwht_avx2,
    .kv_quantize_row = cs_kv_quantize_row_avx2,
};

#else
const cs_kern cs_kern_avx2 = {0};
#endif
