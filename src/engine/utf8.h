/* cs_utf8: UTF-8 validation and repair.
 *
 * Repair follows Python's bytes.decode("utf-8", "replace") (the "maximal
 * subpart" practice of Unicode ch. 3): each maximal invalid subsequence becomes
 * one U+FFFD. Pure functions; thread-safe. */
#ifndef CS_UTF8_H
#define CS_UTF8_H

#include <stddef.h>

/* Length of the valid UTF-8 sequence starting at s (1-4), or 0 when s[0..n)
 * does not start with one; *bad then gets the length of the maximal invalid
 * subpart to replace (>= 1). */
size_t cs_utf8_next(const unsigned char *s, size_t n, size_t *bad);

/* Non-zero when all n bytes are valid UTF-8. */
int cs_utf8_valid(const char *s, size_t n);

/* Length of the longest prefix of s that does not end inside a character that
 * the following bytes could still complete (for streaming: hold back a
 * possibly-incomplete tail). */
size_t cs_utf8_complete_prefix(const char *s, size_t n);

/* Writes the repaired text into a malloc'd, NUL-terminated buffer (caller
 * frees). Returns NULL on allocation failure. */
char *cs_utf8_repair(const char *s, size_t n, size_t *out_len);

#endif
