/* cs_hist: see history.h. */
#include "serve/history.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hkey {
    char name[CS_HIST_KEY_MAX];
    int used;
    uint64_t last_use;            /* sample counter of its last sample (eviction order) */
    double last_t;
    cs_hist_counters win[CS_HIST_WINDOW + 1]; /* the latest counters, ring */
    size_t win_head, win_n;       /* index of the newest; how many are valid */
    cs_hist_point *pts;           /* ring of max_points */
    size_t head, n;               /* index of the oldest point; count */
} hkey;

struct cs_hist {
    size_t max_points, n_bounds;
    double bounds[CS_HIST_MAX_BUCKETS];
    uint64_t clock;
    hkey keys[CS_HIST_MAX_KEYS];
};

int cs_hist_init(cs_hist **out, size_t max_points, const double *bounds, size_t n_bounds, cs_err *err) {
    *out = NULL;
    if (n_bounds >= CS_HIST_MAX_BUCKETS) return cs_err_set(err, "history: %zu bounds (at most %d)", n_bounds,
                                                           CS_HIST_MAX_BUCKETS - 1);
    for (size_t i = 1; i < n_bounds; i++)
        if (!(bounds[i] > bounds[i - 1])) return cs_err_set(err, "history: bounds must increase");
    cs_hist *h = calloc(1, sizeof *h);
    if (!h) return cs_err_set(err, "out of memory");
    h->max_points = max_points ? max_points : CS_HIST_MAX_POINTS;
    h->n_bounds = n_bounds;
    if (n_bounds) memcpy(h->bounds, bounds, n_bounds * sizeof *bounds);
    for (size_t i = 0; i < CS_HIST_MAX_KEYS; i++) {
        h->keys[i].pts = calloc(h->max_points, sizeof *h->keys[i].pts);
        if (!h->keys[i].pts) {
            cs_hist_free(h);
            return cs_err_set(err, "out of memory");
        }
    }
    *out = h;
    return 0;
}

void cs_hist_free(cs_hist *h) {
    if (!h) return;
    for (size_t i = 0; i < CS_HIST_MAX_KEYS; i++) free(h->keys[i].pts);
    free(h);
}

double cs_hist_quantile(const uint64_t *counts, const double *bounds, size_t n_bounds, double q) {
    uint64_t total = 0;
    for (size_t i = 0; i <= n_bounds; i++) total += counts[i];
    if (!total) return -1;
    if (q < 0) q = 0;
    if (q > 1) q = 1;
    const double rank = q * (double)total;
    uint64_t cum = 0;
    for (size_t i = 0; i < n_bounds; i++) {
        const uint64_t prev = cum;
        cum += counts[i];
        if ((double)cum >= rank && counts[i] > 0) {
            const double lo = i ? bounds[i - 1] : 0, hi = bounds[i];
            return lo + (hi - lo) * (rank - (double)prev) / (double)counts[i];
        }
    }
    return n_bounds ? bounds[n_bounds - 1] : 0;
}

static const hkey *find(const cs_hist *h, const char *key) {
    for (size_t i = 0; i < CS_HIST_MAX_KEYS; i++)
        if (h->keys[i].used && !strncmp(h->keys[i].name, key, CS_HIST_KEY_MAX - 1)) return &h->keys[i];
    return NULL;
}

/* The key's slot: the existing one, a free one, or the least recently sampled. */
static hkey *slot(cs_hist *h, const char *key) {
    hkey *k = (hkey *)find(h, key), *victim = NULL;
    if (k) return k;
    for (size_t i = 0; i < CS_HIST_MAX_KEYS && !victim; i++)
        if (!h->keys[i].used) victim = &h->keys[i];
    if (!victim) {
        victim = &h->keys[0];
        for (size_t i = 1; i < CS_HIST_MAX_KEYS; i++)
            if (h->keys[i].last_use < victim->last_use) victim = &h->keys[i];
    }
    cs_hist_point *pts = victim->pts;
    memset(victim, 0, sizeof *victim);
    victim->pts = pts;
    victim->used = 1;
    snprintf(victim->name, sizeof victim->name, "%s", key);
    return victim;
}

static uint64_t d64(uint64_t cur, uint64_t prev) { return cur >= prev ? cur - prev : cur; }
static double dd(double cur, double prev) { return cur >= prev ? cur - prev : cur; }

/* Quantile of the bucket deltas between two counter sets. */
static float window_q(const cs_hist *h, const uint64_t *cur, const uint64_t *old, double q) {
    uint64_t d[CS_HIST_MAX_BUCKETS];
    for (size_t b = 0; b <= h->n_bounds; b++) d[b] = d64(cur[b], old[b]);
    return (float)cs_hist_quantile(d, h->bounds, h->n_bounds, q);
}

int cs_hist_sample(cs_hist *h, const char *key, double t, const cs_hist_counters *c) {
    hkey *k = slot(h, key ? key : "");
    k->last_use = ++h->clock;
    if (k->win_n && !(t > k->last_t)) return 0;
    const double dt = k->win_n ? t - k->last_t : 0;
    const cs_hist_counters *prev = k->win_n ? &k->win[k->win_head] : NULL;
    cs_hist_point p = {.t = t};
    if (prev) {
        for (int i = 0; i < CS_HIST_NCLASS; i++) p.rps[i] = (float)((double)d64(c->req[i], prev->req[i]) / dt);
        p.tokens_s = (float)(dd(c->tokens, prev->tokens) / dt);
        /* the oldest counters still in the window (the window holds the newest CS_HIST_WINDOW + 1) */
        const size_t cap = CS_HIST_WINDOW + 1;
        const size_t oldest = (k->win_head + cap - (k->win_n - 1)) % cap;
        const cs_hist_counters *old = &k->win[k->win_n == cap ? (oldest + 1) % cap : oldest];
        p.p50_ms = window_q(h, c->lat, old->lat, 0.5);
        p.p99_ms = window_q(h, c->lat, old->lat, 0.99);
        p.ttft_p50_ms = window_q(h, c->ttft, old->ttft, 0.5);
        p.ttft_p99_ms = window_q(h, c->ttft, old->ttft, 0.99);
    }
    p.queued = (float)c->queued;
    p.ongoing = (float)c->ongoing;
    p.batch = (float)c->batch;
    k->win_head = k->win_n ? (k->win_head + 1) % (CS_HIST_WINDOW + 1) : 0;
    k->win[k->win_head] = *c;
    if (k->win_n < CS_HIST_WINDOW + 1) k->win_n++;
    k->last_t = t;
    if (!prev) return 0;
    if (k->n < h->max_points) {
        k->pts[(k->head + k->n) % h->max_points] = p;
        k->n++;
    } else {
        k->pts[k->head] = p;
        k->head = (k->head + 1) % h->max_points;
    }
    return 1;
}

size_t cs_hist_count(const cs_hist *h, const char *key) {
    const hkey *k = find(h, key ? key : "");
    return k ? k->n : 0;
}

const cs_hist_point *cs_hist_at(const cs_hist *h, const char *key, size_t i) {
    const hkey *k = find(h, key ? key : "");
    if (!k || i >= k->n) return NULL;
    return &k->pts[(k->head + i) % h->max_points];
}

size_t cs_hist_keys(const cs_hist *h, const char **names, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < CS_HIST_MAX_KEYS && n < cap; i++)
        if (h->keys[i].used) names[n++] = h->keys[i].name;
    return n;
}
