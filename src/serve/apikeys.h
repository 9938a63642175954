/* cs_keys: the API keys a listener accepts (the single server's cs_api, the
 * control plane's proxy and admin API), each with an optional limit on the
 * generation requests it may have in flight at once.
 *
 * A request authenticates with "Authorization: Bearer KEY": the scheme is
 * matched case-insensitively and must be followed by a space; further spaces
 * before the key and spaces after it are ignored (RFC 7235 allows 1*SP after
 * the scheme). The key is compared with every configured key in constant
 * time: how long a check takes depends on the lengths only, never on how many
 * leading bytes match or which key matched.
 *
 * Ownership: cs_keys_create copies the keys and limits; the caller's arrays
 * may go away afterwards. cs_keys_free overwrites the copies with zeros
 * before freeing them, so freed memory holds no secret.
 *
 * Thread-safety: the table (keys, lengths, limits) is immutable after
 * cs_keys_create, so cs_keys_check and cs_keys_count may run on any thread at
 * once. The in-flight counters are atomic: cs_keys_try_acquire and
 * cs_keys_release may be called from any thread (a request is often admitted
 * on one thread and freed on another). cs_keys_free must not run
 * concurrently with anything else on the same table.
 *
 * A NULL table behaves as one with no keys: every request is authorized and
 * nothing is limited. None of the functions allocates except cs_keys_create. */
#ifndef CS_SERVE_APIKEYS_H
#define CS_SERVE_APIKEYS_H

#include <stddef.h>

#include "engine/err.h"

typedef struct cs_keys cs_keys;

/* Copies n keys (NUL-terminated, each 1..CS_API_MAX_KEY_BYTES bytes;
 * n <= CS_API_MAX_KEYS: the limits in serve/api.h) into a new table in *out.
 * max_ongoing: NULL, or n limits (a value <= 0 is no limit). n == 0 gives a
 * table that authorizes every request. 0 on success; -1 with err set
 * ("65 API keys, at most 64", "API key 2: length 0, must be 1..256 bytes",
 * "out of memory") and *out NULL. */
int cs_keys_create(cs_keys **out, const char *const *keys, const int *max_ongoing, size_t n, cs_err *err);

/* Zeroes the key copies and frees the table; NULL is a no-op. Counters still
 * held are dropped with it (the owner frees it after its requests). */
void cs_keys_free(cs_keys *k);

/* The number of keys; 0: no authentication. */
size_t cs_keys_count(const cs_keys *k);

/* authorization: the request's Authorization header value, NULL when absent.
 * 1 when it carries one of the keys, or when the table has no keys; else 0.
 * *idx (if idx is not NULL): the index of the matching key, -1 when none
 * matched or no keys are set. */
int cs_keys_check(const cs_keys *k, const char *authorization, int *idx);

/* Takes one in-flight slot of key idx. 0 when taken, or when nothing is
 * counted (idx < 0, or the key has no limit); else the key's limit, which is
 * already reached (nothing is taken then). Every 0 is matched by one
 * cs_keys_release(k, idx) when the request ends. */
int cs_keys_try_acquire(cs_keys *k, int idx);

/* Gives back the slot a successful cs_keys_try_acquire(k, idx) took (a no-op
 * where that took nothing). */
void cs_keys_release(cs_keys *k, int idx);

#endif
