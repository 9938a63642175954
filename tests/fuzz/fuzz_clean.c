/* libFuzzer target: the preprocessing deployment's text clean-up
 * (cs_clean_text, cs_clean_request in src/serve/clean.h), which sees every
 * prompt of a composed application.
 *
 * Input: 2 header bytes, then the text (any bytes).
 *   byte 0: bits 0-1 normalize (0 none, 1 NFC, 2 NFKC, 3 NFKC), bit 2
 *           collapse_whitespace, bit 3 strip_control, bit 4 a template;
 *   byte 1: max_chars (0: no cap).
 * Checked:
 *   - no error; the output is valid UTF-8, NUL-terminated;
 *   - at most max_chars code points (without the template);
 *   - a fixed point: clean(clean(x)) == clean(x) (without the template);
 *   - normalized: NFC/NFKC of the output is the output;
 *   - strip_control: none of the removed characters is left;
 *   - collapse_whitespace: whitespace is only single ' ' / '\n' between
 *     other characters;
 *   - the template wraps exactly the text cleaned without it;
 *   - cs_clean_request on {"input": text, "prompt": [text, 1]} gives the same
 *     text in both places. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/utf8.h"
#include "fuzz_common.h"
#include "serve/clean.h"

#define TMPL_PRE "<{{"
#define TMPL_POST "}}|"

static size_t count_cps(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static int32_t next_cp(const unsigned char *s, size_t n, size_t *i) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(s + *i, (utf8proc_ssize_t)(n - *i), &c);
    if (k <= 0) fz_fail("undecodable output at byte %zu", *i);
    *i += (size_t)k;
    return c;
}

static int is_ws(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_stripped(int32_t c) {
    return (c < 0x20 && c != '\t' && c != '\n') || (c >= 0x7F && c <= 0x9F) || c == 0xFEFF || c == 0x200B ||
           c == 0x2060 || (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

static void check_text(const cs_clean_opts *o, const char *out, size_t len) {
    if (out[len] != 0) fz_fail("output not NUL-terminated");
    if (!cs_utf8_valid(out, len)) fz_fail("output is not valid UTF-8");
    if (o->max_chars && count_cps(out, len) > o->max_chars)
        fz_fail("%zu code points, max_chars %zu", count_cps(out, len), o->max_chars);
    const unsigned char *u = (const unsigned char *)out;
    int prev_ws = 1; /* at the start, whitespace is not allowed either */
    for (size_t i = 0; i < len;) {
        int32_t c = next_cp(u, len, &i);
        if (o->strip_control && is_stripped(c)) fz_fail("U+%04X left with strip_control", (unsigned)c);
        if (o->collapse_whitespace) {
            if (is_ws(c) && c != ' ' && c != '\n') fz_fail("whitespace U+%04X not collapsed", (unsigned)c);
            if (is_ws(c) && prev_ws) fz_fail("whitespace at the start or after whitespace, byte %zu", i);
            prev_ws = is_ws(c);
        }
    }
    if (o->collapse_whitespace && len && prev_ws) fz_fail("whitespace at the end");
    if (o->normalize != CS_CLEAN_NORM_NONE && len) {
        utf8proc_uint8_t *n = NULL;
        utf8proc_option_t f = UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                              (o->normalize == CS_CLEAN_NORM_NFKC ? UTF8PROC_COMPAT : 0);
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)out, (utf8proc_ssize_t)len, &n, f);
        if (r < 0) fz_fail("utf8proc_map on the output: %s", utf8proc_errmsg(r));
        if ((size_t)r != len || memcmp(n, out, len) != 0) fz_fail("output is not normalized");
        free(n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    cs_clean_opts *o = malloc(sizeof *o);
    if (!o) return 0;
    cs_clean_opts_default(o);
    o->normalize = (data[0] & 3) == 0 ? CS_CLEAN_NORM_NONE : (data[0] & 3) == 1 ? CS_CLEAN_NORM_NFC : CS_CLEAN_NORM_NFKC;
    o->collapse_whitespace = (data[0] >> 2) & 1;
    o->strip_control = (data[0] >> 3) & 1;
    o->max_chars = data[1];
    const int tmpl = (data[0] >> 4) & 1;
    const char *in = (const char *)data + 2;
    const size_t n = size - 2;
    cs_err err = {{0}};
    if (cs_clean_opts_check(o, &err)) fz_fail("options refused: %s", err.msg);

    char *out = NULL, *again = NULL;
    size_t len = 0, alen = 0;
    if (cs_clean_text(o, in, n, &out, &len, &err)) fz_fail("cs_clean_text failed: %s", err.msg);
    check_text(o, out, len);
    if (cs_clean_text(o, out, len, &again, &alen, &err)) fz_fail("cs_clean_text (again) failed: %s", err.msg);
    if (alen != len || memcmp(again, out, len) != 0) fz_fail("not idempotent: %zu bytes, then %zu", len, alen);
    free(again);

    if (tmpl) {
        cs_clean_opts *t = malloc(sizeof *t);
        if (!t) fz_fail("out of memory");
        *t = *o;
        t->has_template = 1;
        strcpy(t->tmpl, TMPL_PRE "{input}" TMPL_POST);
        if (cs_clean_opts_check(t, &err)) fz_fail("template refused: %s", err.msg);
        char *w;
        size_t wl;
        if (cs_clean_text(t, in, n, &w, &wl, &err)) fz_fail("with template: %s", err.msg);
        if (wl != len + 4 || memcmp(w, "<{", 2) != 0 || memcmp(w + 2, out, len) != 0 || memcmp(w + 2 + len, "}|", 2))
            fz_fail("the template does not wrap the cleaned text");
        free(w);
        free(t);
    }

    /* the JSON request path: jansson strings are valid UTF-8 (repaired here) */
    size_t rl;
    char *rep = cs_utf8_repair(in, n, &rl);
    json_t *body = rep ? json_pack("{s:s%, s:[s%, i]}", "input", rep, rl, "prompt", rep, rl, 1) : NULL;
    if (body) {
        char *want;
        size_t wl;
        if (cs_clean_text(o, rep, rl, &want, &wl, &err)) fz_fail("cs_clean_text (repaired) failed: %s", err.msg);
        if (wl != len || memcmp(want, out, len) != 0) fz_fail("cleaning the repaired text differs");
        int changed = -1;
        if (cs_clean_request(o, body, &changed, &err)) fz_fail("cs_clean_request failed: %s", err.msg);
        json_t *a = json_object_get(body, "input"), *b = json_array_get(json_object_get(body, "prompt"), 0);
        if (json_string_length(a) != wl || memcmp(json_string_value(a), want, wl) != 0) fz_fail("input differs");
        if (json_string_length(b) != wl || memcmp(json_string_value(b), want, wl) != 0) fz_fail("prompt differs");
        if (json_integer_value(json_array_get(json_object_get(body, "prompt"), 1)) != 1) fz_fail("token id changed");
        const int differs = wl != rl || memcmp(want, rep, rl) != 0;
        if (changed != (differs ? 2 : 0)) fz_fail("changed = %d", changed);
        free(want);
    }
    json_decref(body);
    free(rep);
    free(out);
    free(o);
    return 0;
}
