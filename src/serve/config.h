/* cs_scfg: the Serve config, Ray Serve's own schema (ServeDeploySchema: what
 * `serve deploy` sends and what a RayService's spec.serveConfigV2 holds),
 * read from YAML or JSON, or from a whole RayService manifest (then its
 * spec.serveConfigV2 string is the config). Defaults are Ray 2.50's
 * (../shared/ref/ray-serve/CONTRACT.md §1) except where noted below.
 *
 * Two kinds of errors, as Ray has them:
 *   - schema errors (not YAML/JSON, wrong types, out-of-range values, unknown
 *     enum values, duplicate application names or route prefixes, min > max,
 *     an int num_replicas with autoscaling_config, a YAML alias bomb, a file
 *     over CS_SCFG_MAX_BYTES, nesting deeper than CS_SCFG_MAX_DEPTH): the parse
 *     fails; err holds one line naming the field, e.g.
 *     "config.yaml:12:7: applications[0].deployments[0].max_ongoing_requests:
 *     expected an integer > 0, got \"x\"" (file:line:col only for YAML/JSON
 *     text; for a json_t document the field path alone);
 *   - application errors (an unknown import_path, a route_prefix that does not
 *     start with '/', ends with '/' or holds '{' '}', a deployment name the
 *     application does not have, bad args or user_config for a built-in
 *     application): the parse succeeds and that application's `error` says why
 *     (the admin API then shows it DEPLOY_FAILED; `cserve serve --config`
 *     refuses to start).
 *
 * Built-in applications (import_path):
 *   cserve.apps:text_generation   the seed's /text/simple-gen route + the OpenAI API;
 *                                 deployment TextGenService; args: model (default
 *                                 "distilgpt2"), dtype (fp32|bf16|int8, default fp32),
 *                                 kv_cache_mb (each replica's KV cache memory, default 0:
 *                                 room for every sequence at full context), kv_cache_dtype
 *                                 (auto|fp32|bf16|int8, default auto: fp32 for fp32 weights,
 *                                 bf16 for bf16/int8; all generators of the app), and
 *                                 cserve's extensions (all inside args, so Ray's schema
 *                                 accepts the file):
 *       versions: {NAME: {model, dtype}}   more generator deployments (A/B versions)
 *       traffic: {DEPLOYMENT: weight, ...} how requests are split between generators
 *                                          (default: all to TextGenService)
 *       session_header: NAME               a request header whose value pins a client to
 *                                          one side (by hash)
 *       mirror: {deployment: NAME, percent: P}  a copy of P% of the requests goes to NAME;
 *                                          its answers are discarded (shadow traffic)
 *       fallback: {FROM: TO}               FROM overloaded or without replicas -> TO
 *       preprocess: {...}                  a Preprocessor deployment (cserve.apps:clean_text)
 *                                          cleans each request before the generator
 *       remote: {DEPLOYMENT: {replicas: ["HOST:PORT", ...]}}   the deployment's replicas are
 *                                          `cserve replica --listen` processes on other hosts
 *               {DEPLOYMENT: {dns: "NAME:PORT", refresh_s: S}} ... or every address NAME
 *                                          resolves to (a Kubernetes headless Service), looked
 *                                          up again every S seconds (default 5); no local
 *                                          process is started and autoscaling does not apply
 *                                          (serve/remote.h)
 *   serve_app:deployment_graph    the seed's own import path: the same application
 *                                 with model distilgpt2
 *
 * cserve's defaults that differ from Ray's:
 *   max_ongoing_requests 32 for TextGenService (Ray: 5): a continuous-batching
 *   replica decodes all its ongoing requests in one batched step, so 5 would
 *   leave most of its throughput unused.
 *
 * Ownership: a cs_scfg owns everything it points to (json_t references
 * included). Not thread-safe; read-only use from several threads is fine. */
#ifndef CS_SERVE_CONFIG_H
#define CS_SERVE_CONFIG_H

#include <jansson.h>
#include <stddef.h>

#include "engine/err.h"

#define CS_SCFG_MAX_BYTES ((size_t)1 << 20) /* config text (YAML/JSON) */
#define CS_SCFG_MAX_DEPTH 32                /* nesting of mappings/sequences */
#define CS_SCFG_MAX_NODES 100000            /* YAML nodes after alias expansion (bomb guard) */
#define CS_SCFG_MAX_APPS 64
#define CS_SCFG_MAX_DEPLOYMENTS 16 /* per application */
#define CS_SCFG_MAX_NAME 128       /* bytes of an application or deployment name */
#define CS_SCFG_MAX_PREFIX 256     /* bytes of a route prefix */
#define CS_SCFG_MAX_REPLICAS 64    /* num_replicas / max_replicas */
#define CS_SCFG_TEXTGEN_MAX_ONGOING 32
#define CS_SCFG_PRE_MAX_ONGOING 64 /* a Preprocessor replica: cheap requests */
#define CS_SCFG_MAX_REMOTE 64      /* addresses in a static args.remote list */
#define CS_SCFG_MAX_HOSTPORT 128   /* bytes of a "HOST:PORT" in args.remote */
#define CS_SCFG_REMOTE_REFRESH_S 5.0 /* args.remote's default DNS refresh_s */

typedef enum cs_scfg_app_kind {
    CS_APP_UNKNOWN = 0,     /* import_path not built in (app->error says so) */
    CS_APP_TEXT_GENERATION, /* cserve.apps:text_generation, serve_app:deployment_graph */
} cs_scfg_app_kind;

typedef struct cs_scfg_autoscaling {
    int min_replicas;               /* 1 */
    int initial_replicas;           /* -1: null */
    int max_replicas;               /* 1 */
    double target_ongoing_requests; /* 2 */
    double look_back_period_s;      /* 30 */
    double metrics_interval_s;      /* 10 */
    double smoothing_factor;        /* 1 */
    double upscaling_factor;        /* -1: null (falls back to smoothing_factor) */
    double downscaling_factor;      /* -1: null */
    double upscale_delay_s;         /* 30 */
    double downscale_delay_s;       /* 600 */
    double downscale_to_zero_delay_s; /* -1: null */
} cs_scfg_autoscaling;

typedef enum cs_scfg_role {
    CS_DEP_GENERATOR = 0, /* TextGenService or a version from args.versions: runs a model */
    CS_DEP_PREPROCESSOR,  /* Preprocessor (cserve.apps:clean_text), from args.preprocess */
    CS_DEP_OTHER          /* a deployment of an application that is not built in */
} cs_scfg_role;

typedef struct cs_scfg_deployment {
    char name[CS_SCFG_MAX_NAME];
    cs_scfg_role role;
    char model[1024];    /* generator: its model (directory or Hub name) */
    char dtype[8];       /* generator: fp32 | bf16 | int8 */
    int kv_cache_mb;     /* generator: args.kv_cache_mb (0: room for every sequence at full context) */
    char kv_dtype[8];    /* generator: args.kv_cache_dtype, fp32 | bf16 | int8 ("": auto) */
    double weight;       /* generator: its share of the application's traffic (args.traffic) */
    char fallback[CS_SCFG_MAX_NAME]; /* args.fallback: where requests go when this one is
                                        overloaded or has no replicas ("" none) */
    json_t *clean_opts;  /* preprocessor: the args.preprocess object */
    int num_replicas;    /* fixed count (when !autoscaling); 1 */
    int autoscaling;     /* 1: autoscaling_config given, or num_replicas "auto" */
    cs_scfg_autoscaling as;
    int max_ongoing_requests; /* > 0; see the defaults above */
    int max_queued_requests;  /* -1: no limit (Ray's default), else >= 1 */
    json_t *user_config;      /* NULL when absent */
    double graceful_shutdown_wait_loop_s; /* 2 */
    double graceful_shutdown_timeout_s;   /* 20 */
    double health_check_period_s;         /* 10 */
    double health_check_timeout_s;        /* 30 */
    double num_cpus;                      /* ray_actor_options.num_cpus; 0: not given */
    json_t *remote; /* args.remote.NAME, normalized: {"replicas": ["HOST:PORT", ...]} or
                       {"dns": "NAME:PORT", "refresh_s": S}; NULL: local replica processes */
    json_t *given;  /* the deployment object as written (for deployed_app_config);
                       NULL for a deployment the config does not name */
} cs_scfg_deployment;

/* A built-in application's resolved args. */
typedef struct cs_scfg_textgen {
    char model[1024]; /* TextGenService's model: directory or Hub name */
    char dtype[8];    /* fp32 | bf16 | int8 */
    int kv_cache_mb;  /* args.kv_cache_mb: each replica's KV cache memory (0: full context per sequence) */
    char kv_dtype[8]; /* args.kv_cache_dtype: fp32 | bf16 | int8 ("": auto, by the weights) */
    char session_header[64];            /* args.session_header: pins a client to one version ("" none) */
    char mirror[CS_SCFG_MAX_NAME];      /* args.mirror.deployment: shadow traffic target ("" none) */
    double mirror_percent;              /* args.mirror.percent, 0..100 */
    int preprocess;                     /* 1: a Preprocessor deployment runs before the generators */
} cs_scfg_textgen;

typedef struct cs_scfg_app {
    char name[CS_SCFG_MAX_NAME];          /* "default" when absent */
    char route_prefix[CS_SCFG_MAX_PREFIX]; /* "/" when absent; "" when null (no HTTP route) */
    char import_path[1024];
    cs_scfg_app_kind kind;
    cs_scfg_textgen textgen;   /* kind == CS_APP_TEXT_GENERATION */
    json_t *args;              /* {} when absent */
    cs_scfg_deployment *deps;  /* every deployment of the application, configured or not
                                  (a text_generation app always has its TextGenService,
                                  with defaults when the config does not name it) */
    size_t n_deps;
    json_t *given;             /* the application object as written */
    char error[CS_ERR_MAX];    /* non-empty: the application cannot be deployed (why) */
} cs_scfg_app;

typedef struct cs_scfg {
    char proxy_location[16];   /* EveryNode | HeadOnly | Disabled */
    char host[256];            /* http_options.host, "0.0.0.0" */
    int port;                  /* http_options.port, 8000 */
    char root_path[256];       /* "" */
    double request_timeout_s;  /* <= 0: none (Ray's null) */
    double keep_alive_timeout_s; /* 90 */
    double target_capacity;    /* -1: null, else 0..100 */
    cs_scfg_app *apps;
    size_t n_apps;
    json_t *doc;               /* the whole config as a JSON document (what was deployed) */
} cs_scfg;

/* Parses YAML or JSON text (a Serve config or a RayService manifest). origin
 * names the text in errors (a file name, "request body"). */
int cs_scfg_parse(cs_scfg **out, const char *text, size_t len, const char *origin, cs_err *err);
/* Reads and parses a file (at most CS_SCFG_MAX_BYTES). */
int cs_scfg_load_file(cs_scfg **out, const char *path, cs_err *err);
/* Validates a JSON document (a PUT body already parsed); doc is not kept
 * (cs_scfg holds its own reference/copy). */
int cs_scfg_from_json(cs_scfg **out, const json_t *doc, cs_err *err);
void cs_scfg_free(cs_scfg *c); /* NULL is a no-op */

/* The application's deployment of that name, or NULL. */
const cs_scfg_deployment *cs_scfg_find_deployment(const cs_scfg_app *a, const char *name);

/* Ray's `deployment_config` object for GET /api/serve/applications/: every
 * field with its effective value (autoscaling_config only when autoscaling;
 * num_replicas only when not), as status-running.json shows it. New reference. */
json_t *cs_scfg_deployment_config_json(const cs_scfg_deployment *d);

/* Splits "HOST:PORT" ("[V6]:PORT" for an IPv6 literal) into host (without the
 * brackets; a DNS name, an IPv4 or an IPv6 address) and port (1..65535).
 * Returns 0, or -1 with *why saying what is wrong (a static string). Pure. */
int cs_scfg_hostport(const char *s, char *host, size_t cap, int *port, const char **why);

/* target_capacity applied to a replica count: n -> 0 if capacity or n is 0,
 * else max(1, round-half-up(n * capacity / 100)); capacity < 0: n. */
int cs_scfg_apply_capacity(int n, double capacity);

#endif
