/* The autoscaling policy (serve/autoscale.h) against Ray's own decisions.
 *
 * tests/data/autoscale/ was written by tools/autoscale_ref.py, which ran Ray 2.50.1's real
 * router metrics, AutoscalingState and default policy: grid.json (the formula, one policy
 * step, target_capacity rounding and direction on many values) and one file per load trace
 * (traces.txt lists them). A trace is replayed here step by step (every 0.1 s: cold-start
 * push, sample, push, decision); the total of requests and the target must equal Ray's at
 * every step. Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <math.h>

#include "serve/autoscale.h"

#define DATA "tests/data/autoscale/"

static json_t *load_json(const char *name) {
    char path[512];
    snprintf(path, sizeof path, DATA "%s", name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s (line %d)", path, je.text, je.line);
    return j;
}

static double num_or(const json_t *o, const char *k, double dflt) {
    const json_t *x = json_object_get(o, k);
    return x && json_is_number(x) ? json_number_value(x) : dflt;
}

/* Ray's AutoscalingConfig (all fields, null where unset) as config.c would store it:
 * null -> -1, a deprecated *_smoothing_factor in the new field when that one is null. */
static cs_scfg_autoscaling cfg_from_json(const json_t *o) {
    cs_scfg_autoscaling a;
    a.min_replicas = (int)num_or(o, "min_replicas", 1);
    a.initial_replicas = (int)num_or(o, "initial_replicas", -1);
    a.max_replicas = (int)num_or(o, "max_replicas", 1);
    a.target_ongoing_requests = num_or(o, "target_ongoing_requests", 2);
    a.look_back_period_s = num_or(o, "look_back_period_s", 30);
    a.metrics_interval_s = num_or(o, "metrics_interval_s", 10);
    a.smoothing_factor = num_or(o, "smoothing_factor", 1);
    a.upscaling_factor = num_or(o, "upscaling_factor", num_or(o, "upscale_smoothing_factor", -1));
    a.downscaling_factor = num_or(o, "downscaling_factor", num_or(o, "downscale_smoothing_factor", -1));
    a.upscale_delay_s = num_or(o, "upscale_delay_s", 30);
    a.downscale_delay_s = num_or(o, "downscale_delay_s", 600);
    a.downscale_to_zero_delay_s = num_or(o, "downscale_to_zero_delay_s", -1);
    return a;
}

static cs_as_dir dir_from_json(const json_t *x) {
    if (!x || !json_is_string(x)) return CS_AS_DIR_NONE;
    return strcmp(json_string_value(x), "UP") == 0 ? CS_AS_DIR_UP : CS_AS_DIR_DOWN;
}

static cs_scfg_autoscaling defaults(void) {
    cs_scfg_autoscaling a = {.min_replicas = 1, .initial_replicas = -1, .max_replicas = 10,
                             .target_ongoing_requests = 2, .look_back_period_s = 30,
                             .metrics_interval_s = 10, .smoothing_factor = 1,
                             .upscaling_factor = -1, .downscaling_factor = -1,
                             .upscale_delay_s = 30, .downscale_delay_s = 600,
                             .downscale_to_zero_delay_s = -1};
    return a;
}

/* ---- Ray's grid ---- */

static void test_grid_desired(void **state) {
    (void)state;
    json_t *g = load_json("grid.json");
    const json_t *cfgs = json_object_get(g, "configs"), *totals = json_object_get(g, "totals");
    size_t i, checked = 0;
    json_t *e;
    json_array_foreach(json_object_get(g, "desired"), i, e) {
        cs_scfg_autoscaling a = cfg_from_json(json_array_get(cfgs, (size_t)json_integer_value(json_array_get(e, 0))));
        int running = (int)json_integer_value(json_array_get(e, 1));
        const json_t *omin = json_array_get(e, 2), *omax = json_array_get(e, 3), *want = json_array_get(e, 4);
        int lo = json_is_null(omin) ? a.min_replicas : (int)json_integer_value(omin);
        int hi = json_is_null(omax) ? a.max_replicas : (int)json_integer_value(omax);
        for (size_t k = 0; k < json_array_size(totals); k++) {
            double total = json_number_value(json_array_get(totals, k));
            int got = cs_as_desired(&a, running, total, lo, hi);
            int exp = (int)json_integer_value(json_array_get(want, k));
            if (got != exp)
                fail_msg("config %d running %d total %.17g [%d,%d]: desired %d, Ray %d",
                         (int)json_integer_value(json_array_get(e, 0)), running, total, lo, hi, got, exp);
            checked++;
        }
    }
    assert_true(checked > 10000);
    json_decref(g);
}

static void test_grid_policy_one_step(void **state) {
    (void)state;
    json_t *g = load_json("grid.json");
    const json_t *cfgs = json_object_get(g, "configs");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(g, "policy"), i, e) {
        cs_scfg_autoscaling a = cfg_from_json(json_array_get(cfgs, (size_t)json_integer_value(json_array_get(e, 0))));
        cs_as_state st = {0, -1};
        cs_as_ctx c = {&a, -1, CS_AS_DIR_NONE, (int)json_integer_value(json_array_get(e, 2)),
                       (int)json_integer_value(json_array_get(e, 1)), json_number_value(json_array_get(e, 3))};
        int got = cs_as_decide(&st, &c);
        int exp = (int)json_integer_value(json_array_get(e, 4));
        const json_t *cnt = json_array_get(e, 5);
        long long exp_cnt = json_is_null(cnt) ? 0 : json_integer_value(cnt);
        if (got != exp || st.decision_counter != exp_cnt)
            fail_msg("policy #%zu (running %d target %d total %g): %d counter %lld, Ray %d counter %lld", i,
                     c.running, c.current_target, c.total_requests, got, st.decision_counter, exp, exp_cnt);
    }
    json_decref(g);
}

static void test_grid_capacity(void **state) {
    (void)state;
    json_t *g = load_json("grid.json");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(g, "capacity"), i, e) {
        int n = (int)json_integer_value(json_array_get(e, 0));
        const json_t *cap = json_array_get(e, 1);
        double c = json_is_null(cap) ? -1 : json_number_value(cap);
        int exp = (int)json_integer_value(json_array_get(e, 2));
        if (cs_scfg_apply_capacity(n, c) != exp)
            fail_msg("capacity %g of %d: %d, Ray %d", c, n, cs_scfg_apply_capacity(n, c), exp);
    }
    json_array_foreach(json_object_get(g, "direction"), i, e) {
        const json_t *prev = json_array_get(e, 0), *next = json_array_get(e, 1);
        int had_prev = !json_is_string(prev); /* "none": no config before */
        double pc = json_is_number(prev) ? json_number_value(prev) : -1;
        double nc = json_is_number(next) ? json_number_value(next) : -1;
        cs_as_dir got = cs_as_next_direction(had_prev, pc, nc, dir_from_json(json_array_get(e, 2)),
                                             json_is_true(json_array_get(e, 3)));
        if (got != dir_from_json(json_array_get(e, 4)))
            fail_msg("direction #%zu (%g -> %g): %d", i, pc, nc, (int)got);
    }
    json_decref(g);
}

/* ---- Ray's traces ---- */

#define MAX_IDS 64

static void replay(const char *name) {
    char file[256];
    snprintf(file, sizeof file, "%s.json", name);
    json_t *tr = load_json(file);
    cs_scfg_autoscaling a = cfg_from_json(json_object_get(tr, "config"));
    double cap = num_or(tr, "target_capacity", -1);
    cs_as_dir dir = dir_from_json(json_object_get(tr, "capacity_direction"));
    int steps = (int)json_integer_value(json_object_get(tr, "steps"));
    int sample_every = (int)json_integer_value(json_object_get(tr, "sample_every"));
    int push_every = (int)json_integer_value(json_object_get(tr, "push_every"));
    int push_offset = (int)json_integer_value(json_object_get(tr, "push_offset"));
    assert_true(steps > 0 && sample_every > 0 && push_every > 0);
    assert_true(fabs(cs_as_sample_interval(&a) - sample_every * 0.1) < 1e-9);

    cs_err err = {{0}};
    cs_as_load *load;
    assert_int_equal(cs_as_load_new(&load, a.look_back_period_s, cs_as_sample_interval(&a), &err), 0);
    cs_as_state st;
    int target = cs_as_register(&st, &a, cap, dir, 1, -1);
    assert_int_equal(target, (int)json_integer_value(json_object_get(tr, "initial_target")));
    cs_as_report rep;
    memset(&rep, 0, sizeof rep);

    const json_t *segs = json_object_get(tr, "segments"), *totals = json_object_get(tr, "totals");
    const json_t *decs = json_object_get(tr, "decisions"), *evs = json_object_get(tr, "capacity_events");
    size_t seg = 0, ti = 0, di = 0, ei = 0;
    int seg_left = 0, seg_first = 0, changes = 0;
    double exp_total = 0;
    cs_as_replica_load reps[MAX_IDS];
    int running[MAX_IDS];
    size_t n_reps = 0, n_running = 0;
    int queued = 0, flags = 0;
    for (int step = 0; step < steps; step++) {
        double t = step / 10.0;
        const json_t *ev = json_array_get(evs, ei);
        if (ev && json_integer_value(json_array_get(ev, 0)) == step) {
            const json_t *c = json_array_get(ev, 1);
            cap = json_is_number(c) ? json_number_value(c) : -1;
            dir = dir_from_json(json_array_get(ev, 2));
            target = cs_as_register(&st, &a, cap, dir, 0, target);
            if (target != (int)json_integer_value(json_array_get(ev, 3)))
                fail_msg("%s step %d: target_capacity %g: target %d, Ray %d", name, step, cap, target,
                         (int)json_integer_value(json_array_get(ev, 3)));
            ei++;
        }
        if (seg_left == 0) { /* the next run of identical steps */
            const json_t *s = json_array_get(segs, seg++);
            assert_non_null(s);
            seg_left = (int)json_integer_value(json_array_get(s, 0));
            queued = (int)json_integer_value(json_array_get(s, 1));
            const json_t *d = json_array_get(s, 2), *r = json_array_get(s, 3);
            assert_true(json_array_size(d) <= MAX_IDS && json_array_size(r) <= MAX_IDS);
            n_reps = json_array_size(d);
            for (size_t k = 0; k < n_reps; k++) {
                reps[k].id = (int)json_integer_value(json_array_get(json_array_get(d, k), 0));
                reps[k].ongoing = (int)json_integer_value(json_array_get(json_array_get(d, k), 1));
            }
            n_running = json_array_size(r);
            for (size_t k = 0; k < n_running; k++) running[k] = (int)json_integer_value(json_array_get(r, k));
            flags = (int)json_integer_value(json_array_get(s, 4));
            seg_first = 1;
        }
        seg_left--;
        if (seg_first && (flags & 1)) cs_as_load_push(load, t, queued, reps, n_reps, &rep);
        seg_first = 0;
        if (step % sample_every == 0) assert_int_equal(cs_as_load_sample(load, t, queued, reps, n_reps, &err), 0);
        if (step >= push_offset && (step - push_offset) % push_every == 0)
            cs_as_load_push(load, t, queued, reps, n_reps, &rep);
        double total = cs_as_report_total(&rep, running, n_running);
        const json_t *te = json_array_get(totals, ti);
        if (te && json_integer_value(json_array_get(te, 0)) == step) {
            exp_total = json_number_value(json_array_get(te, 1));
            ti++;
        }
        if (total != exp_total)
            fail_msg("%s step %d (t=%g): total %.17g, Ray %.17g", name, step, t, total, exp_total);
        cs_as_ctx c = {&a, cap, dir, target, (int)n_running, total};
        int got = cs_as_decide(&st, &c);
        int exp = target;
        const json_t *de = json_array_get(decs, di);
        if (de && json_integer_value(json_array_get(de, 0)) == step) {
            exp = (int)json_integer_value(json_array_get(de, 1));
            di++;
        }
        if (got != exp)
            fail_msg("%s step %d (t=%g): running %zu target %d total %.17g counter %lld: decided %d, Ray %d",
                     name, step, t, n_running, target, total, st.decision_counter, got, exp);
        if (got != target) changes++;
        target = got;
    }
    assert_int_equal(seg, json_array_size(segs));
    assert_int_equal(seg_left, 0);
    assert_int_equal(di, json_array_size(decs));
    assert_int_equal(ti, json_array_size(totals));
    assert_int_equal(ei, json_array_size(evs));
    assert_int_equal(changes, (int)json_array_size(decs));
    cs_as_load_free(load);
    json_decref(tr);
}

static void test_traces(void **state) {
    (void)state;
    FILE *f = fopen(DATA "traces.txt", "r");
    assert_non_null(f);
    char line[128];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        replay(line);
        n++;
    }
    fclose(f);
    assert_true(n >= 8);
}

/* ---- the policy by hand ---- */

static int run_periods(cs_as_state *st, cs_scfg_autoscaling *a, int target, int running, double total,
                       int periods) {
    for (int i = 0; i < periods; i++) {
        cs_as_ctx c = {a, -1, CS_AS_DIR_NONE, target, running, total};
        int t = cs_as_decide(st, &c);
        if (t != target) return i + 1; /* the period that decided */
    }
    return 0;
}

static void test_delays_count_periods(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    cs_as_state st = {0, -1};
    /* 30 s: int(300.0) = 300, the decision comes on the 301st period */
    assert_int_equal(run_periods(&st, &a, 1, 1, 10, 400), 301);
    a.upscale_delay_s = 0;
    st.decision_counter = 0;
    assert_int_equal(run_periods(&st, &a, 1, 1, 10, 5), 1);
    a.upscale_delay_s = 0.3; /* 0.3 / 0.1 = 2.9999999999999996 -> 2 */
    assert_int_equal(cs_as_delay_periods(0.3), 2);
    st.decision_counter = 0;
    assert_int_equal(run_periods(&st, &a, 1, 1, 10, 5), 3);
    assert_int_equal(cs_as_delay_periods(600), 6000);
    assert_true(cs_as_delay_periods(1e300) > 1000000000000LL);
    assert_int_equal(cs_as_delay_periods(-1), 0);
}

static void test_counter_resets_on_steady_and_reversal(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    a.upscale_delay_s = 1;   /* 10 periods: decides on the 11th */
    a.downscale_delay_s = 1;
    cs_as_state st = {0, -1};
    assert_int_equal(run_periods(&st, &a, 2, 2, 8, 10), 0); /* 10 periods wanting 4: not yet */
    assert_int_equal(st.decision_counter, 10);
    cs_as_ctx steady = {&a, -1, CS_AS_DIR_NONE, 2, 2, 4}; /* the formula says 2: reset */
    assert_int_equal(cs_as_decide(&st, &steady), 2);
    assert_int_equal(st.decision_counter, 0);
    assert_int_equal(run_periods(&st, &a, 2, 2, 8, 10), 0);
    cs_as_ctx down = {&a, -1, CS_AS_DIR_NONE, 2, 2, 1}; /* the other way: restarts at -1 */
    assert_int_equal(cs_as_decide(&st, &down), 2);
    assert_int_equal(st.decision_counter, -1);
    assert_int_equal(run_periods(&st, &a, 2, 2, 8, 20), 11);
}

static void test_formula_cases(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    a.max_replicas = 100;
    /* ratio 2 -> twice the replicas */
    assert_int_equal(cs_as_desired(&a, 4, 16, 1, 100), 8);
    /* downscaling factor 0.5: ceil(4 * (1 - 0.5 * 0.375)) = 4 while ceil(4 * 0.625) = 3:
       stuck, so one less */
    a.downscaling_factor = 0.5;
    assert_int_equal(cs_as_desired(&a, 4, 5, 1, 100), 3);
    /* ceil(4 * 0.875) = 4 == running: not stuck, stays */
    assert_int_equal(cs_as_desired(&a, 4, 7, 1, 100), 4);
    /* clamp */
    assert_int_equal(cs_as_desired(&a, 4, 1e9, 1, 10), 10);
    assert_int_equal(cs_as_desired(&a, 4, INFINITY, 1, 10), 10);
    assert_int_equal(cs_as_desired(&a, 4, 0, 2, 10), 2);
    assert_int_equal(cs_as_desired(&a, 4, NAN, 0, 10), 2); /* NaN counts as no request */
    assert_int_equal(cs_as_desired(&a, 0, 5, 0, 10), -1);
}

static void test_scale_down_passes_through_one(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    a.min_replicas = 0;
    a.downscale_delay_s = 0;
    a.downscale_to_zero_delay_s = 0.5; /* 5 -> decides on the 6th period */
    cs_as_state st = {0, -1};
    cs_as_ctx c = {&a, -1, CS_AS_DIR_NONE, 3, 3, 0};
    assert_int_equal(cs_as_decide(&st, &c), 1); /* not 0: only 1 -> 0 reaches zero */
    assert_int_equal(run_periods(&st, &a, 1, 1, 0, 10), 6);
    /* null downscale_to_zero_delay_s: downscale_delay_s applies to 1 -> 0 too */
    a.downscale_to_zero_delay_s = -1;
    a.downscale_delay_s = 0.2;
    st.decision_counter = 0;
    assert_int_equal(run_periods(&st, &a, 1, 1, 0, 10), 3);
}

static void test_cold_start(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    a.min_replicas = 0;
    cs_as_state st = {-7, -1};
    cs_as_ctx c = {&a, -1, CS_AS_DIR_NONE, 0, 0, 0.5};
    assert_int_equal(cs_as_decide(&st, &c), 1); /* at once, whatever the delays */
    assert_int_equal(st.decision_counter, -7); /* left as it was */
    a.upscaling_factor = 2.5;
    assert_int_equal(cs_as_decide(&st, &c), 3);
    c.current_target = 4; /* replicas already starting: keep them */
    assert_int_equal(cs_as_decide(&st, &c), 4);
    c.total_requests = 0;
    c.current_target = 0;
    assert_int_equal(cs_as_decide(&st, &c), 0);
    a.max_replicas = 2; /* bounds still apply */
    c.total_requests = 1;
    assert_int_equal(cs_as_decide(&st, &c), 2);
}

static void test_register_and_capacity(void **state) {
    (void)state;
    cs_scfg_autoscaling a = defaults();
    cs_as_state st = {5, 3};
    a.min_replicas = 0;
    assert_int_equal(cs_as_register(&st, &a, -1, CS_AS_DIR_NONE, 1, -1), 0); /* starts with none */
    assert_int_equal(st.decision_counter, 0);
    a.min_replicas = 2;
    a.initial_replicas = 4;
    a.max_replicas = 10;
    assert_int_equal(cs_as_register(&st, &a, -1, CS_AS_DIR_NONE, 1, -1), 4);
    /* capacity 50: initial_replicas itself is not scaled, only the bounds (max 5) */
    assert_int_equal(cs_as_register(&st, &a, 50, CS_AS_DIR_DOWN, 1, -1), 4);
    assert_int_equal(cs_as_register(&st, &a, 30, CS_AS_DIR_DOWN, 1, -1), 3); /* max 3 */
    /* growing capacity: the lower bound is the scaled initial (4 * 0.5 = 2; min 2 * 0.5 = 1) */
    assert_int_equal(cs_as_lower_bound(&a, 50, CS_AS_DIR_UP), 2);
    assert_int_equal(cs_as_lower_bound(&a, 50, CS_AS_DIR_DOWN), 1);
    assert_int_equal(cs_as_upper_bound(&a, 50), 5);
    /* no config change: the present target stays (bounded) */
    assert_int_equal(cs_as_register(&st, &a, -1, CS_AS_DIR_NONE, 0, 7), 7);
    assert_int_equal(cs_as_register(&st, &a, 50, CS_AS_DIR_DOWN, 0, 7), 5);
    assert_int_equal(cs_as_register(&st, &a, 0, CS_AS_DIR_DOWN, 0, 7), 0);
    assert_true(cs_as_within_bounds(&a, -1, CS_AS_DIR_NONE, 2));
    assert_false(cs_as_within_bounds(&a, -1, CS_AS_DIR_NONE, 1));
    assert_false(cs_as_within_bounds(&a, 50, CS_AS_DIR_NONE, 6));
}

/* ---- windows, router metrics, CPU cap ---- */

static void test_window_mean(void **state) {
    (void)state;
    cs_as_window w;
    cs_err err = {{0}};
    assert_int_equal(cs_as_window_init(&w, 0, &err), -1);
    assert_int_equal(cs_as_window_init(&w, CS_AS_MAX_WINDOW + 1, &err), -1);
    assert_int_equal(cs_as_window_init(&w, 4, &err), 0);
    size_t k;
    assert_true(cs_as_window_mean(&w, 10, 5, &k) == 0 && k == 0);
    assert_true(isinf(cs_as_window_last_t(&w)));
    cs_as_window_push(&w, 1.0, 2);
    cs_as_window_push(&w, 1.5, 4);
    cs_as_window_push(&w, 2.0, 9);
    /* (now - look_back, now]: at now 2, look-back 1, the sample at t = 1.0 is out */
    assert_true(cs_as_window_mean(&w, 2.0, 1.0, &k) == 6.5 && k == 2);
    assert_true(cs_as_window_mean(&w, 2.0, 5.0, &k) == 5 && k == 3);
    assert_true(cs_as_window_mean(&w, 1.6, 5.0, &k) == 3 && k == 2); /* later samples excluded */
    /* full ring: the oldest goes */
    cs_as_window_push(&w, 2.5, 1);
    cs_as_window_push(&w, 3.0, 0);
    assert_int_equal(cs_as_window_count(&w), 4);
    assert_true(cs_as_window_sum(&w) == 14);
    /* a clock that steps back does not unsort the ring */
    cs_as_window_push(&w, 2.0, 3);
    assert_true(cs_as_window_last_t(&w) == 3.0);
    cs_as_window_prune(&w, 2.5); /* keeps t > 2.5 */
    assert_int_equal(cs_as_window_count(&w), 2);
    cs_as_window_prune(&w, 100);
    assert_int_equal(cs_as_window_count(&w), 0);
    cs_as_window_push(&w, 200, 7);
    assert_true(cs_as_window_mean(&w, 200, 1, NULL) == 7);
    cs_as_window_free(&w);
    cs_as_window_free(&w);
    cs_as_window_free(NULL);
}

static void test_router_report(void **state) {
    (void)state;
    cs_err err = {{0}};
    cs_as_load *l;
    assert_int_equal(cs_as_load_new(&l, 0, 0.5, &err), -1);
    assert_int_equal(cs_as_load_new(&l, 2.0, 0.5, &err), 0);
    cs_as_report rep;
    memset(&rep, 0, sizeof rep);
    int ids[] = {1, 2, 3};
    assert_true(cs_as_report_total(&rep, ids, 3) == 0); /* nothing pushed yet */
    /* no sample yet: the counts now */
    cs_as_replica_load r[] = {{1, 3}, {2, 1}};
    cs_as_load_push(l, 0.0, 5, r, 2, &rep);
    assert_true(rep.valid && rep.queued == 5 && rep.n == 2);
    assert_true(cs_as_report_total(&rep, ids, 3) == 9);
    /* samples at 0, 0.5, 1.0, 1.5 of queued 4,2,0,0; replica 1: 3,3,3,3; replica 2 from 1.0 */
    int q[] = {4, 2, 0, 0};
    for (int i = 0; i < 4; i++) {
        cs_as_replica_load s[] = {{1, 3}, {2, 2}};
        assert_int_equal(cs_as_load_sample(l, i * 0.5, q[i], s, i >= 2 ? 2 : 1, &err), 0);
    }
    cs_as_replica_load now[] = {{1, 3}, {2, 2}, {3, 4}};
    cs_as_load_push(l, 1.5, 0, now, 3, &rep);
    /* look-back 2 s at 1.5: every sample (t > -0.5) */
    assert_true(rep.queued == 6.0 / 4);
    assert_true(rep.running[0] == 12.0 / 4);
    assert_true(rep.running[1] == 4.0 / 4);  /* 2 samples, normalized by the 4 queued ones */
    assert_true(rep.running[2] == 4.0 / 4);  /* no sample: its count now */
    int only[] = {2};
    assert_true(cs_as_report_total(&rep, only, 1) == 1.5 + 1);
    /* at 2.5 the samples at 0 and 0.5 leave the window */
    cs_as_load_push(l, 2.5, 0, now, 1, &rep);
    assert_true(rep.queued == 0 && rep.running[0] == 3);
    /* a replica not sampled for a whole look-back is forgotten; its id can come back */
    cs_as_replica_load one[] = {{1, 1}};
    assert_int_equal(cs_as_load_sample(l, 10, 0, one, 1, &err), 0);
    cs_as_replica_load back[] = {{2, 6}};
    cs_as_load_push(l, 10, 0, back, 1, &rep);
    assert_true(rep.running[0] == 6); /* no sample of 2 left */
    /* a second push at the same instant is dropped: the controller keeps the first */
    cs_as_load_push(l, 10, 0, one, 1, &rep);
    assert_true(rep.id[0] == 2 && rep.running[0] == 6);
    /* a new look-back keeps the samples */
    assert_int_equal(cs_as_load_configure(l, 300, 0.5, &err), 0);
    cs_as_load_push(l, 10.5, 0, one, 1, &rep);
    assert_true(rep.id[0] == 1 && rep.running[0] == 1);
    assert_int_equal(cs_as_load_configure(l, -1, 0.5, &err), -1);
    cs_as_load_free(l);
    cs_as_load_free(NULL);
}

static void test_router_series_limit(void **state) {
    (void)state;
    cs_err err = {{0}};
    cs_as_load *l;
    assert_int_equal(cs_as_load_new(&l, 1.0, 0.5, &err), 0);
    static cs_as_replica_load many[CS_AS_MAX_SERIES + 3];
    for (int i = 0; i < CS_AS_MAX_SERIES + 3; i++) many[i] = (cs_as_replica_load){i, 1};
    err.msg[0] = 0;
    assert_int_equal(cs_as_load_sample(l, 0, 0, many, CS_AS_MAX_SERIES + 3, &err), -1);
    assert_non_null(strstr(err.msg, "replicas"));
    /* after they age out, the slots (and their windows) serve new ids */
    assert_int_equal(cs_as_load_sample(l, 5, 0, NULL, 0, &err), 0);
    assert_int_equal(cs_as_load_sample(l, 5.5, 0, many + 3, CS_AS_MAX_SERIES, &err), 0);
    cs_as_load_free(l);
}

static void test_cpu_cap(void **state) {
    (void)state;
    int lim = -1;
    assert_int_equal(cs_as_cap_cpus(4, 1, 8, 0, &lim), 4);
    assert_int_equal(lim, 0);
    assert_int_equal(cs_as_cap_cpus(4, 1, 2, 0, &lim), 2);
    assert_int_equal(lim, 1);
    assert_int_equal(cs_as_cap_cpus(4, 1, 2, 1, &lim), 1); /* another deployment holds one */
    assert_int_equal(cs_as_cap_cpus(4, 1, 2, 3, &lim), 0);
    assert_int_equal(lim, 1);
    /* 3 * 0.1 = 0.30000000000000004 still fits in 0.3 */
    assert_int_equal(cs_as_cap_cpus(3, 0.1, 0.3, 0, &lim), 3);
    assert_int_equal(lim, 0);
    assert_int_equal(cs_as_cap_cpus(4, 1.5, 4, 0, &lim), 2);
    assert_int_equal(cs_as_cap_cpus(4, 0, 1, 0, &lim), 4); /* no CPUs asked: no cap */
    assert_int_equal(lim, 0);
    assert_int_equal(cs_as_cap_cpus(4, NAN, 1, 0, NULL), 4);
    assert_int_equal(cs_as_cap_cpus(4, 1, 2, NAN, NULL), 2);
    assert_int_equal(cs_as_cap_cpus(0, 1, 2, 0, &lim), 0);
    assert_int_equal(lim, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_desired),
        cmocka_unit_test(test_grid_policy_one_step),
        cmocka_unit_test(test_grid_capacity),
        cmocka_unit_test(test_traces),
        cmocka_unit_test(test_delays_count_periods),
        cmocka_unit_test(test_counter_resets_on_steady_and_reversal),
        cmocka_unit_test(test_formula_cases),
        cmocka_unit_test(test_scale_down_passes_through_one),
        cmocka_unit_test(test_cold_start),
        cmocka_unit_test(test_register_and_capacity),
        cmocka_unit_test(test_window_mean),
        cmocka_unit_test(test_router_report),
        cmocka_unit_test(test_router_series_limit),
        cmocka_unit_test(test_cpu_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
