/* cs_api: the seed's POST /text/simple-gen (see api.h, README "HTTP API"),
 * and its user_config: generation defaults set at run time that override the
 * model's pipeline defaults.
 *
 * A request's generation settings are layered: the model's defaults (the
 * text-generation pipeline's of transformers 4.57.6, or 4.51.3 with the
 * user_config's pipeline_defaults "4.51"; see cs_pipeline_defaults), then the
 * user_config, then the request's own fields; each layer overrides only the
 * keys it gives. Lengths: max_new_tokens wins over max_length. A user_config
 * that gives only max_length turns off the max_new_tokens below it (as
 * pipeline(max_length=...) does); a request's fields are the pipeline call's
 * arguments, so there max_length does not (the pipeline's 256 new tokens still
 * win) and it truncates a longer prompt to max_length tokens (the pipeline
 * hands max_length to its tokenizer, which then truncates). The answer is the
 * pipeline's text: see cs_tok_pipeline_text. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api_internal.h"

/* The generation keys of a user_config and of a request, in the order they
 * are checked (the first error wins). */
static const struct gen_key {
    const char *key;
    unsigned bit;
    char kind;        /* 'i' integer, 'n' number, 'b' boolean */
    double lo, hi;    /* 'i': hi 0 = the context length; 'n': lo excluded */
} GEN_KEYS[] = {
    {"max_new_tokens", UC_MAX_NEW_TOKENS, 'i', 1, 0},
    {"max_length", UC_MAX_LENGTH, 'i', 1, 0},
    {"do_sample", UC_DO_SAMPLE, 'b', 0, 0},
    {"temperature", UC_TEMPERATURE, 'n', 0, 100},
    {"top_k", UC_TOP_K, 'i', 0, 1 << 30},
    {"top_p", UC_TOP_P, 'n', 0, 1},
    {"repetition_penalty", UC_REPETITION_PENALTY, 'n', 0, 100},
};
#define N_GEN_KEYS (sizeof GEN_KEYS / sizeof *GEN_KEYS)

/* Reads the generation keys of o into c (absent and null keys stay unset).
 * n_ctx: the upper bound of the lengths. */
static int gen_keys_read(const json_t *o, int n_ctx, api_ucfg *c, verr *e) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_GEN_KEYS; i++) {
        const struct gen_key *k = &GEN_KEYS[i];
        long long v = 0;
        double d = 0;
        int b = 0, r;
        if (k->kind == 'i') r = api_opt_int(o, k->key, (long long)k->lo, k->hi > 0 ? (long long)k->hi : n_ctx, &v, e);
        else if (k->kind == 'n') r = api_opt_num(o, k->key, k->lo, k->hi, 1, &d, e);
        else r = api_opt_bool(o, k->key, &b, e);
        if (r < 0) return -1;
        if (!r) continue;
        c->set |= k->bit;
        switch (k->bit) {
        case UC_MAX_NEW_TOKENS: c->max_new_tokens = (int)v; break;
        case UC_MAX_LENGTH: c->max_length = (int)v; break;
        case UC_DO_SAMPLE: c->do_sample = b; break;
        case UC_TEMPERATURE: c->temperature = (float)d; break;
        case UC_TOP_K: c->top_k = (int)v; break;
        case UC_TOP_P: c->top_p = (float)d; break;
        case UC_REPETITION_PENALTY: c->repetition_penalty = (float)d; break;
        }
    }
    return 0;
}

/* Applies the keys set in c onto g: a user_config's, or (call) a request's. */
static void gen_keys_apply(const api_ucfg *c, cs_gen_params *g, int call) {
    if (c->set & UC_MAX_NEW_TOKENS) g->max_new_tokens = c->max_new_tokens;
    else if ((c->set & UC_MAX_LENGTH) && !call) g->max_new_tokens = -1;
    if (c->set & UC_MAX_LENGTH) {
        g->max_length = c->max_length;
        g->max_length_given = call;
    }
    if (c->set & UC_DO_SAMPLE) g->sample.do_sample = c->do_sample;
    if (c->set & UC_TEMPERATURE) g->sample.temperature = c->temperature;
    if (c->set & UC_TOP_K) g->sample.top_k = c->top_k;
    if (c->set & UC_TOP_P) g->sample.top_p = c->top_p;
    if (c->set & UC_REPETITION_PENALTY) g->sample.repetition_penalty = c->repetition_penalty;
}

/* ------------------------------------------------------------ user_config */

/* Validates uc into c; n_ctx bounds the lengths (<= 0: CS_API_MAX_GEN_TOKENS).
 * chat: its chat_template, checked and filled in (new; NULL when none). */
static int user_config_read(const json_t *uc, int n_ctx, api_ucfg *c, json_t **chat, cs_err *err) {
    memset(c, 0, sizeof *c);
    *chat = NULL;
    if (!uc || json_is_null(uc)) return 0;
    if (!json_is_object(uc))
        return cs_err_set(err, "user_config: expected an object (or null), got %s", api_json_kind(uc));
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)uc, key, v) {
        size_t i = 0;
        while (i < N_GEN_KEYS && strcmp(key, GEN_KEYS[i].key)) i++;
        if (i == N_GEN_KEYS && strcmp(key, "pipeline_defaults") && strcmp(key, "chat_template"))
            return cs_err_set(err,
                              "user_config.%s: unknown key (known: max_new_tokens, max_length, do_sample, temperature, "
                              "top_k, top_p, repetition_penalty, pipeline_defaults, chat_template)",
                              key);
    }
    verr e = {0};
    if (gen_keys_read(uc, n_ctx > 0 ? n_ctx : CS_API_MAX_GEN_TOKENS, c, &e))
        return cs_err_set(err, "user_config.%s", e.msg);
    v = json_object_get(uc, "pipeline_defaults");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || cs_pipeline_defaults_parse(json_string_value(v), &c->pipeline_defaults))
            return cs_err_set(err, "user_config.pipeline_defaults: expected \"4.57\" (transformers >= 4.52, the "
                                   "default) or \"4.51\" (transformers <= 4.51: distilgpt2's max_length 50)");
        c->set |= UC_PIPELINE_DEFAULTS;
    }
    v = json_object_get(uc, "chat_template");
    if (v && !json_is_null(v)) {
        if (cs_chat_tpl_norm(v, "user_config.chat_template", chat, err)) return -1;
        c->set |= UC_CHAT_TEMPLATE;
    }
    return 0;
}

int cs_api_user_config_check(const json_t *user_config, cs_err *err) {
    api_ucfg c;
    json_t *chat;
    int rc = user_config_read(user_config, 0, &c, &chat, err);
    json_decref(chat);
    return rc;
}

int cs_api_set_user_config(cs_api *a, const json_t *user_config, cs_err *err) {
    pthread_rwlock_rdlock(&a->lock);
    const int n_ctx = a->m ? a->n_ctx : 0;
    pthread_rwlock_unlock(&a->lock);
    api_ucfg c;
    json_t *chat;
    if (user_config_read(user_config, n_ctx, &c, &chat, err)) return -1;
    json_t *doc = c.set ? json_deep_copy(user_config) : NULL;
    if (c.set && !doc) {
        json_decref(chat);
        return cs_err_set(err, "user_config: out of memory");
    }
    pthread_mutex_lock(&a->ucfg_mu);
    a->ucfg = c;
    json_t *old = a->ucfg_doc, *old_chat = a->chat_uc;
    a->ucfg_doc = doc;
    a->chat_uc = chat;
    pthread_mutex_unlock(&a->ucfg_mu);
    json_decref(old);
    json_decref(old_chat);
    return 0;
}

json_t *cs_api_user_config(cs_api *a) {
    pthread_mutex_lock(&a->ucfg_mu);
    json_t *out = a->ucfg_doc ? json_deep_copy(a->ucfg_doc) : json_object();
    pthread_mutex_unlock(&a->ucfg_mu);
    return out;
}

/* ----------------------------------------------------- /text/simple-gen */

void api_simple_gen(areq *q, cs_sched *s) {
    cs_api *a = q->api;
    json_t *root = api_parse_body(q);
    if (!root) return;
    verr e = {0};
    prompt_in pr = {0};
    json_t *in = json_object_get(root, "input");
    long long v;
    api_ucfg uc, rq;
    cs_gen_params g;
    int n = 1, full = 1, stream = 0;
    uint64_t seed = api_random_u64();
    if (!in) {
        api_vfail(&e, 422, "input", "missing", "input: field required (a string)");
        goto fail;
    }
    if (!json_is_string(in)) {
        api_vfail(&e, 422, "input", "invalid_type", "input: expected a string, got %s", api_json_kind(in));
        goto fail;
    }
    if (gen_keys_read(root, a->n_ctx, &rq, &e)) goto fail;
    int r;
    if ((r = api_opt_int(root, "seed", 0, INT64_MAX, &v, &e)) < 0) goto fail;
    if (r) seed = (uint64_t)v;
    if ((r = api_opt_int(root, "num_return_sequences", 1, CS_API_MAX_N, &v, &e)) < 0) goto fail;
    if (r) n = (int)v;
    if (api_opt_bool(root, "return_full_text", &full, &e) < 0) goto fail;
    if (api_opt_bool(root, "stream", &stream, &e) < 0) goto fail;
    if (api_tokenize(a, "input", json_string_value(in), json_string_length(in), &pr, &e)) goto fail;
    pthread_mutex_lock(&a->ucfg_mu); /* the values this request keeps, whatever is set later */
    uc = a->ucfg;
    pthread_mutex_unlock(&a->ucfg_mu);
    g = uc.pipeline_defaults == CS_PIPELINE_451 ? a->m->defaults_legacy : a->m->defaults;
    gen_keys_apply(&uc, &g, 0);
    gen_keys_apply(&rq, &g, 1);
    /* the pipeline's tokenizer truncates the prompt to a max_length it is given */
    if ((rq.set & UC_MAX_LENGTH) && pr.n > (size_t)rq.max_length) pr.n = (size_t)rq.max_length;
    cs_err err = {{0}};
    /* transformers' rules, n_positions + 1 included (see cs_gen_new_tokens) */
    if (cs_gen_new_tokens(&g, pr.n, a->n_ctx, &err) < 0) {
        const char *f = g.max_new_tokens >= 0 ? "max_new_tokens" : "max_length";
        api_vfail(&e, 422, f, "context_length_exceeded", "%s: %s", f, err.msg);
        goto fail;
    }
    if (cs_tok_decode_ex(a->m->tok, pr.ids, pr.n, 1, &pr.dec, &pr.dec_len, &err)) {
        api_vfail(&e, 500, NULL, NULL, "%s", err.msg);
        goto fail;
    }
    json_decref(root);
    q->stream = stream;
    q->full_text = full;
    api_submit_all(q, s, &g, seed, &pr, 1, n);
    api_prompts_free(&pr, 1);
    return;
fail:
    json_decref(root);
    api_prompts_free(&pr, 1);
    api_send_error(q, e.status, e.param, e.code, NULL, "%s", e.msg);
}
