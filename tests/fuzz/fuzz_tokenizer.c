/* libFuzzer target: the GPT-2 tokenizer and the UTF-8 helpers on arbitrary
 * text (src/engine/tokenizer.h, src/engine/utf8.h).
 *
 * The real GPT-2 vocabulary (tests/data/gpt2-tokenizer, under $CS_FUZZ_ROOT or
 * the current directory) is loaded once. For each input x:
 *   - cs_tok_encode(x) with allow_special 0 and 1: ids in [0, vocab), no
 *     <|endoftext|> id unless allowed, decode(encode(x)) == cs_utf8_repair(x)
 *     byte for byte, and decode with skip_special == repair(x) without its
 *     "<|endoftext|>" texts;
 *   - cs_utf8_valid / cs_utf8_repair against an independent table-driven
 *     reference (Unicode ch. 3, table 3-7; maximal subparts become U+FFFD);
 *   - cs_utf8_complete_prefix: holds back exactly an incomplete-but-valid tail
 *     and repair(x[:p]) + repair(x[p:]) == repair(x) (what streaming relies on). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "engine/utf8.h"
#include "fuzz_common.h"

static cs_tok *g_tok;
static const char k_eot[] = "<|endoftext|>";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_tok = fz_load_gpt2_tokenizer("fuzz_tokenizer");
    return 0;
}

/* ---- reference UTF-8 (table 3-7 of the Unicode standard) ---- */

/* Bytes a sequence led by b needs (0: b never starts one) and the allowed
 * range of its second byte. */
static size_t ref_need(unsigned b, unsigned *lo, unsigned *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (b <= 0x7F) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b == 0xE0) return *lo = 0xA0, 3;
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return 3;
    if (b == 0xED) return *hi = 0x9F, 3;
    if (b == 0xF0) return *lo = 0x90, 4;
    if (b >= 0xF1 && b <= 0xF3) return 4;
    if (b == 0xF4) return *hi = 0x8F, 4;
    return 0;
}

/* How many bytes of s[0..n) match a well-formed sequence from the start
 * (the whole sequence when complete); *need gets its length (0: bad lead). */
static size_t ref_match(const unsigned char *s, size_t n, size_t *need) {
    unsigned lo, hi;
    *need = ref_need(s[0], &lo, &hi);
    if (*need == 0) return 0;
    size_t k = 1;
    while (k < *need && k < n && s[k] >= (k == 1 ? lo : 0x80) && s[k] <= (k == 1 ? hi : 0xBF)) k++;
    return k;
}

static int ref_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0, need; i < n;) {
        size_t k = ref_match(s + i, n - i, &need);
        if (!need || k < need) return 0;
        i += k;
    }
    return 1;
}

/* Python's bytes.decode("utf-8", "replace"), re-encoded. out holds 3n bytes. */
static size_t ref_repair(const unsigned char *s, size_t n, unsigned char *out) {
    size_t o = 0;
    for (size_t i = 0, need; i < n;) {
        size_t k = ref_match(s + i, n - i, &need);
        if (need && k == need) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k ? k : 1;
        }
    }
    return o;
}

static void check_utf8(const unsigned char *x, size_t n) {
    const int v = cs_utf8_valid((const char *)x, n);
    if (v != ref_valid(x, n)) fz_fail("cs_utf8_valid = %d, reference says %d", v, !v);
    size_t rl = 0;
    char *r = cs_utf8_repair((const char *)x, n, &rl);
    if (!r) fz_fail("cs_utf8_repair returned NULL for %zu bytes", n);
    unsigned char *ref = malloc(3 * n + 1);
    if (!ref) abort();
    size_t refl = ref_repair(x, n, ref);
    if (rl != refl || memcmp(r, ref, rl)) fz_fail("cs_utf8_repair differs from the reference (%zu vs %zu bytes)", rl, refl);
    if (r[rl] != 0) fz_fail("cs_utf8_repair output not NUL-terminated");
    if (!cs_utf8_valid(r, rl)) fz_fail("cs_utf8_repair output is not valid UTF-8");
    if (v && (rl != n || memcmp(r, x, n))) fz_fail("cs_utf8_repair changed valid text");

    /* complete_prefix: p = n - k where x[n-k..n) is a proper, valid beginning of a character */
    const size_t p = cs_utf8_complete_prefix((const char *)x, n);
    size_t want = n;
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        size_t need, m = ref_match(x + n - k, k, &need);
        if (need > k && m == k) want = n - k;
        if (need) break; /* only the last non-continuation byte can lead such a tail */
        if ((x[n - k] & 0xC0) != 0x80) break;
    }
    if (p != want) fz_fail("cs_utf8_complete_prefix = %zu, expected %zu (n = %zu)", p, want, n);
    if (v && p != n) fz_fail("cs_utf8_complete_prefix held back bytes of valid text");
    size_t al = 0, bl = 0;
    char *a = cs_utf8_repair((const char *)x, p, &al), *b = cs_utf8_repair((const char *)x + p, n - p, &bl);
    if (!a || !b) abort();
    if (al + bl != rl || memcmp(a, r, al) || memcmp(b, r + al, bl))
        fz_fail("repair(x[:%zu]) + repair(x[%zu:]) != repair(x)", p, p);
    free(a);
    free(b);
    free(ref);
    free(r);
}

/* ---- tokenizer round trip ---- */

static void check_tok(const char *x, size_t n, int allow_special) {
    int32_t *ids = NULL;
    size_t n_ids = 0;
    cs_err err = {{0}};
    if (cs_tok_encode(g_tok, x, n, allow_special, &ids, &n_ids, &err))
        fz_fail("cs_tok_encode(allow_special=%d) failed: %s", allow_special, err.msg);
    const int32_t V = cs_tok_vocab_size(g_tok), eos = cs_tok_eos_id(g_tok);
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= V) fz_fail("id %d at %zu outside [0, %d)", ids[i], i, V);
        if (!allow_special && ids[i] == eos) fz_fail("<|endoftext|> id with allow_special=0 at %zu", i);
        size_t tl = 0;
        if (!cs_tok_token_bytes(g_tok, ids[i], &tl) || tl == 0) fz_fail("id %d has no bytes", ids[i]);
    }
    size_t rl = 0;
    char *r = cs_utf8_repair(x, n, &rl);
    char *d = NULL;
    size_t dl = 0;
    if (!r) abort();
    if (cs_tok_decode(g_tok, ids, n_ids, &d, &dl, &err)) fz_fail("cs_tok_decode of encoded ids failed: %s", err.msg);
    if (dl != rl || memcmp(d, r, rl)) {
        size_t i = 0;
        while (i < dl && i < rl && d[i] == r[i]) i++;
        fz_fail("decode(encode(x)) != repair(x) (allow_special=%d): %zu vs %zu bytes, first difference at byte %zu",
                allow_special, dl, rl, i);
    }
    free(d);
    /* skip_special drops exactly the special tokens' text */
    if (allow_special) {
        char *want = malloc(rl + 1);
        if (!want) abort();
        size_t wl = 0, sl = sizeof k_eot - 1;
        for (size_t i = 0; i < rl;) {
            if (eos >= 0 && rl - i >= sl && !memcmp(r + i, k_eot, sl)) {
                i += sl;
                continue;
            }
            want[wl++] = r[i++];
        }
        if (cs_tok_decode_ex(g_tok, ids, n_ids, 1, &d, &dl, &err)) fz_fail("cs_tok_decode_ex failed: %s", err.msg);
        if (dl != wl || memcmp(d, want, wl)) fz_fail("decode(skip_special) != repair(x) without <|endoftext|>");
        free(d);
        free(want);
    }
    free(r);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_utf8(data, size);
    check_tok((const char *)data, size, 0);
    check_tok((const char *)data, size, 1);
    return 0;
}
