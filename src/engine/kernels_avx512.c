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

static INL T512 __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* Every packed format stores a panel as R rows of 64 bytes (fp32: one k, bf16:
 * a k pair, int8: a k quad). The weight block after rows [r0, r1) of panels
 * [p, p + np) is the same panels further on, else the next np panels from row
 * 0; NULL past p1 or where that block would be shorter, and for T <
 * PF_MIN_ROWS input rows: there a step reads each weight line once, for a
 * row or two, at the DRAM's pace, and the hardware's stream prefetchers alone
 * keep up better than with the next block's lines asked for on top of them.
 * Zen 5 EPYC, 2 threads, distilgpt2 decode tok/s, prefetch on / off,
 * alternated: B = 1 (3 rounds) fp32 93-103 / 112-167, bf16 170-259 /
 * 198-243, int8 332-424 / 440-619; B = 2 (4 rounds, 128 steps) fp32 171-199
 * / 213-290, int8 661-876 / 870-1,097; B = 4 fp32 354-477 / 401-534, int8
 * 1,211-1,611 / 1,444-1,620; B = 8 fp32 676-836 / 732-899 but int8
 * 2,405-2,905 / 2,313-2,459, and from B = 16 the prefetch pays in every
 * dtype (int8 B = 16 4,469-5,272 / 3,607-3,750, bf16 B = 32 3,192-3,801 /
 * 2,770-2,956). */
#define PF_MIN_ROWS 5
static INL const char *next_block(size_t T, const void *w, size_t R, size_t p, size_t np, size_t p1, size_t r0,
                                  size_t r1) {
    if (T < PF_MIN_ROWS) return NULL;
    const size_t pn = r1 < R ? p : p + np, rn = r1 < R ? r1 : 0;
    return pn + np <= p1 && rn + (r1 - r0) <= R ? (const char *)w + (pn * R + rn) * 64 : NULL;
}

/* The next block's prefetch into L2, shared by the n row tiles that work on
 * the block before it: its 64-byte lines in row order (row i of each of the
 * CP panels, then row i + 1), tile j taking lines j, j + n, j + 2n, ... as it
 * reaches their rows. Issued all by the first tile, the block's misses came
 * in one burst and a step stalled on them; spread over the block's whole
 * time, one thread, T = 32 rows, 2 MB pages, 5 runs each (Zen 4 EPYC): the
 * int8 LM head (39 MB, beyond L3) 313-352 -> 353-376 GOP/s, without any
 * prefetch 310-333; distilgpt2's other matrices cycled from 12 copies
 * 378-381 -> 371-394. Two blocks ahead was no better. */
typedef struct {
    const char *pf; /* the next block, or NULL: no prefetch */
    size_t next, n; /* this tile's next line; the number of tiles sharing */
} pf_share;
static INL void prefetch_step(pf_share *s, size_t R, int CP, size_t i) {
    if (!s->pf) return;
    for (; s->next < (i + 1) * (size_t)CP; s->next += s->n)
        _mm_prefetch(s->pf + ((s->next % (size_t)CP) * R + s->next / (size_t)CP) * 64, _MM_HINT_T1);
}

/* Register tile: RT rows of x times CP panels (16 columns each) over k in
 * [k0, k1). Accumulators start at zero (first) or from the partial sums left in
 * y by the previous k-block; the last block applies scale and bias. Every
 * output element is the same sequential FMA chain over k whatever the tile
 * shape or blocking, so a row's result does not depend on the batch around it. */
#define DEFINE_TILE(S, TYPE, LOADW, KB)                                                               \
    static INL T512 void tile_##S(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, \
                                  size_t p, size_t k0, size_t k1, int first, int last, const int RT,   \
                                  const int CP, pf_share pf) {                                         \
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
            prefetch_step(&pf, K, CP, k - k0);                                                        \
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
        size_t t = 0, j = 0;                                                                          \
        if (np == 8) {                                                                                \
            const size_t n = (T + 1) / 2;                                                             \
            for (; t + 2 <= T; t += 2) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 2, 8, (pf_share){pf, j++, n}); \
            if (t < T) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 1, 8, (pf_share){pf, j, n}); \
            return;                                                                                   \
        }                                                                                             \
        if (np == 1) {                                                                                \
            const pf_share none = {NULL, 0, 1};                                                       \
            for (; t + 6 <= T; t += 6) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 6, 1, none); \
            for (; t < T; t++) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 1, 1, none); \
            return;                                                                                   \
        }                                                                                             \
        const size_t n = (T + 5) / 6;                                                                 \
        for (; t + 6 <= T; t += 6) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, k0, k1, first, last, 6, 4, (pf_share){pf, j++, n}); \
        const float *xt = x + t * ldx;                                                                \
        float *yt = y + t * ldy;                                                                      \
        const pf_share last_pf = {pf, j, n};                                                          \
        switch (T - t) {                                                                              \
        case 5: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 5, 4, last_pf); break;          \
        case 4: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 4, 4, last_pf); break;          \
        case 3: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 3, 4, last_pf); break;          \
        case 2: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 2, 4, last_pf); break;          \
        case 1: tile_##S(m, xt, ldx, yt, ldy, p, k0, k1, first, last, 1, 4, last_pf); break;          \
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
                         next_block(T, m->w, K, p, np, p1, k0, k1));                                  \
            }                                                                                         \
            p += np;                                                                                  \
        }                                                                                             \
    }

/* k-blocks of 768 (4 panels x 768 x 64 B = 192 KB of weights, reused from L2
 * by every row tile; K = 768 is one block): blocks of 128 (~32 KB, meant for
 * L1, which the rows of x share) reloaded partial sums at every edge and ran
 * slower once the weights sat in 2 MB pages (gpt2.c): one thread, 3 runs,
 * weights streamed from 12 copies, T = 32 84-94 -> 95-103 GFLOP/s, T = 64
 * 97-99 -> 104-107; in cache, T = 64, the LM head 95 -> 104-105. */
DEFINE_TILE(f32, float, LOADW_F32, 768)

/* bf16 without AVX512_BF16 (see kernels.h), on x already rounded to bf16: per
 * pair of k, the odd-k weights of 4 panels are widened (mask) and used by
 * every row, then the even-k ones (shift): one integer op per 16 weights, and
 * vdpbf16ps's order (odd k, then even k) in FMAs of exact products. */
#define BF16_HALF(H, SHIFT)                                                                        \
    if ((H) == 0 || 2 * j + 1 < K) {                                                                \
        for (int c = 0; c < CP; c++) wv[c] = SHIFT;                                                   \
        for (int r = 0; r < RT; r++) {                                                              \
            const __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + 2 * j + (H)]);                      \
            for (int c = 0; c < CP; c++) acc[r][c] = _mm512_fmadd_ps(xb, wv[c], acc[r][c]);         \
        }                                                                                           \
    }

static INL T512 void tile_bf16(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, size_t p,
                               size_t j0, size_t j1, int first, int last, const int RT, const int CP, pf_share pf) {
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
        prefetch_step(&pf, K2, CP, j - j0);
        __m512 wv[4];
        for (int c = 0; c < CP; c++) raw[c] = _mm512_loadu_si512((const void *)(w + ((size_t)c * K2 + j) * 32));
        BF16_HALF(1, _mm512_castsi512_ps(_mm512_and_si512(raw[c], hi)))
        BF16_HALF(0, _mm512_castsi512_ps(_mm512_slli_epi32(raw[c], 16)))
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
            const char *pf = np == 4 ? next_block(T, m->w, K2, p, 4, p1, j0, j1) : NULL;
            size_t t = 0, pj = 0;
            const size_t pn = (T + 5) / 6;
#define TB(rt, cp) tile_bf16(m, x + t * ldx, ldx, y + t * ldy, ldy, p, j0, j1, first, last, rt, cp, (pf_share){pf, pj++, pn})
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

static unsigned avx512_cap = ~0u;
void cs_kern_avx512_cap(unsigned features) { avx512_cap = features; }
static int has(unsigned feature) {
    if (!(avx512_cap & feature)) return 0;
    return feature == CS_AVX512_VNNI ? __builtin_cpu_supports("avx512vnni") : __builtin_cpu_supports("avx512bf16");
}

/* Dot-product tiles. vpdpbusd (AVX512_VNNI) and vdpbf16ps (AVX512_BF16) both
 * take one 4-byte group of activations per step (4 unsigned bytes / 2 bf16)
 * broadcast against a 64-byte weight row per panel (16 columns x the same
 * group of k), and the int8 and bf16 packings are exactly that shape: panel
 * p, step s at byte (p * S + s) * 64, S steps per column (K4 quads or K2
 * pairs). One tile serves both; partial sums between k-blocks are kept in y
 * as raw 32-bit lanes (int32 or fp32 bits).
 *   int8: vpdpbusd multiplies the activation bytes xq + 128 with the signed
 *     weight bytes and adds into int32; 128 * colsum[n] removes the offset,
 *     so the sum is exactly sum xq * q (kernels.h).
 *   bf16: vdpbf16ps adds x[k+1] w[k+1], then x[k] w[k], each exact product
 *     with one rounding: kernels.h's bf16 order, which the other tables
 *     compute with FMA. */
#define TDOT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512vnni,avx512bf16")))
enum { DOT_I8, DOT_BF16 };
/* acc += dot(a, w) in place. GCC 12 compiles the intrinsics on an array of
 * accumulators into a register copy per instruction, and with every tile
 * shape inlined into one caller it kept the accumulators on the stack (the
 * int8 kernel ran at ~45% of vpdpbusd's rate); the instruction with its
 * accumulator as an in-out operand, in one function per tile shape, keeps
 * the tile in registers. */
#define DOT_STEP(OP, acc, a, w)                                                        \
    do {                                                                               \
        __m512i a_ = (acc);                                                            \
        if ((OP) == DOT_I8) __asm__("vpdpbusd %2, %1, %0" : "+v"(a_) : "v"(a), "v"(w)); \
        else __asm__("vdpbf16ps %2, %1, %0" : "+v"(a_) : "v"(a), "v"(w));              \
        (acc) = a_;                                                                    \
    } while (0)

static INL TDOT void tile_dot(const cs_pmat *m, const uint8_t *a, size_t lda, const float *sx, float *y, size_t ldy,
                              size_t p, size_t s0, size_t s1, int first, int last, const int RT, const int CP,
                              const int OP, pf_share pf) {
    const size_t S = lda / 4;
    const uint8_t *w = (const uint8_t *)m->w + p * S * 64;
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
    for (size_t s = s0; s < s1; s++) {
        __m512i wv[8];
        prefetch_step(&pf, S, CP, s - s0);
        for (int c = 0; c < CP; c++) wv[c] = _mm512_loadu_si512((const void *)(w + ((size_t)c * S + s) * 64));
        for (int r = 0; r < RT; r++) {
            int32_t a4;
            memcpy(&a4, a + (size_t)r * lda + 4 * s, 4);
            const __m512i ab = _mm512_set1_epi32(a4);
            for (int c = 0; c < CP; c++) DOT_STEP(OP, acc[r][c], ab, wv[c]);
        }
    }
    for (int c = 0; c < CP; c++) {
        const size_t n0 = (p + (size_t)c) * CS_PANEL;
        if (!last) {
            for (int r = 0; r < RT; r++) _mm512_mask_storeu_epi32(y + (size_t)r * ldy + n0, mk[c], acc[r][c]);
            continue;
        }
        const __m512 bi = m->bias ? _mm512_maskz_loadu_ps(mk[c], m->bias + n0) : _mm512_setzero_ps();
        if (OP == DOT_BF16) { /* bf16 matrices carry no scale */
            for (int r = 0; r < RT; r++)
                _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk[c], _mm512_add_ps(_mm512_castsi512_ps(acc[r][c]), bi));
            continue;
        }
        const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(m->colsum + n0)), 7);
        const __m512 sc = _mm512_loadu_ps(m->scale + n0);
        for (int r = 0; r < RT; r++) {
            const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], off));
            const __m512 v = _mm512_add_ps(_mm512_mul_ps(f, _mm512_mul_ps(_mm512_set1_ps(sx[r]), sc)), bi);
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk[c], v);
        }
    }
}

#define TILE_DOT_FN(op, OP, rt, cp)                                                                          \
    static __attribute__((noinline)) TDOT void tile_##op##_##rt##x##cp(                                       \
        const cs_pmat *m, const uint8_t *a, size_t lda, const float *sx, float *y, size_t ldy, size_t p,      \
        size_t s0, size_t s1, int first, int last, const char *pf, size_t pj, size_t pn) {                    \
        tile_dot(m, a, lda, sx, y, ldy, p, s0, s1, first, last, rt, cp, OP, (pf_share){pf, pj, pn});          \
    }
#define TILE_DOT_FNS(op, OP)                                                                                 \
    TILE_DOT_FN(op, OP, 2, 8) TILE_DOT_FN(op, OP, 1, 8) TILE_DOT_FN(op, OP, 6, 1) TILE_DOT_FN(op, OP, 1, 1)  \
    TILE_DOT_FN(op, OP, 6, 4) TILE_DOT_FN(op, OP, 5, 4) TILE_DOT_FN(op, OP, 4, 4) TILE_DOT_FN(op, OP, 3, 4)  \
    TILE_DOT_FN(op, OP, 2, 4) TILE_DOT_FN(op, OP, 1, 4)
TILE_DOT_FNS(i8, DOT_I8)
TILE_DOT_FNS(dbf16, DOT_BF16)

/* Rows in tiles of up to 6 over 4 panels, or 1-2 rows over 8 panels so a
 * decode step still has 8 independent chains; steps in blocks of 384 (4
 * panels x 384 x 64 B = 96 KB of weights, reused from L2 by every row tile;
 * K = 768 is one block for int8 and bf16 alike, so no partial sums go through
 * y). Blocks of 128 (32 KB, meant for L1, which the activations share) were
 * slower: one thread, weights cycled from 12 copies beyond L3, 3 runs each
 * (Zen 4 EPYC), int8 T = 32 291-337 -> 336-353 GOP/s, T = 64 337-356 ->
 * 354-377; bf16 T = 32 159-188 -> 195-196, T = 64 186-188 -> 200-211. */
/* The number of row tiles DEFINE_MATMUL_DOT's 4-panel loop uses for T rows. */
static size_t row_tiles(size_t T) {
    size_t t = 0, n = 0;
    for (; t + 6 <= T && T - t != 7 && T - t != 8; t += 6) n++;
    if (T - t >= 7) n++, t += 4;
    return n + (T > t);
}
#define DEFINE_MATMUL_DOT(op)                                                                                  \
    static TDOT void matmul_##op(const cs_pmat *m, const uint8_t *a, size_t lda, const float *sx, size_t T,     \
                                 float *y, size_t ldy, size_t p0, size_t p1) {                                 \
        const size_t SB = 384, S = lda / 4, wide = T <= 2 ? 8 : 4;                                             \
        size_t p = p0;                                                                                        \
        while (p < p1) {                                                                                      \
            const size_t np = p + wide <= p1 ? wide : p + 4 <= p1 ? 4 : 1;                                    \
            for (size_t s0 = 0; s0 < S; s0 += SB) {                                                           \
                const size_t s1 = s0 + SB < S ? s0 + SB : S;                                                  \
                const int first = s0 == 0, last = s1 == S;                                                    \
                const char *pf = next_block(T, m->w, S, p, np, p1, s0, s1);                                   \
                size_t t = 0, pj = 0; /* the row tiles: pn of them, pj the next */                        \
                const size_t pn = np == 8 ? (T + 1) / 2 : np == 1 ? 1 : row_tiles(T);                        \
                if (np == 8) {                                                                                \
                    for (; t + 2 <= T; t += 2) TD(op, 2, 8);                                                  \
                    if (t < T) TD(op, 1, 8);                                                                  \
                } else if (np == 1) {                                                                         \
                    for (; t + 6 <= T; t += 6) TD(op, 6, 1);                                                  \
                    for (; t < T; t++) TD(op, 1, 1);                                                          \
                } else {                                                                                      \
                    for (; t + 6 <= T && T - t != 7 && T - t != 8; t += 6) TD(op, 6, 4);                    \
                    if (T - t >= 7) { /* 7 / 8 left: 4 + 3 / 4 + 4 rows, not 6 + 1 / 6 + 2 */                   \
                        TD(op, 4, 4);                                                                         \
                        t += 4;                                                                               \
                    }                                                                                         \
                    switch (T - t) {                                                                          \
                    case 5: TD(op, 5, 4); break;                                                              \
                    case 4: TD(op, 4, 4); break;                                                              \
                    case 3: TD(op, 3, 4); break;                                                              \
                    case 2: TD(op, 2, 4); break;                                                              \
                    case 1: TD(op, 1, 4); break;                                                              \
                    default: break;                                                                           \
                    }                                                                                         \
                }                                                                                             \
            }                                                                                                 \
            p += np;                                                                                          \
        }                                                                                                     \
    }
#define TD(op, rt, cp)                                                                                         \
    tile_##op##_##rt##x##cp(m, a + t * lda, lda, sx ? sx + t : NULL, y + t * ldy, ldy, p, s0, s1, first, last, \
                            cp == 1 ? NULL : pf, pj++, pn)
DEFINE_MATMUL_DOT(i8)
DEFINE_MATMUL_DOT(dbf16)
#undef TD

/* The VNNI tiles on qu = xq + 128 (unsigned bytes), then the outlier rows. */
static TDOT void q8u_vnni(const cs_pmat *m, const uint8_t *qu, size_t ldq, const float *sx, const float *x,
                          size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
    matmul_i8(m, qu, ldq, sx, T, y, ldy, p0, p1);
    cs_pmat_outliers(m, x, ldx, T, y, ldy, p0, p1);
}

/* bf16 with AVX512_BF16: x rounded to bf16 pairs (vcvtne2ps2bf16: nearest
 * even, denormals to zero, as kernels.h defines it) in this thread's scratch,
 * rows of K2 pairs, the pad after an odd K zero. */
static TDOT void matmul_bf16_dot(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                                 size_t p0, size_t p1) {
    const size_t K = m->K, K2 = (K + 1) / 2, lda = 4 * K2;
    float *unused;
    uint8_t *a = (uint8_t *)cs_kern_qscratch(T * lda, &unused, 0);
    if (!a) return;
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * ldx;
        uint16_t *ar = (uint16_t *)(void *)(a + t * lda);
        for (size_t k = 0; k < 2 * K2; k += 32) {
            const __mmask16 l0 = k < K ? tail_mask(K - k) : 0, l1 = k + 16 < K ? tail_mask(K - k - 16) : 0;
            const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(l1, xr + k + 16), _mm512_maskz_loadu_ps(l0, xr + k));
            const size_t left = 2 * K2 - k;
            _mm512_mask_storeu_epi16(ar + k, left >= 32 ? (__mmask32)~0u : (__mmask32)((1u << left) - 1), (__m512i)h);
        }
    }
    matmul_dbf16(m, a, lda, NULL, T, y, ldy, p0, p1);
}

static TDOT void matmul_i8_vnni(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
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
static TDOT void matmul_q8_vnni(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x,
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
    if (has(CS_AVX512_VNNI)) matmul_q8_vnni(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1);
    else cs_kern_avx2.matmul_q8(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1); /* same exact integer result */
}

static T512 void matmul_avx512(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                               size_t p0, size_t p1) {
    switch (m->dt) {
    case CS_W_F32: matmul_f32(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_BF16:
        if (has(CS_AVX512_BF16)) matmul_bf16_dot(m, x, ldx, T, y, ldy, p0, p1);
        else {
            const float *xr = cs_bf16_round_rows_avx2(x, ldx, T, m->K);
            if (xr) matmul_bf16(m, xr, m->K, T, y, ldy, p0, p1);
        }
        break;
    case CS_W_I8:
        if (has(CS_AVX512_VNNI)) matmul_i8_vnni(m, x, ldx, T, y, ldy, p0, p1);
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

/* Decode attention (attend, attend_bf16, attend_i8) in 16-lane registers,
 * with the AVX2 family's bits: a key's score is dot_dt's sum (two 8-lane FMA
 * chains over 16-element steps are one 16-lane chain here; its halves are
 * added and reduced as hsum256 does), the softmax is cs_softmax_avx2 itself,
 * and each output element is axpy's FMA chain in key order. One template for
 * the three cache types, so a bf16 or int8 cache still gives the fp32 attend's
 * bits over its widened rows (tests/engine/test_attention.c), and the AVX-512
 * table still matches the AVX2 one bit for bit (test_kernels). Head sizes
 * that are multiples of 16 up to 128; others go to the AVX2 kernels.
 *
 * Why not the AVX2 code: with the rows in L2 (one head, 256 positions) it
 * spends ~35 cycles a key whatever the cache type, a third of it finding rows
 * through the block table and asking for each row's prefetch; over a server's
 * cache (most of it in DRAM) ~17 ns a key for bf16. Here rows are walked block
 * by block from one base pointer, q stays in registers, each 64-byte step
 * is one load and one FMA, and prefetches go by address ranges: a block's
 * next rows into L1 one block ahead, three blocks ahead into L2, and this
 * block's values into L2 while its keys are scored (the second pass then
 * starts from L2, not from DRAM). The forward pass calls this head by head
 * (items (row, head), head inner), and the next head's rows lie right after
 * this head's in every block (kvpool.h), so each block's next-head keys and
 * values go into L2 too: the next call then reads L2, not DRAM, and every
 * block is one 4-8 KiB run read at once instead of two halves a call apart
 * (after the last head those lines are the next layer's or past the block:
 * wasted, and a prefetch does not fault). 32 sequences, one thread, 3
 * alternations: bf16 cache 256 / 1,024 positions 14.8 / 14.6 -> 17.9 / 18.5
 * GB/s, fp32 16.2 / 16.2 -> 21.7 / 21.0; in the int8 server at 32 clients
 * attention's share of the CPU 24.4% -> 21.0%. */
static INL T512 size_t kvz_esize(const int DT) { return DT == CS_KV_F32 ? 4 : DT == CS_KV_BF16 ? 2 : 1; }
static INL T512 __m512 kvz_load16(const char *row, size_t e, const int DT) {
    if (DT == CS_KV_I8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + e))));
    if (DT == CS_KV_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * e))), 16));
    return _mm512_loadu_ps((const float *)(const void *)row + e);
}
/* hsum256(s0 + s1) of kernels_avx2.c's dot_dt, s0 / s1 the low / high lanes */
static INL T512 float kvz_hsum(__m512 z) {
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(z), _mm512_extractf32x8_ps(z, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* int8 rows carry their scale after hd elements */
static INL T512 float kvz_scale(const char *row, size_t hd, const int DT) {
    return DT == CS_KV_I8 ? cs_kv_row_scale((const int8_t *)(const void *)row, hd) : 1.0f;
}
/* The lines of bytes [lo, hi) from p, into L1 (far = 0) or L2. */
static INL T512 void kvz_prefetch(const char *p, size_t lo, size_t hi, const int far) {
    for (size_t o = lo & ~(size_t)63; o < hi; o += 64) {
        if (far) _mm_prefetch(p + o, _MM_HINT_T1);
        else _mm_prefetch(p + o, _MM_HINT_T0);
    }
}
/* One key's score from its 16-lane dot chain, as attend_scores_avx2. */
static INL T512 float kvz_score(__m512 acc, const char *row, size_t hd, float scale, const int DT) {
    const float d = kvz_hsum(acc);
    return DT == CS_KV_I8 ? d * kvz_scale(row, hd, DT) * scale : d * scale;
}

static INL T512 void attend_z(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                              float *out, const int DT, const int NZ) {
    const size_t es = kvz_esize(DT), rb = kv->ld * es; /* bytes from one row to the next in a block */
    const size_t nb = (n + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
    const char *const *blk = (const char *const *)kv->blk;
    const size_t ko = kv->koff * es, vo = kv->voff * es;
    __m512 qz[8];
    for (int c = 0; c < NZ; c++) qz[c] = _mm512_loadu_ps(q + 16 * c);
    for (size_t b = 0; b < nb; b++) {
        const char *kb = blk[b] + ko;
        const char *k1 = b + 1 < nb ? blk[b + 1] + ko : NULL, *k3 = b + 3 < nb ? blk[b + 3] + ko : NULL;
        const size_t j0 = b * CS_KV_BLOCK, m = n - j0 < CS_KV_BLOCK ? n - j0 : CS_KV_BLOCK;
        size_t r = 0;
        for (; r + 4 <= m; r += 4) {
            if (k1) kvz_prefetch(k1, r * rb, (r + 4) * rb, 0);
            if (k3) kvz_prefetch(k3, r * rb, (r + 4) * rb, 1);
            kvz_prefetch(blk[b] + vo, r * rb, (r + 4) * rb, 1);
            kvz_prefetch(kb + CS_KV_BLOCK * rb, r * rb, (r + 4) * rb, 1); /* the next head's keys */
            const char *r0 = kb + r * rb, *r1 = r0 + rb, *r2 = r1 + rb, *r3 = r2 + rb;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < NZ; c++) {
                a0 = _mm512_fmadd_ps(qz[c], kvz_load16(r0, 16 * (size_t)c, DT), a0);
                a1 = _mm512_fmadd_ps(qz[c], kvz_load16(r1, 16 * (size_t)c, DT), a1);
                a2 = _mm512_fmadd_ps(qz[c], kvz_load16(r2, 16 * (size_t)c, DT), a2);
                a3 = _mm512_fmadd_ps(qz[c], kvz_load16(r3, 16 * (size_t)c, DT), a3);
            }
            att[j0 + r] = kvz_score(a0, r0, hd, scale, DT);
            att[j0 + r + 1] = kvz_score(a1, r1, hd, scale, DT);
            att[j0 + r + 2] = kvz_score(a2, r2, hd, scale, DT);
            att[j0 + r + 3] = kvz_score(a3, r3, hd, scale, DT);
        }
        for (; r < m; r++) { /* the last block's last keys */
            const char *r0 = kb + r * rb;
            __m512 a0 = _mm512_setzero_ps();
            for (int c = 0; c < NZ; c++) a0 = _mm512_fmadd_ps(qz[c], kvz_load16(r0, 16 * (size_t)c, DT), a0);
            att[j0 + r] = kvz_score(a0, r0, hd, scale, DT);
        }
        if (m % 4) kvz_prefetch(blk[b] + vo, (m & ~(size_t)3) * rb, m * rb, 1);
    }
    cs_softmax_avx2(att, n);
    __m512 o[8];
    for (int c = 0; c < NZ; c++) o[c] = _mm512_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const char *vb = blk[b] + vo, *v1 = b + 1 < nb ? blk[b + 1] + vo : NULL;
        const size_t j0 = b * CS_KV_BLOCK, m = n - j0 < CS_KV_BLOCK ? n - j0 : CS_KV_BLOCK;
        for (size_t r = 0; r < m; r++) {
            if (v1 && r % 4 == 0) kvz_prefetch(v1, r * rb, (r + 4) * rb, 0);
            if (r % 4 == 0) kvz_prefetch(vb + CS_KV_BLOCK * rb, r * rb, (r + 4) * rb, 1); /* its values */
            const char *vr = vb + r * rb;
            const __m512 a = _mm512_set1_ps(DT == CS_KV_I8 ? att[j0 + r] * kvz_scale(vr, hd, DT) : att[j0 + r]);
            for (int c = 0; c < NZ; c++) o[c] = _mm512_fmadd_ps(a, kvz_load16(vr, 16 * (size_t)c, DT), o[c]);
        }
    }
    for (int c = 0; c < NZ; c++) _mm512_storeu_ps(out + 16 * c, o[c]);
}

#define ATTEND_Z(NAME, DT, FALLBACK)                                                                          \
    static T512 void NAME(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att, \
                          float *out) {                                                                       \
        switch (hd % 16 || n == 0 ? 0 : hd / 16) {                                                            \
        case 1: attend_z(q, kv, n, hd, scale, att, out, DT, 1); return;                                       \
        case 2: attend_z(q, kv, n, hd, scale, att, out, DT, 2); return;                                       \
        case 3: attend_z(q, kv, n, hd, scale, att, out, DT, 3); return;                                       \
        case 4: attend_z(q, kv, n, hd, scale, att, out, DT, 4); return;                                       \
        case 5: attend_z(q, kv, n, hd, scale, att, out, DT, 5); return;                                       \
        case 6: attend_z(q, kv, n, hd, scale, att, out, DT, 6); return;                                       \
        case 7: attend_z(q, kv, n, hd, scale, att, out, DT, 7); return;                                       \
        case 8: attend_z(q, kv, n, hd, scale, att, out, DT, 8); return;                                       \
        default: FALLBACK(q, kv, n, hd, scale, att, out);                                                     \
        }                                                                                                     \
    }
ATTEND_Z(attend_avx512, CS_KV_F32, cs_attend_avx2)
ATTEND_Z(attend_bf16_avx512, CS_KV_BF16, cs_attend_bf16_avx2)
ATTEND_Z(attend_i8_avx512, CS_KV_I8, cs_attend_i8_avx2)
#undef ATTEND_Z

const cs_kern cs_kern_avx512 = {
    .name = "avx512", .isa = CS_ISA_AVX512, .matmul = matmul_avx512, .matmul_q8 = matmul_q8_avx512, .layernorm = layernorm_avx512,
    .gelu_tanh = gelu_avx512, .quantize_rows = quantize_avx512,
    /* The attention family gives the AVX2 table's bits, all of it: a bf16 or
     * int8 cache must give the bits of the fp32 cache's attend over its
     * widened rows, and prefill must give decode's. Decode attention is its
     * own 16-lane template for the three cache types (attend_z) with those
     * bits; the rest is the AVX2 code. */
    .dot = cs_dot_avx2, .axpy = cs_axpy_avx2, .softmax = cs_softmax_avx2, .attend = attend_avx512,
    .attend_causal = cs_attend_causal_avx2, .dot_bf16 = cs_dot_bf16_avx2, .axpy_bf16 = cs_axpy_bf16_avx2,
    .attend_bf16 = attend_bf16_avx512, .attend_causal_bf16 = cs_attend_causal_bf16_avx2, .dot_i8 = cs_dot_i8_avx2,
    .axpy_i8 = cs_axpy_i8_avx2, .attend_i8 = attend_i8_avx512, .attend_causal_i8 = cs_attend_causal_i8_avx2,
    .fwht = cs_fwht_avx2, .kv_quantize_row = cs_kv_quantize_row_avx2,
};

#else /* not x86-64: the table exists but cs_kern_for never returns it */
const cs_kern cs_kern_avx512 = {0};
void cs_kern_avx512_cap(unsigned features) { (void)features; }
#endif
