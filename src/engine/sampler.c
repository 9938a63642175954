#include "engine/sampler.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#define CS_SSE2 1
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CS_AVX512 1
#endif

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void cs_rng_seed(cs_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cs_rng_next(cs_rng *r) {
    uint64_t *s = r->s;
    const uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double cs_rng_uniform(cs_rng *r) { return (double)(cs_rng_next(r) >> 11) * 0x1.0p-53; }

int cs_sample_params_check(const cs_sample_params *p, cs_err *err) {
    if (!(p->temperature > 0) || !isfinite(p->temperature))
        return cs_err_set(err, "temperature must be a finite number > 0 (got %g)", p->temperature);
    if (p->top_k < 0) return cs_err_set(err, "top_k must be >= 0 (got %d)", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1)) return cs_err_set(err, "top_p must be in (0, 1] (got %g)", p->top_p);
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty))
        return cs_err_set(err, "repetition_penalty must be a finite number > 0 (got %g)", p->repetition_penalty);
    return 0;
}

int cs_sampler_init(cs_sampler *s, size_t vocab, cs_err *err) {
    memset(s, 0, sizeof *s);
    s->V = vocab;
    s->vals = malloc((vocab + 16) * sizeof *s->vals); /* + 16: kth_two_pass's last store */
    s->idx = malloc(vocab * sizeof *s->idx);
    s->seen = calloc(vocab, 1);
    s->keys = vocab <= SIZE_MAX / (2 * sizeof *s->keys) ? malloc(2 * vocab * sizeof *s->keys) : NULL;
    s->w = malloc(vocab * sizeof *s->w);
    s->cand = malloc(vocab * sizeof *s->cand);
    if (!s->vals || !s->idx || !s->seen || !s->keys || !s->w || !s->cand) {
        cs_sampler_free(s);
        return cs_err_set(err, "out of memory for sampler scratch");
    }
    return 0;
}

void cs_sampler_free(cs_sampler *s) {
    free(s->vals);
    free(s->idx);
    free(s->seen);
    free(s->keys);
    free(s->w);
    free(s->cand);
    memset(s, 0, sizeof *s);
}

void cs_sampler_repetition_penalty(cs_sampler *s, float *scores, const int32_t *hist, size_t n, float penalty) {
    if (penalty == 1.0f) return;
    /* Each distinct id once, however often it occurs (gather/scatter semantics). */
    for (size_t i = 0; i < n; i++) {
        int32_t id = hist[i];
        if (id < 0 || (size_t)id >= s->V || s->seen[id]) continue;
        s->seen[id] = 1;
        scores[id] = scores[id] < 0 ? scores[id] * penalty : scores[id] / penalty;
    }
    for (size_t i = 0; i < n; i++)
        if (hist[i] >= 0 && (size_t)hist[i] < s->V) s->seen[hist[i]] = 0;
}

/* Smallest and largest of x[0..n), n >= 1 (NaN-free input). */
static void min_max(const float *x, size_t n, float *mn_out, float *mx_out) {
    float mx = x[0], mn = x[0];
    size_t i0 = 1;
#ifdef CS_SSE2
    if (n >= 8) {
        __m128 a = _mm_loadu_ps(x), b = a, c = a, d = a;
        for (i0 = 0; i0 + 8 <= n; i0 += 8) {
            const __m128 u = _mm_loadu_ps(x + i0), v = _mm_loadu_ps(x + i0 + 4);
            a = _mm_max_ps(a, u), b = _mm_max_ps(b, v), c = _mm_min_ps(c, u), d = _mm_min_ps(d, v);
        }
        float hi[4], lo[4];
        _mm_storeu_ps(hi, _mm_max_ps(a, b));
        _mm_storeu_ps(lo, _mm_min_ps(c, d));
        for (int j = 0; j < 4; j++) mx = hi[j] > mx ? hi[j] : mx, mn = lo[j] < mn ? lo[j] : mn;
    }
#endif
    for (size_t i = i0; i < n; i++) {
        mx = x[i] > mx ? x[i] : mx;
        mn = x[i] < mn ? x[i] : mn;
    }
    *mn_out = mn;
    *mx_out = mx;
}

/* Whether scores in [mn, mx] divide by t without overflow (else the shifted
 * form below); pick_top_k asks the same to know it would be this path. */
static int divides_plainly(float mn, float mx, float t) { return isfinite(fmaxf(fabsf(mx), fabsf(mn)) / t); }

void cs_sampler_temperature(float *scores, size_t V, float t) {
    if (t == 1.0f || V == 0) return;
    float mn, mx;
    min_max(scores, V, &mn, &mx);
    if (mn == -INFINITY || mx == INFINITY) { /* filtered scores: the exact range of the finite ones */
        mx = -INFINITY, mn = INFINITY;
        for (size_t i = 0; i < V; i++)
            if (isfinite(scores[i])) {
                mx = scores[i] > mx ? scores[i] : mx;
                mn = scores[i] < mn ? scores[i] : mn;
            }
        if (mx < mn) return; /* nothing finite */
    }
    if (divides_plainly(mn, mx, t)) {
        for (size_t i = 0; i < V; i++) scores[i] = scores[i] / t;
        return;
    }
    /* Scores / t would overflow to +inf and later give inf - inf. Shifting by the
     * maximum first leaves the distribution as it is (softmax, top-k and top-p do
     * not see a shift) and sends it towards greedy as t -> 0, as it should. */
    for (size_t i = 0; i < V; i++) scores[i] = (scores[i] - mx) / t;
}

/* k-th largest of v[0..n) (1-based k, ties counted), with a min-heap of the k
 * largest seen so far in h (k entries): one compare per element once the heap
 * holds large values, so it is a single fast pass for the small k of top-k.
 * The smallest and largest of v come out of the same pass where asked. */
static void sift_down(float *h, size_t k, size_t i) {
    const float x = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= k) break;
        if (c + 1 < k && h[c + 1] < h[c]) c++;
        if (!(h[c] < x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

/* The scan past the heap's first k: 16 scores at a time skipped while none
 * beats the heap's minimum (the usual case once it holds large values), the
 * minimum and maximum kept on the way. Returns where the scalar tail starts.
 * Any order of insertions leaves the same k-th largest in h[0], so the two
 * scans give the same answer. */
static size_t kth_scan_sse(const float *v, size_t i, size_t n, float *h, size_t k, float *mn, float *mx) {
#ifdef CS_SSE2
    if (i + 16 > n) return i;
    __m128 lo = _mm_set1_ps(*mn), hi = _mm_set1_ps(*mx);
    for (; i + 16 <= n; i += 16) {
        const __m128 t = _mm_set1_ps(h[0]), a = _mm_loadu_ps(v + i), b = _mm_loadu_ps(v + i + 4),
                     c = _mm_loadu_ps(v + i + 8), d = _mm_loadu_ps(v + i + 12);
        lo = _mm_min_ps(lo, _mm_min_ps(_mm_min_ps(a, b), _mm_min_ps(c, d)));
        hi = _mm_max_ps(hi, _mm_max_ps(_mm_max_ps(a, b), _mm_max_ps(c, d)));
        const __m128 g = _mm_or_ps(_mm_or_ps(_mm_cmpgt_ps(a, t), _mm_cmpgt_ps(b, t)),
                                   _mm_or_ps(_mm_cmpgt_ps(c, t), _mm_cmpgt_ps(d, t)));
        if (!_mm_movemask_ps(g)) continue;
        for (size_t j = i; j < i + 16; j++)
            if (v[j] > h[0]) {
                h[0] = v[j];
                sift_down(h, k, 0);
            }
    }
    float l4[4], h4[4];
    _mm_storeu_ps(l4, lo);
    _mm_storeu_ps(h4, hi);
    for (int j = 0; j < 4; j++) *mn = l4[j] < *mn ? l4[j] : *mn, *mx = h4[j] > *mx ? h4[j] : *mx;
#else
    (void)v, (void)n, (void)h, (void)k, (void)mn, (void)mx;
#endif
    return i;
}

#ifdef CS_AVX512
/* The k-th largest of a[0..n) (k <= n), found in place: a[0..k) made a heap,
 * the rest inserted where larger than its minimum. */
static float kth_in_place(float *a, size_t n, size_t k) {
    for (size_t j = k / 2; j-- > 0;) sift_down(a, k, j);
    for (size_t j = k; j < n; j++)
        if (a[j] > a[0]) {
            a[0] = a[j];
            sift_down(a, k, 0);
        }
    return a[0];
}

/* The lanes of a 16-wide step that lie before the end, left lanes. */
static __mmask16 lanes16(size_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* k-th largest for k <= 128 in two vector passes. The scan above spends its
 * time inserting into the heap, whose minimum climbs slowly from the first k
 * scores (an int8 server at 32 clients: 3.6% of its CPU, most of it in those
 * insertions). Here pass 1 keeps the maximum of each of 128 interleaved
 * groups (8 registers x 16 lanes) and the minimum of all; the k-th largest of
 * the 128 maxima, tau, is at most the k-th largest of all (they are 128
 * distinct scores). Pass 2 copies the scores >= tau into buf (at least k: the
 * maxima themselves), and the heap runs over those few. The same k-th
 * largest, minimum and maximum as the scan. buf: n + 16 floats. Returns 0
 * where fewer than k were copied (only a NaN can do that: the caller then
 * takes the scan, whose answer on NaN input is no better, but reads nothing
 * it did not write). */
enum { KTH_GROUPS = 128 };
__attribute__((target("avx512f"))) static int kth_two_pass(const float *v, size_t n, size_t k, float *buf,
                                                           float *kth, float *mn_out, float *mx_out) {
    enum { R = KTH_GROUPS / 16 };
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 g[R], lo = _mm512_set1_ps(INFINITY);
    for (int r = 0; r < R; r++) g[r] = ninf;
    size_t i = 0;
    for (; i + KTH_GROUPS <= n; i += KTH_GROUPS)
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_loadu_ps(v + i + 16 * (size_t)r);
            g[r] = _mm512_max_ps(g[r], a);
            lo = _mm512_min_ps(lo, a);
        }
    for (; i < n; i += 16) { /* groups 0..15 take the tail */
        const __mmask16 m = lanes16(n - i);
        const __m512 a = _mm512_mask_loadu_ps(ninf, m, v + i);
        g[0] = _mm512_max_ps(g[0], a);
        lo = _mm512_mask_min_ps(lo, m, lo, a);
    }
    float gm[KTH_GROUPS];
    __m512 hi = g[0];
    for (int r = 0; r < R; r++) _mm512_storeu_ps(gm + 16 * r, g[r]), hi = _mm512_max_ps(hi, g[r]);
    const __m512 tau = _mm512_set1_ps(kth_in_place(gm, KTH_GROUPS, k));
    size_t c = 0;
    for (i = 0; i < n; i += 16) {
        const __mmask16 t = lanes16(n - i);
        const __m512 a = _mm512_maskz_loadu_ps(t, v + i);
        const __mmask16 m = _mm512_mask_cmp_ps_mask(t, a, tau, _CMP_GE_OQ);
        if (!m) continue;
        _mm512_storeu_ps(buf + c, _mm512_maskz_compress_ps(m, a)); /* register compress: fast on every AVX-512 CPU */
        c += (size_t)__builtin_popcount(m);
    }
    if (c < k) return 0;
    *kth = kth_in_place(buf, c, k);
    *mn_out = _mm512_reduce_min_ps(lo), *mx_out = _mm512_reduce_max_ps(hi);
    return 1;
}
#endif

/* Whether the scan uses AVX-512: -1 until the first scan asks the CPU (any
 * thread may; they all store the same answer). */
static _Atomic int kth_avx512 = -1;
static int use_avx512(void) {
    int u = atomic_load_explicit(&kth_avx512, memory_order_relaxed);
    if (u < 0) {
#ifdef CS_AVX512
        u = __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
        u = 0;
#endif
        atomic_store_explicit(&kth_avx512, u, memory_order_relaxed);
    }
    return u;
}
void cs_sampler_simd(int avx512) {
    atomic_store_explicit(&kth_avx512, -1, memory_order_relaxed);
    if (!avx512 || !use_avx512()) atomic_store_explicit(&kth_avx512, 0, memory_order_relaxed);
}

/* h: scratch of n + 16 floats (the first k the heap). */
static float kth_largest(const float *v, size_t n, size_t k, float *h, float *mn_out, float *mx_out) {
    float mn, mx;
#ifdef CS_AVX512
    float kth;
    if (k <= KTH_GROUPS && n >= 2 * KTH_GROUPS && use_avx512() && kth_two_pass(v, n, k, h, &kth, &mn, &mx)) {
        if (mn_out) *mn_out = mn, *mx_out = mx;
        return kth;
    }
#endif
    memcpy(h, v, k * sizeof *h);
    for (size_t i = k / 2; i-- > 0;) sift_down(h, k, i);
    mn = v[0], mx = v[0]; /* of the whole input, on the way (one pass for both) */
    for (size_t i = 1; i < k; i++) mn = v[i] < mn ? v[i] : mn, mx = v[i] > mx ? v[i] : mx;
    size_t i = kth_scan_sse(v, k, n, h, k, &mn, &mx);
    for (; i < n; i++) {
        mn = v[i] < mn ? v[i] : mn, mx = v[i] > mx ? v[i] : mx;
        if (v[i] > h[0]) {
            h[0] = v[i];
            sift_down(h, k, 0);
        }
    }
    if (mn_out) *mn_out = mn, *mx_out = mx;
    return h[0];
}

float cs_sampler_kth(cs_sampler *s, const float *scores, size_t n, int k, float *mn, float *mx) {
    return kth_largest(scores, n, (size_t)k, s->vals, mn, mx);
}

void cs_sampler_top_k(cs_sampler *s, float *scores, int k) {
    const size_t V = s->V;
    if (k <= 0 || (size_t)k >= V) return;
    const float kth = kth_largest(scores, V, (size_t)k, s->vals, NULL, NULL);
    for (size_t i = 0; i < V; i++) scores[i] = scores[i] < kth ? -INFINITY : scores[i];
}

/* Ids of the scores >= x0, in id order. */
static size_t gather_at_least(const float *x, size_t n, float x0, int32_t *idx) {
    size_t c = 0, i = 0;
#ifdef CS_SSE2
    const __m128 t = _mm_set1_ps(x0);
    for (; i + 16 <= n; i += 16) {
        const int b = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i), t)) |
                      _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i + 4), t)) << 4 |
                      _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i + 8), t)) << 8 |
                      _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i + 12), t)) << 12;
        for (unsigned m = (unsigned)b; m; m &= m - 1) idx[c++] = (int32_t)(i + (size_t)__builtin_ctz(m));
    }
#endif
    for (; i < n; i++)
        if (x[i] >= x0) idx[c++] = (int32_t)i;
    return c;
}

/* Ids of the scores that are not -inf (what the filters left), in id order
 * (NaN-free input). */
static size_t gather_finite(const float *x, size_t n, int32_t *idx) { return gather_at_least(x, n, -FLT_MAX, idx); }

/* Float order as unsigned order (no NaN; -0 just below +0), and back. */
static uint32_t f_key(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
static float key_f(uint32_t k) {
    const uint32_t u = k & 0x80000000u ? k & 0x7FFFFFFFu : ~k;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Sort key: ascending by score (as compared with <: -0 equals +0), then by id. */
static uint64_t order_key(float f, uint32_t id) { return (uint64_t)f_key(f == 0 ? 0.0f : f) << 32 | id; }

/* LSD radix sort of n distinct keys, 8 bits a pass; passes where every key
 * has the same digit are skipped. Result in a (tmp: n more). */
static void radix_sort(uint64_t *a, uint64_t *tmp, size_t n) {
    for (int shift = 0; shift < 64; shift += 8) {
        size_t cnt[256] = {0};
        for (size_t i = 0; i < n; i++) cnt[(a[i] >> shift) & 255]++;
        if (cnt[(a[0] >> shift) & 255] == n) continue;
        size_t pos = 0;
        for (int d = 0; d < 256; d++) {
            const size_t c = cnt[d];
            cnt[d] = pos;
            pos += c;
        }
        for (size_t i = 0; i < n; i++) tmp[cnt[(a[i] >> shift) & 255]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

/* top-p on a list of n finite candidates kept in ascending id order, their
 * scores in val: the removed ones become -inf in val. Sorted ascending by
 * (score, id); as the list is in id order, the position j breaks ties the
 * same way. */
static void top_p_list(cs_sampler *s, float *val, size_t n, float top_p) {
    if (n == 0) return;
    float mx = -INFINITY;
    for (size_t j = 0; j < n; j++) {
        s->keys[j] = order_key(val[j], (uint32_t)j);
        mx = val[j] > mx ? val[j] : mx;
    }
    radix_sort(s->keys, s->keys + s->V, n);
    float sum = 0;
    for (size_t i = 0; i < n; i++) sum += (s->vals[i] = expf(val[(uint32_t)s->keys[i]] - mx));
    const float thresh = (float)(1.0 - (double)top_p);
    double cum = 0;
    for (size_t i = 0; i + 1 < n; i++) { /* the last (most likely) is always kept */
        cum += (double)(s->vals[i] / sum);
        if ((float)cum <= thresh) val[(uint32_t)s->keys[i]] = -INFINITY;
        else break; /* cumulative sums only grow */
    }
}

void cs_sampler_top_p(cs_sampler *s, float *scores, float top_p) {
    if (top_p >= 1.0f) return;
    /* Only finite scores can survive; -inf ones have zero probability and are
     * removed whatever their position in the ascending order. */
    const size_t n = gather_finite(scores, s->V, s->idx);
    for (size_t j = 0; j < n; j++) s->cand[j] = scores[s->idx[j]];
    top_p_list(s, s->cand, n, top_p);
    for (size_t j = 0; j < n; j++) scores[s->idx[j]] = s->cand[j];
}

/* First index of the maximum (NaN-free input). */
static size_t first_argmax(const float *x, size_t n) {
    if (n == 0) return 0;
    float mn, mx;
    min_max(x, n, &mn, &mx);
    size_t i = 0;
#ifdef CS_SSE2
    const __m128 mv = _mm_set1_ps(mx);
    for (; i + 8 <= n; i += 8)
        if (_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + i), mv)) | _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + i + 4), mv)))
            break;
#endif
    for (; i < n; i++)
        if (x[i] == mx) return i;
    return 0;
}

void cs_sampler_process(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist) {
    cs_sampler_repetition_penalty(s, scores, hist, n_hist, p->repetition_penalty);
    if (!p->do_sample) return;
    cs_sampler_temperature(scores, s->V, p->temperature);
    cs_sampler_top_k(s, scores, p->top_k);
    cs_sampler_top_p(s, scores, p->top_p);
}

/* The draw among the n candidates (ids in ascending order, scores in val;
 * -inf ones skipped): softmax weights in double, one uniform, walked in id
 * order. */
static int32_t draw_list(cs_sampler *s, const int32_t *id, const float *val, size_t n, cs_rng *rng) {
    size_t best = 0;
    float mx = -INFINITY;
    for (size_t j = 0; j < n; j++)
        if (val[j] > mx) mx = val[j], best = (size_t)id[j];
    double total = 0, *w = s->w;
    for (size_t j = 0; j < n; j++) total += (w[j] = val[j] == -INFINITY ? 0.0 : exp((double)(val[j] - mx)));
    double u = cs_rng_uniform(rng) * total, acc = 0;
    size_t last = best;
    for (size_t j = 0; j < n; j++) {
        if (val[j] == -INFINITY) continue;
        const size_t i = (size_t)id[j];
        acc += w[j];
        last = i;
        if (u < acc) return (int32_t)i;
    }
    return (int32_t)last; /* rounding at the very end of the range */
}

/* Temperature then top-k (then top-p and the draw) without a pass that writes
 * the vocabulary: the same candidates and scores as the processors in turn.
 * x / t is monotone in x (t > 0, rounding keeps order), so the k-th largest
 * of the divided scores is the k-th largest of x divided, and the survivors
 * are the ids with x / t >= that: an interval x >= x0, x0 found by bisecting
 * the float order between the minimum and the k-th largest (a division may
 * map neighbours below the k-th to the same quotient: they survive too, as
 * they do after a division of everything). Returns -1 where the processors
 * would do something else: non-finite scores, or scores / t overflowing
 * (cs_sampler_temperature's shifted form). */
static int32_t pick_top_k(cs_sampler *s, const cs_sample_params *p, const float *x, cs_rng *rng) {
    const size_t V = s->V, k = (size_t)p->top_k;
    const float t = p->temperature;
    float mn, mx, x0 = kth_largest(x, V, k, s->vals, &mn, &mx);
    if (!isfinite(mn) || !isfinite(mx)) return -1;
    if (t != 1.0f && !divides_plainly(mn, mx, t)) return -1;
    if (t != 1.0f) {
        const float thr = x0 / t;
        uint32_t lo = f_key(mn), hi = f_key(x0); /* the answer is in [lo, hi]; key_f(hi) / t >= thr */
        while (lo < hi) {
            const uint32_t mid = lo + (hi - lo) / 2;
            if (key_f(mid) / t >= thr) hi = mid;
            else lo = mid + 1;
        }
        x0 = key_f(hi);
    }
    const size_t n = gather_at_least(x, V, x0, s->idx);
    for (size_t j = 0; j < n; j++) s->cand[j] = t != 1.0f ? x[s->idx[j]] / t : x[s->idx[j]];
    if (p->top_p < 1.0f) top_p_list(s, s->cand, n, p->top_p);
    return draw_list(s, s->idx, s->cand, n, rng);
}

int32_t cs_sampler_pick(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist,
                        cs_rng *rng) {
    const size_t V = s->V;
    if (p->do_sample && p->top_k > 0 && (size_t)p->top_k < V) {
        cs_sampler_repetition_penalty(s, scores, hist, n_hist, p->repetition_penalty);
        const int32_t tok = pick_top_k(s, p, scores, rng);
        if (tok >= 0) return tok;
        cs_sampler_temperature(scores, V, p->temperature);
        cs_sampler_top_k(s, scores, p->top_k);
        cs_sampler_top_p(s, scores, p->top_p);
    } else {
        cs_sampler_process(s, p, scores, hist, n_hist);
        if (!p->do_sample) return (int32_t)first_argmax(scores, V);
    }
    const size_t n = gather_finite(scores, V, s->idx);
    for (size_t j = 0; j < n; j++) s->cand[j] = scores[s->idx[j]];
    return draw_list(s, s->idx, s->cand, n, rng);
}
