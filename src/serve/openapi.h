/* cs_openapi: the OpenAPI 3.1 document of cserve's HTTP API (GET
 * APP/openapi.json) and the page that shows it to a person (GET APP/docs), as
 * a FastAPI application has them.
 *
 * The document is a source file, src/serve/openapi/openapi.json, written for
 * one application at the root; the page is src/serve/openapi/docs.html (plain
 * HTML and JavaScript, no network access needed). Both are compiled into the
 * binary (.incbin in openapi.c). cs_openapi_render adapts the document to the
 * server that serves it: its route prefixes, and whether it has API keys.
 *
 * Threads: every function may be called from any thread; nothing is shared
 * but the read-only embedded bytes. */
#ifndef CS_OPENAPI_H
#define CS_OPENAPI_H

#include <stddef.h>

#include "engine/err.h"

#define CS_OPENAPI_MAX_PREFIXES 1024 /* applications described in one document */
#define CS_OPENAPI_MAX_PREFIX 512    /* bytes of one route prefix */

typedef struct cs_openapi_opts {
    /* The applications' route prefixes ("/" or "" for the root, else "/x",
     * no trailing slash needed): each gets the application routes
     * (/text/simple-gen, /v1/..., /openapi.json, /docs) under it. Borrowed. */
    const char *const *prefixes;
    size_t n_prefixes;
    /* No application at the root and the control-plane proxy answers there:
     * /v1/completions and /v1/models[/{model}] (by the request's model),
     * /openapi.json and /docs at the root too. */
    int root_proxy;
    int auth; /* the server has API keys: routes need a bearer token */
    /* The served model, when there is one (0: unknown, as behind the proxy,
     * where applications differ): its context length becomes the maximum of
     * max_new_tokens, max_tokens and of a list of token ids, its vocabulary
     * size the bound of a token id. */
    int n_ctx, n_vocab;
} cs_openapi_opts;

/* The document for o as compact JSON text: *out is malloc'd (caller frees),
 * *len its length. Routes that are not an application's (/-/healthz,
 * /-/routes, /metrics) stay at the root. Returns 0, or -1 with err (out of
 * memory, a prefix over CS_OPENAPI_MAX_PREFIX bytes or not starting with '/',
 * more than CS_OPENAPI_MAX_PREFIXES prefixes). */
int cs_openapi_render(const cs_openapi_opts *o, char **out, size_t *len, cs_err *err);

/* Which of the two routes rel (a path below an application's prefix) is:
 * CS_OPENAPI_DOCUMENT, CS_OPENAPI_PAGE, or 0. */
enum { CS_OPENAPI_DOCUMENT = 1, CS_OPENAPI_PAGE = 2 };
int cs_openapi_route(const char *rel);

/* The embedded page and document, as written (static storage, NUL-terminated). */
const char *cs_openapi_page(size_t *len);
const char *cs_openapi_source(size_t *len);

#define CS_OPENAPI_PAGE_TYPE "text/html; charset=utf-8"

#endif
