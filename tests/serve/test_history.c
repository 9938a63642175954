/* The dashboard's in-memory state: the history ring (serve/history.h: rates
 * from counter deltas, quantiles over the window, counter resets, ring
 * wrap-around, key eviction; time is simulated, every sample gets its t from
 * the test) and the access-log ring (serve/log.h: filters, wrap-around). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "serve/history.h"
#include "serve/log.h"

static const double B[] = {1, 2, 5, 10, 20, 50, 100}; /* ms */
#define NB (sizeof B / sizeof *B)

static cs_hist *mk(size_t max_points) {
    cs_hist *h = NULL;
    cs_err err = {{0}};
    assert_int_equal(cs_hist_init(&h, max_points, B, NB, &err), 0);
    assert_non_null(h);
    return h;
}

static void test_quantile(void **st) {
    (void)st;
    uint64_t c[NB + 1] = {0};
    assert_true(cs_hist_quantile(c, B, NB, 0.5) < 0); /* empty */
    c[3] = 10;                                         /* ten requests in (5, 10] */
    assert_float_equal(cs_hist_quantile(c, B, NB, 0.5), 7.5, 1e-9);
    assert_float_equal(cs_hist_quantile(c, B, NB, 1.0), 10.0, 1e-9);
    c[0] = 10; /* ten more in [0, 1] */
    assert_float_equal(cs_hist_quantile(c, B, NB, 0.25), 0.5, 1e-9);
    assert_float_equal(cs_hist_quantile(c, B, NB, 0.5), 1.0, 1e-9);
    assert_float_equal(cs_hist_quantile(c, B, NB, 0.75), 7.5, 1e-9);
    uint64_t inf[NB + 1] = {0};
    inf[NB] = 3; /* above every bound: the largest finite bound */
    assert_float_equal(cs_hist_quantile(inf, B, NB, 0.99), 100.0, 1e-9);
}

static void test_rates_from_deltas(void **st) {
    (void)st;
    cs_hist *h = mk(0);
    cs_hist_counters c = {0};
    c.req[CS_HIST_2XX] = 100; /* counts from before the dashboard looked: the baseline */
    c.tokens = 1000;
    assert_int_equal(cs_hist_sample(h, "app", 10.0, &c), 0);
    assert_int_equal(cs_hist_count(h, "app"), 0);
    c.req[CS_HIST_2XX] += 6;
    c.req[CS_HIST_5XX] += 2;
    c.tokens += 300;
    c.queued = 4;
    c.batch = 2.5;
    c.lat[2] += 8; /* all in (2, 5] */
    assert_int_equal(cs_hist_sample(h, "app", 12.0, &c), 1); /* a 2 s interval */
    assert_int_equal(cs_hist_count(h, "app"), 1);
    const cs_hist_point *p = cs_hist_at(h, "app", 0);
    assert_non_null(p);
    assert_float_equal(p->t, 12.0, 1e-12);
    assert_float_equal(p->rps[CS_HIST_2XX], 3.0, 1e-6);
    assert_float_equal(p->rps[CS_HIST_5XX], 1.0, 1e-6);
    assert_float_equal(p->rps[CS_HIST_4XX], 0.0, 1e-6);
    assert_float_equal(p->tokens_s, 150.0, 1e-4);
    assert_float_equal(p->queued, 4.0, 1e-6);
    assert_float_equal(p->batch, 2.5, 1e-6);
    assert_float_equal(p->p50_ms, 3.5, 1e-5);
    assert_true(p->ttft_p50_ms < 0); /* nothing streamed */
    /* a sample at the same time is ignored */
    assert_int_equal(cs_hist_sample(h, "app", 12.0, &c), 0);
    assert_int_equal(cs_hist_count(h, "app"), 1);
    assert_null(cs_hist_at(h, "app", 1));
    assert_int_equal(cs_hist_count(h, "other"), 0);
    assert_null(cs_hist_at(h, "other", 0));
    cs_hist_free(h);
}

static void test_counter_reset(void **st) {
    (void)st;
    cs_hist *h = mk(0);
    cs_hist_counters c = {0};
    c.tokens = 500;
    cs_hist_sample(h, "", 1.0, &c);
    c.tokens = 40; /* the deployment went away and a new one generated 40 */
    assert_int_equal(cs_hist_sample(h, "", 2.0, &c), 1);
    assert_float_equal(cs_hist_at(h, "", 0)->tokens_s, 40.0, 1e-6);
    cs_hist_free(h);
}

/* Quantiles look at the last CS_HIST_WINDOW intervals only: slow requests
 * long ago stop counting. */
static void test_quantile_window(void **st) {
    (void)st;
    cs_hist *h = mk(0);
    cs_hist_counters c = {0};
    double t = 0;
    cs_hist_sample(h, "a", t, &c);
    c.lat[6] += 100; /* 100 slow requests in (50, 100] */
    cs_hist_sample(h, "a", ++t, &c);
    assert_true(cs_hist_at(h, "a", 0)->p50_ms > 50);
    for (int i = 0; i < CS_HIST_WINDOW - 1; i++) {
        c.lat[0] += 1; /* fast ones from now on */
        cs_hist_sample(h, "a", ++t, &c);
    }
    /* the slow interval is still in the window */
    assert_true(cs_hist_at(h, "a", cs_hist_count(h, "a") - 1)->p50_ms > 50);
    c.lat[0] += 1;
    cs_hist_sample(h, "a", ++t, &c);
    const cs_hist_point *p = cs_hist_at(h, "a", cs_hist_count(h, "a") - 1);
    assert_true(p->p50_ms >= 0 && p->p50_ms <= 1.0);
    assert_true(p->p99_ms <= 1.0);
    cs_hist_free(h);
}

static void test_ring_wraps(void **st) {
    (void)st;
    cs_hist *h = mk(5);
    cs_hist_counters c = {0};
    for (int i = 0; i <= 12; i++) {
        c.req[CS_HIST_2XX] += (uint64_t)i; /* rate i per second */
        cs_hist_sample(h, "", (double)i, &c);
    }
    assert_int_equal(cs_hist_count(h, ""), 5);
    for (size_t i = 0; i < 5; i++) {
        const cs_hist_point *p = cs_hist_at(h, "", i);
        assert_float_equal(p->t, 8.0 + (double)i, 1e-12); /* oldest first */
        assert_float_equal(p->rps[CS_HIST_2XX], 8.0 + (double)i, 1e-6);
    }
    cs_hist_free(h);
}

static void test_keys_evict_least_recent(void **st) {
    (void)st;
    cs_hist *h = mk(4);
    cs_hist_counters c = {0};
    char name[32];
    for (int k = 0; k < CS_HIST_MAX_KEYS; k++) {
        snprintf(name, sizeof name, "app%d", k);
        cs_hist_sample(h, name, 1.0, &c);
        cs_hist_sample(h, name, 2.0, &c);
    }
    cs_hist_sample(h, "app0", 3.0, &c); /* app1 is now the least recently sampled */
    cs_hist_sample(h, "new", 3.0, &c);
    const char *names[CS_HIST_MAX_KEYS + 1];
    const size_t n = cs_hist_keys(h, names, CS_HIST_MAX_KEYS + 1);
    assert_int_equal(n, CS_HIST_MAX_KEYS);
    int has_new = 0, has_app0 = 0, has_app1 = 0;
    for (size_t i = 0; i < n; i++) {
        has_new |= !strcmp(names[i], "new");
        has_app0 |= !strcmp(names[i], "app0");
        has_app1 |= !strcmp(names[i], "app1");
    }
    assert_true(has_new && has_app0 && !has_app1);
    assert_int_equal(cs_hist_count(h, "app0"), 2);
    assert_int_equal(cs_hist_count(h, "new"), 0); /* only a baseline so far */
    cs_hist_free(h);
}

static void test_bad_bounds(void **st) {
    (void)st;
    cs_hist *h = NULL;
    cs_err err = {{0}};
    const double dec[] = {5, 2};
    assert_int_not_equal(cs_hist_init(&h, 0, dec, 2, &err), 0);
    assert_null(h);
    double many[CS_HIST_MAX_BUCKETS];
    for (int i = 0; i < CS_HIST_MAX_BUCKETS; i++) many[i] = i + 1;
    assert_int_not_equal(cs_hist_init(&h, 0, many, CS_HIST_MAX_BUCKETS, &err), 0);
    cs_hist_free(NULL);
}

static void test_logring_status_patterns(void **st) {
    (void)st;
    assert_true(cs_logring_status_match(NULL, 200));
    assert_true(cs_logring_status_match("", 503));
    assert_true(cs_logring_status_match("404", 404));
    assert_false(cs_logring_status_match("404", 400));
    assert_true(cs_logring_status_match("4xx", 499));
    assert_true(cs_logring_status_match("5XX", 500));
    assert_false(cs_logring_status_match("4xx", 500));
    assert_true(cs_logring_status_match("err", 400));
    assert_false(cs_logring_status_match("err", 302));
    assert_false(cs_logring_status_match("abc", 200));
    assert_false(cs_logring_status_match("20", 200));
}

static void test_logring_filters_and_wraps(void **st) {
    (void)st;
    cs_logring *g = NULL;
    assert_int_equal(cs_logring_create(&g, 8), 0);
    for (int i = 0; i < 12; i++) { /* the first 4 are pushed out */
        cs_logrec r = {.status = i % 3 == 0 ? 503 : 200, .latency_ms = i};
        snprintf(r.app, sizeof r.app, "%s", i % 2 ? "odd" : "even");
        snprintf(r.path, sizeof r.path, "/p/%d", i);
        cs_logring_add(g, &r);
    }
    cs_logrec out[16];
    uint64_t last = 0;
    size_t n = cs_logring_query(g, NULL, out, 16, &last);
    assert_int_equal(n, 8);
    assert_int_equal(last, 12);
    assert_int_equal(out[0].seq, 12); /* newest first */
    assert_int_equal(out[7].seq, 5);
    assert_string_equal(out[7].path, "/p/4");
    cs_logring_filter f = {.app = "odd"};
    n = cs_logring_query(g, &f, out, 16, NULL);
    assert_int_equal(n, 4); /* 5, 7, 9, 11 */
    for (size_t i = 0; i < n; i++) assert_string_equal(out[i].app, "odd");
    f = (cs_logring_filter){.status = "5xx"};
    n = cs_logring_query(g, &f, out, 16, NULL);
    assert_int_equal(n, 2); /* 6, 9 */
    assert_string_equal(out[0].path, "/p/9");
    f = (cs_logring_filter){.path = "/p/1"};
    n = cs_logring_query(g, &f, out, 16, NULL);
    assert_int_equal(n, 2); /* /p/10, /p/11 */
    f = (cs_logring_filter){.after = 10};
    n = cs_logring_query(g, &f, out, 1, NULL);
    assert_int_equal(n, 1); /* cap */
    assert_int_equal(out[0].seq, 12);
    cs_logring_free(g);
    cs_logring_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantile),
        cmocka_unit_test(test_rates_from_deltas),
        cmocka_unit_test(test_counter_reset),
        cmocka_unit_test(test_quantile_window),
        cmocka_unit_test(test_ring_wraps),
        cmocka_unit_test(test_keys_evict_least_recent),
        cmocka_unit_test(test_bad_bounds),
        cmocka_unit_test(test_logring_status_patterns),
        cmocka_unit_test(test_logring_filters_and_wraps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
