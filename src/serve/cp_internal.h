/* The control plane's shared state (controller.c, router.c, admin.c): owned
 * by the control-loop thread; nothing here is touched from another thread
 * except the inbox (mu). See controller.h. */
#ifndef CS_SERVE_CP_INTERNAL_H
#define CS_SERVE_CP_INTERNAL_H

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "http/http.h"
#include "serve/config.h"
#include "serve/controller.h"
#include "serve/metrics.h"

#define CP_TICK_S 0.1               /* reconcile period */
#define CP_STARTUP_TIMEOUT_S 600.0  /* a replica that is not ready by then is replaced */
#define CP_STARTUP_POLL_S 0.05      /* readiness poll while a replica starts */
#define CP_HEALTH_FAILS 3           /* consecutive failed checks that replace a replica (Ray's threshold) */
#define CP_MAX_START_FAILS 3        /* consecutive failed starts: DEPLOY_FAILED */
#define CP_MAX_RETRIES 3            /* a request is tried on at most this many replicas */
#define CP_MAX_RESP_BYTES ((size_t)64 << 20) /* a buffered (non-streamed) replica answer */
#define CP_LOG_LINE 512
#define CP_LAT_BUCKETS 19           /* Ray's latency buckets (ms) */

typedef enum { RS_STARTING, RS_RUNNING, RS_STOPPING } cp_rstate;

typedef struct cp_dep cp_dep;
typedef struct cp_app cp_app;
typedef struct cp_fwd cp_fwd;

typedef struct cp_replica {
    cp_dep *dep;
    char id[16];
    cp_rstate state;
    pid_t pid;           /* 0 once reaped */
    int version;         /* the deployment's code version it runs */
    char sock[128];
    double start_wall;   /* start_time_s */
    double t_spawn, t_stop_asked, t_term;
    int ongoing;         /* forwarded requests not finished */
    int health_fails, unhealthy;
    double next_check;
    CURL *check;         /* a stats request in flight */
    char check_buf[1024];
    size_t check_len;
    int err_fd;          /* its stderr (a pipe), -1 once closed */
    char line[CP_LOG_LINE];
    size_t line_len;
    char last_error[CP_LOG_LINE];
    int term_sent, kill_sent, exited, exit_status;
    int uc_pending;      /* user_config to push */
    /* last stats */
    int st_running, st_queued;
    double st_tokens, st_batch;
    /* Ray's per-replica series */
    uint64_t n_requests, n_errors;
    uint64_t lat_counts[CP_LAT_BUCKETS + 1];
    double lat_sum;
} cp_replica;

struct cp_dep {
    cp_app *app;
    char name[CS_SCFG_MAX_NAME];
    cs_scfg_deployment cfg;  /* user_config / given: own references */
    json_t *dconf;           /* Ray's deployment_config object */
    int target;              /* target_num_replicas */
    int version;             /* bumped by code changes (rolling restart) */
    int threads;
    cp_replica **reps;
    size_t n_reps, cap_reps;
    cp_fwd *q_head, *q_tail; /* FIFO of requests waiting for a replica */
    int n_queued;
    int start_fails;         /* consecutive failed starts at this version */
    int failed_version;      /* version that failed to start (-1: none) */
    double next_start;       /* back-off after a failed start */
    char status[24], trigger[40], message[CS_ERR_MAX];
    int scaling;             /* +1/-1: scale API in progress */
    int deleting;
    uint64_t starts, router_requests, errors;
};

struct cp_app {
    char name[CS_SCFG_MAX_NAME];
    char prefix[CS_SCFG_MAX_PREFIX]; /* "" : no HTTP route */
    char import_path[1024];
    cs_scfg_textgen tg;
    char model_id[256];      /* id clients see in /v1/models */
    json_t *given;           /* deployed_app_config */
    cp_dep **deps;
    size_t n_deps;
    char error[CS_ERR_MAX];  /* the last config could not be applied */
    char status[24];
    double last_deployed;
    int deleting;
};

/* A request forwarded to a replica (the proxy's part of it). */
struct cp_fwd {
    cs_ctl *c;
    cs_http_req *http;       /* one reference held while the loop tracks it */
    cp_dep *dep;
    cp_replica *rep;
    cp_fwd *next;            /* in a queue */
    char *url_path;          /* path relative to the application */
    char method[16];
    char request_id[136];
    char ctype_in[128];
    char app_label[CS_SCFG_MAX_NAME], route_label[48], rep_label[16];
    CURL *easy;
    struct curl_slist *hdrs;
    int status, tries, queued, streaming, sent, finished, gone, authorized;
    char ctype[128], retry_after[16], allow[64];
    char *buf;
    size_t len, cap;
    double t0, t_rep;
};

typedef struct cp_msg {
    struct cp_msg *next;
    int kind;                /* CP_M_* */
    cs_http_req *r;          /* a reference */
    int why;
} cp_msg;
enum { CP_M_PROXY, CP_M_ADMIN, CP_M_ABORT, CP_M_DONE };

typedef struct cp_series { /* ray_serve_num_http_requests and friends */
    char app[CS_SCFG_MAX_NAME], route[48], method[16];
    int status;
    uint64_t n;
    uint64_t lat_counts[CP_LAT_BUCKETS + 1];
    double lat_sum;
} cp_series;
#define CP_MAX_SERIES 512

struct cs_ctl {
    cs_ctl_opts o;
    char **keys;
    size_t *key_len;
    size_t n_keys;
    char exe[4096];
    char sock_dir[64];
    cs_http *proxy, *admin;
    cs_metrics *metrics;     /* cserve_* series of the proxy */
    pthread_t loop;
    int loop_started;
    CURLM *multi;
    pthread_mutex_t mu;      /* inbox */
    cp_msg *in_head, *in_tail;
    _Atomic int stop, draining;
    double drain_deadline;
    /* loop state */
    cs_scfg *cfg;            /* the config last applied (NULL: none) */
    json_t *doc;             /* its document */
    cp_app **apps;
    size_t n_apps;
    double target_capacity;
    char host[256];
    int port, admin_port;
    double request_timeout_s;
    int n_fwd;               /* requests the proxy holds */
    uint64_t rid_ctr, rid_base, rep_ctr;
    cp_series series[CP_MAX_SERIES];
    size_t n_series;
    int stopped;             /* shutdown complete: the loop may exit */
};

/* controller.c */
double cp_now(void);
double cp_wall(void);
void cp_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cp_apply(cs_ctl *c, cs_scfg *cfg, cs_err *err);  /* takes cfg */
void cp_delete_all(cs_ctl *c);
void cp_scale(cs_ctl *c, cp_dep *d, int n);
cp_app *cp_find_app(cs_ctl *c, const char *name);
cp_dep *cp_find_dep(cp_app *a, const char *name);
int cp_running(const cp_dep *d);
void cp_replica_done_request(cs_ctl *c, cp_replica *r); /* a forwarded request finished */
void cp_check_done(cs_ctl *c, cp_replica *r, CURLcode res, long status); /* a stats check finished */
int cp_authorized(cs_ctl *c, cs_http_req *r);

/* router.c */
cp_fwd *cp_fwd_new(cs_ctl *c, cs_http_req *r); /* HTTP thread: captures headers */
void cp_proxy_request(cs_ctl *c, cs_http_req *r);
void cp_proxy_abort(cs_ctl *c, cs_http_req *r, int why);
void cp_fwd_finished(cs_ctl *c, CURL *e, CURLcode res);
/* Power of two choices: two random replicas among the RUNNING, healthy ones
 * below max_ongoing_requests, the one with fewer ongoing requests; NULL when
 * none has room. A pure function of d (and the random draw). */
cp_replica *cp_pick(const cp_dep *d);
void cp_dispatch(cs_ctl *c, cp_dep *d);          /* queued requests -> free replicas */
void cp_fail_queue(cs_ctl *c, cp_dep *d, int status, const char *msg);
void cp_respond_json(cs_http_req *r, int status, json_t *o); /* takes o */
void cp_respond_error(cs_http_req *r, int status, const char *type, const char *msg);
int cp_render_metrics(cs_ctl *c, char **out, size_t *len);
void cp_series_add(cs_ctl *c, const char *app, const char *route, const char *method, int status, double ms);
extern const double cp_lat_bounds[CP_LAT_BUCKETS];

/* admin.c */
enum { CP_API_ANY, CP_API_DECLARATIVE, CP_API_IMPERATIVE }; /* ?api_type= */
void cp_admin_request(cs_ctl *c, cs_http_req *r, int api_type);
/* ServeInstanceDetails; api_type CP_API_IMPERATIVE lists no application (every
 * application here comes from a config: "declarative"). */
json_t *cp_status_json(cs_ctl *c, int api_type);

#endif
