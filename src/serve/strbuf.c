/* cs_sb: see strbuf.h. */
#include "serve/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cs_sb_put(cs_sb *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void cs_sb_puts(cs_sb *b, const char *s) { cs_sb_put(b, s, strlen(s)); }

void cs_sb_printf(cs_sb *b, const char *fmt, ...) {
    char tmp[CS_SB_MAX_PRINTF + 1];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    cs_sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

void cs_sb_json_str(cs_sb *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    cs_sb_put(b, "\"", 1);
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        cs_sb_put(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': cs_sb_put(b, "\\\"", 2); break;
        case '\\': cs_sb_put(b, "\\\\", 2); break;
        case '\n': cs_sb_put(b, "\\n", 2); break;
        case '\r': cs_sb_put(b, "\\r", 2); break;
        case '\t': cs_sb_put(b, "\\t", 2); break;
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            cs_sb_put(b, e, 6);
        }
        }
    }
    cs_sb_put(b, s + run, n - run);
    cs_sb_put(b, "\"", 1);
}

void cs_sb_free(cs_sb *b) {
    free(b->p);
    *b = (cs_sb){0};
}
