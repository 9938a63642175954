/* safetensors loading and model-level validation: every malformed file must give
 * -1 and a one-line message naming the file (and the tensor, where one is at
 * fault), never a crash or an out-of-bounds read (run under ASan by make asan). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <unistd.h>

#include "engine/gpt2.h"
#include "engine/safetensors.h"
#include "testutil.h"

static char dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/cs-st-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes [u64 header length][header][data bytes]; hlen_override != 0 replaces the length field. */
static const char *write_raw(const char *name, const char *header, uint64_t hlen_override, size_t data_len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = hlen_override ? hlen_override : strlen(header);
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hl >> (8 * i));
    fwrite(b, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc(0x3f, f);
    fclose(f);
    return path;
}

static void expect_fail(const char *path, const char *needle) {
    cs_st *st = NULL;
    cs_err err = {{0}};
    int rc = cs_st_open(&st, path, &err);
    if (rc != -1 || !strstr(err.msg, path) || (needle && !strstr(err.msg, needle)))
        fail_msg("%s: rc=%d msg='%s' (wanted '%s')", path, rc, err.msg, needle ? needle : "");
    assert_null(st);
    assert_null(strchr(err.msg, '\n'));
}

static void test_broken_files(void **state) {
    (void)state;
    static const struct {
        const char *name, *header, *needle;
        uint64_t hlen;
        size_t data;
    } cases[] = {
        {"hdr_beyond_eof", "{}", "beyond end of file", 1000, 0},
        {"hdr_huge", "{}", "exceeds limit", (uint64_t)1 << 40, 0},
        {"hdr_not_object", "[1, 2, 3]", "JSON object", 0, 0},
        {"hdr_bad_json", "{\"a\": {\"dtype\": \"F32\",", "JSON invalid", 0, 0},
        {"hdr_duplicate", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "JSON invalid", 0, 4},
        {"dtype_unknown", "{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "tensor w", 0, 1},
        {"dtype_missing", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "tensor w", 0, 4},
        {"shape_negative", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "tensor w", 0, 4},
        {"shape_string", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", "tensor w", 0, 8},
        {"shape_overflow", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
         "overflows", 0, 4},
        {"rank_too_big", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", "rank",
         0, 4},
        {"size_mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", "tensor w", 0, 24},
        {"offsets_beyond", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "truncated", 0, 8},
        {"offsets_reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", "begin > end", 0, 8},
        {"offsets_negative", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", "tensor w", 0, 8},
        {"offsets_short", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "tensor w", 0, 4},
        {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "overlap", 0, 12},
        /* an empty tensor between two overlapping ones must not hide the overlap */
        {"overlap_past_empty", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                               "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]},"
                               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", "overlap", 0, 8},
        {"entry_not_object", "{\"w\":[1,2]}", "tensor w", 0, 0},
        {"metadata_not_object", "{\"__metadata__\":3}", "__metadata__", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_fail(write_raw(cases[i].name, cases[i].header, cases[i].hlen, cases[i].data), cases[i].needle);

    /* Files too short to hold the length field, and a missing file. */
    char path[512];
    snprintf(path, sizeof path, "%s/empty", dir);
    fclose(fopen(path, "wb"));
    expect_fail(path, "too short");
    snprintf(path, sizeof path, "%s/seven", dir);
    FILE *f = fopen(path, "wb");
    fwrite("\x02\0\0\0\0\0\0", 1, 7, f);
    fclose(f);
    expect_fail(path, "too short");
    snprintf(path, sizeof path, "%s/does-not-exist", dir);
    expect_fail(path, "cannot open");
    expect_fail(dir, NULL); /* a directory */
}

/* Every prefix of a valid file must be rejected cleanly (no read past the end). */
static void test_every_truncation(void **state) {
    (void)state;
    float a[3] = {1, 2, 3}, b[2] = {4, 5};
    cs_st_write_entry e[2] = {{.name = "a", .dtype = CS_DT_F32, .rank = 1, .shape = {3}, .data = a},
                              {.name = "b", .dtype = CS_DT_F32, .rank = 2, .shape = {1, 2}, .data = b}};
    char path[512], tpath[512];
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    cs_err err;
    assert_int_equal(cs_st_write(path, e, 2, &err), 0);
    size_t len = 0;
    char *bytes = tu_read_file(path, &len);
    assert_non_null(bytes);
    cs_st *st;
    assert_int_equal(cs_st_open(&st, path, &err), 0);
    assert_int_equal(cs_st_count(st), 2);
    const cs_st_tensor *t = cs_st_find(st, "b");
    assert_non_null(t);
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->shape[1], 2);
    float got[2];
    assert_int_equal(cs_dtype_to_f32(t->dtype, t->data, got, 2), 0);
    assert_true(got[0] == 4 && got[1] == 5);
    assert_null(cs_st_find(st, "c"));
    cs_st_close(st);
    snprintf(tpath, sizeof tpath, "%s/trunc.safetensors", dir);
    for (size_t n = 0; n < len; n++) {
        FILE *f = fopen(tpath, "wb");
        fwrite(bytes, 1, n, f);
        fclose(f);
        st = NULL;
        assert_int_equal(cs_st_open(&st, tpath, &err), -1);
        assert_null(st);
    }
    free(bytes);
}

static void test_half_conversions(void **state) {
    (void)state;
    /* F16 bit patterns and their exact values (IEEE 754 binary16). */
    const uint16_t h[] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x7BFF, 0x0000, 0x8000, 0x3555};
    const float want[] = {1.0f, -2.0f, 5.9604644775390625e-08f, 6.0975551605224609e-05f, 65504.0f, 0.0f, -0.0f,
                          0.333251953125f};
    float got[8];
    unsigned char raw[16];
    for (int i = 0; i < 8; i++) {
        raw[2 * i] = (unsigned char)h[i];
        raw[2 * i + 1] = (unsigned char)(h[i] >> 8);
    }
    assert_int_equal(cs_dtype_to_f32(CS_DT_F16, raw, got, 8), 0);
    for (int i = 0; i < 8; i++) assert_true(got[i] == want[i] && signbit(got[i]) == signbit(want[i]));
    unsigned char inf[2] = {0x00, 0x7C};
    assert_int_equal(cs_dtype_to_f32(CS_DT_F16, inf, got, 1), 0);
    assert_true(isinf(got[0]));
    /* BF16 is the top half of an F32. */
    const unsigned char bf[4] = {0x80, 0x3F, 0x49, 0xC0}; /* 1.0, -3.140625 */
    assert_int_equal(cs_dtype_to_f32(CS_DT_BF16, bf, got, 2), 0);
    assert_true(got[0] == 1.0f && got[1] == -3.140625f);
    assert_int_equal(cs_dtype_to_f32(CS_DT_I32, bf, got, 1), -1);
}

/* ---------------------------------------------------------------- model level */

static void write_text(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void expect_config_fail(const char *text, const char *needle) {
    write_text("config.json", text);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cs_gpt2_config cfg;
    cs_err err = {{0}};
    if (cs_gpt2_config_load(&cfg, path, &err) != -1 || !strstr(err.msg, "config.json") || !strstr(err.msg, needle))
        fail_msg("config '%s': msg '%s' (wanted '%s')", text, err.msg, needle);
}

static void test_config_errors(void **state) {
    (void)state;
    expect_config_fail("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 10", "config.json:1");
    expect_config_fail("{\"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 10, \"n_positions\": 4}", "'n_layer'");
    expect_config_fail("{\"n_layer\": \"2\", \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 10, \"n_positions\": 4}",
                       "'n_layer'");
    expect_config_fail("{\"n_layer\": 2, \"n_head\": 3, \"n_embd\": 8, \"vocab_size\": 10, \"n_positions\": 4}",
                       "divisible");
    expect_config_fail("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": -8, \"vocab_size\": 10, \"n_positions\": 4}",
                       "'n_embd'");
    expect_config_fail("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 10, \"n_positions\": 4, "
                       "\"activation_function\": \"mish\"}", "activation_function");
    expect_config_fail("{\"model_type\": \"llama\", \"n_layer\": 2}", "model_type");
    expect_config_fail("[]", "JSON object");
    /* Positive in JSON but zero as a float: LayerNorm would divide by zero on a constant row. */
    expect_config_fail("{\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"vocab_size\": 10, \"n_positions\": 4, "
                       "\"layer_norm_epsilon\": 1e-50}", "layer_norm_epsilon");
}

/* A tiny valid model, then one broken thing at a time. */
static void write_tiny(int drop, int bad_shape, int nan, int extra_layer) {
    enum { C = 8, V = 10, P = 4, F = 32 };
    static float buf[64][V * C * 4];
    cs_st_write_entry e[64];
    size_t n = 0;
    char names[64][64];
#define T(nm, r, ...)                                                                              \
    do {                                                                                           \
        snprintf(names[n], 64, "%s", nm);                                                          \
        e[n] = (cs_st_write_entry){.name = names[n], .dtype = CS_DT_F32, .rank = r, .shape = {__VA_ARGS__}, \
                                   .data = buf[n]};                                                \
        n++;                                                                                       \
    } while (0)
    T("wte.weight", 2, V, C);
    T("wpe.weight", 2, P, bad_shape ? P + 1 : P == 4 ? C : C);
    T("ln_f.weight", 1, C);
    T("ln_f.bias", 1, C);
    char nm[64];
    for (int l = 0; l < 1 + extra_layer; l++) {
        snprintf(nm, 64, "h.%d.ln_1.weight", l); T(nm, 1, C);
        snprintf(nm, 64, "h.%d.ln_1.bias", l); T(nm, 1, C);
        snprintf(nm, 64, "h.%d.attn.c_attn.weight", l); T(nm, 2, C, 3 * C);
        snprintf(nm, 64, "h.%d.attn.c_attn.bias", l); T(nm, 1, 3 * C);
        snprintf(nm, 64, "h.%d.attn.c_proj.weight", l); T(nm, 2, C, C);
        snprintf(nm, 64, "h.%d.attn.c_proj.bias", l); T(nm, 1, C);
        snprintf(nm, 64, "h.%d.ln_2.weight", l); T(nm, 1, C);
        snprintf(nm, 64, "h.%d.ln_2.bias", l); T(nm, 1, C);
        snprintf(nm, 64, "h.%d.mlp.c_fc.weight", l); T(nm, 2, C, F);
        snprintf(nm, 64, "h.%d.mlp.c_fc.bias", l); T(nm, 1, F);
        snprintf(nm, 64, "h.%d.mlp.c_proj.weight", l); T(nm, 2, F, C);
        snprintf(nm, 64, "h.%d.mlp.c_proj.bias", l); T(nm, 1, C);
    }
#undef T
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < V * C * 4; j++) buf[i][j] = 0.01f * (float)((i + j) % 7);
    if (nan) buf[5][3] = NAN;
    if (drop >= 0) {
        e[drop] = e[n - 1];
        n--;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cs_err err;
    assert_int_equal(cs_st_write(path, e, n, &err), 0);
}

static void expect_model(int want_ok, const char *needle) {
    char cpath[512], mpath[512];
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    snprintf(mpath, sizeof mpath, "%s/model.safetensors", dir);
    cs_gpt2_config cfg;
    cs_err err = {{0}};
    assert_int_equal(cs_gpt2_config_load(&cfg, cpath, &err), 0);
    cs_gpt2 *m = NULL;
    cs_gpt2_opts o = {.no_cache = 1};
    int rc = cs_gpt2_load(&m, &cfg, mpath, &o, &err);
    if (want_ok) {
        if (rc) fail_msg("%s", err.msg);
        cs_gpt2_free(m);
        return;
    }
    if (rc != -1 || !strstr(err.msg, "model.safetensors") || !strstr(err.msg, needle))
        fail_msg("rc=%d msg='%s' (wanted '%s')", rc, err.msg, needle);
    assert_null(m);
}

static void test_model_mismatch(void **state) {
    (void)state;
    write_text("config.json", "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                              "\"vocab_size\": 10, \"n_positions\": 4, \"n_inner\": null}");
    write_tiny(-1, 0, 0, 0);
    expect_model(1, NULL);
    write_tiny(6, 0, 0, 0); /* h.0.attn.c_attn.weight dropped */
    expect_model(0, "missing tensor h.0.attn.c_attn.weight");
    write_tiny(-1, 1, 0, 0);
    expect_model(0, "tensor wpe.weight has shape [4,5], config needs [4,8]");
    write_tiny(-1, 0, 1, 0);
    expect_model(0, "non-finite");
    write_tiny(-1, 0, 0, 1);
    expect_model(0, "h.1.ln_1.weight");
    write_text("config.json", "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 16, "
                              "\"vocab_size\": 10, \"n_positions\": 4}");
    write_tiny(-1, 0, 0, 0);
    expect_model(0, "tensor wpe.weight has shape [4,8], config needs [4,16]");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broken_files),     cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_half_conversions), cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_model_mismatch),
    };
    return cmocka_run_group_tests_name("safetensors", tests, setup, teardown);
}
