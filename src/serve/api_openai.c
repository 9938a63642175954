/* cs_api: the OpenAI-compatible routes, POST /v1/completions (also streamed
 * as server-sent events) and GET /v1/models[/ID] (see api.h, README "HTTP
 * API"), and the fields /v1/chat/completions (api_chat.c) shares with them.
 * Errors here are in OpenAI's shape (q->kind == K_V1). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/utf8.h"
#include "serve/api_internal.h"

/* Reads "prompt" into up to CS_API_MAX_PROMPTS prompts. */
static int read_prompts(cs_api *a, json_t *root, prompt_in *pr, int *n_pr, verr *e) {
    json_t *p = json_object_get(root, "prompt");
    *n_pr = 0;
    if (!p || json_is_null(p)) return api_vfail(e, 422, "prompt", "missing", "prompt: field required");
    if (json_is_string(p)) {
        *n_pr = 1;
        return api_tokenize(a, "prompt", json_string_value(p), json_string_length(p), &pr[0], e);
    }
    if (!json_is_array(p))
        return api_vfail(e, 422, "prompt", "invalid_type",
                         "prompt: expected a string, a list of strings or a list of token ids, got %s",
                         api_json_kind(p));
    size_t n = json_array_size(p);
    if (n == 0) return api_vfail(e, 422, "prompt", "invalid_value", "prompt: empty list");
    json_t *first = json_array_get(p, 0);
    const int ids_one = json_is_integer(first); /* [1, 2, 3]: one prompt of token ids */
    if (!ids_one && n > CS_API_MAX_PROMPTS)
        return api_vfail(e, 422, "prompt", "invalid_value", "prompt: %zu prompts, at most %d in one request", n,
                         CS_API_MAX_PROMPTS);
    const size_t n_prompts = ids_one ? 1 : n;
    for (size_t i = 0; i < n_prompts; i++) {
        json_t *item = ids_one ? p : json_array_get(p, i);
        *n_pr = (int)i + 1;
        if (json_is_string(item)) {
            if (api_tokenize(a, "prompt", json_string_value(item), json_string_length(item), &pr[i], e)) return -1;
            continue;
        }
        if (!json_is_array(item))
            return api_vfail(e, 422, "prompt", "invalid_type",
                             "prompt[%zu]: expected a string or a list of token ids, got %s", i, api_json_kind(item));
        size_t k = json_array_size(item);
        if (k == 0) return api_vfail(e, 422, "prompt", "invalid_value", "prompt: empty list of token ids");
        if (k > (size_t)a->n_ctx)
            return api_vfail(e, 422, "prompt", "context_length_exceeded",
                             "prompt: %zu tokens, more than the model's context of %d tokens", k, a->n_ctx);
        pr[i].ids = malloc(k * sizeof *pr[i].ids);
        if (!pr[i].ids) return api_vfail(e, 500, NULL, NULL, "out of memory");
        const int32_t V = cs_tok_vocab_size(a->m->tok);
        for (size_t j = 0; j < k; j++) {
            json_t *t = json_array_get(item, j);
            if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= V)
                return api_vfail(e, 422, "prompt", "invalid_value", "prompt: token ids must be integers in [0, %d)", V);
            pr[i].ids[j] = (int32_t)json_integer_value(t);
        }
        pr[i].n = k;
        char *raw = NULL;
        size_t rl = 0;
        cs_err err;
        if (cs_tok_decode(a->m->tok, pr[i].ids, k, &raw, &rl, &err))
            return api_vfail(e, 422, "prompt", "invalid_value", "prompt: %s", err.msg);
        pr[i].text = cs_utf8_repair(raw, rl, &pr[i].text_len);
        free(raw);
        if (!pr[i].text) return api_vfail(e, 500, NULL, NULL, "out of memory");
    }
    return 0;
}

int api_add_stop(areq *q, const char *s, size_t len, verr *e) {
    q->stops[q->n_stop] = malloc(len);
    if (!q->stops[q->n_stop]) return api_vfail(e, 500, NULL, NULL, "out of memory");
    memcpy(q->stops[q->n_stop], s, len);
    q->stop_len[q->n_stop++] = len;
    if (len > q->max_stop) q->max_stop = len;
    return 0;
}

static int read_stops(areq *q, json_t *root, verr *e) {
    json_t *st = json_object_get(root, "stop");
    if (!st || json_is_null(st)) return 0;
    json_t *one[1] = {st};
    size_t n = 1;
    if (json_is_array(st)) {
        n = json_array_size(st);
        if (n > CS_API_MAX_STOP)
            return api_vfail(e, 422, "stop", "invalid_value", "stop: %zu strings, at most %d", n, CS_API_MAX_STOP);
    } else if (!json_is_string(st)) {
        return api_vfail(e, 422, "stop", "invalid_type", "stop: expected a string or a list of strings, got %s",
                         api_json_kind(st));
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(st) ? json_array_get(st, i) : one[0];
        if (!json_is_string(s))
            return api_vfail(e, 422, "stop", "invalid_type", "stop[%zu]: expected a string, got %s", i,
                             api_json_kind(s));
        size_t len = json_string_length(s);
        if (len == 0) return api_vfail(e, 422, "stop", "invalid_value", "stop[%zu]: empty string", i);
        if (len > CS_API_MAX_STOP_BYTES)
            return api_vfail(e, 422, "stop", "invalid_value", "stop[%zu]: %zu bytes, at most %d", i, len,
                             CS_API_MAX_STOP_BYTES);
        if (api_add_stop(q, json_string_value(s), len, e)) return -1;
    }
    return 0;
}

/* Accepts only the neutral value of an OpenAI field we do not implement:
 * null, or 0 (kind 'n'), {} ('o'), "" ('s'), as the OpenAPI document says. */
static int unsupported(json_t *root, const char *key, char kind, verr *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (kind == 'n' && json_is_number(v) && json_number_value(v) == 0) return 0;
    if (kind == 'o' && json_is_object(v) && json_object_size(v) == 0) return 0;
    if (kind == 's' && json_is_string(v) && json_string_length(v) == 0) return 0;
    return api_vfail(e, 422, key, "unsupported", "%s: not supported by this server (leave it out or null)", key);
}

int api_v1_read(areq *q, json_t *root, cs_gen_params *g, api_v1_opts *o, verr *e) {
    cs_api *a = q->api;
    int r, bv;
    long long v;
    double temperature = 1, top_p = 1, rep = 1;
    long long top_k = 0;
    *o = (api_v1_opts){.n = 1, .seed = api_random_u64()};
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model))
            return api_vfail(e, 422, "model", "invalid_type", "model: expected a string, got %s", api_json_kind(model));
        const char *mn = json_string_value(model);
        if (strcmp(mn, a->model_name) && strcmp(mn, a->model_arg))
            return api_vfail(e, 404, "model", "model_not_found",
                             "The model '%s' does not exist (this server serves '%s')", mn, a->model_name);
    }
    if (api_opt_num(root, "temperature", 0, 2, 0, &temperature, e) < 0) return -1;
    if (api_opt_num(root, "top_p", 0, 1, 1, &top_p, e) < 0) return -1;
    if ((r = api_opt_int(root, "top_k", -1, 1 << 30, &v, e)) < 0) return -1;
    if (r) top_k = v < 0 ? 0 : v;
    if (api_opt_num(root, "repetition_penalty", 0, 100, 1, &rep, e) < 0) return -1;
    if ((r = api_opt_int(root, "n", 1, CS_API_MAX_N, &v, e)) < 0) return -1;
    if (r) o->n = (int)v;
    if ((r = api_opt_int(root, "seed", INT64_MIN, INT64_MAX, &v, e)) < 0) return -1;
    if (r) o->seed = (uint64_t)v;
    if (api_opt_bool(root, "stream", &o->stream, e) < 0) return -1;
    if ((r = api_opt_bool(root, "ignore_eos", &bv, e)) < 0) return -1;
    if (r) g->ignore_eos = bv;
    if (unsupported(root, "presence_penalty", 'n', e) || unsupported(root, "frequency_penalty", 'n', e) ||
        unsupported(root, "logit_bias", 'o', e))
        return -1;
    json_t *user = json_object_get(root, "user"); /* ignored, but typed as OpenAI has it */
    if (user && !json_is_null(user) && !json_is_string(user))
        return api_vfail(e, 422, "user", "invalid_type", "user: expected a string, got %s", api_json_kind(user));
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return api_vfail(e, 422, "stream_options", "invalid_type", "stream_options: expected an object, got %s",
                             api_json_kind(so));
        if (api_opt_bool(so, "include_usage", &q->include_usage, e) < 0) return -1;
    }
    if (read_stops(q, root, e)) return -1;
    g->sample.do_sample = temperature > 0;
    g->sample.temperature = temperature > 0 ? (float)temperature : 1.0f;
    g->sample.top_k = (int)top_k;
    g->sample.top_p = (float)top_p;
    g->sample.repetition_penalty = (float)rep;
    return 0;
}

void api_v1_submit(areq *q, cs_sched *s, const cs_gen_params *g, const api_v1_opts *o, const char *chunk_object,
                   prompt_in *pr, int n_pr) {
    cs_api *a = q->api;
    q->stream = o->stream;
    if (o->stream) {
        cs_sb_puts(&q->chunk_head, "{\"id\":");
        cs_sb_json_str(&q->chunk_head, q->id, strlen(q->id));
        cs_sb_printf(&q->chunk_head, ",\"object\":\"%s\",\"created\":%lld,\"model\":", chunk_object, q->created);
        cs_sb_json_str(&q->chunk_head, a->model_name, strlen(a->model_name));
        cs_sb_puts(&q->chunk_head, ",\"choices\":[");
        if (q->chunk_head.oom) {
            api_send_error(q, 500, NULL, NULL, NULL, "out of memory");
            return;
        }
    }
    api_submit_all(q, s, g, o->seed, pr, n_pr, o->n);
}

void api_completions(areq *q, cs_sched *s) {
    cs_api *a = q->api;
    json_t *root = api_parse_body(q);
    if (!root) return;
    verr e = {0};
    prompt_in pr[CS_API_MAX_PROMPTS];
    memset(pr, 0, sizeof pr);
    int n_pr = 0, r, echo = 0;
    long long v, max_tokens = 16;
    api_v1_opts o;
    cs_gen_params g = a->m->defaults;
    if (api_v1_read(q, root, &g, &o, &e)) goto fail;
    if (api_opt_int(root, "max_tokens", 1, a->n_ctx, &max_tokens, &e) < 0) goto fail;
    if (api_opt_bool(root, "echo", &echo, &e) < 0) goto fail;
    if ((r = api_opt_int(root, "best_of", 1, CS_API_MAX_N, &v, &e)) < 0) goto fail;
    if (r && v != o.n) {
        api_vfail(&e, 422, "best_of", "unsupported", "best_of: only best_of == n is supported");
        goto fail;
    }
    if (unsupported(root, "logprobs", 'n', &e) || unsupported(root, "suffix", 's', &e)) goto fail;
    if (read_prompts(a, root, pr, &n_pr, &e)) goto fail;
    g.max_new_tokens = (int)max_tokens;
    for (int i = 0; i < n_pr; i++)
        if (api_check_lengths(a, &g, &pr[i], "max_tokens", &e)) goto fail;
    json_decref(root);
    q->full_text = echo;
    api_v1_submit(q, s, &g, &o, "text_completion", pr, n_pr);
    api_prompts_free(pr, n_pr);
    return;
fail:
    json_decref(root);
    api_prompts_free(pr, n_pr);
    api_send_error(q, e.status, e.param, e.code, NULL, "%s", e.msg);
}

static json_t *model_obj(cs_api *a) {
    return json_pack("{s:s, s:s, s:I, s:s, s:i}", "id", a->model_name, "object", "model", "created",
                     (json_int_t)a->created, "owned_by", "cserve", "max_model_len", a->n_ctx);
}

void api_models(areq *q, const char *id) {
    cs_api *a = q->api;
    if (!id)
        api_reply_json(q, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model_obj(a)));
    else if (!strcmp(id, a->model_name) || !strcmp(id, a->model_arg)) api_reply_json(q, 200, model_obj(a));
    else api_send_error(q, 404, "model", "model_not_found", NULL, "The model '%s' does not exist", id);
}
