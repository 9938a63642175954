/* Helpers shared by the engine tests (header-only; each test is one program). */
#ifndef CS_TESTUTIL_H
#define CS_TESTUTIL_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file; NULL when missing. */
static inline void *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

static inline json_t *tu_load_json(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) fprintf(stderr, "%s:%d: %s\n", path, e.line, e.text);
    return j;
}

/* Quick mode (sanitizer builds): fewer of the expensive reference cases. */
static inline int tu_quick(void) {
    const char *q = getenv("CS_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

#endif
