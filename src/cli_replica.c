/* cserve replica: one deployment replica (engine + scheduler + the
 * application's API, or with --app clean_text the preprocessing deployment's
 * text clean-up) on a Unix socket or a TCP port. Started by `cserve serve
 * --config` for each replica; on Kubernetes, the replica pods' command. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/config.h"
#include "serve/replica.h"

int cs_cmd_replica(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f,
            "usage: cserve replica (--listen HOST:PORT | --socket PATH) --model M [options]\n"
            "       cserve replica (--listen HOST:PORT | --socket PATH) --app clean_text [--clean-opts JSON]\n\n"
            "One replica of a text-generation deployment: /text/simple-gen, /v1/completions,\n"
            "/v1/chat/completions, /v1/models, /-/healthz, plus /-/replica/stats and /-/replica/user_config for the controller.\n"
            "With --app clean_text, one replica of the preprocessing deployment (no model): POST\n"
            "/-/preprocess rewrites a generation request's body (Unicode normalization, control\n"
            "characters, whitespace, length cap, prompt template).\n\n"
            "  --app text_generation|clean_text what the replica serves (default text_generation)\n"
            "  --clean-opts JSON                clean_text options: {\"normalize\": \"NFKC\"|\"NFC\"|\"none\",\n"
            "                                   \"max_chars\": N|null, \"template\": \"...{input}...\"|null,\n"
            "                                   \"collapse_whitespace\": bool, \"strip_control\": bool}\n"
            "  --listen HOST:PORT               listen on TCP ([ADDR]:PORT for IPv6; 0.0.0.0:PORT: every\n"
            "                                   address): a replica for `cserve router` on another host\n"
            "                                   (args.remote in its config)\n"
            "  --socket PATH                    or on a Unix socket\n"
            "  --host ADDR --port N             the same as --listen ADDR:N (default host 0.0.0.0)\n"
            "  --model DIR|NAME                 model directory or Hub name\n"
            "  --model-name ID                  id in responses (default: derived from --model)\n"
            "  --app-name NAME                  application name (also accepted as \"model\")\n"
            "  --dtype fp32|bf16|int8           weight format (default fp32)\n"
            "  --threads N                      compute threads (default: CPUs available;\n"
            "                                   clean_text: worker threads, default 1)\n"
            "  --max-ongoing-requests N         sequences decoded together (default 32)\n"
            "  --max-queued-requests N          waiting requests behind them (default 4096)\n"
            "  --kv-cache-mb N                  KV cache memory shared by its sequences (default 0: room for\n"
            "                                   every sequence at full context)\n"
            "  --kv-cache-dtype auto|fp32|bf16|int8\n"
            "                                   KV cache element type (default auto: fp32 for fp32 weights,\n"
            "                                   bf16 for bf16 and int8 ones)\n"
            "  --user-config JSON               generation defaults (Ray's user_config); clean_text:\n"
            "                                   options merged over --clean-opts\n"
            "  --chat-template FILE|JSON        template of /v1/chat/completions: a JSON object, or a file\n"
            "                                   holding one (README \"Chat completions\"; a user_config's\n"
            "                                   chat_template wins over it)\n"
            "  --request-timeout-s S            (default 86400)\n"
            "  --graceful-shutdown-timeout-s S  on SIGTERM, time to finish requests (default 20)\n"
            "  --replica-id ID                  name in log lines\n"
            "  --access-log                     one JSON line per request on stderr\n");
}

static int num(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "cserve replica: %s: expected a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cs_cmd_replica(int argc, char **argv) {
    enum { O_SOCK = 256, O_HOST, O_PORT, O_NAME, O_APP, O_DTYPE, O_THREADS, O_ONGOING, O_QUEUED, O_UC, O_RTO,
           O_GRACE, O_RID, O_LOG, O_APPKIND, O_CLEAN, O_CHAT, O_LISTEN, O_KVMB, O_KVDT };
    static const struct option opts[] = {
        {"socket", required_argument, 0, O_SOCK},
        {"listen", required_argument, 0, O_LISTEN},
        {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},
        {"model", required_argument, 0, 'm'},
        {"model-name", required_argument, 0, O_NAME},
        {"app-name", required_argument, 0, O_APP},
        {"dtype", required_argument, 0, O_DTYPE},
        {"threads", required_argument, 0, O_THREADS},
        {"max-ongoing-requests", required_argument, 0, O_ONGOING},
        {"max-queued-requests", required_argument, 0, O_QUEUED},
        {"user-config", required_argument, 0, O_UC},
        {"request-timeout-s", required_argument, 0, O_RTO},
        {"graceful-shutdown-timeout-s", required_argument, 0, O_GRACE},
        {"replica-id", required_argument, 0, O_RID},
        {"access-log", no_argument, 0, O_LOG},
        {"app", required_argument, 0, O_APPKIND},
        {"clean-opts", required_argument, 0, O_CLEAN},
        {"chat-template", required_argument, 0, O_CHAT},
        {"kv-cache-mb", required_argument, 0, O_KVMB},
        {"kv-cache-dtype", required_argument, 0, O_KVDT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    cs_replica_opts o = {.host = "0.0.0.0", .port = -1, .max_running = 32, .max_queued = 4096,
                         .request_timeout_s = 86400, .graceful_shutdown_timeout_s = 20};
    double port = -1, threads = 0, ongoing = 32, queued = 4096, kv_mb = 0;
    static char listen_host[CS_SCFG_MAX_HOSTPORT];
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_SOCK: o.unix_path = optarg; break;
        case O_HOST: o.host = optarg; break;
        case O_PORT: bad = num("--port", optarg, 0, 65535, &port); break;
        case O_LISTEN: {
            const char *why = NULL;
            int p = 0;
            if (strlen(optarg) >= sizeof listen_host || cs_scfg_hostport(optarg, listen_host, sizeof listen_host, &p, &why)) {
                fprintf(stderr, "cserve replica: --listen: expected HOST:PORT, got '%s'%s%s\n", optarg, why ? ": " : "",
                        why ? why : "");
                bad = 1;
            }
            o.host = listen_host;
            port = p;
            break;
        }
        case 'm': o.model = optarg; break;
        case O_NAME: o.model_name = optarg; break;
        case O_APP: o.app_name = optarg; break;
        case O_DTYPE: o.dtype = optarg; break;
        case O_THREADS: bad = num("--threads", optarg, 1, 1024, &threads); break;
        case O_ONGOING: bad = num("--max-ongoing-requests", optarg, 1, 4096, &ongoing); break;
        case O_QUEUED: bad = num("--max-queued-requests", optarg, 1, 1 << 20, &queued); break;
        case O_UC: o.user_config = optarg; break;
        case O_RTO: bad = num("--request-timeout-s", optarg, 0.05, 86400 * 365.0, &o.request_timeout_s); break;
        case O_GRACE: bad = num("--graceful-shutdown-timeout-s", optarg, 0, 86400, &o.graceful_shutdown_timeout_s); break;
        case O_RID: o.replica_id = optarg; break;
        case O_LOG: o.access_log = 1; break;
        case O_APPKIND:
            if (strcmp(optarg, "text_generation") != 0 && strcmp(optarg, "clean_text") != 0) {
                fprintf(stderr, "cserve replica: --app: expected text_generation or clean_text, got '%s'\n", optarg);
                bad = 1;
            }
            o.app = optarg;
            break;
        case O_CLEAN: o.clean_opts = optarg; break;
        case O_CHAT: o.chat_template = optarg; break;
        case O_KVMB:
            bad = num("--kv-cache-mb", optarg, 0, 1 << 30, &kv_mb);
            if (!bad && kv_mb != (double)(int)kv_mb) {
                fprintf(stderr, "cserve replica: --kv-cache-mb: expected a whole number of MB, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_KVDT: {
            cs_kvdtype kv_check;
            if (cs_kvdtype_resolve(optarg, CS_W_F32, &kv_check)) {
                fprintf(stderr, "cserve replica: --kv-cache-dtype: expected auto, fp32, bf16 or int8, got '%s'\n",
                        optarg);
                bad = 1;
            }
            o.kv_dtype = optarg;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    const int clean = o.app && !strcmp(o.app, "clean_text");
    if (optind != argc || (!o.model && !clean) || (!o.unix_path && port < 0) || (o.clean_opts && !clean)) {
        fprintf(stderr, "cserve replica: %s\n", optind != argc ? "unexpected argument" :
                        (!o.model && !clean) ? "--model is required" :
                        (!o.unix_path && port < 0) ? "--listen, --socket or --port is required" :
                        "--clean-opts needs --app clean_text");
        usage(stderr);
        return 2;
    }
    o.port = (int)port;
    o.threads = (int)threads;
    o.max_running = (int)ongoing;
    o.max_queued = (int)queued;
    o.kv_cache_mb = (int)kv_mb;
    return cs_replica_run(&o);
}
