/* cs_chat_tpl: see chat_tpl.h. */
#include "serve/chat_tpl.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#define CONTENT CS_CHAT_TPL_CONTENT
#define CONTENT_LEN (sizeof CONTENT - 1)

enum { T_PREFIX, T_SYSTEM, T_USER, T_ASSISTANT, T_GENERATION, T_TEXTS };
static const char *const KEYS[T_TEXTS] = {"prefix", "system", "user", "assistant", "generation"};
static const char *const DEFAULTS[T_TEXTS] = {"", "System: {content}\n", "User: {content}\n", "Assistant: {content}\n",
                                              "Assistant:"};

const char *cs_chat_tpl_find_content(const char *s, size_t n, int *count) {
    const char *first = NULL;
    *count = 0;
    for (const char *p = s; (p = memmem(p, n - (size_t)(p - s), CONTENT, CONTENT_LEN)); p += CONTENT_LEN) {
        if (!first) first = p;
        ++*count;
    }
    return first;
}

/* The marker of a role, the text before {content} trimmed, into out; after
 * a newline when turns end with one (the assistant's text does). 0 when the
 * marker is empty (or too long to be a stop string). */
static int role_marker(const char *role, const char *assistant, char *out, size_t cap) {
    int count;
    const char *c = cs_chat_tpl_find_content(role, strlen(role), &count);
    const char *b = role, *e = c ? c : role;
    while (b < e && isspace((unsigned char)*b)) b++;
    while (e > b && isspace((unsigned char)e[-1])) e--;
    const size_t al = strlen(assistant);
    const int nl = al > 0 && assistant[al - 1] == '\n';
    if (e == b || (size_t)(e - b) + (size_t)nl + 1 > cap) return 0;
    if (nl) out[0] = '\n';
    memcpy(out + nl, b, (size_t)(e - b));
    out[(size_t)(e - b) + (size_t)nl] = 0;
    return 1;
}

/* A template's "stop" (a string or a list) into the list out. */
static int read_stop(const json_t *st, const char *what, json_t *out, cs_err *err) {
    size_t n = json_is_array(st) ? json_array_size(st) : 1;
    if (!json_is_array(st) && !json_is_string(st))
        return cs_err_set(err, "%s.stop: expected a string or a list of strings", what);
    if (n > CS_CHAT_TPL_MAX_STOP)
        return cs_err_set(err, "%s.stop: %zu strings, at most %d", what, n, CS_CHAT_TPL_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(st) ? json_array_get(st, i) : st;
        if (!json_is_string(s))
            return cs_err_set(err, "%s.stop[%zu]: expected a string", what, i);
        size_t len = json_string_length(s);
        if (len == 0 || len > CS_CHAT_TPL_MAX_STOP_BYTES)
            return cs_err_set(err, "%s.stop[%zu]: %zu bytes, must be 1..%d", what, i, len, CS_CHAT_TPL_MAX_STOP_BYTES);
        if (json_array_append(out, (json_t *)s)) return cs_err_set(err, "%s: out of memory", what);
    }
    return 0;
}

int cs_chat_tpl_norm(const json_t *in, const char *what, json_t **out, cs_err *err) {
    *out = NULL;
    if (in && !json_is_object(in)) return cs_err_set(err, "%s: expected an object", what);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)in, key, v) {
        int k = 0;
        while (k < T_TEXTS && strcmp(key, KEYS[k])) k++;
        if (k == T_TEXTS && strcmp(key, "stop"))
            return cs_err_set(err, "%s.%s: unknown key (known: prefix, system, user, assistant, generation, stop)",
                              what, key);
    }
    json_t *t = json_object(), *stop = json_array();
    if (!t || !stop) goto oom;
    for (int k = 0; k < T_TEXTS; k++) {
        v = in ? json_object_get(in, KEYS[k]) : NULL;
        if (v && !json_is_string(v)) {
            cs_err_set(err, "%s.%s: expected a string", what, KEYS[k]);
            goto fail;
        }
        const char *s = v ? json_string_value(v) : DEFAULTS[k];
        size_t n = v ? json_string_length(v) : strlen(s);
        int count;
        cs_chat_tpl_find_content(s, n, &count);
        const int role = k == T_SYSTEM || k == T_USER || k == T_ASSISTANT;
        if (strlen(s) != n) {
            cs_err_set(err, "%s.%s: holds a NUL character", what, KEYS[k]);
            goto fail;
        }
        if (n > CS_CHAT_TPL_MAX_BYTES) {
            cs_err_set(err, "%s.%s: %zu bytes, at most %d", what, KEYS[k], n, CS_CHAT_TPL_MAX_BYTES);
            goto fail;
        }
        if (role ? count != 1 : count != 0) {
            cs_err_set(err, "%s.%s: must hold " CONTENT " %s, found it %d times", what, KEYS[k],
                       role ? "exactly once (where the message goes)" : "no times (it takes no message)", count);
            goto fail;
        }
        if (json_object_set_new(t, KEYS[k], json_stringn(s, n))) goto oom;
    }
    v = in ? json_object_get(in, "stop") : NULL;
    if (v) {
        if (read_stop(v, what, stop, err)) goto fail;
    } else {
        char m[CS_CHAT_TPL_MAX_STOP_BYTES + 1];
        for (int k = T_SYSTEM; k <= T_USER; k++) /* the markers of the turns that end a reply */
            if (role_marker(json_string_value(json_object_get(t, KEYS[k])),
                            json_string_value(json_object_get(t, "assistant")), m, sizeof m))
                json_array_append_new(stop, json_string(m));
    }
    if (json_object_set_new(t, "stop", stop)) {
        stop = NULL;
        goto oom;
    }
    *out = t;
    return 0;
oom:
    cs_err_set(err, "%s: out of memory", what);
fail:
    json_decref(t);
    json_decref(stop);
    return -1;
}

int cs_chat_tpl_load(const char *arg, json_t **out, cs_err *err) {
    *out = NULL;
    const char *p = arg;
    while (isspace((unsigned char)*p)) p++;
    json_error_t je;
    json_t *doc;
    if (*p == '{') {
        doc = json_loads(arg, JSON_REJECT_DUPLICATES, &je);
        if (!doc) return cs_err_set(err, "chat template: not JSON (column %d: %s)", je.column, je.text);
    } else {
        FILE *f = fopen(arg, "rb");
        if (!f) return cs_err_set(err, "chat template %s: %s", arg, strerror(errno));
        doc = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
        fclose(f);
        if (!doc)
            return cs_err_set(err, "chat template %s: not a JSON object (line %d, column %d: %s)", arg, je.line,
                              je.column, je.text);
    }
    int rc = cs_chat_tpl_norm(doc, "chat_template", out, err);
    json_decref(doc);
    return rc;
}
