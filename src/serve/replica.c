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
#include <time.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/utf8.h"
#include "hub/hub.h"
#include "http/http.h"
#include "serve/api.h"
#include "serve/clean.h"
#include "serve/metrics.h"
#include "serve/sched.h"

#define REPLICA_FLUSH_TIMEOUT_S 5.0
#define CLEAN_MAX_WORKERS 64

static int run_clean(const cs_replica_opts *o);

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
                 json_pack("{s:b, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I}", "ready",
                           atomic_load(&p->ready),
                           "pid", (int)getpid(), "running", st.running, "queued", st.queued, "max_running",
                           st.max_running, "steps", (json_int_t)st.steps, "tokens_generated",
                           (json_int_t)st.tokens_generated, "prompt_tokens", (json_int_t)st.prompt_tokens,
                           "requests_done", (json_int_t)st.requests_done, "batch_size", st.last_batch_size,
                           "kv_tokens", (json_int_t)st.kv_tokens, "kv_capacity", (json_int_t)st.kv_capacity,
                           "kv_bytes", (json_int_t)st.kv_bytes, "preemptions", (json_int_t)st.preemptions));
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
    if (o->app && !strcmp(o->app, "clean_text")) return run_clean(o);
    if (o->app && strcmp(o->app, "text_generation") != 0) {
        cs_api_log("error", "replica: unknown app '%s' (text_generation or clean_text)", o->app);
        return 1;
    }
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
    cs_kvdtype kv_dt;
    if (cs_kvdtype_resolve(o->kv_dtype ? o->kv_dtype : "auto", mopts.dtype, &kv_dt)) {
        cs_err_set(&err, "kv_cache_dtype: expected auto, fp32, bf16 or int8, got '%s'", o->kv_dtype);
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
    if (o->chat_template && cs_api_set_chat_template(p.api, o->chat_template, &err)) goto out;
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
                        .max_queued = o->max_queued > 0 ? o->max_queued : 4096, .threads = o->threads,
                        .kv_cache_mb = o->kv_cache_mb, .kv_dtype = kv_dt};
    if (cs_sched_create(&sched, m, &so, &err)) goto out;
    pthread_mutex_lock(&p.mu);
    p.sched = sched;
    pthread_mutex_unlock(&p.mu);
    cs_api_attach(p.api, m, sched);
    atomic_store(&p.ready, 1);
    cs_api_log("info", "replica %s ready: model %s (%s), %s weights, %s KV cache, %d threads, max_running %d", rid,
               name, dir, cs_wdtype_name(mopts.dtype), cs_kvdtype_name(kv_dt), o->threads, so.max_running);

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

/* ------------------------------------------------------------ clean_text */

typedef struct cjob {
    cs_http_req *r;
    struct cjob *next;
} cjob;

typedef struct creplica {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stop */
    pthread_cond_t idle; /* a job finished */
    cjob *head, *tail;
    int queued, running, stop;
    int max_running, max_queued;
    cs_clean_opts base, cur; /* guarded by mu */
    json_int_t done, failed;
    _Atomic int ready, draining;
} creplica;

static const char *status_type(int status) {
    switch (status) {
    case 400: return "bad_request";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 413: return "payload_too_large";
    case 414: return "uri_too_long";
    case 431: return "header_too_large";
    case 503: return "unavailable";
    default: return "internal_error";
    }
}

static void clean_error(cs_http_req *r, int status, const char *msg) {
    size_t ml = 0;
    char *fixed = cs_utf8_repair(msg, strlen(msg), &ml);
    json_t *j = json_pack("{s:{s:s, s:s%}}", "error", "type", status_type(status), "message", fixed ? fixed : "",
                          fixed ? ml : 0);
    free(fixed);
    char *b = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    cs_http_header h[2];
    size_t n = 0;
    if (status == 503) h[n++] = (cs_http_header){"Retry-After", "1"};
    if (status == 405) h[n++] = (cs_http_header){"Allow", "POST"};
    const char *body = b ? b : "{\"error\":{\"type\":\"internal_error\",\"message\":\"out of memory\"}}";
    cs_http_respond(r, status, "application/json", body, strlen(body), h, n);
    free(b);
}

/* One request body -> the response (runs on a worker thread). */
static void clean_one(creplica *p, cs_http_req *r, const cs_clean_opts *opts) {
    size_t n = 0;
    const char *body = cs_http_req_body(r, &n);
    if (!body) body = "", n = 0;
    char *fixed = NULL;
    size_t fl = n;
    if (!cs_utf8_valid(body, n) && !(fixed = cs_utf8_repair(body, n, &fl))) {
        clean_error(r, 500, "out of memory");
        goto failed;
    }
    json_error_t je;
    json_t *root = json_loadb(fixed ? fixed : body, fl, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
    if (!root) {
        char m[CS_ERR_MAX];
        snprintf(m, sizeof m, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        free(fixed);
        clean_error(r, 400, m);
        goto failed;
    }
    int changed = 0;
    cs_err err = {{0}};
    if (cs_clean_request(opts, root, &changed, &err)) {
        json_decref(root);
        free(fixed);
        clean_error(r, 500, err.msg);
        goto failed;
    }
    if (!changed) { /* as it came (repaired when it had invalid UTF-8) */
        cs_http_respond(r, 200, "application/json", fixed ? fixed : body, fl, NULL, 0);
    } else {
        char *out = json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY);
        if (out) cs_http_respond(r, 200, "application/json", out, strlen(out), NULL, 0);
        else clean_error(r, 500, "out of memory");
        free(out);
    }
    json_decref(root);
    free(fixed);
    return;
failed:
    pthread_mutex_lock(&p->mu);
    p->failed++;
    pthread_mutex_unlock(&p->mu);
}

static void *clean_worker(void *arg) {
    creplica *p = arg;
    cs_clean_opts *opts = malloc(sizeof *opts); /* ~4 KiB: off the thread stack */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stop) pthread_cond_wait(&p->work, &p->mu);
        if (p->stop) break; /* what is still queued is answered by cs_http_stop */
        cjob *j = p->head;
        p->head = j->next;
        if (!p->head) p->tail = NULL;
        p->queued--, p->running++;
        if (opts) *opts = p->cur;
        pthread_mutex_unlock(&p->mu);
        if (opts) clean_one(p, j->r, opts);
        else clean_error(j->r, 500, "out of memory");
        cs_http_req_unref(j->r);
        free(j);
        pthread_mutex_lock(&p->mu);
        p->running--, p->done++;
        pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->mu);
    free(opts);
    return NULL;
}

static void clean_stats(creplica *p, cs_http_req *r) {
    pthread_mutex_lock(&p->mu);
    json_t *opts = cs_clean_opts_to_json(&p->cur);
    json_t *j = json_pack("{s:b, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:i, s:o}", "ready",
                          atomic_load(&p->ready), "pid", (int)getpid(), "app", "clean_text", "running", p->running,
                          "queued", p->queued, "max_running", p->max_running, "steps", 0, "tokens_generated", 0,
                          "prompt_tokens", 0, "requests_done", p->done, "requests_failed", p->failed, "batch_size", 0,
                          "preprocess", opts ? opts : json_null());
    pthread_mutex_unlock(&p->mu);
    respond_json(r, 200, j);
}

static void clean_user_config(creplica *p, cs_http_req *r) {
    size_t n = 0;
    const char *body = cs_http_req_body(r, &n);
    json_error_t je;
    json_t *uc = json_loadb(body ? body : "", n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!uc || !(json_is_object(uc) || json_is_null(uc))) {
        json_decref(uc);
        clean_error(r, 400, "user_config: expected a JSON object of clean_text options, or null");
        return;
    }
    cs_clean_opts *next = malloc(sizeof *next);
    cs_err err = {{0}};
    int rc = -1, status = 400;
    if (!next) {
        cs_err_set(&err, "out of memory");
        status = 500;
    } else {
        pthread_mutex_lock(&p->mu);
        *next = p->base;
        pthread_mutex_unlock(&p->mu);
        rc = cs_clean_opts_merge_json(next, uc, &err);
        if (!rc) {
            pthread_mutex_lock(&p->mu);
            p->cur = *next;
            pthread_mutex_unlock(&p->mu);
        }
    }
    json_decref(uc);
    free(next);
    if (rc) {
        char m[CS_ERR_MAX + 16];
        snprintf(m, sizeof m, "user_config: %s", err.msg);
        clean_error(r, status, m);
    } else {
        cs_http_respond(r, 200, "application/json", "{}", 2, NULL, 0);
    }
}

static void clean_request(void *ud, cs_http_req *r) {
    creplica *p = ud;
    const char *path = cs_http_req_path(r), *method = cs_http_req_method(r), *why = NULL;
    const int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int st = cs_http_req_error(r, &why);
    if (st) {
        clean_error(r, st, why ? why : "request refused");
    } else if (!strcmp(path, "/-/preprocess")) {
        if (strcmp(method, "POST") != 0) {
            clean_error(r, 405, "use POST");
            return;
        }
        cjob *j = malloc(sizeof *j);
        if (!j) {
            clean_error(r, 500, "out of memory");
            return;
        }
        pthread_mutex_lock(&p->mu);
        const int full = p->queued + p->running >= p->max_running + p->max_queued;
        if (!full) {
            cs_http_req_ref(r);
            j->r = r;
            j->next = NULL;
            if (p->tail) p->tail->next = j;
            else p->head = j;
            p->tail = j;
            p->queued++;
            pthread_cond_signal(&p->work);
        }
        pthread_mutex_unlock(&p->mu);
        if (full) {
            free(j);
            clean_error(r, 503, "preprocessor overloaded: too many requests in progress");
        }
    } else if (!strcmp(path, "/-/replica/stats")) {
        if (!get) clean_error(r, 405, "use GET");
        else clean_stats(p, r);
    } else if (!strcmp(path, "/-/replica/user_config")) {
        if (strcmp(method, "PUT") != 0) clean_error(r, 405, "use PUT");
        else clean_user_config(p, r);
    } else if (!strcmp(path, "/-/healthz")) {
        if (atomic_load(&p->ready)) cs_http_respond(r, 200, "text/plain; charset=utf-8", "success", 7, NULL, 0);
        else cs_http_respond(r, 503, "text/plain; charset=utf-8", "draining", 8, NULL, 0);
    } else {
        char m[CS_ERR_MAX];
        snprintf(m, sizeof m, "no route for %.32s %.256s (a clean_text replica serves POST /-/preprocess)", method,
                 path);
        clean_error(r, 404, m);
    }
}

static int run_clean(const cs_replica_opts *o) {
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *rid = o->replica_id ? o->replica_id : "replica";
    int rc = 1, nw = 0;
    cs_err err = {{0}};
    cs_http *http = NULL;
    json_t *j = NULL;
    pthread_t workers[CLEAN_MAX_WORKERS];
    creplica *p = calloc(1, sizeof *p);
    if (!p) {
        cs_api_log("error", "replica %s: out of memory", rid);
        return 1;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->idle, NULL);
    p->max_running = o->threads > 0 ? (o->threads < CLEAN_MAX_WORKERS ? o->threads : CLEAN_MAX_WORKERS) : 1;
    p->max_queued = (o->max_running > 0 ? o->max_running : 32) + (o->max_queued > 0 ? o->max_queued : 4096);

    /* options: clean_opts (the application's args.preprocess), then user_config over them */
    json_error_t je;
    if (o->clean_opts && *o->clean_opts &&
        !(j = json_loads(o->clean_opts, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je))) {
        cs_err_set(&err, "--clean-opts: invalid JSON: %s", je.text);
        goto out;
    }
    if (cs_clean_opts_from_json(&p->base, j, &err)) {
        cs_err_prefix(&err, "clean_opts");
        goto out;
    }
    json_decref(j);
    j = NULL;
    p->cur = p->base;
    if (o->user_config && *o->user_config) {
        if (!(j = json_loads(o->user_config, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je))) {
            cs_err_set(&err, "user_config: invalid JSON: %s", je.text);
            goto out;
        }
        if (cs_clean_opts_merge_json(&p->cur, j, &err)) {
            cs_err_prefix(&err, "user_config");
            goto out;
        }
    }
    for (; nw < p->max_running; nw++)
        if (pthread_create(&workers[nw], NULL, clean_worker, p) != 0) {
            cs_err_set(&err, "cannot start worker threads: %s", strerror(errno));
            goto out;
        }
    cs_http_handlers hh = {.request = clean_request, .ud = p};
    cs_http_opts ho = {.unix_path = o->unix_path, .host = o->host, .port = o->port,
                       .request_timeout_s = o->request_timeout_s, .keep_alive_timeout_s = 86400};
    if (cs_http_start(&http, &ho, &hh, &err)) goto out;
    atomic_store(&p->ready, 1);
    {
        json_t *oj = cs_clean_opts_to_json(&p->cur);
        char *os = oj ? json_dumps(oj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        cs_api_log("info", "replica %s ready: clean_text %s, %d worker threads", rid, os ? os : "", nw);
        free(os);
        json_decref(oj);
    }

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    atomic_store(&p->ready, 0);
    /* finish what was accepted */
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double g = o->graceful_shutdown_timeout_s > 0 ? o->graceful_shutdown_timeout_s : 0;
    dl.tv_sec += (time_t)g;
    dl.tv_nsec += (long)((g - (double)(time_t)g) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&p->mu);
    while ((p->queued || p->running) && pthread_cond_timedwait(&p->idle, &p->mu, &dl) == 0) {
    }
    const int left = p->queued + p->running;
    pthread_mutex_unlock(&p->mu);
    if (left)
        cs_api_log("warn", "replica %s: %d requests still in progress after %.0f s; stopping", rid, left, g);
    cs_http_wait_idle(http, left ? 0 : REPLICA_FLUSH_TIMEOUT_S);
    rc = 0;
out:
    if (rc) cs_api_log("error", "replica %s: %s", rid, err.msg[0] ? err.msg : "failed");
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < nw; i++) pthread_join(workers[i], NULL);
    while (p->head) { /* not started: cs_http_stop answers them with 503 */
        cjob *q = p->head;
        p->head = q->next;
        cs_http_req_unref(q->r);
        free(q);
    }
    cs_http_stop(http);
    if (o->unix_path && http) unlink(o->unix_path);
    json_decref(j);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return rc;
}
