/* Tests for cs_tok against the reference GPT-2 tokenizer (Hugging Face
 * transformers, cross-checked with tiktoken) on tests/data/tokenizer/, written
 * by tools/make_tokenizer_corpus.py. Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/tokenizer.h"

#define VOCAB "tests/data/gpt2-tokenizer/vocab.json"
#define MERGES "tests/data/gpt2-tokenizer/merges.txt"
#define CORPUS "tests/data/tokenizer/corpus.txt"
#define EXPECTED "tests/data/tokenizer/expected.jsonl"

#define MAX_RECORDS 100000
#define MAX_FILE ((size_t)16 << 20)

/* ---- fixtures ------------------------------------------------------------ */

typedef struct record {
    char *text; /* raw bytes of the record (malloc'd) */
    size_t len;
    int32_t *ids; /* reference ids (malloc'd) */
    size_t n_ids;
    char *replaced; /* UTF-8 after U+FFFD replacement, NULL when text is valid */
    size_t replaced_len;
    size_t line, count;
} record;

typedef struct fixture {
    cs_tok *tok;
    char *corpus;
    size_t corpus_len;
    size_t n_lines;
    record *recs;
    size_t n_recs;
} fixture;

static fixture g; /* loaded once for the whole group; read-only in tests */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_FILE + 1, f) : 0;
    fclose(f);
    if (!buf || n > MAX_FILE) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Parses one expected.jsonl line into r, taking text from the corpus lines. */
static int parse_record(const char *line, size_t n, const size_t *line_off, size_t n_lines,
                        record *r) {
    json_error_t jerr;
    json_t *o = json_loadb(line, n, 0, &jerr);
    if (!o) return -1;
    int rc = -1;
    json_t *jl = json_object_get(o, "line"), *jc = json_object_get(o, "count");
    json_t *ji = json_object_get(o, "ids"), *jr = json_object_get(o, "replaced");
    if (!json_is_integer(jl) || !json_is_integer(jc) || !json_is_array(ji)) goto out;
    json_int_t l = json_integer_value(jl), c = json_integer_value(jc);
    if (l < 0 || c < 1 || (size_t)l >= n_lines || (size_t)(l + c) > n_lines) goto out;
    r->line = (size_t)l;
    r->count = (size_t)c;
    /* lines [l, l+c) end at the '\n' of line l+c-1, which is excluded */
    size_t start = line_off[l], end = line_off[l + c] - 1;
    r->len = end - start;
    r->text = malloc(r->len + 1);
    r->n_ids = json_array_size(ji);
    r->ids = malloc((r->n_ids ? r->n_ids : 1) * sizeof *r->ids);
    if (!r->text || !r->ids) goto out;
    memcpy(r->text, g.corpus + start, r->len);
    r->text[r->len] = '\0';
    for (size_t i = 0; i < r->n_ids; i++) {
        json_t *v = json_array_get(ji, i);
        if (!json_is_integer(v)) goto out;
        r->ids[i] = (int32_t)json_integer_value(v);
    }
    if (jr) {
        const char *h = json_string_value(jr);
        size_t hl = h ? strlen(h) : 1;
        if (hl % 2) goto out;
        r->replaced = malloc(hl / 2 + 1);
        if (!r->replaced) goto out;
        for (size_t i = 0; i < hl / 2; i++) {
            int a = hexval(h[2 * i]), b = hexval(h[2 * i + 1]);
            if (a < 0 || b < 0) goto out;
            r->replaced[i] = (char)(a * 16 + b);
        }
        r->replaced_len = hl / 2;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

static int group_setup(void **state) {
    (void)state;
    cs_err err = {{0}};
    if (cs_tok_load(&g.tok, VOCAB, MERGES, &err) != 0) {
        fprintf(stderr, "cs_tok_load: %s\n", err.msg);
        return -1;
    }
    size_t elen = 0;
    g.corpus = slurp(CORPUS, &g.corpus_len);
    char *exp = slurp(EXPECTED, &elen);
    if (!g.corpus || !exp || g.corpus_len == 0 || g.corpus[g.corpus_len - 1] != '\n') {
        fprintf(stderr, "cannot read %s or %s (run from the repository root)\n", CORPUS, EXPECTED);
        free(exp);
        return -1;
    }
    /* line_off[i] = offset of line i; line_off[n_lines] = corpus_len */
    size_t *line_off = malloc((g.corpus_len + 1) * sizeof *line_off);
    g.recs = calloc(MAX_RECORDS, sizeof *g.recs);
    if (!line_off || !g.recs) goto fail;
    line_off[0] = 0;
    for (size_t i = 0; i < g.corpus_len; i++)
        if (g.corpus[i] == '\n') line_off[++g.n_lines] = i + 1;

    for (size_t pos = 0; pos < elen;) {
        const char *nl = memchr(exp + pos, '\n', elen - pos);
        size_t n = nl ? (size_t)(nl - (exp + pos)) : elen - pos;
        if (n > 0) {
            if (g.n_recs == MAX_RECORDS ||
                parse_record(exp + pos, n, line_off, g.n_lines, &g.recs[g.n_recs]) != 0) {
                fprintf(stderr, "%s:%zu: bad record\n", EXPECTED, g.n_recs + 1);
                g.n_recs++;
                goto fail;
            }
            g.n_recs++;
        }
        pos += n + 1;
    }
    free(line_off);
    free(exp);
    return 0;
fail:
    free(line_off);
    free(exp);
    return -1;
}

static int group_teardown(void **state) {
    (void)state;
    for (size_t i = 0; i < g.n_recs; i++) {
        free(g.recs[i].text);
        free(g.recs[i].ids);
        free(g.recs[i].replaced);
    }
    free(g.recs);
    free(g.corpus);
    cs_tok_free(g.tok);
    memset(&g, 0, sizeof g);
    return 0;
}

/* ---- helpers ------------------------------------------------------------- */

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static void expect_ids(const char *text, size_t len, int allow_special, const int32_t *want,
                       size_t n_want) {
    cs_err err = {{0}};
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(cs_tok_encode(g.tok, text, len, allow_special, &ids, &n, &err), 0);
    if (n != n_want || (n && memcmp(ids, want, n * sizeof *ids) != 0)) {
        print_ids("got", ids, n);
        print_ids("want", want, n_want);
        free(ids);
        fail_msg("ids differ for \"%s\"", text);
    }
    free(ids);
}

#define EXPECT(text, special, ...)                                                                 \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        expect_ids(text, sizeof text - 1, special, want_, sizeof want_ / sizeof want_[0]);         \
    } while (0)

/* decode(encode(text)) must equal want. */
static void expect_roundtrip(const char *text, size_t len, const char *want, size_t want_len) {
    cs_err err = {{0}};
    int32_t *ids = NULL;
    size_t n = 0;
    char *out = NULL;
    size_t out_len = 0;
    assert_int_equal(cs_tok_encode(g.tok, text, len, 1, &ids, &n, &err), 0);
    assert_int_equal(cs_tok_decode(g.tok, ids, n, &out, &out_len, &err), 0);
    assert_int_equal(out_len, want_len);
    assert_memory_equal(out, want, want_len);
    assert_int_equal(out[out_len], '\0');
    free(out);
    free(ids);
}

#define ROUNDTRIP(text, want) expect_roundtrip(text, sizeof text - 1, want, sizeof want - 1)

/* ---- corpus -------------------------------------------------------------- */

static void test_corpus_matches_reference(void **state) {
    (void)state;
    assert_true(g.n_lines >= 2000);
    assert_true(g.n_recs >= g.n_lines);
    size_t bad = 0, bad_rt = 0, invalid = 0, multi = 0;
    for (size_t i = 0; i < g.n_recs; i++) {
        const record *r = &g.recs[i];
        cs_err err = {{0}};
        int32_t *ids = NULL;
        size_t n = 0;
        if (cs_tok_encode(g.tok, r->text, r->len, 1, &ids, &n, &err) != 0) {
            fprintf(stderr, "record %zu (line %zu): encode failed: %s\n", i, r->line, err.msg);
            bad++;
            continue;
        }
        if (n != r->n_ids || (n && memcmp(ids, r->ids, n * sizeof *ids) != 0)) {
            if (bad < 10) {
                fprintf(stderr, "record %zu (line %zu, %zu lines) differs\n", i, r->line, r->count);
                print_ids("got", ids, n);
                print_ids("want", r->ids, r->n_ids);
            }
            bad++;
        }
        char *out = NULL;
        size_t out_len = 0;
        const char *want = r->replaced ? r->replaced : r->text;
        size_t want_len = r->replaced ? r->replaced_len : r->len;
        if (cs_tok_decode(g.tok, ids, n, &out, &out_len, &err) != 0 || out_len != want_len ||
            memcmp(out, want, want_len) != 0) {
            if (bad_rt < 10) fprintf(stderr, "record %zu (line %zu): round trip differs\n", i, r->line);
            bad_rt++;
        }
        invalid += r->replaced != NULL;
        multi += r->count > 1;
        free(out);
        free(ids);
    }
    fprintf(stderr, "corpus: %zu lines, %zu records (%zu multi-line, %zu invalid UTF-8): "
                    "%zu differ, %zu round trips differ\n",
            g.n_lines, g.n_recs, multi, invalid, bad, bad_rt);
    assert_true(invalid > 0 && multi > 0);
    assert_int_equal(bad, 0);
    assert_int_equal(bad_rt, 0);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Not a benchmark gate; prints the rate and fails only when pathologically slow. */
static void test_encode_speed(void **state) {
    (void)state;
    cs_err err = {{0}};
    size_t tokens = 0, bytes = 0;
    double t0 = now_s();
    for (size_t i = 0; i < g.n_recs; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(cs_tok_encode(g.tok, g.recs[i].text, g.recs[i].len, 1, &ids, &n, &err), 0);
        tokens += n;
        bytes += g.recs[i].len;
        free(ids);
    }
    double t1 = now_s();
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(cs_tok_encode(g.tok, g.corpus, g.corpus_len, 1, &ids, &n, &err), 0);
    double t2 = now_s();
    free(ids);
    fprintf(stderr, "speed: %zu records, %zu tokens in %.3f s (%.0f tokens/s, %.1f MB/s); "
                    "whole corpus as one text: %zu tokens in %.3f s (%.0f tokens/s)\n",
            g.n_recs, tokens, t1 - t0, (double)tokens / (t1 - t0), (double)bytes / (t1 - t0) / 1e6, n,
            t2 - t1, (double)n / (t2 - t1));
    assert_true(t2 - t0 < 30.0);
}

typedef struct thread_arg {
    size_t start, stride, bad;
} thread_arg;

static void *encode_worker(void *p) {
    thread_arg *a = p;
    for (int rep = 0; rep < 2; rep++) {
        for (size_t i = a->start; i < g.n_recs; i += a->stride) {
            cs_err err = {{0}};
            int32_t *ids = NULL;
            size_t n = 0;
            if (cs_tok_encode(g.tok, g.recs[i].text, g.recs[i].len, 1, &ids, &n, &err) != 0 ||
                n != g.recs[i].n_ids || (n && memcmp(ids, g.recs[i].ids, n * sizeof *ids) != 0))
                a->bad++;
            free(ids);
        }
    }
    return NULL;
}

static void test_concurrent_encode(void **state) {
    (void)state;
    enum { T = 4 };
    pthread_t th[T];
    thread_arg args[T];
    for (size_t i = 0; i < T; i++) {
        /* overlapping strides so that threads work on the same records at once */
        args[i] = (thread_arg){i % 2, 1 + i % 2, 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_worker, &args[i]), 0);
    }
    for (size_t i = 0; i < T; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].bad, 0);
    }
}

/* ---- hand-checked cases (ids from transformers 5.24.0) ------------------- */

static void test_known_ids(void **state) {
    (void)state;
    EXPECT("Hello world", 1, 15496, 995);
    EXPECT(" Hello world", 1, 18435, 995);
    EXPECT("I'm here, it's 1,000,000!", 1, 40, 1101, 994, 11, 340, 338, 352, 11, 830, 11, 830, 0);
    EXPECT("hello   world\n", 1, 31373, 220, 220, 995, 198);
    EXPECT("  \n\n", 1, 220, 220, 628);
    EXPECT("\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", 1, 40792, 23877, 229, 30325, 222);
    EXPECT("I'm HE'S", 1, 40, 1101, 11179, 6, 50);
    EXPECT("\xef\xbf\xbd", 1, 4210);
    EXPECT("\xff", 1, 4210); /* invalid byte -> U+FFFD */
}

static void test_special_token(void **state) {
    (void)state;
    EXPECT("<|endoftext|>", 1, 50256);
    EXPECT(" <|endoftext|>", 1, 220, 50256);
    EXPECT("a<|endoftext|>b", 1, 64, 50256, 65);
    /* not allowed: plain text */
    EXPECT("<|endoftext|>", 0, 27, 91, 437, 1659, 5239, 91, 29);
    EXPECT("a<|endoftext|>", 0, 64, 27, 91, 437, 1659, 5239, 91, 29);
    assert_int_equal(cs_tok_eos_id(g.tok), 50256);
    assert_int_equal(cs_tok_vocab_size(g.tok), 50257);
    size_t len = 0;
    const char *b = cs_tok_token_bytes(g.tok, 50256, &len);
    assert_non_null(b);
    assert_int_equal(len, 13);
    assert_memory_equal(b, "<|endoftext|>", 13);
    b = cs_tok_token_bytes(g.tok, 220, &len);
    assert_non_null(b);
    assert_int_equal(len, 1);
    assert_int_equal(b[0], ' ');
    assert_null(cs_tok_token_bytes(g.tok, -1, &len));
    assert_null(cs_tok_token_bytes(g.tok, 50257, &len));
    /* decode(skip_special_tokens=True) drops <|endoftext|>, and only it */
    const int32_t ids[] = {15496, 50256, 995, 50256};
    char *txt = NULL;
    size_t tl = 0;
    assert_int_equal(cs_tok_decode_ex(g.tok, ids, 4, 1, &txt, &tl, NULL), 0);
    assert_string_equal(txt, "Hello world");
    free(txt);
    assert_int_equal(cs_tok_decode_ex(g.tok, ids, 4, 0, &txt, &tl, NULL), 0);
    assert_string_equal(txt, "Hello<|endoftext|> world<|endoftext|>");
    free(txt);
}

static void test_empty_and_limits(void **state) {
    (void)state;
    cs_err err = {{0}};
    int32_t *ids = (int32_t *)&err; /* must be overwritten */
    size_t n = 99;
    assert_int_equal(cs_tok_encode(g.tok, "", 0, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(ids);
    assert_int_equal(cs_tok_encode(g.tok, "x", CS_TOK_MAX_INPUT + 1, 1, &ids, &n, &err), -1);
    assert_null(ids);
    assert_non_null(strstr(err.msg, "limit"));

    char *out = NULL;
    size_t out_len = 1;
    assert_int_equal(cs_tok_decode(g.tok, NULL, 0, &out, &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_non_null(out);
    assert_int_equal(out[0], '\0');
    free(out);
    const int32_t bad[] = {15496, 50257};
    assert_int_equal(cs_tok_decode(g.tok, bad, 2, &out, &out_len, &err), -1);
    assert_null(out);
    assert_non_null(strstr(err.msg, "50257"));
    const int32_t neg[] = {-1};
    assert_int_equal(cs_tok_decode(g.tok, neg, 1, &out, &out_len, &err), -1);
}

/* Python: bytes.decode("utf-8", "replace"); one U+FFFD per maximal subpart. */
#define R "\xef\xbf\xbd"
static void test_invalid_utf8_rule(void **state) {
    (void)state;
    ROUNDTRIP("\x80", R);
    ROUNDTRIP("a\x80\xbf" "b", "a" R R "b");
    ROUNDTRIP("\xc3", R);
    ROUNDTRIP("\xc3(", R "(");
    ROUNDTRIP("\xe2\x82", R);
    ROUNDTRIP("\xf0\x9f\x98" "A", R "A");
    ROUNDTRIP("\xc0\xaf", R R);             /* C0, C1 never start a sequence */
    ROUNDTRIP("\xe0\x80\xaf", R R R);       /* overlong: E0 needs A0-BF */
    ROUNDTRIP("\xf0\x8f\xbf\xbf", R R R R); /* overlong: F0 needs 90-BF */
    ROUNDTRIP("\xed\xa0\x80", R R R);       /* surrogate: ED needs 80-9F */
    ROUNDTRIP("\xed\x9f\xbf", "\xed\x9f\xbf");
    ROUNDTRIP("\xf4\x90\x80\x80", R R R R); /* above U+10FFFF */
    ROUNDTRIP("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf");
    ROUNDTRIP("\xf5\x80", R R);
    ROUNDTRIP("\xff\xfe", R R);
    ROUNDTRIP("\xe0\xa0 \xe0\xa0\x80", R " \xe0\xa0\x80");
    ROUNDTRIP("\xc2\xc2\xa0", R "\xc2\xa0");
    /* a NUL byte is ordinary text */
    expect_roundtrip("a\0b", 3, "a\0b", 3);
}
#undef R

/* ---- load errors ---------------------------------------------------------- */

static char tmpdir[64];

static int tmp_setup(void **state) {
    (void)state;
    strcpy(tmpdir, "/tmp/cs_tok_test.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static char *tmp_file(const char *name, const char *content) {
    static char path[4][128];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return NULL;
    fputs(content, f);
    fclose(f);
    return p;
}

static int tmp_teardown(void **state) {
    (void)state;
    const char *names[] = {"vocab.json", "merges.txt", "bad.json", "bad_merges.txt"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

static void expect_load_error(const char *vocab, const char *merges, const char *needle) {
    cs_err err = {{0}};
    cs_tok *t = (cs_tok *)&err; /* must be overwritten with NULL */
    assert_int_equal(cs_tok_load(&t, vocab, merges, &err), -1);
    assert_null(t);
    if (!strstr(err.msg, needle)) fail_msg("error \"%s\" does not contain \"%s\"", err.msg, needle);
}

static void test_load_missing_file(void **state) {
    (void)state;
    expect_load_error("tests/data/no-such-dir/vocab.json", MERGES, "tests/data/no-such-dir/vocab.json");
    expect_load_error(VOCAB, "tests/data/no-such-dir/merges.txt", "tests/data/no-such-dir/merges.txt");
    cs_tok *t = NULL;
    assert_int_equal(cs_tok_load(&t, VOCAB, MERGES, NULL), 0); /* NULL err is allowed */
    cs_tok_free(t);
    cs_tok_free(NULL);
}

static void test_load_malformed_json(void **state) {
    (void)state;
    char want[160];
    const char *p = tmp_file("bad.json", "{\"a\": 1,\n \"b\": 2,\n \"c\" 3}\n");
    assert_non_null(p);
    snprintf(want, sizeof want, "%s:3:", p); /* file and line */
    expect_load_error(p, MERGES, want);

    p = tmp_file("bad.json", "[1, 2, 3]");
    expect_load_error(p, MERGES, "bad.json");
    p = tmp_file("bad.json", "{\"a\": \"1\"}");
    expect_load_error(p, MERGES, "bad.json");
    p = tmp_file("bad.json", "{\"a\": -5}");
    expect_load_error(p, MERGES, "bad.json");
    p = tmp_file("bad.json", "{\"\\u007f\": 0}"); /* U+007F is not in the byte alphabet */
    expect_load_error(p, MERGES, "U+007F");
    p = tmp_file("bad.json", "{\"a\": 0, \"b\": 0}");
    expect_load_error(p, MERGES, "id 0");
    p = tmp_file("bad.json", "{\"a\": 0, \"b\": 1}"); /* no tokens for most bytes */
    expect_load_error(p, MERGES, "no token for byte");
    p = tmp_file("bad.json", "");
    expect_load_error(p, MERGES, "bad.json");
}

static void test_load_malformed_merges(void **state) {
    (void)state;
    char want[160];
    const char *p = tmp_file("bad_merges.txt", "#version: 0.2\n\xc4\xa0 t\n\xc4\xa0 a b\n");
    assert_non_null(p);
    snprintf(want, sizeof want, "%s:3:", p);
    expect_load_error(VOCAB, p, want);

    p = tmp_file("bad_merges.txt", "#version: 0.2\n\xc4\xa0 t\nnotatoken x\n");
    snprintf(want, sizeof want, "%s:3: unknown token 'notatoken'", p);
    expect_load_error(VOCAB, p, want);

    p = tmp_file("bad_merges.txt", "#version: 0.2\n\n");
    snprintf(want, sizeof want, "%s:2:", p);
    expect_load_error(VOCAB, p, want);

    p = tmp_file("bad_merges.txt", "#version: 0.2\nz q\n"); /* "zq" is not a token */
    snprintf(want, sizeof want, "%s:2: merged token", p);
    expect_load_error(VOCAB, p, want);

    p = tmp_file("bad_merges.txt", "#version: 0.2\n\xc4\xa0 \xff\n"); /* invalid UTF-8 */
    snprintf(want, sizeof want, "%s:2:", p);
    expect_load_error(VOCAB, p, want);

    /* Token length limits: 2100 characters is over, 2 x 2000 is under but unknown. */
    static char longline[8192];
    strcpy(longline, "#version: 0.2\n");
    size_t o = strlen(longline);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 2100; i++) longline[o++] = k ? 'b' : 'a';
        longline[o++] = k ? '\n' : ' ';
    }
    longline[o] = '\0';
    p = tmp_file("bad_merges.txt", longline);
    snprintf(want, sizeof want, "%s:2: token", p);
    expect_load_error(VOCAB, p, want);
    memmove(longline + 14 + 2000, longline + 14 + 2100, strlen(longline + 14 + 2100) + 1);
    memmove(longline + 14 + 2001 + 2000, longline + 14 + 2001 + 2100,
            strlen(longline + 14 + 2001 + 2100) + 1);
    p = tmp_file("bad_merges.txt", longline);
    snprintf(want, sizeof want, "%s:2: unknown token", p);
    expect_load_error(VOCAB, p, want);

    /* A valid file with CRLF endings and no final newline loads; without
     * merges, text encodes to byte tokens. */
    p = tmp_file("merges.txt", "#version: 0.2\r\nH e\r\nHe llo");
    cs_err err = {{0}};
    cs_tok *t = NULL;
    assert_int_equal(cs_tok_load(&t, VOCAB, p, &err), 0);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(cs_tok_encode(t, "Hello", 5, 1, &ids, &n, &err), 0);
    /* "He" merges; "llo" cannot form (no "l l" merge), so "He" + l + l + o */
    assert_int_equal(n, 4);
    assert_int_equal(ids[1], 75);
    free(ids);
    cs_tok_free(t);
}

int main(void) {
    const struct CMUnitTest corpus_tests[] = {
        cmocka_unit_test(test_corpus_matches_reference),
        cmocka_unit_test(test_known_ids),
        cmocka_unit_test(test_special_token),
        cmocka_unit_test(test_empty_and_limits),
        cmocka_unit_test(test_invalid_utf8_rule),
        cmocka_unit_test(test_concurrent_encode),
        cmocka_unit_test(test_encode_speed),
    };
    const struct CMUnitTest load_tests[] = {
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_load_malformed_json),
        cmocka_unit_test(test_load_malformed_merges),
    };
    int rc = cmocka_run_group_tests_name("tokenizer", corpus_tests, group_setup, group_teardown);
    rc += cmocka_run_group_tests_name("tokenizer_load", load_tests, tmp_setup, tmp_teardown);
    return rc;
}
