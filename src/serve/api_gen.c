/* cs_api, what both generation routes share (see api_internal.h): the body
 * and its option readers, tokenizing, submission to the scheduler, the
 * engine's events, streaming and the final answer. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "engine/utf8.h"
#include "serve/api_internal.h"

/* --------------------------------------------------------- validation */

int api_vfail(verr *e, int status, const char *param, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    e->code = code;
    return -1;
}

const char *api_json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

int api_opt_int(const json_t *o, const char *key, long long lo, long long hi, long long *out, verr *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    double d = 0;
    if (json_is_integer(v)) {
        long long x = json_integer_value(v);
        if (x < lo || x > hi)
            return api_vfail(e, 422, key, "invalid_value", "%s: must be an integer in [%lld, %lld], got %lld", key,
                             lo, hi, x);
        *out = x;
        return 1;
    }
    if (json_is_real(v)) d = json_real_value(v);
    if (json_is_real(v) && d == floor(d)) {
        if (!(d >= (double)lo && d <= (double)hi))
            return api_vfail(e, 422, key, "invalid_value", "%s: must be an integer in [%lld, %lld], got %g", key,
                             lo, hi, d);
        *out = (long long)d;
        return 1;
    }
    return api_vfail(e, 422, key, "invalid_type", "%s: expected an integer, got %s", key, api_json_kind(v));
}

int api_opt_num(const json_t *o, const char *key, double lo, double hi, int lo_open, double *out, verr *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return api_vfail(e, 422, key, "invalid_type", "%s: expected a number, got %s", key, api_json_kind(v));
    double d = json_number_value(v);
    /* The engine takes floats: check the value it will see (1e-50 is positive but becomes 0). */
    double f = (float)d;
    if (!(lo_open ? f > lo : f >= lo) || !(f <= hi))
        return api_vfail(e, 422, key, "invalid_value", "%s: must be in %c%g, %g]%s, got %g", key,
                         lo_open ? '(' : '[', lo, hi, f != d && f == 0 ? " and not below the smallest float" : "", d);
    *out = f;
    return 1;
}

int api_opt_bool(const json_t *o, const char *key, int *out, verr *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return api_vfail(e, 422, key, "invalid_type", "%s: expected a boolean, got %s", key, api_json_kind(v));
    *out = json_is_true(v);
    return 1;
}

/* Deepest nesting of arrays/objects, stopping early past limit. */
static int json_depth_over(const char *s, size_t n, int limit) {
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > limit) return 1;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return 0;
}

json_t *api_parse_body(areq *q) {
    size_t len;
    const char *body = cs_http_req_body(q->http, &len);
    if (len == 0) {
        api_send_error(q, 400, NULL, NULL, NULL, "request body is empty: expected a JSON object");
        return NULL;
    }
    if (json_depth_over(body, len, CS_API_MAX_JSON_DEPTH)) {
        api_send_error(q, 422, NULL, "invalid_value", NULL, "JSON nesting too deep: more than %d levels (limit %d)",
                       CS_API_MAX_JSON_DEPTH, CS_API_MAX_JSON_DEPTH);
        return NULL;
    }
    /* Invalid UTF-8 is replaced (U+FFFD per maximal invalid subsequence). */
    char *fixed = NULL;
    size_t fl = len;
    if (!cs_utf8_valid(body, len)) {
        fixed = cs_utf8_repair(body, len, &fl);
        if (!fixed) {
            api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
            return NULL;
        }
    }
    json_error_t je;
    json_t *root = json_loadb(fixed ? fixed : body, fl, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
    free(fixed);
    if (!root) {
        api_send_error(q, 400, NULL, "invalid_json", NULL, "invalid JSON at line %d, column %d: %s", je.line, je.column,
                       je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        api_send_error(q, 422, NULL, "invalid_type", NULL, "body: expected a JSON object, got %s", api_json_kind(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

uint64_t api_random_u64(void) {
    uint64_t s;
    if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s) return s;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec;
}

/* -------------------------------------------------------- streaming */

/* Bytes of seq text that can be sent now: not a possible start of a stop
 * string, not ending inside a character. */
static size_t safe_len(const areq *q, const aseq *sq) {
    size_t n = sq->len;
    if (q->n_stop) {
        size_t kmax = q->max_stop - 1 < n ? q->max_stop - 1 : n;
        for (size_t k = kmax; k >= 1; k--) {
            int hit = 0;
            for (int i = 0; i < q->n_stop && !hit; i++)
                hit = q->stop_len[i] > k && memcmp(sq->text + n - k, q->stops[i], k) == 0;
            if (hit) {
                n -= k;
                break;
            }
        }
    }
    return cs_utf8_complete_prefix(sq->text, n);
}

static const char *finish_name(const aseq *sq) {
    return sq->finish == CS_FINISH_LENGTH && !sq->stop_hit ? "length" : "stop";
}

/* One SSE event with text for choice idx (text must be valid UTF-8). */
static int stream_chunk(areq *q, int idx, const char *text, size_t n, const char *finish) {
    cs_sb b = {0};
    cs_sb_puts(&b, "data: ");
    if (q->chat) {
        api_chat_chunk(q, &b, idx, text, n, finish);
    } else if (q->kind == K_V1) {
        cs_sb_put(&b, q->chunk_head.p, q->chunk_head.n);
        cs_sb_puts(&b, "{\"text\":");
        cs_sb_json_str(&b, text, n);
        cs_sb_printf(&b, ",\"index\":%d,\"logprobs\":null,\"finish_reason\":", idx);
        if (finish) cs_sb_printf(&b, "\"%s\"", finish);
        else cs_sb_puts(&b, "null");
        cs_sb_puts(&b, q->include_usage ? "}],\"usage\":null}\n\n" : "}]}\n\n");
    } else {
        cs_sb_printf(&b, "{\"index\":%d,\"text\":", idx);
        cs_sb_json_str(&b, text, n);
        if (finish) cs_sb_printf(&b, ",\"finish_reason\":\"%s\"", finish);
        cs_sb_puts(&b, "}\n\n");
    }
    int rc = b.oom ? -1 : cs_http_stream_write(q->http, b.p, b.n);
    cs_sb_free(&b);
    return rc;
}

/* Starts the SSE response; the prompt goes first when it is part of the
 * text (echo / return_full_text). Caller holds q->mu. */
static int stream_begin(areq *q) {
    if (q->stream_begun) return 0;
    q->stream_begun = 1;
    q->responded = 1;
    cs_http_header h[] = {{"X-Request-Id", q->request_id}, {"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}};
    if (cs_http_stream_begin(q->http, 200, "text/event-stream", h, sizeof h / sizeof h[0])) return -1;
    for (int i = 0; q->chat && i < q->n_choices; i++) /* each choice's first delta names the role */
        if (stream_chunk(q, i, NULL, 0, NULL)) return -1;
    if (q->full_text)
        for (int s = 0; s < q->n_subs; s++)
            for (int i = 0; i < q->subs[s].n_seqs; i++)
                if (q->subs[s].prompt_len &&
                    stream_chunk(q, q->subs[s].first + i, q->subs[s].prompt_text, q->subs[s].prompt_len, NULL))
                    return -1;
    return 0;
}

/* The scheduler request that choice idx belongs to. */
static const asub *sub_of(const areq *q, int idx) {
    int s = 0;
    while (s + 1 < q->n_subs && q->subs[s + 1].first <= idx) s++;
    return &q->subs[s];
}

/* Sends what of choice idx is safe to send (all of it when final, plus its
 * finish_reason). Caller holds q->mu. */
static int stream_emit(areq *q, int idx, int final) {
    aseq *sq = &q->seqs[idx];
    if (stream_begin(q)) return -1;
    size_t upto = final ? sq->len : safe_len(q, sq);
    if (q->clean || q->cut_prompt) { /* send what the clean-up can no longer change */
        const asub *b = sub_of(q, idx);
        char *t;
        size_t tl, stable;
        if (cs_tok_pipeline_text(q->cut_prompt ? b->prompt_dec : NULL, q->cut_prompt ? b->prompt_dec_len : 0,
                                 sq->text ? sq->text : "", upto, q->clean, final, &t, &tl, &stable))
            return -1;
        int rc = 0;
        if (stable > sq->emitted) {
            rc = stream_chunk(q, idx, t + sq->emitted, stable - sq->emitted, NULL);
            sq->emitted = stable;
        }
        free(t);
        if (rc) return -1;
    } else if (upto > sq->emitted) {
        size_t fl;
        char *piece = cs_utf8_repair(sq->text + sq->emitted, upto - sq->emitted, &fl);
        if (!piece) return -1;
        int rc = stream_chunk(q, idx, piece, fl, NULL);
        free(piece);
        if (rc) return -1;
        sq->emitted = upto;
    }
    if (final) return stream_chunk(q, idx, "", 0, finish_name(sq));
    return 0;
}

/* ------------------------------------------------------- finishing */

/* Full text of choice idx (valid UTF-8, malloc'd). */
static char *choice_text(areq *q, const asub *b, int idx, size_t *len) {
    aseq *sq = &q->seqs[idx];
    size_t gl, stable;
    char *gen;
    if (q->clean || q->cut_prompt) {
        if (cs_tok_pipeline_text(q->cut_prompt ? b->prompt_dec : NULL, q->cut_prompt ? b->prompt_dec_len : 0,
                                 sq->text ? sq->text : "", sq->len, q->clean, 1, &gen, &gl, &stable))
            return NULL;
    } else {
        gen = cs_utf8_repair(sq->text ? sq->text : "", sq->len, &gl);
    }
    if (!gen) return NULL;
    size_t pl = q->full_text ? b->prompt_len : 0;
    char *out = malloc(pl + gl + 1);
    if (out) {
        if (pl) memcpy(out, b->prompt_text, pl);
        memcpy(out + pl, gen, gl + 1);
        *len = pl + gl;
    }
    free(gen);
    return out;
}

static json_t *usage_json(const areq *q) {
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)q->prompt_tokens, "completion_tokens",
                     (json_int_t)q->completion_tokens, "total_tokens",
                     (json_int_t)(q->prompt_tokens + q->completion_tokens));
}

/* All scheduler requests are over: answer. Caller holds q->mu. */
static void finalize(areq *q) {
    cs_api *a = q->api;
    q->finished = 1;
    for (int s = 0; s < q->n_subs; s++) q->prompt_tokens += q->subs[s].n_prompt;
    cs_metrics_tokens(a->metrics, q->prompt_tokens, q->completion_tokens);
    if (q->inflight) {
        q->inflight = 0;
        cs_metrics_inflight_add(a->metrics, -1);
    }
    int error = 0;
    for (int s = 0; s < q->n_subs; s++) error |= q->subs[s].error;
    if (q->stream_begun) {
        if (error) {
            cs_sb b = {0};
            cs_sb_puts(&b, "data: {\"error\":{\"type\":\"server_error\",\"message\":");
            cs_sb_json_str(&b, q->error_msg, strlen(q->error_msg));
            cs_sb_puts(&b, "}}\n\n");
            if (!b.oom) cs_http_stream_write(q->http, b.p, b.n);
            cs_sb_free(&b);
        } else if (q->include_usage) {
            json_t *u = usage_json(q);
            char *us = u ? json_dumps(u, JSON_COMPACT) : NULL;
            json_decref(u);
            cs_sb b = {0};
            cs_sb_puts(&b, "data: ");
            cs_sb_put(&b, q->chunk_head.p, q->chunk_head.n);
            cs_sb_printf(&b, "],\"usage\":%s}\n\n", us ? us : "null");
            if (!b.oom) cs_http_stream_write(q->http, b.p, b.n);
            cs_sb_free(&b);
            free(us);
        }
        cs_http_stream_write(q->http, "data: [DONE]\n\n", 14);
        cs_http_stream_end(q->http, 0);
        return;
    }
    if (q->responded) return; /* an error or a timeout was sent already */
    if (error) {
        int shutting = strstr(q->error_msg, "shutting down") != NULL;
        api_send_error(q, shutting ? 503 : 500, NULL, NULL, NULL, "generation failed: %s", q->error_msg);
        return;
    }
    if (q->stream) { /* nothing was generated at all: still a valid stream */
        if (stream_begin(q) == 0) {
            for (int i = 0; i < q->n_choices; i++) stream_chunk(q, i, "", 0, finish_name(&q->seqs[i]));
            cs_http_stream_write(q->http, "data: [DONE]\n\n", 14);
            cs_http_stream_end(q->http, 0);
        }
        return;
    }
    json_t *choices = json_array();
    for (int s = 0; s < q->n_subs; s++) {
        asub *b = &q->subs[s];
        for (int i = 0; i < b->n_seqs; i++) {
            size_t tl = 0;
            char *t = choice_text(q, b, b->first + i, &tl);
            if (!t) continue;
            if (q->chat)
                json_array_append_new(choices,
                                      api_chat_choice(b->first + i, t, tl, finish_name(&q->seqs[b->first + i])));
            else if (q->kind == K_V1)
                json_array_append_new(choices, json_pack("{s:s%, s:i, s:n, s:s}", "text", t, tl, "index",
                                                         b->first + i, "logprobs", "finish_reason",
                                                         finish_name(&q->seqs[b->first + i])));
            else
                json_array_append_new(choices, json_pack("{s:s%}", "generated_text", t, tl));
            free(t);
        }
    }
    if (q->kind != K_V1) {
        api_reply_json(q, 200, choices);
        return;
    }
    api_reply_json(q, 200,
                   json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", q->id, "object",
                             q->chat ? "chat.completion" : "text_completion", "created",
                         (json_int_t)q->created, "model", a->model_name, "choices", choices, "usage", usage_json(q)));
}

/* The last event of sub b. Caller holds q->mu; the caller drops b's HTTP
 * reference after unlocking. */
static void sub_final(areq *q, asub *b) {
    b->active = 0;
    b->req = NULL;
    if (--q->n_active == 0) finalize(q);
}

/* Scheduler callback (engine thread). */
static int on_event(void *ud, const cs_req_event *ev) {
    asub *b = ud;
    areq *q = b->q;
    int stop = 0, release = 0;
    pthread_mutex_lock(&q->mu);
    if (!b->active) {
        pthread_mutex_unlock(&q->mu);
        return 1;
    }
    const int idx = b->first + (ev->seq_index >= 0 && ev->seq_index < b->n_seqs ? ev->seq_index : 0);
    aseq *sq = &q->seqs[idx];
    switch (ev->type) {
    case CS_EV_TOKEN: {
        if (q->aborted || (q->responded && !q->stream_begun) || sq->stop_hit) {
            stop = 1;
            break;
        }
        size_t tl = 0;
        const char *tb = ev->token == q->eos_id ? NULL : cs_tok_token_bytes(q->tok, ev->token, &tl);
        if (tb && tl) {
            if (sq->len + tl > sq->cap) {
                size_t cap = sq->cap ? sq->cap : 256;
                while (cap < sq->len + tl) cap *= 2;
                char *np = realloc(sq->text, cap);
                if (!np) {
                    stop = 1;
                    break;
                }
                sq->text = np;
                sq->cap = cap;
            }
            size_t old = sq->len;
            memcpy(sq->text + sq->len, tb, tl);
            sq->len += tl;
            /* a stop string may end in this token and start up to max_stop-1 bytes before it */
            size_t from = old >= q->max_stop ? old - q->max_stop + 1 : 0;
            for (int i = 0; i < q->n_stop; i++) {
                const char *hit = memmem(sq->text + from, sq->len - from, q->stops[i], q->stop_len[i]);
                if (hit) { /* the search area shrinks, so a later hit is an earlier one */
                    sq->len = (size_t)(hit - sq->text);
                    sq->stop_hit = 1;
                }
            }
            if (sq->stop_hit) stop = 1;
        }
        if (q->stream && stream_emit(q, idx, 0)) {
            q->aborted = 1; /* the client is gone */
            stop = 1;
        }
        break;
    }
    case CS_EV_DONE:
        if (sq->done) break;
        sq->done = 1;
        sq->finish = ev->finish;
        sq->n_gen = ev->n_generated;
        b->n_prompt = ev->n_prompt;
        q->completion_tokens += ev->n_generated;
        if (b->n_done++ == 0 && ev->ttft_s > 0 && ev->n_generated > 0) cs_metrics_ttft(q->api->metrics, ev->ttft_s);
        if (q->stream && !q->aborted && !(q->responded && !q->stream_begun) && stream_emit(q, idx, 1)) q->aborted = 1;
        if (b->n_done == b->n_seqs) {
            sub_final(q, b);
            release = 1;
        }
        break;
    case CS_EV_ERROR:
        b->error = 1;
        b->n_prompt = ev->n_prompt;
        if (!q->error_msg[0]) snprintf(q->error_msg, sizeof q->error_msg, "%s", ev->message ? ev->message : "error");
        sub_final(q, b);
        release = 1;
        break;
    }
    cs_http_req *http = q->http;
    pthread_mutex_unlock(&q->mu);
    if (release) cs_http_req_unref(http); /* may free q */
    return stop;
}

/* ------------------------------------------------------- submission */

void api_prompts_free(prompt_in *p, int n) {
    for (int i = 0; i < n; i++) {
        free(p[i].ids);
        free(p[i].text);
        free(p[i].dec);
    }
}

void api_submit_all(areq *q, cs_sched *s, const cs_gen_params *gen, uint64_t seed, prompt_in *pr, int n_pr, int n) {
    q->subs = calloc((size_t)n_pr, sizeof *q->subs);
    q->seqs = calloc((size_t)n_pr * (size_t)n, sizeof *q->seqs);
    if (!q->subs || !q->seqs) {
        api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
        return;
    }
    q->n_subs = n_pr;
    q->n_choices = n_pr * n;
    /* /text/simple-gen answers the pipeline's text (always cleaned up, cut by
     * the prompt's decode); /v1 the decode, cleaned up as the tokenizer config says */
    q->cut_prompt = q->kind != K_V1;
    q->clean = q->kind != K_V1 || q->api->m->clean_up_spaces;
    for (int i = 0; i < n_pr; i++) {
        if (pr[i].dec) { /* the decode lives after the text, in the one allocation that api.c frees */
            char *t = realloc(pr[i].text, pr[i].text_len + pr[i].dec_len + 2);
            if (!t) {
                api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
                return;
            }
            memcpy(t + pr[i].text_len + 1, pr[i].dec, pr[i].dec_len + 1);
            pr[i].text = t;
        }
        q->subs[i] = (asub){.q = q, .n_seqs = n, .first = i * n, .prompt_text = pr[i].text,
                            .prompt_len = pr[i].text_len,
                            .prompt_dec = pr[i].dec ? pr[i].text + pr[i].text_len + 1 : NULL,
                            .prompt_dec_len = pr[i].dec_len};
        pr[i].text = NULL;
    }
    pthread_mutex_lock(&q->mu);
    int rc = CS_SCHED_OK;
    cs_err err = {{0}};
    for (int i = 0; i < n_pr && rc == CS_SCHED_OK; i++) {
        cs_req_params p = {.gen = *gen, .seed = seed, .prompt = pr[i].ids, .n_prompt = pr[i].n, .n_seqs = n,
                           .group = q, .group_seqs = i == 0 ? n_pr * n : 0}; /* one fair share, admitted whole */
        rc = cs_sched_submit(s, &p, on_event, &q->subs[i], &q->subs[i].req, &err);
        if (rc == CS_SCHED_OK) {
            q->subs[i].active = 1;
            q->n_active++;
            cs_http_req_ref(q->http);
        }
    }
    if (rc != CS_SCHED_OK) {
        for (int i = 0; i < n_pr; i++)
            if (q->subs[i].active) cs_sched_cancel(s, q->subs[i].req);
        q->aborted = 1;
        if (rc == CS_SCHED_FULL || rc == CS_SCHED_DRAINING)
            api_send_error(q, 503, NULL, rc == CS_SCHED_FULL ? "overloaded" : "draining", NULL, "%s", err.msg);
        else
            api_send_error(q, 422, NULL, "invalid_value", NULL, "%s", err.msg);
    } else {
        q->inflight = 1;
        cs_metrics_inflight_add(q->api->metrics, 1);
    }
    pthread_mutex_unlock(&q->mu);
}

int api_tokenize(cs_api *a, const char *field, const char *text, size_t len, prompt_in *p, verr *e) {
    if (len == 0)
        return api_vfail(e, 422, field, "invalid_value", "%s: empty prompt (at least one token is needed)", field);
    /* every token is at most max_tok_bytes long, so longer text cannot fit */
    if (len > (size_t)a->n_ctx * a->max_tok_bytes)
        return api_vfail(e, 422, field, "context_length_exceeded",
                         "%s: %zu bytes cannot fit in the model's context of %d tokens", field, len, a->n_ctx);
    cs_err err = {{0}};
    if (cs_tok_encode(a->m->tok, text, len, 1, &p->ids, &p->n, &err))
        return api_vfail(e, 422, field, "invalid_value", "%s: %s", field, err.msg);
    if (p->n == 0) return api_vfail(e, 422, field, "invalid_value", "%s: empty prompt (no tokens)", field);
    if (p->n > (size_t)a->n_ctx)
        return api_vfail(e, 422, field, "context_length_exceeded",
                         "%s: %zu tokens, more than the model's context of %d tokens", field, p->n, a->n_ctx);
    p->text = malloc(len + 1);
    if (!p->text) return api_vfail(e, 500, NULL, NULL, "out of memory");
    memcpy(p->text, text, len);
    p->text[len] = 0;
    p->text_len = len;
    return 0;
}

int api_check_lengths(cs_api *a, const cs_gen_params *g, const prompt_in *p, const char *field, verr *e) {
    long want = g->max_new_tokens >= 0 ? g->max_new_tokens : (long)g->max_length - (long)p->n;
    if ((long)p->n + want > a->n_ctx)
        return api_vfail(e, 422, field, "context_length_exceeded",
                         "%s: the prompt's %zu tokens + %ld new tokens exceed the model's context of %d tokens "
                         "(at most %ld new tokens for this prompt)",
                     field, p->n, want, a->n_ctx, (long)a->n_ctx - (long)p->n);
    return 0;
}
