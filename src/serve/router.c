/* The proxy part of the control plane: route a request to an application
 * (longest route prefix; at the root, /v1 by the request's "model"), pick a
 * replica (power of two choices on ongoing requests, at most
 * max_ongoing_requests each), queue in FIFO order up to max_queued_requests,
 * forward over the replica's Unix socket with libcurl and stream the answer
 * back; retry a request whose replica failed before answering. Also the
 * proxy's own routes (/-/healthz, /-/routes, /metrics) and Ray Serve's
 * metric series. Runs on the control-loop thread (see controller.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "serve/cp_internal.h"
#include "serve/openapi.h"

const double cp_lat_bounds[CP_LAT_BUCKETS] = {1,   2,   5,    10,   20,   50,    100,    200,    300,   400,
                                              500, 1000, 2000, 5000, 10000, 60000, 120000, 300000, 600000};

/* ------------------------------------------------------------ responses */

void cp_respond_json(cs_http_req *r, int status, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    if (s) cs_http_respond(r, status, "application/json", s, strlen(s), NULL, 0);
    else cs_http_respond(r, 500, "application/json", "{\"error\":{\"type\":\"internal_error\"}}", 34, NULL, 0);
    free(s);
    json_decref(o);
}

void cp_respond_error(cs_http_req *r, int status, const char *type, const char *msg) {
    const cs_http_header ra = {"Retry-After", "1"};
    json_t *o = json_pack("{s:{s:s, s:s}}", "error", "type", type, "message", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    const int retry = status == 503 || status == 429;
    if (s) cs_http_respond(r, status, "application/json", s, strlen(s), retry ? &ra : NULL, retry);
    free(s);
    json_decref(o);
}

/* ------------------------------------------------------------ requests */

static void fwd_free(void *p) {
    cp_fwd *f = p;
    if (!f) return;
    if (f->key_counted) cs_keys_release(f->c->keys, f->key_idx);
    if (f->hdrs) curl_slist_free_all(f->hdrs);
    free(f->url_path);
    free(f->buf);
    free(f->body2);
    free(f);
}

static int valid_request_id(const char *s) {
    if (!s || !*s || strlen(s) > 128) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("._:-", *s)))
            return 0;
    return 1;
}

static void finish(cs_ctl *c, cp_fwd *f) {
    if (f->finished) return;
    f->finished = 1;
    if (f->shadow) {
        c->n_shadow--;
        fwd_free(f);
        return;
    }
    c->n_fwd--;
    cs_http_req_unref(f->http); /* may free f */
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rnd01(cs_ctl *c) { return (double)(splitmix(&c->rng) >> 11) * 0x1.0p-53; }

/* FNV-1a, then mixed: a header value's place in [0, 1) */
static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    uint64_t t = h;
    return splitmix(&t);
}

static const char *route_label(const char *rel) {
    if (!strcmp(rel, "/text/simple-gen")) return "/text/simple-gen";
    if (!strcmp(rel, "/v1/completions")) return "/v1/completions";
    if (!strcmp(rel, "/v1/chat/completions")) return "/v1/chat/completions";
    if (!strcmp(rel, "/v1/models")) return "/v1/models";
    if (!strncmp(rel, "/v1/models/", 11)) return "/v1/models/{id}";
    return "other";
}

static void record(cs_ctl *c, cp_fwd *f, int status) {
    if (f->shadow) return;
    cp_series_add(c, f->app_label, f->route_label, f->method, status, (cp_now() - f->t0) * 1e3,
                  f->t_first > 0 ? (f->t_first - f->t0) * 1e3 : -1);
}

static void fail(cs_ctl *c, cp_fwd *f, int status, const char *type, const char *msg) {
    record(c, f, status);
    if (f->shadow) {
        if (f->dep) f->dep->shadow_dropped++;
    } else {
        cp_respond_error(f->http, status, type, msg);
    }
    finish(c, f);
}

cp_replica *cp_pick(const cp_dep *d) {
    cp_replica *cand[2] = {0};
    int n = 0;
    unsigned seen = 0;
    /* reservoir-sample two replicas with room */
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (r->state != RS_RUNNING || r->exited || r->unhealthy || r->ongoing >= d->cfg.max_ongoing_requests) continue;
        seen++;
        if (n < 2) {
            cand[n++] = r;
        } else {
            unsigned x;
            if (getrandom(&x, sizeof x, 0) != sizeof x) x = (unsigned)rand();
            unsigned k = x % seen;
            if (k < 2) cand[k] = r;
        }
    }
    if (n == 0) return NULL;
    if (n == 1) return cand[0];
    if (cand[0]->ongoing != cand[1]->ongoing) return cand[1]->ongoing < cand[0]->ongoing ? cand[1] : cand[0];
    unsigned char coin;
    if (getrandom(&coin, 1, 0) != 1) coin = (unsigned char)rand();
    return cand[coin & 1]; /* a tie: either, so that equal replicas share the load evenly */
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
    cp_fwd *f = ud;
    size_t len = sz * n;
    struct {
        const char *name;
        char *dst;
        size_t cap;
    } want[] = {{"content-type:", f->ctype, sizeof f->ctype},
                {"retry-after:", f->retry_after, sizeof f->retry_after},
                {"allow:", f->allow, sizeof f->allow}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        size_t nl = strlen(want[i].name);
        if (len > nl && !strncasecmp(p, want[i].name, nl)) {
            const char *v = p + nl, *e = p + len;
            while (v < e && (*v == ' ' || *v == '\t')) v++;
            while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
            snprintf(want[i].dst, want[i].cap, "%.*s", (int)(e - v), v);
        }
    }
    return len;
}

static size_t resp_headers(cp_fwd *f, cs_http_header *h) {
    size_t n = 0;
    h[n++] = (cs_http_header){"X-Request-Id", f->request_id};
    if (f->retry_after[0]) h[n++] = (cs_http_header){"Retry-After", f->retry_after};
    if (f->allow[0]) h[n++] = (cs_http_header){"Allow", f->allow};
    return n;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
    cp_fwd *f = ud;
    size_t len = sz * n;
    if (f->gone) return 0;
    if (!f->status) {
        long st = 0;
        curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &st);
        f->status = (int)st;
        f->streaming = !f->shadow && f->stage != CP_ST_PRE && !strncasecmp(f->ctype, "text/event-stream", 17);
    }
    if (f->shadow) return len; /* discarded */
    if (f->streaming) {
        if (!f->sent) {
            cs_http_header h[4];
            size_t nh = resp_headers(f, h);
            if (cs_http_stream_begin(f->http, f->status, f->ctype, h, nh) != 0) {
                f->gone = 1;
                return 0;
            }
            f->sent = 1;
            f->t_first = cp_now(); /* the replica streams once the first token exists */
        }
        if (cs_http_stream_write(f->http, p, len) != 0) {
            f->gone = 1;
            return 0;
        }
        return len;
    }
    if (f->len + len > CP_MAX_RESP_BYTES) return 0;
    if (f->len + len > f->cap) {
        size_t nc = f->cap ? f->cap : 4096;
        while (nc < f->len + len) nc *= 2;
        char *nb = realloc(f->buf, nc);
        if (!nb) return 0;
        f->buf = nb;
        f->cap = nc;
    }
    memcpy(f->buf + f->len, p, len);
    f->len += len;
    return len;
}

static void send_to(cs_ctl *c, cp_fwd *f, cp_replica *r) {
    CURL *e = curl_easy_init();
    if (!e) {
        fail(c, f, 503, "unavailable", "out of memory");
        return;
    }
    f->easy = e;
    f->rep = r;
    snprintf(f->rep_label, sizeof f->rep_label, "%s", r->id);
    f->status = 0;
    f->len = 0;
    f->ctype[0] = f->retry_after[0] = f->allow[0] = 0;
    f->t_rep = cp_now();
    f->tries++;
    r->ongoing++;
    r->dep->router_requests++;
    cp_replica_target(e, r, f->stage == CP_ST_PRE ? "/-/preprocess" : f->url_path); /* local or remote.h */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)f);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    if (!f->hdrs) {
        char h[300];
        snprintf(h, sizeof h, "X-Request-Id: %s", f->request_id);
        f->hdrs = curl_slist_append(f->hdrs, h);
        f->hdrs = curl_slist_append(f->hdrs, "Expect:");
        if (f->ctype_in[0]) {
            snprintf(h, sizeof h, "Content-Type: %s", f->ctype_in);
            f->hdrs = curl_slist_append(f->hdrs, h);
        }
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->hdrs);
    size_t blen = f->body2_len;
    const char *body = f->body2 ? f->body2 : cs_http_req_body(f->http, &blen);
    if (!strcmp(f->method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(f->method, "HEAD")) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        if (strcmp(f->method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, f->method);
    }
    curl_multi_add_handle(c->multi, e);
}

static void enqueue(cp_dep *d, cp_fwd *f, int front) {
    f->queued = 1;
    f->next = NULL;
    if (front) {
        f->next = d->q_head;
        d->q_head = f;
        if (!d->q_tail) d->q_tail = f;
    } else {
        if (d->q_tail) d->q_tail->next = f;
        else d->q_head = f;
        d->q_tail = f;
    }
    d->n_queued++;
}

static void unqueue(cp_dep *d, cp_fwd *f) {
    cp_fwd **pp = &d->q_head, *prev = NULL;
    while (*pp && *pp != f) prev = *pp, pp = &(*pp)->next;
    if (!*pp) return;
    *pp = f->next;
    if (d->q_tail == f) d->q_tail = prev;
    f->queued = 0;
    f->next = NULL;
    d->n_queued--;
}

/* Whether requests can still be served by d at some point. */
static int servable(const cp_dep *d) {
    if (d->deleting) return 0;
    for (size_t i = 0; i < d->n_reps; i++)
        if (!d->reps[i]->exited && d->reps[i]->state != RS_STOPPING) return 1;
    if (d->failed_version == d->version) return 0;
    /* an autoscaled deployment at zero starts a replica for the request that waits */
    return d->target > 0 || (d->cfg.autoscaling && d->cfg.as.max_replicas > 0);
}

static void route_to(cs_ctl *c, cp_fwd *f, cp_dep *d, int front) {
    f->dep = d;
    cp_replica *r = front ? NULL : cp_pick(d);
    if (r && !d->q_head) {
        send_to(c, f, r);
        return;
    }
    const int mq = d->cfg.max_queued_requests;
    const int full = !front && mq >= 0 && d->n_queued >= mq;
    if ((full || !servable(d)) && d->cfg.fallback[0] && f->hops < CP_MAX_HOPS) {
        cp_dep *fb = cp_find_dep(d->app, d->cfg.fallback);
        if (fb) {
            f->hops++;
            d->fallbacks++;
            route_to(c, f, fb, 0);
            return;
        }
    }
    if (f->shadow && (!servable(d) || d->n_queued >= d->cfg.max_ongoing_requests || full)) {
        fail(c, f, 503, "unavailable", "shadow dropped"); /* never queue mirrored copies deeply */
        return;
    }
    if (!servable(d)) {
        char m[1024];
        snprintf(m, sizeof m, "deployment %.128s of application %.128s has no replicas%s%.300s", d->name, d->app->name,
                 d->message[0] ? ": " : "", d->message);
        fail(c, f, 503, "unavailable", m);
        return;
    }
    if (full) {
        char m[200];
        snprintf(m, sizeof m,
                 "Request dropped due to backpressure (num_queued_requests=%d, max_queued_requests=%d).",
                 d->n_queued, mq);
        record(c, f, 503);
        const cs_http_header ra = {"Retry-After", "1"};
        cs_http_respond(f->http, 503, "text/plain; charset=utf-8", m, strlen(m), &ra, 1);
        finish(c, f);
        return;
    }
    enqueue(d, f, front);
    if (d->cfg.autoscaling && cp_running(d) == 0) d->as_cold = 1, c->tick_now = 1; /* cold start: now */
    cp_dispatch(c, d);
}

void cp_dispatch(cs_ctl *c, cp_dep *d) {
    while (d->q_head) {
        cp_replica *r = cp_pick(d);
        if (!r) break;
        cp_fwd *f = d->q_head;
        unqueue(d, f);
        send_to(c, f, r);
    }
    if (d->q_head && !servable(d)) cp_fail_queue(c, d, 503, d->message[0] ? d->message : "no replicas");
}

void cp_fail_queue(cs_ctl *c, cp_dep *d, int status, const char *msg) {
    while (d->q_head) {
        cp_fwd *f = d->q_head;
        unqueue(d, f);
        fail(c, f, status, "unavailable", msg);
    }
}

static int is_transport_error(CURLcode res) {
    return res == CURLE_COULDNT_CONNECT || res == CURLE_GOT_NOTHING || res == CURLE_RECV_ERROR ||
           res == CURLE_SEND_ERROR || res == CURLE_PARTIAL_FILE || res == CURLE_OPERATION_TIMEDOUT;
}

static void lat_add(uint64_t *counts, double *sum, double ms) {
    size_t b = 0;
    while (b < CP_LAT_BUCKETS && ms > cp_lat_bounds[b]) b++;
    counts[b]++;
    *sum += ms;
}

static void role_record(cp_fwd *f, cp_dep *d, int error, double ms) {
    if (!d || d->cfg.role != CS_DEP_GENERATOR) return;
    const int role = f->shadow ? 1 : 0;
    d->role_n[role][error ? 1 : 0]++;
    lat_add(d->role_lat[role], &d->role_lat_sum[role], ms);
}

static void start_generation(cs_ctl *c, cp_app *a, cp_fwd *f);

void cp_fwd_finished(cs_ctl *c, CURL *e, CURLcode res) {
    cp_fwd *f = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&f);
    curl_multi_remove_handle(c->multi, e);
    if (!f->status) {
        long st = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
        f->status = (int)st;
    }
    curl_easy_cleanup(e);
    f->easy = NULL;
    cp_replica *r = f->rep;
    cp_dep *d = r->dep;
    f->rep = NULL;
    const double ms = (cp_now() - f->t_rep) * 1e3;
    r->n_requests++;
    lat_add(r->lat_counts, &r->lat_sum, ms);
    const int failed = res != CURLE_OK && !f->gone;
    if (failed || f->status >= 500) r->n_errors++, d->errors++;
    if (failed && is_transport_error(res) && !f->sent) {
        /* the replica died or is stuck: nothing reached the client, try another one */
        cp_log("warn", "request %s: replica %s failed (%s)%s", f->request_id, r->id, curl_easy_strerror(res),
               f->tries < CP_MAX_RETRIES ? "; retrying on another replica" : "");
        if (!r->exited) {
            r->unhealthy = 1;
            r->next_check = cp_now();
        }
        cp_replica_done_request(c, r);
        if (f->tries < CP_MAX_RETRIES) {
            route_to(c, f, d, 1);
        } else {
            role_record(f, d, 1, ms);
            fail(c, f, 502, "bad_gateway", "the replica failed while handling the request");
        }
        return;
    }
    role_record(f, d, failed || f->status >= 500, ms);
    if (f->shadow) {
        finish(c, f);
        cp_replica_done_request(c, r);
        return;
    }
    if (f->stage == CP_ST_PRE && !f->gone && !failed && (f->status == 200 || f->status == 400)) {
        /* The Preprocessor's answer is the request the generator gets. A body it cannot read
         * (400) goes on as it is, so that the generator's API reports it in its own shape. */
        free(f->body2);
        f->body2 = NULL;
        f->body2_len = 0;
        if (f->status == 200) {
            f->body2 = f->buf ? f->buf : strdup("");
            f->body2_len = f->len;
            f->buf = NULL;
        }
        free(f->buf);
        f->buf = NULL;
        f->len = f->cap = 0;
        f->stage = CP_ST_GEN;
        f->tries = 0;
        f->ctype[0] = 0;
        cp_replica_done_request(c, r);
        f->status = 0;
        cp_app *a = cp_find_app(c, f->app_label);
        if (!a) fail(c, f, 503, "unavailable", "the application was deleted");
        else start_generation(c, a, f);
        return;
    }
    if (f->gone) {
        record(c, f, 499);
    } else if (f->streaming && f->sent) {
        if (failed) {
            char ev[300];
            int n = snprintf(ev, sizeof ev,
                             "data: {\"error\":{\"type\":\"replica_failed\",\"message\":\"the replica failed "
                             "while streaming: %s\"}}\n\n",
                             curl_easy_strerror(res));
            cs_http_stream_write(f->http, ev, (size_t)n);
        }
        cs_http_stream_end(f->http, 0);
        record(c, f, f->status);
    } else if (failed) {
        fail(c, f, 502, "bad_gateway", curl_easy_strerror(res));
        cp_replica_done_request(c, r);
        return;
    } else {
        cs_http_header h[4];
        size_t nh = resp_headers(f, h);
        record(c, f, f->status);
        cs_http_respond(f->http, f->status ? f->status : 502, f->ctype[0] ? f->ctype : "application/octet-stream",
                        f->buf ? f->buf : "", f->len, h, nh);
    }
    finish(c, f);
    cp_replica_done_request(c, r);
}

/* The generator for a request: by the weights of args.traffic, at the place a
 * session header's hash gives (so a client stays on one side), else at random. */
static cp_dep *choose_generator(cs_ctl *c, cp_app *a, const cp_fwd *f) {
    double total = 0;
    cp_dep *first = NULL;
    for (size_t i = 0; i < a->n_deps; i++) {
        cp_dep *d = a->deps[i];
        if (d->deleting || d->cfg.role != CS_DEP_GENERATOR) continue;
        if (!first) first = d;
        total += d->cfg.weight;
    }
    if (!(total > 0)) return first;
    double u = -1;
    if (a->tg.session_header[0]) {
        pthread_mutex_lock(&c->mu);
        for (int k = 0; k < c->n_sess && u < 0; k++)
            if (!strcasecmp(c->sess_names[k], a->tg.session_header) && f->sess_has[k])
                u = (double)(f->sess_hash[k] >> 11) * 0x1.0p-53;
        pthread_mutex_unlock(&c->mu);
    }
    if (u < 0) u = rnd01(c);
    double x = u * total, acc = 0;
    cp_dep *last = first;
    for (size_t i = 0; i < a->n_deps; i++) {
        cp_dep *d = a->deps[i];
        if (d->deleting || d->cfg.role != CS_DEP_GENERATOR || !(d->cfg.weight > 0)) continue;
        last = d;
        acc += d->cfg.weight;
        if (x < acc) return d;
    }
    return last;
}

/* A copy of f for the mirror deployment: its own body, no client. */
static void mirror(cs_ctl *c, cp_app *a, const cp_fwd *f, cp_dep *primary) {
    cp_dep *m = cp_find_dep(a, a->tg.mirror);
    if (!m || m == primary || atomic_load(&c->draining)) return;
    cp_fwd *s = calloc(1, sizeof *s);
    size_t blen = f->body2_len;
    const char *body = f->body2 ? f->body2 : cs_http_req_body(f->http, &blen);
    if (!s || !(s->body2 = malloc(blen + 1)) || !(s->url_path = strdup(f->url_path))) {
        if (s) fwd_free(s);
        return;
    }
    memcpy(s->body2, body ? body : "", blen);
    s->body2[blen] = 0;
    s->body2_len = blen;
    s->c = c;
    s->shadow = 1;
    s->stage = CP_ST_GEN;
    memcpy(s->method, f->method, sizeof s->method);
    memcpy(s->ctype_in, f->ctype_in, sizeof s->ctype_in);
    snprintf(s->request_id, sizeof s->request_id, "%.100s-shadow", f->request_id);
    memcpy(s->app_label, f->app_label, sizeof s->app_label);
    memcpy(s->route_label, f->route_label, sizeof s->route_label);
    s->t0 = cp_now();
    c->n_shadow++;
    s->hops = CP_MAX_HOPS; /* a mirrored copy takes no fallback */
    route_to(c, s, m, 0);
}

static void start_generation(cs_ctl *c, cp_app *a, cp_fwd *f) {
    cp_dep *d = choose_generator(c, a, f);
    if (!d) {
        fail(c, f, 503, "unavailable", "the application has no generator deployment");
        return;
    }
    if (a->tg.mirror[0] && a->tg.mirror_percent > 0 && rnd01(c) * 100 < a->tg.mirror_percent) mirror(c, a, f, d);
    route_to(c, f, d, 0);
}

void cp_proxy_abort(cs_ctl *c, cs_http_req *r, int why) {
    (void)why;
    cp_fwd *f = cs_http_req_app(r);
    if (!f || f->finished) return;
    f->gone = 1;
    if (f->queued) {
        unqueue(f->dep, f);
        record(c, f, why == CS_HTTP_ABORT_TIMEOUT ? 408 : 499);
        finish(c, f);
    } else if (f->easy) {
        CURL *e = f->easy;
        cp_replica *rep = f->rep;
        curl_multi_remove_handle(c->multi, e);
        curl_easy_cleanup(e);
        f->easy = NULL;
        f->rep = NULL;
        record(c, f, why == CS_HTTP_ABORT_TIMEOUT ? 408 : 499);
        finish(c, f);
        cp_replica_done_request(c, rep);
    }
}

/* ------------------------------------------------------------ routing */

static int routable(const cp_app *a) { return !a->deleting && a->prefix[0] && a->n_deps > 0; }

static cp_app *match_prefix(cs_ctl *c, const char *path, const char **rel) {
    cp_app *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        if (a->deleting || !a->prefix[0]) continue;
        size_t pl = strcmp(a->prefix, "/") ? strlen(a->prefix) : 0;
        if (strncmp(path, a->prefix, pl) != 0 || (path[pl] != '/' && path[pl] != 0)) continue;
        if (!best || pl + 1 > best_len) best = a, best_len = pl + 1;
    }
    if (best) *rel = path + (best_len - 1);
    return best;
}

static cp_app *app_by_model(cs_ctl *c, const char *model) {
    for (size_t i = 0; i < c->n_apps; i++)
        if (routable(c->apps[i]) && !strcmp(c->apps[i]->model_id, model)) return c->apps[i];
    for (size_t i = 0; i < c->n_apps; i++)
        if (routable(c->apps[i]) && !strcmp(c->apps[i]->name, model)) return c->apps[i];
    return NULL;
}

static void openai_error(cs_http_req *r, int status, const char *param, const char *code, const char *msg) {
    cp_respond_json(r, status,
                    json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", msg, "type", "invalid_request_error",
                              "param", param, "code", code));
}

static void models_list(cs_ctl *c, cs_http_req *r) {
    json_t *data = json_array();
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        if (!routable(a)) continue;
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", a->model_id, "object", "model",
                                              "created", (json_int_t)a->last_deployed, "owned_by", "cserve",
                                              "root", a->name));
    }
    cp_respond_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void healthz(cs_ctl *c, cs_http_req *r) {
    int n = 0, ok = 1;
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        if (!routable(a)) continue;
        n++;
        int run = 0;
        for (size_t j = 0; j < a->n_deps; j++) run += cp_running(a->deps[j]) > 0 || a->deps[j]->target == 0;
        ok &= run == (int)a->n_deps;
    }
    const char *msg = atomic_load(&c->draining) ? "draining" : !n ? "no applications" : !ok ? "replicas starting" : NULL;
    if (msg) cs_http_respond(r, 503, "text/plain; charset=utf-8", msg, strlen(msg), NULL, 0);
    else cs_http_respond(r, 200, "text/plain; charset=utf-8", "success", 7, NULL, 0);
}

/* The proxy's own read-only routes take GET and HEAD only. */
static void get_only(cs_http_req *r) {
    static const cs_http_header allow = {"Allow", "GET, HEAD"};
    static const char body[] = "{\"error\":{\"type\":\"method_not_allowed\",\"message\":\"use GET\"}}";
    cs_http_respond(r, 405, "application/json", body, sizeof body - 1, &allow, 1);
}

/* GET [PREFIX]/openapi.json and [PREFIX]/docs, answered here rather than by a
 * replica (which does not know its prefix): one document with every
 * application's routes (serve/openapi.h). Returns 1 when it answered. */
static int proxy_openapi(cs_ctl *c, cs_http_req *r, const char *path, int get, int authorized) {
    const char *rel = path;
    cp_app *a = match_prefix(c, path, &rel);
    const int which = cs_openapi_route(a ? rel : path);
    if (!which) return 0;
    if (!get) {
        get_only(r);
        return 1;
    }
    if (which == CS_OPENAPI_PAGE) { /* holds no data: no key needed, as /-/healthz */
        size_t n = 0;
        const char *page = cs_openapi_page(&n);
        cs_http_respond(r, 200, CS_OPENAPI_PAGE_TYPE, page, n, NULL, 0);
        return 1;
    }
    if (!authorized) {
        cp_respond_error(r, 401, "invalid_api_key", "missing or invalid API key (send 'Authorization: Bearer KEY')");
        return 1;
    }
    const char *pre[CS_OPENAPI_MAX_PREFIXES];
    size_t n = 0;
    int has_root = 0;
    for (size_t i = 0; i < c->n_apps && n < CS_OPENAPI_MAX_PREFIXES; i++)
        if (routable(c->apps[i])) has_root |= !strcmp(pre[n++] = c->apps[i]->prefix, "/");
    cs_openapi_opts o = {.prefixes = pre, .n_prefixes = n, .root_proxy = !has_root, .auth = cs_keys_count(c->keys) > 0};
    char *doc = NULL;
    size_t len = 0;
    cs_err err = {{0}};
    if (cs_openapi_render(&o, &doc, &len, &err)) cp_respond_error(r, 500, "internal_error", err.msg);
    else cs_http_respond(r, 200, "application/json", doc, len, NULL, 0);
    free(doc);
    return 1;
}

void cp_proxy_request(cs_ctl *c, cs_http_req *r) {
    cp_fwd *f = cs_http_req_app(r);
    const char *path = cs_http_req_path(r) + (f ? f->path_skip : 0), *method = cs_http_req_method(r);
    const char *emsg;
    int es = cs_http_req_error(r, &emsg);
    if (!f) {
        cp_respond_error(r, 503, "unavailable", "out of memory");
        return;
    }
    if (es) {
        cp_respond_error(r, es, es == 413 ? "payload_too_large" : "bad_request", emsg);
        return;
    }
    const int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!strcmp(path, "/-/healthz")) {
        if (!get) get_only(r);
        else healthz(c, r);
        return;
    }
    if (proxy_openapi(c, r, path, get, f->authorized)) return;
    if (!f->authorized) {
        cp_respond_error(r, 401, "invalid_api_key", "missing or invalid API key (send 'Authorization: Bearer KEY')");
        return;
    }
    if (!get && (!strcmp(path, "/-/routes") || !strcmp(path, "/metrics"))) {
        get_only(r);
        return;
    }
    if (!strcmp(path, "/-/routes")) {
        json_t *o = json_object();
        for (size_t i = 0; i < c->n_apps; i++)
            if (routable(c->apps[i])) json_object_set_new(o, c->apps[i]->prefix, json_string(c->apps[i]->name));
        cp_respond_json(r, 200, o);
        return;
    }
    if (!strcmp(path, "/metrics")) {
        char *out = NULL;
        size_t len = 0;
        if (cp_render_metrics(c, &out, &len) == 0)
            cs_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", out, len, NULL, 0);
        else cp_respond_error(r, 500, "internal_error", "out of memory");
        free(out);
        return;
    }
    if (atomic_load(&c->draining)) {
        cp_respond_error(r, 503, "draining", "the server is shutting down");
        return;
    }
    const char *rel = NULL;
    cp_app *a = match_prefix(c, path, &rel);
    const int root_v1 = (!a || !strcmp(a->prefix, "/")) && !strncmp(path, "/v1/", 4);
    int has_root = 0;
    for (size_t i = 0; i < c->n_apps; i++) has_root |= routable(c->apps[i]) && !strcmp(c->apps[i]->prefix, "/");
    if (root_v1 && !has_root) {
        if (!strcmp(path, "/v1/models")) {
            if (!get) get_only(r);
            else models_list(c, r);
            return;
        }
        const char *model = NULL;
        json_t *body = NULL;
        if (!strncmp(path, "/v1/models/", 11)) {
            model = path + 11;
        } else {
            size_t bl = 0;
            const char *b = cs_http_req_body(r, &bl);
            body = json_loadb(b ? b : "", bl, 0, NULL);
            model = body ? json_string_value(json_object_get(body, "model")) : NULL;
        }
        a = model ? app_by_model(c, model) : NULL;
        if (!a && !model) {
            int n = 0;
            for (size_t i = 0; i < c->n_apps; i++)
                if (routable(c->apps[i])) n++, a = c->apps[i];
            if (n != 1) a = NULL;
        }
        if (!a) {
            char m[600];
            snprintf(m, sizeof m, "The model '%.256s' does not exist", model ? model : "");
            if (!model) snprintf(m, sizeof m, "several applications serve models: name one in the 'model' field "
                                              "(GET /v1/models lists them)");
            json_decref(body);
            openai_error(r, model ? 404 : 400, "model", model ? "model_not_found" : "model_required", m);
            return;
        }
        json_decref(body);
        rel = path;
    }
    if (!a) {
        char m[600];
        snprintf(m, sizeof m, "Path '%.512s' not found. Ping http://.../-/routes for available routes.", path);
        cp_respond_error(r, 404, "not_found", m);
        return;
    }
    if (!a->n_deps) {
        char m[CS_ERR_MAX + 200];
        snprintf(m, sizeof m, "application %s is not running: %s", a->name, a->error[0] ? a->error : "no deployments");
        cp_respond_error(r, 503, "unavailable", m);
        return;
    }
    snprintf(f->app_label, sizeof f->app_label, "%s", a->name);
    snprintf(f->route_label, sizeof f->route_label, "%s", route_label(rel[0] ? rel : "/"));
    f->url_path = strdup(rel[0] ? rel : "/");
    if (!f->url_path) {
        cp_respond_error(r, 503, "unavailable", "out of memory");
        return;
    }
    if (!strcmp(method, "POST")) {
        const int lim = cs_keys_try_acquire(c->keys, f->key_idx);
        if (lim) {
            char m[160];
            snprintf(m, sizeof m, "this API key already has %d requests in flight (its limit)", lim);
            cp_respond_error(r, 429, "rate_limit_exceeded", m);
            return;
        }
        f->key_counted = 1;
    }
    cs_http_req_ref(r);
    f->http = r;
    f->t0 = cp_now();
    c->n_fwd++;
    const int gen = !strcmp(method, "POST") && (!strcmp(f->url_path, "/text/simple-gen") ||
                                                !strcmp(f->url_path, "/v1/completions") ||
                                                !strcmp(f->url_path, "/v1/chat/completions"));
    cp_dep *pre = NULL;
    for (size_t i = 0; gen && a->tg.preprocess && i < a->n_deps; i++)
        if (!a->deps[i]->deleting && a->deps[i]->cfg.role == CS_DEP_PREPROCESSOR) pre = a->deps[i];
    if (pre) {
        f->stage = CP_ST_PRE;
        route_to(c, f, pre, 0);
    } else if (gen) {
        start_generation(c, a, f);
    } else {
        cp_dep *g = choose_generator(c, a, f); /* /v1/models: any generator answers */
        route_to(c, f, g ? g : a->deps[0], 0);
    }
}

/* Called on the HTTP thread (headers are readable only there). */
cp_fwd *cp_fwd_new(cs_ctl *c, cs_http_req *r) {
    cp_fwd *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->c = c;
    snprintf(f->method, sizeof f->method, "%s", cs_http_req_method(r));
    const char *rid = cs_http_req_header(r, "X-Request-Id");
    if (valid_request_id(rid)) {
        snprintf(f->request_id, sizeof f->request_id, "%s", rid);
    } else {
        uint64_t x[2];
        if (getrandom(x, sizeof x, 0) != sizeof x) x[0] = (uint64_t)rand(), x[1] = (uint64_t)time(NULL);
        snprintf(f->request_id, sizeof f->request_id, "%016llx%016llx", (unsigned long long)x[0],
                 (unsigned long long)x[1]);
    }
    const char *ct = cs_http_req_header(r, "Content-Type");
    if (ct) snprintf(f->ctype_in, sizeof f->ctype_in, "%s", ct);
    f->authorized = cs_keys_check(c->keys, cs_http_req_header(r, "Authorization"), &f->key_idx);
    pthread_mutex_lock(&c->mu);
    for (int k = 0; k < c->n_sess; k++) {
        const char *v = cs_http_req_header(r, c->sess_names[k]);
        if (v) f->sess_has[k] = 1, f->sess_hash[k] = hash_str(v);
    }
    pthread_mutex_unlock(&c->mu);
    cs_http_req_set_app(r, f, fwd_free);
    return f;
}

/* ------------------------------------------------------------ metrics */

void cp_series_add(cs_ctl *c, const char *app, const char *route, const char *method, int status, double ms,
                   double ttft_ms) {
    cp_series *s = NULL;
    for (size_t i = 0; i < c->n_series && !s; i++) {
        cp_series *x = &c->series[i];
        if (x->status == status && !strcmp(x->app, app) && !strcmp(x->route, route) && !strcmp(x->method, method))
            s = x;
    }
    if (!s) {
        if (c->n_series == CP_MAX_SERIES) return;
        s = &c->series[c->n_series++];
        snprintf(s->app, sizeof s->app, "%s", app);
        snprintf(s->route, sizeof s->route, "%s", route);
        snprintf(s->method, sizeof s->method, "%s", method);
        s->status = status;
    }
    s->n++;
    lat_add(s->lat_counts, &s->lat_sum, ms);
    if (ttft_ms >= 0) lat_add(s->ttft_counts, &s->ttft_sum, ttft_ms);
}

typedef struct mbuf {
    char *p;
    size_t n, cap;
    int oom;
} mbuf;

static void mb_printf(mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_printf(mbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t nc = b->cap ? b->cap * 2 : 16384;
        while (nc < b->n + (size_t)k + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

/* A label value with \, " and newlines escaped (into a static-sized buffer). */
static const char *esc(const char *s, char *out, size_t cap) {
    size_t j = 0;
    for (; *s && j + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') out[j++] = '\\', out[j++] = *s;
        else if (*s == '\n') out[j++] = '\\', out[j++] = 'n';
        else out[j++] = *s;
    }
    out[j] = 0;
    return out;
}

static void hist(mbuf *b, const char *name, const char *labels, const uint64_t *counts, double sum) {
    uint64_t cum = 0;
    for (size_t i = 0; i < CP_LAT_BUCKETS; i++) {
        cum += counts[i];
        mb_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, cp_lat_bounds[i], (unsigned long long)cum);
    }
    cum += counts[CP_LAT_BUCKETS];
    mb_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.3f\n%s_count{%s} %llu\n", name, labels,
              (unsigned long long)cum, name, labels, sum, name, labels, (unsigned long long)cum);
}

int cp_render_metrics(cs_ctl *c, char **out, size_t *len) {
    mbuf b = {0};
    char *base = NULL;
    size_t blen = 0;
    int ongoing = 0, queued = 0, running = 0;
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            queued += d->n_queued;
            for (size_t k = 0; k < d->n_reps; k++) ongoing += d->reps[k]->ongoing, running += d->reps[k]->st_running;
        }
    cs_metrics_gauges g = {.ready = !atomic_load(&c->draining), .queued = queued, .running = running};
    if (cs_metrics_render(c->metrics, &g, &base, &blen) == 0) mb_printf(&b, "%s", base);
    free(base);
    char e1[300], e2[300], e3[300], lab[1200];
    /* vLLM's gauges by model id (summed over the applications that serve it: one series per label):
     * what the replicas last reported, the proxy's own queue counted as waiting; the KV cache's use
     * is the tokens all its replicas hold over what their slots can hold */
    static const char *const vnames[3] = {"vllm:num_requests_running", "vllm:num_requests_waiting",
                                          "vllm:kv_cache_usage_perc"};
    static const char *const vhelp[3] = {"Number of requests in model execution batches.",
                                         "Number of requests waiting to be processed.",
                                         "KV-cache usage. 1 means 100 percent usage."};
    for (int w = 0; w < 3; w++) {
        const char *nm = vnames[w];
        mb_printf(&b, "# HELP %s %s\n# TYPE %s gauge\n", nm, vhelp[w], nm);
        for (size_t i = 0; i < c->n_apps; i++) {
            size_t first = 0;
            while (first < i && !(routable(c->apps[first]) && !strcmp(c->apps[first]->model_id, c->apps[i]->model_id)))
                first++;
            if (!routable(c->apps[i]) || first < i) continue; /* counted with the first app of this model */
            double v = 0, kv_held = 0, kv_cap = 0;
            for (size_t x = i; x < c->n_apps; x++) {
                const cp_app *a = c->apps[x];
                if (!routable(a) || strcmp(a->model_id, c->apps[i]->model_id)) continue;
                for (size_t j = 0; j < a->n_deps; j++) {
                    if (a->deps[j]->cfg.role != CS_DEP_GENERATOR) continue;
                    if (w == 1) v += a->deps[j]->n_queued;
                    for (size_t k = 0; k < a->deps[j]->n_reps; k++) {
                        const cp_replica *rp = a->deps[j]->reps[k];
                        v += w == 0 ? rp->st_running : w == 1 ? rp->st_queued : 0;
                        kv_held += rp->st_kv_tokens, kv_cap += rp->st_kv_capacity;
                    }
                }
            }
            if (w == 2) v = kv_cap > 0 ? kv_held / kv_cap : 0;
            mb_printf(&b, "%s{model_name=\"%s\"} %.6g\n", nm, esc(c->apps[i]->model_id, e1, sizeof e1), v);
        }
    }
    mb_printf(&b, "# HELP ray_serve_num_http_requests_total HTTP requests processed by the proxy.\n"
                  "# TYPE ray_serve_num_http_requests_total counter\n");
    for (size_t i = 0; i < c->n_series; i++) {
        cp_series *s = &c->series[i];
        mb_printf(&b, "ray_serve_num_http_requests_total{route=\"%s\",method=\"%s\",application=\"%s\",status_code=\"%d\"} %llu\n",
                  esc(s->route, e1, sizeof e1), esc(s->method, e2, sizeof e2), esc(s->app, e3, sizeof e3), s->status,
                  (unsigned long long)s->n);
    }
    mb_printf(&b, "# HELP ray_serve_num_http_error_requests_total HTTP requests answered with an error.\n"
                  "# TYPE ray_serve_num_http_error_requests_total counter\n");
    for (size_t i = 0; i < c->n_series; i++) {
        cp_series *s = &c->series[i];
        if (s->status < 400) continue;
        mb_printf(&b, "ray_serve_num_http_error_requests_total{route=\"%s\",error_code=\"%d\",method=\"%s\",application=\"%s\"} %llu\n",
                  esc(s->route, e1, sizeof e1), s->status, esc(s->method, e2, sizeof e2), esc(s->app, e3, sizeof e3),
                  (unsigned long long)s->n);
    }
    mb_printf(&b, "# HELP ray_serve_http_request_latency_ms End-to-end latency of HTTP requests (ms).\n"
                  "# TYPE ray_serve_http_request_latency_ms histogram\n");
    for (size_t i = 0; i < c->n_series; i++) {
        cp_series *s = &c->series[i];
        snprintf(lab, sizeof lab, "route=\"%s\",method=\"%s\",application=\"%s\",status_code=\"%d\"",
                 esc(s->route, e1, sizeof e1), esc(s->method, e2, sizeof e2), esc(s->app, e3, sizeof e3), s->status);
        hist(&b, "ray_serve_http_request_latency_ms", lab, s->lat_counts, s->lat_sum);
    }
    /* streamed answers only: the proxy sees the first token when the replica sends it */
    mb_printf(&b, "# HELP cserve_http_time_to_first_token_ms Time from a streamed request's arrival to its first "
                  "byte to the client (ms).\n# TYPE cserve_http_time_to_first_token_ms histogram\n");
    for (size_t i = 0; i < c->n_series; i++) {
        cp_series *s = &c->series[i];
        uint64_t n = 0;
        for (size_t k = 0; k <= CP_LAT_BUCKETS; k++) n += s->ttft_counts[k];
        if (!n) continue;
        snprintf(lab, sizeof lab, "route=\"%s\",method=\"%s\",application=\"%s\",status_code=\"%d\"",
                 esc(s->route, e1, sizeof e1), esc(s->method, e2, sizeof e2), esc(s->app, e3, sizeof e3), s->status);
        hist(&b, "cserve_http_time_to_first_token_ms", lab, s->ttft_counts, s->ttft_sum);
    }
    mb_printf(&b, "# HELP ray_serve_num_ongoing_http_requests Requests the proxy is handling.\n"
                  "# TYPE ray_serve_num_ongoing_http_requests gauge\nray_serve_num_ongoing_http_requests %d\n",
              c->n_fwd);

    static const char *const per_dep[][3] = {
        {"ray_serve_deployment_replica_starts_total", "counter", "Replica starts."},
        {"ray_serve_num_router_requests_total", "counter", "Requests the router sent to replicas."},
        {"ray_serve_deployment_queued_queries", "gauge", "Requests waiting for a replica."},
        {"ray_serve_num_ongoing_requests_at_replicas", "gauge", "Requests being handled by replicas."},
    };
    for (size_t m = 0; m < sizeof per_dep / sizeof *per_dep; m++) {
        mb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per_dep[m][0], per_dep[m][2], per_dep[m][0], per_dep[m][1]);
        for (size_t i = 0; i < c->n_apps; i++)
            for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
                cp_dep *d = c->apps[i]->deps[j];
                int on = 0;
                for (size_t k = 0; k < d->n_reps; k++) on += d->reps[k]->ongoing;
                double v = m == 0 ? (double)d->starts : m == 1 ? (double)d->router_requests : m == 2 ? d->n_queued : on;
                mb_printf(&b, "%s{deployment=\"%s\",application=\"%s\"} %.0f\n", per_dep[m][0],
                          esc(d->name, e1, sizeof e1), esc(d->app->name, e2, sizeof e2), v);
            }
    }
    static const char *const per_rep[][3] = {
        {"ray_serve_deployment_request_counter_total", "counter", "Requests processed by the replica."},
        {"ray_serve_deployment_error_counter_total", "counter", "Requests that failed in the replica."},
        {"ray_serve_replica_processing_queries", "gauge", "Requests the replica is processing."},
        {"ray_serve_deployment_replica_healthy", "gauge", "1 when the replica is healthy."},
    };
    for (size_t m = 0; m < sizeof per_rep / sizeof *per_rep + 1; m++) {
        const int h = m == sizeof per_rep / sizeof *per_rep;
        if (h) mb_printf(&b, "# HELP ray_serve_deployment_processing_latency_ms Latency of requests in the replica "
                             "(ms).\n# TYPE ray_serve_deployment_processing_latency_ms histogram\n");
        else mb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per_rep[m][0], per_rep[m][2], per_rep[m][0], per_rep[m][1]);
        for (size_t i = 0; i < c->n_apps; i++)
            for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
                cp_dep *d = c->apps[i]->deps[j];
                for (size_t k = 0; k < d->n_reps; k++) {
                    cp_replica *r = d->reps[k];
                    snprintf(lab, sizeof lab, "deployment=\"%s\",replica=\"%s\",application=\"%s\"",
                             esc(d->name, e1, sizeof e1), r->id, esc(d->app->name, e2, sizeof e2));
                    if (h) {
                        hist(&b, "ray_serve_deployment_processing_latency_ms", lab, r->lat_counts, r->lat_sum);
                        continue;
                    }
                    double v = m == 0 ? (double)r->n_requests : m == 1 ? (double)r->n_errors : m == 2 ? r->ongoing
                               : (r->state == RS_RUNNING && !r->exited && !r->unhealthy);
                    mb_printf(&b, "%s{%s} %.0f\n", per_rep[m][0], lab, v);
                }
            }
    }
    /* cserve's per-deployment series: primary vs shadow (mirror) traffic, fallbacks, tokens */
    mb_printf(&b, "# HELP cserve_deployment_requests_total Requests answered by a deployment, by role (primary or "
                  "shadow) and outcome.\n# TYPE cserve_deployment_requests_total counter\n");
    static const char *const roles[2] = {"primary", "shadow"}, *const outs[2] = {"ok", "error"};
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            if (d->cfg.role != CS_DEP_GENERATOR) continue;
            for (int ro = 0; ro < 2; ro++)
                for (int oc = 0; oc < 2; oc++)
                    mb_printf(&b, "cserve_deployment_requests_total{application=\"%s\",deployment=\"%s\",role=\"%s\","
                                  "outcome=\"%s\"} %llu\n", esc(d->app->name, e1, sizeof e1), esc(d->name, e2, sizeof e2),
                              roles[ro], outs[oc], (unsigned long long)d->role_n[ro][oc]);
            mb_printf(&b, "cserve_deployment_requests_total{application=\"%s\",deployment=\"%s\",role=\"shadow\","
                          "outcome=\"dropped\"} %llu\n", e1, e2, (unsigned long long)d->shadow_dropped);
        }
    mb_printf(&b, "# HELP cserve_deployment_latency_ms Time a deployment's replica took to answer (ms), by role.\n"
                  "# TYPE cserve_deployment_latency_ms histogram\n");
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            if (d->cfg.role != CS_DEP_GENERATOR) continue;
            for (int ro = 0; ro < 2; ro++) {
                snprintf(lab, sizeof lab, "application=\"%s\",deployment=\"%s\",role=\"%s\"",
                         esc(d->app->name, e1, sizeof e1), esc(d->name, e2, sizeof e2), roles[ro]);
                hist(&b, "cserve_deployment_latency_ms", lab, d->role_lat[ro], d->role_lat_sum[ro]);
            }
        }
    mb_printf(&b, "# HELP cserve_deployment_generated_tokens_total Tokens generated by a deployment's replicas.\n"
                  "# TYPE cserve_deployment_generated_tokens_total counter\n");
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            if (d->cfg.role != CS_DEP_GENERATOR) continue;
            double t = d->tokens_done;
            for (size_t k = 0; k < d->n_reps; k++) t += d->reps[k]->st_tokens;
            mb_printf(&b, "cserve_deployment_generated_tokens_total{application=\"%s\",deployment=\"%s\"} %.0f\n",
                      esc(d->app->name, e1, sizeof e1), esc(d->name, e2, sizeof e2), t);
        }
    mb_printf(&b, "# HELP cserve_deployment_fallbacks_total Requests sent on to the fallback deployment.\n"
                  "# TYPE cserve_deployment_fallbacks_total counter\n");
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            if (!d->cfg.fallback[0]) continue;
            mb_printf(&b, "cserve_deployment_fallbacks_total{application=\"%s\",deployment=\"%s\",to=\"%s\"} %llu\n",
                      esc(d->app->name, e1, sizeof e1), esc(d->name, e2, sizeof e2), esc(d->cfg.fallback, e3, sizeof e3),
                      (unsigned long long)d->fallbacks);
        }
    if (b.oom) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.n;
    return 0;
}
