/* SHA-256 against the FIPS 180-4 / NIST CAVP example vectors, padding-boundary
 * lengths (expected digests from Python's hashlib), and streaming in every
 * split position (must equal the one-shot digest). Every test runs on the scalar
 * reference and, where the CPU has SHA-NI, on the accelerated code too; one more
 * compares the two on pseudo-random data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/sha256.h"

static void hex_of(const void *data, size_t n, char out[CS_SHA256_HEX]) {
    uint8_t d[CS_SHA256_DIGEST];
    cs_sha256_buf(data, n, d);
    cs_sha256_hex(d, out);
}

static void test_fips_vectors(void **state) {
    (void)state;
    char h[CS_SHA256_HEX];
    hex_of("", 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of(NULL, 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    static const char m448[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m448, strlen(m448), h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    static const char m896[] = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                               "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hex_of(m896, strlen(m896), h);
    assert_string_equal(h, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

static void test_million_a(void **state) {
    (void)state;
    char h[CS_SHA256_HEX];
    uint8_t d[CS_SHA256_DIGEST];
    /* One buffer ... */
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    hex_of(a, 1000000, h);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    /* ... and in odd-sized pieces. */
    cs_sha256 s;
    cs_sha256_init(&s);
    size_t done = 0, step = 1;
    while (done < 1000000) {
        size_t n = step < 1000000 - done ? step : 1000000 - done;
        cs_sha256_update(&s, a + done, n);
        done += n;
        step = step * 7 % 1009 + 1;
    }
    cs_sha256_final(&s, d);
    cs_sha256_hex(d, h);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

/* Lengths around the 55/56/64-byte padding boundaries (hashlib digests of 'a' * n). */
static void test_padding_boundaries(void **state) {
    (void)state;
    static const struct {
        size_t n;
        const char *hex;
    } v[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {57, "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
        {127, "c57e9278af78fa3cab38667bef4ce29d783787a2f731d4e12200270f0c32320a"},
        {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
    };
    char a[128], h[CS_SHA256_HEX];
    memset(a, 'a', sizeof a);
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        hex_of(a, v[i].n, h);
        assert_string_equal(h, v[i].hex);
    }
    /* All 256 byte values, 1 KiB (hashlib: bytes(range(256)) * 4). */
    uint8_t b[1024];
    for (size_t i = 0; i < sizeof b; i++) b[i] = (uint8_t)i;
    hex_of(b, sizeof b, h);
    assert_string_equal(h, "785b0751fc2c53dc14a4ce3d800e69ef9ce1009eb327ccf458afe09c242c26c9");
}

/* Every split of every length up to 300 bytes gives the one-shot digest. */
static void test_streaming_splits(void **state) {
    (void)state;
    uint8_t msg[300];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(i * 131 + 7);
    for (size_t n = 0; n <= sizeof msg; n++) {
        uint8_t want[CS_SHA256_DIGEST];
        cs_sha256_buf(msg, n, want);
        for (size_t cut = 0; cut <= n; cut += (n < 130 ? 1 : 17)) {
            cs_sha256 s;
            uint8_t got[CS_SHA256_DIGEST];
            cs_sha256_init(&s);
            cs_sha256_update(&s, msg, cut);
            cs_sha256_update(&s, NULL, 0);
            cs_sha256_update(&s, msg + cut, n - cut);
            cs_sha256_final(&s, got);
            assert_memory_equal(got, want, sizeof want);
        }
    }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint8_t next_byte(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint8_t)(rng_state >> 32);
}

/* Accelerated and scalar digests agree on every length up to 1 KiB and on large buffers fed
 * in uneven pieces. */
static void test_accel_matches_ref(void **state) {
    (void)state;
    if (!cs_sha256_use_accel(1)) {
        skip();
        return;
    }
    size_t n = (1 << 20) + 77;
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++) buf[i] = next_byte();
    uint8_t a[CS_SHA256_DIGEST], b[CS_SHA256_DIGEST];
    for (size_t len = 0; len <= 1024; len++) {
        cs_sha256_use_accel(0);
        cs_sha256_buf(buf + len % 7, len, a);
        cs_sha256_use_accel(1);
        cs_sha256_buf(buf + len % 7, len, b);
        assert_memory_equal(a, b, sizeof a);
    }
    cs_sha256_use_accel(0);
    cs_sha256_buf(buf, n, a);
    cs_sha256_use_accel(1);
    cs_sha256 s;
    cs_sha256_init(&s);
    for (size_t off = 0, step = 3; off < n; off += step, step = step * 5 % 70001 + 1)
        cs_sha256_update(&s, buf + off, step < n - off ? step : n - off);
    cs_sha256_final(&s, b);
    assert_memory_equal(a, b, sizeof a);
    free(buf);
}

static int use_ref(void **state) {
    (void)state;
    cs_sha256_use_accel(0);
    return 0;
}

static int use_accel(void **state) {
    (void)state;
    cs_sha256_use_accel(1);
    return 0;
}

int main(void) {
    const struct CMUnitTest ref[] = {
        cmocka_unit_test(test_fips_vectors),
        cmocka_unit_test(test_million_a),
        cmocka_unit_test(test_padding_boundaries),
        cmocka_unit_test(test_streaming_splits),
    };
    const struct CMUnitTest accel[] = {
        cmocka_unit_test(test_fips_vectors),
        cmocka_unit_test(test_million_a),
        cmocka_unit_test(test_padding_boundaries),
        cmocka_unit_test(test_streaming_splits),
        cmocka_unit_test(test_accel_matches_ref),
    };
    int fails = cmocka_run_group_tests_name("sha256 scalar reference", ref, use_ref, NULL);
    if (cs_sha256_use_accel(1)) fails += cmocka_run_group_tests_name("sha256 SHA-NI", accel, use_accel, NULL);
    else printf("sha256: no SHA-NI on this CPU, accelerated path not tested\n");
    return fails;
}
