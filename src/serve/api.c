/* cs_api: see api.h; the files and locking are described in api_internal.h.
 * This file: dispatch (routing, authentication, request ids, error replies),
 * /-/healthz, /-/routes, /metrics, the access log and the life cycle. */
#include "serve/api.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/utf8.h"
#include "serve/api_internal.h"
#include "serve/log.h"
#include "serve/openapi.h"
#include "serve/shed.h"

static char *xstrdup(const char *s) { return s ? strdup(s) : NULL; }

/* -------------------------------------------------------- per request */

static void areq_free(void *p) {
    areq *q = p;
    if (!q) return;
    if (q->key_counted) cs_keys_release(q->api->keys, q->key_idx);
    for (int i = 0; i < q->n_subs; i++) free(q->subs[i].prompt_text);
    for (int i = 0; i < q->n_choices; i++) free(q->seqs[i].text);
    for (int i = 0; i < q->n_stop; i++) free(q->stops[i]);
    free(q->subs);
    free(q->seqs);
    cs_sb_free(&q->chunk_head);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

static int valid_request_id(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > CS_API_MAX_REQUEST_ID) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-", s[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------ replies */

static const char *error_type(int kind, int status) {
    if (kind == K_V1) {
        switch (status) {
        case 401: return "authentication_error";
        case 408: return "timeout_error";
        case 429: return "rate_limit_error";
        case 500: case 503: return "server_error";
        default: return "invalid_request_error";
        }
    }
    switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 413: return "payload_too_large";
    case 414: return "uri_too_long";
    case 422: return "validation_error";
    case 429: return "rate_limit_exceeded";
    case 431: return "header_too_large";
    case 501: return "not_implemented";
    case 503: return "unavailable";
    default: return "internal_error";
    }
}

int api_reply(areq *q, int status, const char *ctype, const char *body, size_t len, const char *allow) {
    cs_http_header h[6];
    size_t n = 0;
    char retry[16];
    h[n++] = (cs_http_header){"X-Request-Id", q->request_id};
    if (status == 503 || status == 429) {
        snprintf(retry, sizeof retry, "%d", CS_API_RETRY_AFTER_S);
        h[n++] = (cs_http_header){"Retry-After", retry};
    }
    /* The official OpenAI clients retry a 408 twice: a generation that used up
     * the whole request timeout would run three times. They honour this header. */
    if (status == 408) h[n++] = (cs_http_header){"x-should-retry", "false"};
    if (status == 401) h[n++] = (cs_http_header){"WWW-Authenticate", "Bearer"};
    if (allow) h[n++] = (cs_http_header){"Allow", allow};
    if (q->draining) h[n++] = (cs_http_header){"Connection", "close"};
    q->responded = 1;
    return cs_http_respond(q->http, status, ctype, body, len, h, n);
}

/* A 503 "overloaded" held by cs_shed (see shed.h), answered when released. */
typedef struct held_reply {
    cs_http_req *http; /* a reference of ours */
    const char *request_id; /* in the areq, alive while we hold the reference */
    char retry[16];
    size_t len;
    char body[]; /* NUL-terminated */
} held_reply;

static void held_release(void *arg) {
    held_reply *h = arg;
    cs_http_header hd[2] = {{"X-Request-Id", h->request_id}, {"Retry-After", h->retry}};
    cs_http_respond(h->http, 503, "application/json", h->body, h->len, hd, 2); /* fails if the client left */
    cs_http_req_unref(h->http);
    free(h);
}

/* Holds the refusal instead of answering it now; 0 when held. */
static int hold_refusal(areq *q, const char *body, size_t len) {
    cs_shed *sh = q->api->shed;
    if (!sh || q->draining) return -1;
    held_reply *h = malloc(sizeof *h + len + 1);
    if (!h) return -1;
    h->http = q->http;
    h->request_id = q->request_id;
    h->len = len;
    memcpy(h->body, body, len + 1);
    /* clients that honour it come back after about as long as the crowd is held */
    snprintf(h->retry, sizeof h->retry, "%d", (int)ceil(cs_shed_hold_s(sh)) > CS_API_RETRY_AFTER_S
                                                  ? (int)ceil(cs_shed_hold_s(sh)) : CS_API_RETRY_AFTER_S);
    cs_http_req_ref(q->http);
    if (cs_shed_hold(sh, held_release, h)) {
        cs_http_req_unref(q->http);
        free(h);
        return -1;
    }
    q->responded = 1; /* no other answer (408) from us */
    return 0;
}

void api_send_error(areq *q, int status, const char *param, const char *code, const char *allow, const char *fmt,
                    ...) {
    char msg[CS_ERR_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Under /v1 a request that does not validate is a 400, as OpenAI and vLLM
     * answer it (the official client's BadRequestError); the seed's route keeps
     * FastAPI's 422. */
    if (q->kind == K_V1 && status == 422) status = 400;
    size_t ml;
    char *clean = cs_utf8_repair(msg, strlen(msg), &ml);
    json_t *err;
    if (q->kind == K_V1)
        err = json_pack("{s:{s:s%, s:s, s:o, s:o}}", "error", "message", clean ? clean : "", clean ? ml : 0, "type",
                        error_type(K_V1, status), "param", param ? json_string(param) : json_null(), "code",
                        code ? json_string(code) : json_null());
    else
        err = json_pack("{s:{s:s, s:s%}}", "error", "type", error_type(K_PLAIN, status), "message",
                        clean ? clean : "", clean ? ml : 0);
    free(clean);
    char *body = err ? json_dumps(err, JSON_COMPACT) : NULL;
    json_decref(err);
    const char *b = body ? body : "{\"error\":{\"type\":\"internal_error\",\"message\":\"out of memory\"}}";
    if (!(status == 503 && code && !strcmp(code, "overloaded") && body && hold_refusal(q, b, strlen(b)) == 0))
        api_reply(q, status, "application/json", b, strlen(b), allow);
    free(body);
}

void api_reply_json(areq *q, int status, json_t *obj) {
    char *body = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!body) {
        api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    api_reply(q, status, "application/json", body, strlen(body), NULL);
    free(body);
}

static void h_metrics(areq *q) {
    cs_api *a = q->api;
    cs_metrics_gauges g = {.ready = atomic_load(&a->state) == ST_READY};
    cs_metrics_gauges *gp = NULL;
    pthread_rwlock_rdlock(&a->lock);
    if (a->s) {
        cs_sched_stats st;
        cs_sched_stats_get(a->s, &st);
        g.queued = st.queued;
        g.running = st.running;
        g.max_running = st.max_running;
        g.max_queued = st.max_queued;
        g.batch_size = st.running ? st.last_batch_size : 0;
        g.steps = st.steps;
        g.model_name = a->model_name;
        g.waiting = st.waiting;
        /* tokens held over what the KV pool can hold (it is shared by all sequences) */
        g.kv_usage = st.kv_capacity ? (double)st.kv_tokens / (double)st.kv_capacity : 0;
        g.kv_tokens = st.kv_tokens;
        g.kv_capacity = st.kv_capacity;
        g.kv_bytes = st.kv_bytes;
        g.preemptions = st.preemptions;
        gp = &g;
    }
    pthread_rwlock_unlock(&a->lock);
    char *out = NULL;
    size_t len = 0;
    if (cs_metrics_render(a->metrics, gp ? gp : &g, &out, &len)) {
        api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    api_reply(q, 200, "text/plain; version=0.0.4; charset=utf-8", out, len, NULL);
    free(out);
}

static void h_openapi(areq *q) {
    cs_api *a = q->api;
    const char *prefix = a->prefix;
    cs_openapi_opts o = {.prefixes = &prefix, .n_prefixes = 1, .auth = cs_keys_count(a->keys) > 0};
    pthread_rwlock_rdlock(&a->lock);
    if (a->m) { /* attached: the model's own limits */
        o.n_ctx = a->n_ctx;
        o.n_vocab = cs_tok_vocab_size(a->m->tok);
    }
    pthread_rwlock_unlock(&a->lock);
    char *doc = NULL;
    size_t len = 0;
    cs_err err = {{0}};
    if (cs_openapi_render(&o, &doc, &len, &err)) {
        api_send_error(q, 500, NULL, NULL, NULL, "%s", err.msg);
        return;
    }
    api_reply(q, 200, "application/json", doc, len, NULL);
    free(doc);
}

/* splitmix64's finalizer: request ids that look random but never repeat. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int is_get(const char *m) { return !strcmp(m, "GET") || !strcmp(m, "HEAD"); }

static void on_request(void *ud, cs_http_req *r) {
    cs_api *a = ud;
    areq *q = calloc(1, sizeof *q);
    if (!q) {
        static const char oom[] = "{\"error\":{\"type\":\"internal_error\",\"message\":\"out of memory\"}}";
        cs_http_respond(r, 500, "application/json", oom, sizeof oom - 1, NULL, 0);
        return;
    }
    pthread_mutex_init(&q->mu, NULL);
    q->api = a;
    q->http = r;
    q->route = "unmatched";
    q->eos_id = -1;
    q->key_idx = -1;
    q->created = (long long)time(NULL);
    cs_http_req_set_app(r, q, areq_free);
    const char *rid = cs_http_req_header(r, "X-Request-Id");
    if (valid_request_id(rid)) {
        snprintf(q->request_id, sizeof q->request_id, "%s", rid);
    } else {
        const uint64_t c = atomic_fetch_add(&a->rid_ctr, 1) + 1, h1 = mix64(a->rid_base + c), h2 = mix64(h1 ^ c);
        snprintf(q->request_id, sizeof q->request_id, "%016llx%016llx", (unsigned long long)h1,
                 (unsigned long long)h2);
    }
    snprintf(q->id, sizeof q->id, "cmpl-%s", q->request_id);
    const int state = atomic_load(&a->state);
    q->draining = state == ST_DRAINING;

    const char *path = cs_http_req_path(r), *method = cs_http_req_method(r);
    enum { R_NONE, R_HEALTH, R_ROUTES, R_METRICS, R_SIMPLE, R_COMPL, R_CHAT, R_MODELS, R_MODEL, R_SPEC, R_DOCS } route = R_NONE;
    if (!strcmp(path, "/-/healthz")) route = R_HEALTH, q->route = "/-/healthz";
    else if (!strcmp(path, "/-/routes")) route = R_ROUTES, q->route = "/-/routes";
    else if (!strcmp(path, "/metrics")) route = R_METRICS, q->route = "/metrics";
    else {
        size_t pl = strlen(a->prefix);
        const char *rel = NULL;
        if (!strncmp(path, a->prefix, pl) && (path[pl] == '/' || path[pl] == 0)) rel = path + pl;
        if (rel && !strncmp(rel, "/v1/", 4)) q->kind = K_V1;
        if (!rel) {
        } else if (!strcmp(rel, "/text/simple-gen")) route = R_SIMPLE, q->route = "/text/simple-gen";
        else if (!strcmp(rel, "/v1/completions")) route = R_COMPL, q->route = "/v1/completions";
        else if (!strcmp(rel, "/v1/chat/completions")) route = R_CHAT, q->route = "/v1/chat/completions";
        else if (!strcmp(rel, "/v1/models")) route = R_MODELS, q->route = "/v1/models";
        else if (!strncmp(rel, "/v1/models/", 11)) route = R_MODEL, q->route = "/v1/models/{id}";
        else if (cs_openapi_route(rel) == CS_OPENAPI_DOCUMENT) route = R_SPEC, q->route = "/openapi.json";
        else if (cs_openapi_route(rel) == CS_OPENAPI_PAGE) route = R_DOCS, q->route = "/docs";
    }
    const char *msg;
    int es = cs_http_req_error(r, &msg);
    if (es) {
        api_send_error(q, es, NULL, NULL, NULL, "%s", msg);
        return;
    }
    /* the page holds no data (it asks for a key when openapi.json needs one), as FastAPI's /docs */
    if (route != R_HEALTH && route != R_DOCS &&
        !cs_keys_check(a->keys, cs_http_req_header(r, "Authorization"), &q->key_idx)) {
        api_send_error(q, 401, NULL, "invalid_api_key", NULL,
                       "missing or invalid API key (send 'Authorization: Bearer KEY')");
        return;
    }
    const int post = route == R_SIMPLE || route == R_COMPL || route == R_CHAT;
    if (route == R_NONE) {
        api_send_error(q, 404, NULL, "not_found", NULL, "no route for %s %s", method, path);
        return;
    }
    if (post ? strcmp(method, "POST") != 0 : !is_get(method)) {
        api_send_error(q, 405, NULL, "method_not_allowed", post ? "POST" : "GET, HEAD", "method %s not allowed for %s",
                       method, path);
        return;
    }
    if (post) {
        const int lim = cs_keys_try_acquire(a->keys, q->key_idx);
        if (lim) {
            api_send_error(q, 429, NULL, "rate_limit_exceeded", NULL,
                           "this API key already has %d generation requests in flight (its limit)", lim);
            return;
        }
        q->key_counted = 1;
    }
    switch (route) {
    case R_HEALTH:
        if (state == ST_READY) api_reply(q, 200, "text/plain; charset=utf-8", "success", 7, NULL);
        else if (state == ST_DRAINING) api_reply(q, 503, "text/plain; charset=utf-8", "draining", 8, NULL);
        else api_reply(q, 503, "text/plain; charset=utf-8", "loading", 7, NULL);
        return;
    case R_ROUTES:
        api_reply_json(q, 200, json_pack("{s:s}", a->prefix[0] ? a->prefix : "/", a->app_name));
        return;
    case R_METRICS: h_metrics(q); return;
    case R_MODELS: api_models(q, NULL); return;
    case R_MODEL: api_models(q, path + strlen(a->prefix) + 11); return;
    case R_SPEC: h_openapi(q); return;
    case R_DOCS: {
        size_t len;
        const char *page = cs_openapi_page(&len);
        api_reply(q, 200, CS_OPENAPI_PAGE_TYPE, page, len, NULL);
        return;
    }
    default: break;
    }
    /* generation */
    pthread_rwlock_rdlock(&a->lock);
    if (!a->s || state != ST_READY) {
        pthread_rwlock_unlock(&a->lock);
        api_send_error(q, 503, NULL, state == ST_LOADING ? "loading" : "draining", NULL,
                       state == ST_LOADING ? "the model is loading; retry shortly" : "the server is shutting down");
        return;
    }
    /* full: refused before the body is parsed, so a refusal costs little */
    if (cs_sched_room(a->s) <= 0) {
        pthread_rwlock_unlock(&a->lock);
        api_send_error(q, 503, NULL, "overloaded", NULL, "server overloaded: every place for a sequence is taken");
        return;
    }
    q->tok = a->m->tok;
    q->eos_id = cs_tok_eos_id(a->m->tok);
    if (route == R_SIMPLE) api_simple_gen(q, a->s);
    else if (route == R_CHAT) api_chat_completions(q, a->s);
    else api_completions(q, a->s);
    pthread_rwlock_unlock(&a->lock);
}

static void on_abort(void *ud, cs_http_req *r, cs_http_abort why) {
    cs_api *a = ud;
    areq *q = cs_http_req_app(r);
    if (!q) return;
    pthread_rwlock_rdlock(&a->lock);
    pthread_mutex_lock(&q->mu);
    q->aborted = 1;
    for (int i = 0; i < q->n_subs; i++)
        if (q->subs[i].active && a->s) cs_sched_cancel(a->s, q->subs[i].req);
    if (why == CS_HTTP_ABORT_TIMEOUT && !q->responded)
        api_send_error(q, 408, NULL, "timeout", NULL, "request timed out: no response within the request timeout");
    pthread_mutex_unlock(&q->mu);
    pthread_rwlock_unlock(&a->lock);
}

static void on_done(void *ud, cs_http_req *r, int status, double latency_s, int ok) {
    cs_api *a = ud;
    areq *q = cs_http_req_app(r);
    /* 499 (as nginx logs it): the client left before the response was complete, e.g. a
     * stream cancelled after its 200 went out; the tokens say how far it got */
    if (!ok) status = 499;
    const char *route = "unmatched", *rid = "";
    size_t pt = 0, ct = 0;
    if (q) {
        pthread_mutex_lock(&q->mu);
        route = q->route;
        rid = q->request_id;
        pt = q->prompt_tokens;
        ct = q->completion_tokens;
        pthread_mutex_unlock(&q->mu);
    }
    cs_metrics_request(a->metrics, route, cs_http_req_method(r), status, latency_s);
    if (!a->access_log) return;
    char ts[64];
    cs_log_ts(ts, sizeof ts);
    const char *path = cs_http_req_path(r);
    size_t pl;
    char *cpath = cs_utf8_repair(path, strlen(path), &pl);
    const char *m = cs_http_req_method(r);
    size_t ml;
    char *cm = cs_utf8_repair(m, strlen(m), &ml);
    cs_log_json(json_pack("{s:s, s:s, s:s%, s:s%, s:i, s:f, s:I, s:I, s:s}", "ts", ts, "level", "info", "method",
                          cm ? cm : "", cm ? ml : 0, "path", cpath ? cpath : "", cpath ? pl : 0, "status", status,
                       "latency_ms", round(latency_s * 1e6) / 1e3, "prompt_tokens", (json_int_t)pt,
                       "completion_tokens", (json_int_t)ct, "request_id", rid));
    free(cpath);
    free(cm);
}

static void on_log(void *ud, const char *msg) {
    (void)ud;
    cs_log("warn", "http: %s", msg);
}

/* ---------------------------------------------------------- life cycle */

int cs_api_create(cs_api **out, const cs_api_opts *o, cs_metrics *metrics, cs_err *err) {
    *out = NULL;
    cs_api *a = calloc(1, sizeof *a);
    if (!a) return cs_err_set(err, "out of memory");
    pthread_rwlock_init(&a->lock, NULL);
    pthread_mutex_init(&a->ucfg_mu, NULL);
    a->metrics = metrics;
    a->access_log = o->access_log;
    a->created = (long long)time(NULL);
    a->rid_base = api_random_u64();
    a->model_name = xstrdup(o->model_name ? o->model_name : "model");
    a->model_arg = xstrdup(o->model_arg ? o->model_arg : a->model_name);
    a->app_name = xstrdup(o->app_name ? o->app_name : "transformer-app");
    const char *pre = o->route_prefix ? o->route_prefix : "/";
    size_t pl = strlen(pre);
    while (pl && pre[pl - 1] == '/') pl--;
    a->prefix = strndup(pre, pl);
    if (!a->model_name || !a->model_arg || !a->app_name || !a->prefix) goto oom;
    if (cs_keys_create(&a->keys, o->api_keys, o->api_key_max_ongoing, o->n_api_keys, err)) {
        cs_api_free(a);
        return -1;
    }
    if (pl && pre[0] != '/') {
        cs_err_set(err, "route prefix '%s' must start with '/'", pre);
        cs_api_free(a);
        return -1;
    }
    if (cs_shed_create(&a->shed, err)) {
        cs_api_free(a);
        return -1;
    }
    *out = a;
    return 0;
oom:
    cs_api_free(a);
    return cs_err_set(err, "out of memory");
}

void cs_api_free(cs_api *a) {
    if (!a) return;
    cs_shed_free(a->shed);
    cs_keys_free(a->keys);
    free(a->model_name);
    free(a->model_arg);
    free(a->app_name);
    free(a->prefix);
    json_decref(a->ucfg_doc);
    json_decref(a->chat_tpl);
    json_decref(a->chat_uc);
    pthread_mutex_destroy(&a->ucfg_mu);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}

cs_http_handlers cs_api_handlers(cs_api *a) {
    return (cs_http_handlers){.request = on_request, .abort = on_abort, .done = on_done, .log = on_log, .ud = a};
}

void cs_api_attach(cs_api *a, const cs_model *m, cs_sched *s) {
    size_t mx = 1;
    const int32_t V = cs_tok_vocab_size(m->tok);
    for (int32_t id = 0; id < V; id++) {
        size_t l = 0;
        if (cs_tok_token_bytes(m->tok, id, &l) && l > mx) mx = l;
    }
    pthread_rwlock_wrlock(&a->lock);
    a->m = m;
    a->s = s;
    a->n_ctx = m->net->cfg.n_positions;
    a->max_tok_bytes = mx;
    pthread_rwlock_unlock(&a->lock);
    atomic_store(&a->state, ST_READY);
}

void cs_api_drain(cs_api *a) {
    atomic_store(&a->state, ST_DRAINING);
    cs_shed_flush(a->shed); /* held refusals are answered before the server stops */
}

void cs_api_release_held(cs_api *a) { cs_shed_flush(a->shed); }

void cs_api_detach(cs_api *a) {
    atomic_store(&a->state, ST_DRAINING);
    cs_shed_flush(a->shed);
    pthread_rwlock_wrlock(&a->lock);
    a->s = NULL;
    a->m = NULL;
    pthread_rwlock_unlock(&a->lock);
}
