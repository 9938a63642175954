/* cs_openapi: see openapi.h.
 *
 * Why a JSON source file rather than a document built with jansson calls:
 * the document is mostly prose and schemas (about 500 lines); as a file it
 * reads and diffs as what it is, validators and schemathesis read it as it
 * is, and the C code only moves the application routes under their
 * prefixes. Limits that are constants here (CS_API_MAX_N, ...) are written
 * in it as numbers; tests/serve/test_openapi.py checks them against api.h.
 *
 * The files are embedded with the assembler's .incbin (GCC and clang, no
 * generated source, no extra build tool); the Makefile names them as
 * prerequisites of openapi.o, since -MMD does not see them. */
#include "serve/openapi.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each file is followed by a NUL, and its size (without it) is stored next to it. */
#define CS_OPENAPI_EMBED(sym, file)                                                                                    \
    ".section .rodata\n"                                                                                               \
    ".balign 8\n"                                                                                                      \
    ".globl " sym "_data\n"                                                                                            \
    ".hidden " sym "_data\n"                                                                                           \
    sym "_data:\n"                                                                                                     \
    ".incbin \"" file "\"\n"                                                                                           \
    sym "_end:\n"                                                                                                      \
    ".byte 0\n"                                                                                                        \
    ".balign 8\n"                                                                                                      \
    ".globl " sym "_size\n"                                                                                            \
    ".hidden " sym "_size\n"                                                                                           \
    sym "_size:\n"                                                                                                     \
    ".quad " sym "_end - " sym "_data\n"                                                                               \
    ".previous\n"

__asm__(CS_OPENAPI_EMBED("cs_openapi_json", "src/serve/openapi/openapi.json")
            CS_OPENAPI_EMBED("cs_openapi_html", "src/serve/openapi/docs.html"));

extern const char cs_openapi_json_data[], cs_openapi_html_data[];
extern const uint64_t cs_openapi_json_size, cs_openapi_html_size;

const char *cs_openapi_source(size_t *len) {
    if (len) *len = (size_t)cs_openapi_json_size;
    return cs_openapi_json_data;
}

const char *cs_openapi_page(size_t *len) {
    if (len) *len = (size_t)cs_openapi_html_size;
    return cs_openapi_html_data;
}

int cs_openapi_route(const char *rel) {
    if (!strcmp(rel, "/openapi.json")) return CS_OPENAPI_DOCUMENT;
    if (!strcmp(rel, "/docs")) return CS_OPENAPI_PAGE;
    return 0;
}

/* Routes of the server rather than of an application: never under a prefix. */
static int server_route(const char *path) { return !strncmp(path, "/-/", 3) || !strcmp(path, "/metrics"); }

/* Routes the proxy answers at the root when no application is there. */
static int root_proxy_route(const char *path) {
    return !strncmp(path, "/v1/", 4) || cs_openapi_route(path) != 0;
}

/* operationId + "_" + the prefix's letters and digits ("/small-a" -> "_small_a"),
 * so that ids stay unique when several applications are described. */
static int suffix_operation_ids(json_t *item, const char *prefix) {
    char suffix[CS_OPENAPI_MAX_PREFIX + 2];
    size_t n = 0;
    for (const char *p = prefix; *p && n + 1 < sizeof suffix; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        suffix[n++] = ok ? c : '_';
    }
    suffix[n] = 0;
    const char *method;
    json_t *op;
    json_object_foreach(item, method, op) {
        const char *id = json_string_value(json_object_get(op, "operationId"));
        if (!id) continue;
        size_t il = strlen(id);
        char *nid = malloc(il + n + 1);
        if (!nid) return -1;
        memcpy(nid, id, il);
        memcpy(nid + il, suffix, n + 1);
        int rc = json_object_set_new(op, "operationId", json_string(nid));
        free(nid);
        if (rc) return -1;
    }
    return 0;
}

/* Adds src's application routes to dst under prefix ("" = the root). */
static int add_app_routes(json_t *dst, json_t *src, const char *prefix) {
    const char *path;
    json_t *item;
    json_object_foreach(src, path, item) {
        if (server_route(path)) continue;
        size_t pl = strlen(prefix), l = strlen(path);
        char *full = malloc(pl + l + 1);
        json_t *copy = json_deep_copy(item);
        int rc = !full || !copy;
        if (!rc) {
            memcpy(full, prefix, pl);
            memcpy(full + pl, path, l + 1);
            rc = (pl && suffix_operation_ids(copy, prefix)) || json_object_set(dst, full, copy);
        }
        free(full);
        json_decref(copy);
        if (rc) return -1;
    }
    return 0;
}

/* doc.components.schemas.<schema>[.properties.<prop>].<key> = v, where that object exists. */
static int set_limit(json_t *doc, const char *schema, const char *prop, const char *key, json_int_t v) {
    json_t *o = json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"), schema);
    if (prop) o = json_object_get(json_object_get(o, "properties"), prop);
    if (!json_is_object(o)) return 0;
    return json_object_set_new(o, key, json_integer(v));
}

/* The served model's limits, where the source says them in words. A prompt
 * has at least one token, so no request can ask for more new tokens than the
 * context (max_length, which counts the prompt, is left in words). */
static int model_limits(json_t *doc, int n_ctx, int n_vocab) {
    int rc = 0;
    if (n_ctx > 0) {
        rc |= set_limit(doc, "SimpleGenRequest", "max_new_tokens", "maximum", n_ctx);
        rc |= set_limit(doc, "CompletionRequest", "max_tokens", "maximum", n_ctx);
        rc |= set_limit(doc, "ChatCompletionRequest", "max_tokens", "maximum", n_ctx);
        rc |= set_limit(doc, "ChatCompletionRequest", "max_completion_tokens", "maximum", n_ctx);
        rc |= set_limit(doc, "TokenIds", NULL, "maxItems", n_ctx);
    }
    if (n_vocab > 0) {
        json_t *ids = json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"), "TokenIds");
        json_t *items = json_object_get(ids, "items");
        if (json_is_object(items)) rc |= json_object_set_new(items, "maximum", json_integer(n_vocab - 1));
    }
    return rc ? -1 : 0;
}

int cs_openapi_render(const cs_openapi_opts *o, char **out, size_t *len, cs_err *err) {
    *out = NULL;
    *len = 0;
    if (o->n_prefixes > CS_OPENAPI_MAX_PREFIXES)
        return cs_err_set(err, "openapi: %zu applications, at most %d", o->n_prefixes, CS_OPENAPI_MAX_PREFIXES);
    for (size_t i = 0; i < o->n_prefixes; i++) {
        const char *p = o->prefixes[i];
        if (p[0] && (p[0] != '/' || strlen(p) > CS_OPENAPI_MAX_PREFIX))
            return cs_err_set(err, "openapi: route prefix '%.64s': must start with '/' and be at most %d bytes", p,
                              CS_OPENAPI_MAX_PREFIX);
    }
    json_error_t je;
    json_t *doc = json_loadb(cs_openapi_json_data, (size_t)cs_openapi_json_size, 0, &je);
    if (!doc) return cs_err_set(err, "openapi: embedded document: line %d: %s", je.line, je.text);
    json_t *src = json_object_get(doc, "paths"), *paths = json_object();
    int rc = !src || !paths;
    const char *path;
    json_t *item;
    /* the server's routes first, then each application's, then the proxy's root */
    if (!rc) {
        json_object_foreach(src, path, item) {
            if (server_route(path) && json_object_set(paths, path, item)) rc = -1;
        }
    }
    char prefix[CS_OPENAPI_MAX_PREFIX + 1];
    for (size_t i = 0; i < o->n_prefixes && !rc; i++) {
        size_t pl = strlen(o->prefixes[i]);
        while (pl && o->prefixes[i][pl - 1] == '/') pl--;
        memcpy(prefix, o->prefixes[i], pl);
        prefix[pl] = 0;
        rc = add_app_routes(paths, src, prefix);
    }
    if (o->root_proxy && !rc) {
        json_object_foreach(src, path, item) {
            if (root_proxy_route(path) && !json_object_get(paths, path) && json_object_set(paths, path, item)) rc = -1;
        }
    }
    if (!rc) rc = json_object_set(doc, "paths", paths);
    if (!rc) rc = model_limits(doc, o->n_ctx, o->n_vocab);
    /* without keys no route needs one (the per-route "security": [] of the open ones stay harmless) */
    if (!rc && !o->auth) json_object_del(doc, "security");
    json_decref(paths);
    char *s = rc ? NULL : json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!s) return cs_err_set(err, "openapi: out of memory");
    *out = s;
    *len = strlen(s);
    return 0;
}
