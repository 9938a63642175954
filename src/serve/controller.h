/* cs_ctl: the control plane of `cserve serve --config`: controller, proxy
 * (router) and admin API in one process, replicas as child processes.
 *
 *   client --HTTP--> proxy (cs_http, :8000) --+
 *   serve CLI --HTTP--> admin (cs_http, :8265) -+--> control loop thread --HTTP over Unix
 *                                                    sockets (libcurl multi)--> replicas
 *
 * One control-loop thread owns every piece of state (applications,
 * deployments, replicas, queues, metrics of the control plane); the HTTP
 * threads only post requests to it. The loop forwards proxy requests to
 * replicas (power of two choices on ongoing requests, max_ongoing_requests
 * per replica, a FIFO queue per deployment up to max_queued_requests),
 * streams answers back, retries a request whose replica died before
 * answering, spawns and reaps replica processes (`cserve replica`), checks
 * their health, rolls out new configs, and answers the admin API in Ray
 * Serve's shapes. So: no locks around the state, and the policies are plain
 * functions of it.
 *
 * Threads: cs_ctl_start/stop from one thread (main); everything else inside. */
#ifndef CS_SERVE_CONTROLLER_H
#define CS_SERVE_CONTROLLER_H

#include "engine/err.h"
#include "serve/config.h"

typedef struct cs_ctl cs_ctl;

typedef struct cs_ctl_opts {
    const char *host;        /* proxy listener; NULL: the config's http_options.host */
    int port;                /* -1: the config's http_options.port; 0: any free port */
    const char *admin_host;  /* default 127.0.0.1 */
    int admin_port;          /* default 8265; 0: any free port */
    const char *const *api_keys; /* copied; both listeners check them */
    size_t n_api_keys;
    const int *api_key_max_ongoing; /* NULL or per key: POSTs one key may have in flight at the
                                       proxy (0: no limit; cs_api_opts.api_key_max_ongoing) */
    int access_log;
    const char *self_exe;    /* the cserve binary that runs `cserve replica` (NULL: /proc/self/exe) */
    const char *cors_origins; /* the proxy's CORS origins (cs_http_opts.cors_origins); NULL: off */
    /* the proxy listener's connection limits (cs_http_opts; 0: cs_http's defaults) */
    double header_timeout_s, min_body_rate;
    int max_connections, max_connections_per_ip;
} cs_ctl_opts;

/* Starts both listeners and the loop, then deploys cfg (taken over: freed by
 * the controller; may be NULL: nothing deployed). */
int cs_ctl_start(cs_ctl **out, const cs_ctl_opts *o, cs_scfg *cfg, cs_err *err);
int cs_ctl_port(const cs_ctl *c);
int cs_ctl_admin_port(const cs_ctl *c);
/* Drains: new requests 503, waits up to timeout_s for forwarded and queued
 * requests, stops every replica (SIGTERM, then SIGKILL after their graceful
 * shutdown time), stops the listeners and frees everything. */
void cs_ctl_stop(cs_ctl *c, double timeout_s);

#endif
