/* cs_chat_tpl: the default template's normal form and role-marker stops,
 * markers derived from a custom template (with and without a newline), and
 * the errors that name the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "serve/chat_tpl.h"

static const char *text(const json_t *t, const char *key) { return json_string_value(json_object_get(t, key)); }

static const char *stop_at(const json_t *t, size_t i) {
    return json_string_value(json_array_get(json_object_get(t, "stop"), i));
}

static void test_default(void **state) {
    (void)state;
    json_t *t;
    cs_err err;
    assert_int_equal(cs_chat_tpl_norm(NULL, "t", &t, &err), 0);
    assert_string_equal(text(t, "prefix"), "");
    assert_string_equal(text(t, "system"), "System: {content}\n");
    assert_string_equal(text(t, "user"), "User: {content}\n");
    assert_string_equal(text(t, "assistant"), "Assistant: {content}\n");
    assert_string_equal(text(t, "generation"), "Assistant:");
    assert_int_equal(json_array_size(json_object_get(t, "stop")), 2);
    assert_string_equal(stop_at(t, 0), "\nSystem:");
    assert_string_equal(stop_at(t, 1), "\nUser:");
    json_decref(t);
}

static void test_derived_markers(void **state) {
    (void)state;
    json_t *t, *in = json_pack("{s:s, s:s, s:s}", "user", "  ### Human: {content}", "assistant", "{content}</s>",
                               "system", "{content}");
    cs_err err;
    assert_int_equal(cs_chat_tpl_norm(in, "t", &t, &err), 0);
    /* no newline after an assistant turn: the marker alone; an empty system marker gives none */
    assert_int_equal(json_array_size(json_object_get(t, "stop")), 1);
    assert_string_equal(stop_at(t, 0), "### Human:");
    assert_string_equal(text(t, "generation"), "Assistant:"); /* keys not given keep the default */
    json_decref(t);
    json_object_set_new(in, "assistant", json_string("{content}\n\n"));
    json_object_set_new(in, "stop", json_pack("[s, s]", "END", "\nX"));
    assert_int_equal(cs_chat_tpl_norm(in, "t", &t, &err), 0); /* given stops replace the derived ones */
    assert_int_equal(json_array_size(json_object_get(t, "stop")), 2);
    assert_string_equal(stop_at(t, 0), "END");
    json_decref(t);
    json_object_del(in, "stop");
    assert_int_equal(cs_chat_tpl_norm(in, "t", &t, &err), 0);
    assert_string_equal(stop_at(t, 0), "\n### Human:");
    json_decref(t);
    json_object_set_new(in, "stop", json_array());
    assert_int_equal(cs_chat_tpl_norm(in, "t", &t, &err), 0);
    assert_int_equal(json_array_size(json_object_get(t, "stop")), 0);
    json_decref(t);
    json_decref(in);
}

static void expect_error(const char *json, const char *words) {
    json_t *in = json_loads(json, JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL), *t = (json_t *)1;
    assert_non_null(in);
    cs_err err = {{0}};
    assert_int_equal(cs_chat_tpl_norm(in, "user_config.chat_template", &t, &err), -1);
    assert_null(t);
    if (!strstr(err.msg, words)) fail_msg("%s: '%s' has no '%s'", json, err.msg, words);
    json_decref(in);
}

static void test_errors(void **state) {
    (void)state;
    expect_error("{\"user\": \"User:\"}", "user_config.chat_template.user: must hold {content} exactly once");
    expect_error("{\"user\": \"{content}{content}\"}", "found it 2 times");
    expect_error("{\"prefix\": \"{content}\"}", "chat_template.prefix: must hold {content} no times");
    expect_error("{\"generation\": 5}", "generation: expected a string");
    expect_error("{\"usr\": \"{content}\"}", "chat_template.usr: unknown key");
    expect_error("{\"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", "stop: 5 strings, at most 4");
    expect_error("{\"stop\": [\"\"]}", "stop[0]: 0 bytes");
    expect_error("{\"stop\": 3}", "stop: expected a string or a list");
    expect_error("{\"system\": \"a\\u0000{content}\"}", "NUL");
    expect_error("[]", "chat_template: expected an object");
}

static void test_load(void **state) {
    (void)state;
    json_t *t;
    cs_err err;
    assert_int_equal(cs_chat_tpl_load("  {\"generation\": \"A:\"}", &t, &err), 0);
    assert_string_equal(text(t, "generation"), "A:");
    json_decref(t);
    char path[] = "/tmp/cs-chat-tpl-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char body[] = "{\"user\": \"Q: {content}\\n\"}\n";
    assert_int_equal(write(fd, body, sizeof body - 1), (ssize_t)(sizeof body - 1));
    close(fd);
    assert_int_equal(cs_chat_tpl_load(path, &t, &err), 0);
    assert_string_equal(stop_at(t, 1), "\nQ:");
    json_decref(t);
    unlink(path);
    assert_int_equal(cs_chat_tpl_load(path, &t, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(cs_chat_tpl_load("{\"user\": ", &t, &err), -1);
    assert_non_null(strstr(err.msg, "not JSON"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default),
        cmocka_unit_test(test_derived_markers),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
