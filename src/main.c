/* cserve command line. Each subcommand parses its own options and returns the
 * process exit status: 0 ok, 1 runtime failure, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "engine/model.h"
#include "engine/utf8.h"
#include "hub/hub.h"

#define CS_VERSION "0.1.0"

int cs_cmd_bench(int argc, char **argv); /* cli_bench.c */
int cs_cmd_serve(int argc, char **argv); /* cli_serve.c */
int cs_cmd_replica(int argc, char **argv); /* cli_replica.c */
int cs_cmd_deploy(int argc, char **argv);   /* cli_ctl.c */
int cs_cmd_status(int argc, char **argv);   /* cli_ctl.c */
int cs_cmd_config(int argc, char **argv);   /* cli_ctl.c */
int cs_cmd_shutdown(int argc, char **argv); /* cli_ctl.c */

static void usage_main(FILE *f) {
    fprintf(f,
            "usage: cserve <command> [options]\n\n"
            "commands:\n"
            "  generate --model M [options] PROMPT     generate text (M: directory or Hub name)\n"
            "  tokenize --model M [--decode] TEXT      print token ids as JSON (or decode ids)\n"
            "  pull MODEL                              download a model from the Hugging Face Hub\n"
            "  serve [--model M] [options]             HTTP server (simple-gen, OpenAI completions)\n"
            "  bench --model DIR [options]             engine benchmark, printed as JSON\n"
            "  router --config FILE [options]          serve a config whose replicas run on other hosts\n"
            "  replica --listen HOST:PORT --model M    one replica for a router on another host\n"
            "  deploy [-a URL] FILE                    send a Serve config to a running server's admin API\n"
            "  status [-a URL] [-n APP]                applications' and deployments' statuses, as YAML\n"
            "  config [-a URL] [-n APP]                the config each application was deployed with\n"
            "  shutdown [-a URL] [-y]                  delete every application on the server\n"
            "  version                                 print the version\n\n"
            "Run 'cserve <command> --help' for the options of a command.\n");
}

/* Parses a whole-string integer/float option; prints "OPTION: ..." on error. */
static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "cserve: %s: expected an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "cserve: %s: expected a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* ------------------------------------------------------------------ generate */

static void usage_generate(FILE *f) {
    fprintf(f,
            "usage: cserve generate --model M [options] PROMPT\n\n"
            "Defaults are those of transformers' text-generation pipeline (release 4.57.6; the seed pins\n"
            ">=4.52.4): 256 new tokens, sampling at temperature 0.7 with top_k 50, unless the model's\n"
            "generation_config.json sets a max_length; distilgpt2's max_length 50 in task_specific_params\n"
            "no longer limits the output. --pipeline-defaults 4.51 gives transformers <= 4.51's: the\n"
            "model's generation config and task_specific_params (distilgpt2: sampling up to max_length 50,\n"
            "prompt included; models without any: 20 new tokens, greedy).\n\n"
            "  --model M                   model directory, or Hub name (distilgpt2, ORG/NAME[@REV])\n"
            "                              from the HF cache, pulled when missing\n"
            "  --max-new-tokens N          tokens to generate (overrides --max-length)\n"
            "  --max-length N              total tokens, prompt included, when no max_new_tokens is in force\n"
            "                              (as in the pipeline, a longer prompt is truncated to N tokens)\n"
            "  --pipeline-defaults V       4.57 (default: transformers >= 4.52) or 4.51 (<= 4.51)\n"
            "  --greedy                    arg-max decoding (do_sample=false)\n"
            "  --sample                    sampling (do_sample=true)\n"
            "  --temperature T             > 0; implies --sample unless --greedy\n"
            "  --top-k K                   0 disables\n"
            "  --top-p P                   in (0, 1]\n"
            "  --repetition-penalty R      > 0; 1 disables\n"
            "  --seed S                    sampling seed (same seed, same text)\n"
            "  --num-return-sequences N    independent samples of the same prompt\n"
            "  --ignore-eos                keep generating after <|endoftext|>\n"
            "  --dtype fp32|bf16|int8      weight format (packed once, cached for later runs)\n"
            "  --threads N                 compute threads (default: CPUs available to the process)\n"
            "  --json                      print [{\"generated_text\": ...}], the pipeline's text (tokenization\n"
            "                              spaces cleaned up); plain output cleans up only where the model's\n"
            "                              tokenizer_config.json sets clean_up_tokenization_spaces\n"
            "  --no-prompt                 print only the continuation (return_full_text=false)\n");
}

typedef struct stream_ctx {
    const cs_tok *tok;
    int clean;    /* clean up tokenization spaces (tokenizer_config.json) */
    char *raw;    /* the continuation's bytes so far */
    size_t n_raw, cap, printed;
    int failed;
} stream_ctx;

/* Prints what of the continuation no later token can change: not an
 * incomplete character, nor text that the clean-up may still rewrite. */
static void stream_flush(stream_ctx *c, int final) {
    char *t;
    size_t tl, stable;
    if (cs_tok_pipeline_text(NULL, 0, c->raw ? c->raw : "", c->n_raw, c->clean, final, &t, &tl, &stable)) {
        c->failed = 1;
        return;
    }
    if (stable > c->printed) {
        fwrite(t + c->printed, 1, stable - c->printed, stdout);
        c->printed = stable;
        fflush(stdout);
    }
    free(t);
}

static int stream_token(void *ud, int32_t id) {
    stream_ctx *c = ud;
    if (id == cs_tok_eos_id(c->tok)) return 0; /* special tokens are not text (skip_special_tokens) */
    size_t len;
    const char *b = cs_tok_token_bytes(c->tok, id, &len);
    if (!b) return 0;
    if (c->n_raw + len > c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        while (cap < c->n_raw + len) cap *= 2;
        char *np = realloc(c->raw, cap);
        if (!np) return c->failed = 1;
        c->raw = np;
        c->cap = cap;
    }
    memcpy(c->raw + c->n_raw, b, len);
    c->n_raw += len;
    stream_flush(c, 0);
    return c->failed;
}

static uint64_t random_seed(void) {
    uint64_t s;
    if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s) return s;
    return (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
}

static int cmd_generate(int argc, char **argv) {
    enum { O_MAXNEW = 256, O_MAXLEN, O_TEMP, O_TOPK, O_TOPP, O_REP, O_SEED, O_NRS, O_IGN, O_NOPROMPT, O_SAMPLE,
           O_DTYPE, O_THREADS, O_PIPEDEF };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"max-new-tokens", required_argument, 0, O_MAXNEW},
        {"max-length", required_argument, 0, O_MAXLEN}, {"temperature", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},  {"top-p", required_argument, 0, O_TOPP},
        {"repetition-penalty", required_argument, 0, O_REP}, {"seed", required_argument, 0, O_SEED},
        {"num-return-sequences", required_argument, 0, O_NRS}, {"ignore-eos", no_argument, 0, O_IGN},
        {"greedy", no_argument, 0, 'g'},          {"sample", no_argument, 0, O_SAMPLE},
        {"json", no_argument, 0, 'j'},            {"no-prompt", no_argument, 0, O_NOPROMPT},
        {"dtype", required_argument, 0, O_DTYPE}, {"threads", required_argument, 0, O_THREADS},
        {"pipeline-defaults", required_argument, 0, O_PIPEDEF},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0},
    };
    const char *model_dir = NULL;
    cs_gpt2_opts mopts = {0};
    long threads = 0;
    long max_new = -2, max_len = -2, top_k = -1, nrs = 1, seed = -1;
    float temp = -1, top_p = -1, rep = -1;
    int greedy = 0, sample = 0, json = 0, ignore_eos = 0, no_prompt = 0, c;
    cs_pipeline_defaults pdef = CS_PIPELINE_457;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:gjh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case O_MAXNEW: if (parse_long("--max-new-tokens", optarg, 0, INT_MAX, &max_new)) return 2; break;
        case O_MAXLEN: if (parse_long("--max-length", optarg, 1, INT_MAX, &max_len)) return 2; break;
        case O_TEMP: if (parse_float("--temperature", optarg, 1e-6, 1e6, &temp)) return 2; break;
        case O_TOPK: if (parse_long("--top-k", optarg, 0, INT_MAX, &top_k)) return 2; break;
        case O_TOPP: if (parse_float("--top-p", optarg, 1e-9, 1, &top_p)) return 2; break;
        case O_REP: if (parse_float("--repetition-penalty", optarg, 1e-6, 1e6, &rep)) return 2; break;
        case O_SEED: if (parse_long("--seed", optarg, 0, LONG_MAX, &seed)) return 2; break;
        case O_NRS: if (parse_long("--num-return-sequences", optarg, 1, 1000, &nrs)) return 2; break;
        case O_IGN: ignore_eos = 1; break;
        case 'g': greedy = 1; break;
        case O_SAMPLE: sample = 1; break;
        case 'j': json = 1; break;
        case O_NOPROMPT: no_prompt = 1; break;
        case O_DTYPE:
            if (cs_wdtype_parse(optarg, &mopts.dtype)) {
                fprintf(stderr, "cserve: --dtype: expected fp32, bf16 or int8, got '%s'\n", optarg);
                return 2;
            }
            break;
        case O_THREADS: if (parse_long("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case O_PIPEDEF:
            if (cs_pipeline_defaults_parse(optarg, &pdef)) {
                fprintf(stderr, "cserve: --pipeline-defaults: expected 4.57 or 4.51, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': usage_generate(stdout); return 0;
        default: usage_generate(stderr); return 2;
        }
    }
    if (!model_dir || optind != argc - 1) {
        fprintf(stderr, "cserve generate: %s\n", !model_dir ? "--model DIR is required" : "exactly one PROMPT is required");
        usage_generate(stderr);
        return 2;
    }
    if (greedy && sample) {
        fprintf(stderr, "cserve generate: --greedy and --sample exclude each other\n");
        return 2;
    }
    const char *prompt = argv[optind];
    cs_err err = {{0}};
    cs_model *m = NULL;
    cs_pool *pool = NULL;
    cs_gen g = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0, prompt_dec_len = 0;
    char *prompt_dec = NULL, *gen_raw = NULL;
    json_t *out = json_array();
    int rc = 1;
    char model_path[CS_HUB_PATH_MAX];
    if (cs_hub_resolve(model_dir, model_path, sizeof model_path, 1, &err)) goto fail;
    if (cs_model_load_opts(&m, model_path, &mopts, &err)) goto fail;
    if (cs_pool_create(&pool, (int)threads, &err)) goto fail;
    /* the options are the pipeline call's arguments (as /text/simple-gen's fields) */
    cs_gen_params p = pdef == CS_PIPELINE_451 ? m->defaults_legacy : m->defaults;
    if (max_new >= 0) p.max_new_tokens = (int)max_new;
    if (max_len >= 0) {
        p.max_length = (int)max_len;
        p.max_length_given = 1;
    }
    if (temp > 0) p.sample.temperature = temp;
    if (top_k >= 0) p.sample.top_k = (int)top_k;
    if (top_p > 0) p.sample.top_p = top_p;
    if (rep > 0) p.sample.repetition_penalty = rep;
    if (sample || (!greedy && (temp > 0 || top_p > 0))) p.sample.do_sample = 1;
    if (greedy) p.sample.do_sample = 0;
    p.ignore_eos = ignore_eos;
    if (cs_tok_encode(m->tok, prompt, strlen(prompt), 1, &ids, &n_ids, &err)) goto fail;
    if (max_len >= 0 && n_ids > (size_t)max_len) n_ids = (size_t)max_len; /* the pipeline's tokenizer truncates */
    if (cs_tok_decode_ex(m->tok, ids, n_ids, 1, &prompt_dec, &prompt_dec_len, &err)) goto fail;
    if (cs_gen_init_pool(&g, m->net, 0, pool, &err)) goto fail;
    cs_rng rng;
    cs_rng_seed(&rng, seed >= 0 ? (uint64_t)seed : random_seed());
    for (long s = 0; s < nrs; s++) {
        stream_ctx sc = {.tok = m->tok, .clean = m->clean_up_spaces};
        int streaming = !json;
        if (streaming) {
            if (s > 0) fputs("\n---\n", stdout);
            if (!no_prompt) fputs(prompt, stdout);
        }
        cs_gen_result r;
        int grc = cs_gen_run(&g, &p, ids, n_ids, &rng, streaming ? stream_token : NULL, &sc, &r, &err);
        if (streaming && !grc) stream_flush(&sc, 1);
        free(sc.raw);
        if (grc) goto fail;
        if (sc.failed) {
            cs_err_set(&err, "out of memory");
            goto fail;
        }
        if (streaming) {
            fputc('\n', stdout);
            continue;
        }
        char *cont = NULL, *full = NULL;
        size_t gl, cl, stable;
        /* the pipeline's text (skip_special_tokens, spaces cleaned up, cut by the prompt's decode) */
        free(gen_raw);
        gen_raw = NULL;
        if (cs_tok_decode_ex(m->tok, r.tokens, r.n_tokens, 1, &gen_raw, &gl, &err)) goto fail;
        if (cs_tok_pipeline_text(prompt_dec, prompt_dec_len, gen_raw, gl, 1, 1, &cont, &cl, &stable)) {
            cs_err_set(&err, "out of memory");
            goto fail;
        }
        size_t pl = no_prompt ? 0 : strlen(prompt), full_len;
        char *joined = malloc(pl + cl + 1);
        if (joined) {
            memcpy(joined, prompt, pl);
            memcpy(joined + pl, cont, cl + 1);
        }
        free(cont);
        /* The prompt came from the command line and may itself be invalid UTF-8. */
        if (joined) full = cs_utf8_repair(joined, pl + cl, &full_len);
        free(joined);
        if (!full) {
            cs_err_set(&err, "out of memory");
            goto fail;
        }
        json_array_append_new(out, json_pack("{s:s%}", "generated_text", full, full_len));
        free(full);
    }
    if (json) {
        char *s = json_dumps(out, JSON_COMPACT);
        if (!s) {
            cs_err_set(&err, "out of memory");
            goto fail;
        }
        puts(s);
        free(s);
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "cserve generate: %s\n", err.msg);
    json_decref(out);
    free(ids);
    free(prompt_dec);
    free(gen_raw);
    cs_gen_free(&g);
    cs_pool_free(pool);
    cs_model_free(m);
    return rc;
}

/* ------------------------------------------------------------------ tokenize */

static void usage_tokenize(FILE *f) {
    fprintf(f, "usage: cserve tokenize --model M TEXT            print ids as a JSON array\n"
               "       cserve tokenize --model M --decode IDS    IDS: a JSON array or space-separated ids\n"
               "M: a model directory or a Hub name (see 'cserve pull --help')\n");
}

static int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"decode", no_argument, 0, 'd'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *dir = NULL;
    int decode = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:dh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'd': decode = 1; break;
        case 'h': usage_tokenize(stdout); return 0;
        default: usage_tokenize(stderr); return 2;
        }
    }
    if (!dir || optind != argc - 1) {
        usage_tokenize(stderr);
        return 2;
    }
    char vp[4096 + 16], mp[4096 + 16], mdir[CS_HUB_PATH_MAX];
    cs_err err = {{0}};
    if (cs_hub_resolve(dir, mdir, sizeof mdir, 1, &err)) {
        fprintf(stderr, "cserve tokenize: %s\n", err.msg);
        return 1;
    }
    snprintf(vp, sizeof vp, "%s/vocab.json", mdir);
    snprintf(mp, sizeof mp, "%s/merges.txt", mdir);
    cs_tok *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (cs_tok_load(&tok, vp, mp, &err)) goto fail;
    const char *arg = argv[optind];
    if (!decode) {
        if (cs_tok_encode(tok, arg, strlen(arg), 1, &ids, &n, &err)) goto fail;
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        puts("]");
    } else {
        /* Accept "[1, 2, 3]" or "1 2 3": ids separated by commas, spaces or brackets. */
        size_t cap = strlen(arg) / 2 + 1;
        ids = malloc(cap * sizeof *ids);
        if (!ids) {
            cs_err_set(&err, "out of memory");
            goto fail;
        }
        const char *s = arg;
        while (*s) {
            if (strchr("[], \t\n", *s)) {
                s++;
                continue;
            }
            char *end;
            errno = 0;
            long v = strtol(s, &end, 10);
            if (end == s || errno || v < 0 || v > INT32_MAX || n >= cap) {
                cs_err_set(&err, "--decode: bad token id at '%.20s'", s);
                goto fail;
            }
            ids[n++] = (int32_t)v;
            s = end;
        }
        char *text;
        size_t tl;
        if (cs_tok_decode(tok, ids, n, &text, &tl, &err)) goto fail;
        fwrite(text, 1, tl, stdout);
        putchar('\n');
        free(text);
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "cserve tokenize: %s\n", err.msg);
    free(ids);
    cs_tok_free(tok);
    return rc;
}

/* ------------------------------------------------------------------ pull */

static void usage_pull(FILE *f) {
    fprintf(f,
            "usage: cserve pull [--quiet] MODEL\n\n"
            "Downloads a model from the Hugging Face Hub into the Hugging Face cache (the one transformers\n"
            "uses: what is already there is reused, and transformers can read what we write), then prints\n"
            "the snapshot directory. MODEL: distilgpt2, openai-community/gpt2, ORG/NAME@REVISION (branch,\n"
            "tag or commit). Files: config.json, generation_config.json (if the model has one),\n"
            "model.safetensors, vocab.json, merges.txt. An interrupted download resumes on the next run;\n"
            "large files are checked against their SHA-256.\n\n"
            "  -q, --quiet        no progress output (the bar is drawn only when stderr is a terminal)\n\n"
            "environment:\n"
            "  HF_ENDPOINT        Hub URL (default https://huggingface.co)\n"
            "  HF_TOKEN           access token for private or gated models (default: the token file\n"
            "                     $HF_TOKEN_PATH or $HF_HOME/token written by `huggingface-cli login`)\n"
            "  HF_HUB_CACHE       cache directory (default $HF_HOME/hub)\n"
            "  HF_HOME            default $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface\n"
            "  HF_HUB_OFFLINE     1/true/yes: never use the network; succeed only if the model is cached\n"
            "\ncache layout: HF_HUB_CACHE/models--ORG--NAME/{blobs/ETAG, snapshots/COMMIT/FILE -> blob,\n"
            "refs/REVISION}\n");
}

static int cmd_pull(int argc, char **argv) {
    static const struct option opts[] = {{"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (c) {
        case 'q': quiet = 1; break;
        case 'h': usage_pull(stdout); return 0;
        default: usage_pull(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "cserve pull: exactly one MODEL is required\n");
        usage_pull(stderr);
        return 2;
    }
    cs_err err = {{0}};
    cs_hub_ref ref;
    if (cs_hub_parse_ref(argv[optind], &ref, &err)) {
        fprintf(stderr, "cserve pull: %s\n", err.msg);
        return 2;
    }
    cs_hub_env *env = malloc(sizeof *env);
    char dir[CS_HUB_PATH_MAX];
    int rc = 1;
    if (!env) cs_err_set(&err, "out of memory");
    else if (cs_hub_env_init(env, &err) == 0) {
        env->progress = !quiet;
        if (cs_hub_pull_env(env, &ref, dir, sizeof dir, &err) == 0) rc = 0;
    }
    free(env);
    if (rc) fprintf(stderr, "cserve pull: %s\n", err.msg);
    else puts(dir);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage_main(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "pull") == 0) return cmd_pull(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0) return cs_cmd_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0) return cs_cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "replica") == 0) return cs_cmd_replica(argc - 1, argv + 1);
    if (strcmp(cmd, "router") == 0) return cs_cmd_serve(argc - 1, argv + 1); /* argv[0] "router" tells it */
    if (strcmp(cmd, "deploy") == 0) return cs_cmd_deploy(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0) return cs_cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0) return cs_cmd_config(argc - 1, argv + 1);
    if (strcmp(cmd, "shutdown") == 0) return cs_cmd_shutdown(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        puts("cserve " CS_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage_main(stdout);
        return 0;
    }
    fprintf(stderr, "cserve: unknown command '%s'\n", cmd);
    usage_main(stderr);
    return 2;
}
