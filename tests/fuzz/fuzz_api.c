/* libFuzzer target: the HTTP API's request handling (src/serve/api*.c) on
 * arbitrary request bodies, without a server, a socket or model weights.
 *
 * The body parsing and validation (api_parse_body, api_opt_int/num/bool,
 * read_prompts, read_stops, unsupported, api_simple_gen, api_completions) and
 * the user_config (cs_api_set_user_config) are driven through the public
 * entry points: the request handler of cs_api_handlers() and the setter.
 * This file links the API against its own
 * implementations of the cs_http request functions (http/http.h) and of the
 * cs_sched calls (serve/sched.h), both recorded in memory; the tokenizer is the
 * real GPT-2 one (tests/data/gpt2-tokenizer, under $CS_FUZZ_ROOT or the
 * current directory) and the model a cs_model with no weights (n_positions
 * 1024). The scheduler stand-in validates a submission as sched.c does, then
 * "generates" tokens from the prompt's own ids, so stop strings, streaming,
 * echo, n > 1, cancellation and engine errors all run.
 *
 * Input: byte 0 = flags, byte 1 = tokens per sequence (bits 0-3), a
 * refusal by the HTTP layer (bits 4-5: 413, 414, 431) and a user_config
 * (bit 6: set one before the request: the body's "user_config" member when it
 * has one, which the request itself ignores, else a fixed one that bit 7
 * picks; cleared after), the rest is the request body (or the path, for the
 * routing cases).
 *   bits 0-1  0: POST /text/simple-gen  1: POST /v1/completions
 *             2: GET <rest as path>     3: POST <rest as path>
 *   bit 2     an API key is configured (bit 3: the request sends it)
 *   bits 4-5  0: normal  1: engine error after the first tokens
 *             2: client gone before generation  3: request timeout then
 *   bit 6     the scheduler refuses the last prompt (queue full)
 *   bit 7     generated text includes <|endoftext|> at step 2
 *
 * Checked for every request: exactly one response (unless the client left),
 * a documented status code, JSON bodies that parse and are valid UTF-8 in the
 * route's error format, well-formed server-sent events ending in [DONE] with
 * a finish_reason for every choice, as many choices as prompts x n, no
 * generated text containing a stop string, every scheduler request ended,
 * every reference dropped (the request and its application data freed), a
 * refused user_config named in the error and changing nothing, and all of
 * ASan/UBSan/LSan. CS_FUZZ_VERBOSE=1 prints each response. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/generate.h"
#include "engine/model.h"
#include "engine/utf8.h"
#include "http/http.h"
#include "serve/api.h"
#include "serve/metrics.h"
#include "serve/sched.h"
#include "fuzz_common.h"

/* ------------------------------------------------ cs_http stand-in */

struct cs_http_req {
    int refs;
    const char *method, *path;
    char *body;
    size_t body_len;
    const char *auth; /* Authorization header or NULL */
    void *app;
    void (*app_free)(void *);
    int err_status; /* 413, 414, 431: refused by the HTTP layer */
    int in_handler; /* headers may be read only during the request callback */
    int gone;       /* client left: every answer fails */
    int started;    /* responses started (respond or stream_begin) */
    int status, streaming, stream_ended;
    char ctype[64];
    char *out; /* response body, or the stream's data */
    size_t out_len;
};

static int g_live_reqs;

static void out_append(cs_http_req *r, const char *d, size_t n) {
    char *p = realloc(r->out, r->out_len + n + 1);
    if (!p) abort();
    memcpy(p + r->out_len, d, n);
    r->out = p;
    r->out_len += n;
    r->out[r->out_len] = 0;
}

void cs_http_req_ref(cs_http_req *r) {
    if (r->refs <= 0) fz_fail("cs_http_req_ref on a freed request");
    r->refs++;
}

void cs_http_req_unref(cs_http_req *r) {
    if (r->refs <= 0) fz_fail("cs_http_req_unref below zero");
    if (--r->refs) return;
    if (r->app_free) r->app_free(r->app);
    free(r->out);
    free(r->body);
    free(r);
    g_live_reqs--;
}

void cs_http_req_set_app(cs_http_req *r, void *app, void (*app_free)(void *)) {
    if (r->app) fz_fail("cs_http_req_set_app called twice");
    r->app = app;
    r->app_free = app_free;
}
void *cs_http_req_app(const cs_http_req *r) { return r->app; }
const char *cs_http_req_method(const cs_http_req *r) { return r->method; }
const char *cs_http_req_path(const cs_http_req *r) { return r->path; }
const char *cs_http_req_body(const cs_http_req *r, size_t *len) {
    *len = r->body_len;
    return r->body;
}
int cs_http_req_error(const cs_http_req *r, const char **msg) {
    *msg = r->err_status == 413   ? "request body larger than 1048576 bytes"
           : r->err_status == 414 ? "request path longer than 4096 bytes"
           : r->err_status == 431 ? "request headers larger than 16384 bytes"
                                  : NULL;
    return r->err_status;
}
const char *cs_http_req_header(const cs_http_req *r, const char *name) {
    if (!r->in_handler) fz_fail("cs_http_req_header(%s) outside the request callback", name);
    if (!strcasecmp(name, "Authorization")) return r->auth;
    return NULL;
}

static void check_headers(const cs_http_header *h, size_t n) {
    if (n > CS_HTTP_MAX_EXTRA_HEADERS) fz_fail("%zu extra headers", n);
    for (size_t i = 0; i < n; i++)
        if (!h[i].name || !h[i].value || strpbrk(h[i].value, "\r\n")) fz_fail("bad response header %zu", i);
}

int cs_http_respond(cs_http_req *r, int status, const char *ctype, const char *body, size_t len,
                    const cs_http_header *extra, size_t n_extra) {
    check_headers(extra, n_extra);
    if (r->gone || r->started) return -1;
    r->started = 1;
    r->status = status;
    snprintf(r->ctype, sizeof r->ctype, "%s", ctype ? ctype : "");
    out_append(r, body, len);
    return 0;
}

int cs_http_stream_begin(cs_http_req *r, int status, const char *ctype, const cs_http_header *extra, size_t n_extra) {
    check_headers(extra, n_extra);
    if (r->gone || r->started) return -1;
    r->started = 1;
    r->streaming = 1;
    r->status = status;
    snprintf(r->ctype, sizeof r->ctype, "%s", ctype ? ctype : "");
    return 0;
}

int cs_http_stream_write(cs_http_req *r, const char *data, size_t len) {
    if (r->gone || !r->streaming || r->stream_ended) return -1;
    out_append(r, data, len);
    return 0;
}

int cs_http_stream_end(cs_http_req *r, int error) {
    if (r->gone || !r->streaming || r->stream_ended) return -1;
    r->stream_ended = error ? 2 : 1;
    return 0;
}

/* ------------------------------------------------ cs_sched stand-in */

#define MAX_SUB CS_API_MAX_PROMPTS
#define MAX_STEPS 16

struct cs_req {
    cs_req_cb cb;
    void *ud;
    int32_t *prompt;
    size_t n_prompt;
    int n_seqs, n_target, ignore_eos, cancelled, over;
    int seq_done[CS_API_MAX_N], seq_gen[CS_API_MAX_N];
};

struct cs_sched {
    int refuse_last; /* flag bit 6 */
    int n_expected;  /* prompts in this request, when known (refuse the last) */
    cs_req *reqs[MAX_SUB];
    int n;
    int eos;
};

static cs_sched g_sched;

int cs_sched_submit(cs_sched *s, const cs_req_params *p, cs_req_cb cb, void *ud, cs_req **out, cs_err *err) {
    if (out) *out = NULL;
    if (!cb) return cs_err_set(err, "no callback"), CS_SCHED_INVALID;
    if (s->n >= MAX_SUB) fz_fail("more than %d scheduler requests for one HTTP request", MAX_SUB);
    const int n_seqs = p->n_seqs > 0 ? p->n_seqs : 1;
    if (n_seqs > CS_API_MAX_N) fz_fail("%d sequences passed the API's limit of %d", n_seqs, CS_API_MAX_N);
    if (cs_sample_params_check(&p->gen.sample, err)) return CS_SCHED_INVALID;
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= 50257) {
            cs_err_set(err, "token id %d outside vocabulary [0, 50257)", p->prompt[i]);
            return CS_SCHED_INVALID;
        }
    const int n_new = cs_gen_new_tokens(&p->gen, p->n_prompt, 1024, err);
    if (n_new < 0) return CS_SCHED_INVALID;
    if (s->refuse_last && s->n + 1 == s->n_expected) {
        cs_err_set(err, "queue full: 256 requests waiting");
        return CS_SCHED_FULL;
    }
    cs_req *r = calloc(1, sizeof *r);
    if (!r || !(r->prompt = malloc(p->n_prompt * sizeof *r->prompt))) abort();
    memcpy(r->prompt, p->prompt, p->n_prompt * sizeof *r->prompt);
    r->n_prompt = p->n_prompt;
    r->cb = cb;
    r->ud = ud;
    r->n_seqs = n_seqs;
    r->n_target = n_new;
    r->ignore_eos = p->gen.ignore_eos;
    s->reqs[s->n++] = r;
    *out = r;
    return CS_SCHED_OK;
}

void cs_sched_cancel(cs_sched *s, cs_req *r) {
    (void)s;
    if (!r || r->over) fz_fail("cs_sched_cancel on a request whose final event was delivered");
    r->cancelled = 1;
}

/* Always room: the early refusal before parsing (serve/shed.h) is tested in
 * tests/serve/test_shed.c and test_fairness.py; here every body is parsed. */
int cs_sched_room(cs_sched *s) {
    (void)s;
    return 1;
}

void cs_sched_stats_get(cs_sched *s, cs_sched_stats *st) {
    (void)s;
    memset(st, 0, sizeof *st);
}

/* Delivers one event; returns the callback's answer. */
static int deliver(cs_req *r, cs_ev_type type, int seq, int32_t tok, cs_finish fin, const char *msg) {
    if (r->over) fz_fail("event after the final one");
    cs_req_event ev = {.type = type, .token = tok, .seq_index = seq, .finish = fin, .n_prompt = r->n_prompt,
                       .n_generated = seq >= 0 ? (size_t)r->seq_gen[seq] : 0, .ttft_s = 0.01, .message = msg};
    if (type == CS_EV_ERROR) r->over = 1;
    if (type == CS_EV_DONE) {
        r->seq_done[seq] = 1;
        int all = 1;
        for (int i = 0; i < r->n_seqs; i++) all &= r->seq_done[i];
        if (all) r->over = 1;
    }
    return r->cb(r->ud, &ev);
}

/* The engine: round-robin over every unfinished sequence, one token each. */
static void run_engine(cs_sched *s, int max_tokens, int error_mode, int eos_at_2) {
    for (int step = 0; step <= MAX_STEPS; step++) {
        for (int k = 0; k < s->n; k++) {
            cs_req *r = s->reqs[k];
            if (r->over) continue;
            if (error_mode && k == 0 && step == 1) {
                deliver(r, CS_EV_ERROR, 0, 0, CS_FINISH_LENGTH, error_mode == 2 ? "the engine is shutting down" : "forward failed");
                continue;
            }
            for (int q = 0; q < r->n_seqs && !r->over; q++) {
                if (r->seq_done[q]) continue;
                if (r->cancelled) {
                    deliver(r, CS_EV_DONE, q, 0, CS_FINISH_STOPPED, NULL);
                    continue;
                }
                if (r->seq_gen[q] >= r->n_target || r->seq_gen[q] >= max_tokens || step == MAX_STEPS) {
                    deliver(r, CS_EV_DONE, q, 0, CS_FINISH_LENGTH, NULL);
                    continue;
                }
                int32_t tok = r->prompt[((size_t)step + (size_t)q) % r->n_prompt];
                if (eos_at_2 && step == 2) tok = s->eos;
                r->seq_gen[q]++;
                int stop = deliver(r, CS_EV_TOKEN, q, tok, CS_FINISH_LENGTH, NULL);
                if (r->over) fz_fail("a token event ended the request");
                if (stop) deliver(r, CS_EV_DONE, q, 0, CS_FINISH_STOPPED, NULL);
                else if (tok == s->eos && !r->ignore_eos) deliver(r, CS_EV_DONE, q, 0, CS_FINISH_EOS, NULL);
            }
        }
    }
    for (int k = 0; k < s->n; k++) {
        if (!s->reqs[k]->over) fz_fail("scheduler request %d never ended", k);
        free(s->reqs[k]->prompt);
        free(s->reqs[k]);
    }
    s->n = 0;
}

/* ------------------------------------------------ the harness */

static cs_tok *g_tok;
static cs_gpt2 g_net;
static cs_model g_model;
static cs_metrics *g_metrics;
static cs_api *g_api[2]; /* [0]: no API key, [1]: key "sk-fuzz" */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_tok = fz_load_gpt2_tokenizer("fuzz_api");
    cs_err err = {{0}};
    if (cs_metrics_create(&g_metrics, &err)) {
        fprintf(stderr, "fuzz_api: %s\n", err.msg);
        exit(1);
    }
    g_net.cfg.n_positions = 1024;
    g_net.cfg.vocab_size = 50257;
    g_model.net = &g_net;
    g_model.tok = g_tok;
    cs_gen_params_builtin(&g_model.defaults);
    g_model.defaults.eos_token_id = cs_tok_eos_id(g_tok);
    g_model.defaults_legacy = g_model.defaults; /* user_config pipeline_defaults "4.51" */
    g_sched.eos = cs_tok_eos_id(g_tok);
    static const char *const keys[] = {"sk-fuzz"};
    for (int i = 0; i < 2; i++) {
        cs_api_opts o = {.model_name = "gpt2", .model_arg = "openai-community/gpt2", .route_prefix = "/",
                         .app_name = "transformer-app", .api_keys = i ? keys : NULL, .n_api_keys = i ? 1 : 0};
        if (cs_api_create(&g_api[i], &o, g_metrics, &err)) {
            fprintf(stderr, "fuzz_api: cs_api_create: %s\n", err.msg);
            exit(1);
        }
        cs_api_attach(g_api[i], &g_model, &g_sched);
    }
    return 0;
}

static int documented_status(int s) {
    static const int ok[] = {200, 400, 401, 404, 405, 408, 413, 414, 422, 431, 500, 503};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        if (s == ok[i]) return 1;
    return 0;
}

/* {"error": {...}} in the route's format. */
static void check_error_body(json_t *root, int v1) {
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(e) || !json_is_string(json_object_get(e, "message")) ||
        !json_is_string(json_object_get(e, "type")))
        fz_fail("error body without error.message / error.type");
    if (v1 && (!json_object_get(e, "param") || !json_object_get(e, "code")))
        fz_fail("/v1 error body without param / code");
}

/* What a successful answer must look like, from the request body as the API
 * reads it (invalid UTF-8 repaired first). */
typedef struct expect {
    int choices; /* prompts x n (num_return_sequences); -1: unknown */
    int prompt_text; /* the prompt is part of the text (echo / return_full_text) */
    const char *stops[CS_API_MAX_STOP];
    size_t stop_len[CS_API_MAX_STOP];
    int n_stop;
    json_t *root;
} expect;

static int num_or(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? (int)json_number_value(v) : dflt;
}

static void expect_init(expect *x, const cs_http_req *r, int route) {
    memset(x, 0, sizeof *x);
    x->choices = -1;
    if (route > 1) return;
    size_t fl = 0;
    char *fixed = cs_utf8_repair(r->body, r->body_len, &fl);
    if (!fixed) abort();
    x->root = json_loadb(fixed, fl, JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
    free(fixed);
    if (!json_is_object(x->root)) return;
    if (route == 0) {
        x->choices = num_or(x->root, "num_return_sequences", 1);
        x->prompt_text = !json_is_false(json_object_get(x->root, "return_full_text"));
        return;
    }
    json_t *p = json_object_get(x->root, "prompt");
    int n_pr = json_is_array(p) && json_array_size(p) && !json_is_integer(json_array_get(p, 0)) ? (int)json_array_size(p) : 1;
    x->choices = n_pr * num_or(x->root, "n", 1);
    x->prompt_text = json_is_true(json_object_get(x->root, "echo"));
    json_t *st = json_object_get(x->root, "stop");
    for (size_t i = 0; i < (json_is_array(st) ? json_array_size(st) : 1) && x->n_stop < CS_API_MAX_STOP; i++) {
        json_t *e = json_is_array(st) ? json_array_get(st, i) : st;
        if (!json_is_string(e)) continue;
        x->stops[x->n_stop] = json_string_value(e);
        x->stop_len[x->n_stop++] = json_string_length(e);
    }
}

/* Generated text must not contain a stop string (one with U+FFFD may appear
 * through the repair of invalid bytes, so those are not checked). */
static void check_text(const expect *x, const char *t, size_t n, int idx) {
    if (x->choices >= 0 && (idx < 0 || idx >= x->choices)) fz_fail("choice index %d of %d", idx, x->choices);
    if (x->prompt_text) return;
    for (int i = 0; i < x->n_stop; i++)
        if (x->stop_len[i] && !memmem(x->stops[i], x->stop_len[i], "\xEF\xBF\xBD", 3) &&
            memmem(t, n, x->stops[i], x->stop_len[i]))
            fz_fail("choice %d contains stop string %d", idx, i);
}

static void check_stream(const cs_http_req *r, int v1, const expect *x) {
    if (strcmp(r->ctype, "text/event-stream")) fz_fail("stream with content type '%s'", r->ctype);
    if (r->stream_ended != 1) fz_fail("stream not ended cleanly (%d)", r->stream_ended);
    if (!cs_utf8_valid(r->out, r->out_len)) fz_fail("stream is not valid UTF-8");
    const char *p = r->out, *end = r->out + r->out_len;
    int done = 0, error = 0;
    char *text[CS_API_MAX_PROMPTS * CS_API_MAX_N] = {0};
    size_t text_len[CS_API_MAX_PROMPTS * CS_API_MAX_N] = {0};
    int finished[CS_API_MAX_PROMPTS * CS_API_MAX_N] = {0};
    while (p < end) {
        if (done) fz_fail("event after data: [DONE]");
        if ((size_t)(end - p) < 6 || memcmp(p, "data: ", 6)) fz_fail("stream event without 'data: '");
        p += 6;
        const char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        if (!e) fz_fail("stream event not terminated by a blank line");
        if (e - p == 6 && !memcmp(p, "[DONE]", 6)) {
            done = 1;
        } else {
            json_error_t je;
            json_t *j = json_loadb(p, (size_t)(e - p), JSON_ALLOW_NUL, &je);
            if (!json_is_object(j)) fz_fail("stream event is not a JSON object: %s", je.text);
            json_t *c = v1 ? json_array_get(json_object_get(j, "choices"), 0) : j;
            json_t *t = json_object_get(c, "text"), *fin = json_object_get(c, "finish_reason");
            if (json_object_get(j, "error")) {
                error = 1;
            } else if (json_is_string(t)) {
                int idx = (int)json_integer_value(json_object_get(c, "index"));
                if (idx < 0 || idx >= (int)(sizeof text / sizeof *text)) fz_fail("stream choice index %d", idx);
                if (finished[idx]) fz_fail("stream text for choice %d after its finish_reason", idx);
                size_t tl = json_string_length(t);
                char *np = realloc(text[idx], text_len[idx] + tl + 1);
                if (!np) abort();
                memcpy(np + text_len[idx], json_string_value(t), tl);
                text[idx] = np;
                text_len[idx] += tl;
                if (json_is_string(fin)) finished[idx] = 1;
            } else if (!(v1 && json_object_get(j, "usage"))) {
                fz_fail("stream event with neither text, usage nor error");
            }
            json_decref(j);
        }
        p = e + 2;
    }
    if (!done) fz_fail("stream does not end with data: [DONE]");
    for (int i = 0; i < (int)(sizeof text / sizeof *text); i++) {
        if (text[i]) check_text(x, text[i], text_len[i], i);
        if (!error && i < x->choices && !finished[i]) fz_fail("stream choice %d without a finish_reason", i);
        free(text[i]);
    }
}

static void check_response(const cs_http_req *r, int route, const expect *x) {
    if (getenv("CS_FUZZ_VERBOSE")) { /* to read what a crashing input got */
        fprintf(stderr, "response: started %d, status %d, %s, %zu bytes:\n", r->started, r->status, r->ctype, r->out_len);
        fwrite(r->out ? r->out : "", 1, r->out_len, stderr);
        fprintf(stderr, "\n");
    }
    const int v1 = route == 1 || (route >= 2 && !strncmp(r->path, "/v1/", 4));
    if (!r->started) {
        if (!r->gone) fz_fail("request left without a response");
        return;
    }
    if (!documented_status(r->status)) fz_fail("undocumented status %d", r->status);
    if (r->streaming) {
        if (r->status != 200) fz_fail("stream with status %d", r->status);
        if (!r->gone) check_stream(r, v1, x);
        return;
    }
    if (strncmp(r->ctype, "application/json", 16)) {
        if (r->status == 200 && route >= 2) return; /* /metrics, /-/healthz text */
        fz_fail("status %d with content type '%s'", r->status, r->ctype);
    }
    if (!cs_utf8_valid(r->out, r->out_len)) fz_fail("response body is not valid UTF-8");
    json_error_t je;
    json_t *j = json_loadb(r->out, r->out_len, JSON_ALLOW_NUL, &je);
    if (!j) fz_fail("response body is not JSON: %s", je.text);
    if (r->status != 200) {
        check_error_body(j, v1);
    } else if (route <= 1) {
        json_t *ch = route == 0 ? j : json_object_get(j, "choices");
        if (!json_is_array(ch)) fz_fail("%s 200 without a list of choices", route ? "completions" : "simple-gen");
        if ((int)json_array_size(ch) != x->choices) fz_fail("%zu choices, expected %d", json_array_size(ch), x->choices);
        for (size_t i = 0; i < json_array_size(ch); i++) {
            json_t *c = json_array_get(ch, i), *t = json_object_get(c, route ? "text" : "generated_text");
            if (!json_is_string(t)) fz_fail("choice %zu without text", i);
            check_text(x, json_string_value(t), json_string_length(t), route ? (int)json_integer_value(json_object_get(c, "index")) : (int)i);
        }
    }
    json_decref(j);
}

/* Sets a user_config for this input (byte 1 bit 6): the body's "user_config"
 * member, or a fixed one. Checks what the setter promises. */
static void set_user_config(cs_api *api, const uint8_t *data, size_t size) {
    static const char *const fixed[2] = {
        "{\"max_new_tokens\": 3, \"do_sample\": true, \"top_k\": 5, \"temperature\": 0.7}",
        "{\"max_length\": 6, \"top_p\": 0.5, \"repetition_penalty\": 1.3, \"do_sample\": false}"};
    json_t *body = json_loadb((const char *)data + 2, size - 2, JSON_ALLOW_NUL, NULL);
    json_t *uc = json_object_get(body, "user_config");
    if (uc) json_incref(uc);
    else uc = json_loads(fixed[data[1] >> 7], 0, NULL);
    json_decref(body);
    if (!uc) abort();
    cs_err err = {{0}};
    if (cs_api_set_user_config(api, uc, &err)) {
        if (strncmp(err.msg, "user_config", 11)) fz_fail("user_config error not naming it: %s", err.msg);
        json_t *now = cs_api_user_config(api);
        if (!json_is_object(now) || json_object_size(now)) fz_fail("a refused user_config changed the settings");
        json_decref(now);
    } else {
        json_t *now = cs_api_user_config(api);
        if (json_object_size(now) && !json_equal(now, uc)) fz_fail("user_config in force differs from the one set");
        json_decref(now);
    }
    json_decref(uc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const unsigned flags = data[0], max_tokens = data[1] & 15u;
    const int route = (int)(flags & 3), keyed = (flags >> 2) & 1, sends_key = (flags >> 3) & 1;
    const int scenario = (flags >> 4) & 3;
    cs_api *api = g_api[keyed];
    const cs_http_handlers h = cs_api_handlers(api);

    cs_http_req *r = calloc(1, sizeof *r);
    if (!r) abort();
    g_live_reqs++;
    r->refs = 1; /* the server's */
    const char *rest = (const char *)data + 2;
    const size_t n = size - 2;
    static char path[CS_HTTP_MAX_PATH + 1];
    if (route <= 1) {
        r->method = "POST";
        r->path = route == 0 ? "/text/simple-gen" : "/v1/completions";
        r->body = malloc(n + 1);
        if (!r->body) abort();
        memcpy(r->body, rest, n);
        r->body[n] = 0;
        r->body_len = n;
    } else {
        size_t pl = strnlen(rest, n < CS_HTTP_MAX_PATH ? n : CS_HTTP_MAX_PATH);
        memcpy(path, rest, pl);
        path[pl] = 0;
        r->method = route == 2 ? "GET" : "POST";
        r->path = path;
        r->body = strdup("");
    }
    static const int http_errors[4] = {0, 413, 414, 431};
    r->err_status = http_errors[(data[1] >> 4) & 3];
    r->auth = keyed && sends_key ? "Bearer sk-fuzz" : keyed ? "Bearer wrong" : NULL;

    g_sched.refuse_last = (flags >> 6) & 1;
    g_sched.n_expected = 1;
    if (route == 1 && g_sched.refuse_last) { /* the number of prompts, as read_prompts will see it */
        json_t *j = json_loadb(rest, n, JSON_ALLOW_NUL, NULL);
        json_t *p = json_object_get(j, "prompt");
        if (json_is_array(p) && json_array_size(p) && !json_is_integer(json_array_get(p, 0)))
            g_sched.n_expected = (int)json_array_size(p);
        json_decref(j);
    }

    const int with_uc = (data[1] >> 6) & 1;
    if (with_uc) set_user_config(api, data, size);
    r->in_handler = 1;
    h.request(h.ud, r);
    r->in_handler = 0;
    if (scenario >= 2) {
        if (scenario == 2) r->gone = 1;
        h.abort(h.ud, r, scenario == 2 ? CS_HTTP_ABORT_GONE : CS_HTTP_ABORT_TIMEOUT);
    }
    run_engine(&g_sched, (int)max_tokens, scenario == 1 ? 1 + ((flags >> 7) & 1) : 0, (flags >> 7) & 1);
    cs_api_release_held(api); /* a refusal for overload is held before its 503 (serve/shed.h) */
    if (scenario == 3 && !r->started) fz_fail("no response after a timeout");

    expect x;
    expect_init(&x, r, route);
    check_response(r, route, &x);
    json_decref(x.root);
    h.done(h.ud, r, r->status, 0.001, r->started && !r->gone);
    cs_http_req_unref(r);
    if (with_uc) {
        cs_err err;
        if (cs_api_set_user_config(api, NULL, &err)) fz_fail("clearing the user_config failed: %s", err.msg);
    }
    if (g_live_reqs != 0) fz_fail("request not freed: a reference was leaked (%d live)", g_live_reqs);
    return 0;
}
