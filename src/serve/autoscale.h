/* cs_as: Ray Serve 2.50's default autoscaling policy, decision for decision, and the
 * request metrics it reads (../shared/ref/ray-serve/CONTRACT.md §2). Everything here is
 * pure: no clock, no globals, no I/O; time is a double in seconds given by the caller.
 *
 * Ray's pipeline, and the function that does each step here:
 *
 *   router (the proxy's DeploymentHandle), every cs_as_sample_interval(cfg) = min(0.5 s,
 *   metrics_interval_s): records its queued requests and, for each replica it has sent
 *   requests to, that replica's ongoing requests                        -> cs_as_load_sample
 *   router, every metrics_interval_s (10 s by default), and at once when a request queues
 *   while it knows no running replica (the cold-start push): a report = the mean of the
 *   queued samples over look_back_period_s, and per replica the sum of its samples divided
 *   by the number of queued samples                                     -> cs_as_load_push
 *   controller, every CS_AS_CONTROL_LOOP_S = 0.1 s: total = the last report's queued mean +
 *   its averages of the replicas running now                            -> cs_as_report_total
 *   the policy (replica_queue_length_autoscaling_policy) and the bounds -> cs_as_decide
 *   deploy, config update, target_capacity change (AutoscalingState.register)
 *                                                                       -> cs_as_register
 *
 * What Ray does that may surprise (all reproduced; tests/data/autoscale/ are Ray's own
 * decisions on recorded traces, tools/autoscale_ref.py made them):
 *   - A decision needs int(delay_s / 0.1) + 1 consecutive periods that want the same
 *     direction: upscale_delay_s 30 -> the 301st period; 0 -> the first. Float division:
 *     0.3 s is int(2.9999999999999996) = 2, i.e. 3 periods. Any period where the formula
 *     equals the target resets the count; a period in the other direction restarts it.
 *   - Scaling down from more than one replica never goes below 1; only 1 -> 0 may reach
 *     zero, after downscale_to_zero_delay_s (or downscale_delay_s when null) counted anew.
 *   - With no running replica the policy answers at once (no delay):
 *     max(ceil(upscaling factor), current target) when total > 0 (an upscaling_factor of
 *     2.5 cold-starts 3 replicas), else the current target; the counter is left as it was.
 *   - The formula divides by the RUNNING replicas, not the target: while new replicas
 *     start, the formula is relative to the ones already up.
 *   - The controller sees load only through reports: with Ray's default metrics_interval_s
 *     (10 s) the total changes in 10 s steps, averaged over 30 s.
 *   - initial_replicas is not scaled by target_capacity: the target is
 *     clamp(initial_replicas, lower bound, upper bound), where only the bounds are scaled.
 *     While target_capacity grows (direction UP) the lower bound is the scaled
 *     initial_replicas instead of the scaled min_replicas.
 *   - A new deployment without initial_replicas starts at the lower bound: min_replicas 0
 *     deploys with no replica at all (the first request cold-starts one).
 *
 * Ray's defaults are the ones reproduced: metrics collected at the handle
 * (RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE=1), aggregated at the handle
 * (RAY_SERVE_AGGREGATE_METRICS_AT_CONTROLLER=0), one router (the proxy's) per deployment.
 * Not reproduced: Ray drops a handle's report when no push came for max(2 *
 * metrics_interval_s, 10 s) (a router that keeps pushing never hits it), and custom
 * policies.
 *
 * How the controller uses it, per autoscaling deployment:
 *
 *     cs_as_state st;  cs_as_load *load;  cs_as_report rep = {0};
 *     cs_as_load_new(&load, cfg->look_back_period_s, cs_as_sample_interval(cfg), err);
 *     target = cs_as_register(&st, cfg, capacity, dir, 1, -1);        // at deploy
 *     every 0.1 s, at time now:
 *         // reps: the replicas the router has sent requests to, with their ongoing count;
 *         // queued: requests waiting at the router. In this order (Ray's, and the tests'):
 *         if (a request queued since the last tick && the router knows no running replica)
 *             cs_as_load_push(load, now, queued, reps, n, &rep);      // cold-start push
 *         if (now >= next_sample) { cs_as_load_sample(load, now, queued, reps, n, err);
 *                                   next_sample += cs_as_sample_interval(cfg); }
 *         if (now >= next_push)   { cs_as_load_push(load, now, queued, reps, n, &rep);
 *                                   next_push += cfg->metrics_interval_s; }
 *         cs_as_ctx c = {cfg, capacity, dir, target, n_running,
 *                        cs_as_report_total(&rep, running_ids, n_running)};
 *         int t = cs_as_decide(&st, &c);
 *         t = cs_as_cap_cpus(t, cpus_per_replica, cpus_available, cpus_of_others, &limited);
 *         if (t != target) { "Upscaling from %d to %d replicas." / "Downscaling from ..."
 *                            (Ray writes that message, status UPSCALING/DOWNSCALING and
 *                            trigger AUTOSCALING only when cs_as_within_bounds() holds for
 *                            the replicas running at the target version); target = t; }
 *     on a config update: cs_as_load_configure() with the new look-back, then
 *         target = cs_as_register(&st, cfg, capacity, dir, config_changed, target);
 *
 * Threading: the functions share nothing; a cs_as_state / cs_as_load / cs_as_report
 * belongs to one thread at a time. Allocation happens only in cs_as_load_new/_configure
 * and when a replica is first seen by cs_as_load_sample (its window is then reused). */
#ifndef CS_SERVE_AUTOSCALE_H
#define CS_SERVE_AUTOSCALE_H

#include <stddef.h>

#include "engine/err.h"
#include "serve/config.h"

#define CS_AS_CONTROL_LOOP_S 0.1       /* Ray's CONTROL_LOOP_INTERVAL_S: one decision each */
#define CS_AS_RECORD_INTERVAL_S 0.5    /* RAY_SERVE_HANDLE_AUTOSCALING_METRIC_RECORD_INTERVAL_S */
#define CS_AS_MAX_WINDOW 16384 /* samples per window; one holds 2 * look_back / interval + 8 */
#define CS_AS_MAX_SERIES 128           /* replicas one router tracks at once */
#define CS_AS_MAX_REPORT CS_AS_MAX_SERIES

/* ---- target_capacity ---- */

/* Ray's TargetCapacityDirection: how the last config changed target_capacity. */
typedef enum cs_as_dir { CS_AS_DIR_NONE = 0, CS_AS_DIR_UP, CS_AS_DIR_DOWN } cs_as_dir;

/* calculate_target_capacity_direction: the direction after a new config. had_prev: a
 * config was deployed before; same_apps: both configs hold the same application names;
 * capacities < 0 mean null. */
cs_as_dir cs_as_next_direction(int had_prev, double prev_capacity, double next_capacity,
                               cs_as_dir prev_dir, int same_apps);

/* The replica bounds, target_capacity applied (cs_scfg_apply_capacity; capacity < 0:
 * none). Lower: initial_replicas when set and dir is UP, else min_replicas. */
int cs_as_lower_bound(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir);
int cs_as_upper_bound(const cs_scfg_autoscaling *cfg, double capacity);
int cs_as_apply_bounds(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir, int n);
/* 1 when n replicas are within the bounds (Ray's is_within_bounds). */
int cs_as_within_bounds(const cs_scfg_autoscaling *cfg, double capacity, cs_as_dir dir, int n);

/* ---- the policy ---- */

/* The factors in effect: upscaling_factor when set, else smoothing_factor (config.c has
 * already folded the deprecated upscale_/downscale_smoothing_factor into these fields). */
double cs_as_upscaling_factor(const cs_scfg_autoscaling *cfg);
double cs_as_downscaling_factor(const cs_scfg_autoscaling *cfg);

/* _calculate_desired_num_replicas: running >= 1 replicas, total requests (>= 0; NaN or
 * negative count as 0) -> ceil(running * (1 + (ratio - 1) * factor)), ratio = total /
 * (target_ongoing_requests * running), less one when stuck on running while the raw ratio
 * says fewer, clamped to [min_replicas, max_replicas]. Returns -1 when running < 1. */
int cs_as_desired(const cs_scfg_autoscaling *cfg, int running, double total, int min_replicas,
                  int max_replicas);

typedef struct cs_as_state {
    long long decision_counter; /* > 0: periods in a row that wanted more; < 0: fewer */
    int last_desired;           /* the formula's last answer (-1: none, e.g. 0 running) */
} cs_as_state;

typedef struct cs_as_ctx {
    const cs_scfg_autoscaling *cfg;
    double capacity;     /* target_capacity, 0..100; < 0: null */
    cs_as_dir direction; /* of target_capacity */
    int current_target;  /* the deployment's target now */
    int running;         /* replicas RUNNING (Ray: RUNNING or PENDING_MIGRATION, as the
                            autoscaler learnt them at the end of the previous period) */
    double total_requests; /* cs_as_report_total() */
} cs_as_ctx;

/* AutoscalingState.register: resets st and returns the target to set. use_initial: a new
 * deployment or a changed deployment config (Ray's config_changed) -- then the target
 * starts again from initial_replicas when set; curr_target: the present target (-1: none,
 * as for a new deployment, which then starts at the lower bound). */
int cs_as_register(cs_as_state *st, const cs_scfg_autoscaling *cfg, double capacity,
                   cs_as_dir dir, int use_initial, int curr_target);

/* One control-loop period (0.1 s): the policy, then the bounds (get_decision_num_replicas).
 * Returns the new target (== ctx->current_target: no change). */
int cs_as_decide(cs_as_state *st, const cs_as_ctx *ctx);

/* Ray's number of periods for a delay: int(delay_s / 0.1) (saturates). */
long long cs_as_delay_periods(double delay_s);

/* ---- CPU cap (cserve's, not Ray's) ----
 * The largest n <= desired whose n * cpus_per_replica fits in cpus_available -
 * cpus_used_by_others (never below 0; a tolerance of 1e-9 CPU absorbs float sums).
 * *limited (may be NULL) is set to 1 when that is below desired, else 0.
 * cpus_per_replica <= 0 or cpus_available <= 0: no cap. */
int cs_as_cap_cpus(int desired, double cpus_per_replica, double cpus_available,
                   double cpus_used_by_others, int *limited);

/* ---- time windows ---- */

/* A ring of (t, value) samples, t non-decreasing. When full, a push drops the oldest. */
typedef struct cs_as_window {
    double *t, *v;
    size_t cap, head, n; /* head: index of the oldest */
} cs_as_window;

int cs_as_window_init(cs_as_window *w, size_t cap, cs_err *err); /* 1 <= cap <= CS_AS_MAX_WINDOW */
void cs_as_window_free(cs_as_window *w);                          /* zeroed; NULL-safe */
void cs_as_window_push(cs_as_window *w, double t, double v);
/* Drops the samples with t <= start (Ray keeps t > now - look_back_period_s). */
void cs_as_window_prune(cs_as_window *w, double start);
size_t cs_as_window_count(const cs_as_window *w);
/* Sum of the values in order (exact for integer counts below 2^53). */
double cs_as_window_sum(const cs_as_window *w);
/* The mean over the samples with now - look_back < t <= now; 0 and *count = 0 when
 * there is none (count may be NULL). Does not modify w. */
double cs_as_window_mean(const cs_as_window *w, double now, double look_back_s, size_t *count);
double cs_as_window_last_t(const cs_as_window *w); /* -inf when empty */

/* ---- a router's autoscaling metrics (Ray's RouterMetricsManager) ---- */

/* A replica as the router counts it. */
typedef struct cs_as_replica_load {
    int id;      /* the caller's replica id (>= 0) */
    int ongoing; /* requests the router has sent it that have not finished */
} cs_as_replica_load;

/* What the router pushes to the controller. Plain data: copy it freely. */
typedef struct cs_as_report {
    int valid;     /* 0: nothing pushed yet (the controller then counts 0 requests) */
    double t;      /* when it was made */
    double queued; /* mean queued requests over the look-back */
    size_t n;
    int id[CS_AS_MAX_REPORT];         /* replicas in the report */
    double running[CS_AS_MAX_REPORT]; /* their average ongoing requests */
} cs_as_report;

typedef struct cs_as_load cs_as_load; /* opaque */

/* sample_interval_s: cs_as_sample_interval(cfg). Windows hold the samples of the
 * look-back (plus margin), at most CS_AS_MAX_WINDOW. */
int cs_as_load_new(cs_as_load **out, double look_back_s, double sample_interval_s, cs_err *err);
/* A config update: a new look-back; the samples are kept (windows grow when needed). */
int cs_as_load_configure(cs_as_load *l, double look_back_s, double sample_interval_s, cs_err *err);
void cs_as_load_free(cs_as_load *l); /* NULL-safe */
double cs_as_sample_interval(const cs_scfg_autoscaling *cfg); /* min(0.5, metrics_interval_s) */

/* _add_autoscaling_metrics_point at time now: one sample of queued, and one of each
 * replica in reps, then the windows drop what is older than the look-back (a replica not
 * sampled within it is forgotten). reps should be the replicas Ray's router would count:
 * each one from the first request the router sends it, until it is neither running nor
 * busy (passing every running replica is a close approximation: it differs only for a
 * report made between a replica's first request and the next sample). Returns -1 (err
 * set) when a new replica's window cannot be allocated or CS_AS_MAX_SERIES are in use;
 * the other samples are recorded. */
int cs_as_load_sample(cs_as_load *l, double now, int queued, const cs_as_replica_load *reps,
                      size_t n, cs_err *err);

/* The router pushes a report to the controller, which holds the last one (*held):
 * _get_metrics_report at time now (queued and reps: the counts now, as for the sample),
 * then record_request_metrics_for_handle, which takes it only when *held is empty or
 * older (a second push at the same instant, e.g. a cold-start push and the periodic one
 * in one control-loop tick, is dropped; the windows are pruned either way). With no
 * queued sample in the look-back, queued now is the mean; each replica's average is the
 * sum of its samples / the number of queued samples (or its count now / that number when
 * it has no sample). At most CS_AS_MAX_REPORT replicas. */
void cs_as_load_push(cs_as_load *l, double now, int queued, const cs_as_replica_load *reps,
                     size_t n, cs_as_report *held);

/* AutoscalingState's total: queued mean + the averages of the running replicas the report
 * names (in the order of running_ids; others count 0). 0 when !r->valid. */
double cs_as_report_total(const cs_as_report *r, const int *running_ids, size_t n_running);

#endif
