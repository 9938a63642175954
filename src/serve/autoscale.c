/* Ray Serve 2.50's default autoscaling policy and its request metrics (autoscale.h).
 *
 * The arithmetic follows Ray's Python operation for operation, in the same order and in
 * doubles (Python floats are IEEE doubles; -std=c11 keeps GCC from contracting a*b+c into
 * an FMA), so that ceil() lands on the same integer as Ray's at every step, boundary
 * cases included (tests/serve/test_autoscale.c replays Ray's own decisions). */
#include "serve/autoscale.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- target_capacity ---- */

cs_as_dir cs_as_next_direction(int had_prev, double prev_capacity, double next_capacity,
                               cs_as_dir prev_dir, int same_apps) {
    int next_null = !(next_capacity >= 0);
    if (had_prev && same_apps) {
        int prev_null = !(prev_capacity >= 0);
        if (prev_null && next_null) return prev_dir;
        if (!prev_null && !next_null && prev_capacity == next_capacity) return prev_dir;
        if (prev_null) return CS_AS_DIR_DOWN; /* None -> a number: scaling down */
        if (next_null) return CS_AS_DIR_NONE; /* back to 100 % */
        return prev_capacity < next_capacity ? CS_AS_DIR_UP : CS_AS_DIR_DOWN;
    }
    /* new applications: a config with a target_capacity starts scaling up */
    return next_null ? CS_AS_DIR_NONE : CS_AS_DIR_UP;
}

int cs_as_lower_bound(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir) {
    if (cfg->initial_replicas >= 0 && dir == CS_AS_DIR_UP)
        return cs_scfg_apply_capacity(cfg->initial_replicas, capacity);
    return cs_scfg_apply_capacity(cfg->min_replicas, capacity);
}

int cs_as_upper_bound(const cs_scfg_autoscaling *cfg, double capacity) {
    return cs_scfg_apply_capacity(cfg->max_replicas, capacity);
}

int cs_as_apply_bounds(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir, int n) {
    int lo = cs_as_lower_bound(cfg, capacity, dir), hi = cs_as_upper_bound(cfg, capacity);
    int m = n < hi ? n : hi;
    return m > lo ? m : lo; /* max(lower, min(upper, n)): lower wins if they cross */
}

int cs_as_within_bounds(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir, int n) {
    return cs_as_apply_bounds(cfg, capacity, dir, n) == n;
}

/* ---- the policy ---- */

/* Ray: `if self.upscaling_factor: ... return self.upscale_smoothing_factor or
 * self.smoothing_factor`; config.c stores a deprecated *_smoothing_factor in the new field
 * when the new one is absent, which gives the same precedence. */
double cs_as_upscaling_factor(const cs_scfg_autoscaling *cfg) {
    return cfg->upscaling_factor > 0 ? cfg->upscaling_factor : cfg->smoothing_factor;
}

double cs_as_downscaling_factor(const cs_scfg_autoscaling *cfg) {
    return cfg->downscaling_factor > 0 ? cfg->downscaling_factor : cfg->smoothing_factor;
}

static int clamp_to_int(double d) {
    if (d != d) return 0;
    if (d >= (double)INT_MAX) return INT_MAX;
    if (d <= (double)INT_MIN) return INT_MIN;
    return (int)d;
}

int cs_as_desired(const cs_scfg_autoscaling *cfg, int running, double total, int min_replicas,
                  int max_replicas) {
    if (running < 1) return -1; /* Ray: ValueError("Number of replicas cannot be zero") */
    if (!(total >= 0)) total = 0;
    const double n = (double)running;
    const double target_num_requests = cfg->target_ongoing_requests * n;
    double d;
    if (!(target_num_requests > 0)) {
        d = n; /* config.c rejects target_ongoing_requests <= 0; stay put if it slips by */
    } else {
        const double error_ratio = total / target_num_requests;
        const double f = error_ratio >= 1 ? cs_as_upscaling_factor(cfg) : cs_as_downscaling_factor(cfg);
        const double smoothed = 1 + ((error_ratio - 1) * f);
        d = ceil(n * smoothed);
        /* the smoothing factor keeps the count "stuck" where the raw ratio says fewer */
        if (ceil(n * error_ratio) < n && d == n) d -= 1;
    }
    if (d > (double)max_replicas) d = (double)max_replicas;
    if (d < (double)min_replicas) d = (double)min_replicas;
    return clamp_to_int(d);
}

long long cs_as_delay_periods(double delay_s) {
    if (!(delay_s > 0)) return 0;
    double q = delay_s / CS_AS_CONTROL_LOOP_S; /* Python: int(delay_s / CONTROL_LOOP_INTERVAL_S) */
    if (q >= 9e18) return (long long)9e18;
    return (long long)q; /* truncation, as int() */
}

int cs_as_register(cs_as_state *st, const cs_scfg_autoscaling *cfg, double capacity,
                   cs_as_dir dir, int use_initial, int curr_target) {
    st->decision_counter = 0; /* Ray: self._policy_state = {} */
    st->last_desired = -1;
    int t = use_initial && cfg->initial_replicas >= 0 ? cfg->initial_replicas : curr_target;
    return cs_as_apply_bounds(cfg, capacity, dir, t);
}

int cs_as_decide(cs_as_state *st, const cs_as_ctx *c) {
    const cs_scfg_autoscaling *cfg = c->cfg;
    const int cur = c->current_target;
    double total = c->total_requests;
    if (!(total >= 0)) total = 0;
    int decision = cur;
    if (c->running <= 0) {
        /* no replica running: no delay, and the counter is left as it was */
        st->last_desired = -1;
        if (total > 0) {
            int up = clamp_to_int(ceil(1 * cs_as_upscaling_factor(cfg)));
            decision = up > cur ? up : cur;
        }
        return cs_as_apply_bounds(cfg, c->capacity, c->direction, decision);
    }
    int lo = cs_as_lower_bound(cfg, c->capacity, c->direction);
    int hi = cs_as_upper_bound(cfg, c->capacity);
    int desired = cs_as_desired(cfg, c->running, total, lo, hi);
    st->last_desired = desired;
    if (desired > cur) {
        if (st->decision_counter < 0) st->decision_counter = 0;
        st->decision_counter++;
        if (st->decision_counter > cs_as_delay_periods(cfg->upscale_delay_s)) {
            st->decision_counter = 0;
            decision = desired;
        }
    } else if (desired < cur) {
        if (st->decision_counter > 0) st->decision_counter = 0;
        st->decision_counter--;
        double delay_s;
        if (cur == 1) { /* only 1 -> 0 may reach zero */
            delay_s = cfg->downscale_to_zero_delay_s >= 0 ? cfg->downscale_to_zero_delay_s
                                                          : cfg->downscale_delay_s;
        } else {
            delay_s = cfg->downscale_delay_s;
            if (desired < 1) desired = 1;
        }
        if (st->decision_counter < -cs_as_delay_periods(delay_s)) {
            st->decision_counter = 0;
            decision = desired;
        }
    } else {
        st->decision_counter = 0;
    }
    return cs_as_apply_bounds(cfg, c->capacity, c->direction, decision);
}

/* ---- CPU cap ---- */

int cs_as_cap_cpus(int desired, double cpus_per_replica, double cpus_available,
                   double cpus_used_by_others, int *limited) {
    if (limited) *limited = 0;
    if (desired <= 0) return desired < 0 ? 0 : desired;
    if (!(cpus_per_replica > 0) || !(cpus_available > 0) || !isfinite(cpus_per_replica) ||
        !isfinite(cpus_available))
        return desired;
    double others = cpus_used_by_others > 0 && isfinite(cpus_used_by_others) ? cpus_used_by_others : 0;
    double room = cpus_available - others;
    if (room < 0) room = 0;
    double fit = floor((room + 1e-9) / cpus_per_replica);
    if (fit >= (double)desired) return desired;
    if (limited) *limited = 1;
    return (int)fit;
}

/* ---- time windows ---- */

int cs_as_window_init(cs_as_window *w, size_t cap, cs_err *err) {
    memset(w, 0, sizeof *w);
    if (cap < 1 || cap > CS_AS_MAX_WINDOW)
        return cs_err_set(err, "autoscale: window of %zu samples (limit 1..%d)", cap, CS_AS_MAX_WINDOW);
    w->t = malloc(cap * sizeof *w->t);
    w->v = malloc(cap * sizeof *w->v);
    if (!w->t || !w->v) {
        cs_as_window_free(w);
        return cs_err_set(err, "autoscale: out of memory for a window of %zu samples", cap);
    }
    w->cap = cap;
    return 0;
}

void cs_as_window_free(cs_as_window *w) {
    if (!w) return;
    free(w->t);
    free(w->v);
    memset(w, 0, sizeof *w);
}

#define AT(w, i) (((w)->head + (i)) % (w)->cap)

double cs_as_window_last_t(const cs_as_window *w) {
    return w->n ? w->t[AT(w, w->n - 1)] : -INFINITY;
}

void cs_as_window_push(cs_as_window *w, double t, double v) {
    if (!w->cap) return;
    double last = cs_as_window_last_t(w);
    if (t < last) t = last; /* a clock step back: keep the ring sorted */
    if (w->n == w->cap) {
        w->head = (w->head + 1) % w->cap;
        w->n--;
    }
    size_t i = AT(w, w->n);
    w->t[i] = t;
    w->v[i] = v;
    w->n++;
}

void cs_as_window_prune(cs_as_window *w, double start) {
    /* Ray: bisect_right on the timestamp, i.e. the samples kept have t > start */
    while (w->n && !(w->t[w->head] > start)) {
        w->head = (w->head + 1) % w->cap;
        w->n--;
    }
    if (!w->n) w->head = 0;
}

size_t cs_as_window_count(const cs_as_window *w) { return w->n; }

double cs_as_window_sum(const cs_as_window *w) {
    double s = 0;
    for (size_t i = 0; i < w->n; i++) s += w->v[AT(w, i)];
    return s;
}

double cs_as_window_mean(const cs_as_window *w, double now, double look_back_s, size_t *count) {
    double start = now - look_back_s, s = 0;
    size_t k = 0;
    for (size_t i = 0; i < w->n; i++) {
        size_t j = AT(w, i);
        if (w->t[j] > start && w->t[j] <= now) s += w->v[j], k++;
    }
    if (count) *count = k;
    return k ? s / (double)k : 0;
}

/* copies w's samples into a ring of cap (>= w->n) */
static int window_grow(cs_as_window *w, size_t cap, cs_err *err) {
    cs_as_window nw;
    if (cs_as_window_init(&nw, cap, err)) return -1;
    for (size_t i = 0; i < w->n; i++) cs_as_window_push(&nw, w->t[AT(w, i)], w->v[AT(w, i)]);
    cs_as_window_free(w);
    *w = nw;
    return 0;
}

/* ---- a router's metrics ---- */

typedef struct as_series {
    int used; /* a key of Ray's InMemoryMetricsStore */
    int id;
    cs_as_window w; /* kept allocated when the key is dropped, for the next replica */
} as_series;

struct cs_as_load {
    double look_back_s, interval_s;
    size_t cap;            /* samples per window */
    cs_as_window queued;
    as_series s[CS_AS_MAX_SERIES];
};

double cs_as_sample_interval(const cs_scfg_autoscaling *cfg) {
    double m = cfg->metrics_interval_s;
    return m > 0 && m < CS_AS_RECORD_INTERVAL_S ? m : CS_AS_RECORD_INTERVAL_S;
}

static int load_cap(double look_back_s, double interval_s, size_t *cap, cs_err *err) {
    if (!(look_back_s > 0) || !isfinite(look_back_s) || !(interval_s > 0) || !isfinite(interval_s))
        return cs_err_set(err, "autoscale: look_back_period_s %g and sample interval %g must be > 0",
                          look_back_s, interval_s);
    /* samples within one look-back, twice over for a late or early clock, plus margin */
    double n = 2 * ceil(look_back_s / interval_s) + 8;
    *cap = n >= CS_AS_MAX_WINDOW ? CS_AS_MAX_WINDOW : (size_t)n;
    return 0;
}

int cs_as_load_new(cs_as_load **out, double look_back_s, double sample_interval_s, cs_err *err) {
    *out = NULL;
    size_t cap = 0;
    if (load_cap(look_back_s, sample_interval_s, &cap, err)) return -1;
    cs_as_load *l = calloc(1, sizeof *l);
    if (!l) return cs_err_set(err, "autoscale: out of memory");
    l->look_back_s = look_back_s;
    l->interval_s = sample_interval_s;
    l->cap = cap;
    if (cs_as_window_init(&l->queued, cap, err)) {
        free(l);
        return -1;
    }
    *out = l;
    return 0;
}

int cs_as_load_configure(cs_as_load *l, double look_back_s, double sample_interval_s, cs_err *err) {
    size_t cap = 0;
    if (load_cap(look_back_s, sample_interval_s, &cap, err)) return -1;
    if (cap > l->cap) {
        if (window_grow(&l->queued, cap, err)) return -1;
        for (size_t i = 0; i < CS_AS_MAX_SERIES; i++)
            if (l->s[i].w.cap && window_grow(&l->s[i].w, cap, err)) return -1;
        l->cap = cap;
    }
    l->look_back_s = look_back_s;
    l->interval_s = sample_interval_s;
    return 0;
}

void cs_as_load_free(cs_as_load *l) {
    if (!l) return;
    cs_as_window_free(&l->queued);
    for (size_t i = 0; i < CS_AS_MAX_SERIES; i++) cs_as_window_free(&l->s[i].w);
    free(l);
}

static as_series *series_find(cs_as_load *l, int id) {
    for (size_t i = 0; i < CS_AS_MAX_SERIES; i++)
        if (l->s[i].used && l->s[i].id == id) return &l->s[i];
    return NULL;
}

static as_series *series_add(cs_as_load *l, int id, cs_err *err) {
    as_series *free_slot = NULL;
    for (size_t i = 0; i < CS_AS_MAX_SERIES; i++) {
        if (l->s[i].used) continue;
        if (l->s[i].w.cap >= l->cap) { /* a dropped key's window: reuse it */
            free_slot = &l->s[i];
            break;
        }
        if (!free_slot) free_slot = &l->s[i];
    }
    if (!free_slot) {
        cs_err_set(err, "autoscale: more than %d replicas tracked by one router", CS_AS_MAX_SERIES);
        return NULL;
    }
    if (free_slot->w.cap < l->cap) {
        cs_as_window_free(&free_slot->w);
        if (cs_as_window_init(&free_slot->w, l->cap, err)) return NULL;
    }
    free_slot->w.n = free_slot->w.head = 0;
    free_slot->used = 1;
    free_slot->id = id;
    return free_slot;
}

/* InMemoryMetricsStore.prune_keys_and_compact_data */
static void load_prune(cs_as_load *l, double start) {
    cs_as_window_prune(&l->queued, start);
    for (size_t i = 0; i < CS_AS_MAX_SERIES; i++) {
        as_series *s = &l->s[i];
        if (!s->used) continue;
        if (!s->w.n || cs_as_window_last_t(&s->w) < start) s->used = 0; /* key deleted */
        else cs_as_window_prune(&s->w, start);
    }
}

int cs_as_load_sample(cs_as_load *l, double now, int queued, const cs_as_replica_load *reps,
                      size_t n, cs_err *err) {
    int rc = 0;
    cs_as_window_push(&l->queued, now, (double)queued);
    for (size_t i = 0; i < n; i++) {
        as_series *s = series_find(l, reps[i].id);
        if (!s && !(s = series_add(l, reps[i].id, err))) {
            rc = -1;
            continue;
        }
        cs_as_window_push(&s->w, now, (double)reps[i].ongoing);
    }
    load_prune(l, now - l->look_back_s);
    return rc;
}

void cs_as_load_push(cs_as_load *l, double now, int queued, const cs_as_replica_load *reps,
                     size_t n, cs_as_report *held) {
    load_prune(l, now - l->look_back_s);
    if (held->valid && !(now > held->t)) return; /* not newer than the one the controller has */
    size_t nq = cs_as_window_count(&l->queued);
    /* statistics.mean of integer counts: an exact sum, one rounding */
    double avg_queued = nq ? cs_as_window_sum(&l->queued) / (double)nq : (double)queued;
    double ndp = nq ? (double)nq : 1;
    held->valid = 1;
    held->t = now;
    held->queued = avg_queued;
    held->n = 0;
    for (size_t i = 0; i < n && held->n < CS_AS_MAX_REPORT; i++) {
        const as_series *s = series_find(l, reps[i].id);
        double sum = s && s->w.n ? cs_as_window_sum(&s->w) : (double)reps[i].ongoing;
        held->id[held->n] = reps[i].id;
        held->running[held->n] = sum / ndp; /* normalized by the queued samples, as Ray */
        held->n++;
    }
}

double cs_as_report_total(const cs_as_report *r, const int *running_ids, size_t n_running) {
    if (!r || !r->valid) return 0;
    double total = 0;
    total += r->queued;
    for (size_t i = 0; i < n_running; i++)
        for (size_t j = 0; j < r->n; j++)
            if (r->id[j] == running_ids[i]) {
                total += r->running[j];
                break;
            }
    return total;
}
