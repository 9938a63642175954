/* The continuous-batching scheduler: results equal one-at-a-time generation
 * whatever else is in the batch; admission, cancellation, stop, drain. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/model.h"
#include "serve/sched.h"

static cs_model *M;

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t toks[4][256];
    int n[4];
    int done[4];
    cs_finish finish[4];
    int error, finals, n_seqs, stop_after;
    cs_sched *s;
    cs_req *cancel_me; /* cancel this one when our first token arrives */
    struct rec *watch; /* at our last DONE, note how many sequences watch had finished */
    int watch_finals;
    int sleep_us;      /* per token: makes a request slow */
} rec;

static void rec_init(rec *r, int n_seqs) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->n_seqs = n_seqs;
}

static int on_event(void *ud, const cs_req_event *ev) {
    rec *r = ud;
    int stop = 0;
    pthread_mutex_lock(&r->mu);
    if (ev->type == CS_EV_TOKEN) {
        r->toks[ev->seq_index][r->n[ev->seq_index]++] = ev->token;
        stop = r->stop_after && r->n[ev->seq_index] >= r->stop_after;
        if (r->cancel_me) {
            cs_sched_cancel(r->s, r->cancel_me);
            r->cancel_me = NULL;
        }
    } else if (ev->type == CS_EV_DONE) {
        r->done[ev->seq_index] = 1;
        r->finish[ev->seq_index] = ev->finish;
        if (++r->finals == r->n_seqs) {
            if (r->watch) { /* same engine thread as the watched one's callbacks: no race */
                pthread_mutex_lock(&r->watch->mu);
                r->watch_finals = r->watch->finals;
                pthread_mutex_unlock(&r->watch->mu);
            }
            pthread_cond_broadcast(&r->cv);
        }
    } else {
        r->error = 1;
        r->finals = r->n_seqs;
        pthread_cond_broadcast(&r->cv);
    }
    const int sleep_us = r->sleep_us;
    pthread_mutex_unlock(&r->mu);
    if (sleep_us && ev->type == CS_EV_TOKEN) usleep((useconds_t)sleep_us);
    return stop;
}

static void rec_wait(rec *r) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    pthread_mutex_lock(&r->mu);
    while (r->finals < r->n_seqs)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) != 0) fail_msg("request did not finish in 60 s");
    pthread_mutex_unlock(&r->mu);
}

static int setup(void **state) {
    (void)state;
    cs_err err;
    if (cs_model_load(&M, "build/models/tiny", &err)) fail_msg("%s", err.msg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    cs_model_free(M);
    return 0;
}

static const int32_t PROMPTS[4][8] = {{7454, 2402, 257, 640}, {464, 2068, 7586, 21831, 18045, 625, 262, 16931},
                                      {15496, 11, 995}, {40}};
static const int PLEN[4] = {4, 8, 3, 1};

static cs_req_params params(int i, int max_new, int sample, uint64_t seed) {
    cs_req_params p = {.prompt = PROMPTS[i], .n_prompt = (size_t)PLEN[i], .n_seqs = 1, .seed = seed};
    cs_gen_params_builtin(&p.gen);
    p.gen.max_new_tokens = max_new;
    p.gen.ignore_eos = 1;
    p.gen.sample.do_sample = sample;
    p.gen.sample.top_k = 0;
    return p;
}

/* Greedy through the scheduler, four requests at once with different prompt
 * and output lengths, equals cs_gen_run for each alone. */
static void test_batched_equals_alone(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 4, .max_queued = 4, .step_tokens = 5, .threads = 2};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec r[4];
    const int lens[4] = {20, 7, 33, 12};
    for (int i = 0; i < 4; i++) {
        rec_init(&r[i], 1);
        cs_req_params p = params(i, lens[i], 0, 0);
        assert_int_equal(cs_sched_submit(s, &p, on_event, &r[i], NULL, &err), CS_SCHED_OK);
    }
    cs_gen g;
    assert_int_equal(cs_gen_init(&g, M->net, 0, &err), 0);
    for (int i = 0; i < 4; i++) {
        rec_wait(&r[i]);
        cs_req_params p = params(i, lens[i], 0, 0);
        cs_gen_result res;
        assert_int_equal(cs_gen_run(&g, &p.gen, p.prompt, p.n_prompt, NULL, NULL, NULL, &res, &err), 0);
        assert_int_equal(r[i].n[0], lens[i]);
        assert_memory_equal(r[i].toks[0], res.tokens, (size_t)lens[i] * sizeof(int32_t));
        assert_int_equal(r[i].finish[0], CS_FINISH_LENGTH);
    }
    cs_gen_free(&g);
    cs_sched_stats st;
    cs_sched_stats_get(s, &st);
    assert_true(st.steps > 0);
    assert_int_equal(st.tokens_generated, 20 + 7 + 33 + 12);
    cs_sched_free(s);
}

/* A seeded sampled request gives the same tokens alone and inside a busy batch;
 * several sequences of one request differ from each other. With 3 threads and
 * batches of 8 rows or more, rows are sampled in parallel (job_pick). */
static void test_seeded_sampling_independent_of_batch(void **state) {
    (void)state;
    for (int threads = 1; threads <= 3; threads += 2) {
        cs_sched *s;
        cs_err err;
        cs_sched_opts o = {.max_running = 12, .max_queued = 12, .threads = threads};
        assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
        rec a, b, noise[9];
        rec_init(&a, 1);
        cs_req_params p = params(0, 24, 1, 77);
        assert_int_equal(cs_sched_submit(s, &p, on_event, &a, NULL, &err), CS_SCHED_OK);
        rec_wait(&a);
        for (int i = 0; i < 9; i++) {
            rec_init(&noise[i], 1);
            cs_req_params q = params(1 + i % 3, 30, i % 3 != 2, 1000 + i); /* greedy rows among them */
            assert_int_equal(cs_sched_submit(s, &q, on_event, &noise[i], NULL, &err), CS_SCHED_OK);
        }
        rec_init(&b, 1);
        assert_int_equal(cs_sched_submit(s, &p, on_event, &b, NULL, &err), CS_SCHED_OK);
        rec_wait(&b);
        for (int i = 0; i < 9; i++) rec_wait(&noise[i]);
        assert_memory_equal(a.toks[0], b.toks[0], 24 * sizeof(int32_t));
        rec m;
        rec_init(&m, 3);
        p.n_seqs = 3;
        assert_int_equal(cs_sched_submit(s, &p, on_event, &m, NULL, &err), CS_SCHED_OK);
        rec_wait(&m);
        assert_int_equal(m.n[0], 24);
        assert_int_equal(m.n[2], 24);
        assert_memory_not_equal(m.toks[1], m.toks[2], 24 * sizeof(int32_t));
        cs_sched_free(s);
    }
}

static void test_admission_cancel_stop(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 1, .max_queued = 1, .threads = 1};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec r1, r2, r3;
    rec_init(&r1, 1);
    rec_init(&r2, 1);
    rec_init(&r3, 1);
    cs_req_params longp = params(0, 120, 0, 0);
    cs_req *h1;
    assert_int_equal(cs_sched_submit(s, &longp, on_event, &r1, &h1, &err), CS_SCHED_OK);
    assert_int_equal(cs_sched_submit(s, &longp, on_event, &r2, NULL, &err), CS_SCHED_OK);
    /* one running + one queued: the third is refused at once */
    int rc = cs_sched_submit(s, &longp, on_event, &r3, NULL, &err);
    if (rc == CS_SCHED_OK) { /* r1 may have finished already on a very fast machine; then r3 queued */
        rec_wait(&r3);
    } else {
        assert_int_equal(rc, CS_SCHED_FULL);
        assert_non_null(strstr(err.msg, "overloaded"));
    }
    cs_sched_cancel(s, h1);
    rec_wait(&r1);
    assert_true(r1.finish[0] == CS_FINISH_STOPPED || r1.n[0] == 120);
    assert_true(r1.n[0] <= 120);
    rec_wait(&r2);
    assert_int_equal(r2.n[0], 120);
    /* the callback asks to stop after 5 tokens */
    rec r4;
    rec_init(&r4, 1);
    r4.stop_after = 5;
    assert_int_equal(cs_sched_submit(s, &longp, on_event, &r4, NULL, &err), CS_SCHED_OK);
    rec_wait(&r4);
    assert_int_equal(r4.n[0], 5);
    assert_int_equal(r4.finish[0], CS_FINISH_STOPPED);
    /* zero new tokens: finished without output */
    rec r5;
    rec_init(&r5, 1);
    cs_req_params zero = params(1, 0, 0, 0);
    assert_int_equal(cs_sched_submit(s, &zero, on_event, &r5, NULL, &err), CS_SCHED_OK);
    rec_wait(&r5);
    assert_int_equal(r5.n[0], 0);
    /* invalid requests never call back */
    cs_req_params bad = params(0, 10, 0, 0);
    bad.n_prompt = 0;
    assert_int_equal(cs_sched_submit(s, &bad, on_event, &r5, NULL, &err), CS_SCHED_INVALID);
    assert_non_null(strstr(err.msg, "empty prompt"));
    bad = params(0, 100000, 0, 0);
    assert_int_equal(cs_sched_submit(s, &bad, on_event, &r5, NULL, &err), CS_SCHED_INVALID);
    assert_non_null(strstr(err.msg, "context"));
    bad = params(0, 10, 0, 0);
    bad.n_seqs = 3; /* more than max_running + max_queued: could never run */
    assert_int_equal(cs_sched_submit(s, &bad, on_event, &r5, NULL, &err), CS_SCHED_INVALID);
    assert_non_null(strstr(err.msg, "at most 2 per request"));
    bad = params(0, 10, 1, 0);
    bad.gen.sample.top_p = 0;
    assert_int_equal(cs_sched_submit(s, &bad, on_event, &r5, NULL, &err), CS_SCHED_INVALID);
    int32_t oov = 1 << 30;
    bad = params(0, 10, 0, 0);
    bad.prompt = &oov;
    bad.n_prompt = 1;
    assert_int_equal(cs_sched_submit(s, &bad, on_event, &r5, NULL, &err), CS_SCHED_INVALID);
    cs_sched_stats st;
    cs_sched_stats_get(s, &st);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.queued, 0);
    cs_sched_free(s);
}

/* Cancelling from inside another request's callback (as the HTTP layer may). */
static void test_cancel_from_callback(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 4, .max_queued = 4, .threads = 1};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec victim, killer;
    rec_init(&victim, 1);
    rec_init(&killer, 1);
    cs_req_params p = params(0, 100, 0, 0);
    cs_req *hv;
    assert_int_equal(cs_sched_submit(s, &p, on_event, &victim, &hv, &err), CS_SCHED_OK);
    killer.s = s;
    killer.cancel_me = hv;
    cs_req_params q = params(1, 3, 0, 0);
    assert_int_equal(cs_sched_submit(s, &q, on_event, &killer, NULL, &err), CS_SCHED_OK);
    rec_wait(&killer);
    rec_wait(&victim);
    assert_int_equal(victim.finish[0], CS_FINISH_STOPPED);
    assert_true(victim.n[0] < 100);
    cs_sched_free(s);
}

static void test_drain(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 2, .max_queued = 8, .threads = 1};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec r[4];
    for (int i = 0; i < 4; i++) {
        rec_init(&r[i], 1);
        cs_req_params p = params(i, 30, 0, 0);
        assert_int_equal(cs_sched_submit(s, &p, on_event, &r[i], NULL, &err), CS_SCHED_OK);
    }
    assert_int_equal(cs_sched_drain(s, 60), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].finals, 1);
        assert_int_equal(r[i].n[0], 30);
    }
    rec late;
    rec_init(&late, 1);
    cs_req_params p = params(0, 3, 0, 0);
    assert_int_equal(cs_sched_submit(s, &p, on_event, &late, NULL, &err), CS_SCHED_DRAINING);
    cs_sched_free(s);
    /* freeing with work in flight: every request still gets a final event */
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec busy[3];
    for (int i = 0; i < 3; i++) {
        rec_init(&busy[i], 1);
        cs_req_params q = params(i, 100, 0, 0);
        assert_int_equal(cs_sched_submit(s, &q, on_event, &busy[i], NULL, &err), CS_SCHED_OK);
    }
    cs_sched_free(s);
    for (int i = 0; i < 3; i++) assert_int_equal(busy[i].finals, 1);
}

/* Fair shares: a request of 16 sequences (4 prompts x 4, one group) fills all
 * 4 slots; a small request sent after it gets a slot at once (one of the big
 * one's sequences is preempted) and finishes while none of the 16 has; FIFO
 * admission would have run at least 12 of them to the end first. The
 * preempted sequences, computed again, still give the tokens of a run alone. */
static void test_fair_share_preempts(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 4, .max_queued = 16, .threads = 1};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    static rec big[4];
    int group_key;
    for (int i = 0; i < 4; i++) {
        rec_init(&big[i], 4);
        cs_req_params p = params(i, 100, 0, 0);
        p.n_seqs = 4;
        p.group = &group_key;
        p.group_seqs = i == 0 ? 16 : 0;
        assert_int_equal(cs_sched_submit(s, &p, on_event, &big[i], NULL, &err), CS_SCHED_OK);
    }
    /* wait until the big one holds every slot (each decoding) */
    for (int tries = 0;; tries++) {
        cs_sched_stats st;
        cs_sched_stats_get(s, &st);
        pthread_mutex_lock(&big[0].mu);
        const int started = big[0].n[0] > 0;
        pthread_mutex_unlock(&big[0].mu);
        if (started && st.running == 4) break;
        if (tries > 60000) fail_msg("the big request did not start");
        usleep(1000);
    }
    /* 16 of 20 places are taken: a 5-sequence request does not fit, a 4-sequence one does */
    rec small;
    rec_init(&small, 1);
    cs_req_params p5 = params(1, 4, 0, 0);
    p5.n_seqs = 5;
    assert_int_equal(cs_sched_submit(s, &p5, on_event, &small, NULL, &err), CS_SCHED_FULL);
    cs_req_params ps = params(1, 4, 0, 0);
    small.watch = &big[0];
    assert_int_equal(cs_sched_submit(s, &ps, on_event, &small, NULL, &err), CS_SCHED_OK);
    rec_wait(&small);
    assert_int_equal(small.n[0], 4);
    int big_done = small.watch_finals;
    for (int i = 1; i < 4; i++) {
        pthread_mutex_lock(&big[i].mu);
        big_done += big[i].finals;
        pthread_mutex_unlock(&big[i].mu);
    }
    assert_int_equal(big_done, 0);
    cs_gen g;
    assert_int_equal(cs_gen_init(&g, M->net, 0, &err), 0);
    for (int i = 0; i < 4; i++) {
        rec_wait(&big[i]);
        cs_req_params p = params(i, 100, 0, 0);
        cs_gen_result res;
        assert_int_equal(cs_gen_run(&g, &p.gen, p.prompt, p.n_prompt, NULL, NULL, NULL, &res, &err), 0);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(big[i].n[k], 100);
            assert_memory_equal(big[i].toks[k], res.tokens, 100 * sizeof(int32_t));
        }
    }
    cs_gen_free(&g);
    cs_sched_stats st;
    cs_sched_stats_get(s, &st);
    assert_true(st.preemptions >= 1);
    assert_int_equal(cs_sched_room(s), 20);
    cs_sched_free(s);
}

/* One group's declared size is admitted as a whole or not at all, and a
 * group larger than the server could ever hold is refused as invalid. */
static void test_group_admission(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 2, .max_queued = 4, .threads = 1};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec r[3], other;
    int key;
    cs_req_params p = params(0, 60, 0, 0);
    p.group = &key;
    p.group_seqs = 7;
    rec_init(&r[0], 1);
    assert_int_equal(cs_sched_submit(s, &p, on_event, &r[0], NULL, &err), CS_SCHED_INVALID);
    assert_non_null(strstr(err.msg, "7 sequences requested"));
    r[0].sleep_us = 2000; /* keeps the group alive while the rest is submitted */
    p.group_seqs = 5;
    assert_int_equal(cs_sched_submit(s, &p, on_event, &r[0], NULL, &err), CS_SCHED_OK);
    assert_int_equal(cs_sched_room(s), 1);
    /* another request finds the reserved room taken */
    rec_init(&other, 2);
    cs_req_params q = params(1, 3, 0, 0);
    q.n_seqs = 2;
    assert_int_equal(cs_sched_submit(s, &q, on_event, &other, NULL, &err), CS_SCHED_FULL);
    /* the group's later members use their reservation */
    p.group_seqs = 0;
    p.n_seqs = 2;
    rec_init(&r[1], 2);
    rec_init(&r[2], 2);
    assert_int_equal(cs_sched_submit(s, &p, on_event, &r[1], NULL, &err), CS_SCHED_OK);
    assert_int_equal(cs_sched_submit(s, &p, on_event, &r[2], NULL, &err), CS_SCHED_OK);
    assert_int_equal(cs_sched_room(s), 1);
    for (int i = 0; i < 3; i++) rec_wait(&r[i]);
    assert_int_equal(r[2].n[1], 60);
    assert_int_equal(cs_sched_drain(s, 60), 0);
    cs_sched_free(s);
}

/* A request still generating after max_duration_s is finished (LENGTH) with
 * what it has; the callback's sleep makes 120 tokens take >= 1.2 s. */
static void test_max_duration(void **state) {
    (void)state;
    cs_sched *s;
    cs_err err;
    cs_sched_opts o = {.max_running = 2, .max_queued = 2, .threads = 1, .max_duration_s = 0.2};
    assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
    rec r;
    rec_init(&r, 1);
    r.sleep_us = 10000;
    cs_req_params p = params(0, 120, 0, 0);
    assert_int_equal(cs_sched_submit(s, &p, on_event, &r, NULL, &err), CS_SCHED_OK);
    rec_wait(&r);
    assert_int_equal(r.finish[0], CS_FINISH_LENGTH);
    assert_true(r.n[0] < 120);
    cs_sched_free(s);
}

/* A KV pool far smaller than the running sequences need (16 blocks of 16
 * tokens for 12 sequences of up to 108 tokens): sequences wait for memory and
 * the newest are preempted and computed again, yet every greedy output equals
 * cs_gen_run alone; the pool ends empty. Then a request longer than the pool
 * is refused at submit with the cache's limit. */
static void test_kv_pool_pressure(void **state) {
    (void)state;
    for (int dt = CS_KV_F32; dt <= CS_KV_I8; dt++) {
        cs_sched *s;
        cs_err err;
        cs_sched_opts o = {.max_running = 12, .max_queued = 12, .step_tokens = 16, .threads = 2,
                           .kv_cache_tokens = 16 * CS_KV_BLOCK, .kv_dtype = (cs_kvdtype)dt};
        assert_int_equal(cs_sched_create(&s, M, &o, &err), 0);
        enum { NR = 12 };
        static rec r[NR];
        int lens[NR];
        for (int i = 0; i < NR; i++) {
            lens[i] = 60 + (i * 37) % 41;
            rec_init(&r[i], 1);
            cs_req_params p = params(i % 4, lens[i], 0, 0);
            assert_int_equal(cs_sched_submit(s, &p, on_event, &r[i], NULL, &err), CS_SCHED_OK);
        }
        for (int i = 0; i < NR; i++) rec_wait(&r[i]);
        cs_sched_stats st;
        for (int t = 0; t < 500; t++) { /* the stats follow the last step's callbacks */
            cs_sched_stats_get(s, &st);
            if (st.kv_tokens == 0) break;
            usleep(10000);
        }
        printf("  %s KV, 256-token pool: %llu preemptions, %llu steps\n", cs_kvdtype_name((cs_kvdtype)dt),
               (unsigned long long)st.preemptions, (unsigned long long)st.steps);
        assert_true(st.preemptions > 0);
        assert_int_equal(st.kv_capacity, 16 * CS_KV_BLOCK);
        assert_int_equal(st.kv_tokens, 0);
        if (!dt) { /* fp32: the engine is exact whatever the batch, so each equals the request alone */
            cs_gen g;
            assert_int_equal(cs_gen_init(&g, M->net, 0, &err), 0);
            for (int i = 0; i < NR; i++) {
                cs_req_params p = params(i % 4, lens[i], 0, 0);
                cs_gen_result res;
                assert_int_equal(cs_gen_run(&g, &p.gen, p.prompt, p.n_prompt, NULL, NULL, NULL, &res, &err), 0);
                assert_int_equal(r[i].error, 0);
                assert_int_equal(r[i].n[0], lens[i]);
                assert_memory_equal(r[i].toks[0], res.tokens, (size_t)lens[i] * sizeof(int32_t));
            }
            cs_gen_free(&g);
        } else {
            for (int i = 0; i < NR; i++) {
                assert_int_equal(r[i].error, 0);
                assert_int_equal(r[i].n[0], lens[i]);
            }
            /* sequences with the same prompt and length agree, preempted or not */
            for (int i = 4; i < NR; i++)
                if (lens[i] == lens[i - 4]) assert_memory_equal(r[i].toks[0], r[i - 4].toks[0], (size_t)lens[i] * 4);
        }
        cs_req_params big = params(1, 16 * CS_KV_BLOCK, 0, 0); /* 8 + 256 tokens > the pool */
        assert_int_equal(cs_sched_submit(s, &big, on_event, &r[0], NULL, &err), CS_SCHED_INVALID);
        assert_non_null(strstr(err.msg, "256"));
        cs_sched_free(s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_equals_alone), cmocka_unit_test(test_seeded_sampling_independent_of_batch),
        cmocka_unit_test(test_admission_cancel_stop), cmocka_unit_test(test_cancel_from_callback),
        cmocka_unit_test(test_drain), cmocka_unit_test(test_fair_share_preempts),
        cmocka_unit_test(test_group_admission), cmocka_unit_test(test_max_duration),
        cmocka_unit_test(test_kv_pool_pressure)};
    return cmocka_run_group_tests_name("sched", tests, setup, teardown);
}
