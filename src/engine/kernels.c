/* Packing, dispatch, and the scalar reference kernels. */
#include "engine/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define to_bf16 cs_bf16_from_f32
#define from_bf16 cs_f32_from_bf16

size_t cs_wdtype_size(cs_wdtype dt) { return dt == CS_W_F32 ? 4 : dt == CS_W_BF16 ? 2 : 1; }
const char *cs_wdtype_name(cs_wdtype dt) { return dt == CS_W_F32 ? "fp32" : dt == CS_W_BF16 ? "bf16" : "int8"; }

int cs_wdtype_parse(const char *s, cs_wdtype *out) {
    if (!strcmp(s, "fp32") || !strcmp(s, "f32") || !strcmp(s, "float32")) *out = CS_W_F32;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = CS_W_BF16;
    else if (!strcmp(s, "int8") || !strcmp(s, "i8")) *out = CS_W_I8;
    else return -1;
    return 0;
}

const char *cs_kvdtype_name(cs_kvdtype dt) { return dt == CS_KV_F32 ? "fp32" : dt == CS_KV_BF16 ? "bf16" : "int8"; }

int cs_kvdtype_parse(const char *s, cs_kvdtype *out) {
    cs_wdtype w;
    if (cs_wdtype_parse(s, &w)) return -1;
    *out = w == CS_W_F32 ? CS_KV_F32 : w == CS_W_BF16 ? CS_KV_BF16 : CS_KV_I8;
    return 0;
}

cs_kvdtype cs_kvdtype_auto(cs_wdtype weights) { return weights == CS_W_F32 ? CS_KV_F32 : CS_KV_BF16; }

int cs_kvdtype_resolve(const char *s, cs_wdtype weights, cs_kvdtype *out) {
    if (!strcmp(s, "auto")) {
        *out = cs_kvdtype_auto(weights);
        return 0;
    }
    return cs_kvdtype_parse(s, out);
}

void cs_fwht(float *x, size_t n, float post) {
    for (size_t h = 1; h < n; h *= 2)
        for (size_t i = 0; i < n; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    if (post != 1.0f)
        for (size_t i = 0; i < n; i++) x[i] *= post;
}

void cs_kv_quantize_row(const float *x, size_t hd, int8_t *row) {
    float mx = 0;
    int finite = 1;
    for (size_t e = 0; e < hd; e++) {
        finite &= isfinite(x[e]) != 0;
        mx = fmaxf(mx, fabsf(x[e]));
    }
    const float s = !finite ? NAN : mx / 127.0f;
    if (!finite) {
        memset(row, 0, hd);
    } else if (mx < 1e-30f) { /* 127 / max would overflow float: in double */
        const double inv = mx > 0 ? 127.0 / (double)mx : 0.0;
        for (size_t e = 0; e < hd; e++) {
            const double v = nearbyint((double)x[e] * inv); /* |v| <= 127 */
            row[e] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    } else {
        /* |x * inv| <= 127 (+ rounding): adding and taking away 1.5 * 2^23
         * rounds to nearest even, as nearbyintf does, without a libm call */
        const float inv = 127.0f / mx, magic = 12582912.0f;
        for (size_t e = 0; e < hd; e++) {
            const float v = (x[e] * inv + magic) - magic;
            row[e] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
    memcpy(row + hd, &s, sizeof s);
}

static size_t k_padded(cs_wdtype dt, size_t K) {
    return dt == CS_W_I8 ? (K + 3) / 4 * 4 : dt == CS_W_BF16 ? (K + 1) / 2 * 2 : K;
}

size_t cs_pmat_wbytes(cs_wdtype dt, size_t K, size_t N) {
    return ((N + CS_PANEL - 1) / CS_PANEL) * k_padded(dt, K) * CS_PANEL * cs_wdtype_size(dt);
}

size_t cs_pmat_sbytes(cs_wdtype dt, size_t N) {
    return dt == CS_W_I8 ? ((N + CS_PANEL - 1) / CS_PANEL) * CS_PANEL * (sizeof(float) + sizeof(int32_t)) : 0;
}

cs_pmat cs_pmat_view(cs_wdtype dt, size_t K, size_t N, const void *w, const float *scale_buf, const float *bias) {
    const size_t P = (N + CS_PANEL - 1) / CS_PANEL;
    return (cs_pmat){.dt = dt, .K = K, .N = N, .n_panels = P, .w = w, .bias = bias,
                     .scale = dt == CS_W_I8 ? scale_buf : NULL,
                     .colsum = dt == CS_W_I8 ? (const int32_t *)(scale_buf + P * CS_PANEL) : NULL};
}

static inline size_t bf16_off(size_t K, size_t k, size_t n) {
    const size_t K2 = (K + 1) / 2;
    return (((n / CS_PANEL) * K2 + k / 2) * CS_PANEL + n % CS_PANEL) * 2 + k % 2;
}

static inline size_t i8_off(size_t K, size_t k, size_t n) {
    const size_t K4 = (K + 3) / 4;
    return (((n / CS_PANEL) * K4 + k / 4) * CS_PANEL + n % CS_PANEL) * 4 + k % 4;
}

void cs_quantize_rows(const float *x, size_t ldx, size_t T, size_t K, const float *r, int8_t *q, size_t ldq,
                      float *sx) {
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * ldx;
        float mx = 0;
        for (size_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(r ? xr[k] * r[k] : xr[k]));
        const float inv = mx > 0 ? 127.0f / mx : 0.0f;
        sx[t] = mx > 0 ? mx / 127.0f : 1.0f;
        int8_t *qr = q + t * ldq;
        for (size_t k = 0; k < K; k++) {
            float v = nearbyintf((r ? xr[k] * r[k] : xr[k]) * inv);
            qr[k] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        for (size_t k = K; k < ldq; k++) qr[k] = 0;
    }
}

static __thread int8_t *qbuf_mem;
static __thread size_t qbuf_cap;

void cs_kern_thread_cleanup(void) {
    free(qbuf_mem);
    qbuf_mem = NULL;
    qbuf_cap = 0;
}

int8_t *cs_kern_qscratch(size_t bytes, float **sx, size_t T) {
    int8_t *buf = qbuf_mem;
    size_t cap = qbuf_cap;
    const size_t need = bytes + T * sizeof(float) + 64;
    if (need > cap) {
        free(buf);
        cap = need * 2;
        buf = aligned_alloc(64, (cap + 63) / 64 * 64);
        if (!buf) cap = 0;
        qbuf_mem = buf;
        qbuf_cap = cap;
        if (!buf) return NULL;
    }
    *sx = (float *)(void *)(buf + (bytes + 63) / 64 * 64);
    return buf;
}

int8_t *cs_kern_quantize(const cs_kern *k, const cs_pmat *m, const float *x, size_t ldx, size_t T, size_t *ldq,
                         float **sx) {
    *ldq = (m->K + 3) / 4 * 4;
    int8_t *q = cs_kern_qscratch(T * *ldq, sx, T);
    if (q) k->quantize_rows(x, ldx, T, m->K, m->smooth, q, *ldq, *sx);
    return q;
}

float cs_bf16_round(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7F800000u) == 0) x &= 0x80000000u;                  /* zero or denormal: signed zero */
    else if ((x & 0x7FFFFFFFu) > 0x7F800000u) x |= 0x00400000u;     /* NaN: stays a (quiet) NaN */
    else x += 0x7FFFu + ((x >> 16) & 1u);                           /* nearest even; overflow to inf */
    x &= 0xFFFF0000u;
    memcpy(&f, &x, 4);
    return f;
}

void cs_pmat_pack(cs_wdtype dt, const float *W, size_t K, size_t N, size_t ldw, int transposed, void *w_out,
                  float *scale_out) {
    cs_pmat_pack_smooth(dt, W, K, N, ldw, transposed, NULL, w_out, scale_out);
}

void cs_pmat_pack_smooth(cs_wdtype dt, const float *W, size_t K, size_t N, size_t ldw, int transposed,
                         const float *s, void *w_out, float *scale_out) {
    const size_t P = (N + CS_PANEL - 1) / CS_PANEL;
#define WAT(k, n) ((transposed ? W[(n) * ldw + (k)] : W[(k) * ldw + (n)]) * (s ? s[k] : 1.0f))
    if (dt == CS_W_I8) {
        int32_t *colsum = (int32_t *)(void *)(scale_out + P * CS_PANEL);
        memset(w_out, 0, cs_pmat_wbytes(dt, K, N)); /* k padding stays zero */
        for (size_t n = 0; n < P * CS_PANEL; n++) {
            float mx = 0;
            if (n < N)
                for (size_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(WAT(k, n)));
            scale_out[n] = mx > 0 ? mx / 127.0f : 1.0f;
            int32_t cs = 0;
            for (size_t k = 0; k < K && n < N; k++) {
                float q = nearbyintf(WAT(k, n) / scale_out[n]);
                const int8_t qi = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
                ((int8_t *)w_out)[i8_off(K, k, n)] = qi;
                cs += qi;
            }
            colsum[n] = cs;
        }
        return;
    }
    if (dt == CS_W_BF16) {
        memset(w_out, 0, cs_pmat_wbytes(dt, K, N)); /* k padding stays zero */
        for (size_t k = 0; k < K; k++)
            for (size_t n = 0; n < N; n++) ((uint16_t *)w_out)[bf16_off(K, k, n)] = to_bf16(WAT(k, n));
        return;
    }
    for (size_t p = 0; p < P; p++)
        for (size_t k = 0; k < K; k++)
            for (size_t j = 0; j < CS_PANEL; j++) {
                const size_t n = p * CS_PANEL + j, o = (p * K + k) * CS_PANEL + j;
                const float v = n < N ? WAT(k, n) : 0.0f;
                ((float *)w_out)[o] = v;
            }
#undef WAT
}

void cs_pmat_pack_outliers(const float *W, size_t K, size_t N, size_t ldw, int transposed, const uint32_t *idx,
                           size_t n_out, float *out_w) {
    const size_t NP = (N + CS_PANEL - 1) / CS_PANEL * CS_PANEL;
    (void)K;
    for (size_t j = 0; j < n_out; j++)
        for (size_t n = 0; n < NP; n++)
            out_w[j * NP + n] = n < N ? (transposed ? W[n * ldw + idx[j]] : W[idx[j] * ldw + n]) : 0.0f;
}

void cs_pmat_outliers(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                      size_t p1) {
    if (!m->n_out) return;
    const size_t NP = m->n_panels * CS_PANEL, n0 = p0 * CS_PANEL, n1 = p1 * CS_PANEL < m->N ? p1 * CS_PANEL : m->N;
    /* y += x_j w_j one channel at a time: the inner loop runs along n and vectorizes */
    for (size_t t = 0; t < T; t++) {
        float *yr = y + t * ldy;
        for (size_t j = 0; j < m->n_out; j++) {
            const float xo = x[t * ldx + m->out_idx[j]], *wr = m->out_w + j * NP;
            for (size_t n = n0; n < n1; n++) yr[n] += xo * wr[n];
        }
    }
}

float cs_pmat_get(const cs_pmat *m, size_t k, size_t n) {
    const size_t o = ((n / CS_PANEL) * m->K + k) * CS_PANEL + n % CS_PANEL;
    switch (m->dt) {
    case CS_W_F32: return ((const float *)m->w)[o];
    case CS_W_BF16: return from_bf16(((const uint16_t *)m->w)[bf16_off(m->K, k, n)]);
    default: {
        for (size_t j = 0; j < m->n_out; j++)
            if (m->out_idx[j] == k) return m->out_w[j * m->n_panels * CS_PANEL + n];
        const float v = (float)((const int8_t *)m->w)[i8_off(m->K, k, n)] * m->scale[n];
        return m->smooth ? v * m->smooth[k] : v;
    }
    }
}

/* ------------------------------------------------------------ scalar reference */

/* int8: exact integer dot products of quantized rows (see kernels.h). */
static void matmul_q8_scalar(const cs_pmat *m, const int8_t *q, size_t ldq, const float *sx, const float *x,
                             size_t ldx, size_t T, float *y, size_t ldy, size_t p0, size_t p1) {
    const size_t K4 = ldq / 4;
    const int8_t *w = m->w;
    for (size_t p = p0; p < p1; p++)
        for (size_t t = 0; t < T; t++)
            for (size_t j = 0; j < CS_PANEL; j++) {
                const size_t n = p * CS_PANEL + j;
                if (n >= m->N) break;
                int32_t acc = 0;
                for (size_t k = 0; k < ldq; k++) acc += (int32_t)q[t * ldq + k] * w[((p * K4 + k / 4) * CS_PANEL + j) * 4 + k % 4];
                const float v = (float)acc * (sx[t] * m->scale[n]);
                y[t * ldy + n] = v + (m->bias ? m->bias[n] : 0.0f);
            }
    cs_pmat_outliers(m, x, ldx, T, y, ldy, p0, p1);
}

static void matmul_i8_scalar(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                             size_t p1) {
    size_t ldq;
    float *sx;
    int8_t *q = cs_kern_quantize(&cs_kern_scalar, m, x, ldx, T, &ldq, &sx);
    if (q) matmul_q8_scalar(m, q, ldq, sx, x, ldx, T, y, ldy, p0, p1);
}

static void matmul_scalar(const cs_pmat *m, const float *x, size_t ldx, size_t T, float *y, size_t ldy, size_t p0,
                          size_t p1) {
    if (m->dt == CS_W_I8) {
        matmul_i8_scalar(m, x, ldx, T, y, ldy, p0, p1);
        return;
    }
    const size_t K = m->K;
    float *xb = NULL;
    if (m->dt == CS_W_BF16) { /* activations rounded to bf16 (kernels.h) */
        float *unused;
        if (!(xb = (float *)(void *)cs_kern_qscratch(T * K * sizeof(float), &unused, 0))) return;
        for (size_t t = 0; t < T; t++)
            for (size_t k = 0; k < K; k++) xb[t * K + k] = cs_bf16_round(x[t * ldx + k]);
    }
    for (size_t p = p0; p < p1; p++) {
        for (size_t t = 0; t < T; t++) {
            float acc[CS_PANEL] = {0};
            if (m->dt == CS_W_F32) {
                const float *xr = x + t * ldx;
                for (size_t k = 0; k < K; k++)
                    for (size_t j = 0; j < CS_PANEL; j++) acc[j] += xr[k] * ((const float *)m->w)[(p * K + k) * CS_PANEL + j];
            } else {
                /* pair by pair, odd k first; x * w is exact, so acc + x * w rounds once, as an FMA */
                const float *xr = xb + t * K;
                const uint16_t *w = m->w;
                for (size_t k = 0; k < K; k += 2)
                    for (size_t j = 0; j < CS_PANEL; j++) {
                        const size_t n = p * CS_PANEL + j;
                        if (k + 1 < K) acc[j] += xr[k + 1] * from_bf16(w[bf16_off(K, k + 1, n)]);
                        acc[j] += xr[k] * from_bf16(w[bf16_off(K, k, n)]);
                    }
            }
            for (size_t j = 0; j < CS_PANEL; j++) {
                const size_t n = p * CS_PANEL + j;
                if (n >= m->N) break;
                y[t * ldy + n] = acc[j] + (m->bias ? m->bias[n] : 0.0f);
            }
        }
    }
}

static void layernorm_scalar(float *y, const float *x, const float *w, const float *b, size_t C, float eps) {
    float mean = 0;
    for (size_t i = 0; i < C; i++) mean += x[i];
    mean /= (float)C;
    float var = 0;
    for (size_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (float)C;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (size_t i = 0; i < C; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

static void gelu_scalar(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

static float dot_scalar(const float *a, const float *b, size_t n) {
    float s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void softmax_scalar(float *x, size_t n) {
    float mx = -INFINITY, sum = 0;
    for (size_t i = 0; i < n; i++) mx = fmaxf(mx, x[i]);
    for (size_t i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    const float inv = 1.0f / sum;
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

static float dot_bf16_scalar(const float *a, const uint16_t *b, size_t n) {
    float s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * from_bf16(b[i]);
    return s;
}

static void axpy_bf16_scalar(float *y, float a, const uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * from_bf16(x[i]);
}

static float dot_i8_scalar(const float *a, const int8_t *b, size_t n) {
    float s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * (float)b[i];
    return s;
}

static void axpy_i8_scalar(float *y, float a, const int8_t *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * (float)x[i];
}

void cs_attend_generic(const cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                       float *att, float *out) {
    for (size_t j = 0; j < n; j++) att[j] = k->dot(q, cs_kv_krow(kv, j), hd) * scale;
    k->softmax(att, n);
    memset(out, 0, hd * sizeof(float));
    for (size_t j = 0; j < n; j++) k->axpy(out, att[j], cs_kv_vrow(kv, j), hd);
}

void cs_attend_bf16_generic(const cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                            float *att, float *out) {
    for (size_t j = 0; j < n; j++) att[j] = k->dot_bf16(q, cs_kv_krow16(kv, j), hd) * scale;
    k->softmax(att, n);
    memset(out, 0, hd * sizeof(float));
    for (size_t j = 0; j < n; j++) k->axpy_bf16(out, att[j], cs_kv_vrow16(kv, j), hd);
}

void cs_attend_i8_generic(const cs_kern *k, const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale,
                          float *att, float *out) {
    for (size_t j = 0; j < n; j++) {
        const int8_t *r = cs_kv_krow8(kv, j);
        att[j] = k->dot_i8(q, r, hd) * cs_kv_row_scale(r, hd) * scale;
    }
    k->softmax(att, n);
    memset(out, 0, hd * sizeof(float));
    for (size_t j = 0; j < n; j++) {
        const int8_t *r = cs_kv_vrow8(kv, j);
        k->axpy_i8(out, att[j] * cs_kv_row_scale(r, hd), r, hd);
    }
}

static void attend_scalar(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                          float *out) {
    cs_attend_generic(&cs_kern_scalar, q, kv, n, hd, scale, att, out);
}

static void attend_bf16_scalar(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                               float *out) {
    cs_attend_bf16_generic(&cs_kern_scalar, q, kv, n, hd, scale, att, out);
}

static void attend_i8_scalar(const float *q, const cs_kvhead *kv, size_t n, size_t hd, float scale, float *att,
                             float *out) {
    cs_attend_i8_generic(&cs_kern_scalar, q, kv, n, hd, scale, att, out);
}

void cs_attend_causal_generic(const cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                              size_t hd, float scale, float *att, float *out, size_t ldo) {
    for (size_t i = 0; i < nq; i++) k->attend(q + i * ldq, kv, p0 + i + 1, hd, scale, att, out + i * ldo);
}

void cs_attend_causal_bf16_generic(const cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv, size_t p0,
                                   size_t nq, size_t hd, float scale, float *att, float *out, size_t ldo) {
    for (size_t i = 0; i < nq; i++) k->attend_bf16(q + i * ldq, kv, p0 + i + 1, hd, scale, att, out + i * ldo);
}

void cs_attend_causal_i8_generic(const cs_kern *k, const float *q, size_t ldq, const cs_kvhead *kv, size_t p0,
                                 size_t nq, size_t hd, float scale, float *att, float *out, size_t ldo) {
    for (size_t i = 0; i < nq; i++) k->attend_i8(q + i * ldq, kv, p0 + i + 1, hd, scale, att, out + i * ldo);
}

/* attend_causal over blocks of NB <= ATT_QB_SCALAR queries: each key and
 * value element is read once per block. Per (query, key) the score is still
 * dot_scalar's sequential sum and per output element the sum over keys runs
 * in axpy_scalar's order, so the bits are attend_scalar's. */
#define ATT_QB_SCALAR 4
static inline __attribute__((always_inline)) void causal_block_scalar(const float *q, size_t ldq, const cs_kvhead *kv,
                                                                      size_t last, size_t hd, float scale, float *att,
                                                                      size_t la, float *out, size_t ldo,
                                                                      const int NB) {
    const float *qi[ATT_QB_SCALAR];
    float *ai[ATT_QB_SCALAR], *oi[ATT_QB_SCALAR];
    for (int i = 0; i < NB; i++) {
        qi[i] = q + (size_t)i * ldq;
        ai[i] = att + (size_t)i * la;
        oi[i] = out + (size_t)i * ldo;
    }
    for (size_t j = 0; j < last + NB; j++) { /* query i sees keys 0 .. last + i */
        const float *kj = cs_kv_krow(kv, j);
        float s[ATT_QB_SCALAR] = {0};
        for (size_t e = 0; e < hd; e++) {
            const float kx = kj[e];
            for (int i = 0; i < NB; i++) s[i] += qi[i][e] * kx;
        }
        for (int i = 0; i < NB; i++)
            if (j <= last + (size_t)i) ai[i][j] = s[i] * scale;
    }
    for (int i = 0; i < NB; i++) {
        softmax_scalar(ai[i], last + (size_t)i + 1);
        memset(oi[i], 0, hd * sizeof(float));
    }
    for (size_t j = 0; j < last + NB; j++) {
        const float *vj = cs_kv_vrow(kv, j);
        for (int i = 0; i < NB; i++) {
            if (j > last + (size_t)i) continue;
            const float a = ai[i][j];
            for (size_t e = 0; e < hd; e++) oi[i][e] += a * vj[e];
        }
    }
}

static void attend_causal_scalar(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                                 float scale, float *att, float *out, size_t ldo) {
    const size_t la = p0 + nq; /* row stride of the scores in att */
    for (size_t b = 0; b < nq; b += ATT_QB_SCALAR) {
        const float *qb = q + b * ldq;
        float *ab = att + b * la, *ob = out + b * ldo;
        switch (nq - b < ATT_QB_SCALAR ? nq - b : ATT_QB_SCALAR) {
        case 4: causal_block_scalar(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 4); break;
        case 3: causal_block_scalar(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 3); break;
        case 2: causal_block_scalar(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 2); break;
        default: causal_block_scalar(qb, ldq, kv, p0 + b, hd, scale, ab, la, ob, ldo, 1); break;
        }
    }
}

static void attend_causal_bf16_scalar(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq,
                                      size_t hd, float scale, float *att, float *out, size_t ldo) {
    cs_attend_causal_bf16_generic(&cs_kern_scalar, q, ldq, kv, p0, nq, hd, scale, att, out, ldo);
}

static void attend_causal_i8_scalar(const float *q, size_t ldq, const cs_kvhead *kv, size_t p0, size_t nq, size_t hd,
                                    float scale, float *att, float *out, size_t ldo) {
    cs_attend_causal_i8_generic(&cs_kern_scalar, q, ldq, kv, p0, nq, hd, scale, att, out, ldo);
}

const cs_kern cs_kern_scalar = {
    .name = "scalar", .isa = CS_ISA_SCALAR, .matmul = matmul_scalar, .matmul_q8 = matmul_q8_scalar, .layernorm = layernorm_scalar,
    .gelu_tanh = gelu_scalar, .dot = dot_scalar, .axpy = axpy_scalar, .softmax = softmax_scalar,
    .quantize_rows = cs_quantize_rows, .attend = attend_scalar, .attend_causal = attend_causal_scalar,
    .dot_bf16 = dot_bf16_scalar, .axpy_bf16 = axpy_bf16_scalar, .attend_bf16 = attend_bf16_scalar,
    .attend_causal_bf16 = attend_causal_bf16_scalar, .dot_i8 = dot_i8_scalar, .axpy_i8 = axpy_i8_scalar,
    .attend_i8 = attend_i8_scalar, .attend_causal_i8 = attend_causal_i8_scalar, .fwht = cs_fwht,
    .kv_quantize_row = cs_kv_quantize_row,
};

/* ------------------------------------------------------------------ dispatch */

const cs_kern *cs_kern_for(cs_isa isa) {
    __builtin_cpu_init();
    switch (isa) {
    case CS_ISA_SCALAR: return &cs_kern_scalar;
    case CS_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &cs_kern_avx2 : NULL;
    case CS_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl")
                   ? &cs_kern_avx512
                   : NULL;
    default: return NULL;
    }
}

const cs_kern *cs_kern_best(void) {
    const char *cap = getenv("CS_KERNELS");
    cs_isa top = CS_ISA_AVX512;
    if (cap && !strcmp(cap, "scalar")) top = CS_ISA_SCALAR;
    else if (cap && !strcmp(cap, "avx2")) top = CS_ISA_AVX2;
    for (int i = (int)top; i > 0; i--) {
        const cs_kern *k = cs_kern_for((cs_isa)i);
        if (k) return k;
    }
    return &cs_kern_scalar;
}
