/* cs_api: POST /v1/chat/completions (see api.h, README "Chat completions").
 *
 * The messages become one plain-text prompt through the chat template in
 * force (serve/chat_tpl.h: the user_config's chat_template, else the one set
 * with --chat-template, else the default), list content parts joined by "\n";
 * the template's stop strings join the request's. Generation is the
 * completions machinery's (api_gen.c, with q->chat set): this file renders the
 * prompt and writes the chat-shaped output. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api_internal.h"
#include "serve/chat_tpl.h"

#define CONTENT_LEN (sizeof CS_CHAT_TPL_CONTENT - 1)

/* ------------------------------------------------------------ template */

int cs_api_set_chat_template(cs_api *a, const char *arg, cs_err *err) {
    json_t *t = NULL;
    if (arg && cs_chat_tpl_load(arg, &t, err)) return -1;
    pthread_mutex_lock(&a->ucfg_mu);
    json_t *old = a->chat_tpl;
    a->chat_tpl = t;
    pthread_mutex_unlock(&a->ucfg_mu);
    json_decref(old);
    return 0;
}

/* The template in force (new reference): user_config's, --chat-template's or the default. */
static json_t *tpl_current(cs_api *a) {
    pthread_mutex_lock(&a->ucfg_mu);
    json_t *t = json_incref(a->chat_uc ? a->chat_uc : a->chat_tpl);
    pthread_mutex_unlock(&a->ucfg_mu);
    if (!t) { /* the default; NULL only when out of memory */
        cs_err err;
        cs_chat_tpl_norm(NULL, "chat_template", &t, &err);
    }
    return t;
}

/* ------------------------------------------------------------ messages */

static void put_text(cs_sb *b, const json_t *t, const char *key) {
    const json_t *s = json_object_get(t, key);
    cs_sb_put(b, json_string_value(s), json_string_length(s));
}

/* The text of messages[i].content into b (list parts joined by "\n"). */
static int put_content(cs_sb *b, const json_t *c, size_t i, verr *e) {
    if (json_is_string(c)) {
        cs_sb_put(b, json_string_value(c), json_string_length(c));
        return 0;
    }
    if (!json_is_array(c))
        return api_vfail(e, 422, "messages", "invalid_type",
                         "messages[%zu].content: expected a string or a list of text parts, got %s", i,
                         api_json_kind(c));
    for (size_t j = 0; j < json_array_size(c); j++) {
        const json_t *part = json_array_get(c, j), *type = json_object_get(part, "type"),
                     *text = json_object_get(part, "text");
        if (!json_is_object(part))
            return api_vfail(e, 422, "messages", "invalid_type",
                             "messages[%zu].content[%zu]: expected an object, got %s", i, j, api_json_kind(part));
        if (!json_is_string(type) || strcmp(json_string_value(type), "text")) {
            const int str = json_is_string(type);
            return api_vfail(e, 422, "messages", "unsupported",
                             "messages[%zu].content[%zu].type: only \"text\" parts are supported by this model, "
                             "got %s%s%s", i, j, str ? "\"" : "",
                             str ? json_string_value(type) : type ? api_json_kind(type) : "nothing", str ? "\"" : "");
        }
        if (!json_is_string(text))
            return api_vfail(e, 422, "messages", "invalid_type",
                             "messages[%zu].content[%zu].text: expected a string, got %s", i, j,
                             text ? api_json_kind(text) : "nothing");
        if (j) cs_sb_put(b, "\n", 1);
        cs_sb_put(b, json_string_value(text), json_string_length(text));
    }
    return 0;
}

/* Renders "messages" through template t into b. */
static int render(const json_t *root, const json_t *t, cs_sb *b, verr *e) {
    const json_t *msgs = json_object_get(root, "messages");
    if (!msgs || json_is_null(msgs)) return api_vfail(e, 422, "messages", "missing", "messages: field required");
    if (!json_is_array(msgs))
        return api_vfail(e, 422, "messages", "invalid_type", "messages: expected a list of messages, got %s",
                         api_json_kind(msgs));
    const size_t n = json_array_size(msgs);
    if (n == 0) return api_vfail(e, 422, "messages", "invalid_value", "messages: empty list (at least one message)");
    if (n > CS_API_MAX_MESSAGES)
        return api_vfail(e, 422, "messages", "invalid_value", "messages: %zu messages, at most %d", n,
                         CS_API_MAX_MESSAGES);
    put_text(b, t, "prefix");
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role");
        if (!json_is_object(m))
            return api_vfail(e, 422, "messages", "invalid_type", "messages[%zu]: expected an object, got %s", i,
                             api_json_kind(m));
        const char *r = json_string_value(role), *k = NULL;
        if (!r)
            return api_vfail(e, 422, "messages", "invalid_type", "messages[%zu].role: expected a string, got %s", i,
                             role ? api_json_kind(role) : "nothing");
        if (!strcmp(r, "system") || !strcmp(r, "developer")) k = "system";
        else if (!strcmp(r, "user") || !strcmp(r, "assistant")) k = r;
        else
            return api_vfail(e, 422, "messages", "unsupported",
                             "messages[%zu].role: '%s' is not supported (system, developer, user or assistant)", i, r);
        static const char *const no[] = {"tool_calls", "function_call", "tool_call_id", "audio"};
        for (size_t j = 0; j < sizeof no / sizeof *no; j++) {
            const json_t *x = json_object_get(m, no[j]);
            if (x && !json_is_null(x) && !(json_is_array(x) && json_array_size(x) == 0))
                return api_vfail(e, 422, "messages", "unsupported", "messages[%zu].%s: not supported by this server",
                                 i, no[j]);
        }
        const json_t *name = json_object_get(m, "name"); /* ignored, but typed as OpenAI has it */
        if (name && !json_is_null(name) && !json_is_string(name))
            return api_vfail(e, 422, "messages", "invalid_type", "messages[%zu].name: expected a string, got %s", i,
                             api_json_kind(name));
        const json_t *c = json_object_get(m, "content");
        if (!c || json_is_null(c))
            return api_vfail(e, 422, "messages", "missing", "messages[%zu].content: field required", i);
        const json_t *tt = json_object_get(t, k);
        const char *ts = json_string_value(tt);
        const size_t tl = json_string_length(tt);
        int count;
        const char *at = cs_chat_tpl_find_content(ts, tl, &count);
        cs_sb_put(b, ts, (size_t)(at - ts));
        if (put_content(b, c, i, e)) return -1;
        cs_sb_put(b, at + CONTENT_LEN, tl - (size_t)(at - ts) - CONTENT_LEN);
    }
    put_text(b, t, "generation");
    return 0;
}

/* ------------------------------------------------------------ fields */

/* OpenAI's fields that ask for what a base model without tools cannot do:
 * accepted only with the one value that asks for nothing (as the OpenAPI
 * document says), refused otherwise rather than ignored. */
static int unsupported_fields(const json_t *root, verr *e) {
    const json_t *v;
    int lp = 0;
    if (api_opt_bool(root, "logprobs", &lp, e) < 0) return -1;
    const char *bad = lp ? "logprobs" : NULL;
    v = json_object_get(root, "top_logprobs"); /* null or 0 */
    if (!bad && v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0)) bad = "top_logprobs";
    v = json_object_get(root, "tools"); /* null or [] */
    if (!bad && v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0)) bad = "tools";
    v = json_object_get(root, "tool_choice"); /* null or "none" */
    if (!bad && v && !json_is_null(v) && !(json_is_string(v) && !strcmp(json_string_value(v), "none")))
        bad = "tool_choice";
    v = json_object_get(root, "response_format"); /* null or {"type": "text"}: the text we answer anyway */
    const json_t *vt = json_object_get(v, "type");
    const int plain_text = json_is_object(v) && json_object_size(v) == 1 && json_is_string(vt) &&
                           !strcmp(json_string_value(vt), "text");
    if (!bad && v && !json_is_null(v) && !plain_text) bad = "response_format";
    if (bad) return api_vfail(e, 422, bad, "unsupported", "%s: not supported by this server (leave it out)", bad);
    return 0;
}

/* The template's stop strings after the request's own (q has room for both). */
static int add_stops(areq *q, const json_t *t, verr *e) {
    const json_t *st = json_object_get(t, "stop");
    for (size_t i = 0; i < json_array_size(st); i++) {
        const json_t *s = json_array_get(st, i);
        if (api_add_stop(q, json_string_value(s), json_string_length(s), e)) return -1;
    }
    return 0;
}

void api_chat_completions(areq *q, cs_sched *s) {
    cs_api *a = q->api;
    json_t *root = api_parse_body(q);
    if (!root) return;
    verr e = {0};
    prompt_in pr = {0};
    cs_sb text = {0};
    json_t *t = tpl_current(a);
    api_v1_opts o;
    cs_gen_params g = a->m->defaults;
    long long max_tokens = 0, mct = 0;
    int r, r2;
    const char *mt_field = "max_tokens";
    q->chat = 1;
    snprintf(q->id, sizeof q->id, "chatcmpl-%s", q->request_id);
    if (!t) {
        api_vfail(&e, 500, NULL, NULL, "out of memory");
        goto fail;
    }
    if (api_v1_read(q, root, &g, &o, &e)) goto fail;
    if ((r = api_opt_int(root, "max_tokens", 1, a->n_ctx, &max_tokens, &e)) < 0) goto fail;
    /* OpenAI's newer name wins over the older one */
    if ((r2 = api_opt_int(root, "max_completion_tokens", 1, a->n_ctx, &mct, &e)) < 0) goto fail;
    if (r2) max_tokens = mct, mt_field = "max_completion_tokens", r = 1;
    if (unsupported_fields(root, &e)) goto fail;
    if (render(root, t, &text, &e)) goto fail;
    if (text.oom) {
        api_vfail(&e, 500, NULL, NULL, "out of memory");
        goto fail;
    }
    if (add_stops(q, t, &e)) goto fail;
    if (api_tokenize(a, "messages", text.p ? text.p : "", text.n, &pr, &e)) goto fail;
    if (!r) { /* as OpenAI: the reply may use what the context has left */
        if (pr.n >= (size_t)a->n_ctx) {
            api_vfail(&e, 422, "messages", "context_length_exceeded",
                      "messages: the rendered prompt's %zu tokens leave no room in the model's context of %d tokens",
                      pr.n, a->n_ctx);
            goto fail;
        }
        max_tokens = a->n_ctx - (long long)pr.n;
    }
    g.max_new_tokens = (int)max_tokens;
    if (api_check_lengths(a, &g, &pr, mt_field, &e)) goto fail;
    json_decref(root);
    json_decref(t);
    cs_sb_free(&text);
    api_v1_submit(q, s, &g, &o, "chat.completion.chunk", &pr, 1);
    api_prompts_free(&pr, 1);
    return;
fail:
    json_decref(root);
    json_decref(t);
    cs_sb_free(&text);
    api_prompts_free(&pr, 1);
    api_send_error(q, e.status, e.param, e.code, NULL, "%s", e.msg);
}

/* ------------------------------------------------------------ output */

void api_chat_chunk(const areq *q, cs_sb *b, int idx, const char *text, size_t n, const char *finish) {
    cs_sb_put(b, q->chunk_head.p, q->chunk_head.n);
    cs_sb_printf(b, "{\"index\":%d,\"delta\":", idx);
    if (finish) {
        cs_sb_puts(b, "{}");
    } else if (!text) {
        cs_sb_puts(b, "{\"role\":\"assistant\",\"content\":\"\"}");
    } else {
        cs_sb_puts(b, "{\"content\":");
        cs_sb_json_str(b, text, n);
        cs_sb_puts(b, "}");
    }
    cs_sb_puts(b, ",\"logprobs\":null,\"finish_reason\":");
    if (finish) cs_sb_printf(b, "\"%s\"", finish);
    else cs_sb_puts(b, "null");
    cs_sb_puts(b, q->include_usage ? "}],\"usage\":null}\n\n" : "}]}\n\n");
}

json_t *api_chat_choice(int idx, const char *text, size_t len, const char *finish) {
    return json_pack("{s:i, s:{s:s, s:s%, s:n}, s:n, s:s}", "index", idx, "message", "role", "assistant", "content",
                     text, len, "refusal", "logprobs", "finish_reason", finish);
}
