/* cs_api: the HTTP API of `cserve serve`: request handlers between cs_http
 * (the HTTP server) and cs_sched (the continuous-batching engine).
 *
 * Routes (APP = the route prefix, "/" by default):
 *   POST APP/text/simple-gen   the seed's endpoint: {"input": ...} -> [{"generated_text": ...}]
 *   POST APP/v1/completions    OpenAI completions (also streamed as server-sent events)
 *   GET  APP/v1/models[/ID]    OpenAI model list
 *   GET  /-/healthz            200 "success" when ready; 503 while loading or draining
 *   GET  /-/routes             {"APP": "transformer-app"}
 *   GET  /metrics              Prometheus text format
 * The request fields, defaults and errors are documented in README.md
 * ("HTTP API").
 *
 * Errors are JSON, {"error": {"type", "message"}} ({"error": {"message",
 * "type", "param", "code"}} under /v1), with 400 (bad JSON), 401, 404, 405
 * (+ Allow), 408, 413, 414, 422 (wrong type, out of range, over a limit: the
 * message names the field and the limit), 431, 503 (+ Retry-After: overloaded,
 * loading or draining) and 500 (engine failure).
 *
 * Life cycle: cs_api_create (state LOADING; healthz 503) -> cs_api_attach
 * (READY) -> cs_api_drain (DRAINING: new generation requests get 503) ->
 * cs_api_detach (before cs_sched_free: no scheduler calls after it returns)
 * -> cs_api_free (after cs_http_stop). The model and scheduler are borrowed.
 *
 * Threads: the cs_http callbacks run on the HTTP threads, scheduler callbacks
 * on the engine thread; the state changes may come from any thread. Each
 * request's state is guarded by its own mutex; nothing here blocks on the
 * engine. */
#ifndef CS_API_H
#define CS_API_H

#include <stddef.h>

#include "engine/err.h"
#include "engine/model.h"
#include "http/http.h"
#include "serve/metrics.h"
#include "serve/sched.h"

#define CS_API_MAX_N 16           /* n / num_return_sequences per prompt */
#define CS_API_MAX_PROMPTS 16     /* prompts in one /v1/completions request */
#define CS_API_MAX_STOP 4         /* stop strings (OpenAI's limit) */
#define CS_API_MAX_STOP_BYTES 256 /* bytes of one stop string */
#define CS_API_MAX_JSON_DEPTH 32  /* nesting of arrays/objects in a request body */
#define CS_API_MAX_KEYS 64        /* API keys */
#define CS_API_MAX_KEY_BYTES 256  /* bytes of one API key */
#define CS_API_MAX_REQUEST_ID 128 /* bytes of an X-Request-Id we echo */
#define CS_API_RETRY_AFTER_S 1    /* Retry-After on 503 */

typedef struct cs_api cs_api;

typedef struct cs_api_opts {
    const char *model_name;   /* reported by /v1/models and in responses */
    const char *model_arg;    /* the --model argument (also accepted as "model") */
    const char *route_prefix; /* "/" or "/something" (no trailing slash) */
    const char *app_name;     /* "transformer-app" */
    const char *const *api_keys; /* copied; n_api_keys == 0: no authentication */
    size_t n_api_keys;
    int access_log;           /* 1: one JSON line per request on stderr */
} cs_api_opts;

int cs_api_create(cs_api **out, const cs_api_opts *o, cs_metrics *metrics, cs_err *err);
void cs_api_free(cs_api *a); /* NULL is a no-op */

/* The cs_http handlers for this API (ud = a). */
cs_http_handlers cs_api_handlers(cs_api *a);

/* Ready: generation requests go to s; m and s must outlive cs_api_detach. */
void cs_api_attach(cs_api *a, const cs_model *m, cs_sched *s);
void cs_api_drain(cs_api *a);
void cs_api_detach(cs_api *a);

/* Writes {"ts", "level", "msg"} as one line on stderr. */
void cs_api_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
