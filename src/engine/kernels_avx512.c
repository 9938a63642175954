/* AVX-512 kernels (compiled for any x86-64 target with per-function target
 * attributes; only called when CPUID reports AVX-512F/BW/VL). */
#include "engine/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <math.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INL __attribute__((always_inline)) inline

#define LOADW_F32(p) _mm512_loadu_ps((const float *)(p))
#define LOADW_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define LOADW_I8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))

/* Register tile: RT rows of x times CP panels (16 columns each), over all K. */
#define DEFINE_TILE(S, TYPE, LOADW)                                                                   \
    static INL T512 void tile_##S(const cs_pmat *m, const float *x, size_t ldx, float *y, size_t ldy, \
                                  size_t p, const int RT, const int CP) {                             \
        const size_t K = m->K;                                                                        \
        const TYPE *w = (const TYPE *)m->w + p * K * CS_PANEL;                                        \
        __m512 acc[4][4];                                                                             \
        for (int r = 0; r < RT; r++)                                                                  \
            for (int c = 0; c < CP; c++) acc[r][c] = _mm512_setzero_ps();                             \
        for (size_t k = 0; k < K; k++) {                                                              \
            __m512 wv[4];                                                                             \
            for (int c = 0; c < CP; c++) wv[c] = LOADW(w + ((size_t)c * K + k) * CS_PANEL);           \
            for (int r = 0; r < RT; r++) {                                                            \
                const __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + k]);                             \
                for (int c = 0; c < CP; c++) acc[r][c] = _mm512_fmadd_ps(xb, wv[c], acc[r][c]);       \
            }                                                                                         \
        }                                                                                             \
        for (int c = 0; c < CP; c++) {                                                                \
            const size_t n0 = (p + (size_t)c) * CS_PANEL;                                             \
            const size_t left = m->N - n0;                                                            \
            const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);      \
            const __m512 sc = m->scale ? _mm512_loadu_ps(m->scale + n0) : _mm512_set1_ps(1.0f);       \
            const __m512 bi = m->bias ? _mm512_maskz_loadu_ps(mk, m->bias + n0) : _mm512_setzero_ps(); \
            for (int r = 0; r < RT; r++) {                                                            \
                __m512 v = m->scale ? _mm512_fmadd_ps(acc[r][c], sc, bi) : _mm512_add_ps(acc[r][c], bi); \
                _mm512_mask_storeu_ps(y + (size_t)r * ldy + n0, mk, v);                               \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    static T512 void matmul_##S(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, \
                                size_t p0, size_t p1) {                                               \
        size_t p = p0;                                                                                \
        for (; p + 4 <= p1; p += 4) {                                                                 \
            size_t t = 0;                                                                             \
            for (; t + 4 <= T; t += 4) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 4, 4);      \
            switch (T - t) {                                                                          \
            case 3: tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 3, 4); break;                  \
            case 2: tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 2, 4); break;                  \
            case 1: tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 1, 4); break;                  \
            }                                                                                         \
        }                                                                                             \
        for (; p < p1; p++) {                                                                         \
            size_t t = 0;                                                                             \
            for (; t + 4 <= T; t += 4) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 4, 1);      \
            for (; t < T; t++) tile_##S(m, x + t * ldx, ldx, y + t * ldy, ldy, p, 1, 1);              \
        }                                                                                             \
    }

DEFINE_TILE(f32, float, LOADW_F32)
DEFINE_TILE(bf16, uint16_t, LOADW_BF16)
DEFINE_TILE(i8, int8_t, LOADW_I8)

static T512 void matmul_avx512(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy,
                               size_t p0, size_t p1) {
    switch (m->dt) {
    case CS_W_F32: matmul_f32(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_BF16: matmul_bf16(m, x, ldx, T, y, ldy, p0, p1); break;
    case CS_W_I8: matmul_i8(m, x, ldx, T, y, ldy, p0, p1); break;
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

const cs_kern cs_kern_avx512 = {
    .name = "avx512", .isa = CS_ISA_AVX512, .matmul = matmul_avx512, .layernorm = layernorm_avx512,
    .gelu_tanh = gelu_avx512, .dot = dot_avx512, .axpy = axpy_avx512, .softmax = softmax_avx512,
};

#else /* not x86-64: the table exists but cs_kern_for never returns it */
const cs_kern cs_kern_avx512 = {0};
#endif
