#include "serve/sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/sampler.h"
#include "engine/threadpool.h"

typedef struct seq {
    int slot;          /* KV slot, -1 when not admitted */
    int32_t *hist;     /* prompt then generated ids */
    size_t n_hist;
    size_t n_fed;      /* ids already in the KV cache */
    int n_target;      /* new tokens to produce */
    int n_gen;
    int finished;
    cs_finish finish;
    cs_rng rng;
} seq;

struct cs_req {
    cs_sched *s;
    cs_req_cb cb;
    void *ud;
    cs_gen_params gen;
    size_t n_prompt;
    int n_seqs, n_unfinished;
    seq *seqs;
    _Atomic int cancel;
    double t_submit, t_first;
    cs_req *next; /* queue / running list */
};

struct cs_sched {
    const cs_model *m;
    cs_sched_opts o;
    cs_pool *pool;
    cs_gpt2_ws ws;
    cs_gpt2_kv *kv;      /* (max_running) slots, allocated on first use */
    int *slot_free;      /* (max_running) */
    cs_gpt2_seq *batch;  /* (max_running) */
    seq **batch_seq;     /* (max_running) */
    float *logits;       /* (max_running, V) */
    cs_sampler smp;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    cs_req *q_head, *q_tail; /* waiting */
    int n_queued, n_queued_seqs;
    cs_req *running;         /* admitted; engine thread only */
    _Atomic int n_running_seqs; /* written by the engine thread only */
    int stop, draining;
    cs_sched_stats st;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void req_free(cs_req *r) {
    if (!r) return;
    for (int i = 0; i < r->n_seqs; i++) free(r->seqs[i].hist);
    free(r->seqs);
    free(r);
}

/* ---------------------------------------------------------------- engine side */

static void finish_seq(cs_sched *s, cs_req *r, int i, cs_finish why) {
    seq *q = &r->seqs[i];
    if (q->finished) return;
    q->finished = 1;
    q->finish = why;
    if (q->slot >= 0) {
        s->slot_free[q->slot] = 1;
        q->slot = -1;
        s->n_running_seqs--;
    }
    r->n_unfinished--;
    cs_req_event ev = {.type = CS_EV_DONE, .seq_index = i, .finish = why, .n_prompt = r->n_prompt,
                       .n_generated = (size_t)q->n_gen, .ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0};
    r->cb(r->ud, &ev);
}

/* Moves queued requests into the batch while slots allow (FIFO). Engine thread. */
static void admit(cs_sched *s) {
    for (;;) {
        pthread_mutex_lock(&s->mu);
        cs_req *r = s->q_head;
        if (!r || s->n_running_seqs + r->n_seqs > s->o.max_running) {
            pthread_mutex_unlock(&s->mu);
            return;
        }
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        s->n_queued--;
        s->n_queued_seqs -= r->n_seqs;
        for (int i = 0; i < r->n_seqs; i++) { /* under mu so drain never sees it in neither place */
            int slot = 0;
            while (!s->slot_free[slot]) slot++;
            s->slot_free[slot] = 0;
            r->seqs[i].slot = slot;
            s->n_running_seqs++;
        }
        pthread_mutex_unlock(&s->mu);
        r->next = s->running;
        s->running = r;
    }
}

/* Allocates a slot's KV cache the first time it is used. */
static int ensure_kv(cs_sched *s, int slot) {
    if (s->kv[slot].k) return 0;
    return cs_gpt2_kv_init(&s->kv[slot], s->m->net, s->o.n_ctx, NULL);
}

static void fail_req(cs_sched *s, cs_req *r, const char *msg) {
    for (int i = 0; i < r->n_seqs; i++) {
        seq *q = &r->seqs[i];
        if (!q->finished && q->slot >= 0) {
            s->slot_free[q->slot] = 1;
            s->n_running_seqs--;
        }
        q->finished = 1;
        q->slot = -1;
    }
    r->n_unfinished = 0;
    cs_req_event ev = {.type = CS_EV_ERROR, .message = msg, .n_prompt = r->n_prompt};
    r->cb(r->ud, &ev);
}

/* One iteration: admit, build the batch, run one step, sample, deliver.
 * Engine thread; callbacks run with no lock held. */
static void iterate(cs_sched *s) {
    const size_t V = (size_t)s->m->net->cfg.vocab_size;
    admit(s);
    /* cancellations and zero-length requests finish before anything runs */
    for (cs_req *r = s->running; r; r = r->next) {
        const int cancel = atomic_load(&r->cancel);
        for (int i = 0; i < r->n_seqs; i++)
            if (!r->seqs[i].finished && (cancel || r->seqs[i].n_target == 0))
                finish_seq(s, r, i, cancel ? CS_FINISH_STOPPED : CS_FINISH_LENGTH);
    }
    /* Decode tokens first (one per running sequence), then prompt chunks. */
    int nb = 0, budget = s->o.step_tokens;
    size_t prompt_tokens = 0;
    for (int pass = 0; pass < 2; pass++)
        for (cs_req *r = s->running; r; r = r->next)
            for (int i = 0; i < r->n_seqs && budget > 0; i++) {
                seq *q = &r->seqs[i];
                if (q->finished) continue;
                const int prefilling = q->n_fed < r->n_prompt;
                if (prefilling != (pass == 1)) continue;
                if (ensure_kv(s, q->slot)) {
                    fail_req(s, r, "out of memory for the KV cache");
                    break;
                }
                cs_gpt2_kv *kv = &s->kv[q->slot];
                if (q->n_fed == 0) kv->n_past = 0;
                int n = (int)(q->n_hist - q->n_fed);
                if (n > budget) n = budget;
                budget -= n;
                if (prefilling) prompt_tokens += (size_t)n;
                const int completes = q->n_fed + (size_t)n == q->n_hist;
                s->batch[nb] = (cs_gpt2_seq){.kv = kv, .tokens = q->hist + q->n_fed, .n = n,
                                             .logits = completes ? s->logits + (size_t)nb * V : NULL};
                s->batch_seq[nb] = q;
                nb++;
            }
    cs_err err;
    int step_failed = nb > 0 && cs_gpt2_step(s->m->net, &s->ws, s->batch, nb, &err) != 0;
    size_t gen_tokens = 0;
    if (step_failed) { /* inputs are validated at submit, so this is a bug: fail what was running */
        for (cs_req *r = s->running; r; r = r->next)
            if (r->n_unfinished) fail_req(s, r, err.msg);
    } else {
        for (int b = 0; b < nb; b++) s->batch_seq[b]->n_fed += (size_t)s->batch[b].n;
        for (cs_req *r = s->running; r; r = r->next)
            for (int i = 0; i < r->n_seqs; i++) {
                seq *q = &r->seqs[i];
                int b = 0;
                while (b < nb && s->batch_seq[b] != q) b++;
                if (b == nb || !s->batch[b].logits || q->finished) continue;
                const int32_t tok =
                    cs_sampler_pick(&s->smp, &r->gen.sample, s->batch[b].logits, q->hist, q->n_hist, &q->rng);
                q->hist[q->n_hist++] = tok;
                q->n_gen++;
                gen_tokens++;
                if (r->t_first == 0) r->t_first = now_s();
                cs_req_event ev = {.type = CS_EV_TOKEN, .token = tok, .seq_index = i, .n_prompt = r->n_prompt,
                                   .n_generated = (size_t)q->n_gen};
                const int stop = r->cb(r->ud, &ev);
                if (stop || atomic_load(&r->cancel)) finish_seq(s, r, i, CS_FINISH_STOPPED);
                else if (tok == r->gen.eos_token_id && !r->gen.ignore_eos) finish_seq(s, r, i, CS_FINISH_EOS);
                else if (q->n_gen >= q->n_target) finish_seq(s, r, i, CS_FINISH_LENGTH);
            }
    }
    /* drop requests whose sequences all finished */
    uint64_t done = 0;
    for (cs_req **pp = &s->running; *pp;) {
        cs_req *r = *pp;
        if (r->n_unfinished == 0) {
            *pp = r->next;
            done++;
            req_free(r);
        } else {
            pp = &r->next;
        }
    }
    pthread_mutex_lock(&s->mu);
    if (nb) {
        s->st.steps++;
        s->st.last_batch_size = nb;
    }
    s->st.tokens_generated += gen_tokens;
    s->st.prompt_tokens += prompt_tokens;
    s->st.requests_done += done;
    if (!s->running && !s->q_head) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
}

static void *engine_main(void *arg) {
    cs_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->running && !s->q_head) pthread_cond_wait(&s->wake, &s->mu);
        const int stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        iterate(s);
    }
    /* shutting down: whatever is left gets an error */
    pthread_mutex_lock(&s->mu);
    cs_req *left = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->n_queued = s->n_queued_seqs = 0;
    pthread_mutex_unlock(&s->mu);
    while (left) {
        cs_req *r = left;
        left = r->next;
        fail_req(s, r, "server shutting down");
        req_free(r);
    }
    while (s->running) {
        cs_req *r = s->running;
        s->running = r->next;
        if (r->n_unfinished) fail_req(s, r, "server shutting down");
        req_free(r);
    }
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ public */

int cs_sched_create(cs_sched **out, const cs_model *m, const cs_sched_opts *opts, cs_err *err) {
    *out = NULL;
    cs_sched *s = calloc(1, sizeof *s);
    if (!s) return cs_err_set(err, "out of memory");
    s->m = m;
    if (opts) s->o = *opts;
    if (s->o.max_running <= 0) s->o.max_running = 32;
    if (s->o.max_queued < 0) s->o.max_queued = 0;
    if (!opts) s->o.max_queued = 256;
    if (s->o.step_tokens <= 0) s->o.step_tokens = 256;
    if (s->o.step_tokens < s->o.max_running) s->o.step_tokens = s->o.max_running;
    if (s->o.n_ctx <= 0 || s->o.n_ctx > m->net->cfg.n_positions) s->o.n_ctx = m->net->cfg.n_positions;
    const int R = s->o.max_running;
    const size_t V = (size_t)m->net->cfg.vocab_size;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->idle, NULL);
    s->kv = calloc((size_t)R, sizeof *s->kv);
    s->slot_free = malloc((size_t)R * sizeof *s->slot_free);
    s->batch = calloc((size_t)R, sizeof *s->batch);
    s->batch_seq = calloc((size_t)R, sizeof *s->batch_seq);
    s->logits = malloc((size_t)R * V * sizeof(float));
    if (!s->kv || !s->slot_free || !s->batch || !s->batch_seq || !s->logits) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < R; i++) s->slot_free[i] = 1;
    if (cs_pool_create(&s->pool, s->o.threads, err) || cs_sampler_init(&s->smp, V, err) ||
        cs_gpt2_ws_init(&s->ws, m->net, s->o.step_tokens, R, s->pool, err))
        goto fail;
    s->st.max_running = R;
    s->st.max_queued = s->o.max_queued;
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        cs_err_set(err, "cannot start the engine thread");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    cs_gpt2_ws_free(&s->ws);
    cs_sampler_free(&s->smp);
    cs_pool_free(s->pool);
    free(s->kv);
    free(s->slot_free);
    free(s->batch);
    free(s->batch_seq);
    free(s->logits);
    free(s);
    return -1;
}

void cs_sched_free(cs_sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    for (int i = 0; i < s->o.max_running; i++) cs_gpt2_kv_free(&s->kv[i]);
    cs_gpt2_ws_free(&s->ws);
    cs_sampler_free(&s->smp);
    cs_pool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->idle);
    free(s->kv);
    free(s->slot_free);
    free(s->batch);
    free(s->batch_seq);
    free(s->logits);
    free(s);
}

int cs_sched_submit(cs_sched *s, const cs_req_params *p, cs_req_cb cb, void *ud, cs_req **out, cs_err *err) {
    if (out) *out = NULL;
    if (!cb) return cs_err_set(err, "no callback"), CS_SCHED_INVALID;
    const int n_seqs = p->n_seqs > 0 ? p->n_seqs : 1;
    if (n_seqs > s->o.max_running) {
        cs_err_set(err, "%d sequences requested, at most %d run together", n_seqs, s->o.max_running);
        return CS_SCHED_INVALID;
    }
    if (cs_sample_params_check(&p->gen.sample, err)) return CS_SCHED_INVALID;
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= s->m->net->cfg.vocab_size) {
            cs_err_set(err, "token id %d outside vocabulary [0, %d)", p->prompt[i], s->m->net->cfg.vocab_size);
            return CS_SCHED_INVALID;
        }
    const int n_new = cs_gen_new_tokens(&p->gen, p->n_prompt, s->o.n_ctx, err);
    if (n_new < 0) return CS_SCHED_INVALID;
    cs_req *r = calloc(1, sizeof *r);
    if (!r || !(r->seqs = calloc((size_t)n_seqs, sizeof *r->seqs))) {
        free(r);
        cs_err_set(err, "out of memory");
        return CS_SCHED_INVALID;
    }
    r->s = s;
    r->cb = cb;
    r->ud = ud;
    r->gen = p->gen;
    r->n_prompt = p->n_prompt;
    r->n_seqs = r->n_unfinished = n_seqs;
    r->t_submit = now_s();
    for (int i = 0; i < n_seqs; i++) {
        seq *q = &r->seqs[i];
        q->slot = -1;
        q->n_target = n_new;
        q->hist = malloc((p->n_prompt + (size_t)n_new + 1) * sizeof(int32_t));
        if (!q->hist) {
            req_free(r);
            cs_err_set(err, "out of memory");
            return CS_SCHED_INVALID;
        }
        memcpy(q->hist, p->prompt, p->n_prompt * sizeof(int32_t));
        q->n_hist = p->n_prompt;
        cs_rng_seed(&q->rng, p->seed + (uint64_t)i * 0x9E3779B97F4A7C15ull);
    }
    pthread_mutex_lock(&s->mu);
    int rc = CS_SCHED_OK;
    if (s->draining || s->stop) rc = CS_SCHED_DRAINING;
    /* room for max_running sequences in the batch plus max_queued waiting */
    else if (s->n_running_seqs + s->n_queued_seqs + n_seqs > s->o.max_running + s->o.max_queued) rc = CS_SCHED_FULL;
    if (rc == CS_SCHED_OK) {
        if (s->q_tail) s->q_tail->next = r;
        else s->q_head = r;
        s->q_tail = r;
        s->n_queued++;
        s->n_queued_seqs += n_seqs;
        s->st.queued = s->n_queued;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != CS_SCHED_OK) {
        cs_err_set(err, rc == CS_SCHED_FULL ? "server overloaded: %d running and %d queued requests"
                                            : "server is shutting down (%d running, %d queued)",
                   s->o.max_running, s->o.max_queued);
        req_free(r);
        return rc;
    }
    if (out) *out = r;
    return CS_SCHED_OK;
}

/* Lock-free so that callbacks may call it: the engine sleeps only when nothing
 * is queued or running, and then there is nothing to cancel. */
void cs_sched_cancel(cs_sched *s, cs_req *r) {
    atomic_store(&r->cancel, 1);
    pthread_cond_signal(&s->wake);
}

void cs_sched_stats_get(cs_sched *s, cs_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->running = s->n_running_seqs;
    st->queued = s->n_queued;
    pthread_mutex_unlock(&s->mu);
}

int cs_sched_drain(cs_sched *s, double timeout_s) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout_s;
    dl.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_cond_signal(&s->wake);
    while ((atomic_load(&s->n_running_seqs) > 0 || s->q_head) && !s->stop)
        if (pthread_cond_timedwait(&s->idle, &s->mu, &dl) != 0) break;
    int left = atomic_load(&s->n_running_seqs) + s->n_queued;
    pthread_mutex_unlock(&s->mu);
    return left;
}
