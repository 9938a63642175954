/* Helpers shared by the libFuzzer targets in tests/fuzz/ (see README.md, "Fuzzing").
 *
 * The parsers under test take file paths, so each target keeps one in-memory
 * file (memfd_create) and hands the parser /proc/self/fd/N: no disk I/O per
 * input, nothing left behind. Invariant violations call fz_fail(), which
 * abort()s so that libFuzzer records the input as a crash. */
#ifndef CS_FUZZ_COMMON_H
#define CS_FUZZ_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/tokenizer.h"

__attribute__((format(printf, 1, 2), noreturn)) static inline void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz invariant violated: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* An in-memory file; path receives a name the parsers can open(). */
static inline int fz_memfd(const char *name, char *path, size_t cap) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "memfd_create: %s\n", strerror(errno));
        abort();
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

/* Replaces the whole content of fd with data[0..n). */
static inline void fz_fill(int fd, const void *data, size_t n) {
    if (ftruncate(fd, 0) != 0) fz_fail("ftruncate: %s", strerror(errno));
    const char *p = data;
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(fd, p + off, n - off, (off_t)off);
        if (w <= 0) fz_fail("pwrite: %s", strerror(errno));
        off += (size_t)w;
    }
}

/* Writes data[0..n) to path (created or truncated). */
static inline void fz_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) fz_fail("cannot write %s", path);
}

/* The repository root: $CS_FUZZ_ROOT, else the current directory. */
static inline const char *fz_root(void) {
    const char *r = getenv("CS_FUZZ_ROOT");
    return r && *r ? r : ".";
}

/* The real GPT-2 tokenizer from tests/data (exits when it cannot be loaded). */
static inline cs_tok *fz_load_gpt2_tokenizer(const char *target) {
    char vocab[4096], merges[4096];
    snprintf(vocab, sizeof vocab, "%s/tests/data/gpt2-tokenizer/vocab.json", fz_root());
    snprintf(merges, sizeof merges, "%s/tests/data/gpt2-tokenizer/merges.txt", fz_root());
    cs_tok *t = NULL;
    cs_err err = {{0}};
    if (cs_tok_load(&t, vocab, merges, &err)) {
        fprintf(stderr, "%s: %s (run from the repository root or set CS_FUZZ_ROOT)\n", target, err.msg);
        exit(1);
    }
    return t;
}

/* A failed call must leave a non-empty, NUL-terminated message. */
static inline void fz_check_err(const cs_err *e, const char *call) {
    size_t n = strnlen(e->msg, CS_ERR_MAX);
    if (n == 0 || n == CS_ERR_MAX) fz_fail("%s failed with %s error message", call, n ? "an unterminated" : "an empty");
}

#endif
