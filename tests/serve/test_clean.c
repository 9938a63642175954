/* The preprocessing deployment's text clean-up (src/serve/clean.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/utf8.h"
#include "serve/clean.h"

static cs_clean_opts opts(cs_clean_norm nf, size_t max_chars, int collapse, int strip) {
    cs_clean_opts o;
    cs_clean_opts_default(&o);
    o.normalize = nf;
    o.max_chars = max_chars;
    o.collapse_whitespace = collapse;
    o.strip_control = strip;
    return o;
}

/* clean(o, in[0..n)) must be exactly want[0..wn). */
static void expect_nn(const cs_clean_opts *o, const char *in, size_t n, const char *want, size_t wn) {
    char *out = NULL;
    size_t len = 0;
    cs_err err = {{0}};
    int rc = cs_clean_text(o, in, n, &out, &len, &err);
    if (rc) fail_msg("cs_clean_text failed: %s", err.msg);
    assert_non_null(out);
    assert_int_equal(out[len], 0);
    if (len != wn || memcmp(out, want, len) != 0) {
        fprintf(stderr, "input  [%zu]: ", n);
        for (size_t i = 0; i < n; i++) fprintf(stderr, "%02x ", (unsigned char)in[i]);
        fprintf(stderr, "\noutput [%zu]: ", len);
        for (size_t i = 0; i < len; i++) fprintf(stderr, "%02x ", (unsigned char)out[i]);
        fprintf(stderr, "\nwanted [%zu]: ", wn);
        for (size_t i = 0; i < wn; i++) fprintf(stderr, "%02x ", (unsigned char)want[i]);
        fprintf(stderr, "\n");
        fail_msg("cleaned text differs");
    }
    assert_true(cs_utf8_valid(out, len));
    free(out);
}

static void expect_n(const cs_clean_opts *o, const char *in, size_t n, const char *want) {
    expect_nn(o, in, n, want, strlen(want));
}

static void expect(const cs_clean_opts *o, const char *in, const char *want) { expect_n(o, in, strlen(in), want); }

/* ---------------------------------------------------------------- normalization */

static void test_nfkc_folds_compatibility_forms(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFKC, 0, 0, 0);
    expect(&o, "\xef\xac\x81le", "file");                           /* U+FB01 LATIN SMALL LIGATURE FI */
    expect(&o, "\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93", "123");      /* full-width digits */
    expect(&o, "\xef\xbc\xa1\xef\xbd\x82", "Ab");                   /* full-width letters */
    expect(&o, "x\xc2\xb2", "x2");                                  /* superscript two */
    expect(&o, "A\xcc\x8a", "\xc3\x85");                            /* A + COMBINING RING -> U+00C5 */
    expect(&o, "\xe2\x84\xab", "\xc3\x85");                         /* ANGSTROM SIGN -> U+00C5 */
    expect(&o, "\xe2\x91\xa0", "1");                                /* CIRCLED DIGIT ONE */
}

static void test_nfc_keeps_compatibility_forms(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFC, 0, 0, 0);
    expect(&o, "\xef\xac\x81le", "\xef\xac\x81le");
    expect(&o, "\xef\xbc\x91\xef\xbc\x92", "\xef\xbc\x91\xef\xbc\x92");
    expect(&o, "A\xcc\x8a", "\xc3\x85");        /* canonical composition still happens */
    expect(&o, "\xe2\x84\xab", "\xc3\x85");     /* canonical singleton */
    expect(&o, "e\xcc\x81", "\xc3\xa9");
    /* canonical reordering: dot below (ccc 220) before diaeresis (230) */
    expect(&o, "a\xcc\x88\xcc\xa3", "\xe1\xba\xa1\xcc\x88");
}

static void test_no_normalization(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NONE, 0, 0, 0);
    expect(&o, "A\xcc\x8a \xef\xac\x81", "A\xcc\x8a \xef\xac\x81");
}

/* ---------------------------------------------------------------- controls */

static void test_controls_removed(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NONE, 0, 0, 1);
    expect(&o, "a\x01" "b\x1b[31mc\x7f" "d", "ab[31mcd");
    expect(&o, "a\xc2\x80" "b\xc2\x9f" "c", "abc");                   /* C1 */
    expect(&o, "tab\there\nline", "tab\there\nline");                 /* TAB, LF kept */
    expect(&o, "a\r\nb\rc\xc2\x85" "d\x0b" "e\x0c" "f", "a\nb\nc\nd\ne\nf"); /* line breaks */
    expect_n(&o, "a\0b", 3, "ab");                                     /* NUL */
    expect(&o, "\xef\xbb\xbfhello", "hello");                          /* BOM */
    expect(&o, "a\xe2\x80\x8b" "b\xe2\x81\xa0" "c", "abc");            /* ZWSP, WORD JOINER */
    /* bidi overrides and isolates (Trojan Source) */
    expect(&o, "abc\xe2\x80\xae" "fed\xe2\x80\xac" "g\xe2\x81\xa6h\xe2\x81\xa9", "abcfedgh");
    expect(&o, "\xe2\x80\xaa\xe2\x80\xab\xe2\x80\xad\xe2\x81\xa7\xe2\x81\xa8x", "x");
    /* kept: ZWJ in an emoji sequence, ZWNJ, LRM/RLM */
    expect(&o, "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9");
    expect(&o, "a\xe2\x80\x8c" "b\xe2\x80\x8e" "c\xe2\x80\x8f", "a\xe2\x80\x8c" "b\xe2\x80\x8e" "c\xe2\x80\x8f");
}

static void test_controls_kept_when_off(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NONE, 0, 0, 0);
    expect(&o, "a\x01" "b\xe2\x80\xae" "c", "a\x01" "b\xe2\x80\xae" "c");
    expect_nn(&o, "a\0b", 3, "a\0b", 3);
}

/* A removed character between a letter and its combining mark: the mark
 * then composes (stripping happens before normalization). */
static void test_strip_before_normalization(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFC, 0, 1, 1);
    expect(&o, "A\xe2\x80\x8b\xcc\x8a", "\xc3\x85");
}

/* ---------------------------------------------------------------- whitespace */

static void test_whitespace_collapsed_and_trimmed(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NONE, 0, 1, 1);
    expect(&o, "  hello \t  world  ", "hello world");
    expect(&o, "one \n\n  two\r\n\r\nthree", "one\ntwo\nthree");
    expect(&o, "a\xc2\xa0\xe3\x80\x80\xe2\x80\x83" "b", "a b");       /* NBSP, IDEOGRAPHIC, EM SPACE */
    expect(&o, "a\xe2\x80\xa8" "b\xe2\x80\xa9" "c", "a\nb\nc");         /* LINE/PARAGRAPH SEPARATOR */
    expect(&o, "a\x0b\x0c" "b", "a\nb");                                 /* VT FF: line breaks */
    expect(&o, " \t\n ", "");
    expect(&o, "", "");
    cs_clean_opts keep = opts(CS_CLEAN_NORM_NONE, 0, 0, 1);
    expect(&keep, "  a   b  ", "  a   b  ");
    /* without strip_control, VT/FF/CR are whitespace line breaks */
    cs_clean_opts ws = opts(CS_CLEAN_NORM_NONE, 0, 1, 0);
    expect(&ws, "a \x0b b\r\rc\x0c", "a\nb\nc");
}

static void test_nfkc_space_forms(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFKC, 0, 1, 1);
    expect(&o, "x\xc2\xa8", "x \xcc\x88");      /* DIAERESIS -> space + combining: the space stays */
    expect(&o, "\xc2\xa8x", "\xcc\x88x");       /* leading: trimmed */
    expect(&o, "a\xe3\x80\x80\xe3\x80\x80" "b", "a b");
}

/* ---------------------------------------------------------------- max_chars */

static void test_max_chars_counts_characters(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFC, 3, 1, 1);
    expect(&o, "h\xc3\xa9llo", "h\xc3\xa9l");                        /* é is one character, 2 bytes */
    expect(&o, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xa7", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e");
    expect(&o, "\xf0\x9f\x98\x80\xf0\x9f\x98\x81\xf0\x9f\x98\x82\xf0\x9f\x98\x83",
           "\xf0\x9f\x98\x80\xf0\x9f\x98\x81\xf0\x9f\x98\x82");
    expect(&o, "abc", "abc");
    expect(&o, "ab d e", "ab");                                       /* trailing space of the cut trimmed */
    o.max_chars = 1;
    expect(&o, "e\xcc\x81xyz", "\xc3\xa9");                            /* NFC first: é is one character */
    o.max_chars = 0;
    expect(&o, "a long text with no cap", "a long text with no cap");
}

static void test_max_chars_keeps_clusters_whole(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NONE, 3, 1, 1);
    /* e + acute is 2 code points; the second one would not fit whole */
    expect(&o, "e\xcc\x81" "e\xcc\x81", "e\xcc\x81");
    /* a letter with 3 marks: exactly at the cap */
    o.max_chars = 4;
    expect(&o, "q\xcc\x81\xcc\x82\xcc\x83z", "q\xcc\x81\xcc\x82\xcc\x83");
    /* thumbs up + skin tone is one cluster */
    o.max_chars = 3;
    expect(&o, "ab\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "ab");
    /* a flag (two regional indicators) is not split */
    o.max_chars = 1;
    expect(&o, "\xf0\x9f\x87\xab\xf0\x9f\x87\xb7", "");
    o.max_chars = 2;
    expect(&o, "\xf0\x9f\x87\xab\xf0\x9f\x87\xb7!", "\xf0\x9f\x87\xab\xf0\x9f\x87\xb7");
    /* CR LF is one cluster when kept (no strip, no collapse) */
    cs_clean_opts raw = opts(CS_CLEAN_NORM_NONE, 2, 0, 0);
    expect(&raw, "a\r\nb", "a");
}

/* ---------------------------------------------------------------- template */

static void test_template(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFKC, 0, 1, 1);
    o.has_template = 1;
    strcpy(o.tmpl, "Q: {input}\nA:");
    assert_int_equal(cs_clean_opts_check(&o, NULL), 0);
    expect(&o, "  what\xef\xbc\x9f ", "Q: what?\nA:");
    strcpy(o.tmpl, "{{json}} {input} {{input}} }}{input}{{");
    assert_int_equal(cs_clean_opts_check(&o, NULL), 0);
    expect(&o, "hi", "{json} hi {input} }hi{");
    strcpy(o.tmpl, "{input}");
    expect(&o, " x ", "x");
    /* the template is not counted in max_chars */
    strcpy(o.tmpl, "prefix {input}");
    o.max_chars = 2;
    expect(&o, "abcdef", "prefix ab");
}

static void test_template_errors(void **state) {
    (void)state;
    static const char *const bad[] = {"no placeholder", "{inputs}", "{input} {x}", "{input} }", "{input} {",
                                      "{ input }", "{{input}}", "\xff{input}"};
    cs_clean_opts o;
    cs_clean_opts_default(&o);
    o.has_template = 1;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cs_err err = {{0}};
        strcpy(o.tmpl, bad[i]);
        if (cs_clean_opts_check(&o, &err) == 0) fail_msg("template '%s' accepted", bad[i]);
        assert_non_null(strstr(err.msg, "template"));
    }
}

/* ---------------------------------------------------------------- invalid UTF-8 */

static void test_invalid_utf8_repaired(void **state) {
    (void)state;
    cs_clean_opts o = opts(CS_CLEAN_NORM_NFKC, 0, 1, 1);
    expect(&o, "a\xff" "b", "a\xef\xbf\xbd" "b");
    expect(&o, "ab\xe2\x82", "ab\xef\xbf\xbd");                          /* truncated sequence: one U+FFFD */
    expect(&o, "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd");                  /* overlong: two */
    expect(&o, "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  /* surrogate */
    cs_clean_opts none = opts(CS_CLEAN_NORM_NONE, 0, 0, 0);
    expect(&none, "x\x80", "x\xef\xbf\xbd");
}

/* ---------------------------------------------------------------- idempotence */

static void test_idempotent(void **state) {
    (void)state;
    static const char *const in[] = {
        "  A\xe2\x80\x8b\xcc\x8a  \xef\xac\x81 \xc2\xa8 \r\n\r\n x\xe3\x80\x80y\xff\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd ",
        "\xc2\xa8\xc2\xa8\xc2\xa8", "e\xcc\x81\xcc\xa3\xcc\x88 q", "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 z"};
    const cs_clean_norm nf[] = {CS_CLEAN_NORM_NONE, CS_CLEAN_NORM_NFC, CS_CLEAN_NORM_NFKC};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        for (int k = 0; k < 3; k++)
            for (size_t cap = 0; cap < 8; cap++) {
                cs_clean_opts o = opts(nf[k], cap, 1, 1);
                char *a, *b;
                size_t al, bl;
                assert_int_equal(cs_clean_text(&o, in[i], strlen(in[i]), &a, &al, NULL), 0);
                assert_int_equal(cs_clean_text(&o, a, al, &b, &bl, NULL), 0);
                assert_int_equal(al, bl);
                assert_memory_equal(a, b, al);
                free(a);
                free(b);
            }
}

/* ---------------------------------------------------------------- options */

static json_t *js(const char *text) {
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    if (!j) fail_msg("bad test JSON %s: %s", text, je.text);
    return j;
}

static void test_opts_from_json(void **state) {
    (void)state;
    cs_clean_opts o;
    cs_err err = {{0}};
    assert_int_equal(cs_clean_opts_from_json(&o, NULL, &err), 0);
    assert_int_equal(o.normalize, CS_CLEAN_NORM_NFKC);
    assert_int_equal(o.max_chars, 4096);
    assert_true(o.collapse_whitespace && o.strip_control && !o.has_template);

    json_t *j = js("{\"normalize\": \"nfc\", \"max_chars\": 10, \"template\": \"<{input}>\","
                   " \"collapse_whitespace\": false, \"strip_control\": false}");
    assert_int_equal(cs_clean_opts_from_json(&o, j, &err), 0);
    json_decref(j);
    assert_int_equal(o.normalize, CS_CLEAN_NORM_NFC);
    assert_int_equal(o.max_chars, 10);
    assert_true(o.has_template);
    assert_string_equal(o.tmpl, "<{input}>");
    assert_false(o.collapse_whitespace || o.strip_control);

    /* round trip through to_json */
    json_t *back = cs_clean_opts_to_json(&o);
    char *s = json_dumps(back, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, "{\"collapse_whitespace\":false,\"max_chars\":10,\"normalize\":\"NFC\","
                           "\"strip_control\":false,\"template\":\"<{input}>\"}");
    free(s);
    cs_clean_opts o2;
    assert_int_equal(cs_clean_opts_from_json(&o2, back, &err), 0);
    json_decref(back);
    assert_memory_equal(&o, &o2, offsetof(cs_clean_opts, tmpl));

    /* merge: only the keys given change; nulls mean "none" */
    j = js("{\"max_chars\": null, \"template\": null, \"normalize\": \"none\"}");
    assert_int_equal(cs_clean_opts_merge_json(&o, j, &err), 0);
    json_decref(j);
    assert_int_equal(o.max_chars, 0);
    assert_false(o.has_template);
    assert_int_equal(o.normalize, CS_CLEAN_NORM_NONE);
    assert_false(o.collapse_whitespace);
}

static void test_opts_errors_name_the_key(void **state) {
    (void)state;
    static const struct {
        const char *json, *key;
    } bad[] = {
        {"{\"normalize\": \"NFD\"}", "normalize"},
        {"{\"normalize\": 1}", "normalize"},
        {"{\"max_chars\": 0}", "max_chars"},
        {"{\"max_chars\": -5}", "max_chars"},
        {"{\"max_chars\": 99999999999}", "max_chars"},
        {"{\"max_chars\": \"100\"}", "max_chars"},
        {"{\"max_chars\": 10.5}", "max_chars"},
        {"{\"max_chars\": true}", "max_chars"},
        {"{\"template\": \"no placeholder\"}", "template"},
        {"{\"template\": 3}", "template"},
        {"{\"template\": \"a\\u0000{input}\"}", "template"},
        {"{\"collapse_whitespace\": 1}", "collapse_whitespace"},
        {"{\"strip_control\": \"yes\"}", "strip_control"},
        {"{\"colapse_whitespace\": true}", "colapse_whitespace: unknown key"},
        {"[1]", "expected an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *j = json_loads(bad[i].json, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(j);
        cs_clean_opts o, before;
        cs_clean_opts_default(&o);
        o.max_chars = 77;
        before = o;
        cs_err err = {{0}};
        if (cs_clean_opts_merge_json(&o, j, &err) == 0) fail_msg("%s accepted", bad[i].json);
        if (!strstr(err.msg, bad[i].key)) fail_msg("%s: message '%s' does not name '%s'", bad[i].json, err.msg, bad[i].key);
        assert_memory_equal(&o, &before, sizeof o); /* unchanged on error */
        json_decref(j);
    }
    /* a template at the size limit is fine, one byte more is not */
    char *big = malloc(CS_CLEAN_MAX_TEMPLATE + 2);
    memset(big, 'x', CS_CLEAN_MAX_TEMPLATE + 1);
    memcpy(big, "{input}", 7);
    big[CS_CLEAN_MAX_TEMPLATE] = 0;
    json_t *j = json_pack("{s:s}", "template", big);
    cs_clean_opts o;
    assert_int_equal(cs_clean_opts_from_json(&o, j, NULL), 0);
    json_decref(j);
    big[CS_CLEAN_MAX_TEMPLATE] = 'x';
    big[CS_CLEAN_MAX_TEMPLATE + 1] = 0;
    j = json_pack("{s:s}", "template", big);
    assert_int_equal(cs_clean_opts_from_json(&o, j, NULL), -1);
    json_decref(j);
    free(big);
}

/* ---------------------------------------------------------------- requests */

static char *clean_body(const cs_clean_opts *o, const char *body, int *changed) {
    json_t *j = js(body);
    cs_err err = {{0}};
    if (cs_clean_request(o, j, changed, &err)) fail_msg("cs_clean_request: %s", err.msg);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_decref(j);
    return s;
}

static void expect_body(const cs_clean_opts *o, const char *body, const char *want, int want_changed) {
    int changed = -1;
    char *s = clean_body(o, body, &changed);
    assert_string_equal(s, want);
    assert_int_equal(changed, want_changed);
    free(s);
}

static void test_request_rewriting(void **state) {
    (void)state;
    cs_clean_opts o;
    cs_clean_opts_default(&o);
    /* the seed's /text/simple-gen: only input changes */
    expect_body(&o, "{\"input\": \"  Once upon \\u00a0a \\ufb01ne time\\u200b  \", \"max_new_tokens\": 5, "
                    "\"temperature\": 0.5, \"stop\": \"  keep  \"}",
                "{\"input\":\"Once upon a fine time\",\"max_new_tokens\":5,\"stop\":\"  keep  \",\"temperature\":0.5}", 1);
    /* OpenAI string prompt */
    expect_body(&o, "{\"model\": \"m\", \"prompt\": \"\\uff28i  there\"}", "{\"model\":\"m\",\"prompt\":\"Hi there\"}", 1);
    /* list of prompts; non-strings inside are left alone */
    expect_body(&o, "{\"prompt\": [\"a  b\", \"ok\", [1, 2], 3, null]}", "{\"prompt\":[\"a b\",\"ok\",[1,2],3,null]}", 1);
    /* token-id prompts untouched */
    expect_body(&o, "{\"prompt\": [50256, 11, 3]}", "{\"prompt\":[50256,11,3]}", 0);
    expect_body(&o, "{\"prompt\": [[1, 2], [3]]}", "{\"prompt\":[[1,2],[3]]}", 0);
    /* wrong types are the API's to report: untouched */
    expect_body(&o, "{\"input\": 5, \"prompt\": {\"x\": \"  y \"}}", "{\"input\":5,\"prompt\":{\"x\":\"  y \"}}", 0);
    /* both fields */
    expect_body(&o, "{\"input\": \" a \", \"prompt\": \" b \"}", "{\"input\":\"a\",\"prompt\":\"b\"}", 2);
    /* nothing to change */
    expect_body(&o, "{\"input\": \"clean\"}", "{\"input\":\"clean\"}", 0);
    /* a body that is not an object is left alone */
    expect_body(&o, "[\" a \"]", "[\" a \"]", 0);
    expect_body(&o, "\" a \"", "\" a \"", 0);
    /* a template applies to each prompt */
    o.has_template = 1;
    strcpy(o.tmpl, "[{input}]");
    expect_body(&o, "{\"prompt\": [\"x \", \" y\"]}", "{\"prompt\":[\"[x]\",\"[y]\"]}", 2);
    /* NUL inside a string (JSON \u0000) is a control character */
    json_t *j = json_loads("{\"input\": \"a\\u0000b\"}", JSON_ALLOW_NUL, NULL);
    assert_non_null(j);
    o.has_template = 0;
    assert_int_equal(cs_clean_request(&o, j, NULL, NULL), 0);
    assert_int_equal(json_string_length(json_object_get(j, "input")), 2);
    assert_string_equal(json_string_value(json_object_get(j, "input")), "ab");
    json_decref(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nfkc_folds_compatibility_forms),
        cmocka_unit_test(test_nfc_keeps_compatibility_forms),
        cmocka_unit_test(test_no_normalization),
        cmocka_unit_test(test_controls_removed),
        cmocka_unit_test(test_controls_kept_when_off),
        cmocka_unit_test(test_strip_before_normalization),
        cmocka_unit_test(test_whitespace_collapsed_and_trimmed),
        cmocka_unit_test(test_nfkc_space_forms),
        cmocka_unit_test(test_max_chars_counts_characters),
        cmocka_unit_test(test_max_chars_keeps_clusters_whole),
        cmocka_unit_test(test_template),
        cmocka_unit_test(test_template_errors),
        cmocka_unit_test(test_invalid_utf8_repaired),
        cmocka_unit_test(test_idempotent),
        cmocka_unit_test(test_opts_from_json),
        cmocka_unit_test(test_opts_errors_name_the_key),
        cmocka_unit_test(test_request_rewriting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
