#include "serve/sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/kernels.h"
#include "engine/sampler.h"
#include "engine/threadpool.h"

typedef struct grp grp;

typedef struct seq {
    int slot;          /* KV slot, -1 when not holding one */
    uint64_t admitted; /* when it got its slot (the newest is preempted first for memory) */
    int32_t *hist;     /* prompt then generated ids */
    size_t n_hist;
    size_t n_fed;      /* ids already in the KV cache (0 again after a preemption) */
    int n_target;      /* new tokens to produce */
    int n_gen;
    int finished;
    cs_finish finish;
    cs_rng rng;
    cs_req *r;         /* owner, and our index in it */
    int idx;
} seq;

/* Requests sharing one fair share (one HTTP request's prompts). */
struct grp {
    const void *key;  /* the caller's group; NULL: a single request's own */
    int n_reqs;       /* live requests: under mu */
    int reserved;     /* room taken for sequences not submitted yet: under mu */
    int running;      /* sequences holding a slot: engine thread only */
    uint64_t ticket;  /* arrival order, for ties */
    grp *next;
};

struct cs_req {
    cs_sched *s;
    cs_req_cb cb;
    void *ud;
    cs_gen_params gen;
    size_t n_prompt;
    int n_seqs, n_unfinished;
    int n_waiting; /* unfinished sequences without a slot: engine thread only */
    seq *seqs;
    grp *g;
    _Atomic int cancel;
    double t_submit, t_first;
    cs_req *next; /* pending queue / live list */
};

struct cs_sched {
    const cs_model *m;
    cs_sched_opts o;
    cs_pool *pool;
    cs_gpt2_ws ws;
    cs_kvpool *kvp;      /* blocks for every slot's cache */
    cs_gpt2_kv *kv;      /* (max_running) slots, attached to kvp on first use */
    seq **order;         /* (max_running) running sequences of one step, oldest first */
    uint64_t n_admitted; /* admission counter */
    seq **slot_seq;      /* (max_running) who holds each slot; NULL: free */
    cs_gpt2_seq *batch;  /* (max_running) */
    seq **batch_seq;     /* (max_running) */
    seq **pre;           /* (max_running) prefill candidates of one step */
    float *logits;       /* (max_running, V) */
    cs_sampler *smp;     /* (n_smp) one per pool thread: rows are sampled in parallel */
    int n_smp;
    int32_t *picked;     /* (max_running) each batch row's sampled token, or -1 */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    cs_req *q_head, *q_tail;  /* submitted, not yet seen by the engine: under mu */
    int n_pending;            /* requests in that queue: under mu */
    grp *groups;              /* live groups: under mu */
    uint64_t next_ticket;     /* under mu */
    int n_reserved;           /* sum of groups' reserved: under mu */
    _Atomic int n_live_seqs;  /* submitted, unfinished sequences (admission) */
    cs_req *live, *live_tail; /* seen by the engine, in arrival order: engine thread only */
    _Atomic int n_running_seqs; /* written by the engine thread only */
    int eng_queued;           /* live requests with no slot: under mu */
    uint64_t eng_kv_tokens;   /* tokens in the slots' KV caches after the last step: under mu */
    uint64_t eng_kv_bytes;    /* the pool's memory after the last step: under mu */
    uint64_t eng_kv_capacity, eng_kv_bpt; /* the pool's size, set at create */
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

/* The request is gone: its group loses a member, and with the last one the
 * room it had reserved. Caller holds mu. */
static void grp_release_locked(cs_sched *s, grp *g) {
    if (!g || --g->n_reqs > 0) return;
    s->n_reserved -= g->reserved;
    for (grp **pp = &s->groups; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    free(g);
}

static void req_release(cs_sched *s, cs_req *r) {
    pthread_mutex_lock(&s->mu);
    grp_release_locked(s, r->g);
    pthread_mutex_unlock(&s->mu);
    req_free(r);
}

/* ---------------------------------------------------------------- engine side */

static void give_up_slot(cs_sched *s, seq *q) {
    if (s->kv[q->slot].blk) cs_gpt2_kv_clear(&s->kv[q->slot]); /* its blocks go back to the pool at once */
    s->slot_seq[q->slot] = NULL;
    q->slot = -1;
    q->r->g->running--;
    atomic_fetch_sub(&s->n_running_seqs, 1);
}

static void finish_seq(cs_sched *s, cs_req *r, int i, cs_finish why) {
    seq *q = &r->seqs[i];
    if (q->finished) return;
    q->finished = 1;
    q->finish = why;
    if (q->slot >= 0) give_up_slot(s, q);
    else r->n_waiting--;
    r->n_unfinished--;
    atomic_fetch_sub(&s->n_live_seqs, 1);
    cs_req_event ev = {.type = CS_EV_DONE, .seq_index = i, .finish = why, .n_prompt = r->n_prompt,
                       .n_generated = (size_t)q->n_gen, .ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0};
    r->cb(r->ud, &ev);
}

static void fail_req(cs_sched *s, cs_req *r, const char *msg) {
    for (int i = 0; i < r->n_seqs; i++) {
        seq *q = &r->seqs[i];
        if (q->finished) continue;
        if (q->slot >= 0) give_up_slot(s, q);
        q->finished = 1;
        atomic_fetch_sub(&s->n_live_seqs, 1);
    }
    r->n_unfinished = r->n_waiting = 0;
    cs_req_event ev = {.type = CS_EV_ERROR, .message = msg, .n_prompt = r->n_prompt};
    r->cb(r->ud, &ev);
}

/* Takes what was submitted since the last step, keeping arrival order. */
static void pull_pending(cs_sched *s) {
    pthread_mutex_lock(&s->mu);
    cs_req *h = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->n_pending = 0;
    pthread_mutex_unlock(&s->mu);
    while (h) {
        cs_req *r = h;
        h = r->next;
        r->next = NULL;
        if (s->live_tail) s->live_tail->next = r;
        else s->live = r;
        s->live_tail = r;
    }
}

/* Gives the free slots out by max-min fairness between groups, preempting a
 * sequence of the largest holder when another group holds two fewer (see
 * sched.h). Each round moves one slot, and a preemption narrows the gap between
 * the two groups by two, so this ends. Engine thread. */
static void assign_slots(cs_sched *s) {
    cs_kvpool_info pi;
    cs_kvpool_get_info(s->kvp, &pi);
    /* blocks a new sequence's history may take: what is free, less a margin
     * that lets the running ones grow a while before anyone is preempted */
    const long margin = (long)(pi.blocks_total / 100 + 1);
    long promised = 0; /* blocks the sequences admitted here will need for their histories */
    for (;;) {
        grp *gw = NULL; /* the waiting group holding the fewest slots */
        cs_req *rw = NULL;
        for (cs_req *r = s->live; r; r = r->next) {
            if (r->n_waiting == 0) continue;
            grp *g = r->g;
            if (!gw || g->running < gw->running || (g->running == gw->running && g->ticket < gw->ticket)) {
                gw = g;
                rw = r;
            }
        }
        if (!gw) return;
        if (atomic_load(&s->n_running_seqs) >= s->o.max_running) {
            grp *gv = NULL; /* the group holding the most (the newest on ties) */
            for (int k = 0; k < s->o.max_running; k++) {
                seq *q = s->slot_seq[k];
                if (!q) continue;
                grp *g = q->r->g;
                if (!gv || g->running > gv->running || (g->running == gv->running && g->ticket > gv->ticket)) gv = g;
            }
            if (!gv || gv->running <= gw->running + 1) return;
            seq *victim = NULL; /* the one that is cheapest to compute again */
            for (int k = 0; k < s->o.max_running; k++) {
                seq *q = s->slot_seq[k];
                if (q && q->r->g == gv && (!victim || q->n_fed <= victim->n_fed)) victim = q;
            }
            give_up_slot(s, victim);
            victim->n_fed = 0;
            victim->r->n_waiting++;
            s->st.preemptions++;
        }
        seq *q = NULL;
        for (int i = 0; i < rw->n_seqs && !q; i++)
            if (!rw->seqs[i].finished && rw->seqs[i].slot < 0) q = &rw->seqs[i];
        const long need = ((long)q->n_hist + 1 + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
        const long room = (long)cs_kvpool_free_blocks(s->kvp) - margin - promised;
        if (need > room && atomic_load(&s->n_running_seqs) > 0) return; /* waits for memory (alone it always fits) */
        promised += need;
        int slot = 0;
        while (s->slot_seq[slot]) slot++;
        q->slot = slot;
        q->admitted = s->n_admitted++;
        q->n_fed = 0;
        s->slot_seq[slot] = q;
        rw->n_waiting--;
        gw->running++;
        atomic_fetch_add(&s->n_running_seqs, 1);
    }
}

/* Attaches a slot's KV cache to the pool the first time it is used. */
static int ensure_kv(cs_sched *s, int slot) {
    if (s->kv[slot].blk) return 0;
    return cs_gpt2_kv_attach(&s->kv[slot], s->m->net, s->kvp, s->o.n_ctx, NULL);
}

/* Gives q's slot up to free memory; its tokens are computed again later. */
static void preempt(cs_sched *s, seq *q) {
    give_up_slot(s, q);
    q->n_fed = 0;
    q->r->n_waiting++;
    s->st.preemptions++;
}

/* Adds q's next n ids to the batch (their blocks are reserved). */
static void batch_add(cs_sched *s, int *nb, seq *q, int n, size_t V) {
    cs_gpt2_kv *kv = &s->kv[q->slot];
    const int completes = q->n_fed + (size_t)n == q->n_hist;
    s->batch[*nb] = (cs_gpt2_seq){.kv = kv, .tokens = q->hist + q->n_fed, .n = n,
                                  .logits = completes ? s->logits + (size_t)*nb * V : NULL};
    s->batch_seq[*nb] = q;
    (*nb)++;
}

/* One iteration: admit, build the batch, run one step, sample, deliver.
 * Engine thread; callbacks run with no lock held. */
/* Samples the next token of batch rows [b0, b1) (-1: no logits, or finished)
 * with thread tid's sampler. Each row's draw depends only on its own logits,
 * history and generator, so the split over threads changes nothing. */
static void job_pick(void *ctx, int tid, size_t b0, size_t b1) {
    cs_sched *s = ctx;
    for (size_t b = b0; b < b1; b++) {
        seq *q = s->batch_seq[b];
        s->picked[b] = !s->batch[b].logits || q->finished
                           ? -1
                           : cs_sampler_pick(&s->smp[tid], &q->r->gen.sample, s->batch[b].logits, q->hist,
                                             q->n_hist, &q->rng);
    }
}

static void iterate(cs_sched *s) {
    const size_t V = (size_t)s->m->net->cfg.vocab_size;
    const int R = s->o.max_running;
    pull_pending(s);
    /* cancellations, zero-length and overdue requests finish before anything runs */
    const double now = now_s();
    for (cs_req *r = s->live; r; r = r->next) {
        const int cancel = atomic_load(&r->cancel);
        const int overdue = s->o.max_duration_s > 0 && now - r->t_submit > s->o.max_duration_s;
        for (int i = 0; i < r->n_seqs; i++)
            if (!r->seqs[i].finished && (cancel || overdue || r->seqs[i].n_target == 0))
                finish_seq(s, r, i, cancel ? CS_FINISH_STOPPED : CS_FINISH_LENGTH);
    }
    assign_slots(s);
    /* Running sequences, oldest first: they get memory first. */
    int n_run = 0;
    for (int k = 0; k < R; k++) {
        seq *q = s->slot_seq[k];
        if (!q) continue;
        if (ensure_kv(s, k)) {
            fail_req(s, q->r, "out of memory for the KV cache");
            continue;
        }
        int j = n_run++;
        for (; j > 0 && s->order[j - 1]->admitted > q->admitted; j--) s->order[j] = s->order[j - 1];
        s->order[j] = q;
    }
    /* Every running sequence with one id left decodes it; the rest of the
     * budget goes to prompt chunks (and recomputation), fewest ids left first.
     * A decode that needs a block when the pool is empty takes it from the
     * newest sequence (preempted); a prompt chunk only takes what is free. */
    int nb = 0, n_pre = 0, budget = s->o.step_tokens;
    size_t prompt_tokens = 0;
    for (int i = 0; i < n_run; i++) {
        seq *q = s->order[i];
        if (q->finished || q->slot < 0) continue; /* failed above, or preempted for memory */
        if (q->n_hist - q->n_fed > 1) {
            int j = n_pre++;
            for (; j > 0 && s->pre[j - 1]->n_hist - s->pre[j - 1]->n_fed > q->n_hist - q->n_fed; j--)
                s->pre[j] = s->pre[j - 1];
            s->pre[j] = q;
            continue;
        }
        cs_gpt2_kv *kv = &s->kv[q->slot];
        while (cs_gpt2_kv_reserve(kv, (int)q->n_fed + 1)) {
            int v = n_run - 1;
            while (v > i && (s->order[v]->finished || s->order[v]->slot < 0)) v--;
            preempt(s, s->order[v]); /* v == i: q itself is the newest */
            if (v == i) break;
        }
        if (q->slot < 0) continue;
        batch_add(s, &nb, q, 1, V);
        budget--;
    }
    for (int j = 0; j < n_pre && budget > 0; j++) {
        seq *q = s->pre[j];
        if (q->finished || q->slot < 0) continue;
        cs_gpt2_kv *kv = &s->kv[q->slot];
        int n = (int)(q->n_hist - q->n_fed);
        if (n > budget) n = budget;
        const int fit = (kv->n_blk + (int)cs_kvpool_free_blocks(s->kvp)) * CS_KV_BLOCK - (int)q->n_fed;
        if (n > fit) n = fit;
        if (n <= 0 || cs_gpt2_kv_reserve(kv, (int)q->n_fed + n)) continue; /* waits for memory */
        budget -= n;
        prompt_tokens += (size_t)n;
        batch_add(s, &nb, q, n, V);
    }
    if (nb == 0 && n_run > 1) { /* every prompt waits for memory held by the others: the newest gives way */
        for (int v = n_run - 1; v >= 0; v--)
            if (!s->order[v]->finished && s->order[v]->slot >= 0) {
                preempt(s, s->order[v]);
                break;
            }
    }
    cs_err err;
    int step_failed = nb > 0 && cs_gpt2_step(s->m->net, &s->ws, s->batch, nb, &err) != 0;
    size_t gen_tokens = 0;
    if (step_failed) { /* inputs are validated at submit, so this is a bug: fail what was running */
        for (cs_req *r = s->live; r; r = r->next)
            if (r->n_unfinished) fail_req(s, r, err.msg);
    } else {
        for (int b = 0; b < nb; b++) s->batch_seq[b]->n_fed += (size_t)s->batch[b].n;
        if (nb >= 8) cs_pool_for(s->pool, (size_t)nb, 4, job_pick, s);
        else job_pick(s, 0, 0, (size_t)nb);
        for (int b = 0; b < nb; b++) {
            seq *q = s->batch_seq[b];
            cs_req *r = q->r;
            const int32_t tok = s->picked[b];
            if (tok < 0) continue;
            q->hist[q->n_hist++] = tok;
            q->n_gen++;
            gen_tokens++;
            if (r->t_first == 0) r->t_first = now_s();
            cs_req_event ev = {.type = CS_EV_TOKEN, .token = tok, .seq_index = q->idx, .n_prompt = r->n_prompt,
                               .n_generated = (size_t)q->n_gen};
            const int stop = r->cb(r->ud, &ev);
            if (stop || atomic_load(&r->cancel)) finish_seq(s, r, q->idx, CS_FINISH_STOPPED);
            else if (tok == r->gen.eos_token_id && !r->gen.ignore_eos) finish_seq(s, r, q->idx, CS_FINISH_EOS);
            else if (q->n_gen >= q->n_target) finish_seq(s, r, q->idx, CS_FINISH_LENGTH);
        }
    }
    /* drop requests whose sequences all finished */
    uint64_t done = 0;
    int queued = 0;
    cs_req *prev = NULL;
    for (cs_req *r = s->live; r;) {
        cs_req *next = r->next;
        if (r->n_unfinished == 0) {
            if (prev) prev->next = next;
            else s->live = next;
            if (s->live_tail == r) s->live_tail = prev;
            done++;
            req_release(s, r);
        } else {
            queued += r->n_waiting == r->n_unfinished;
            prev = r;
        }
        r = next;
    }
    uint64_t kv_tokens = 0;
    for (int k = 0; k < R; k++)
        if (s->slot_seq[k]) kv_tokens += s->slot_seq[k]->n_fed;
    cs_kvpool_info pi;
    cs_kvpool_get_info(s->kvp, &pi);
    pthread_mutex_lock(&s->mu);
    s->eng_kv_tokens = kv_tokens;
    s->eng_kv_bytes = (uint64_t)pi.blocks_resident * pi.block_bytes;
    if (nb) {
        s->st.steps++;
        s->st.last_batch_size = nb;
    }
    s->eng_queued = queued;
    s->st.tokens_generated += gen_tokens;
    s->st.prompt_tokens += prompt_tokens;
    s->st.requests_done += done;
    if (!s->live && !s->q_head) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
}

static void *engine_main(void *arg) {
    cs_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (!s->stop && !s->live && !s->q_head) { /* idle: the cache's memory goes back */
            cs_kvpool_trim(s->kvp);
            cs_kvpool_info pi;
            cs_kvpool_get_info(s->kvp, &pi);
            s->eng_kv_bytes = (uint64_t)pi.blocks_resident * pi.block_bytes;
        }
        while (!s->stop && !s->live && !s->q_head) pthread_cond_wait(&s->wake, &s->mu);
        const int stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        iterate(s);
    }
    /* shutting down: whatever is left gets an error */
    pull_pending(s);
    while (s->live) {
        cs_req *r = s->live;
        s->live = r->next;
        if (r->n_unfinished) fail_req(s, r, "server shutting down");
        req_release(s, r);
    }
    s->live_tail = NULL;
    cs_kern_thread_cleanup(); /* this thread's int8 activation scratch (engine/kernels.h) */
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
    if (s->o.max_duration_s == 0) s->o.max_duration_s = CS_SCHED_MAX_DURATION_S;
    const int R = s->o.max_running;
    const cs_gpt2_config *mc = &m->net->cfg;
    size_t kv_tokens = (size_t)R * (size_t)s->o.n_ctx;
    if (s->o.kv_cache_mb > 0 || s->o.kv_cache_tokens > 0) {
        const size_t per_tok = cs_kvpool_bytes_per_token((size_t)mc->n_layer, (size_t)mc->n_embd, (size_t)mc->n_head, s->o.kv_dtype);
        kv_tokens = s->o.kv_cache_tokens > 0 ? (size_t)s->o.kv_cache_tokens
                                             : ((size_t)s->o.kv_cache_mb << 20) / per_tok / CS_KV_BLOCK * CS_KV_BLOCK;
        if (kv_tokens < CS_KV_BLOCK) {
            cs_err_set(err, "a %d MB KV cache holds no block of %d tokens (%zu bytes each) for this model",
                       s->o.kv_cache_mb, CS_KV_BLOCK, per_tok * CS_KV_BLOCK);
            free(s);
            return -1;
        }
        if (kv_tokens < (size_t)s->o.n_ctx) s->o.n_ctx = (int)kv_tokens; /* a sequence must fit alone */
    }
    const size_t V = (size_t)m->net->cfg.vocab_size;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->idle, NULL);
    s->kv = calloc((size_t)R, sizeof *s->kv);
    s->order = calloc((size_t)R, sizeof *s->order);
    s->slot_seq = calloc((size_t)R, sizeof *s->slot_seq);
    s->batch = calloc((size_t)R, sizeof *s->batch);
    s->batch_seq = calloc((size_t)R, sizeof *s->batch_seq);
    s->pre = calloc((size_t)R, sizeof *s->pre);
    s->logits = malloc((size_t)R * V * sizeof(float));
    s->picked = calloc((size_t)R, sizeof *s->picked);
    if (!s->kv || !s->order || !s->slot_seq || !s->batch || !s->batch_seq || !s->pre || !s->logits || !s->picked) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    if (cs_kvpool_create(&s->kvp, (size_t)mc->n_layer, (size_t)mc->n_embd, (size_t)mc->n_head, s->o.kv_dtype, kv_tokens, err)) goto fail;
    cs_kvpool_info pi;
    cs_kvpool_get_info(s->kvp, &pi);
    s->eng_kv_capacity = (uint64_t)pi.blocks_total * CS_KV_BLOCK;
    s->eng_kv_bpt = pi.bytes_per_token;
    if (cs_pool_create(&s->pool, s->o.threads, err)) goto fail;
    s->smp = calloc((size_t)cs_pool_size(s->pool), sizeof *s->smp);
    if (!s->smp) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    for (; s->n_smp < cs_pool_size(s->pool); s->n_smp++)
        if (cs_sampler_init(&s->smp[s->n_smp], V, err)) goto fail;
    if (cs_gpt2_ws_init(&s->ws, m->net, s->o.step_tokens, R, s->pool, err)) goto fail;
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
    for (int i = 0; i < s->n_smp; i++) cs_sampler_free(&s->smp[i]);
    free(s->smp);
    cs_pool_free(s->pool);
    cs_kvpool_free(s->kvp);
    free(s->kv);
    free(s->order);
    free(s->slot_seq);
    free(s->batch);
    free(s->batch_seq);
    free(s->pre);
    free(s->logits);
    free(s->picked);
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
    while (s->groups) { /* only groups whose requests were never submitted in full */
        grp *g = s->groups;
        s->groups = g->next;
        free(g);
    }
    for (int i = 0; i < s->o.max_running; i++) cs_gpt2_kv_free(&s->kv[i]);
    cs_kvpool_free(s->kvp);
    cs_gpt2_ws_free(&s->ws);
    for (int i = 0; i < s->n_smp; i++) cs_sampler_free(&s->smp[i]);
    free(s->smp);
    cs_pool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->idle);
    free(s->kv);
    free(s->order);
    free(s->slot_seq);
    free(s->batch);
    free(s->batch_seq);
    free(s->pre);
    free(s->logits);
    free(s->picked);
    free(s);
}

/* Room for n more sequences of group key (NULL: none); takes it and returns
 * the group, or NULL with *rc set. Caller holds mu. */
static grp *admit_locked(cs_sched *s, const void *key, int n, int group_seqs, int *rc) {
    const int cap = s->o.max_running + s->o.max_queued;
    const int used = atomic_load(&s->n_live_seqs) + s->n_reserved;
    grp *g = NULL;
    if (key)
        for (g = s->groups; g && g->key != key; g = g->next) {
        }
    if (g) { /* a later member: its room was reserved with the first */
        const int take = g->reserved < n ? g->reserved : n;
        if (used + (n - take) > cap) return *rc = CS_SCHED_FULL, NULL;
        g->reserved -= take;
        s->n_reserved -= take;
    } else {
        const int need = group_seqs > n ? group_seqs : n;
        if (used + need > cap) return *rc = CS_SCHED_FULL, NULL;
        if (!(g = calloc(1, sizeof *g))) return *rc = CS_SCHED_INVALID, NULL;
        g->key = key;
        g->reserved = need - n;
        g->ticket = s->next_ticket++;
        s->n_reserved += g->reserved;
        g->next = s->groups;
        s->groups = g;
    }
    g->n_reqs++;
    atomic_fetch_add(&s->n_live_seqs, n);
    return g;
}

int cs_sched_submit(cs_sched *s, const cs_req_params *p, cs_req_cb cb, void *ud, cs_req **out, cs_err *err) {
    if (out) *out = NULL;
    if (!cb) return cs_err_set(err, "no callback"), CS_SCHED_INVALID;
    const int n_seqs = p->n_seqs > 0 ? p->n_seqs : 1;
    const int cap = s->o.max_running + s->o.max_queued, total = p->group_seqs > n_seqs ? p->group_seqs : n_seqs;
    if (total > cap) {
        cs_err_set(err,
                   "%d sequences requested (prompts x n), at most %d per request (max_ongoing_requests %d + "
                   "max_queued_requests %d)",
                   total, cap, s->o.max_running, s->o.max_queued);
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
    r->n_seqs = r->n_unfinished = r->n_waiting = n_seqs;
    r->t_submit = now_s();
    for (int i = 0; i < n_seqs; i++) {
        seq *q = &r->seqs[i];
        q->slot = -1;
        q->r = r;
        q->idx = i;
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
    else r->g = admit_locked(s, p->group, n_seqs, p->group_seqs, &rc);
    if (rc == CS_SCHED_OK) {
        if (s->q_tail) s->q_tail->next = r;
        else s->q_head = r;
        s->q_tail = r;
        s->n_pending++;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != CS_SCHED_OK) {
        if (rc == CS_SCHED_INVALID) cs_err_set(err, "out of memory");
        else
            cs_err_set(err, rc == CS_SCHED_FULL ? "server overloaded: %d running and %d queued sequences"
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

int cs_sched_room(cs_sched *s) {
    pthread_mutex_lock(&s->mu);
    const int room = s->o.max_running + s->o.max_queued - atomic_load(&s->n_live_seqs) - s->n_reserved;
    pthread_mutex_unlock(&s->mu);
    return room;
}

void cs_sched_stats_get(cs_sched *s, cs_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->running = atomic_load(&s->n_running_seqs);
    st->queued = s->n_pending + s->eng_queued;
    st->waiting = atomic_load(&s->n_live_seqs) - st->running;
    if (st->waiting < 0) st->waiting = 0; /* the two counters are read a moment apart */
    st->kv_tokens = s->eng_kv_tokens;
    st->kv_capacity = s->eng_kv_capacity;
    st->kv_bytes = s->eng_kv_bytes;
    st->kv_bytes_per_token = s->eng_kv_bpt;
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
    while (atomic_load(&s->n_live_seqs) > 0 && !s->stop)
        if (pthread_cond_timedwait(&s->idle, &s->mu, &dl) != 0) break;
    int left = atomic_load(&s->n_live_seqs);
    pthread_mutex_unlock(&s->mu);
    return left;
}
