/* UTF-8 repair (Python's "replace" rule) and the streaming hold-back. Expected
 * outputs are Python's: bytes.decode("utf-8", "replace").encode(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "engine/utf8.h"

#define R "\xEF\xBF\xBD"

static void test_repair(void **state) {
    (void)state;
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"\xC3\xA9", 2, "\xC3\xA9"},
        {"\x80", 1, R},
        {"a\xFF" "b", 3, "a" R "b"},
        {"\xC0\xAF", 2, R R},           /* overlong '/' */
        {"\xE0\x80\xAF", 3, R R R},     /* overlong */
        {"\xED\xA0\x80", 3, R R R},     /* surrogate */
        {"\xF4\x90\x80\x80", 4, R R R R}, /* above U+10FFFF */
        {"\xF0\x9F\x98", 3, R},         /* truncated emoji: one replacement */
        {"\xF0\x9F\x98" "A", 4, R "A"},
        {"\xE2\x82" "\xE2\x82\xAC", 5, R "\xE2\x82\xAC"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"", 0, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n;
        char *o = cs_utf8_repair(cases[i].in, cases[i].n, &n);
        assert_non_null(o);
        assert_int_equal(n, strlen(cases[i].out));
        assert_memory_equal(o, cases[i].out, n);
        assert_int_equal(cs_utf8_valid(cases[i].in, cases[i].n), strcmp(o, cases[i].in) == 0 && n == cases[i].n);
        assert_true(cs_utf8_valid(o, n));
        free(o);
    }
}

static void test_complete_prefix(void **state) {
    (void)state;
    assert_int_equal(cs_utf8_complete_prefix("ab", 2), 2);
    assert_int_equal(cs_utf8_complete_prefix("a\xC3", 2), 1);               /* waits for the 2nd byte */
    assert_int_equal(cs_utf8_complete_prefix("a\xF0\x9F\x98", 4), 1);       /* 3 of 4 bytes */
    assert_int_equal(cs_utf8_complete_prefix("a\xF0\x9F\x98\x80", 5), 5);   /* complete */
    assert_int_equal(cs_utf8_complete_prefix("a\x80", 2), 2);               /* stray: nothing to wait for */
    assert_int_equal(cs_utf8_complete_prefix("a\xE0\x80", 3), 3);           /* can never complete */
    assert_int_equal(cs_utf8_complete_prefix("", 0), 0);
    /* Bytes that are never a lead byte (C0, C1, F5..FF) are not waited for. */
    assert_int_equal(cs_utf8_complete_prefix("\xFF", 1), 1);
    assert_int_equal(cs_utf8_complete_prefix("a\xC0", 2), 2);
    assert_int_equal(cs_utf8_complete_prefix("a\xC1", 2), 2);
    assert_int_equal(cs_utf8_complete_prefix("a\xF5\x80", 3), 3);
    assert_int_equal(cs_utf8_complete_prefix("a\xC2", 2), 1);               /* lowest real 2-byte lead */
    assert_int_equal(cs_utf8_complete_prefix("a\xF4\x8F", 3), 1);         /* highest real 4-byte lead */
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_repair), cmocka_unit_test(test_complete_prefix)};
    return cmocka_run_group_tests_name("utf8", tests, NULL, NULL);
}
