/* cs_yd: YAML (or JSON, which is YAML) text -> a jansson tree, with the
 * source line:column of every value kept aside so that a later check can say
 * "FILE:LINE:COL: field: ...". Used by the Serve config (config.h).
 *
 * Reads one document as PyYAML's safe_load does: YAML 1.1 plain scalars
 * (null/~/empty, true/false/yes/no/on/off, decimal/0x/0b/octal ints with '_',
 * floats; a JSON exponent without a dot, 1e5, is a float too; .inf/.nan and
 * timestamps stay strings), quoted scalars are strings, the core tags !!str
 * !!int !!float !!bool !!null !!map !!seq, anchors/aliases and merge keys
 * ("<<", explicit keys win). Refused: a second document, duplicate keys,
 * non-scalar keys, other tags, an alias of an anchor not complete yet.
 *
 * Limits (the caller's, named in messages): nesting depth (aliases included)
 * and the node count after alias expansion, so that an alias bomb fails after
 * at most max_nodes steps; an alias shares its node (refcount), nothing is
 * copied. Errors: one line "ORIGIN:LINE:COL: ...".
 *
 * Thread-safety: none needed (no globals); a cs_yd_pos is read-only after
 * cs_yd_parse. */
#ifndef CS_SERVE_YAMLDOC_H
#define CS_SERVE_YAMLDOC_H

#include <jansson.h>
#include <stddef.h>

#include "engine/err.h"

typedef struct cs_yd_limits {
    int max_depth;          /* nesting of mappings/sequences */
    size_t max_nodes;       /* nodes after alias expansion */
    const char *depth_name; /* for messages, e.g. "CS_SCFG_MAX_DEPTH" */
    const char *nodes_name;
} cs_yd_limits;

typedef struct cs_yd_pos cs_yd_pos;

/* text[0..len) -> *out (new reference) and *pos (free with cs_yd_pos_free).
 * On failure both are NULL and err says where. An empty document is an error. */
int cs_yd_parse(const char *text, size_t len, const char *origin, const cs_yd_limits *lim, json_t **out,
                cs_yd_pos **pos, cs_err *err);

/* Where a value was written: parent's member key (key != NULL) or element idx;
 * key NULL and idx SIZE_MAX: the container parent itself. 0 and 1-based
 * *line, *col when known, -1 otherwise (e.g. keys added by a merge). */
int cs_yd_find(const cs_yd_pos *p, const json_t *parent, const char *key, size_t idx, int *line, int *col);

void cs_yd_pos_free(cs_yd_pos *p); /* NULL is a no-op */

#endif
