/* The dashboard on the admin listener (see dashboard.h for the page):
 *   GET /, /dashboard/NAME          the page and its files (no API key: they hold no data)
 *   GET /api/cserve/replicas        applications, deployments, replicas, counters (one snapshot)
 *   GET /api/cserve/history         ?app=NAME&seconds=N: the charts' series (history.h)
 *   GET /api/cserve/logs            ?app=&status=&path=&after=&limit=: recent access-log records
 *   POST /api/cserve/proxy/PATH     the playground: PATH goes through the router (controller.c)
 * The counters are the ones /metrics renders (router.c), read at the same
 * instant on the same thread, so the page and /metrics agree.
 * Runs on the control-loop thread (see controller.h). */
#include "serve/dashboard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/utf8.h"
#include "serve/cp_internal.h"

#define DASH_MAX_SECONDS 3600 /* history a request may ask for (the ring keeps less) */

const cs_dash_asset *cs_dash_find(const char *name) {
    for (size_t i = 0; i < cs_dash_n_assets; i++)
        if (!strcmp(cs_dash_assets[i].name, name)) return &cs_dash_assets[i];
    return NULL;
}

const char *cs_dash_content_type(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (!strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (!strcmp(dot, ".css")) return "text/css; charset=utf-8";
    if (!strcmp(dot, ".js")) return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".svg")) return "image/svg+xml";
    return "application/octet-stream";
}

/* "/" and "/dashboard/" are the page; "/dashboard/NAME" a file of it. */
static const cs_dash_asset *asset_of(const char *path) {
    if (!strcmp(path, "/") || !strcmp(path, "/dashboard") || !strcmp(path, "/dashboard/"))
        return cs_dash_find("index.html");
    if (!strncmp(path, "/dashboard/", 11)) return cs_dash_find(path + 11);
    return NULL;
}

int cp_dash_is_asset(const char *path) { return asset_of(path) != NULL; }

static void serve_asset(cs_http_req *r, const cs_dash_asset *a) {
    /* the page loads only its own files and talks only to this listener */
    const cs_http_header h[] = {
        {"Cache-Control", "no-cache"},
        {"X-Content-Type-Options", "nosniff"},
        {"Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"},
    };
    cs_http_respond(r, 200, cs_dash_content_type(a->name), (const char *)a->data, a->len, h, sizeof h / sizeof *h);
}

/* ------------------------------------------------------------ counters */

static int status_class(int status) {
    return status >= 200 && status < 300   ? CS_HIST_2XX
           : status >= 400 && status < 500 ? CS_HIST_4XX
           : status >= 500                 ? CS_HIST_5XX
                                           : CS_HIST_OTHER;
}

/* The proxy's series of one application (app NULL: all of them). */
static void series_counters(const cs_ctl *c, const char *app, cs_hist_counters *k) {
    for (size_t i = 0; i < c->n_series; i++) {
        const cp_series *s = &c->series[i];
        if (app && strcmp(s->app, app) != 0) continue;
        k->req[status_class(s->status)] += s->n;
        for (size_t b = 0; b <= CP_LAT_BUCKETS; b++) {
            k->lat[b] += s->lat_counts[b];
            k->ttft[b] += s->ttft_counts[b];
        }
    }
}

static double dep_tokens(const cp_dep *d) {
    double t = d->tokens_done;
    for (size_t k = 0; k < d->n_reps; k++) t += d->reps[k]->st_tokens;
    return t;
}

static int dep_ongoing(const cp_dep *d) {
    int n = 0;
    for (size_t k = 0; k < d->n_reps; k++) n += d->reps[k]->ongoing;
    return n;
}

/* Tokens, queue, ongoing and the batch size summed (batch: the mean over
 * running generator replicas) into k; *n_batch counts those replicas. */
static void app_gauges(const cp_app *a, cs_hist_counters *k, double *batch_sum, int *n_batch) {
    for (size_t j = 0; j < a->n_deps; j++) {
        const cp_dep *d = a->deps[j];
        k->queued += d->n_queued;
        k->ongoing += dep_ongoing(d);
        if (d->cfg.role != CS_DEP_GENERATOR) continue;
        k->tokens += dep_tokens(d);
        for (size_t r = 0; r < d->n_reps; r++)
            if (d->reps[r]->state == RS_RUNNING && !d->reps[r]->exited) *batch_sum += d->reps[r]->st_batch, (*n_batch)++;
    }
}

void cp_dash_sample(cs_ctl *c, double wall) {
    if (!c->hist) return;
    cs_hist_counters all = {0};
    double all_bs = 0;
    int all_nb = 0;
    series_counters(c, NULL, &all);
    for (size_t i = 0; i < c->n_apps; i++) {
        const cp_app *a = c->apps[i];
        cs_hist_counters k = {0};
        double bs = 0;
        int nb = 0;
        series_counters(c, a->name, &k);
        app_gauges(a, &k, &bs, &nb);
        k.batch = nb ? bs / nb : 0;
        cs_hist_sample(c->hist, a->name, wall, &k);
        all.tokens += k.tokens, all.queued += k.queued, all.ongoing += k.ongoing;
        all_bs += bs, all_nb += nb;
    }
    all.batch = all_nb ? all_bs / all_nb : 0;
    cs_hist_sample(c->hist, "", wall, &all);
}

/* ------------------------------------------------------------ JSON */

static json_t *requests_json(const cs_hist_counters *k) {
    uint64_t n = 0, ttft = 0;
    for (int i = 0; i < CS_HIST_NCLASS; i++) n += k->req[i];
    for (size_t b = 0; b <= CP_LAT_BUCKETS; b++) ttft += k->ttft[b];
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)n, "2xx", (json_int_t)k->req[CS_HIST_2XX],
                     "4xx", (json_int_t)k->req[CS_HIST_4XX], "5xx", (json_int_t)k->req[CS_HIST_5XX], "other",
                     (json_int_t)k->req[CS_HIST_OTHER], "streamed", (json_int_t)ttft);
}

static const char *rstate_name(const cp_replica *r) {
    if (r->exited) return "STOPPED";
    if (r->state == RS_STARTING) return "STARTING";
    if (r->state == RS_STOPPING) return "STOPPING";
    return r->unhealthy ? "UNHEALTHY" : "RUNNING";
}

static json_t *replica_json(const cp_replica *r, double wall) {
    return json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:I, s:I, s:i, s:b}", "id", r->id,
                     "state", rstate_name(r), "pid", (int)r->pid, "version", r->version, "ongoing", r->ongoing,
                     "running", r->st_running, "queued", r->st_queued, "batch", r->st_batch, "tokens", r->st_tokens,
                     "tokens_per_s", r->tok_rate, "uptime_s", r->exited ? 0.0 : wall - r->start_wall, "requests",
                     (json_int_t)r->n_requests, "errors", (json_int_t)r->n_errors, "health_fails", r->health_fails,
                     "healthy", r->state == RS_RUNNING && !r->exited && !r->unhealthy);
}

static json_t *autoscaling_json(const cp_dep *d) {
    if (!d->cfg.autoscaling) return json_null();
    const cs_scfg_autoscaling *as = &d->cfg.as;
    return json_pack("{s:i, s:i, s:f, s:i, s:I, s:b, s:s}", "min_replicas", as->min_replicas, "max_replicas",
                     as->max_replicas, "target_ongoing_requests", as->target_ongoing_requests, "last_desired",
                     d->as_st.last_desired, "decision_counter", (json_int_t)d->as_st.decision_counter, "cpu_limited",
                     d->cpu_limited, "state",
                     d->scaling > 0 ? "UPSCALING" : d->scaling < 0 ? "DOWNSCALING" : "STEADY");
}

static json_t *dep_json(const cp_dep *d, double wall) {
    json_t *reps = json_array();
    int alive = 0;
    for (size_t k = 0; k < d->n_reps; k++) {
        const cp_replica *r = d->reps[k];
        if (r->exited) continue;
        alive += r->state != RS_STOPPING;
        json_array_append_new(reps, replica_json(r, wall));
    }
    double rate = 0;
    for (size_t k = 0; k < d->n_reps; k++) rate += d->reps[k]->exited ? 0 : d->reps[k]->tok_rate;
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:f, s:f, s:o, s:o}",
                     "name", d->name, "role", d->cfg.role == CS_DEP_GENERATOR ? "generator" : "preprocessor",
                     "status", d->status, "status_trigger", d->trigger, "message", d->message,
                     "target_replicas", d->deleting ? 0 : d->target, "running_replicas", cp_running(d),
                     "live_replicas", alive, "max_ongoing_requests", d->cfg.max_ongoing_requests, "queued",
                     d->n_queued, "ongoing", dep_ongoing(d), "starts", (json_int_t)d->starts, "restarts",
                     (json_int_t)d->restarts, "router_requests", (json_int_t)d->router_requests, "errors",
                     (json_int_t)d->errors, "tokens", d->cfg.role == CS_DEP_GENERATOR ? dep_tokens(d) : 0.0,
                     "tokens_per_s", rate, "autoscaling", autoscaling_json(d), "replicas", reps);
}

static json_t *overview_json(cs_ctl *c) {
    const double wall = cp_wall();
    json_t *apps = json_array();
    for (size_t i = 0; i < c->n_apps; i++) {
        const cp_app *a = c->apps[i];
        cs_hist_counters k = {0};
        series_counters(c, a->name, &k);
        json_t *deps = json_array();
        for (size_t j = 0; j < a->n_deps; j++)
            if (!a->deps[j]->deleting) json_array_append_new(deps, dep_json(a->deps[j], wall));
        json_array_append_new(
            apps, json_pack("{s:s, s:o, s:s, s:s, s:s, s:f, s:o, s:o}", "name", a->name, "route_prefix",
                            a->prefix[0] ? json_string(a->prefix) : json_null(), "status", a->status, "message",
                            a->error, "model", a->model_id, "last_deployed_time_s", a->last_deployed, "requests",
                            requests_json(&k), "deployments", deps));
    }
    cs_hist_counters all = {0};
    series_counters(c, NULL, &all);
    return json_pack("{s:{s:f, s:f, s:s, s:i, s:i, s:b, s:i, s:i}, s:o, s:o}", "server",
                     "time_s", wall, "uptime_s", wall - c->start_wall, "proxy_host", c->host, "proxy_port", c->port,
                     "admin_port", c->admin_port, "draining", atomic_load(&c->draining), "proxy_ongoing", c->n_fwd,
                     "api_keys", (int)cs_keys_count(c->keys), "requests", requests_json(&all), "applications", apps);
}

/* null for "no value" (a quantile with no request in its window) */
static json_t *num(double v) { return v < 0 || !isfinite(v) ? json_null() : json_real(round(v * 1000) / 1000); }

static json_t *history_json(cs_ctl *c, const cp_admin_q *q) {
    const char *key = q && q->app[0] ? q->app : "";
    int seconds = q && q->seconds > 0 ? q->seconds : 300;
    if (seconds > DASH_MAX_SECONDS) seconds = DASH_MAX_SECONDS;
    const size_t n = cs_hist_count(c->hist, key);
    const cs_hist_point *last = n ? cs_hist_at(c->hist, key, n - 1) : NULL;
    static const char *const names[] = {"t", "2xx", "4xx", "5xx", "other", "p50_ms", "p99_ms", "ttft_p50_ms",
                                        "ttft_p99_ms", "tokens_s", "queued", "ongoing", "batch"};
    enum { NCOL = sizeof names / sizeof *names };
    json_t *col[NCOL];
    for (int i = 0; i < NCOL; i++) col[i] = json_array();
    for (size_t i = 0; i < n; i++) {
        const cs_hist_point *p = cs_hist_at(c->hist, key, i);
        if (last->t - p->t > seconds) continue;
        const double v[NCOL] = {p->t, p->rps[0], p->rps[1], p->rps[2], p->rps[3], p->p50_ms, p->p99_ms,
                                p->ttft_p50_ms, p->ttft_p99_ms, p->tokens_s, p->queued, p->ongoing, p->batch};
        json_array_append_new(col[0], json_real(round(v[0] * 1000) / 1000));
        for (int k = 1; k < NCOL; k++) json_array_append_new(col[k], num(v[k]));
    }
    json_t *series = json_object();
    for (int i = 0; i < NCOL; i++) json_object_set_new(series, names[i], col[i]);
    const char *keys[CS_HIST_MAX_KEYS];
    const size_t nk = cs_hist_keys(c->hist, keys, CS_HIST_MAX_KEYS);
    json_t *ka = json_array();
    for (size_t i = 0; i < nk; i++)
        if (keys[i][0]) json_array_append_new(ka, json_string(keys[i]));
    return json_pack("{s:s, s:f, s:i, s:o, s:o}", "app", key, "period_s", CS_HIST_PERIOD_S, "quantile_window",
                     CS_HIST_WINDOW, "keys", ka, "series", series);
}

static json_t *str_json(const char *s) {
    size_t n = 0;
    char *fixed = cs_utf8_repair(s, strlen(s), &n);
    json_t *j = fixed ? json_stringn(fixed, n) : json_string("");
    free(fixed);
    return j;
}

static json_t *logs_json(cs_ctl *c, const cp_admin_q *q) {
    size_t limit = q && q->limit > 0 ? (size_t)q->limit : 200;
    if (limit > CS_LOGRING_MAX) limit = CS_LOGRING_MAX;
    cs_logrec *recs = malloc(limit * sizeof *recs);
    if (!recs) return NULL;
    const cs_logring_filter f = {.app = q ? q->app : NULL, .status = q ? q->status : NULL, .path = q ? q->path : NULL,
                                 .after = q ? q->after : 0};
    uint64_t last = 0;
    const size_t n = cs_logring_query(c->alog, &f, recs, limit, &last);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const cs_logrec *r = &recs[i];
        json_t *o = json_pack("{s:I, s:f, s:i, s:f, s:o, s:o, s:o, s:o, s:o}", "seq", (json_int_t)r->seq, "ts", r->ts,
                              "status", r->status, "latency_ms", r->latency_ms, "method", str_json(r->method), "path",
                              str_json(r->path), "application", str_json(r->app), "replica", str_json(r->replica),
                              "request_id", str_json(r->request_id));
        if (o) json_array_append_new(arr, o);
    }
    free(recs);
    return json_pack("{s:I, s:o}", "last_seq", (json_int_t)last, "records", arr);
}

int cp_dash_request(cs_ctl *c, cs_http_req *r, const cp_admin_q *q) {
    const char *path = cs_http_req_path(r), *m = cs_http_req_method(r);
    const int get = !strcmp(m, "GET") || !strcmp(m, "HEAD");
    const cs_dash_asset *a = asset_of(path);
    const int api = !strncmp(path, "/api/cserve/", 12);
    if (!a && !api) return 0;
    const size_t pl = strlen(CP_DASH_PROXY);
    if (!strncmp(path, CP_DASH_PROXY, pl) && (path[pl] == '/' || !path[pl])) {
        /* POSTs below it never get here (controller.c hands them to the router) */
        cp_respond_error(r, 405, "method_not_allowed",
                         "use POST with a proxy path, e.g. " CP_DASH_PROXY "/v1/completions");
        return 1;
    }
    if (!get) {
        cp_respond_error(r, 405, "method_not_allowed", "use GET");
        return 1;
    }
    if (a) serve_asset(r, a);
    else if (!strcmp(path, "/api/cserve/replicas")) cp_respond_json(r, 200, overview_json(c));
    else if (!strcmp(path, "/api/cserve/history")) cp_respond_json(r, 200, history_json(c, q));
    else if (!strcmp(path, "/api/cserve/logs")) cp_respond_json(r, 200, logs_json(c, q));
    else cp_respond_error(r, 404, "not_found", "no such dashboard route");
    return 1;
}
