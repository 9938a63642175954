#include "engine/utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

size_t cs_utf8_next(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;      /* no overlongs */
        else if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else {
        *bad = 1; /* continuation byte, C0/C1, F5..FF */
        return 0;
    }
    size_t i = 1;
    for (; i < need; i++) {
        if (i >= n) break;
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) break;
    }
    if (i == need) return need;
    *bad = i; /* the lead byte plus the continuation bytes that were valid so far */
    return 0;
}

int cs_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, bad;
    while (i < n) {
        size_t k = cs_utf8_next(u + i, n - i, &bad);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

size_t cs_utf8_complete_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    /* Look back at most 3 bytes for a lead byte whose sequence is cut by the end. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned c = u[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: keep looking */
        if (c < 0xC2 || c > 0xF4) break;  /* ASCII, or never a lead byte: nothing to wait for */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (need > back) {
            size_t bad;
            /* Hold back only if what is there so far is a valid beginning. */
            if (cs_utf8_next(u + n - back, back, &bad) == 0 && bad == back) return n - back;
        }
        break;
    }
    return n;
}

char *cs_utf8_repair(const char *s, size_t n, size_t *out_len) {
    const unsigned char *u = (const unsigned char *)s;
    if (n > (SIZE_MAX - 1) / 3) return NULL;
    char *out = malloc(3 * n + 1); /* every bad byte becomes at most 3 bytes */
    if (!out) return NULL;
    size_t i = 0, o = 0, bad;
    while (i < n) {
        size_t k = cs_utf8_next(u + i, n - i, &bad);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    out[o] = '\0';
    if (out_len) *out_len = o;
    return out;
}
