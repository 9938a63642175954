/* cs_http: an HTTP/1.1 server on libmicrohttpd for asynchronous handlers.
 *
 * One internal epoll thread serves every connection (keep-alive, thousands of
 * connections, no thread per connection). The application sees one complete
 * request at a time (method, path, headers, body read in full up to
 * CS_HTTP_MAX_BODY) and answers it later, from any thread:
 *
 *   - cs_http_respond: a whole response at once;
 *   - cs_http_stream_begin / _write / _end: a chunked response whose data is
 *     produced over time (server-sent events).
 *
 * Until the application answers, the connection is suspended (it costs no CPU
 * and is not timed out by libmicrohttpd); answering resumes it. Streaming uses
 * a per-request buffer: when it runs dry the connection is suspended again and
 * the next write resumes it.
 *
 * The server watches suspended requests on a watchdog thread (every
 * CS_HTTP_WATCHDOG_MS): a request without a response after request_timeout_s
 * gets an abort(CS_HTTP_ABORT_TIMEOUT) callback (the application answers 408;
 * otherwise a default 408 is sent), and a client that closed its socket gets
 * abort(CS_HTTP_ABORT_GONE) and its connection is closed. A client that
 * disconnects while a response is being sent is reported the same way.
 * A client that stops sending in the middle of its body is cut off after
 * request_timeout_s of inactivity (sooner when slower than min_body_rate; see the
 * deadlines below); an idle keep-alive connection after keep_alive_timeout_s.
 *
 * Requests the wrapper rejects itself (body over CS_HTTP_MAX_BODY: 413, headers
 * over CS_HTTP_MAX_HEADER_BYTES: 431, path over CS_HTTP_MAX_PATH: 414) still
 * reach the request handler, with cs_http_req_error() set, so that the
 * application formats the error like its others. Headers larger than
 * CS_HTTP_CONN_MEMORY are refused by libmicrohttpd itself (431, HTML body).
 *
 * Framing (RFC 9112), checked on every request once its headers are in, before
 * any body is read; each is answered with one response and Connection: close:
 * 400 for Content-Length together with Transfer-Encoding, a repeated Content-Length,
 * whitespace or another non-token byte in a field name ("Content-Length : 5"), a CR
 * in a field value, no Host on HTTP/1.1 or more than one Host, Transfer-Encoding on
 * HTTP/1.0 or repeated; 501 for a transfer coding other than chunked; 413 for a
 * body over CS_HTTP_MAX_BODY, chunked or not (a chunked one is read and dropped up
 * to CS_HTTP_MAX_DISCARD first, since libmicrohttpd can only answer between
 * requests; beyond that the connection is cut). What libmicrohttpd answers itself
 * (a malformed Content-Length value, a bad chunk size, HTTP/2.0) never reaches the
 * application; see the README for what 0.9.75 gets wrong there.
 *
 * Connection deadlines, checked by the watchdog (see below) on a table of every
 * open connection; a connection is cut with shutdown(), so that libmicrohttpd sees
 * the end of the stream and closes it itself:
 *   - headers: a new connection must deliver complete headers within
 *     header_timeout_s of being accepted; a reused one within header_timeout_s of
 *     its request line;
 *   - body: after header_timeout_s, a request body must have averaged
 *     min_body_rate bytes/s over the time beyond header_timeout_s;
 *   - idle: a keep-alive connection between requests lives keep_alive_timeout_s,
 *     whatever trickles in before a request line;
 *   - at the cap (max_connections open, libmicrohttpd accepts no more): idle
 *     keep-alive connections are shed first, then connections that have been
 *     waiting CS_HTTP_SHED_GRACE_S or more for their headers, oldest first, up to
 *     max_connections / CS_HTTP_SHED_DIV per check, so that new clients get in;
 *     connections with a request in progress are never shed;
 *   - per address: max_connections_per_ip (libmicrohttpd closes the extra ones at
 *     once, without a response).
 *
 * CORS (cs_http_opts.cors_origins, off by default): a request whose Origin header is
 * one of the allowed origins (or any origin, for "*") gets Access-Control-Allow-Origin
 * on its response, whoever builds it (the application, a default 408/503, a stream);
 * every response carries Vary: Origin while CORS is on. A preflight (OPTIONS with
 * Access-Control-Request-Method) from an allowed origin is answered here with 204
 * (CS_HTTP_CORS_METHODS, CS_HTTP_CORS_HEADERS) and never reaches the application,
 * because browsers send it without credentials (no API key). The done callback still
 * sees it, with no application data.
 *
 * Lifetimes: a cs_http_req is reference-counted. The server holds one
 * reference until the request is over (response sent or connection closed);
 * the application takes its own (cs_http_req_ref) for as long as it may call
 * the respond/stream functions from other threads, and drops it with
 * cs_http_req_unref. The application's per-request data (cs_http_req_set_app)
 * is freed with the last reference.
 *
 * Threads: handler and done callbacks run on the server thread and must not
 * block; abort runs on the server or the watchdog thread. No callback is made
 * with a lock of this module held, so callbacks may call any function here.
 * respond/stream/ref/unref may be called from any thread. */
#ifndef CS_HTTP_H
#define CS_HTTP_H

#include <stddef.h>

#include "engine/err.h"

#define CS_HTTP_MAX_BODY ((size_t)1 << 20)         /* request body bytes (413 beyond) */
#define CS_HTTP_MAX_HEADER_BYTES ((size_t)16 << 10) /* request header lines together (431 beyond) */
#define CS_HTTP_MAX_PATH ((size_t)4096)             /* request path bytes (414 beyond) */
#define CS_HTTP_CONN_MEMORY ((size_t)64 << 10)      /* libmicrohttpd's per-connection buffer */
#define CS_HTTP_MAX_CONNECTIONS 4096                /* open connections (more wait in the backlog) */
#define CS_HTTP_LISTEN_BACKLOG 1024
#define CS_HTTP_STREAM_MAX_BUFFER ((size_t)8 << 20) /* unsent stream bytes per request */
#define CS_HTTP_MAX_EXTRA_HEADERS 8                 /* response headers besides Content-Type */
#define CS_HTTP_WATCHDOG_MS 50                      /* timeout / disconnect check period */
#define CS_HTTP_MAX_CORS_ORIGINS 16                 /* entries of cs_http_opts.cors_origins */
#define CS_HTTP_MAX_ORIGIN 256                      /* bytes of one allowed origin */
#define CS_HTTP_HEADER_TIMEOUT_S 10.0              /* accept (or request line) to complete headers */
#define CS_HTTP_MIN_BODY_RATE 1024.0                /* request body bytes/s, after the header timeout */
#define CS_HTTP_SHED_GRACE_S 1.0                    /* at the cap: headers pending this long may be shed */
#define CS_HTTP_SHED_DIV 16                         /* at the cap: shed up to max_connections/16 per check */
#define CS_HTTP_MAX_DISCARD ((size_t)8 << 20)       /* body bytes dropped after a 413 before cutting */
#define CS_HTTP_CUT_LOG_S 10.0                      /* at most one "connections cut" log line per period */
#define CS_HTTP_CORS_METHODS "GET, POST, PUT, DELETE, OPTIONS"
#define CS_HTTP_CORS_HEADERS "Authorization, Content-Type"
#define CS_HTTP_CORS_MAX_AGE "600"                  /* seconds a browser may cache a preflight */

typedef struct cs_http cs_http;
typedef struct cs_http_req cs_http_req;

typedef enum cs_http_abort {
    CS_HTTP_ABORT_TIMEOUT, /* no response within request_timeout_s */
    CS_HTTP_ABORT_GONE     /* the client closed the connection */
} cs_http_abort;

typedef struct cs_http_header {
    const char *name, *value;
} cs_http_header;

typedef struct cs_http_handlers {
    /* A complete request. Must lead to exactly one response (respond or
     * stream_begin), now or later; a request left unanswered gets a 408 after
     * request_timeout_s. */
    void (*request)(void *ud, cs_http_req *r);
    /* The request should stop its work; may be NULL. For TIMEOUT, answering
     * within the callback replaces the default 408. */
    void (*abort)(void *ud, cs_http_req *r, cs_http_abort why);
    /* The request is over: status sent (0 when none was), seconds since its
     * headers arrived, ok = response sent in full. May be NULL. */
    void (*done)(void *ud, cs_http_req *r, int status, double latency_s, int ok);
    /* A diagnostic line (no newline): libmicrohttpd's, on the server thread, or a
     * summary of cut connections, on the watchdog thread; may be NULL. */
    void (*log)(void *ud, const char *msg);
    void *ud;
} cs_http_handlers;

typedef struct cs_http_opts {
    const char *host;           /* numeric address or name; NULL: 0.0.0.0 */
    int port;                   /* 0: any free port (see cs_http_port) */
    double request_timeout_s;   /* <= 0: 60 */
    double keep_alive_timeout_s;/* <= 0: 90 */
    int max_connections;        /* <= 0: CS_HTTP_MAX_CONNECTIONS */
    const char *unix_path;      /* non-NULL: listen on this Unix socket instead (host/port
                                   ignored; an existing file there is replaced; mode 0600) */
    const char *cors_origins;   /* NULL or "": no CORS headers; else origins allowed to call
                                   from a browser, comma-separated ("https://a.example,
                                   http://localhost:3000"), or "*" for any; copied */
    double header_timeout_s;    /* <= 0: CS_HTTP_HEADER_TIMEOUT_S */
    double min_body_rate;       /* bytes/s; 0: CS_HTTP_MIN_BODY_RATE; < 0: no minimum */
    int max_connections_per_ip; /* <= 0: no cap per client address (TCP only) */
} cs_http_opts;

/* Binds, listens and starts the server thread. h's handlers are copied. A port that
 * cannot be bound fails here with "cannot listen on HOST:PORT: REASON" (e.g. "address
 * already in use"), before any request could arrive; nothing is logged. A malformed
 * cors_origins fails with a message naming the entry. */
int cs_http_start(cs_http **out, const cs_http_opts *o, const cs_http_handlers *h, cs_err *err);
int cs_http_port(const cs_http *s); /* the bound port */

/* Waits up to timeout_s until no request is in progress. Returns the number
 * still in progress. */
int cs_http_wait_idle(cs_http *s, double timeout_s);

/* Stops listening, answers what is still unanswered with 503, ends open
 * streams, closes every connection and frees the server. Call it after the
 * application stopped producing responses; NULL is a no-op. */
void cs_http_stop(cs_http *s);

/* ---- per request ---- */

void cs_http_req_ref(cs_http_req *r);
void cs_http_req_unref(cs_http_req *r);
void cs_http_req_set_app(cs_http_req *r, void *app, void (*app_free)(void *app));
void *cs_http_req_app(const cs_http_req *r);

/* Valid for the request's whole life. path is percent-decoded, without the
 * query string; both are NUL-terminated. */
const char *cs_http_req_method(const cs_http_req *r);
const char *cs_http_req_path(const cs_http_req *r);
/* The body (NUL-terminated for convenience; may contain NULs). */
const char *cs_http_req_body(const cs_http_req *r, size_t *len);
/* Non-zero status (413, 414, 431) when the wrapper refused the request;
 * *msg then says why. */
int cs_http_req_error(const cs_http_req *r, const char **msg);
/* A request header (case-insensitive name), or NULL. Only during the
 * request callback. */
const char *cs_http_req_header(const cs_http_req *r, const char *name);
/* A query-string argument (percent-decoded), or NULL; "" for a name without
 * a value. Only during the request callback. */
const char *cs_http_req_query(const cs_http_req *r, const char *name);

/* A whole response; body is copied. Returns 0, or -1 when the request
 * already has a response or is over. */
int cs_http_respond(cs_http_req *r, int status, const char *content_type, const char *body, size_t len,
                    const cs_http_header *extra, size_t n_extra);

/* Starts a chunked response (status and headers are copied), then appends
 * data; end finishes it (error != 0: cut the connection instead of a clean
 * end). Each returns -1 when the request has no such stream or is over (the
 * client left): the caller should then stop producing. */
int cs_http_stream_begin(cs_http_req *r, int status, const char *content_type, const cs_http_header *extra,
                         size_t n_extra);
int cs_http_stream_write(cs_http_req *r, const char *data, size_t len);
int cs_http_stream_end(cs_http_req *r, int error);

#endif
