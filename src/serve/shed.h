/* cs_shed: paces the answers to requests refused for overload.
 *
 * A crowd of clients that retries a 503 at once (honouring no Retry-After)
 * turns every refusal into another request: answered immediately, refusals
 * come back tens of thousands of times a second and take the CPU from the
 * requests being served. So a refusal is held a short time before it is
 * answered, and the hold grows with the number held: hold = held / RATE
 * (Little's law: answered refusals then come back at most about RATE per
 * second, whatever the crowd's size), between CS_SHED_MIN_HOLD_S and
 * CS_SHED_MAX_HOLD_S. Held requests cost only their connection: no thread,
 * no polling. Beyond CS_SHED_MAX_HELD the caller answers at once.
 *
 * One thread answers each held refusal at its due time by calling the
 * caller's function (fn(arg)); fn runs with no lock of this module held.
 * Thread-safety: every function may be called from any thread; fn must not
 * call back into this module. */
#ifndef CS_SHED_H
#define CS_SHED_H

#include "engine/err.h"

#define CS_SHED_MAX_HELD 8192     /* refusals held at once (beyond: answered at once) */
#define CS_SHED_RATE 100.0        /* refusals per second the hold length aims at */
#define CS_SHED_MIN_HOLD_S 0.02   /* shortest hold (a lone refusal) */
#define CS_SHED_MAX_HOLD_S 30.0   /* longest hold: half the default request timeout (60 s) */

typedef struct cs_shed cs_shed;
typedef void (*cs_shed_fn)(void *arg);

int cs_shed_create(cs_shed **out, cs_err *err);
/* Answers everything still held (calls fn), stops the thread; NULL is a no-op. */
void cs_shed_free(cs_shed *sh);

/* Holds a refusal: fn(arg) is called once, after the hold. Returns 0, or -1
 * when CS_SHED_MAX_HELD are held (fn is then not called: answer now). */
int cs_shed_hold(cs_shed *sh, cs_shed_fn fn, void *arg);

/* The hold a refusal would get now, in seconds (for Retry-After). */
double cs_shed_hold_s(cs_shed *sh);

/* Answers everything held now (draining: refusals need no pacing any more),
 * on the calling thread. */
void cs_shed_flush(cs_shed *sh);

#endif
