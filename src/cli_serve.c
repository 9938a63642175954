/* cserve serve: the HTTP model server (one process: HTTP front end, the
 * continuous-batching scheduler and the engine).
 *
 * Start-up: bind the port first (healthz answers 503 while the model is
 * downloaded and loaded), find the model, load it, then announce "listening",
 * start the scheduler, and healthz says 200. Every fatal start error (port in
 * use, no model, Hub unreachable, bad weights) is one plain "cserve: ..." line
 * on stderr before any "listening" line, and the exit status is 1. SIGTERM/SIGINT:
 * healthz 503 and new generation requests 503, running and queued requests
 * finish (up to --graceful-shutdown-timeout-s), responses are flushed, and the
 * process exits 0. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "engine/model.h"
#include "engine/threadpool.h"
#include "hub/hub.h"
#include "http/http.h"
#include "serve/api.h"
#include "serve/config.h"
#include "serve/controller.h"
#include "serve/metrics.h"
#include "serve/sched.h"

int cs_cmd_serve(int argc, char **argv);

#define SERVE_DEFAULT_MODEL "distilgpt2"
#define SERVE_FLUSH_TIMEOUT_S 5.0 /* after draining: time to send the last responses */
#define SERVE_KEY_FILE_MAX ((size_t)64 << 10)
#define SERVE_BUNDLED_MODEL "build/models/distil" /* `make models`: synthetic, needs no network */
#define SERVE_CORS_MAX (CS_HTTP_MAX_CORS_ORIGINS * (CS_HTTP_MAX_ORIGIN + 2))

static void usage(FILE *f) {
    fprintf(f,
            "usage: cserve serve [options]\n\n"
            "Serves a GPT-2 model over HTTP: POST /text/simple-gen (the seed's API), POST /v1/completions,\n"
            "POST /v1/chat/completions and GET /v1/models (OpenAI), GET /-/healthz, /-/routes, /metrics.\n\n"
            "  --model DIR|NAME                 model directory or Hub name (default: " SERVE_DEFAULT_MODEL ")\n"
            "  --host ADDR                      listen address (default 0.0.0.0)\n"
            "  --port N                         listen port (default 8000; 0: any free port)\n"
            "  --route-prefix P                 where the application is mounted (default /)\n"
            "  --max-ongoing-requests N         sequences decoded together (default 32)\n"
            "  --max-queued-requests N          waiting requests before 503 (default 256)\n"
            "                                   (both count sequences: prompts x n of each request)\n"
            "  --max-stream-duration-s S        a request (streamed or not) still generating after S seconds\n"
            "                                   ends with finish_reason \"length\" (default 600; 0: no limit)\n"
            "  --request-timeout-s S            408 when no response has started after S seconds (default 60)\n"
            "  --keep-alive-timeout-s S         idle keep-alive connections are closed after S (default 90)\n"
            "  --header-timeout-s S             a connection must send complete headers within S (default 10)\n"
            "  --min-body-rate B                request bodies slower than B bytes/s after the header timeout\n"
            "                                   are cut (default 1024; 0: no minimum)\n"
            "  --max-connections N              open connections (default 4096, or fewer file descriptors)\n"
            "  --max-connections-per-ip N       open connections per client address (default: half of\n"
            "                                   --max-connections; 0: no cap)\n"
            "  --graceful-shutdown-timeout-s S  on SIGTERM, time allowed to finish requests (default 20)\n"
            "  --dtype fp32|bf16|int8           weight format (default fp32)\n"
            "  --threads N                      compute threads (default: CPUs available)\n"
            "  --kv-cache-mb N                  memory for the KV cache, shared by all sequences in blocks of\n"
            "                                   16 tokens (default 0: room for every sequence at full context);\n"
            "                                   when it is full the newest sequence waits and is computed again\n"
            "  --kv-cache-dtype auto|fp32|bf16|int8\n"
            "                                   KV cache element type (default auto: fp32 for fp32 weights, bf16\n"
            "                                   for bf16 and int8 ones; bf16: half the memory, int8: 27%% of it,\n"
            "                                   a scale per head row)\n"
            "  --api-key-file F                 API keys, one per line; also CSERVE_API_KEYS=k1,k2; a key may be\n"
            "                                   followed by max_ongoing=N (its own limit, as below)\n"
            "  --max-ongoing-per-key N          generation requests one API key may have in flight; more get 429\n"
            "                                   + Retry-After (default 0: no limit; keys' own max_ongoing= win)\n"
            "  --cors-origin ORIGIN             let browser pages from ORIGIN (https://app.example:8080) call the\n"
            "                                   API; repeat it or give a comma list; * allows any origin (default: off)\n"
            "  --no-access-log                  no per-request log lines on stderr\n"
            "  --pipeline-defaults 4.57|4.51    generation defaults of transformers >= 4.52 (default: 256 new\n"
            "                                   tokens, temperature 0.7) or <= 4.51 (distilgpt2: max_length 50)\n"
            "  --chat-template FILE|JSON        the plain-text chat template of POST /v1/chat/completions: a JSON\n"
            "                                   object, or a file holding one (default: System:/User:/Assistant:\n"
            "                                   turns; README \"Chat completions\")\n\n"
            "cserve serve --config FILE | cserve serve FILE: a Ray Serve config (YAML or JSON) or a RayService\n"
            "manifest: several applications, replicas as processes, the admin API (serve deploy/status/...).\n"
            "  --host ADDR --port N             proxy listener (default: the config's http_options)\n"
            "  --admin-host ADDR                admin API address (default 127.0.0.1)\n"
            "  --admin-port N                   admin API port (default 8265; 0: any free port)\n"
            "  --api-key-file F, --max-ongoing-per-key N, --cors-origin O, --no-access-log,\n"
            "  --graceful-shutdown-timeout-s S, --header-timeout-s S, --min-body-rate B, --max-connections N,\n"
            "  --max-connections-per-ip N       as above, for the proxy listener\n"
            "The model's options (--model, --dtype, --kv-cache-*, --threads, --max-ongoing-requests, ...)\n"
            "are refused here: the config sets them (args, the deployment, http_options).\n\n"
            "cserve router --config FILE: the same, for a config whose deployments all have remote replicas\n"
            "(args.remote: `cserve replica --listen HOST:PORT` on other hosts, a static list or a DNS name);\n"
            "refuses a config that would start local replica processes.\n\n"
            "Environment:\n"
            "  CSERVE_API_KEYS          API keys, comma-separated (with or instead of --api-key-file)\n"
            "  HF_HOME                  Hugging Face home (default ~/.cache/huggingface; XDG_CACHE_HOME too)\n"
            "  HF_HUB_CACHE             model cache (default $HF_HOME/hub; HUGGINGFACE_HUB_CACHE too)\n"
            "  HF_HUB_OFFLINE=1         use cached models only, never the network (TRANSFORMERS_OFFLINE too)\n"
            "  HF_ENDPOINT              Hub URL (default https://huggingface.co)\n"
            "  HF_TOKEN                 Hub access token (HUGGING_FACE_HUB_TOKEN, or the file HF_TOKEN_PATH,\n"
            "                           default $HF_HOME/token)\n"
            "  HF_HUB_ETAG_TIMEOUT      seconds to connect to the Hub before giving up (default 10)\n"
            "  CS_CACHE_DIR             packed-weights cache for --dtype bf16/int8 (default\n"
            "                           $XDG_CACHE_HOME/cserve or ~/.cache/cserve); CS_NO_CACHE=1: none\n"
            "  CS_THREADS               compute threads when --threads is not given\n"
            "  CS_KERNELS=scalar|avx2   use no wider CPU kernels than these (default: the best available)\n"
            "  CS_POOL_ADAPT, CS_POOL_SPIN_US, CS_POOL_CHUNKS  thread pool tuning (benchmarks)\n"
            "  COLUMNS                  download progress bar width when the terminal does not tell\n"
            "  HOME                     base of the default caches above\n\n"
            "With no network: --model " SERVE_BUNDLED_MODEL " (after `make models`) needs no download;\n"
            "`cserve pull MODEL` on a connected machine fills a cache that can be copied here.\n");
}

/* --cors-origin, repeated: joined with commas into out (cs_http parses the list). */
static int cors_add(char *out, size_t cap, const char *v) {
    size_t n = strlen(out);
    int k = snprintf(out + n, cap - n, "%s%s", n ? "," : "", v);
    if (k < 0 || (size_t)k >= cap - n) {
        fprintf(stderr, "cserve serve: --cors-origin: too many origins\n");
        return -1;
    }
    return 0;
}

/* A fatal start error: one plain line (no JSON log record: nothing is serving yet). */
static void start_error(const char *msg) { fprintf(stderr, "cserve: %s\n", msg); }

/* After a model name could not be resolved: what serves without the Hub. */
static void hint_local_model(void) {
    struct stat st;
    if (stat(SERVE_BUNDLED_MODEL "/config.json", &st) == 0)
        fprintf(stderr, "cserve: to try cserve with no download, serve the synthetic model that `make models` built: "
                        "make run MODEL=" SERVE_BUNDLED_MODEL " (or cserve serve --model " SERVE_BUNDLED_MODEL ")\n");
    else
        fprintf(stderr, "cserve: to serve without the Hub, give a model directory (config.json, model.safetensors, "
                        "vocab.json, merges.txt): cserve serve --model DIR; `make models` builds a synthetic one in "
                        SERVE_BUNDLED_MODEL "\n");
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "cserve serve: %s: expected a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

typedef struct keys {
    char *v[CS_API_MAX_KEYS];
    int lim[CS_API_MAX_KEYS]; /* max_ongoing=N after the key; -1: not given (--max-ongoing-per-key) */
    size_t n;
} keys;

/* The options after a key ("max_ongoing=N"); -1 on an error (printed). */
static int key_opts(const char *b, const char *e, int *lim, const char *origin) {
    *lim = -1;
    while (b < e) {
        while (b < e && (*b == ' ' || *b == '\t')) b++;
        const char *t = b;
        while (b < e && *b != ' ' && *b != '\t') b++;
        if (t == b) break;
        static const char opt[] = "max_ongoing=";
        char num[16];
        size_t ol = sizeof opt - 1, nl = (size_t)(b - t) - ol;
        char *end = NULL;
        long v = -1;
        if ((size_t)(b - t) > ol && !strncmp(t, opt, ol) && nl < sizeof num) {
            memcpy(num, t + ol, nl);
            num[nl] = 0;
            errno = 0;
            v = strtol(num, &end, 10);
            if (errno || *end || v < 0 || v > 1000000) v = -1;
        }
        if (v < 0) {
            fprintf(stderr, "cserve serve: %s: after a key, expected max_ongoing=N (N in [0, 1000000]), got '%.*s'\n",
                    origin, (int)(b - t > 64 ? 64 : b - t), t);
            return -1;
        }
        *lim = (int)v;
    }
    return 0;
}

static void keys_free(keys *k) {
    for (size_t i = 0; i < k->n; i++) {
        memset(k->v[i], 0, strlen(k->v[i]));
        free(k->v[i]);
    }
    k->n = 0;
}

/* Adds the keys in s (separated by any of seps), trimmed; '#' starts a comment line. */
static int keys_add(keys *k, const char *s, const char *seps, const char *origin) {
    while (*s) {
        size_t n = strcspn(s, seps);
        const char *b = s, *e = s + n;
        while (b < e && (*b == ' ' || *b == '\t' || *b == '\r')) b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) e--;
        if (e > b && *b != '#') {
            if (k->n == CS_API_MAX_KEYS) {
                fprintf(stderr, "cserve serve: %s: more than %d API keys\n", origin, CS_API_MAX_KEYS);
                return -1;
            }
            const char *ke = b; /* the key ends at the first blank; options may follow */
            while (ke < e && *ke != ' ' && *ke != '\t') ke++;
            if ((size_t)(ke - b) > CS_API_MAX_KEY_BYTES) {
                fprintf(stderr, "cserve serve: %s: an API key is longer than %d bytes\n", origin, CS_API_MAX_KEY_BYTES);
                return -1;
            }
            if (key_opts(ke, e, &k->lim[k->n], origin)) return -1;
            if (!(k->v[k->n] = strndup(b, (size_t)(ke - b)))) return -1;
            k->n++;
        }
        s += n;
        if (*s) s++;
    }
    return 0;
}

static int keys_load_file(keys *k, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cserve serve: --api-key-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(SERVE_KEY_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, SERVE_KEY_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n > SERVE_KEY_FILE_MAX) {
        fprintf(stderr, "cserve serve: --api-key-file %s: %s\n", path, buf ? "larger than 64 KiB" : "out of memory");
        free(buf);
        return -1;
    }
    buf[n] = 0;
    int rc = keys_add(k, buf, "\n", path);
    memset(buf, 0, n);
    free(buf);
    if (rc == 0 && k->n == 0) {
        fprintf(stderr, "cserve serve: --api-key-file %s: no keys in the file\n", path);
        return -1;
    }
    return rc;
}

/* --api-key-file, then CSERVE_API_KEYS; keys without their own max_ongoing=
 * get per_key (0: no limit). */
static int keys_load(keys *k, const char *key_file, int per_key) {
    if (key_file && keys_load_file(k, key_file)) return -1;
    const char *env_keys = getenv("CSERVE_API_KEYS");
    if (env_keys && keys_add(k, env_keys, ",", "CSERVE_API_KEYS")) {
        keys_free(k);
        return -1;
    }
    for (size_t i = 0; i < k->n; i++)
        if (k->lim[i] < 0) k->lim[i] = per_key;
    if (per_key > 0 && k->n == 0) {
        fprintf(stderr, "cserve serve: --max-ongoing-per-key needs API keys (--api-key-file or CSERVE_API_KEYS)\n");
        return -1;
    }
    return 0;
}

/* Only the main thread takes SIGINT/SIGTERM (sigwait); every thread started
 * after this inherits the blocked mask. */
static void block_signals(sigset_t *sigs) {
    sigemptyset(sigs);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The name /v1/models reports: the argument, or a directory's base name. */
static void model_name(const char *arg, int is_dir, char *out, size_t cap) {
    size_t n = strlen(arg);
    while (n > 1 && arg[n - 1] == '/') n--;
    const char *b = arg;
    if (is_dir)
        for (size_t i = 0; i + 1 < n; i++)
            if (arg[i] == '/') b = arg + i + 1;
    size_t len = n - (size_t)(b - arg);
    if (len >= cap) len = cap - 1;
    memcpy(out, b, len);
    out[len] = 0;
}

/* Lets the process hold many connections; returns the usable connection count. */
static int raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1000;
    rlim_t want = CS_HTTP_MAX_CONNECTIONS + 256;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    long conn = (long)rl.rlim_cur - 128;
    if (conn > CS_HTTP_MAX_CONNECTIONS) conn = CS_HTTP_MAX_CONNECTIONS;
    return conn < 16 ? 16 : (int)conn;
}

typedef struct cp_serve_opts {
    const char *config, *host, *admin_host, *key_file, *cors;
    int port, admin_port, access_log, per_key;
    double grace, hdr_to, body_rate, max_conn, max_conn_ip;
    int router;              /* `cserve router`: every deployment must be remote */
} cp_serve_opts;

/* cserve serve --config FILE: controller + proxy + admin API, replicas as
 * child processes (src/serve/controller.h). */
static int serve_config(const cp_serve_opts *so) {
    cs_err err = {{0}};
    cs_scfg *cfg = NULL;
    if (cs_scfg_load_file(&cfg, so->config, &err)) {
        fprintf(stderr, "cserve serve: %s\n", err.msg);
        return 2;
    }
    int bad = 0;
    for (size_t i = 0; i < cfg->n_apps; i++)
        if (cfg->apps[i].error[0]) {
            fprintf(stderr, "cserve serve: application '%s': %s\n", cfg->apps[i].name, cfg->apps[i].error);
            bad = 1;
        }
    for (size_t i = 0; so->router && i < cfg->n_apps; i++)
        for (size_t j = 0; j < cfg->apps[i].n_deps; j++)
            if (!cfg->apps[i].deps[j].remote) {
                fprintf(stderr, "cserve router: application '%s': deployment '%s' has no remote replicas (args.remote); "
                        "`cserve serve --config` runs local ones\n", cfg->apps[i].name, cfg->apps[i].deps[j].name);
                bad = 1;
            }
    if (bad) {
        cs_scfg_free(cfg);
        return 2;
    }
    keys k = {0};
    if (keys_load(&k, so->key_file, so->per_key)) {
        cs_scfg_free(cfg);
        return 2;
    }
    sigset_t sigs;
    block_signals(&sigs);
    int max_conn = raise_nofile();
    if (so->max_conn > 0 && so->max_conn < max_conn) max_conn = (int)so->max_conn;
    cs_ctl_opts co = {.host = so->host, .port = so->port, .admin_host = so->admin_host, .admin_port = so->admin_port,
                      .api_keys = (const char *const *)k.v, .n_api_keys = k.n, .api_key_max_ongoing = k.lim,
                      .access_log = so->access_log, .cors_origins = so->cors, .header_timeout_s = so->hdr_to,
                      .min_body_rate = so->body_rate > 0 ? so->body_rate : -1, .max_connections = max_conn,
                      .max_connections_per_ip = so->max_conn_ip < 0 ? max_conn / 2 : (int)so->max_conn_ip};
    cs_ctl *ctl = NULL;
    int rc = cs_ctl_start(&ctl, &co, cfg, &err);
    keys_free(&k);
    if (rc) {
        start_error(err.msg);
        return 1;
    }
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    cs_api_log("info", "signal %d: draining (up to %.0f s)", sig, so->grace);
    cs_ctl_stop(ctl, so->grace);
    cs_api_log("info", "stopped");
    return 0;
}

int cs_cmd_serve(int argc, char **argv) {
    enum { O_HOST = 256, O_PORT, O_PREFIX, O_ONGOING, O_QUEUED, O_RTO, O_KATO, O_GRACE, O_DTYPE, O_THREADS, O_KEYS,
           O_NOLOG, O_CONFIG, O_AHOST, O_APORT, O_CORS, O_PIPEDEF, O_MAXDUR,
           O_HDRTO, O_BODYRATE, O_MAXCONN, O_MAXCONNIP, O_PERKEY, O_CHAT, O_KVMB, O_KVDT };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},
        {"route-prefix", required_argument, 0, O_PREFIX},
        {"max-ongoing-requests", required_argument, 0, O_ONGOING},
        {"max-queued-requests", required_argument, 0, O_QUEUED},
        {"request-timeout-s", required_argument, 0, O_RTO},
        {"keep-alive-timeout-s", required_argument, 0, O_KATO},
        {"graceful-shutdown-timeout-s", required_argument, 0, O_GRACE},
        {"dtype", required_argument, 0, O_DTYPE},
        {"threads", required_argument, 0, O_THREADS},
        {"api-key-file", required_argument, 0, O_KEYS},
        {"no-access-log", no_argument, 0, O_NOLOG},
        {"config", required_argument, 0, O_CONFIG},
        {"admin-host", required_argument, 0, O_AHOST},
        {"admin-port", required_argument, 0, O_APORT},
        {"cors-origin", required_argument, 0, O_CORS},
        {"pipeline-defaults", required_argument, 0, O_PIPEDEF},
        {"max-stream-duration-s", required_argument, 0, O_MAXDUR},
        {"header-timeout-s", required_argument, 0, O_HDRTO},
        {"min-body-rate", required_argument, 0, O_BODYRATE},
        {"max-connections", required_argument, 0, O_MAXCONN},
        {"max-connections-per-ip", required_argument, 0, O_MAXCONNIP},
        {"max-ongoing-per-key", required_argument, 0, O_PERKEY},
        {"chat-template", required_argument, 0, O_CHAT},
        {"kv-cache-mb", required_argument, 0, O_KVMB},
        {"kv-cache-dtype", required_argument, 0, O_KVDT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = SERVE_DEFAULT_MODEL, *host = "0.0.0.0", *prefix = "/", *key_file = NULL;
    double port = 8000, ongoing = 32, queued = 256, rto = 60, kato = 90, grace = 20, threads = 0;
    double max_dur = CS_SCHED_MAX_DURATION_S;
    double hdr_to = CS_HTTP_HEADER_TIMEOUT_S, body_rate = CS_HTTP_MIN_BODY_RATE, max_conn = 0, max_conn_ip = -1;
    double per_key = 0, kv_mb = 0;
    const char *kv_arg = "auto";
    int access_log = 1, c, port_set = 0, host_set = 0;
    const char *config = NULL, *admin_host = "127.0.0.1";
    double admin_port = 8265;
    static char cors[SERVE_CORS_MAX];
    cors[0] = 0;
    cs_gpt2_opts mopts = {0};
    json_t *pipedef = NULL; /* --pipeline-defaults, as the user_config key */
    const char *chat_tpl = NULL;
    /* Options only the single-model server reads, and where a config sets the same thing
     * (NULL: nowhere): with --config they are refused rather than silently ignored. */
    static const struct {
        int val;
        const char *where;
    } solo[] = {{'m', "the application's args.model"},
                {O_PREFIX, "the application's route_prefix"},
                {O_ONGOING, "the deployment's max_ongoing_requests"},
                {O_QUEUED, "the deployment's max_queued_requests"},
                {O_RTO, "http_options.request_timeout_s"},
                {O_KATO, "http_options.keep_alive_timeout_s"},
                {O_DTYPE, "the application's args.dtype"},
                {O_THREADS, "the deployment's ray_actor_options.num_cpus"},
                {O_KVMB, "the application's args.kv_cache_mb"},
                {O_KVDT, "the application's args.kv_cache_dtype"},
                {O_MAXDUR, NULL}};
    int solo_given = -1; /* index in solo[] of the first one given */
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        int bad = 0;
        for (int i = 0; solo_given < 0 && i < (int)(sizeof solo / sizeof solo[0]); i++)
            if (solo[i].val == c) solo_given = i;
        switch (c) {
        case 'm': model = optarg; break;
        case O_HOST: host = optarg, host_set = 1; break;
        case O_PORT: bad = parse_num("--port", optarg, 0, 65535, &port), port_set = 1; break;
        case O_PREFIX: prefix = optarg; break;
        case O_ONGOING: bad = parse_num("--max-ongoing-requests", optarg, 1, 4096, &ongoing); break;
        case O_QUEUED: bad = parse_num("--max-queued-requests", optarg, 0, 1 << 20, &queued); break;
        case O_MAXDUR: bad = parse_num("--max-stream-duration-s", optarg, 0, 1e7, &max_dur); break;
        case O_RTO: bad = parse_num("--request-timeout-s", optarg, 0.05, 86400, &rto); break;
        case O_KATO: bad = parse_num("--keep-alive-timeout-s", optarg, 1, 86400, &kato); break;
        case O_HDRTO: bad = parse_num("--header-timeout-s", optarg, 0.05, 86400, &hdr_to); break;
        case O_BODYRATE: bad = parse_num("--min-body-rate", optarg, 0, 1e12, &body_rate); break;
        case O_MAXCONN: bad = parse_num("--max-connections", optarg, 1, 1 << 20, &max_conn); break;
        case O_MAXCONNIP: bad = parse_num("--max-connections-per-ip", optarg, 0, 1 << 20, &max_conn_ip); break;
        case O_PERKEY: bad = parse_num("--max-ongoing-per-key", optarg, 0, 1000000, &per_key); break;
        case O_GRACE: bad = parse_num("--graceful-shutdown-timeout-s", optarg, 0, 86400, &grace); break;
        case O_DTYPE:
            if (cs_wdtype_parse(optarg, &mopts.dtype)) {
                fprintf(stderr, "cserve serve: --dtype: expected fp32, bf16 or int8, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_THREADS: bad = parse_num("--threads", optarg, 1, 1024, &threads); break;
        case O_KVMB:
            bad = parse_num("--kv-cache-mb", optarg, 0, 1 << 30, &kv_mb);
            if (!bad && kv_mb != (double)(int)kv_mb) {
                fprintf(stderr, "cserve serve: --kv-cache-mb: expected a whole number of MB, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_KVDT: {
            cs_kvdtype kv_check;
            if (cs_kvdtype_resolve(optarg, CS_W_F32, &kv_check)) {
                fprintf(stderr, "cserve serve: --kv-cache-dtype: expected auto, fp32, bf16 or int8, got '%s'\n",
                        optarg);
                bad = 1;
            }
            kv_arg = optarg;
            break;
        }
        case O_KEYS: key_file = optarg; break;
        case O_NOLOG: access_log = 0; break;
        case O_CONFIG: config = optarg; break;
        case O_AHOST: admin_host = optarg; break;
        case O_APORT: bad = parse_num("--admin-port", optarg, 0, 65535, &admin_port); break;
        case O_CORS: bad = cors_add(cors, sizeof cors, optarg); break;
        case O_CHAT: chat_tpl = optarg; break;
        case O_PIPEDEF: {
            cs_pipeline_defaults pd;
            json_decref(pipedef);
            pipedef = json_pack("{s:s}", "pipeline_defaults", optarg);
            if (cs_pipeline_defaults_parse(optarg, &pd) || !pipedef) {
                fprintf(stderr, "cserve serve: --pipeline-defaults: expected 4.57 or 4.51, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (!config && optind + 1 == argc) config = argv[optind++];
    const int router = argc > 0 && !strcmp(argv[0], "router"); /* main.c: `cserve router` */
    if (router && !config) {
        fprintf(stderr, "cserve router: --config FILE is required\n");
        return 2;
    }
    if (config) {
        cp_serve_opts so = {.config = config, .host = host_set ? host : NULL, .port = port_set ? (int)port : -1,
                            .admin_host = admin_host, .admin_port = (int)admin_port, .key_file = key_file,
                            .access_log = access_log, .grace = grace, .cors = cors, .per_key = (int)per_key,
                            .hdr_to = hdr_to, .body_rate = body_rate, .max_conn = max_conn,
                            .max_conn_ip = max_conn_ip, .router = router};
        if (optind != argc || pipedef || chat_tpl || solo_given >= 0) {
            if (pipedef) fprintf(stderr, "cserve serve: --pipeline-defaults: with a config, set it in the "
                                         "deployment's user_config (pipeline_defaults: \"4.51\")\n");
            else if (chat_tpl) fprintf(stderr, "cserve serve: --chat-template: with a config, set it in the "
                                               "deployment's user_config (chat_template: {...})\n");
            else if (solo_given >= 0) {
                const char *name = "?";
                for (const struct option *o = opts; o->name; o++)
                    if (o->val == solo[solo_given].val) name = o->name;
                if (solo[solo_given].where)
                    fprintf(stderr, "cserve serve: --%s: with a config, set it in %s\n", name, solo[solo_given].where);
                else
                    fprintf(stderr, "cserve serve: --%s: not read with a config (its replicas finish a generation "
                                    "after %.0f s)\n", name, CS_SCHED_MAX_DURATION_S);
            }
            else fprintf(stderr, "cserve serve: unexpected argument '%s'\n", argv[optind]);
            json_decref(pipedef);
            return 2;
        }
        return serve_config(&so);
    }
    if (optind != argc) {
        fprintf(stderr, "cserve serve: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (prefix[0] != '/') {
        fprintf(stderr, "cserve serve: --route-prefix must start with '/', got '%s'\n", prefix);
        return 2;
    }
    keys k = {0};
    if (keys_load(&k, key_file, (int)per_key)) return 2;
    sigset_t sigs;
    block_signals(&sigs);

    int rc = 1, reported = 0;
    cs_err err = {{0}};
    cs_metrics *metrics = NULL;
    cs_api *api = NULL;
    cs_http *http = NULL;
    cs_model *m = NULL;
    cs_sched *sched = NULL;
    struct stat st;
    const int is_dir = stat(model, &st) == 0 && S_ISDIR(st.st_mode);
    char name[256];
    model_name(model, is_dir, name, sizeof name);

    cs_api_opts ao = {.model_name = name, .model_arg = model, .route_prefix = prefix, .app_name = "transformer-app",
                      .api_keys = (const char *const *)k.v, .n_api_keys = k.n, .api_key_max_ongoing = k.lim,
                      .access_log = access_log};
    if (cs_metrics_create(&metrics, &err) || cs_api_create(&api, &ao, metrics, &err)) goto out;
    if (chat_tpl && cs_api_set_chat_template(api, chat_tpl, &err)) goto out; /* before loading: fail fast */
    keys_free(&k);
    cs_http_opts ho = {.host = host, .port = (int)port, .request_timeout_s = rto, .keep_alive_timeout_s = kato,
                       .max_connections = raise_nofile(), .cors_origins = cors, .header_timeout_s = hdr_to,
                       .min_body_rate = body_rate > 0 ? body_rate : -1, .max_connections_per_ip = (int)max_conn_ip};
    if (max_conn > 0 && max_conn < ho.max_connections) ho.max_connections = (int)max_conn;
    if (max_conn_ip < 0) ho.max_connections_per_ip = ho.max_connections / 2; /* one address never takes all */
    cs_http_handlers hh = cs_api_handlers(api);
    if (cs_http_start(&http, &ho, &hh, &err)) goto out;

    /* Loading may take long (a download): let a signal end the process now. */
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    char dir[CS_HUB_PATH_MAX];
    if (is_dir) {
        snprintf(dir, sizeof dir, "%s", model);
    } else if (cs_hub_resolve(model, dir, sizeof dir, 1, &err)) {
        pthread_sigmask(SIG_BLOCK, &sigs, NULL);
        start_error(err.msg);
        hint_local_model();
        reported = 1;
        goto out;
    }
    int lrc = cs_model_load_opts(&m, dir, &mopts, &err);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (lrc) goto out;
    cs_api_log("info", "listening on %s:%d", host, cs_http_port(http));
    cs_kvdtype kv_dt;
    cs_kvdtype_resolve(kv_arg, mopts.dtype, &kv_dt); /* checked while parsing */
    cs_sched_opts so = {.max_running = (int)ongoing, .max_queued = (int)queued, .threads = (int)threads,
                        .max_duration_s = max_dur > 0 ? max_dur : -1, .kv_cache_mb = (int)kv_mb, .kv_dtype = kv_dt};
    if (cs_sched_create(&sched, m, &so, &err)) goto out;
    if (pipedef && cs_api_set_user_config(api, pipedef, &err)) goto out;
    cs_api_attach(api, m, sched);
    cs_api_log("info", "ready: model %s from %s (%d layers, %d wide, context %d), %s weights, %s KV cache, "
                       "max_ongoing_requests %d, max_queued_requests %d",
               name, dir, m->net->cfg.n_layer, m->net->cfg.n_embd, m->net->cfg.n_positions,
               cs_wdtype_name(mopts.dtype), cs_kvdtype_name(kv_dt), (int)ongoing, (int)queued);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    cs_api_log("info", "signal %d: draining (up to %.0f s)", sig, grace);
    cs_api_drain(api);
    int left = cs_sched_drain(sched, grace);
    if (left) cs_api_log("warn", "%d requests still running after %.0f s; stopping them", left, grace);
    cs_api_detach(api);
    cs_sched_free(sched);
    sched = NULL;
    int busy = cs_http_wait_idle(http, SERVE_FLUSH_TIMEOUT_S);
    if (busy) cs_api_log("warn", "%d responses not sent after %.0f s; closing their connections", busy,
                         SERVE_FLUSH_TIMEOUT_S);
    rc = 0;
out:
    if (rc && !reported) start_error(err.msg[0] ? err.msg : "failed");
    keys_free(&k);
    if (api) cs_api_detach(api);
    cs_sched_free(sched);
    cs_http_stop(http);
    cs_api_free(api);
    cs_model_free(m);
    cs_metrics_free(metrics);
    json_decref(pipedef);
    if (rc == 0) cs_api_log("info", "stopped");
    return rc;
}
