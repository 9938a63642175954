/* cs_tok: GPT-2 byte-level BPE tokenizer. See tokenizer.h for the contract.
 *
 * Load: vocab.json keys are strings over GPT-2's byte-to-unicode alphabet; each
 * is mapped back to raw bytes and stored in one arena indexed by id. merges.txt
 * becomes an open-addressing table (left id, right id) -> (rank, merged id).
 *
 * Encode: invalid UTF-8 is replaced by U+FFFD (Python's "replace" rule), the
 * text is split on "<|endoftext|>" when special tokens are allowed, each piece
 * is pre-tokenized with the GPT-2 regex, and each pre-token is merged with the
 * same priority-queue algorithm as Hugging Face tokenizers' BPE model (lowest
 * rank first, leftmost position on ties), over an array-based linked list of
 * symbols. Scratch memory is sized per call and grows geometrically; nothing is
 * allocated per merge. */
#include "engine/tokenizer.h"
#include "engine/utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Named limits for what is read from the two files. */
#define CS_TOK_MAX_FILE ((size_t)64 << 20)  /* bytes of vocab.json or merges.txt */
#define CS_TOK_MAX_VOCAB ((int32_t)1 << 22) /* ids must be below this */
#define CS_TOK_MAX_TOKEN 1024               /* bytes of one vocab token */

static const char k_special[] = "<|endoftext|>";

/* The GPT-2 pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * spelled out so that PCRE2 classifies every code point exactly as the
 * reference tokenizers do (Hugging Face tokenizers' Oniguruma and tiktoken's
 * Rust regex; both checked against each other on all 1,112,064 scalar values):
 *  - \s is the Unicode White_Space property. PCRE2's UCP \s also matches
 *    U+180E (MONGOLIAN VOWEL SEPARATOR, Cf since Unicode 6.3); the references
 *    do not, so the class is written out.
 *  - PCRE2 10.42 has Unicode 14 tables; the references use Unicode 16. The
 *    letters and digits assigned in 15.0-16.0 are appended to \p{L} and \p{N}
 *    (redundant, hence harmless, with a newer PCRE2).
 * Derived by an exhaustive per-code-point comparison of pre-tokenization of
 * "x" + c + c + "!" between this pattern and tokenizers 0.23.3. */
#define WS_SET "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define L_SET                                                                                      \
    "\\p{L}"                                                                                       \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"               \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"         \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"           \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"          \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                    \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"                     \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"          \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define N_SET                                                                                      \
    "\\p{N}"                                                                                       \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"         \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"         \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"
static const char k_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d"
                                "| ?[" L_SET "]+"
                                "| ?[" N_SET "]+"
                                "| ?[^" WS_SET L_SET N_SET "]+"
                                "|[" WS_SET "]+(?![^" WS_SET "])"
                                "|[" WS_SET "]+";

typedef struct merge_slot {
    uint64_t key; /* (left << 32) | right; MERGE_EMPTY when free */
    int32_t rank;
    int32_t id; /* merged token */
} merge_slot;
#define MERGE_EMPTY UINT64_MAX

struct cs_tok {
    int32_t n_ids;      /* max id + 1 */
    int32_t eos;        /* id of <|endoftext|>, or -1 */
    int32_t byte_id[256];
    uint32_t *tok_off;  /* (n_ids) offset of each token in tok_bytes */
    int32_t *tok_len;   /* (n_ids) byte length, -1 where no token has the id */
    char *tok_bytes;    /* arena of all token bytes */
    merge_slot *merges; /* (mcap) */
    size_t mcap;        /* power of two */
    pcre2_code *re;
};

/* ---- byte <-> unicode map (GPT-2 bytes_to_unicode) ----------------------- */

#define U2B_SIZE 324 /* code points used by the map are all below this */

static void byte_unicode_maps(uint16_t b2u[256], int16_t u2b[U2B_SIZE]) {
    for (int i = 0; i < U2B_SIZE; i++) u2b[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2u[b] = (uint16_t)(printable ? b : 256 + n++);
        u2b[b2u[b]] = (int16_t)b;
    }
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length (1-4) of the well-formed UTF-8 sequence at s[0..n), or minus the
 * length of the maximal ill-formed subpart (see engine/utf8.h). */
static int utf8_step(const unsigned char *s, size_t n) {
    size_t bad = 1, k = cs_utf8_next(s, n, &bad);
    return k ? (int)k : -(int)bad;
}

/* Decodes one code point of already-valid UTF-8; returns its length. */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    int l = utf8_step(s, n);
    if (l <= 0) return l;
    uint32_t c = s[0];
    if (l == 1) *cp = c;
    else if (l == 2) *cp = ((c & 0x1F) << 6) | (s[1] & 0x3Fu);
    else if (l == 3) *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    else *cp = ((c & 0x07) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return l;
}

/* Copies s into dst as a short printable excerpt for error messages. */
static const char *excerpt(char *dst, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap && i + 1 < n) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (c < 0x20 || c == 0x7F) o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        else dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return dst;
}

/* Maps a byte-level string (UTF-8 over the GPT-2 alphabet) back to raw bytes.
 * out must hold n bytes. Returns the byte count, or -1 with *bad set to the
 * offending code point (or UINT32_MAX for invalid UTF-8). */
static long unmap_bytes(const int16_t u2b[U2B_SIZE], const char *s, size_t n, char *out,
                        uint32_t *bad) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        int l = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (l <= 0) {
            *bad = UINT32_MAX;
            return -1;
        }
        if (cp >= U2B_SIZE || u2b[cp] < 0) {
            *bad = cp;
            return -1;
        }
        out[o++] = (char)u2b[cp];
        i += (size_t)l;
    }
    return (long)o;
}

/* ---- hashing ------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Load-time map from token bytes to id (slots hold id + 1; 0 is empty). */
typedef struct bytes_map {
    int32_t *slot;
    size_t cap;
} bytes_map;

static int32_t bytes_map_get(const cs_tok *t, const bytes_map *m, const char *s, size_t n) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t v = m->slot[i];
        if (v == 0) return -1;
        int32_t id = v - 1;
        if ((size_t)t->tok_len[id] == n && memcmp(t->tok_bytes + t->tok_off[id], s, n) == 0)
            return id;
    }
}

/* Returns 0, or 1 when an equal token is already present (its id in *dup). */
static int bytes_map_put(const cs_tok *t, bytes_map *m, int32_t id, int32_t *dup) {
    const char *s = t->tok_bytes + t->tok_off[id];
    size_t n = (size_t)t->tok_len[id], mask = m->cap - 1;
    for (size_t i = (size_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t v = m->slot[i];
        if (v == 0) {
            m->slot[i] = id + 1;
            return 0;
        }
        int32_t o = v - 1;
        if ((size_t)t->tok_len[o] == n && memcmp(t->tok_bytes + t->tok_off[o], s, n) == 0) {
            *dup = o;
            return 1;
        }
    }
}

static const merge_slot *merge_get(const cs_tok *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->mcap - 1;
    for (size_t i = (size_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == MERGE_EMPTY) return NULL;
    }
}

/* A later duplicate of a merge overrides the earlier one, as in both reference
 * implementations (they build the table with a dict/hash-map insert). */
static void merge_put(cs_tok *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->mcap - 1;
    for (size_t i = (size_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
        merge_slot *s = &t->merges[i];
        if (s->key == key || s->key == MERGE_EMPTY) {
            s->key = key;
            s->rank = rank;
            s->id = id;
            return;
        }
    }
}

/* ---- loading ------------------------------------------------------------- */

/* Reads a whole file of at most CS_TOK_MAX_FILE bytes; *buf is NUL-terminated. */
static int read_file(const char *path, char **buf, size_t *len, cs_err *err) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return cs_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        cs_err_set(err, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        cs_err_set(err, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > CS_TOK_MAX_FILE) {
        cs_err_set(err, "%s: file is larger than the %zu-byte limit", path, CS_TOK_MAX_FILE);
        goto fail;
    }
    size_t n = (size_t)st.st_size;
    *buf = malloc(n + 1);
    if (!*buf) {
        cs_err_set(err, "%s: out of memory reading %zu bytes", path, n);
        goto fail;
    }
    if (n && fread(*buf, 1, n, f) != n) {
        cs_err_set(err, "%s: read error", path);
        goto fail;
    }
    (*buf)[n] = '\0';
    *len = n;
    fclose(f);
    return 0;
fail:
    free(*buf);
    *buf = NULL;
    fclose(f);
    return -1;
}

static int load_vocab(cs_tok *t, const int16_t u2b[U2B_SIZE], const char *path, cs_err *err) {
    char *buf = NULL;
    size_t len;
    json_t *root = NULL;
    char ex[96];
    if (read_file(path, &buf, &len, err) != 0) return -1;

    json_error_t jerr;
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    free(buf);
    buf = NULL;
    if (!root) {
        cs_err_set(err, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        cs_err_set(err, "%s: top level is not a JSON object", path);
        goto fail;
    }
    size_t count = json_object_size(root);
    if (count == 0 || count > (size_t)CS_TOK_MAX_VOCAB) {
        cs_err_set(err, "%s: %zu entries (want 1..%d)", path, count, (int)CS_TOK_MAX_VOCAB);
        goto fail;
    }

    /* Pass 1: ids and arena size (a token has at most as many bytes as its key). */
    int32_t max_id = -1;
    size_t arena = 0;
    for (void *it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        /* jansson rejects NUL in keys, so strlen is the key length (and
         * json_object_iter_key_len needs jansson 2.14) */
        const char *key = json_object_iter_key(it);
        size_t klen = strlen(key);
        json_t *v = json_object_iter_value(it);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= CS_TOK_MAX_VOCAB) {
            cs_err_set(err, "%s: key \"%s\": value is not an id in 0..%d", path,
                       excerpt(ex, sizeof ex, key, klen), (int)CS_TOK_MAX_VOCAB - 1);
            goto fail;
        }
        if (klen > (size_t)CS_TOK_MAX_TOKEN * 2) { /* each byte is at most 2 UTF-8 bytes */
            cs_err_set(err, "%s: key \"%s\": longer than %d bytes", path,
                       excerpt(ex, sizeof ex, key, klen), CS_TOK_MAX_TOKEN);
            goto fail;
        }
        int32_t id = (int32_t)json_integer_value(v);
        if (id > max_id) max_id = id;
        arena += klen;
    }
    t->n_ids = max_id + 1;
    t->tok_off = calloc((size_t)t->n_ids, sizeof *t->tok_off);
    t->tok_len = malloc((size_t)t->n_ids * sizeof *t->tok_len);
    t->tok_bytes = malloc(arena + 1);
    if (!t->tok_off || !t->tok_len || !t->tok_bytes) {
        cs_err_set(err, "%s: out of memory for %d tokens", path, t->n_ids);
        goto fail;
    }
    for (int32_t i = 0; i < t->n_ids; i++) t->tok_len[i] = -1;

    /* Pass 2: raw bytes of every token. */
    size_t off = 0;
    for (void *it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        const char *key = json_object_iter_key(it);
        size_t klen = strlen(key);
        int32_t id = (int32_t)json_integer_value(json_object_iter_value(it));
        uint32_t bad = 0;
        long n = unmap_bytes(u2b, key, klen, t->tok_bytes + off, &bad);
        if (n < 0) {
            cs_err_set(err, "%s: key \"%s\": character U+%04X is not in the byte-level alphabet",
                       path, excerpt(ex, sizeof ex, key, klen), (unsigned)bad);
            goto fail;
        }
        if (n > CS_TOK_MAX_TOKEN) {
            cs_err_set(err, "%s: key \"%s\": longer than %d bytes", path,
                       excerpt(ex, sizeof ex, key, klen), CS_TOK_MAX_TOKEN);
            goto fail;
        }
        if (t->tok_len[id] >= 0) {
            cs_err_set(err, "%s: key \"%s\": id %d is used by another key too", path,
                       excerpt(ex, sizeof ex, key, klen), (int)id);
            goto fail;
        }
        t->tok_off[id] = (uint32_t)off;
        t->tok_len[id] = (int32_t)n;
        off += (size_t)n;
    }
    json_decref(root);
    return 0;
fail:
    free(buf);
    json_decref(root);
    return -1;
}

static int load_merges(cs_tok *t, const bytes_map *vm, const int16_t u2b[U2B_SIZE],
                       const char *path, cs_err *err) {
    char *buf = NULL, *tmp = NULL;
    size_t len;
    char ex[96];
    if (read_file(path, &buf, &len, err) != 0) return -1;

    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    if (lines > (size_t)INT32_MAX / 2) {
        cs_err_set(err, "%s: too many lines", path);
        goto fail;
    }
    t->mcap = pow2_at_least(lines * 2);
    t->merges = malloc(t->mcap * sizeof *t->merges);
    tmp = malloc(4 * (size_t)CS_TOK_MAX_TOKEN); /* two parts of <= 2 * MAX_TOKEN bytes */
    if (!t->merges || !tmp) {
        cs_err_set(err, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < t->mcap; i++) t->merges[i].key = MERGE_EMPTY;

    int32_t rank = 0;
    size_t line_no = 0;
    for (size_t pos = 0; pos < len;) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl != NULL);
        line_no++;
        if (n >= 8 && memcmp(line, "#version", 8) == 0) continue;
        if (n > 0 && line[n - 1] == '\r') n--;
        const char *sp = memchr(line, ' ', n);
        if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line))) {
            cs_err_set(err, "%s:%zu: expected two tokens separated by one space, got \"%s\"", path,
                       line_no, excerpt(ex, sizeof ex, line, n));
            goto fail;
        }
        const char *part[2] = {line, sp + 1};
        size_t plen[2] = {(size_t)(sp - line), n - (size_t)(sp - line) - 1};
        int32_t pid[2];
        size_t tl = 0;
        for (int k = 0; k < 2; k++) {
            uint32_t bad = 0;
            if (plen[k] > 2 * (size_t)CS_TOK_MAX_TOKEN) {
                cs_err_set(err, "%s:%zu: token \"%s\" is too long", path, line_no,
                           excerpt(ex, sizeof ex, part[k], plen[k]));
                goto fail;
            }
            long b = unmap_bytes(u2b, part[k], plen[k], tmp + tl, &bad);
            if (b < 0 || (pid[k] = bytes_map_get(t, vm, tmp + tl, (size_t)b)) < 0) {
                cs_err_set(err, "%s:%zu: unknown token '%s'", path, line_no,
                           excerpt(ex, sizeof ex, part[k], plen[k]));
                goto fail;
            }
            tl += (size_t)b;
        }
        int32_t id = bytes_map_get(t, vm, tmp, tl);
        if (id < 0) {
            cs_err_set(err, "%s:%zu: merged token '%s' is not in the vocabulary", path, line_no,
                       excerpt(ex, sizeof ex, line, n));
            goto fail;
        }
        merge_put(t, pid[0], pid[1], rank++, id);
    }
    free(tmp);
    free(buf);
    return 0;
fail:
    free(tmp);
    free(buf);
    return -1;
}

int cs_tok_load(cs_tok **out, const char *vocab_path, const char *merges_path, cs_err *err) {
    bytes_map vm = {NULL, 0};
    if (!out) return cs_err_set(err, "cs_tok_load: out is NULL");
    *out = NULL;
    if (!vocab_path || !merges_path) return cs_err_set(err, "cs_tok_load: path is NULL");
    cs_tok *t = calloc(1, sizeof *t);
    if (!t) return cs_err_set(err, "cs_tok_load: out of memory");
    t->eos = -1;

    uint16_t b2u[256];
    int16_t u2b[U2B_SIZE];
    byte_unicode_maps(b2u, u2b);
    if (load_vocab(t, u2b, vocab_path, err) != 0) goto fail;

    vm.cap = pow2_at_least((size_t)t->n_ids * 2);
    vm.slot = calloc(vm.cap, sizeof *vm.slot);
    if (!vm.slot) {
        cs_err_set(err, "%s: out of memory", vocab_path);
        goto fail;
    }
    for (int32_t id = 0; id < t->n_ids; id++) {
        int32_t dup;
        char ex[96];
        if (t->tok_len[id] < 0) continue;
        if (bytes_map_put(t, &vm, id, &dup)) {
            cs_err_set(err, "%s: ids %d and %d are the same token \"%s\"", vocab_path, (int)dup,
                       (int)id,
                       excerpt(ex, sizeof ex, t->tok_bytes + t->tok_off[id], (size_t)t->tok_len[id]));
            goto fail;
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = bytes_map_get(t, &vm, &c, 1);
        if (t->byte_id[b] < 0) {
            cs_err_set(err, "%s: no token for byte 0x%02x (key U+%04X)", vocab_path, b,
                       (unsigned)b2u[b]);
            goto fail;
        }
    }
    t->eos = bytes_map_get(t, &vm, k_special, sizeof k_special - 1);

    if (load_merges(t, &vm, u2b, merges_path, err) != 0) goto fail;
    free(vm.slot);
    vm.slot = NULL;

    int ecode;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)k_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                          &ecode, &eoff, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        cs_err_set(err, "cs_tok_load: pre-tokenizer pattern at offset %zu: %s", (size_t)eoff,
                   (const char *)msg);
        goto fail;
    }
    (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    *out = t;
    return 0;
fail:
    free(vm.slot);
    cs_tok_free(t);
    return -1;
}

void cs_tok_free(cs_tok *t) {
    if (!t) return;
    pcre2_code_free(t->re);
    free(t->merges);
    free(t->tok_bytes);
    free(t->tok_len);
    free(t->tok_off);
    free(t);
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
} sym;

typedef struct qent {
    int32_t rank;
    int32_t pos; /* index of the left symbol */
    int32_t id;  /* merged token expected when the entry was pushed */
} qent;

typedef struct enc_state {
    const cs_tok *t;
    sym *syms; /* (cap) */
    qent *heap; /* (3 * cap): n - 1 initial pairs + at most 2 per merge */
    size_t cap;
    int32_t *ids;
    size_t n_ids, ids_cap;
} enc_state;

static int push_id(enc_state *s, int32_t id) {
    if (s->n_ids == s->ids_cap) {
        size_t nc = s->ids_cap ? s->ids_cap * 2 : 256;
        int32_t *p = realloc(s->ids, nc * sizeof *p);
        if (!p) return -1;
        s->ids = p;
        s->ids_cap = nc;
    }
    s->ids[s->n_ids++] = id;
    return 0;
}

static int qless(const qent *a, const qent *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(qent *h, size_t *n, qent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!qless(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static qent heap_pop(qent *h, size_t *n) {
    qent top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && qless(&h[c + 1], &h[c])) c++;
        if (!qless(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = last;
    return top;
}

static void push_pair(const cs_tok *t, qent *h, size_t *hn, const sym *sy, int32_t pos) {
    const merge_slot *m = merge_get(t, sy[pos].id, sy[sy[pos].next].id);
    if (m) heap_push(h, hn, (qent){m->rank, pos, m->id});
}

/* BPE over one pre-token of n bytes (n >= 1), mirroring tokenizers' Word::merge_all. */
static int bpe(enc_state *s, const unsigned char *p, size_t n) {
    const cs_tok *t = s->t;
    if (n == 1) return push_id(s, t->byte_id[p[0]]);
    if (n > s->cap) {
        if (n > (size_t)INT32_MAX / 3) return -1;
        size_t nc = n > 2 * s->cap ? n : 2 * s->cap;
        sym *ns = realloc(s->syms, nc * sizeof *ns);
        if (!ns) return -1;
        s->syms = ns;
        qent *nh = realloc(s->heap, 3 * nc * sizeof *nh);
        if (!nh) return -1;
        s->heap = nh;
        s->cap = nc;
    }
    sym *sy = s->syms;
    qent *h = s->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++)
        sy[i] = (sym){t->byte_id[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, h, &hn, sy, (int32_t)i);

    while (hn > 0) {
        qent top = heap_pop(h, &hn);
        sym *a = &sy[top.pos];
        if (!a->alive || a->next < 0) continue;
        sym *b = &sy[a->next];
        const merge_slot *m = merge_get(t, a->id, b->id);
        if (!m || m->id != top.id) continue; /* stale entry */
        a->id = top.id;
        b->alive = 0;
        a->next = b->next;
        if (a->next >= 0) sy[a->next].prev = top.pos;
        if (a->prev >= 0) push_pair(t, h, &hn, sy, a->prev);
        if (a->next >= 0) push_pair(t, h, &hn, sy, top.pos);
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next)
        if (push_id(s, sy[i].id) != 0) return -1;
    return 0;
}

/* Pre-tokenizes and encodes text[0..n) that contains no special token. */
static int encode_piece(enc_state *s, pcre2_match_data *md, const char *text, size_t n,
                        cs_err *err) {
    const unsigned char *u = (const unsigned char *)text;
    size_t off = 0;
    while (off < n) {
        int rc = pcre2_match(s->t->re, u, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        size_t start = n, end = n;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            start = ov[0];
            end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return cs_err_set(err, "cs_tok_encode: pre-tokenizer at byte %zu: %s", off,
                              (const char *)msg);
        }
        /* The pattern matches every character, so neither gap nor empty match
         * happens; both are handled anyway (a gap is kept as its own piece). */
        if (start > off && bpe(s, u + off, start - off) != 0) goto oom;
        if (end <= start) {
            if (start >= n) break;
            end = start + (size_t)utf8_step(u + start, n - start);
        }
        if (bpe(s, u + start, end - start) != 0) goto oom;
        off = end;
    }
    return 0;
oom:
    return cs_err_set(err, "cs_tok_encode: out of memory");
}

int cs_tok_encode(const cs_tok *t, const char *text, size_t len, int allow_special,
                  int32_t **ids, size_t *n_ids, cs_err *err) {
    char *clean = NULL;
    pcre2_match_data *md = NULL;
    enc_state s = {t, NULL, NULL, 0, NULL, 0, 0};
    if (!ids || !n_ids) return cs_err_set(err, "cs_tok_encode: ids or n_ids is NULL");
    *ids = NULL;
    *n_ids = 0;
    if (!t || (!text && len)) return cs_err_set(err, "cs_tok_encode: NULL tokenizer or text");
    if (len > CS_TOK_MAX_INPUT)
        return cs_err_set(err, "cs_tok_encode: input of %zu bytes exceeds the %zu-byte limit", len,
                          CS_TOK_MAX_INPUT);
    if (len == 0) return 0;

    size_t n = len;
    const char *src = text;
    if (!cs_utf8_valid(text, len)) {
        clean = cs_utf8_repair(text, len, &n);
        if (!clean) {
            cs_err_set(err, "cs_tok_encode: out of memory");
            goto fail;
        }
        src = clean;
    }

    md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) {
        cs_err_set(err, "cs_tok_encode: out of memory");
        goto fail;
    }
    const size_t sl = sizeof k_special - 1;
    size_t pos = 0;
    while (pos < n) {
        const char *hit = NULL;
        if (allow_special && t->eos >= 0) hit = memmem(src + pos, n - pos, k_special, sl);
        size_t end = hit ? (size_t)(hit - src) : n;
        if (end > pos && encode_piece(&s, md, src + pos, end - pos, err) != 0) goto fail;
        if (!hit) break;
        if (push_id(&s, t->eos) != 0) {
            cs_err_set(err, "cs_tok_encode: out of memory");
            goto fail;
        }
        pos = end + sl;
    }
    pcre2_match_data_free(md);
    free(clean);
    free(s.syms);
    free(s.heap);
    *ids = s.ids;
    *n_ids = s.n_ids;
    return 0;
fail:
    pcre2_match_data_free(md);
    free(clean);
    free(s.syms);
    free(s.heap);
    free(s.ids);
    return -1;
}

/* ---- decoding ------------------------------------------------------------ */

int cs_tok_decode(const cs_tok *t, const int32_t *ids, size_t n, char **out, size_t *out_len,
                  cs_err *err) {
    return cs_tok_decode_ex(t, ids, n, 0, out, out_len, err);
}

int cs_tok_decode_ex(const cs_tok *t, const int32_t *ids, size_t n, int skip_special, char **out,
                     size_t *out_len, cs_err *err) {
    if (!out || !out_len) return cs_err_set(err, "cs_tok_decode: out or out_len is NULL");
    *out = NULL;
    *out_len = 0;
    if (!t || (!ids && n)) return cs_err_set(err, "cs_tok_decode: NULL tokenizer or ids");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || t->tok_len[ids[i]] < 0)
            return cs_err_set(err, "cs_tok_decode: unknown token id %ld at position %zu",
                              (long)ids[i], i);
        total += (size_t)t->tok_len[ids[i]]; /* <= n * CS_TOK_MAX_TOKEN */
        if (total > SIZE_MAX / 2) return cs_err_set(err, "cs_tok_decode: output too large");
    }
    char *buf = malloc(total + 1);
    if (!buf) return cs_err_set(err, "cs_tok_decode: out of memory for %zu bytes", total);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && ids[i] == t->eos) continue;
        memcpy(buf + o, t->tok_bytes + t->tok_off[ids[i]], (size_t)t->tok_len[ids[i]]);
        o += (size_t)t->tok_len[ids[i]];
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return 0;
}

const char *cs_tok_token_bytes(const cs_tok *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_ids || t->tok_len[id] < 0) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)t->tok_len[id];
    return t->tok_bytes + t->tok_off[id];
}

int32_t cs_tok_vocab_size(const cs_tok *t) { return t ? t->n_ids : 0; }

int32_t cs_tok_eos_id(const cs_tok *t) { return t ? t->eos : -1; }

/* ------------------------------------------------------------ clean-up */

size_t cs_tok_clean_up_spaces(char *s, size_t len) {
    static const struct {
        const char *from, *to;
    } rules[] = {{" .", "."},      {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
                 {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (size_t r = 0; r < sizeof rules / sizeof *rules; r++) {
        const size_t fl = strlen(rules[r].from), tl = strlen(rules[r].to);
        size_t i = 0, o = 0;
        while (i < len) {
            if (len - i >= fl && memcmp(s + i, rules[r].from, fl) == 0) {
                memcpy(s + o, rules[r].to, tl); /* tl < fl: never overtakes i */
                o += tl;
                i += fl;
            } else {
                s[o++] = s[i++];
            }
        }
        len = o;
    }
    if (s) s[len] = '\0';
    return len;
}

static size_t cp_count(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

int cs_tok_pipeline_text(const char *prompt, size_t pl, const char *gen, size_t gl, int clean, int final,
                         char **out, size_t *out_len, size_t *stable) {
    *out = NULL;
    *out_len = *stable = 0;
    char *buf = malloc(pl + gl + 1);
    if (!buf) return -1;
    if (pl) memcpy(buf, prompt, pl);
    if (gl) memcpy(buf + pl, gen, gl);
    size_t n = pl + gl;
    buf[n] = '\0';
    if (!final) n = cs_utf8_complete_prefix(buf, n);
    size_t fl, ppl;
    char *full = cs_utf8_repair(buf, n, &fl);
    char *pre = pl ? cs_utf8_repair(buf, pl, &ppl) : NULL;
    free(buf);
    if (!full || (pl && !pre)) {
        free(full);
        free(pre);
        return -1;
    }
    if (clean) {
        fl = cs_tok_clean_up_spaces(full, fl);
        if (pre) ppl = cs_tok_clean_up_spaces(pre, ppl);
    }
    size_t cut = pre ? cp_count(pre, ppl) : 0, off = 0;
    free(pre);
    /* skip cut code points */
    while (off < fl && cut) {
        off++;
        while (off < fl && ((unsigned char)full[off] & 0xC0) == 0x80) off++;
        cut--;
    }
    size_t keep = fl; /* end of the part of full that is final */
    if (!final && clean) {
        for (int k = 0; k < CS_TOK_CLEAN_HOLD && keep > 0; k++) {
            keep--;
            while (keep > 0 && ((unsigned char)full[keep] & 0xC0) == 0x80) keep--;
        }
    }
    memmove(full, full + off, fl - off + 1);
    *out = full;
    *out_len = fl - off;
    *stable = keep > off ? keep - off : 0;
    return 0;
}

int cs_tok_config_clean_up(const char *dir, int *clean, cs_err *err) {
    *clean = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    struct stat sb;
    if (stat(path, &sb) != 0) return 0;
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) return cs_err_set(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    json_t *v = json_is_object(j) ? json_object_get(j, "clean_up_tokenization_spaces") : NULL;
    int rc = 0;
    if (v && !json_is_null(v)) {
        if (json_is_boolean(v)) *clean = json_is_true(v);
        else rc = cs_err_set(err, "%s: key 'clean_up_tokenization_spaces': expected true or false", path);
    }
    json_decref(j);
    return rc;
}
