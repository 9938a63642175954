/* cs_api: the HTTP API of `cserve serve`: request handlers between cs_http
 * (the HTTP server) and cs_sched (the continuous-batching engine).
 *
 * Routes (APP = the route prefix, "/" by default):
 *   POST APP/text/simple-gen   the seed's endpoint: {"input": ...} -> [{"generated_text": ...}]
 *   POST APP/v1/completions    OpenAI completions (also streamed as server-sent events)
 *   POST APP/v1/chat/completions  OpenAI chat completions, through a plain-text chat template
 *   GET  APP/v1/models[/ID]    OpenAI model list
 *   GET  /-/healthz            200 "success" when ready; 503 while loading or draining
 *   GET  /-/routes             {"APP": "transformer-app"}
 *   GET  /metrics              Prometheus text format
 * The request fields, defaults and errors are documented in README.md
 * ("HTTP API").
 *
 * Errors are JSON, {"error": {"type", "message"}} ({"error": {"message",
 * "type", "param", "code"}} under /v1), with 400 (bad JSON), 401, 404, 405
 * (+ Allow), 408 (+ x-should-retry: false), 413, 414, 422 (wrong type, out
 * of range, over a limit: the message names the field and the limit; 400
 * under /v1, as OpenAI answers), 431, 503 (+ Retry-After: overloaded, loading
 * or draining) and 500 (engine failure). GET /openapi.json and /docs describe
 * all of it (serve/openapi.h).
 *
 * Life cycle: cs_api_create (state LOADING; healthz 503) -> cs_api_attach
 * (READY) -> cs_api_drain (DRAINING: new generation requests get 503) ->
 * cs_api_detach (before cs_sched_free: no scheduler calls after it returns)
 * -> cs_api_free (after cs_http_stop). The model and scheduler are borrowed.
 *
 * user_config (Ray Serve's, of the TextGenService deployment): generation
 * defaults for /text/simple-gen that override the model's pipeline defaults
 * and are overridden by a request's own fields; set at any time, without a
 * restart (cs_api_set_user_config).
 *
 * Threads: the cs_http callbacks run on the HTTP threads, scheduler callbacks
 * on the engine thread; the state changes and user_config may come from any
 * thread. Each request's state is guarded by its own mutex; nothing here
 * blocks on the engine.
 *
 * Source: api.c (dispatch, life cycle), api_simple.c, api_openai.c, api_gen.c
 * (what the generation routes share); api_internal.h describes them. */
#ifndef CS_API_H
#define CS_API_H

#include <jansson.h>
#include <stddef.h>

#include "engine/err.h"
#include "engine/model.h"
#include "http/http.h"
#include "serve/log.h"
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
#define CS_API_MAX_MESSAGES 1024  /* messages in one /v1/chat/completions request */
#define CS_API_MAX_GEN_TOKENS (1 << 20) /* user_config max_new_tokens / max_length
                                           (also at most the context once a model is attached) */

typedef struct cs_api cs_api;

typedef struct cs_api_opts {
    const char *model_name;   /* reported by /v1/models and in responses */
    const char *model_arg;    /* the --model argument (also accepted as "model") */
    const char *route_prefix; /* "/" or "/something" (no trailing slash) */
    const char *app_name;     /* "transformer-app" */
    const char *const *api_keys; /* copied; n_api_keys == 0: no authentication */
    size_t n_api_keys;
    /* NULL, or n_api_keys entries: the most generation requests (POST routes,
     * streams included) one key may have in flight at once; 0 = no limit. A
     * request over its key's limit gets 429 + Retry-After at once, so one client
     * cannot fill the admission queue that every other client shares. */
    const int *api_key_max_ongoing;
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
/* Answers the overload refusals being held (serve/shed.h) now, on the calling
 * thread, without draining: for tests that must see every response at once. */
void cs_api_release_held(cs_api *a);

/* Generation defaults for POST APP/text/simple-gen, over the model's own
 * (the text-generation pipeline's). user_config: a JSON object with any of
 *   max_new_tokens (integer >= 1), max_length (integer >= 1, counts the prompt;
 *   a user_config that gives it without max_new_tokens turns the model's
 *   max_new_tokens off), do_sample (boolean), temperature (number in (0, 100]),
 *   top_k (integer in [0, 2^30], 0 = off), top_p (number in (0, 1]),
 *   repetition_penalty (number in (0, 100]), and chat_template (an object: the
 *   template of /v1/chat/completions, over cs_api_set_chat_template's);
 * a key with a null value is not set; the lengths are also bounded by
 * CS_API_MAX_GEN_TOKENS and, once a model is attached, by its context. A
 * request's own fields override these. NULL, JSON null or {} clears them.
 *
 * Replaces the whole previous user_config (keys it does not give are unset).
 * On an unknown key, a wrong type or a value out of range: -1 with err naming
 * the key ("user_config.top_p: must be in (0, 1], got 2"), and nothing
 * changes. user_config is not kept (copied). Thread-safe: may be called at
 * any time from any thread; a request uses the values that were set when it
 * was parsed, so requests already running keep theirs. */
int cs_api_set_user_config(cs_api *a, const json_t *user_config, cs_err *err);

/* The same checks without a cs_api (no context bound): for validating a
 * Serve config before deploying it. */
int cs_api_user_config_check(const json_t *user_config, cs_err *err);

/* The user_config now in force, as it was given ({} when none). New
 * reference; NULL only when out of memory. Thread-safe. */
json_t *cs_api_user_config(cs_api *a);

/* The chat template of POST APP/v1/chat/completions (serve/chat_tpl.h,
 * README "Chat completions"): arg is a JSON object's text, or the path of a
 * file holding one; NULL: the default template. A user_config's chat_template
 * key, when set, is used over it. -1 with err naming the problem (file, JSON,
 * key) and nothing changes. Thread-safe. */
int cs_api_set_chat_template(cs_api *a, const char *arg, cs_err *err);

/* The server log moved to serve/log.h; the old name stays for callers. */
#define cs_api_log cs_log

#endif
