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
 * that cannot be loaded: one error line on stderr, return 1. */
#ifndef CS_SERVE_REPLICA_H
#define CS_SERVE_REPLICA_H

typedef struct cs_replica_opts {
    const char *unix_path;   /* listen here (else host:port) */
    const char *host;
    int port;
    const char *model;       /* directory or Hub name */
    const char *model_name;  /* id in responses and /v1/models (NULL: derived from model) */
    const char *app_name;    /* also accepted as the request's "model" */
    const char *dtype;       /* fp32 | bf16 | int8 (NULL: fp32) */
    const char *user_config; /* JSON object text or NULL */
    const char *replica_id;  /* for log lines */
    int threads;             /* 0: all CPUs the process may use */
    int max_running;         /* scheduler sequences (max_ongoing_requests) */
    int max_queued;          /* scheduler queue behind them */
    double request_timeout_s;
    double graceful_shutdown_timeout_s;
    int access_log;
} cs_replica_opts;

/* Runs the replica until SIGTERM/SIGINT; returns the process exit status. */
int cs_replica_run(const cs_replica_opts *o);

#endif
