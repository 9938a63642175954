/* cs_clean: see clean.h. */
#include "serve/clean.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <utf8proc.h>

#include "engine/utf8.h"

/* ------------------------------------------------------------ options */

void cs_clean_opts_default(cs_clean_opts *o) {
    memset(o, 0, sizeof *o);
    o->normalize = CS_CLEAN_NORM_NFKC;
    o->max_chars = CS_CLEAN_DEFAULT_MAX_CHARS;
    o->collapse_whitespace = 1;
    o->strip_control = 1;
}

/* Checks a template: NULL msg when fine, else why not. */
static const char *template_problem(const char *t, size_t n) {
    int inputs = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '{') {
            if (i + 1 < n && t[i + 1] == '{') i++;
            else if (n - i >= 7 && !memcmp(t + i, "{input}", 7)) inputs++, i += 6;
            else return "a '{' that neither starts \"{input}\" nor is escaped as \"{{\"";
        } else if (t[i] == '}') {
            if (i + 1 < n && t[i + 1] == '}') i++;
            else return "a '}' that is not escaped as \"}}\"";
        }
    }
    return inputs ? NULL : "no \"{input}\" in it (where does the text go?)";
}

int cs_clean_opts_check(const cs_clean_opts *o, cs_err *err) {
    if (o->normalize != CS_CLEAN_NORM_NONE && o->normalize != CS_CLEAN_NORM_NFC && o->normalize != CS_CLEAN_NORM_NFKC)
        return cs_err_set(err, "normalize: expected \"NFKC\", \"NFC\" or \"none\"");
    if (o->max_chars > CS_CLEAN_MAX_CHARS)
        return cs_err_set(err, "max_chars: %zu is over the limit %zu", o->max_chars, CS_CLEAN_MAX_CHARS);
    if (o->has_template) {
        size_t n = strnlen(o->tmpl, sizeof o->tmpl);
        if (n > CS_CLEAN_MAX_TEMPLATE)
            return cs_err_set(err, "template: longer than %d bytes", CS_CLEAN_MAX_TEMPLATE);
        if (!cs_utf8_valid(o->tmpl, n)) return cs_err_set(err, "template: not valid UTF-8");
        const char *p = template_problem(o->tmpl, n);
        if (p) return cs_err_set(err, "template: %s", p);
    }
    return 0;
}

static const char *kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

int cs_clean_opts_merge_json(cs_clean_opts *out, const json_t *obj, cs_err *err) {
    if (!obj || json_is_null(obj)) return cs_clean_opts_check(out, err);
    if (!json_is_object(obj)) return cs_err_set(err, "expected an object, got %s", kind(obj));
    cs_clean_opts *o = malloc(sizeof *o);
    if (!o) return cs_err_set(err, "out of memory");
    *o = *out;
    const char *key;
    json_t *v;
    int rc = -1;
    json_object_foreach((json_t *)obj, key, v) {
        if (!strcmp(key, "normalize")) {
            const char *s = json_string_value(v);
            if (json_is_null(v) || (s && !strcasecmp(s, "none"))) o->normalize = CS_CLEAN_NORM_NONE;
            else if (s && !strcasecmp(s, "NFC")) o->normalize = CS_CLEAN_NORM_NFC;
            else if (s && !strcasecmp(s, "NFKC")) o->normalize = CS_CLEAN_NORM_NFKC;
            else if (s) {
                cs_err_set(err, "normalize: expected \"NFKC\", \"NFC\" or \"none\", got \"%.64s\"", s);
                goto out;
            } else {
                cs_err_set(err, "normalize: expected \"NFKC\", \"NFC\" or \"none\", got %s", kind(v));
                goto out;
            }
        } else if (!strcmp(key, "max_chars")) {
            if (json_is_null(v)) {
                o->max_chars = 0;
            } else if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                       (uint64_t)json_integer_value(v) > CS_CLEAN_MAX_CHARS) {
                if (json_is_integer(v))
                    cs_err_set(err, "max_chars: expected an integer in [1, %zu] or null, got %lld", CS_CLEAN_MAX_CHARS,
                               (long long)json_integer_value(v));
                else
                    cs_err_set(err, "max_chars: expected an integer in [1, %zu] or null, got %s", CS_CLEAN_MAX_CHARS,
                               kind(v));
                goto out;
            } else {
                o->max_chars = (size_t)json_integer_value(v);
            }
        } else if (!strcmp(key, "template")) {
            if (json_is_null(v)) {
                o->has_template = 0;
                o->tmpl[0] = 0;
            } else if (!json_is_string(v)) {
                cs_err_set(err, "template: expected a string with \"{input}\" or null, got %s", kind(v));
                goto out;
            } else {
                size_t n = json_string_length(v);
                if (n > CS_CLEAN_MAX_TEMPLATE) {
                    cs_err_set(err, "template: %zu bytes, at most %d", n, CS_CLEAN_MAX_TEMPLATE);
                    goto out;
                }
                if (memchr(json_string_value(v), 0, n)) {
                    cs_err_set(err, "template: holds a NUL character");
                    goto out;
                }
                memcpy(o->tmpl, json_string_value(v), n);
                o->tmpl[n] = 0;
                o->has_template = 1;
            }
        } else if (!strcmp(key, "collapse_whitespace") || !strcmp(key, "strip_control")) {
            if (!json_is_boolean(v)) {
                cs_err_set(err, "%s: expected a boolean, got %s", key, kind(v));
                goto out;
            }
            *(key[0] == 'c' ? &o->collapse_whitespace : &o->strip_control) = json_is_true(v);
        } else {
            cs_err_set(err, "%.64s: unknown key (expected normalize, max_chars, template, collapse_whitespace, "
                            "strip_control)", key);
            goto out;
        }
    }
    if (cs_clean_opts_check(o, err)) goto out;
    *out = *o;
    rc = 0;
out:
    free(o);
    return rc;
}

int cs_clean_opts_from_json(cs_clean_opts *out, const json_t *obj, cs_err *err) {
    cs_clean_opts *o = malloc(sizeof *o);
    if (!o) return cs_err_set(err, "out of memory");
    cs_clean_opts_default(o);
    int rc = cs_clean_opts_merge_json(o, obj, err);
    if (!rc) *out = *o;
    free(o);
    return rc;
}

json_t *cs_clean_opts_to_json(const cs_clean_opts *o) {
    static const char *const norm[] = {"none", "NFC", "NFKC"};
    return json_pack("{s:s, s:o, s:o, s:b, s:b}", "normalize",
                     (unsigned)o->normalize < 3 ? norm[o->normalize] : "none", "max_chars",
                     o->max_chars ? json_integer((json_int_t)o->max_chars) : json_null(), "template",
                     o->has_template ? json_string(o->tmpl) : json_null(), "collapse_whitespace",
                     o->collapse_whitespace, "strip_control", o->strip_control);
}

/* ------------------------------------------------------------ text */

/* Decodes the valid UTF-8 character at s[0..n) (n >= 1). */
static size_t dec(const unsigned char *s, size_t n, int32_t *cp) {
    size_t bad = 0, k = cs_utf8_next(s, n, &bad);
    if (k == 0) { /* cannot happen on repaired text; be safe */
        *cp = 0xFFFD;
        return bad ? bad : 1;
    }
    switch (k) {
    case 1: *cp = s[0]; break;
    case 2: *cp = (int32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F); break;
    case 3: *cp = (int32_t)(s[0] & 0x0F) << 12 | (int32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F); break;
    default:
        *cp = (int32_t)(s[0] & 0x07) << 18 | (int32_t)(s[1] & 0x3F) << 12 | (int32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    }
    return k;
}

static int stripped(int32_t c) {
    return (c < 0x20 && c != '\t' && c != '\n') || (c >= 0x7F && c <= 0x9F) || c == 0xFEFF || c == 0x200B ||
           c == 0x2060 || (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

static int is_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_line_break(int32_t c) {
    return (c >= 0x0A && c <= 0x0D) || c == 0x85 || c == 0x2028 || c == 0x2029;
}

/* Step 2 into a new buffer (same size or smaller). */
static char *strip_controls(const char *s, size_t n, size_t *out_len) {
    char *o = malloc(n + 1);
    if (!o) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        if (u[i] == '\r' || u[i] == '\v' || u[i] == '\f') {
            o[w++] = '\n';
            i += u[i] == '\r' && i + 1 < n && u[i + 1] == '\n' ? 2 : 1;
            continue;
        }
        if (u[i] == 0xC2 && i + 1 < n && u[i + 1] == 0x85) { /* NEL */
            o[w++] = '\n';
            i += 2;
            continue;
        }
        int32_t c;
        size_t k = dec(u + i, n - i, &c);
        if (!stripped(c)) memcpy(o + w, s + i, k), w += k;
        i += k;
    }
    o[w] = 0;
    *out_len = w;
    return o;
}

/* Step 3 into a new malloc'd buffer; NULL on error (*why says it). */
static char *normalize(cs_clean_norm nf, const char *s, size_t n, size_t *out_len, const char **why) {
    if (n == 0) {
        *out_len = 0;
        return calloc(1, 1);
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_option_t flags = UTF8PROC_STABLE | UTF8PROC_COMPOSE | (nf == CS_CLEAN_NORM_NFKC ? UTF8PROC_COMPAT : 0);
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, flags);
    if (r < 0) {
        free(dst);
        *why = utf8proc_errmsg(r);
        return NULL;
    }
    *out_len = (size_t)r;
    return (char *)dst;
}

/* Steps 4 and 5 into o (capacity >= n + 1: the text never grows here). */
static size_t collapse_and_cap(const cs_clean_opts *opt, const char *s, size_t n, char *o) {
    const unsigned char *u = (const unsigned char *)s;
    size_t w = 0, count = 0;
    size_t cut_w = 0;        /* output bytes at the last cluster boundary */
    int32_t prev = -1;       /* last code point written */
    utf8proc_int32_t gstate = 0;
    int pending = 0;         /* whitespace run to write before the next character: ' ' or '\n' */
    int capped = 0;
    for (size_t i = 0; i < n && !capped;) {
        int32_t c;
        size_t k = dec(u + i, n - i, &c);
        const char *bytes = s + i;
        i += k;
        if (opt->collapse_whitespace && is_space(c)) {
            if (w > 0 && pending != '\n') pending = is_line_break(c) ? '\n' : ' ';
            continue;
        }
        /* up to two code points to write: the pending whitespace, then c */
        for (int step = pending ? 0 : 1; step < 2; step++) {
            int32_t cp = step == 0 ? pending : c;
            const size_t len = step == 0 ? 1 : k;
            const int brk = prev < 0 || utf8proc_grapheme_break_stateful(prev, cp, &gstate);
            if (brk) cut_w = w;
            if (opt->max_chars && count == opt->max_chars) {
                if (!brk) w = cut_w; /* cut before the cluster that does not fit whole */
                capped = 1;
                break;
            }
            if (step == 0) o[w] = (char)pending;
            else memcpy(o + w, bytes, len);
            w += len, count++, prev = cp;
        }
        pending = 0;
    }
    if (opt->collapse_whitespace)
        while (w > 0 && (o[w - 1] == ' ' || o[w - 1] == '\n')) w--;
    o[w] = 0;
    return w;
}

int cs_clean_text(const cs_clean_opts *o, const char *in, size_t n, char **out, size_t *out_len, cs_err *err) {
    *out = NULL;
    *out_len = 0;
    if (n > CS_CLEAN_MAX_INPUT) return cs_err_set(err, "text of %zu bytes, at most %zu", n, CS_CLEAN_MAX_INPUT);
    char *a = NULL, *b = NULL, *text = NULL;
    size_t al = n, bl = 0;
    const char *cur = in ? in : "";
    /* 1. repair */
    if (!cs_utf8_valid(cur, n)) {
        if (!(a = cs_utf8_repair(cur, n, &al))) goto oom;
        cur = a;
    }
    /* 2. controls */
    if (o->strip_control) {
        if (!(b = strip_controls(cur, al, &bl))) goto oom;
        free(a);
        a = b, b = NULL, al = bl, cur = a;
    }
    /* 3. normalization */
    if (o->normalize != CS_CLEAN_NORM_NONE) {
        const char *why = "out of memory";
        if (!(b = normalize(o->normalize, cur, al, &bl, &why))) {
            free(a);
            return cs_err_set(err, "normalization: %s", why);
        }
        free(a);
        a = b, b = NULL, al = bl, cur = a;
    }
    /* 4, 5. whitespace and cap */
    char *c = malloc(al + 1);
    if (!c) goto oom;
    size_t cl = collapse_and_cap(o, cur, al, c);
    free(a);
    a = NULL;
    /* 6. template */
    if (!o->has_template) {
        *out = c;
        *out_len = cl;
        return 0;
    }
    const char *t = o->tmpl;
    const size_t tn = strlen(t);
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t w = 0;
        for (size_t i = 0; i < tn; i++) {
            if (t[i] == '{' && t[i + 1] == '{') {
                if (pass) text[w] = '{';
                w++, i++;
            } else if (t[i] == '}' && t[i + 1] == '}') {
                if (pass) text[w] = '}';
                w++, i++;
            } else if (t[i] == '{' && !strncmp(t + i, "{input}", 7)) {
                if (pass) memcpy(text + w, c, cl);
                w += cl, i += 6;
            } else {
                if (pass) text[w] = t[i];
                w++;
            }
        }
        if (!pass) {
            total = w;
            if (!(text = malloc(total + 1))) {
                free(c);
                goto oom;
            }
        }
    }
    text[total] = 0;
    free(c);
    *out = text;
    *out_len = total;
    return 0;
oom:
    free(a);
    free(b);
    return cs_err_set(err, "out of memory");
}

/* Replaces a JSON string's value by its cleaned text; *changed++ when different. */
static int clean_string(const cs_clean_opts *o, json_t *s, int *changed, cs_err *err) {
    char *out;
    size_t ol;
    const size_t n = json_string_length(s);
    if (cs_clean_text(o, json_string_value(s), n, &out, &ol, err)) return -1;
    int rc = 0;
    if (ol != n || memcmp(out, json_string_value(s), n) != 0) {
        if (json_string_setn(s, out, ol)) rc = cs_err_set(err, "out of memory");
        else (*changed)++;
    }
    free(out);
    return rc;
}

int cs_clean_request(const cs_clean_opts *o, json_t *body, int *changed, cs_err *err) {
    int ch = 0;
    if (changed) *changed = 0;
    if (!json_is_object(body)) return 0;
    json_t *v = json_object_get(body, "input");
    if (json_is_string(v) && clean_string(o, v, &ch, err)) return -1;
    v = json_object_get(body, "prompt");
    if (json_is_string(v) && clean_string(o, v, &ch, err)) return -1;
    if (json_is_array(v)) {
        size_t i;
        json_t *it;
        json_array_foreach(v, i, it) {
            if (json_is_string(it) && clean_string(o, it, &ch, err)) return -1;
        }
    }
    if (changed) *changed = ch;
    return 0;
}
