#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    s->vals = malloc(vocab * sizeof *s->vals);
    s->idx = malloc(vocab * sizeof *s->idx);
    s->seen = calloc(vocab, 1);
    if (!s->vals || !s->idx || !s->seen) {
        cs_sampler_free(s);
        return cs_err_set(err, "out of memory for sampler scratch");
    }
    return 0;
}

void cs_sampler_free(cs_sampler *s) {
    free(s->vals);
    free(s->idx);
    free(s->seen);
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

void cs_sampler_temperature(float *scores, size_t V, float t) {
    if (t == 1.0f) return;
    float mx = -INFINITY, big = 0;
    for (size_t i = 0; i < V; i++)
        if (isfinite(scores[i])) {
            if (scores[i] > mx) mx = scores[i];
            if (fabsf(scores[i]) > big) big = fabsf(scores[i]);
        }
    if (isfinite(big / t)) {
        for (size_t i = 0; i < V; i++) scores[i] = scores[i] / t;
        return;
    }
    /* Scores / t would overflow to +inf and later give inf - inf. Shifting by the
     * maximum first leaves the distribution as it is (softmax, top-k and top-p do
     * not see a shift) and sends it towards greedy as t -> 0, as it should. */
    for (size_t i = 0; i < V; i++) scores[i] = (scores[i] - mx) / t;
}

/* k-th largest of v[0..n) (1-based k), by quickselect; reorders v. */
static float kth_largest(float *v, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return v[want];
    }
    return v[want];
}

void cs_sampler_top_k(cs_sampler *s, float *scores, int k) {
    const size_t V = s->V;
    if (k <= 0 || (size_t)k >= V) return;
    memcpy(s->vals, scores, V * sizeof(float));
    const float kth = kth_largest(s->vals, V, (size_t)k);
    for (size_t i = 0; i < V; i++)
        if (scores[i] < kth) scores[i] = -INFINITY;
}

static int cmp_asc(const void *a, const void *b, void *ctx) {
    const float *sc = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (sc[x] != sc[y]) return sc[x] < sc[y] ? -1 : 1;
    return (x > y) - (x < y);
}

void cs_sampler_top_p(cs_sampler *s, float *scores, float top_p) {
    if (top_p >= 1.0f) return;
    /* Only finite scores can survive; -inf ones have zero probability and are
     * removed whatever their position in the ascending order. */
    size_t n = 0;
    float mx = -INFINITY;
    for (size_t i = 0; i < s->V; i++)
        if (scores[i] != -INFINITY) {
            s->idx[n++] = (int32_t)i;
            if (scores[i] > mx) mx = scores[i];
        }
    if (n == 0) return;
    qsort_r(s->idx, n, sizeof *s->idx, cmp_asc, scores);
    float sum = 0;
    for (size_t i = 0; i < n; i++) sum += (s->vals[i] = expf(scores[s->idx[i]] - mx));
    const float thresh = (float)(1.0 - (double)top_p);
    double cum = 0;
    for (size_t i = 0; i + 1 < n; i++) { /* the last (most likely) is always kept */
        cum += (double)(s->vals[i] / sum);
        if ((float)cum <= thresh) scores[s->idx[i]] = -INFINITY;
        else break; /* cumulative sums only grow */
    }
}

void cs_sampler_process(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist) {
    cs_sampler_repetition_penalty(s, scores, hist, n_hist, p->repetition_penalty);
    if (!p->do_sample) return;
    cs_sampler_temperature(scores, s->V, p->temperature);
    cs_sampler_top_k(s, scores, p->top_k);
    cs_sampler_top_p(s, scores, p->top_p);
}

int32_t cs_sampler_pick(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist,
                        cs_rng *rng) {
    const size_t V = s->V;
    cs_sampler_process(s, p, scores, hist, n_hist);
    size_t best = 0;
    for (size_t i = 1; i < V; i++)
        if (scores[i] > scores[best]) best = i;
    if (!p->do_sample) return (int32_t)best;
    const float mx = scores[best];
    double total = 0;
    for (size_t i = 0; i < V; i++) total += scores[i] == -INFINITY ? 0.0 : exp((double)(scores[i] - mx));
    double u = cs_rng_uniform(rng) * total, acc = 0;
    size_t last = best;
    for (size_t i = 0; i < V; i++) {
        if (scores[i] == -INFINITY) continue;
        acc += exp((double)(scores[i] - mx));
        last = i;
        if (u < acc) return (int32_t)i;
    }
    return (int32_t)last; /* rounding at the very end of the range */
}
