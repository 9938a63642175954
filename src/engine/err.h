/* cs_err: a fixed-size error message filled by library calls.
 *
 * Every fallible library function takes a `cs_err *` (which may be NULL when the
 * caller does not care) and, on failure, writes one line that names the file,
 * tensor, key or limit at fault. Nothing here allocates, so it is safe to use on
 * any path, including out-of-memory handling. Not thread-safe per object: give
 * each thread its own cs_err. */
#ifndef CS_ERR_H
#define CS_ERR_H

#include <stddef.h>

#define CS_ERR_MAX 512

typedef struct cs_err {
    char msg[CS_ERR_MAX];
} cs_err;

/* printf-style; always returns -1 so callers can `return cs_err_set(...)`. */
int cs_err_set(cs_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the existing message with "prefix: " (e.g. a file name). Returns -1. */
int cs_err_prefix(cs_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
