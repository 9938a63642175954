/* cs_yd: see yamldoc.h. libyaml's event parser builds the json_t tree
 * directly (no libyaml document, so nothing is expanded twice); positions
 * live in an open-addressing table keyed by (container, key or index). */
#include "serve/yamldoc.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YD_MAX_ANCHORS 256 /* distinct anchors in one document */

/* Where a value was written: keyed by (container, member key) or
 * (container, index); a container's own position uses idx SIZE_MAX. Kept
 * apart from the json_t nodes because true/false/null are shared singletons
 * in jansson and because an alias puts one node in several places. */
typedef struct pos_ent {
    const void *parent; /* NULL: empty slot */
    char *key;          /* NULL: an index */
    size_t idx;
    int line, col;      /* 1-based */
} pos_ent;

struct cs_yd_pos {
    pos_ent *e;
    size_t cap, n;
};
typedef struct cs_yd_pos postab;

static uint64_t pos_hash(const void *parent, const char *key, size_t idx) {
    uint64_t h = (uint64_t)(uintptr_t)parent * 0x9E3779B97F4A7C15ull;
    if (key)
        for (const unsigned char *s = (const unsigned char *)key; *s; s++) h = (h ^ *s) * 0x100000001B3ull;
    else
        h ^= (uint64_t)idx * 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 31);
}

static int pos_same(const pos_ent *e, const void *parent, const char *key, size_t idx) {
    if (e->parent != parent) return 0;
    if (!key || !e->key) return !key && !e->key && e->idx == idx;
    return strcmp(e->key, key) == 0;
}

void cs_yd_pos_free(cs_yd_pos *t) {
    if (!t) return;
    for (size_t i = 0; i < t->cap; i++) free(t->e[i].key);
    free(t->e);
    free(t);
}

static int pos_grow(postab *t) {
    size_t ncap = t->cap ? t->cap * 2 : 1024;
    pos_ent *ne = calloc(ncap, sizeof *ne);
    if (!ne) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        pos_ent *e = &t->e[i];
        if (!e->parent) continue;
        size_t j = (size_t)pos_hash(e->parent, e->key, e->idx) & (ncap - 1);
        while (ne[j].parent) j = (j + 1) & (ncap - 1);
        ne[j] = *e;
    }
    free(t->e);
    t->e = ne;
    t->cap = ncap;
    return 0;
}

/* The first position recorded for a slot wins. */
static int pos_put(postab *t, const void *parent, const char *key, size_t idx, yaml_mark_t m) {
    if ((t->n + 1) * 2 > t->cap && pos_grow(t)) return -1;
    size_t j = (size_t)pos_hash(parent, key, idx) & (t->cap - 1);
    while (t->e[j].parent) {
        if (pos_same(&t->e[j], parent, key, idx)) return 0;
        j = (j + 1) & (t->cap - 1);
    }
    char *k = NULL;
    if (key && !(k = strdup(key))) return -1;
    t->e[j] = (pos_ent){parent, k, idx, (int)m.line + 1, (int)m.column + 1};
    t->n++;
    return 0;
}

int cs_yd_find(const cs_yd_pos *t, const json_t *parent, const char *key, size_t idx, int *line, int *col) {
    *line = *col = -1;
    if (!t || !t->cap) return -1;
    size_t j = (size_t)pos_hash(parent, key, idx) & (t->cap - 1);
    while (t->e[j].parent) {
        if (pos_same(&t->e[j], parent, key, idx)) {
            *line = t->e[j].line;
            *col = t->e[j].col;
            return 0;
        }
        j = (j + 1) & (t->cap - 1);
    }
    return -1;
}

/* ============================================================ YAML -> JSON */

typedef struct yframe {
    json_t *node;   /* object or array (owned) */
    int is_map;
    char *key;      /* pending mapping key (owned), NULL when none */
    int key_merge;  /* the pending key is the merge key "<<" */
    yaml_mark_t key_mark, mark;
    char *anchor;   /* registered when the node is complete */
    size_t count;   /* nodes in this subtree, aliases expanded */
    int height;     /* levels of nesting in this subtree (1: no child containers) */
    json_t *merges; /* array of "<<" sources, or NULL */
} yframe;

typedef struct yanchor {
    char *name;
    json_t *node;
    size_t count;
    int height;
} yanchor;

typedef struct ybuild {
    const char *origin;
    const char *text;
    size_t len;
    cs_err *err;
    const cs_yd_limits *lim;
    postab *pos;
    yframe *st; /* lim->max_depth */
    int depth;
    yanchor anchors[YD_MAX_ANCHORS];
    int n_anchors;
    size_t nodes;
    int docs;
    json_t *root;
} ybuild;

__attribute__((format(printf, 3, 4))) static int y_fail(ybuild *b, yaml_mark_t m, const char *fmt, ...) {
    char msg[CS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cs_err_set(b->err, "%s:%d:%d: %s", b->origin, (int)m.line + 1, (int)m.column + 1, msg);
}

/* Copies at most max bytes of s into buf for a message (cut with "..."). */
static const char *clip(char *buf, size_t cap, const char *s, size_t max) {
    size_t n = strlen(s);
    if (max + 4 > cap) max = cap - 4;
    if (n <= max) {
        memcpy(buf, s, n + 1);
    } else {
        while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--; /* whole UTF-8 characters */
        memcpy(buf, s, max);
        memcpy(buf + max, "...", 4);
    }
    return buf;
}

static int y_count(ybuild *b, size_t n, yaml_mark_t m) {
    b->nodes += n;
    if (b->nodes > b->lim->max_nodes)
        return y_fail(b, m, "more than %zu YAML nodes (aliases expanded; %s): an alias bomb?", b->lim->max_nodes,
                      b->lim->nodes_name);
    return 0;
}

static yanchor *y_find_anchor(ybuild *b, const char *name) {
    for (int i = b->n_anchors - 1; i >= 0; i--)
        if (strcmp(b->anchors[i].name, name) == 0) return &b->anchors[i];
    return NULL;
}

static int y_anchor(ybuild *b, const char *name, json_t *node, size_t count, int height, yaml_mark_t m) {
    yanchor *a = y_find_anchor(b, name); /* YAML lets a later anchor of the same name replace it */
    if (!a) {
        if (b->n_anchors == YD_MAX_ANCHORS) return y_fail(b, m, "more than %d YAML anchors", YD_MAX_ANCHORS);
        a = &b->anchors[b->n_anchors];
        if (!(a->name = strdup(name))) return y_fail(b, m, "out of memory");
        b->n_anchors++;
    } else {
        json_decref(a->node);
    }
    a->node = json_incref(node);
    a->count = count;
    a->height = height;
    return 0;
}

/* YAML 1.1 plain scalars as PyYAML's safe_load reads them (sexagesimal and
 * timestamps stay strings); a JSON-style exponent without a dot (1e5) is a
 * float too, so that JSON numbers read as numbers. */
static int is_null_word(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static int bool_word(const char *s) {
    static const char *t[] = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"};
    static const char *f[] = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        if (!strcmp(s, t[i])) return 1;
        if (!strcmp(s, f[i])) return 0;
    }
    return -1;
}

/* Integer forms: [-+]? then 0b[01_]+ | 0x[0-9a-fA-F_]+ | 0[0-7_]+ | 0 | [1-9][0-9_]*.
 * Returns 1 and *out (or *big when it does not fit an int64), 0 when not an int. */
static int parse_int(const char *s, json_int_t *out, int *big) {
    int neg = 0, base = 10;
    *big = 0;
    if (*s == '-' || *s == '+') neg = *s++ == '-';
    if (!*s) return 0;
    if (s[0] == '0' && s[1] == 'b') base = 2, s += 2;
    else if (s[0] == '0' && s[1] == 'x') base = 16, s += 2;
    else if (s[0] == '0' && s[1]) base = 8, s += 1;
    if (!*s) return 0;
    uint64_t v = 0;
    int digits = 0;
    for (; *s; s++) {
        if (*s == '_') continue;
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else return 0;
        if (d >= base) return 0;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) *big = 1;
        else v = v * (uint64_t)base + (uint64_t)d;
        digits++;
    }
    if (!digits) return 0;
    if (v > (uint64_t)INT64_MAX + (uint64_t)neg) *big = 1;
    if (!*big) *out = neg ? (json_int_t)(0 - v) : (json_int_t)v;
    return 1;
}

/* Float forms: [-+]? digits/underscores, optional .fraction, optional exponent;
 * at least one digit and a dot or an exponent. */
static int is_float(const char *s) {
    const char *p = s;
    int digits = 0, dot = 0, exp = 0;
    if (*p == '-' || *p == '+') p++;
    if (*p == '_') return 0;
    for (; (*p >= '0' && *p <= '9') || *p == '_'; p++) digits += *p != '_';
    if (*p == '.') {
        dot = 1;
        for (p++; (*p >= '0' && *p <= '9') || *p == '_'; p++) digits += *p != '_';
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+') p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
        exp = 1;
    }
    return !*p && (dot || exp);
}

static double strtod_nounder(const char *s) {
    char buf[128];
    size_t n = 0;
    for (; *s && n + 1 < sizeof buf; s++)
        if (*s != '_') buf[n++] = *s;
    buf[n] = 0;
    return strtod(buf, NULL);
}

/* A plain scalar's value (never NULL unless out of memory or invalid UTF-8). */
static json_t *resolve_plain(const char *s, size_t len) {
    if (strlen(s) == len) { /* a NUL inside can only be a string */
        if (is_null_word(s)) return json_null();
        int bw = bool_word(s);
        if (bw >= 0) return json_boolean(bw);
        json_int_t iv;
        int big;
        if (parse_int(s, &iv, &big)) {
            if (!big) return json_integer(iv);
            double d = strtod_nounder(s);
            if (isfinite(d) && len < 120) return json_real(d);
        } else if (len < 120 && is_float(s)) {
            double d = strtod_nounder(s);
            if (isfinite(d)) return json_real(d);
        }
    }
    return json_stringn(s, len);
}

#define TAG_PREFIX "tag:yaml.org,2002:"

static int y_scalar_value(ybuild *b, const yaml_event_t *ev, json_t **out) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    json_t *v = NULL;
    if (!tag || !strcmp(tag, "!")) {
        v = ev->data.scalar.plain_implicit && !tag ? resolve_plain(s, len) : json_stringn(s, len);
    } else if (!strcmp(tag, TAG_PREFIX "str")) {
        v = json_stringn(s, len);
    } else if (!strcmp(tag, TAG_PREFIX "null") || !strcmp(tag, TAG_PREFIX "bool") ||
               !strcmp(tag, TAG_PREFIX "int") || !strcmp(tag, TAG_PREFIX "float")) {
        const char *t = tag + strlen(TAG_PREFIX);
        v = resolve_plain(s, len);
        int ok = v && ((!strcmp(t, "null") && json_is_null(v)) || (!strcmp(t, "bool") && json_is_boolean(v)) ||
                       (!strcmp(t, "int") && json_is_integer(v)) || (!strcmp(t, "float") && json_is_number(v)));
        if (v && ok && !strcmp(t, "float") && json_is_integer(v)) {
            json_t *r = json_real((double)json_integer_value(v));
            json_decref(v);
            v = r;
        }
        if (v && !ok) {
            char cb[64];
            json_decref(v);
            return y_fail(b, ev->start_mark, "\"%s\" cannot be read as !!%s", clip(cb, sizeof cb, s, 40), t);
        }
    } else {
        char cb[64];
        return y_fail(b, ev->start_mark, "unsupported YAML tag %s", clip(cb, sizeof cb, tag, 40));
    }
    if (!v) return y_fail(b, ev->start_mark, "cannot hold this scalar (invalid UTF-8 or out of memory)");
    *out = v;
    return 0;
}

static int check_merge_source(const json_t *v) {
    if (json_is_object(v)) return 1;
    if (!json_is_array(v) || json_array_size(v) == 0) return 0;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_object(json_array_get(v, i))) return 0;
    return 1;
}

/* Adds a complete node (value: owned) to the open container, or makes it the root. */
static int y_add(ybuild *b, json_t *value, yaml_mark_t m, size_t count, int height) {
    if (b->depth == 0) {
        json_decref(b->root);
        b->root = value;
        return 0;
    }
    yframe *f = &b->st[b->depth - 1];
    f->count += count;
    if (height + 1 > f->height) f->height = height + 1;
    if (!f->is_map) {
        size_t idx = json_array_size(f->node);
        if (json_array_append_new(f->node, value)) return y_fail(b, m, "out of memory");
        if (pos_put(b->pos, f->node, NULL, idx, m)) return y_fail(b, m, "out of memory");
        return 0;
    }
    if (f->key_merge) {
        free(f->key);
        f->key = NULL;
        f->key_merge = 0;
        if (!check_merge_source(value)) {
            json_decref(value);
            return y_fail(b, m, "the merge key '<<' needs a mapping or a list of mappings");
        }
        if (!f->merges && !(f->merges = json_array())) {
            json_decref(value);
            return y_fail(b, m, "out of memory");
        }
        if (json_array_append_new(f->merges, value)) return y_fail(b, m, "out of memory");
        return 0;
    }
    char *key = f->key;
    f->key = NULL;
    if (json_object_get(f->node, key)) {
        char cb[96];
        json_decref(value);
        int rc = y_fail(b, f->key_mark, "duplicate key '%s'", clip(cb, sizeof cb, key, 80));
        free(key);
        return rc;
    }
    int rc = 0;
    if (json_object_set_new(f->node, key, value)) rc = y_fail(b, f->key_mark, "out of memory");
    else if (pos_put(b->pos, f->node, key, 0, m)) rc = y_fail(b, m, "out of memory");
    free(key);
    return rc;
}

/* A scalar (or an alias of a string) in key position. */
static int y_key(ybuild *b, const char *s, size_t len, int plain, yaml_mark_t m) {
    yframe *f = &b->st[b->depth - 1];
    if (strlen(s) != len) return y_fail(b, m, "a mapping key holds a NUL character");
    if (!(f->key = strdup(s))) return y_fail(b, m, "out of memory");
    f->key_merge = plain && !strcmp(s, "<<");
    f->key_mark = m;
    return y_count(b, 1, m);
}

/* Merge keys: explicit keys win; among the merged mappings the first one wins. */
static int y_apply_merges(ybuild *b, yframe *f) {
    if (!f->merges) return 0;
    for (size_t i = 0; i < json_array_size(f->merges); i++) {
        json_t *src = json_array_get(f->merges, i);
        size_t n = json_is_array(src) ? json_array_size(src) : 1;
        for (size_t k = 0; k < n; k++) {
            json_t *m = json_is_array(src) ? json_array_get(src, k) : src;
            const char *key;
            json_t *val;
            json_object_foreach(m, key, val) {
                if (json_object_get(f->node, key)) continue;
                if (json_object_set(f->node, key, val)) return y_fail(b, f->mark, "out of memory");
            }
        }
    }
    return 0;
}

static int y_collection_tag(ybuild *b, const yaml_event_t *ev, const char *tag, const char *want) {
    if (!tag || !strcmp(tag, "!")) return 0;
    if (!strncmp(tag, TAG_PREFIX, strlen(TAG_PREFIX)) && !strcmp(tag + strlen(TAG_PREFIX), want)) return 0;
    char cb[64];
    return y_fail(b, ev->start_mark, "unsupported YAML tag %s", clip(cb, sizeof cb, tag, 40));
}

static int y_event(ybuild *b, const yaml_event_t *ev) {
    yframe *top = b->depth ? &b->st[b->depth - 1] : NULL;
    int want_key = top && top->is_map && !top->key;
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (b->docs++ > 0)
            return y_fail(b, ev->start_mark, "more than one YAML document (a config is one document)");
        return 0;
    case YAML_SCALAR_EVENT: {
        const char *anchor = (const char *)ev->data.scalar.anchor;
        if (want_key) {
            if (y_key(b, (const char *)ev->data.scalar.value, ev->data.scalar.length,
                      ev->data.scalar.plain_implicit && !ev->data.scalar.tag, ev->start_mark))
                return -1;
            if (anchor) {
                json_t *s = json_string(top->key);
                int rc = s ? y_anchor(b, anchor, s, 1, 0, ev->start_mark) : y_fail(b, ev->start_mark, "out of memory");
                json_decref(s);
                return rc;
            }
            return 0;
        }
        json_t *v = NULL;
        if (y_count(b, 1, ev->start_mark) || y_scalar_value(b, ev, &v)) return -1;
        if (anchor && y_anchor(b, anchor, v, 1, 0, ev->start_mark)) {
            json_decref(v);
            return -1;
        }
        return y_add(b, v, ev->start_mark, 1, 0);
    }
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)ev->data.alias.anchor;
        yanchor *a = y_find_anchor(b, name);
        char cb[64];
        if (!a) return y_fail(b, ev->start_mark, "unknown alias *%s", clip(cb, sizeof cb, name, 40));
        if (want_key) {
            if (!json_is_string(a->node)) return y_fail(b, ev->start_mark, "a mapping key must be a scalar");
            return y_key(b, json_string_value(a->node), json_string_length(a->node), 0, ev->start_mark);
        }
        if (b->depth + a->height > b->lim->max_depth)
            return y_fail(b, ev->start_mark, "nesting deeper than %d levels (%s) through alias *%s", b->lim->max_depth,
                          b->lim->depth_name, clip(cb, sizeof cb, name, 40));
        if (y_count(b, a->count, ev->start_mark)) return -1;
        return y_add(b, json_incref(a->node), ev->start_mark, a->count, a->height);
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        const char *tag = (const char *)(is_map ? ev->data.mapping_start.tag : ev->data.sequence_start.tag);
        const char *anchor = (const char *)(is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
        if (want_key) return y_fail(b, ev->start_mark, "a mapping key must be a scalar");
        if (b->depth == b->lim->max_depth)
            return y_fail(b, ev->start_mark, "nesting deeper than %d levels (%s)", b->lim->max_depth,
                          b->lim->depth_name);
        if (y_collection_tag(b, ev, tag, is_map ? "map" : "seq") || y_count(b, 1, ev->start_mark)) return -1;
        yframe *f = &b->st[b->depth];
        memset(f, 0, sizeof *f);
        f->is_map = is_map;
        f->mark = ev->start_mark;
        f->count = 1;
        f->height = 1;
        if (!(f->node = is_map ? json_object() : json_array())) return y_fail(b, ev->start_mark, "out of memory");
        b->depth++;
        if (anchor && !(f->anchor = strdup(anchor))) return y_fail(b, ev->start_mark, "out of memory");
        if (pos_put(b->pos, f->node, NULL, SIZE_MAX, ev->start_mark)) return y_fail(b, ev->start_mark, "out of memory");
        return 0;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        yframe *f = top;
        if (!f) return y_fail(b, ev->start_mark, "unbalanced YAML events");
        if (f->is_map && y_apply_merges(b, f)) return -1;
        json_t *node = f->node;
        f->node = NULL;
        if (f->anchor && y_anchor(b, f->anchor, node, f->count, f->height, f->mark)) {
            json_decref(node);
            return -1;
        }
        free(f->anchor);
        free(f->key);
        json_decref(f->merges);
        size_t count = f->count;
        int height = f->height;
        yaml_mark_t m = f->mark;
        memset(f, 0, sizeof *f);
        b->depth--;
        return y_add(b, node, m, count, height);
    }
    default:
        return 0;
    }
}

static void y_cleanup(ybuild *b) {
    for (int i = 0; i < b->depth; i++) {
        json_decref(b->st[i].node);
        json_decref(b->st[i].merges);
        free(b->st[i].key);
        free(b->st[i].anchor);
    }
    b->depth = 0;
    for (int i = 0; i < b->n_anchors; i++) {
        free(b->anchors[i].name);
        json_decref(b->anchors[i].node);
    }
    b->n_anchors = 0;
}

static int y_parser_error(ybuild *b, const yaml_parser_t *p) {
    const char *problem = p->problem ? p->problem : "cannot be parsed";
    if (p->error == YAML_MEMORY_ERROR) return cs_err_set(b->err, "%s: out of memory reading YAML", b->origin);
    if (p->error == YAML_READER_ERROR) { /* only a byte offset: count the lines */
        size_t off = p->problem_offset < b->len ? p->problem_offset : b->len;
        int line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (b->text[i] == '\n') line++, col = 1;
            else if (((unsigned char)b->text[i] & 0xC0) != 0x80) col++;
        }
        return cs_err_set(b->err, "%s:%d:%d: invalid YAML: %s", b->origin, line, col, problem);
    }
    yaml_mark_t m = p->problem_mark;
    if (p->context)
        return cs_err_set(b->err, "%s:%d:%d: invalid YAML: %s %s (line %d)", b->origin, (int)m.line + 1,
                          (int)m.column + 1, problem, p->context, (int)p->context_mark.line + 1);
    return cs_err_set(b->err, "%s:%d:%d: invalid YAML: %s", b->origin, (int)m.line + 1, (int)m.column + 1, problem);
}

int cs_yd_parse(const char *text, size_t len, const char *origin, const cs_yd_limits *lim, json_t **out,
                cs_yd_pos **pos_out, cs_err *err) {
    *out = NULL;
    *pos_out = NULL;
    ybuild *b = calloc(1, sizeof *b);
    postab *pos = calloc(1, sizeof *pos);
    yframe *st = lim->max_depth > 0 ? calloc((size_t)lim->max_depth, sizeof *st) : NULL;
    if (!b || !pos || !st) {
        free(b), free(pos), free(st);
        return cs_err_set(err, "%s: out of memory", origin);
    }
    b->origin = origin;
    b->text = text;
    b->len = len;
    b->err = err;
    b->lim = lim;
    b->pos = pos;
    b->st = st;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        free(b), free(pos), free(st);
        return cs_err_set(err, "%s: out of memory", origin);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = y_parser_error(b, &p);
            break;
        }
        int done = ev.type == YAML_STREAM_END_EVENT;
        rc = y_event(b, &ev);
        yaml_event_delete(&ev);
        if (rc || done) break;
    }
    yaml_parser_delete(&p);
    y_cleanup(b);
    if (!rc && !b->root) rc = cs_err_set(err, "%s: the document is empty", origin);
    if (rc) {
        json_decref(b->root);
        cs_yd_pos_free(pos);
    } else {
        *out = b->root;
        *pos_out = pos;
    }
    free(st);
    free(b);
    return rc;
}

