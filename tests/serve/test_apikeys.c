/* The API-key table (serve/apikeys.h) both listeners authenticate with: which
 * Authorization headers match which key, the table's limits, and the per-key
 * in-flight slots behind 429. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "serve/api.h"
#include "serve/apikeys.h"

static cs_keys *mk(const char *const *keys, const int *lim, size_t n) {
    cs_keys *k = NULL;
    cs_err err = {{0}};
    assert_int_equal(cs_keys_create(&k, keys, lim, n, &err), 0);
    assert_non_null(k);
    return k;
}

static void test_no_keys_authorizes(void **st) {
    (void)st;
    cs_keys *k = mk(NULL, NULL, 0);
    int idx = 7;
    assert_int_equal(cs_keys_count(k), 0);
    assert_int_equal(cs_keys_check(k, NULL, &idx), 1);
    assert_int_equal(idx, -1);
    assert_int_equal(cs_keys_check(k, "Bearer whatever", &idx), 1);
    assert_int_equal(idx, -1);
    assert_int_equal(cs_keys_try_acquire(k, idx), 0); /* nothing to count */
    cs_keys_release(k, idx);
    cs_keys_free(k);
    /* a NULL table is a table without keys */
    assert_int_equal(cs_keys_check(NULL, NULL, NULL), 1);
    assert_int_equal(cs_keys_count(NULL), 0);
}

static void test_match_and_index(void **st) {
    (void)st;
    const char *keys[] = {"alpha-key", "beta", "gamma-123"};
    cs_keys *k = mk(keys, NULL, 3);
    int idx = 9;
    assert_int_equal(cs_keys_count(k), 3);
    assert_int_equal(cs_keys_check(k, "Bearer alpha-key", &idx), 1);
    assert_int_equal(idx, 0);
    assert_int_equal(cs_keys_check(k, "Bearer beta", &idx), 1);
    assert_int_equal(idx, 1);
    assert_int_equal(cs_keys_check(k, "Bearer gamma-123", &idx), 1);
    assert_int_equal(idx, 2);
    assert_int_equal(cs_keys_check(k, "Bearer gamma-123", NULL), 1); /* idx is optional */
    cs_keys_free(k);
}

static void test_near_misses(void **st) {
    (void)st;
    const char *keys[] = {"s3cret-key"};
    cs_keys *k = mk(keys, NULL, 1);
    int idx = 5;
    assert_int_equal(cs_keys_check(k, NULL, &idx), 0); /* no header */
    assert_int_equal(idx, -1);
    assert_int_equal(cs_keys_check(k, "Bearer s3cret-kez", &idx), 0); /* same length, last byte differs */
    assert_int_equal(idx, -1);
    assert_int_equal(cs_keys_check(k, "Bearer x3cret-key", &idx), 0); /* same length, first byte differs */
    assert_int_equal(cs_keys_check(k, "Bearer s3cret", &idx), 0);      /* a prefix of the key */
    assert_int_equal(cs_keys_check(k, "Bearer s3cret-key!", &idx), 0); /* the key and one byte more */
    assert_int_equal(cs_keys_check(k, "Bearer ", &idx), 0);            /* empty key */
    assert_int_equal(cs_keys_check(k, "", &idx), 0);
    assert_int_equal(cs_keys_check(k, "s3cret-key", &idx), 0);       /* no scheme */
    assert_int_equal(cs_keys_check(k, "Basic s3cret-key", &idx), 0); /* another scheme */
    assert_int_equal(idx, -1);
    cs_keys_free(k);
}

static void test_bearer_case_and_spaces(void **st) {
    (void)st;
    const char *keys[] = {"k-123"};
    cs_keys *k = mk(keys, NULL, 1);
    /* the scheme in any case */
    assert_int_equal(cs_keys_check(k, "bearer k-123", NULL), 1);
    assert_int_equal(cs_keys_check(k, "BEARER k-123", NULL), 1);
    assert_int_equal(cs_keys_check(k, "BeArEr k-123", NULL), 1);
    /* more spaces after the scheme and spaces after the key are ignored */
    assert_int_equal(cs_keys_check(k, "Bearer   k-123", NULL), 1);
    assert_int_equal(cs_keys_check(k, "Bearer k-123  ", NULL), 1);
    /* but the scheme needs a space after it, and the key is case-sensitive */
    assert_int_equal(cs_keys_check(k, "Bearerk-123", NULL), 0);
    assert_int_equal(cs_keys_check(k, "Bearer\tk-123", NULL), 0);
    assert_int_equal(cs_keys_check(k, " Bearer k-123", NULL), 0);
    assert_int_equal(cs_keys_check(k, "Bearer K-123", NULL), 0);
    assert_int_equal(cs_keys_check(k, "Bearer k 123", NULL), 0);
    cs_keys_free(k);
}

static void test_limit_refuses_and_releases(void **st) {
    (void)st;
    const char *keys[] = {"limited", "other"};
    const int lim[] = {2, 1};
    cs_keys *k = mk(keys, lim, 2);
    assert_int_equal(cs_keys_try_acquire(k, 0), 0);
    assert_int_equal(cs_keys_try_acquire(k, 0), 0);
    assert_int_equal(cs_keys_try_acquire(k, 0), 2); /* third in flight: refused with the limit */
    assert_int_equal(cs_keys_try_acquire(k, 0), 2); /* a refusal takes no slot */
    assert_int_equal(cs_keys_try_acquire(k, 1), 0); /* each key counts on its own */
    assert_int_equal(cs_keys_try_acquire(k, 1), 1);
    cs_keys_release(k, 0);
    assert_int_equal(cs_keys_try_acquire(k, 0), 0);
    assert_int_equal(cs_keys_try_acquire(k, 0), 2);
    cs_keys_release(k, 0);
    cs_keys_release(k, 0);
    cs_keys_release(k, 1);
    assert_int_equal(cs_keys_try_acquire(k, 0), 0);
    assert_int_equal(cs_keys_try_acquire(k, 0), 0);
    assert_int_equal(cs_keys_try_acquire(k, 1), 0);
    assert_int_equal(cs_keys_try_acquire(k, -1), 0); /* no key: nothing to limit */
    cs_keys_free(k);
}

static void test_limit_zero_is_unlimited(void **st) {
    (void)st;
    const char *keys[] = {"free", "neg", "nolimits"};
    const int lim[] = {0, -3, 0};
    cs_keys *k = mk(keys, lim, 3);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(cs_keys_try_acquire(k, 0), 0);
        assert_int_equal(cs_keys_try_acquire(k, 1), 0);
    }
    cs_keys_free(k);
    k = mk(keys, NULL, 3); /* no limits given at all */
    for (int i = 0; i < 1000; i++) assert_int_equal(cs_keys_try_acquire(k, 2), 0);
    cs_keys_release(k, 2);
    cs_keys_free(k);
}

static void test_bad_tables(void **st) {
    (void)st;
    cs_err err = {{0}};
    cs_keys *k = (cs_keys *)&err; /* must come back NULL */
    const char *empty[] = {"ok", ""};
    assert_int_equal(cs_keys_create(&k, empty, NULL, 2, &err), -1);
    assert_null(k);
    char want[128];
    snprintf(want, sizeof want, "API key 2: length 0, must be 1..%d bytes", CS_API_MAX_KEY_BYTES);
    assert_string_equal(err.msg, want);

    char long_key[CS_API_MAX_KEY_BYTES + 2];
    memset(long_key, 'a', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    const char *too_long[] = {long_key};
    assert_int_equal(cs_keys_create(&k, too_long, NULL, 1, &err), -1);
    assert_null(k);
    snprintf(want, sizeof want, "API key 1: length %d, must be 1..%d bytes", CS_API_MAX_KEY_BYTES + 1,
             CS_API_MAX_KEY_BYTES);
    assert_string_equal(err.msg, want);
    long_key[CS_API_MAX_KEY_BYTES] = 0; /* exactly the most bytes allowed */
    k = mk(too_long, NULL, 1);
    char hdr[CS_API_MAX_KEY_BYTES + 16];
    snprintf(hdr, sizeof hdr, "Bearer %s", long_key);
    assert_int_equal(cs_keys_check(k, hdr, NULL), 1);
    cs_keys_free(k);

    const char *many[CS_API_MAX_KEYS + 1];
    for (size_t i = 0; i < CS_API_MAX_KEYS + 1; i++) many[i] = "k";
    assert_int_equal(cs_keys_create(&k, many, NULL, CS_API_MAX_KEYS + 1, &err), -1);
    assert_null(k);
    snprintf(want, sizeof want, "%d API keys, at most %d", CS_API_MAX_KEYS + 1, CS_API_MAX_KEYS);
    assert_string_equal(err.msg, want);
    k = mk(many, NULL, CS_API_MAX_KEYS);
    cs_keys_free(k);
    cs_keys_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_keys_authorizes),
        cmocka_unit_test(test_match_and_index),
        cmocka_unit_test(test_near_misses),
        cmocka_unit_test(test_bearer_case_and_spaces),
        cmocka_unit_test(test_limit_refuses_and_releases),
        cmocka_unit_test(test_limit_zero_is_unlimited),
        cmocka_unit_test(test_bad_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
