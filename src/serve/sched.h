/* cs_sched: one replica's iteration-level (continuous batching) scheduler.
 *
 * One engine thread owns the model's forward passes. Each iteration it runs a
 * single cs_gpt2_step over every active request: one decode token for each
 * running sequence plus chunks of newly admitted prompts (up to a token budget),
 * so requests join and leave the batch at token granularity. New tokens are
 * delivered through the request's callback as they are produced; a request
 * ends at EOS, at its length limit, when its callback asks to stop, or when it
 * is cancelled (client gone): its slot is freed at once and the compute stops.
 *
 * Admission counts sequences, not requests: a request of n sequences (an HTTP
 * request of P prompts x n choices, given as one group) takes n of the
 * max_running + max_queued places, for its whole life. A group larger than
 * that is refused (CS_SCHED_INVALID: it could never run); when the places are
 * taken, cs_sched_submit fails at once with CS_SCHED_FULL (HTTP 503).
 *
 * Fairness: the max_running KV slots are shared between groups by max-min
 * fairness. Each step, a free slot goes to the waiting group that holds the
 * fewest slots (the oldest on ties); when no slot is free and a waiting group
 * holds at least two fewer than the group holding the most, one sequence of
 * the latter is preempted: its slot is given up and its tokens so far (prompt
 * and output) are computed again when it gets a slot back. So a request of
 * 256 sequences running alone uses every slot, and a small request arriving
 * next to it gets a slot at the next step instead of waiting behind it.
 * Prompt chunks are scheduled fewest-remaining-tokens first, so a short new
 * prompt is not held behind long ones (or behind recomputation). A request
 * still generating max_duration_s after it was submitted is finished
 * (CS_FINISH_LENGTH): no request, stream or not, holds the server forever.
 *
 * Thread-safety: submit, cancel, stats and drain may be called from any thread.
 * Callbacks run on the engine thread and must not block or call back into the
 * scheduler except cs_sched_cancel on another request. */
#ifndef CS_SCHED_H
#define CS_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/generate.h"
#include "engine/kvpool.h"
#include "engine/model.h"

typedef struct cs_sched cs_sched;
typedef struct cs_req cs_req;

typedef struct cs_sched_opts {
    int max_running;      /* sequences decoded together (default 32) */
    int max_queued;       /* waiting requests beyond that (default 256) */
    int step_tokens;      /* token budget of one step: decodes + prompt chunks (default 256) */
    int n_ctx;            /* per-sequence KV capacity (default: model n_positions) */
    /* KV cache: one pool of blocks (engine/kvpool.h) shared by all sequences,
     * taken as they grow. kv_cache_mb 0: room for max_running x n_ctx tokens
     * (no sequence ever waits for memory); smaller: more sequences than fit at
     * full length share it, and when it runs out the newest sequence is
     * preempted (computed again later). n_ctx is capped at what the pool holds. */
    int kv_cache_mb;
    int kv_cache_tokens;  /* the pool's size in tokens instead (wins over kv_cache_mb when > 0) */
    cs_kvdtype kv_dtype;  /* CS_KV_F32 (default), CS_KV_BF16 (half the memory) or CS_KV_I8 (27%) */
    int threads;          /* compute threads (default: cs_cpu_count()) */
    double max_duration_s;/* a request is finished this long after submit (0: CS_SCHED_MAX_DURATION_S,
                             < 0: no limit) */
} cs_sched_opts;

#define CS_SCHED_MAX_DURATION_S 600.0 /* default max_duration_s: 10 minutes */

typedef enum cs_ev_type {
    CS_EV_TOKEN, /* one new token of sequence seq_index */
    CS_EV_DONE,  /* sequence seq_index finished (finish reason, counts); the DONE
                    of the request's last unfinished sequence is its final event */
    CS_EV_ERROR  /* the request failed (message): the final event; sequences that had
                    not finished get no DONE (earlier sequences may have had theirs) */
} cs_ev_type;

typedef struct cs_req_event {
    cs_ev_type type;
    int32_t token;        /* CS_EV_TOKEN */
    int seq_index;        /* which of the request's sequences (num_return_sequences) */
    cs_finish finish;     /* CS_EV_DONE: per sequence */
    size_t n_prompt, n_generated;
    double ttft_s;        /* CS_EV_DONE: submit to first token */
    const char *message;  /* CS_EV_ERROR */
} cs_req_event;

/* Return non-zero from a CS_EV_TOKEN to stop that sequence (a stop string was
 * seen); it then finishes with CS_FINISH_STOPPED. */
typedef int (*cs_req_cb)(void *ud, const cs_req_event *ev);

typedef struct cs_req_params {
    cs_gen_params gen;
    uint64_t seed;            /* sampling seed (used when gen.sample.do_sample) */
    const int32_t *prompt;    /* copied at submit */
    size_t n_prompt;
    int n_seqs;               /* independent sequences for this prompt (>= 1) */
    /* Requests with the same non-NULL group (e.g. the prompts of one HTTP
     * request) share one fair share of the slots. group_seqs, when given (on
     * the group's first request), is the sequence count of the whole group:
     * admission takes room for all of it at once, so the group's later
     * requests are not refused for lack of room. NULL: a group of its own. */
    const void *group;
    int group_seqs;
} cs_req_params;

enum { CS_SCHED_OK = 0, CS_SCHED_INVALID = -1, CS_SCHED_FULL = -2, CS_SCHED_DRAINING = -3 };

int cs_sched_create(cs_sched **out, const cs_model *m, const cs_sched_opts *opts, cs_err *err);
/* Stops the engine thread; requests still running get CS_EV_ERROR. */
void cs_sched_free(cs_sched *s);

/* Queues a request. Returns CS_SCHED_OK (and *out, valid until its last event
 * has been delivered), CS_SCHED_INVALID (err says why: empty prompt, length
 * over the context, bad sampling values, more sequences than max_running +
 * max_queued), CS_SCHED_FULL (no room for its sequences) or
 * CS_SCHED_DRAINING. On failure no callback is ever made. */
int cs_sched_submit(cs_sched *s, const cs_req_params *p, cs_req_cb cb, void *ud, cs_req **out, cs_err *err);

/* Asks the engine to drop a request (client disconnected). Its callback still
 * receives a final CS_EV_DONE with finish CS_FINISH_STOPPED. Safe to call
 * until that final event has been delivered. */
void cs_sched_cancel(cs_sched *s, cs_req *r);

/* Sequences that could be admitted now (max_running + max_queued minus those
 * submitted and not finished, minus room reserved for groups); <= 0: a new
 * request would get CS_SCHED_FULL. A cheap check before parsing a request. */
int cs_sched_room(cs_sched *s);

typedef struct cs_sched_stats {
    int running;   /* sequences holding a slot */
    int queued;    /* requests with no sequence holding a slot */
    int waiting;   /* submitted, unfinished sequences without a slot */
    uint64_t kv_tokens;   /* tokens held in the KV caches after the last step */
    uint64_t kv_capacity; /* tokens the KV pool can hold */
    uint64_t kv_bytes;    /* memory the KV pool holds now (blocks touched since the last trim) */
    uint64_t kv_bytes_per_token;
    int max_running, max_queued;
    uint64_t preemptions;
    uint64_t steps, tokens_generated, prompt_tokens, requests_done;
    double last_batch_size;
} cs_sched_stats;
void cs_sched_stats_get(cs_sched *s, cs_sched_stats *st);

/* Stops admitting (submit returns CS_SCHED_DRAINING) and waits up to
 * timeout_s for running and queued requests to finish. Returns the number
 * of sequences still unfinished (0 = drained). */
int cs_sched_drain(cs_sched *s, double timeout_s);

#endif
