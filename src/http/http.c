/* cs_http: see http.h. libmicrohttpd does the HTTP; this file adds the
 * asynchronous answer protocol (suspend until the application answers, resume
 * from any thread), streaming buffers, timeouts and disconnect detection.
 *
 * Locking: srv->mu guards the list of live requests; r->mu guards a request's
 * response state. Order: srv->mu before r->mu; libmicrohttpd's own locks are
 * only taken inside MHD_suspend/resume_connection, after r->mu. Callbacks into
 * the application are made with no lock held.
 *
 * A connection is only resumed while it is suspended (r->suspended, under
 * r->mu), and libmicrohttpd never closes a suspended connection, so r->conn is
 * valid whenever it is resumed. The server never stops with a suspended
 * connection (libmicrohttpd would abort): cs_http_stop resumes them all and
 * nothing suspends once stopping is set.
 *
 * Connections: srv->cmu guards the connection table (srv->ce). An entry is
 * taken when libmicrohttpd reports a new connection and given back when it
 * reports the close, which it does before closing the socket; the watchdog
 * calls shutdown() only under cmu on an entry in use, so it never touches a
 * descriptor that was closed and reused. cmu is a leaf lock. */
#include "http/http.h"

#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { RS_NONE, RS_PENDING, RS_STREAM, RS_QUEUED };

/* What a connection waits for (see the deadlines in http.h). */
enum { CN_HEAD, CN_BODY, CN_BUSY, CN_IDLE };

typedef struct conn_ent {
    int fd;
    int used, cut, state;
    double t0;     /* CN_HEAD: accepted, or request line of a later request; CN_IDLE: last request over */
    double t_body; /* CN_BODY: headers complete */
    size_t body;   /* CN_BODY: body bytes received */
    int next_free;
} conn_ent;

struct cs_http_req {
    cs_http *srv;
    _Atomic int refs;
    pthread_mutex_t mu;
    struct MHD_Connection *conn; /* NULL once the request is over */
    int fd;
    char *method, *path;
    char *body;
    size_t body_len, body_cap;
    int err_status;
    const char *err_msg;
    int close;          /* answer with Connection: close (framing errors, 413) */
    size_t discarded;   /* body bytes dropped after a 413 */
    conn_ent *ce;       /* the connection's entry; NULL when the table was full */
    const char *cors_allow; /* Access-Control-Allow-Origin for this request; NULL: none */
    int preflight;          /* a CORS preflight from an allowed origin */
    double t_start;
    int dispatched; /* server thread only */
    /* under mu */
    int state, status, is_stream;
    struct MHD_Response *resp; /* built, not yet queued */
    char *sbuf;
    size_t slen, soff, scap;
    int s_end, s_err;
    int suspended;
    unsigned susp_seq;
    int over, timeout_fired, gone_fired, kill;
    void *app;
    void (*app_free)(void *);
    cs_http_req *prev, *next; /* live list, under srv->mu */
};

struct cs_http {
    struct MHD_Daemon *d;
    cs_http_handlers h;
    double req_timeout, ka_timeout;
    int port;
    pthread_mutex_t mu;
    cs_http_req *live;
    _Atomic int n_live, n_suspended, stopping, wd_stop;
    pthread_t wd;
    int wd_started;
    int cors_on, cors_any;  /* CORS headers at all; any origin ("*") */
    int n_cors;
    char cors[CS_HTTP_MAX_CORS_ORIGINS][CS_HTTP_MAX_ORIGIN + 1];
    /* connections */
    double hdr_timeout, min_rate;
    int max_conn;
    _Atomic int lfd;  /* the listening socket while it is open, else -1 */
    pthread_mutex_t cmu;
    conn_ent *ce;     /* max_conn entries */
    conn_ent **cand;  /* watchdog scratch: shedding candidates */
    int ce_free;      /* free list head, -1: none */
    int n_conns;      /* open connections (tracked or not), under cmu */
    _Atomic unsigned long n_cut_head, n_cut_body, n_cut_idle, n_shed;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static unsigned secs_ceil(double s) {
    double c = ceil(s);
    if (c < 1) c = 1;
    if (c > 86400.0 * 365) c = 86400.0 * 365;
    return (unsigned)c;
}

/* ------------------------------------------------------------ requests */

void cs_http_req_ref(cs_http_req *r) { atomic_fetch_add(&r->refs, 1); }

void cs_http_req_unref(cs_http_req *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    if (r->app_free) r->app_free(r->app);
    if (r->resp) MHD_destroy_response(r->resp);
    pthread_mutex_destroy(&r->mu);
    free(r->method);
    free(r->path);
    free(r->body);
    free(r->sbuf);
    free(r);
}

void cs_http_req_set_app(cs_http_req *r, void *app, void (*app_free)(void *)) {
    r->app = app;
    r->app_free = app_free;
}
void *cs_http_req_app(const cs_http_req *r) { return r->app; }
const char *cs_http_req_method(const cs_http_req *r) { return r->method; }
const char *cs_http_req_path(const cs_http_req *r) { return r->path; }

const char *cs_http_req_body(const cs_http_req *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body ? r->body : "";
}

int cs_http_req_error(const cs_http_req *r, const char **msg) {
    if (msg) *msg = r->err_msg;
    return r->err_status;
}

const char *cs_http_req_header(const cs_http_req *r, const char *name) {
    if (!r->conn) return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *cs_http_req_query(const cs_http_req *r, const char *name) {
    if (!r->conn) return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Resumes r's connection if it is suspended. Caller holds r->mu. */
static void wake_locked(cs_http_req *r) {
    if (!r->suspended) return;
    r->suspended = 0;
    atomic_fetch_sub(&r->srv->n_suspended, 1);
    MHD_resume_connection(r->conn);
}

static struct MHD_Response *make_response(int status, const char *ctype, const char *body, size_t len,
                                          const cs_http_header *extra, size_t n_extra) {
    (void)status;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return NULL;
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; i < n_extra && i < CS_HTTP_MAX_EXTRA_HEADERS; i++)
        if (extra[i].name && extra[i].value) MHD_add_response_header(resp, extra[i].name, extra[i].value);
    return resp;
}

static struct MHD_Response *default_error(int status) {
    const char *body;
    switch (status) {
    case 408: body = "{\"error\":{\"type\":\"request_timeout\",\"message\":\"request timed out\"}}"; break;
    case 413: body = "{\"error\":{\"type\":\"payload_too_large\",\"message\":\"request body too large\"}}"; break;
    case 414: body = "{\"error\":{\"type\":\"uri_too_long\",\"message\":\"request path too long\"}}"; break;
    case 431: body = "{\"error\":{\"type\":\"header_too_large\",\"message\":\"request headers too large\"}}"; break;
    default: body = "{\"error\":{\"type\":\"unavailable\",\"message\":\"server shutting down\"}}"; break;
    }
    static const cs_http_header close_hdr[] = {{"Connection", "close"}};
    /* OpenAI's clients retry a 408 twice unless told not to (see serve/api.c) */
    static const cs_http_header no_retry[] = {{"x-should-retry", "false"}};
    if (status == 408) return make_response(status, "application/json", body, strlen(body), no_retry, 1);
    return make_response(status, "application/json", body, strlen(body), close_hdr, status == 503 ? 1 : 0);
}

int cs_http_respond(cs_http_req *r, int status, const char *content_type, const char *body, size_t len,
                    const cs_http_header *extra, size_t n_extra) {
    struct MHD_Response *resp = make_response(status, content_type, body, len, extra, n_extra);
    if (!resp) return -1;
    pthread_mutex_lock(&r->mu);
    if (r->over || r->state != RS_NONE) {
        pthread_mutex_unlock(&r->mu);
        MHD_destroy_response(resp);
        return -1;
    }
    r->resp = resp;
    r->status = status;
    r->state = RS_PENDING;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* libmicrohttpd pulls stream data from here (server thread). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    cs_http_req *r = cls;
    ssize_t ret;
    pthread_mutex_lock(&r->mu);
    if (r->kill || r->s_err || !r->conn) {
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (r->slen > r->soff) {
        size_t n = r->slen - r->soff;
        if (n > max) n = max;
        memcpy(buf, r->sbuf + r->soff, n);
        r->soff += n;
        if (r->soff == r->slen) r->soff = r->slen = 0;
        ret = (ssize_t)n;
    } else if (r->s_end) {
        ret = MHD_CONTENT_READER_END_OF_STREAM;
    } else if (atomic_load(&r->srv->stopping)) {
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
    } else { /* nothing to send yet: sleep until the next write */
        r->suspended = 1;
        r->susp_seq++;
        atomic_fetch_add(&r->srv->n_suspended, 1);
        MHD_suspend_connection(r->conn);
        ret = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return ret;
}

static void stream_reader_free(void *cls) { cs_http_req_unref(cls); }

int cs_http_stream_begin(cs_http_req *r, int status, const char *content_type, const cs_http_header *extra,
                         size_t n_extra) {
    cs_http_req_ref(r); /* the response's reference, dropped by stream_reader_free */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 << 10, stream_reader, r, stream_reader_free);
    if (!resp) {
        cs_http_req_unref(r);
        return -1;
    }
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; i < n_extra && i < CS_HTTP_MAX_EXTRA_HEADERS; i++)
        if (extra[i].name && extra[i].value) MHD_add_response_header(resp, extra[i].name, extra[i].value);
    pthread_mutex_lock(&r->mu);
    if (r->over || r->state != RS_NONE) {
        pthread_mutex_unlock(&r->mu);
        MHD_destroy_response(resp);
        return -1;
    }
    r->resp = resp;
    r->status = status;
    r->state = RS_STREAM;
    r->is_stream = 1;
    wake_locked(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int cs_http_stream_write(cs_http_req *r, const char *data, size_t len) {
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    if (r->over || !r->is_stream || r->s_end || r->s_err || r->kill) {
        rc = -1;
    } else if (r->slen + len > CS_HTTP_STREAM_MAX_BUFFER) { /* the client does not read: give up on it */
        r->s_err = 1;
        wake_locked(r);
        rc = -1;
    } else {
        if (r->soff && r->slen + len > r->scap) { /* reclaim what was sent */
            memmove(r->sbuf, r->sbuf + r->soff, r->slen - r->soff);
            r->slen -= r->soff;
            r->soff = 0;
        }
        if (r->slen + len > r->scap) {
            size_t cap = r->scap ? r->scap : 4096;
            while (cap < r->slen + len) cap *= 2;
            char *nb = realloc(r->sbuf, cap);
            if (!nb) {
                r->s_err = 1;
                wake_locked(r);
                pthread_mutex_unlock(&r->mu);
                return -1;
            }
            r->sbuf = nb;
            r->scap = cap;
        }
        memcpy(r->sbuf + r->slen, data, len);
        r->slen += len;
        wake_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int cs_http_stream_end(cs_http_req *r, int error) {
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    if (r->over || !r->is_stream) {
        rc = -1;
    } else {
        if (error) r->s_err = 1;
        else r->s_end = 1;
        wake_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* ---------------------------------------------------- libmicrohttpd callbacks */

/* Queues the response if there is one, else suspends until there is.
 * Server thread, from the access handler. */
static enum MHD_Result settle(cs_http_req *r) {
    cs_http *s = r->srv;
    pthread_mutex_lock(&r->mu);
    if (r->kill) {
        pthread_mutex_unlock(&r->mu);
        return MHD_NO; /* closes the connection */
    }
    if (!r->resp && r->state == RS_NONE && atomic_load(&s->stopping)) {
        r->resp = default_error(503);
        r->status = 503;
        r->state = RS_PENDING;
    }
    if (r->resp) {
        struct MHD_Response *resp = r->resp;
        struct MHD_Connection *conn = r->conn;
        const int status = r->status;
        r->resp = NULL;
        /* every response passes here (the application's, default errors, streams) */
        if (s->cors_on) MHD_add_response_header(resp, "Vary", "Origin");
        if (r->cors_allow) MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_allow);
        if (r->close && !MHD_get_response_header(resp, "Connection")) MHD_add_response_header(resp, "Connection", "close");
        r->state = RS_QUEUED;
        pthread_mutex_unlock(&r->mu);
        MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, secs_ceil(s->ka_timeout));
        enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    r->suspended = 1;
    r->susp_seq++;
    atomic_fetch_add(&s->n_suspended, 1);
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return MHD_YES;
}

/* ------------------------------------------------------------ connections */

static conn_ent *conn_of(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void conn_state(cs_http *s, conn_ent *e, int state) {
    if (!e) return;
    pthread_mutex_lock(&s->cmu);
    e->state = state;
    if (state == CN_IDLE) e->t0 = now_s();
    if (state == CN_BODY) {
        e->t_body = now_s();
        e->body = 0;
    }
    pthread_mutex_unlock(&s->cmu);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **ctx, enum MHD_ConnectionNotificationCode code) {
    cs_http *s = cls;
    pthread_mutex_lock(&s->cmu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        s->n_conns++;
        *ctx = NULL;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci && s->ce_free >= 0) {
            conn_ent *e = &s->ce[s->ce_free];
            s->ce_free = e->next_free;
            *e = (conn_ent){.fd = ci->connect_fd, .used = 1, .state = CN_HEAD, .t0 = now_s(), .next_free = -1};
            *ctx = e;
        }
    } else {
        s->n_conns--;
        conn_ent *e = *ctx;
        if (e) {
            e->used = 0;
            e->next_free = s->ce_free;
            s->ce_free = (int)(e - s->ce);
        }
        *ctx = NULL;
    }
    pthread_mutex_unlock(&s->cmu);
}

/* The request line of a request is in (its headers are not). Only a reused
 * connection's header deadline starts here; a new one's started at accept. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
    (void)uri;
    cs_http *s = cls;
    conn_ent *e = conn_of(conn);
    if (e) {
        pthread_mutex_lock(&s->cmu);
        if (e->state == CN_IDLE) {
            e->state = CN_HEAD;
            e->t0 = now_s();
        }
        pthread_mutex_unlock(&s->cmu);
    }
    return NULL; /* the request's first *con_cls: on_access creates it */
}

static void dispatch(cs_http_req *r) {
    cs_http *s = r->srv;
    r->dispatched = 1;
    conn_state(s, r->ce, CN_BUSY);
    s->h.request(s->h.ud, r);
    if (r->err_status) { /* the application must answer these at once; make sure */
        pthread_mutex_lock(&r->mu);
        if (r->state == RS_NONE && !r->resp) {
            r->resp = default_error(r->err_status);
            r->status = r->err_status;
            r->state = RS_PENDING;
        }
        pthread_mutex_unlock(&r->mu);
    }
}

static enum MHD_Result sum_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    size_t *sum = cls;
    *sum += strlen(key) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

/* The framing-relevant headers of a request, every instance (libmicrohttpd keeps
 * them all; its lookup returns the first). */
typedef struct framing {
    int n_cl, n_te, n_host, bad_name, bad_value;
    const char *te;
} framing;

static int is_tchar(unsigned char c) { /* RFC 9110 token */
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    framing *f = cls;
    if (!*key) f->bad_name = 1;
    for (const char *c = key; *c; c++)
        if (!is_tchar((unsigned char)*c)) f->bad_name = 1; /* "Content-Length : 5" arrives as "Content-Length " */
    if (value && strpbrk(value, "\r\n")) f->bad_value = 1;
    /* libmicrohttpd 0.9.75 appends an obs-fold continuation line to the previous
     * field's name ("Content-Length: 5\r\n x" arrives as "Content-Lengthx"): a
     * framing field must not vanish that way */
    if ((!strncasecmp(key, "Content-Length", 14) && key[14]) || (!strncasecmp(key, "Transfer-Encoding", 17) && key[17]))
        f->bad_name = 1;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) f->n_cl++;
    if (!strcasecmp(key, MHD_HTTP_HEADER_HOST)) f->n_host++;
    if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        f->n_te++;
        f->te = value ? value : "";
    }
    return MHD_YES;
}

/* 0 when the transfer codings are exactly "chunked", 501 when one is unknown
 * (we implement no other), 400 otherwise (chunked twice, or not last). */
static int te_check(const char *te) {
    int n = 0, n_chunked = 0, unknown = 0;
    while (*te) {
        size_t k = strcspn(te, ",");
        const char *b = te, *e = te + k;
        while (b < e && (*b == ' ' || *b == '\t')) b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e > b) {
            n++;
            if (e - b == 7 && !strncasecmp(b, "chunked", 7)) n_chunked++;
            else unknown = 1;
        }
        te += k + (te[k] == ',');
    }
    if (unknown) return 501;
    return n == 1 && n_chunked == 1 ? 0 : 400;
}

/* RFC 9112 framing rules (see http.h); sets the error of r. */
static void framing_check(cs_http_req *r, struct MHD_Connection *conn, const char *version) {
    framing f = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_header, &f);
    const int v11 = !strcasecmp(version, MHD_HTTP_VERSION_1_1);
    const char *why = NULL;
    int st = 400;
    if (f.bad_name) why = "malformed header field name (whitespace or a character outside a token)";
    else if (f.bad_value) why = "a header field value contains CR or LF";
    else if (f.n_host > 1) why = "more than one Host header";
    else if (v11 && !f.n_host) why = "an HTTP/1.1 request needs a Host header";
    else if (f.n_cl > 1) why = "more than one Content-Length header";
    else if (f.n_cl && f.n_te) why = "both Content-Length and Transfer-Encoding";
    else if (f.n_te && !v11) why = "Transfer-Encoding in an HTTP/1.0 request";
    else if (f.n_te > 1) why = "more than one Transfer-Encoding header";
    else if (f.n_te && (st = te_check(f.te)) != 0)
        why = st == 501 ? "unsupported transfer coding (only chunked is implemented)"
                        : "Transfer-Encoding must be exactly chunked";
    if (!why) return;
    r->err_status = st;
    r->err_msg = why;
    r->close = 1;
}

static cs_http_req *req_new(cs_http *s, struct MHD_Connection *conn, const char *url, const char *method,
                            const char *version) {
    cs_http_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    size_t ul = strlen(url);
    r->srv = s;
    atomic_init(&r->refs, 1);
    pthread_mutex_init(&r->mu, NULL);
    r->conn = conn;
    r->method = strdup(method);
    r->path = strndup(url, ul > CS_HTTP_MAX_PATH ? CS_HTTP_MAX_PATH : ul);
    r->t_start = now_s();
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    if (!r->method || !r->path) {
        cs_http_req_unref(r);
        return NULL;
    }
    if (ul > CS_HTTP_MAX_PATH) {
        r->err_status = 414;
        r->err_msg = "request path longer than CS_HTTP_MAX_PATH (4096 bytes)";
    }
    size_t hdr = 0;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, sum_header, &hdr);
    if (hdr > CS_HTTP_MAX_HEADER_BYTES) {
        r->err_status = 431;
        r->err_msg = "request headers larger than 16384 bytes";
    }
    const char *origin = s->cors_on ? MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin") : NULL;
    if (origin) {
        if (s->cors_any) r->cors_allow = "*";
        for (int i = 0; i < s->n_cors && !r->cors_allow; i++)
            if (!strcasecmp(origin, s->cors[i])) r->cors_allow = s->cors[i];
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > CS_HTTP_MAX_BODY) {
        r->err_status = 413;
        r->err_msg = "request body larger than 1048576 bytes";
    }
    framing_check(r, conn, version ? version : ""); /* framing errors win: they close */
    if (r->err_status) r->close = 1; /* the body, if any, is not read */
    r->ce = conn_of(conn);
    conn_state(s, r->ce, CN_BODY);
    pthread_mutex_lock(&s->mu);
    r->next = s->live;
    if (s->live) s->live->prev = r;
    s->live = r;
    atomic_fetch_add(&s->n_live, 1);
    pthread_mutex_unlock(&s->mu);
    return r;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    cs_http *s = cls;
    cs_http_req *r = *con_cls;
    if (!r) { /* headers are in */
        r = req_new(s, conn, url, method, version);
        if (!r) return MHD_NO;
        *con_cls = r;
        MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, secs_ceil(s->req_timeout));
        if (r->err_status) {
            dispatch(r);
            return settle(r);
        }
        r->preflight = r->cors_allow && !strcmp(method, "OPTIONS") &&
                       MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method");
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->ce) {
            pthread_mutex_lock(&s->cmu);
            r->ce->body += n;
            pthread_mutex_unlock(&s->cmu);
        }
        if (r->dispatched) return MHD_YES;
        if (r->discarded) { /* over the limit: drop the rest, answer at its end (a response can only be queued then) */
            r->discarded += n;
            return r->discarded > CS_HTTP_MAX_DISCARD ? MHD_NO : MHD_YES;
        }
        if (r->body_len + n > CS_HTTP_MAX_BODY) {
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            r->err_status = 413;
            r->err_msg = "request body larger than 1048576 bytes";
            r->close = 1;
            r->discarded = n;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 1024;
            while (cap < r->body_len + n + 1) cap *= 2;
            char *nb = realloc(r->body, cap);
            if (!nb) return MHD_NO;
            r->body = nb;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    if (!r->dispatched && r->preflight) { /* answered here, once the request is read (see http.h) */
        r->dispatched = 1;
        static const cs_http_header pre[] = {{"Access-Control-Allow-Methods", CS_HTTP_CORS_METHODS},
                                             {"Access-Control-Allow-Headers", CS_HTTP_CORS_HEADERS},
                                             {"Access-Control-Max-Age", CS_HTTP_CORS_MAX_AGE}};
        if (cs_http_respond(r, 204, NULL, "", 0, pre, sizeof pre / sizeof *pre)) return MHD_NO;
    }
    if (!r->dispatched) dispatch(r);
    return settle(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    cs_http *s = cls;
    conn_state(s, conn_of(conn), CN_IDLE);
    cs_http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->over = 1;
    r->conn = NULL;
    const int status = r->state == RS_QUEUED ? r->status : 0;
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    const int ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    const int fire_gone = !ok && !r->gone_fired;
    r->gone_fired = 1;
    pthread_mutex_unlock(&r->mu);
    if (resp) MHD_destroy_response(resp);
    if (fire_gone && s->h.abort) s->h.abort(s->h.ud, r, CS_HTTP_ABORT_GONE);
    if (s->h.done) s->h.done(s->h.ud, r, status, now_s() - r->t_start, ok);
    pthread_mutex_lock(&s->mu);
    if (r->prev) r->prev->next = r->next;
    else s->live = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    atomic_fetch_sub(&s->n_live, 1);
    pthread_mutex_unlock(&s->mu);
    cs_http_req_unref(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    cs_http *s = cls;
    if (!s->h.log) return;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    s->h.log(s->h.ud, buf);
}

/* ------------------------------------------------------------ watchdog */

typedef struct wd_item {
    cs_http_req *r;
    unsigned seq;
    int timed_out;
} wd_item;

/* Collects suspended requests (with a reference each) and their sockets. */
static size_t wd_collect(cs_http *s, wd_item **items, struct pollfd **pfds, size_t *cap) {
    size_t n = 0;
    const double now = now_s();
    pthread_mutex_lock(&s->mu);
    for (cs_http_req *r = s->live; r; r = r->next) {
        if (n == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            wd_item *ni = realloc(*items, nc * sizeof *ni);
            if (ni) *items = ni;
            struct pollfd *np = realloc(*pfds, nc * sizeof *np);
            if (np) *pfds = np;
            if (!ni || !np) break;
            *cap = nc;
        }
        pthread_mutex_lock(&r->mu);
        if (r->suspended && !r->over) {
            cs_http_req_ref(r);
            (*items)[n] = (wd_item){r, r->susp_seq,
                                    r->state == RS_NONE && !r->timeout_fired && now - r->t_start >= s->req_timeout};
            (*pfds)[n] = (struct pollfd){.fd = r->fd, .events = POLLRDHUP};
            n++;
        }
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void wd_timeout(cs_http *s, cs_http_req *r) {
    pthread_mutex_lock(&r->mu);
    int fire = !r->timeout_fired && r->state == RS_NONE && !r->over;
    r->timeout_fired = 1;
    pthread_mutex_unlock(&r->mu);
    if (!fire) return;
    if (s->h.abort) s->h.abort(s->h.ud, r, CS_HTTP_ABORT_TIMEOUT);
    pthread_mutex_lock(&r->mu);
    if (r->state == RS_NONE && !r->over) {
        r->resp = default_error(408);
        r->status = 408;
        r->state = RS_PENDING;
        wake_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
}

static void wd_gone(cs_http *s, cs_http_req *r, unsigned seq) {
    pthread_mutex_lock(&r->mu);
    int fire = r->suspended && r->susp_seq == seq && !r->gone_fired && !r->over;
    if (fire) r->gone_fired = 1;
    pthread_mutex_unlock(&r->mu);
    if (!fire) return;
    if (s->h.abort) s->h.abort(s->h.ud, r, CS_HTTP_ABORT_GONE);
    pthread_mutex_lock(&r->mu);
    r->kill = 1; /* the next access or read closes the connection */
    if (!r->over) wake_locked(r);
    pthread_mutex_unlock(&r->mu);
}

static int shed_order(const void *a, const void *b) {
    const conn_ent *x = *(conn_ent *const *)a, *y = *(conn_ent *const *)b;
    const int ix = x->state == CN_IDLE, iy = y->state == CN_IDLE;
    if (ix != iy) return iy - ix; /* idle ones first */
    return (x->t0 > y->t0) - (x->t0 < y->t0);
}

/* Connections waiting in the listen backlog for libmicrohttpd to accept them:
 * Linux reports the accept queue of a listening TCP socket in tcpi_unacked.
 * Where it cannot be known (a Unix socket), assume some wait. */
static int backlog_waiting(cs_http *s, int dflt) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    const int fd = atomic_load(&s->lfd);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || ti.tcpi_state != TCP_LISTEN) return dflt;
    return (int)ti.tcpi_unacked;
}

/* Applies the connection deadlines and, at the cap, sheds (see http.h). */
static void wd_conns(cs_http *s) {
    const double now = now_s();
    size_t nc = 0;
    int active = 0;
    pthread_mutex_lock(&s->cmu);
    for (int i = 0; i < s->max_conn; i++) {
        conn_ent *e = &s->ce[i];
        if (!e->used || e->cut) continue;
        int cut = 0;
        switch (e->state) {
        case CN_HEAD:
            if ((cut = now - e->t0 > s->hdr_timeout)) atomic_fetch_add(&s->n_cut_head, 1);
            break;
        case CN_BODY: {
            const double late = now - e->t_body - s->hdr_timeout;
            if ((cut = s->min_rate > 0 && late > 0 && (double)e->body < s->min_rate * late))
                atomic_fetch_add(&s->n_cut_body, 1);
            break;
        }
        case CN_IDLE:
            if ((cut = now - e->t0 > s->ka_timeout)) atomic_fetch_add(&s->n_cut_idle, 1);
            break;
        default: break;
        }
        if (cut) {
            shutdown(e->fd, SHUT_RDWR);
            e->cut = 1;
            continue;
        }
        active++;
        if (e->state == CN_IDLE || (e->state == CN_HEAD && now - e->t0 >= CS_HTTP_SHED_GRACE_S)) s->cand[nc++] = e;
    }
    if (s->n_conns >= s->max_conn && nc) { /* at the cap: make room for those who wait, a batch at a time */
        const int batch = s->max_conn / CS_HTTP_SHED_DIV > 0 ? s->max_conn / CS_HTTP_SHED_DIV : 1;
        int need = backlog_waiting(s, batch);
        if (need > batch) need = batch;
        need -= s->n_conns - active; /* cut ones about to close */
        if (need > 0) {
            qsort(s->cand, nc, sizeof *s->cand, shed_order);
            for (size_t i = 0; i < nc && (int)i < need; i++) {
                shutdown(s->cand[i]->fd, SHUT_RDWR);
                s->cand[i]->cut = 1;
                atomic_fetch_add(&s->n_shed, 1);
            }
        }
    }
    pthread_mutex_unlock(&s->cmu);
}

/* One line per CS_HTTP_CUT_LOG_S at most, when connections were cut: an
 * operator should see a slowloris, and a log line per cut would flood. */
static void wd_report(cs_http *s, unsigned long last[4], double *t_last) {
    const double now = now_s();
    if (now - *t_last < CS_HTTP_CUT_LOG_S || !s->h.log) return;
    const unsigned long cur[4] = {atomic_load(&s->n_cut_head), atomic_load(&s->n_cut_body),
                                  atomic_load(&s->n_cut_idle), atomic_load(&s->n_shed)};
    if (cur[0] == last[0] && cur[1] == last[1] && cur[3] == last[3]) return; /* idle cuts are routine */
    char msg[256];
    snprintf(msg, sizeof msg,
             "connections cut in the last %.0f s: %lu past the header deadline, %lu with a slow body, "
             "%lu shed at the connection cap",
             now - *t_last, cur[0] - last[0], cur[1] - last[1], cur[3] - last[3]);
    memcpy(last, cur, sizeof cur);
    *t_last = now;
    s->h.log(s->h.ud, msg);
}

static void *wd_main(void *arg) {
    cs_http *s = arg;
    wd_item *items = NULL;
    struct pollfd *pfds = NULL;
    size_t cap = 0;
    unsigned long cut_seen[4] = {0};
    double t_report = now_s();
    while (!atomic_load(&s->wd_stop)) {
        sleep_ms(CS_HTTP_WATCHDOG_MS);
        wd_conns(s);
        wd_report(s, cut_seen, &t_report);
        if (atomic_load(&s->n_suspended) == 0) continue;
        size_t n = wd_collect(s, &items, &pfds, &cap);
        if (n && poll(pfds, (nfds_t)n, 0) < 0)
            for (size_t i = 0; i < n; i++) pfds[i].revents = 0;
        for (size_t i = 0; i < n; i++) {
            if (items[i].timed_out) wd_timeout(s, items[i].r);
            if (pfds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) wd_gone(s, items[i].r, items[i].seq);
            cs_http_req_unref(items[i].r);
        }
    }
    free(items);
    free(pfds);
    return NULL;
}

/* --------------------------------------------------------------- server */

/* A listening Unix socket at path (mode 0600), or -1 with err. */
static int unix_listen(const char *path, cs_err *err) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return cs_err_set(err, "http: socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return cs_err_set(err, "http: socket: %s", strerror(errno));
    unlink(path);
    mode_t old = umask(077);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc != 0 || listen(fd, CS_HTTP_LISTEN_BACKLOG) != 0) {
        cs_err_set(err, "http: cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* A listening TCP socket on host:port, or -1 with err. Bound here rather than by
 * libmicrohttpd, whose own failure is a log line ("Failed to bind to port 0") that names
 * neither the address nor the reason. *v6 and *port_out: the family and bound port. */
static int tcp_listen(const char *host, int port, int *v6, int *port_out, cs_err *err) {
    if (port < 0 || port > 65535) return cs_err_set(err, "port %d out of range [0, 65535]", port);
    const int bracket = strchr(host, ':') != NULL; /* an IPv6 literal: [::1]:8000 */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai != 0 || !ai) return cs_err_set(err, "cannot listen on %s: cannot resolve the host: %s", host, gai_strerror(gai));
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    socklen_t alen = (socklen_t)ai->ai_addrlen;
    *v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (*v6) ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)port);
    int fd = socket(*v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return cs_err_set(err, "cannot listen on %s: socket: %s", host, strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* restart while old connections linger */
    if (*v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, alen) != 0 || listen(fd, CS_HTTP_LISTEN_BACKLOG) != 0) {
        char why[128];
        snprintf(why, sizeof why, "%s", strerror(errno));
        if (why[0] >= 'A' && why[0] <= 'Z' && why[1] >= 'a' && why[1] <= 'z') why[0] = (char)(why[0] - 'A' + 'a');
        close(fd);
        return cs_err_set(err, "cannot listen on %s%s%s:%d: %s", bracket ? "[" : "", host, bracket ? "]" : "", port, why);
    }
    struct sockaddr_storage got;
    socklen_t glen = sizeof got;
    *port_out = port;
    if (getsockname(fd, (struct sockaddr *)&got, &glen) == 0)
        *port_out = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                    : ((struct sockaddr_in *)&got)->sin_port);
    return fd;
}

/* "a,b , c" or "*" into s->cors. */
static int cors_parse(cs_http *s, const char *list, cs_err *err) {
    while (list && *list) {
        size_t n = strcspn(list, ",");
        const char *b = list, *e = list + n;
        while (b < e && (*b == ' ' || *b == '\t')) b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '/')) e--;
        list += n + (list[n] == ',');
        if (e == b) continue;
        s->cors_on = 1;
        if (e - b == 1 && *b == '*') {
            s->cors_any = 1;
            continue;
        }
        if ((size_t)(e - b) > CS_HTTP_MAX_ORIGIN)
            return cs_err_set(err, "CORS origin longer than %d bytes: %.60s...", CS_HTTP_MAX_ORIGIN, b);
        if (s->n_cors == CS_HTTP_MAX_CORS_ORIGINS)
            return cs_err_set(err, "more than %d CORS origins", CS_HTTP_MAX_CORS_ORIGINS);
        const char *sep = strstr(b, "://");
        int ok = sep && sep < e && sep > b && (size_t)(e - sep) > 3 && !memchr(sep + 3, '/', (size_t)(e - sep - 3));
        for (const char *c = b; ok && c < e; c++) ok = (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f;
        if (!ok)
            return cs_err_set(err, "CORS origin '%.*s' is not of the form scheme://host[:port] (or *)", (int)(e - b), b);
        memcpy(s->cors[s->n_cors], b, (size_t)(e - b));
        s->cors[s->n_cors++][e - b] = '\0';
    }
    return 0;
}

int cs_http_start(cs_http **out, const cs_http_opts *o, const cs_http_handlers *h, cs_err *err) {
    *out = NULL;
    if (!h || !h->request) return cs_err_set(err, "http: no request handler");
    int lfd = -1, v6 = 0, port = o->port;
    const char *host = o->host && *o->host ? o->host : "0.0.0.0";
    cs_http *s = calloc(1, sizeof *s);
    if (!s) return cs_err_set(err, "out of memory");
    if (cors_parse(s, o->cors_origins, err)) {
        free(s);
        return -1;
    }
    if (o->unix_path) {
        lfd = unix_listen(o->unix_path, err);
        host = o->unix_path;
    } else {
        lfd = tcp_listen(host, o->port, &v6, &port, err);
    }
    if (lfd < 0) {
        free(s);
        return -1;
    }
    s->h = *h;
    s->req_timeout = o->request_timeout_s > 0 ? o->request_timeout_s : 60;
    s->ka_timeout = o->keep_alive_timeout_s > 0 ? o->keep_alive_timeout_s : 90;
    s->hdr_timeout = o->header_timeout_s > 0 ? o->header_timeout_s : CS_HTTP_HEADER_TIMEOUT_S;
    s->min_rate = o->min_body_rate > 0 ? o->min_body_rate : o->min_body_rate < 0 ? 0 : CS_HTTP_MIN_BODY_RATE;
    const unsigned max_conn = (unsigned)(o->max_connections > 0 ? o->max_connections : CS_HTTP_MAX_CONNECTIONS);
    s->max_conn = (int)max_conn;
    atomic_init(&s->lfd, lfd);
    s->ce = calloc(max_conn, sizeof *s->ce);
    s->cand = calloc(max_conn, sizeof *s->cand);
    if (!s->ce || !s->cand) {
        close(lfd);
        free(s->ce);
        free(s->cand);
        free(s);
        return cs_err_set(err, "out of memory");
    }
    for (unsigned i = 0; i < max_conn; i++) s->ce[i].next_free = i + 1 < max_conn ? (int)i + 1 : -1;
    s->ce_free = 0;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->cmu, NULL);
    const unsigned per_ip = o->max_connections_per_ip > 0 && !o->unix_path ? (unsigned)o->max_connections_per_ip : 0;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, /* first, to catch every message */
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)lfd,
                            MHD_OPTION_CONNECTION_LIMIT, max_conn,
                            MHD_OPTION_CONNECTION_TIMEOUT, secs_ceil(s->ka_timeout),
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CS_HTTP_CONN_MEMORY,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
                            MHD_OPTION_END);
    if (!s->d) {
        close(lfd);
        cs_err_set(err, "http: cannot serve on %s (libmicrohttpd did not start)", host);
        pthread_mutex_destroy(&s->mu);
        pthread_mutex_destroy(&s->cmu);
        free(s->ce);
        free(s->cand);
        free(s);
        return -1;
    }
    s->port = port;
    if (pthread_create(&s->wd, NULL, wd_main, s) != 0) {
        MHD_stop_daemon(s->d);
        pthread_mutex_destroy(&s->mu);
        pthread_mutex_destroy(&s->cmu);
        free(s->ce);
        free(s->cand);
        free(s);
        return cs_err_set(err, "http: cannot start the watchdog thread");
    }
    s->wd_started = 1;
    *out = s;
    return 0;
}

int cs_http_port(const cs_http *s) { return s->port; }

int cs_http_wait_idle(cs_http *s, double timeout_s) {
    const double end = now_s() + timeout_s;
    while (atomic_load(&s->n_live) > 0 && now_s() < end) sleep_ms(10);
    return atomic_load(&s->n_live);
}

void cs_http_stop(cs_http *s) {
    if (!s) return;
    atomic_store(&s->stopping, 1);
    MHD_socket lfd = MHD_quiesce_daemon(s->d); /* no new connections */
    /* Answer or end everything that waits, and wake it. */
    size_t n = 0, cap = (size_t)atomic_load(&s->n_live) + 16;
    cs_http_req **all = malloc(cap * sizeof *all);
    pthread_mutex_lock(&s->mu);
    for (cs_http_req *r = s->live; r && all && n < cap; r = r->next) {
        cs_http_req_ref(r);
        all[n++] = r;
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        cs_http_req *r = all[i];
        pthread_mutex_lock(&r->mu);
        if (!r->over) {
            if (r->state == RS_NONE && !r->resp) {
                r->resp = default_error(503);
                r->status = 503;
                r->state = RS_PENDING;
            }
            if (r->is_stream && !r->s_end) r->s_err = 1;
            wake_locked(r);
        }
        pthread_mutex_unlock(&r->mu);
        cs_http_req_unref(r);
    }
    free(all);
    /* libmicrohttpd refuses to stop with suspended connections */
    for (int i = 0; i < 500 && atomic_load(&s->n_suspended) > 0; i++) sleep_ms(10);
    atomic_store(&s->lfd, -1);
    MHD_stop_daemon(s->d);
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    atomic_store(&s->wd_stop, 1);
    if (s->wd_started) pthread_join(s->wd, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->cmu);
    free(s->ce);
    free(s->cand);
    free(s);
}
