/* libFuzzer target: loading a tokenizer (cs_tok_load in
 * src/engine/tokenizer.h): vocab.json and merges.txt come with every model
 * directory, from the Hub or the user.
 *
 * Input: vocab.json, a NUL byte, merges.txt (no NUL: merges.txt is empty).
 * On failure the error message must be set. On success the tokenizer must
 * hold a token for each of the 256 bytes, and encoding a fixed text and the
 * input itself (allow_special 0 and 1) must give ids that decode back to the
 * U+FFFD-repaired text, whatever the merges. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "engine/utf8.h"
#include "fuzz_common.h"

static int g_vfd = -1, g_mfd = -1;
static char g_vpath[64], g_mpath[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_vfd = fz_memfd("vocab.json", g_vpath, sizeof g_vpath);
    g_mfd = fz_memfd("merges.txt", g_mpath, sizeof g_mpath);
    return 0;
}

static void round_trip(const cs_tok *t, const char *x, size_t n, int allow_special) {
    int32_t *ids = NULL;
    size_t n_ids = 0;
    cs_err err = {{0}};
    if (cs_tok_encode(t, x, n, allow_special, &ids, &n_ids, &err)) fz_fail("cs_tok_encode failed: %s", err.msg);
    const int32_t V = cs_tok_vocab_size(t);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= V || !cs_tok_token_bytes(t, ids[i], NULL)) fz_fail("encode gave unknown id %d", ids[i]);
    char *d = NULL;
    size_t dl = 0, rl = 0;
    if (cs_tok_decode(t, ids, n_ids, &d, &dl, &err)) fz_fail("cs_tok_decode of encoded ids failed: %s", err.msg);
    char *r = cs_utf8_repair(x, n, &rl);
    if (!r) abort();
    if (dl != rl || memcmp(d, r, rl)) fz_fail("decode(encode(x)) != repair(x) (allow_special=%d)", allow_special);
    free(r);
    free(d);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *z = memchr(data, 0, size);
    const size_t vl = z ? (size_t)(z - data) : size;
    fz_fill(g_vfd, data, vl);
    fz_fill(g_mfd, z ? z + 1 : data, z ? size - vl - 1 : 0);
    cs_tok *t = NULL;
    cs_err err = {{0}};
    if (cs_tok_load(&t, g_vpath, g_mpath, &err)) {
        if (t) fz_fail("cs_tok_load failed but set *out");
        fz_check_err(&err, "cs_tok_load");
        return 0;
    }
    const int32_t V = cs_tok_vocab_size(t), eos = cs_tok_eos_id(t);
    if (V < 1) fz_fail("vocab size %d", V);
    if (eos >= V || (eos >= 0 && !cs_tok_token_bytes(t, eos, NULL))) fz_fail("eos id %d", eos);
    static const char k_text[] = "Hello, world! It's 2024: caf\xc3\xa9 \xe2\x82\xac 10 <|endoftext|>\n\n  tabs\tand\xff bytes";
    round_trip(t, k_text, sizeof k_text - 1, 0);
    round_trip(t, k_text, sizeof k_text - 1, 1);
    round_trip(t, (const char *)data, size < 256 ? size : 256, 1);
    cs_tok_free(t);
    return 0;
}
