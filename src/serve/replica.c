/* cs_replica: see replica.h. */
#include "serve/replica.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model.h"
#include "hub/hub.h"
#include "http/http.h"
#include "serve/api.h"
#include "serve/metrics.h"
#include "serve/sched.h"

#define REPLICA_FLUSH_TIMEOUT_S 5.0

typedef struct replica {
    cs_api *api;
    cs_http_handlers api_h;
    pthread_mutex_t mu; /* guards sched (set once ready, cleared at drain) */
    cs_sched *sched;
    _Atomic int ready;
} replica;

static void respond_json(cs_http_req *r, int status, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s) cs_http_respond(r, status, "application/json", s, strlen(s), NULL, 0);
    else cs_http_respond(r, 500, "application/json", "{}", 2, NULL, 0);
    free(s);
    json_decref(o);
}

static void respond_error(cs_http_req *r, int status, const char *msg) {
    respond_json(r, status, json_pack("{s:{s:s, s:s}}", "error", "type", "invalid_request", "message", msg));
}

static void h_stats(replica *p, cs_http_req *r) {
    cs_sched_stats st = {0};
    pthread_mutex_lock(&p->mu);
    if (p->sched) cs_sched_stats_get(p->sched, &st);
    pthread_mutex_unlock(&p->mu);
    respond_json(r, 200,
                 json_pack("{s:b, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:f}", "ready", atomic_load(&p->ready),
                           "pid", (int)getpid(), "running", st.running, "queued", st.queued, "max_running",
                           st.max_running, "steps", (json_int_t)st.steps, "tokens_generated",
                           (json_int_t)st.tokens_generated, "prompt_tokens", (json_int_t)st.prompt_tokens,
                           "requests_done", (json_int_t)st.requests_done, "batch_size", st.last_batch_size));
}

static void h_user_config(replica *p, cs_http_req *r) {
    size_t n = 0;
    const char *body = cs_http_req_body(r, &n);
    json_error_t je;
    json_t *uc = json_loadb(body, n, JSON_REJECT_DUPLICATES, &je);
    if (!uc || !(json_is_object(uc) || json_is_null(uc))) {
        json_decref(uc);
        respond_error(r, 400, "user_config: expected a JSON object");
        return;
    }
    cs_err err = {{0}};
    if (cs_api_set_user_config(p->api, json_is_null(uc) ? NULL : uc, &err)) respond_error(r, 400, err.msg);
    else cs_http_respond(r, 200, "application/json", "{}", 2, NULL, 0);
    json_decref(uc);
}

static void on_request(void *ud, cs_http_req *r) {
    replica *p = ud;
    const char *path = cs_http_req_path(r), *method = cs_http_req_method(r);
    if (!strcmp(path, "/-/replica/stats")) {
        h_stats(p, r);
    } else if (!strcmp(path, "/-/replica/user_config")) {
        if (strcmp(method, "PUT") != 0) respond_error(r, 405, "use PUT");
        else h_user_config(p, r);
    } else {
        p->api_h.request(p->api_h.ud, r);
    }
}

static void on_abort(void *ud, cs_http_req *r, cs_http_abort why) {
    replica *p = ud;
    if (p->api_h.abort) p->api_h.abort(p->api_h.ud, r, why);
}

static void on_done(void *ud, cs_http_req *r, int status, double latency_s, int ok) {
    replica *p = ud;
    if (p->api_h.done) p->api_h.done(p->api_h.ud, r, status, latency_s, ok);
}

static void on_log(void *ud, const char *msg) {
    replica *p = ud;
    if (p->api_h.log) p->api_h.log(p->api_h.ud, msg);
}

/* The name /v1/models reports: a directory's base name, else the argument. */
static void derive_name(const char *arg, int is_dir, char *out, size_t cap) {
    size_t n = strlen(arg);
    while (n > 1 && arg[n - 1] == '/') n--;
    const char *b = arg;
    if (is_dir)
        for (size_t i = 0; i + 1 < n; i++)
            if (arg[i] == '/') b = arg + i + 1;
    size_t len = n - (size_t)(b - arg);
    if (len >= cap) len = cap - 1;
    memcpy(out, b, len);
    out[len] = 0;
}

int cs_replica_run(const cs_replica_opts *o) {
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    cs_err err = {{0}};
    replica p = {0};
    pthread_mutex_init(&p.mu, NULL);
    cs_metrics *metrics = NULL;
    cs_http *http = NULL;
    cs_model *m = NULL;
    cs_sched *sched = NULL;
    json_t *uc = NULL;
    const char *rid = o->replica_id ? o->replica_id : "replica";
    struct stat st;
    const int is_dir = stat(o->model, &st) == 0 && S_ISDIR(st.st_mode);
    char name[256];
    if (o->model_name && *o->model_name) snprintf(name, sizeof name, "%s", o->model_name);
    else derive_name(o->model, is_dir, name, sizeof name);
    cs_gpt2_opts mopts = {0};
    if (o->dtype && cs_wdtype_parse(o->dtype, &mopts.dtype)) {
        cs_err_set(&err, "dtype: expected fp32, bf16 or int8, got '%s'", o->dtype);
        goto out;
    }
    if (o->user_config && *o->user_config) {
        json_error_t je;
        if (!(uc = json_loads(o->user_config, JSON_REJECT_DUPLICATES, &je)) || !json_is_object(uc)) {
            cs_err_set(&err, "user_config: expected a JSON object");
            goto out;
        }
    }
    cs_api_opts ao = {.model_name = name, .model_arg = o->app_name ? o->app_name : name, .route_prefix = "/",
                      .app_name = o->app_name ? o->app_name : "default", .access_log = o->access_log};
    if (cs_metrics_create(&metrics, &err) || cs_api_create(&p.api, &ao, metrics, &err)) goto out;
    if (uc && cs_api_set_user_config(p.api, uc, &err)) goto out;
    p.api_h = cs_api_handlers(p.api);
    cs_http_handlers hh = {.request = on_request, .abort = on_abort, .done = on_done, .log = on_log, .ud = &p};
    cs_http_opts ho = {.unix_path = o->unix_path, .host = o->host, .port = o->port,
                       .request_timeout_s = o->request_timeout_s, .keep_alive_timeout_s = 86400};
    if (cs_http_start(&http, &ho, &hh, &err)) goto out;

    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL); /* a signal may end a long load */
    char dir[CS_HUB_PATH_MAX];
    int lrc = 0;
    if (is_dir) snprintf(dir, sizeof dir, "%s", o->model);
    else lrc = cs_hub_resolve(o->model, dir, sizeof dir, 1, &err);
    if (!lrc) lrc = cs_model_load_opts(&m, dir, &mopts, &err);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (lrc) goto out;
    cs_sched_opts so = {.max_running = o->max_running > 0 ? o->max_running : 32,
                        .max_queued = o->max_queued > 0 ? o->max_queued : 4096, .threads = o->threads};
    if (cs_sched_create(&sched, m, &so, &err)) goto out;
    pthread_mutex_lock(&p.mu);
    p.sched = sched;
    pthread_mutex_unlock(&p.mu);
    cs_api_attach(p.api, m, sched);
    atomic_store(&p.ready, 1);
    cs_api_log("info", "replica %s ready: model %s (%s), %d threads, max_running %d", rid, name, dir,
               o->threads, so.max_running);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    atomic_store(&p.ready, 0);
    cs_api_drain(p.api);
    int left = cs_sched_drain(sched, o->graceful_shutdown_timeout_s);
    if (left) cs_api_log("warn", "replica %s: %d requests still running after %.0f s; stopping them", rid, left,
                         o->graceful_shutdown_timeout_s);
    cs_api_detach(p.api);
    pthread_mutex_lock(&p.mu);
    p.sched = NULL;
    pthread_mutex_unlock(&p.mu);
    cs_sched_free(sched);
    sched = NULL;
    cs_http_wait_idle(http, REPLICA_FLUSH_TIMEOUT_S);
    rc = 0;
out:
    if (rc) cs_api_log("error", "replica %s: %s", rid, err.msg[0] ? err.msg : "failed");
    if (p.api) cs_api_detach(p.api);
    pthread_mutex_lock(&p.mu);
    p.sched = NULL;
    pthread_mutex_unlock(&p.mu);
    cs_sched_free(sched);
    cs_http_stop(http);
    if (o->unix_path) unlink(o->unix_path);
    cs_api_free(p.api);
    cs_model_free(m);
    cs_metrics_free(metrics);
    json_decref(uc);
    pthread_mutex_destroy(&p.mu);
    return rc;
}
