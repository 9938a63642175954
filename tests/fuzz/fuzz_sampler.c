/* libFuzzer target: the sampler (src/engine/sampler.h), whose filters are
 * written for speed (heap top-k, radix-sorted top-p, SIMD scans) and must keep
 * exactly what the plain definitions keep.
 *
 * Input: 8 header bytes (top_k, top_p, temperature, repetition penalty,
 * do_sample, a history length, a seed), then the scores as int16 values /
 * 256 (finite, many ties, both zero signs via a flag bit), up to 4096.
 * Checked against reference versions that sort everything:
 *   - top-k keeps exactly the scores >= the k-th largest (ties kept);
 *   - top-p keeps exactly what the ascending (score, id) cumulative softmax
 *     cut keeps (the most likely always);
 *   - the temperature path leaves no +inf / NaN; pick returns a kept id
 *     (greedy: the first arg-max), and the same seed gives the same id;
 *   - a sampled pick is the id the draw's definition (sampler.h) takes from
 *     what the processors keep (pick finds top-k's candidates its own way). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "fuzz_common.h"

enum { MAX_V = 4096 };

static const float *g_sc;
static int cmp_asc_id(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_sc[x] != g_sc[y]) return g_sc[x] < g_sc[y] ? -1 : 1;
    return (x > y) - (x < y);
}
static int cmp_desc(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void ref_top_k(float *x, size_t V, int k, float *tmp) {
    if (k <= 0 || (size_t)k >= V) return;
    memcpy(tmp, x, V * sizeof *x);
    qsort(tmp, V, sizeof *tmp, cmp_desc);
    const float kth = tmp[k - 1];
    for (size_t i = 0; i < V; i++)
        if (x[i] < kth) x[i] = -INFINITY;
}

static void ref_top_p(float *x, size_t V, float p, float *tmp, int32_t *id) {
    if (p >= 1.0f) return;
    size_t n = 0;
    float mx = -INFINITY, sum = 0;
    for (size_t i = 0; i < V; i++)
        if (x[i] != -INFINITY) id[n++] = (int32_t)i, mx = x[i] > mx ? x[i] : mx;
    if (!n) return;
    g_sc = x;
    qsort(id, n, sizeof *id, cmp_asc_id);
    for (size_t i = 0; i < n; i++) sum += (tmp[i] = expf(x[id[i]] - mx));
    const float thresh = (float)(1.0 - (double)p);
    double cum = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        cum += (double)(tmp[i] / sum);
        if ((float)cum <= thresh) x[id[i]] = -INFINITY;
        else break;
    }
}

/* Over the kept ids in id order: weights exp(score - max) in double, one
 * uniform times their total, walked until passed. */
static int32_t ref_draw(const float *x, size_t V, cs_rng *r) {
    float mx = -INFINITY;
    size_t best = 0;
    for (size_t i = 0; i < V; i++)
        if (x[i] > mx) mx = x[i], best = i;
    double total = 0, acc = 0;
    for (size_t i = 0; i < V; i++)
        if (x[i] != -INFINITY) total += exp((double)(x[i] - mx));
    const double u = cs_rng_uniform(r) * total;
    size_t last = best;
    for (size_t i = 0; i < V; i++) {
        if (x[i] == -INFINITY) continue;
        acc += exp((double)(x[i] - mx));
        last = i;
        if (u < acc) return (int32_t)i;
    }
    return (int32_t)last;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    if (n < 8 + 2 * 2) return 0;
    static const float ps[8] = {1.0f, 0.9f, 0.5f, 0.1f, 1e-6f, 0.999f, 0.95f, 0.3f};
    static const float ts[8] = {1.0f, 0.7f, 2.0f, 1e-6f, 1e-30f, 1e-40f, 0.1f, 30.0f};
    static const float rs[4] = {1.0f, 1.2f, 0.5f, 3.0f};
    const size_t V = (n - 8) / 2 > MAX_V ? MAX_V : (n - 8) / 2;
    cs_sample_params p = {.do_sample = d[4] & 1, .top_k = d[0] | (d[1] & 15) << 8, .top_p = ps[d[2] & 7],
                          .temperature = ts[d[2] >> 3 & 7], .repetition_penalty = rs[d[3] & 3]};
    const size_t n_hist = (size_t)(d[5] % 16);
    static float x[MAX_V], y[MAX_V], z[MAX_V], tmp[MAX_V];
    static int32_t id[MAX_V], hist[16];
    for (size_t i = 0; i < V; i++) {
        int16_t v;
        memcpy(&v, d + 8 + 2 * i, 2);
        x[i] = (float)(v >> 1) / 256.0f;
        if (x[i] == 0 && (v & 1)) x[i] = -0.0f;
    }
    for (size_t i = 0; i < n_hist; i++) hist[i] = (int32_t)((d[6] * 31 + i * 7) % V);
    cs_sampler s;
    cs_err err = {{0}};
    if (cs_sampler_init(&s, V, &err)) fz_fail("cs_sampler_init: %s", err.msg);

    /* each filter alone, on the same input */
    memcpy(y, x, V * sizeof *x);
    memcpy(z, x, V * sizeof *x);
    cs_sampler_top_k(&s, y, p.top_k);
    ref_top_k(z, V, p.top_k, tmp);
    for (size_t i = 0; i < V; i++)
        if ((y[i] == -INFINITY) != (z[i] == -INFINITY)) fz_fail("top_k %d: id %zu (score %g) differs", p.top_k, i, x[i]);
    cs_sampler_top_p(&s, y, p.top_p); /* after top-k: the -inf ones are out already */
    ref_top_p(z, V, p.top_p, tmp, id);
    for (size_t i = 0; i < V; i++)
        if ((y[i] == -INFINITY) != (z[i] == -INFINITY))
            fz_fail("top_p %g after top_k %d: id %zu (score %g) differs", p.top_p, p.top_k, i, x[i]);

    memcpy(y, x, V * sizeof *x);
    cs_sampler_temperature(y, V, p.temperature);
    for (size_t i = 0; i < V; i++)
        if (isnan(y[i]) || y[i] == INFINITY) fz_fail("temperature %g: score %zu became %g", p.temperature, i, y[i]);

    /* the whole pipeline: the pick is one of the ids the processors keep */
    memcpy(y, x, V * sizeof *x);
    memcpy(z, x, V * sizeof *x);
    cs_rng r1, r2;
    cs_rng_seed(&r1, d[7]);
    cs_rng_seed(&r2, d[7]);
    const int32_t t1 = cs_sampler_pick(&s, &p, y, hist, n_hist, &r1);
    const int32_t t2 = cs_sampler_pick(&s, &p, z, hist, n_hist, &r2);
    if (t1 != t2) fz_fail("same seed, different picks %d %d", t1, t2);
    if (t1 < 0 || (size_t)t1 >= V) fz_fail("pick %d outside [0, %zu)", t1, V);
    memcpy(z, x, V * sizeof *x);
    cs_sampler_process(&s, &p, z, hist, n_hist);
    if (z[t1] == -INFINITY) fz_fail("pick %d was filtered out", t1);
    if (p.do_sample) {
        cs_rng r3;
        cs_rng_seed(&r3, d[7]);
        const int32_t t3 = ref_draw(z, V, &r3);
        if (t3 != t1) fz_fail("pick %d, the draw over what the processors keep %d (k %d, t %g)", t1, t3, p.top_k, p.temperature);
    }
    if (!p.do_sample)
        for (size_t i = 0; i < V; i++)
            if (z[i] > z[t1] || (z[i] == z[t1] && (int32_t)i < t1)) fz_fail("greedy pick %d is not the first arg-max", t1);
    cs_sampler_free(&s);
    return 0;
}
