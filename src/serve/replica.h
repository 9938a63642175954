/* cs_replica: one deployment replica process (`cserve replica`): its own
 * engine and continuous-batching scheduler behind the application's HTTP API
 * (cs_api), served on a Unix socket (or TCP port) to the proxy.
 *
 * Besides the application's routes (mounted at "/": the proxy strips the
 * route prefix), the replica answers the controller:
 *   GET /-/replica/stats        {"ready", "pid", "running", "queued", "max_running",
 *                               "steps", "tokens_generated", "prompt_tokens",
 *                               "requests_done", "batch_size"}: also the health check
 *   PUT /-/replica/user_config  new generation defaults (Ray's user_config), applied to
 *                               requests that start from now on; 400 + message when bad
 *
 * Life cycle (cs_replica_run): listen (stats "ready": false, healthz 503) ->
 * resolve and load the model -> ready -> SIGTERM/SIGINT: drain running and
 * queued requests (up to graceful_shutdown_timeout_s) -> return 0. A model
 * that cannot be loaded: one error line on stderr, return 1.
 *
 * app "clean_text" (`cserve.apps:clean_text`, the preprocessing deployment of a
 * composed application; no model, see serve/clean.h) serves instead:
 *   POST /-/preprocess          a generation request's JSON body -> 200 with the
 *                               body rewritten ("input"/"prompt" cleaned; the
 *                               original bytes when nothing changed);
 *                               400 {"error": {"type": "bad_request", "message"}}
 *                               when the body is not JSON; 413 over
 *                               CS_HTTP_MAX_BODY; 503 when its queue is full
 *   GET /-/replica/stats        the same keys as above ("running": requests being
 *                               cleaned, "queued": waiting for a worker thread,
 *                               engine counters 0) plus "app": "clean_text",
 *                               "requests_failed" and "preprocess" (the options
 *                               in force)
 *   PUT /-/replica/user_config  clean options (cs_clean_opts_merge_json keys)
 *                               applied over clean_opts to requests that start
 *                               from now on; null: back to clean_opts; 400 when bad
 *   GET /-/healthz              200 "success" while ready, 503 "draining" after SIGTERM
 * Ready as soon as it listens; SIGTERM/SIGINT: finishes what it accepted (up to
 * graceful_shutdown_timeout_s), returns 0. Bad options: one error line, 1. */
#ifndef CS_SERVE_REPLICA_H
#define CS_SERVE_REPLICA_H

#include "engine/kernels.h" /* cs_kvdtype */

typedef struct cs_replica_opts {
    const char *unix_path;   /* listen here (else host:port) */
    const char *host;
    int port;
    const char *model;       /* directory or Hub name */
    const char *model_name;  /* id in responses and /v1/models (NULL: derived from model) */
    const char *app_name;    /* also accepted as the request's "model" */
    const char *dtype;       /* fp32 | bf16 | int8 (NULL: fp32) */
    const char *user_config; /* JSON object text or NULL */
    const char *chat_template; /* cs_api_set_chat_template's argument, or NULL */
    const char *replica_id;  /* for log lines */
    int threads;             /* 0: all CPUs the process may use (clean_text: 1 worker) */
    int max_running;         /* scheduler sequences (max_ongoing_requests) */
    int max_queued;          /* scheduler queue behind them */
    int kv_cache_mb;         /* scheduler KV cache memory (0: room for every sequence at full context) */
    const char *kv_dtype;    /* KV cache element type: auto | fp32 | bf16 | int8 (NULL: auto) */
    double request_timeout_s;
    double graceful_shutdown_timeout_s;
    int access_log;
    const char *app;         /* "text_generation" (NULL: the same) | "clean_text" */
    const char *clean_opts;  /* clean_text: args.preprocess as JSON text (NULL: defaults);
                                user_config (JSON) is then merged over it */
} cs_replica_opts;

/* Runs the replica until SIGTERM/SIGINT; returns the process exit status. */
int cs_replica_run(const cs_replica_opts *o);

#endif
