/* cs_sb: a growable byte buffer for building HTTP bodies and server-sent
 * events piece by piece (a pre-rendered JSON head + a JSON string + a tail),
 * one append at a time with no intermediate objects.
 *
 * Why not jansson for these: a streamed chunk is written once per generated
 * token; building it as a json_t tree and dumping it would allocate an object,
 * its keys and a string per token and re-encode the constant part (id, model,
 * created) every time. Whole documents (non-streamed answers, errors) are
 * built with jansson.
 *
 * Errors: an allocation failure sets b->oom and turns every later append into
 * a no-op, so a builder checks once at the end. The text is always
 * NUL-terminated after the first successful append (p is NULL before).
 *
 * Ownership: the buffer owns p; cs_sb_free releases it (a zeroed cs_sb is
 * empty and needs no init). Not thread-safe: one builder per thread. */
#ifndef CS_STRBUF_H
#define CS_STRBUF_H

#include <stddef.h>

typedef struct cs_sb {
    char *p;    /* NUL-terminated text, or NULL while empty */
    size_t n;   /* bytes, the NUL excluded */
    size_t cap; /* bytes allocated */
    int oom;    /* an append failed; the content is incomplete */
} cs_sb;

void cs_sb_put(cs_sb *b, const char *s, size_t n);
void cs_sb_puts(cs_sb *b, const char *s);
/* Formatted text of at most CS_SB_MAX_PRINTF bytes (longer output is cut). */
#define CS_SB_MAX_PRINTF 511
void cs_sb_printf(cs_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s[0..n) as a JSON string literal (quotes included); s must be valid UTF-8. */
void cs_sb_json_str(cs_sb *b, const char *s, size_t n);
/* Frees the text and empties b. */
void cs_sb_free(cs_sb *b);

#endif
