/* cs_hist: the control plane's recent history for the dashboard, a ring of
 * one point per sample (the control loop samples every CS_HIST_PERIOD_S) per
 * key ("" = every application together, else an application's name).
 *
 * The caller hands in cumulative counters as read at one instant (the same
 * numbers /metrics shows: requests by status class, latency and time-to-first-
 * token histogram buckets, generated tokens) plus a few gauges; cs_hist turns
 * them into rates over the last interval and quantiles over the last
 * CS_HIST_WINDOW samples, so that nobody needs Prometheus to see a trend.
 * A counter that went down (a deployment was deleted and its tokens with it)
 * counts as a reset: its delta is its new value, as Prometheus' rate() does.
 *
 * Pure: no clock, no I/O, no locks; time comes in as an argument. Memory is
 * allocated by cs_hist_init only (cs_hist_sample allocates nothing).
 *
 * Thread-safety: none; one owner (the control-loop thread). */
#ifndef CS_SERVE_HISTORY_H
#define CS_SERVE_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define CS_HIST_PERIOD_S 1.0    /* the control loop's sampling period */
#define CS_HIST_MAX_POINTS 600  /* points kept per key by default: 10 minutes */
#define CS_HIST_MAX_KEYS 16     /* "" plus applications; the least recently sampled key goes first */
#define CS_HIST_KEY_MAX 64      /* bytes of a key, NUL included (longer keys are cut) */
#define CS_HIST_MAX_BUCKETS 24  /* finite histogram bounds + the +Inf bucket */
#define CS_HIST_WINDOW 10       /* samples the latency quantiles are taken over */

/* HTTP status classes of the request rate. */
enum { CS_HIST_2XX, CS_HIST_4XX, CS_HIST_5XX, CS_HIST_OTHER, CS_HIST_NCLASS };

typedef struct cs_hist cs_hist;

/* Cumulative values at one instant. Histogram counts are per bucket (not
 * cumulative over buckets): n_bounds finite buckets, then +Inf. */
typedef struct cs_hist_counters {
    uint64_t req[CS_HIST_NCLASS];
    uint64_t lat[CS_HIST_MAX_BUCKETS];  /* end-to-end request latency (ms buckets) */
    uint64_t ttft[CS_HIST_MAX_BUCKETS]; /* time to first streamed byte (ms buckets) */
    double tokens;                      /* generated tokens so far */
    double queued, ongoing, batch;      /* gauges: queued requests, requests at replicas, mean batch size */
} cs_hist_counters;

/* One sample. Rates are per second over the interval since the previous
 * sample; quantiles (ms) over the last CS_HIST_WINDOW intervals, negative when
 * no request finished in that window. */
typedef struct cs_hist_point {
    double t;                    /* the caller's time (wall clock, s) */
    float rps[CS_HIST_NCLASS];
    float p50_ms, p99_ms;
    float ttft_p50_ms, ttft_p99_ms;
    float tokens_s;
    float queued, ongoing, batch;
} cs_hist_point;

/* max_points per key (0: CS_HIST_MAX_POINTS); bounds: n_bounds increasing
 * finite upper bounds (ms), n_bounds < CS_HIST_MAX_BUCKETS; copied. */
int cs_hist_init(cs_hist **out, size_t max_points, const double *bounds, size_t n_bounds, cs_err *err);
void cs_hist_free(cs_hist *h); /* NULL is a no-op */

/* Records key's counters at time t. The first sample of a key only sets its
 * baseline (no point yet); a sample with t not after the key's previous one is
 * ignored. Returns 1 when a point was added, else 0. */
int cs_hist_sample(cs_hist *h, const char *key, double t, const cs_hist_counters *c);

/* Points of key, oldest first: the count, and point i (0 <= i < count).
 * An unknown key has none. Valid until the next cs_hist_sample. */
size_t cs_hist_count(const cs_hist *h, const char *key);
const cs_hist_point *cs_hist_at(const cs_hist *h, const char *key, size_t i);

/* The keys that have points or a baseline, up to cap of them; returns how many. */
size_t cs_hist_keys(const cs_hist *h, const char **names, size_t cap);

/* The q-quantile (0..1) of a per-bucket histogram, interpolated linearly
 * inside its bucket as Prometheus' histogram_quantile does (the first bucket
 * starts at 0; a quantile in +Inf is the largest finite bound). Negative when
 * the histogram is empty. */
double cs_hist_quantile(const uint64_t *counts, const double *bounds, size_t n_bounds, double q);

#endif
