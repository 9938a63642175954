/* cs_kern: compute kernels behind one const table per instruction set.
 *
 * Every table has the same contract; the scalar one is the reference that the
 * SIMD ones are tested against (tests/engine/test_kernels.c). cs_kern_best()
 * picks the widest the CPU supports (CPUID via __builtin_cpu_supports), so a
 * build without -march=native still uses AVX2/AVX-512 where present.
 * CS_KERNELS=scalar|avx2|avx512 in the environment caps the choice.
 *
 * Packed weights (cs_pmat): y (T, N) = x (T, K) @ W (K, N) [* scale] + bias.
 * W is stored in panels of 16 output columns: panel p holds W[k][16p .. 16p+15]
 * for k = 0..K-1, contiguous, so one panel row is one 64-byte (fp32) vector.
 * Columns past N in the last panel are zero. dtypes: fp32; bf16 (weights rounded
 * to nearest even, and so are the activations (cs_bf16_round): products of
 * two bf16 are exact in fp32 and added into one fp32 sum per output, pair of
 * k by pair of k, odd k first: acc = fma(x[k+1], w[k+1], acc), then
 * fma(x[k], w[k], acc), which is vdpbf16ps (AVX512_BF16) where the CPU has it
 * and two FMAs elsewhere, the same bits; panels interleave pairs of k, so
 * that one 32-bit lane holds k and k+1 (vdpbf16ps's operand) and widening to
 * fp32 is one shift or mask: element
 * ((p * K2 + k / 2) * 16 + n % 16) * 2 + k % 2, K2 = ceil(K / 2)); int8:
 * symmetric weights with one fp32 scale per output column, W[k][n] ~
 * q[k][n] * scale[n], multiplied with activations quantized per row
 * (xq = round(x * 127 / max|x_row|)) in exact integer arithmetic:
 *   y[t][n] = (float)sum_k xq[t][k] q[k][n] * (sx[t] * scale[n]) + bias[n],
 * the same bits on every instruction set. int8 panels interleave groups of 4
 * consecutive k for each column (the VNNI dot-product layout): byte
 * ((p * K4 + k / 4) * 16 + n % 16) * 4 + k % 4, K4 = ceil(K / 4).
 *
 * int8 smoothing (SmoothQuant): trained GPT-2 has a few input channels tens of
 * times larger than the rest, and one activation scale per row would spend its
 * range on them. A matrix may carry per-input-channel factors s_k (chosen at
 * pack time from calibration activations, engine/gpt2.c): the weights are
 * packed as W[k][n] * s_k and the quantizer reads x[t][k] * (1 / s_k), one
 * multiply per element, so x W is unchanged but both sides are flatter:
 *   xq = round((x * r) * 127 / max|x * r|), r = smooth = 1 / s.
 * The few channels far above the rest (calibration maxima >= CS_I8_OUTLIER_RATIO
 * x the median) are taken out of the int8 product altogether, as in LLM.int8:
 * r_k = 0 and the packed row is zero, and their fp32 weight rows are added in
 * at the end of every table's int8 matmul, by cs_pmat_outliers or the same
 * multiply-then-add per channel in a kernel's own epilogue (no FMA, so the
 * bits stay the same everywhere):
 *   y[t][n] = ((int8 result + x[t][i_0] W[i_0][n]) + x[t][i_1] W[i_1][n]) + ...
 *
 * All kernels are pure functions of their arguments; thread-safe. */
#ifndef CS_KERNELS_H
#define CS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define CS_PANEL 16
#define CS_I8_MAX_OUTLIERS 8     /* fp32 input channels per int8 matrix */
#define CS_I8_OUTLIER_RATIO 6.0f /* vs the median channel's calibration max */

typedef enum cs_wdtype { CS_W_F32, CS_W_BF16, CS_W_I8 } cs_wdtype;

/* Paged KV cache (engine/gpt2.h): a sequence's keys and values live in blocks
 * of CS_KV_BLOCK positions taken from a pool as it grows. Attention kernels
 * see one head through a block table: the key row of position j is
 *   blk[j / CS_KV_BLOCK] + koff + (j % CS_KV_BLOCK) * ld
 * and its value row the same with voff (offsets and ld in elements of the
 * cache's dtype: fp32, bf16 rounded to nearest even, or int8 bytes).
 *
 * int8 cache: each row of a head (hd elements) is quantized on its own,
 * symmetric, and carries its fp32 scale right after its hd bytes (so ld >=
 * hd + 4; the pool uses hd + 4):
 *   s = max|x| / 127, q[e] = round(x[e] * (127 / max|x|)) (s = 0 for a zero row),
 *   x[e] ~ q[e] * s, |error| <= s / 2.
 * Kernels widen q to fp32 and apply the scale once per row: a score is
 * (dot(q_query, q_key) * s_key) * scale and the value sum weighs row j by
 * att[j] * s_value (cs_attend_i8_generic), a quarter of fp32's bytes. */
#define CS_KV_BLOCK 16

typedef enum cs_kvdtype { CS_KV_F32, CS_KV_BF16, CS_KV_I8 } cs_kvdtype;

/* Bytes a cached row of hd elements takes in the pool, scale included. */
static inline size_t cs_kv_row_bytes(cs_kvdtype dt, size_t hd) {
    return dt == CS_KV_F32 ? 4 * hd : dt == CS_KV_BF16 ? 2 * hd : hd + 4;
}
const char *cs_kvdtype_name(cs_kvdtype dt);
int cs_kvdtype_parse(const char *s, cs_kvdtype *out); /* "fp32"/"f32", "bf16", "int8"/"i8" */
/* The KV cache type "auto" picks for a weight format: fp32 for fp32 weights
 * (the exact mode stays exact), bf16 for bf16 and int8 weights (a 16-bit cache
 * for reduced-precision weights: half the bytes to store and to read per
 * decode step, an error far below the weights' own). */
cs_kvdtype cs_kvdtype_auto(cs_wdtype weights);
/* "auto" (cs_kvdtype_auto of the weights) or a cs_kvdtype_parse name; -1 otherwise. */
int cs_kvdtype_resolve(const char *s, cs_wdtype weights, cs_kvdtype *out);

typedef struct cs_kvhead {
    const void *const *blk;
    size_t koff, voff, ld;
} cs_kvhead;

static inline const float *cs_kv_krow(const cs_kvhead *h, size_t j) {
    return (const float *)h->blk[j / CS_KV_BLOCK] + h->koff + (j % CS_KV_BLOCK) * h->ld;
}
static inline const float *cs_kv_vrow(const cs_kvhead *h, size_t j) {
    return (const float *)h->blk[j / CS_KV_BLOCK] + h->voff + (j % CS_KV_BLOCK) * h->ld;
}
static inline const uint16_t *cs_kv_krow16(const cs_kvhead *h, size_t j) {
    return (const uint16_t *)h->blk[j / CS_KV_BLOCK] + h->koff + (j % CS_KV_BLOCK) * h->ld;
}
static inline const uint16_t *cs_kv_vrow16(const cs_kvhead *h, size_t j) {
    return (const uint16_t *)h->blk[j / CS_KV_BLOCK] + h->voff + (j % CS_KV_BLOCK) * h->ld;
}
static inline const int8_t *cs_kv_krow8(const cs_kvhead *h, size_t j) {
    return (const int8_t *)h->blk[j / CS_KV_BLOCK] + h->koff + (j % CS_KV_BLOCK) * h->ld;
}
static inline const int8_t *cs_kv_vrow8(const cs_kvhead *h, size_t j) {
    return (const int8_t *)h->blk[j / CS_KV_BLOCK] + h->voff + (j % CS_KV_BLOCK) * h->ld;
}
/* The scale of an int8 row of hd elements (stored unaligned after them). */
static inline float cs_kv_row_scale(const int8_t *row, size_t hd) {
    float s;
    __builtin_memcpy(&s, row + hd, sizeof s);
    return s;
}
/* In place, the unnormalized Walsh-Hadamard transform of n floats (n a power
 * of two; H H = n I): butterflies of span 1, 2, 4, ... in that order, then
 * every element times post (1: no multiply). The scalar reference of every
 * table's fwht. */
void cs_fwht(float *x, size_t n, float post);

/* Quantizes hd floats into an int8 row and its scale (see above); a row with
 * a non-finite input gets zero bytes and a NaN scale, so it still poisons
 * the output. The scalar reference of every table's kv_quantize_row. */
void cs_kv_quantize_row(const float *x, size_t hd, int8_t *row);

/* fp32 <-> bf16 (round to nearest even; inputs finite). Inline: the KV
 * cache's append converts every key and value element with it. */
static inline uint16_t cs_bf16_from_f32(float f) {
    uint32_t x;
    __builtin_memcpy(&x, &f, 4);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
static inline float cs_f32_from_bf16(uint16_t h) {
    const uint32_t x = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &x, 4);
    return f;
}
/* An activation as the bf16 matmuls see it (kernels.h, bf16), widened back
 * to fp32: round to nearest even, denormals to (signed) zero, NaN stays NaN;
 * what vcvtneps2bf16 gives. */
float cs_bf16_round(float f);

typedef struct cs_pmat {
    cs_wdtype dt;
    size_t K, N, n_panels; /* n_panels = ceil(N / 16) */
    const void *w;         /* (n_panels, K, 16) elements of dt */
    const float *scale;    /* (n_panels * 16) for int8, else NULL */
    const int32_t *colsum; /* (n_panels * 16) int8: sum over k of q[k][n], else NULL */
    const float *bias;     /* (N) or NULL */
    const float *smooth;   /* (K) int8: r_k = 1 / s_k applied to activations (see above), or NULL */
    size_t n_out;          /* int8: input channels kept in fp32 (<= CS_I8_MAX_OUTLIERS) */
    const uint32_t *out_idx; /* (n_out) their k, ascending */
    const float *out_w;    /* (n_out, n_panels * 16) their rows of W, fp32 */
} cs_pmat;

size_t cs_wdtype_size(cs_wdtype dt);
const char *cs_wdtype_name(cs_wdtype dt);
int cs_wdtype_parse(const char *s, cs_wdtype *out); /* "fp32"/"f32", "bf16", "int8"/"i8" */

/* Bytes needed for the packed weights, and for the int8 scales + column sums. */
size_t cs_pmat_wbytes(cs_wdtype dt, size_t K, size_t N);
size_t cs_pmat_sbytes(cs_wdtype dt, size_t N);

/* int8 activations: quantizes T rows of K floats, each multiplied by r[k]
 * first (r NULL: by 1), to q (rows of ldq >= K4*4 bytes, zero-padded) and
 * sx[t] = max|x_t * r| / 127 (1 for an all-zero row). The scalar reference of
 * every table's quantize_rows, which all compute the same xq. */
void cs_quantize_rows(const float *x, size_t ldx, size_t T, size_t K, const float *r, int8_t *q, size_t ldq,
                      float *sx);

/* The kernel table's quantize_rows (each ISA's gives cs_quantize_rows' bits)
 * for an int8 matmul's T input rows into per-thread scratch (grown on demand,
 * then reused): returns the rows (stride *ldq = K rounded up to 4) and *sx, or
 * NULL when out of memory. */
struct cs_kern;
int8_t *cs_kern_quantize(const struct cs_kern *k, const cs_pmat *m, const float *x, size_t ldx, size_t T, size_t *ldq,
                         float **sx);

/* The calling thread's quantization scratch (the buffer cs_kern_quantize
 * fills): bytes for rows and *sx for T scales after them; NULL when out of
 * memory. */
int8_t *cs_kern_qscratch(size_t bytes, float **sx, size_t T);

/* attend built from a table's dot, softmax and axpy (the reference form). */
void cs_attend_generic(const struct cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                       float *att, float *out);

/* attend_bf16 built from a table's dot_bf16, softmax and axpy_bf16. */
void cs_attend_bf16_generic(const struct cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd,
                            float scale, float *att, float *out);

/* attend_i8 built from a table's dot_i8, softmax and axpy_i8. */
void cs_attend_i8_generic(const struct cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd,
                          float scale, float *att, float *out);

/* attend_causal as one attend call per query (the reference it must match;
 * also the fallback for head sizes a table has no blocked form for). */
void cs_attend_causal_generic(const struct cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv, size_t p0,
                              size_t nq, size_t hd, float scale, float *att, float *out, size_t ldo);

/* The same for a bf16 cache, one attend_bf16 call per query. */
void cs_attend_causal_bf16_generic(const struct cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv,
                                   size_t p0, size_t nq, size_t hd, float scale, float *att, float *out, size_t ldo);

/* The same for an int8 cache, one attend_i8 call per query. */
void cs_attend_causal_i8_generic(const struct cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv, size_t p0,
                                 size_t nq, size_t hd, float scale, float *att, float *out, size_t ldo);

/* Frees the calling thread's scratch (call before a worker thread exits). */
void cs_kern_thread_cleanup(void);

/* Packs W (K, N) row-major fp32 (row stride ldw) into w_out/scale_out (sizes
 * above; for int8 scale_out holds the scales followed by the column sums).
 * transposed: W is given as (N, K) instead (e.g. the tied LM head, wte). */
void cs_pmat_pack(cs_wdtype dt, const float *W, size_t K, size_t N, size_t ldw, int transposed, void *w_out,
                  float *scale_out);
/* The same with int8 smoothing: row k of W is packed as W[k][n] * s[k]
 * (s NULL: 1); the matrix then needs .smooth = 1 / s (cs_pmat_view + set). */
void cs_pmat_pack_smooth(cs_wdtype dt, const float *W, size_t K, size_t N, size_t ldw, int transposed,
                         const float *s, void *w_out, float *scale_out);

/* Copies rows idx[0..n_out) of W (as for cs_pmat_pack) into out_w
 * (n_out, n_panels * 16; columns past N zero). */
void cs_pmat_pack_outliers(const float *W, size_t K, size_t N, size_t ldw, int transposed, const uint32_t *idx,
                           size_t n_out, float *out_w);

/* Adds the fp32 outlier rows' part to y for panels [p0, p1) (see above): the
 * reference every table's int8 matmul matches. No-op when n_out is 0. */
void cs_pmat_outliers(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                      size_t p1);

/* Fills a cs_pmat over packed buffers (scale_buf: int8 scales + column sums). */
cs_pmat cs_pmat_view(cs_wdtype dt, size_t K, size_t N, const void *w, const float *scale_buf, const float *bias);

/* W[k][n] as fp32 (what the kernels compute with; smoothing undone). */
float cs_pmat_get(const cs_pmat *m, size_t k, size_t n);

typedef enum cs_isa { CS_ISA_SCALAR, CS_ISA_AVX2, CS_ISA_AVX512, CS_ISA_COUNT } cs_isa;

typedef struct cs_kern {
    const char *name;
    cs_isa isa;
    /* y[t][n] for t < T and panels [p0, p1); rows of x and y are ldx / ldy floats apart. */
    void (*matmul)(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                   size_t p1);
    /* int8 matrices only: matmul on rows already quantized by quantize_rows
     * (q: T rows ldq = K rounded up to 4 bytes apart, sx: their T scales;
     * read only), so a matmul split over threads quantizes its input once.
     * x is still read for the outlier channels. The same bits as matmul. */
    void (*matmul_q8)(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x, size_t ldx,
                      size_t T, float *y, size_t ldy, size_t p0, size_t p1);
    /* One row: y = (x - mean) / sqrt(var + eps) * w + b. y may alias x. */
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, size_t C, float eps);
    /* In place, GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
    void (*gelu_tanh)(float *x, size_t n);
    float (*dot)(const float *a, const float *b, size_t n);
    void (*axpy)(float *y, float a, const float *x, size_t n); /* y += a x */
    /* In place over n scores: x = exp(x - max) / sum. */
    void (*softmax)(float *x, size_t n);
    /* bf16 x fp32: dot with b widened to fp32 (the same sum as dot), and
     * y += a * widen(x) (the same chain as axpy). */
    float (*dot_bf16)(const float *a, const uint16_t *b, size_t n);
    void (*axpy_bf16)(float *y, float a, const uint16_t *x, size_t n);
    /* int8 x fp32, the same way: b / x widened to fp32 (exact), then dot's
     * sum and axpy's chain. */
    float (*dot_i8)(const float *a, const int8_t *b, size_t n);
    void (*axpy_i8)(float *y, float a, const int8_t *x, size_t n);
    /* Attention of one query over n cached positions for one head of size hd
     * (fp32 cache): att[j] = softmax_j(scale * q . k_j), out = sum_j att[j]
     * v_j, rows found through kv's block table; att holds n floats of scratch. */
    void (*attend)(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att, float *out);
    /* The same over a bf16 cache (keys and values widened to fp32). */
    void (*attend_bf16)(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                        float *out);
    /* The same over an int8 cache: cs_attend_i8_generic's bits. */
    void (*attend_i8)(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                      float *out);
    /* Causal attention of nq consecutive queries of one sequence for one head
     * (a prompt chunk): query i (q + i * ldq) sits at position p0 + i and sees
     * cached positions 0 .. p0 + i; its output goes to out + i * ldo. Every
     * query gets exactly the bits attend gives it alone (n = p0 + i + 1): each
     * score, the softmax and the sum over values run in attend's order, and
     * only the loads of key and value rows are shared between queries, so a
     * token's result does not depend on how its prompt was chunked or batched.
     * att: scratch of nq * (p0 + nq) floats. */
    void (*attend_causal)(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                          float scale, float *att, float *out, size_t ldo);
    /* The same over a bf16 cache: every query gets attend_bf16's bits alone. */
    void (*attend_causal_bf16)(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                               float scale, float *att, float *out, size_t ldo);
    /* The same over an int8 cache: every query gets attend_i8's bits alone. */
    void (*attend_causal_i8)(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                             float scale, float *att, float *out, size_t ldo);
    /* cs_fwht and cs_kv_quantize_row, bit for bit (the int8 cache's append). */
    void (*fwht)(float *x, size_t n, float post);
    void (*kv_quantize_row)(const float *x, size_t hd, int8_t *row);
    /* cs_quantize_rows, bit for bit. */
    void (*quantize_rows)(const float *x, size_t ldx, size_t T, size_t K, const float *r, int8_t *q, size_t ldq,
                          float *sx);
} cs_kern;

const cs_kern *cs_kern_for(cs_isa isa); /* NULL when the CPU lacks it */
const cs_kern *cs_kern_best(void);

/* The AVX2 table's attention family (fp32, bf16 and int8 caches), which the
 * AVX-512 table shares (x86-64 builds only), but for decode attention: its
 * own kernels give these bits and fall back to these for other head sizes. */
float cs_dot_avx2(const float *a, const float *b, size_t n);
void cs_axpy_avx2(float *y, float a, const float *x, size_t n);
void cs_softmax_avx2(float *x, size_t n);
void cs_attend_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att, float *out);
void cs_attend_causal_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                           float scale, float *att, float *out, size_t ldo);
const float *cs_bf16_round_rows_avx2(const float *x, size_t ldx, size_t T, size_t K); /* T x K, thread scratch */
float cs_dot_bf16_avx2(const float *a, const uint16_t *b, size_t n);
void cs_axpy_bf16_avx2(float *y, float a, const uint16_t *x, size_t n);
void cs_attend_bf16_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                         float *out);
void cs_attend_causal_bf16_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                                float scale, float *att, float *out, size_t ldo);
float cs_dot_i8_avx2(const float *a, const int8_t *b, size_t n);
void cs_fwht_avx2(float *x, size_t n, float post);
void cs_kv_quantize_row_avx2(const float *x, size_t hd, int8_t *row);
void cs_axpy_i8_avx2(float *y, float a, const int8_t *x, size_t n);
void cs_attend_i8_avx2(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                       float *out);
void cs_attend_causal_i8_avx2(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                              float scale, float *att, float *out, size_t ldo);

/* The AVX-512 table's optional instructions: AVX512_VNNI (int8 matmuls) and
 * AVX512_BF16 (bf16 matmuls), used where the CPU has them and the cap allows
 * (default: all). Without them the table computes the same bits with other
 * instructions; tests cap them to run that path on CPUs that have them. Not
 * to be called while kernels run. */
enum { CS_AVX512_VNNI = 1u, CS_AVX512_BF16 = 2u };
void cs_kern_avx512_cap(unsigned features);

/* Tables (defined in kernels_*.c). */
extern const cs_kern cs_kern_scalar, cs_kern_avx2, cs_kern_avx512;

#endif
