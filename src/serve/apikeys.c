/* cs_keys: see apikeys.h. */
#include "serve/apikeys.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "serve/api.h"

typedef struct keys_entry {
    char *key;          /* own copy, zeroed before it is freed */
    size_t len;
    int limit;          /* most requests in flight; 0: no limit */
    _Atomic int ongoing; /* requests in flight, counted only when limit > 0 */
} keys_entry;

struct cs_keys {
    size_t n;
    keys_entry *e;
};

int cs_keys_create(cs_keys **out, const char *const *keys, const int *max_ongoing, size_t n, cs_err *err) {
    *out = NULL;
    if (n > CS_API_MAX_KEYS) return cs_err_set(err, "%zu API keys, at most %d", n, CS_API_MAX_KEYS);
    cs_keys *k = calloc(1, sizeof *k);
    if (!k) return cs_err_set(err, "out of memory");
    k->e = calloc(n ? n : 1, sizeof *k->e);
    if (!k->e) goto oom;
    k->n = n;
    for (size_t i = 0; i < n; i++) {
        keys_entry *e = &k->e[i];
        atomic_init(&e->ongoing, 0);
        e->limit = max_ongoing && max_ongoing[i] > 0 ? max_ongoing[i] : 0;
        e->len = strlen(keys[i]);
        if (e->len == 0 || e->len > CS_API_MAX_KEY_BYTES) {
            cs_err_set(err, "API key %zu: length %zu, must be 1..%d bytes", i + 1, e->len, CS_API_MAX_KEY_BYTES);
            cs_keys_free(k);
            return -1;
        }
        if (!(e->key = malloc(e->len + 1))) goto oom;
        memcpy(e->key, keys[i], e->len + 1);
    }
    *out = k;
    return 0;
oom:
    cs_keys_free(k);
    return cs_err_set(err, "out of memory");
}

void cs_keys_free(cs_keys *k) {
    if (!k) return;
    for (size_t i = 0; i < k->n && k->e; i++) {
        if (k->e[i].key) {
            /* volatile: a plain memset right before free may be optimized away */
            volatile char *p = k->e[i].key;
            for (size_t j = 0; j < k->e[i].len; j++) p[j] = 0;
        }
        free(k->e[i].key);
    }
    free(k->e);
    free(k);
}

size_t cs_keys_count(const cs_keys *k) { return k ? k->n : 0; }

/* Constant-time comparison (time depends on the lengths only). */
static int ct_equal(const char *x, size_t xl, const char *y, size_t yl) {
    unsigned d = xl != yl;
    size_t n = xl > yl ? xl : yl;
    for (size_t i = 0; i < n; i++) {
        unsigned cx = i < xl ? (unsigned char)x[i] : 0, cy = i < yl ? (unsigned char)y[i] : 0;
        d |= cx ^ cy;
        __asm__ volatile("" : "+r"(d)); /* keep the loop whole: no early exit */
    }
    return d == 0;
}

int cs_keys_check(const cs_keys *k, const char *h, int *idx) {
    if (idx) *idx = -1;
    if (!k || k->n == 0) return 1;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t hl = strlen(h);
    while (hl && h[hl - 1] == ' ') hl--;
    int ok = 0;
    /* every key is compared, also after a match: the time does not tell which matched */
    for (size_t i = 0; i < k->n; i++) {
        const int eq = ct_equal(h, hl, k->e[i].key, k->e[i].len);
        ok |= eq;
        if (eq && idx) *idx = (int)i;
    }
    return ok;
}

int cs_keys_try_acquire(cs_keys *k, int idx) {
    if (!k || idx < 0 || (size_t)idx >= k->n || k->e[idx].limit == 0) return 0;
    keys_entry *e = &k->e[idx];
    /* optimistic add: two racing requests cannot both take the last slot */
    if (atomic_fetch_add(&e->ongoing, 1) >= e->limit) {
        atomic_fetch_sub(&e->ongoing, 1);
        return e->limit;
    }
    return 0;
}

void cs_keys_release(cs_keys *k, int idx) {
    if (!k || idx < 0 || (size_t)idx >= k->n || k->e[idx].limit == 0) return;
    atomic_fetch_sub(&k->e[idx].ongoing, 1);
}
