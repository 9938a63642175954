/* cserve bench: engine micro-benchmarks on a model directory, printed as one
 * JSON object (bench/ runs it next to the peers).
 *
 *   prefill: one sequence, a PROMPT_LEN-token prompt, time to its last logits.
 *   decode:  B sequences each prefilled with a 16-token prompt, then GEN tokens
 *            each, greedy, EOS ignored; time of the decode steps only, of
 *            the second of two such passes (the first warms up);
 *            aggregate tokens/s = B * GEN / time.
 * Prompt ids are ids[i] = (i * 7919 + 13) % 50000 (bench/ uses the same). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine/gpt2.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/threadpool.h"

int cs_cmd_bench(int argc, char **argv);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f) {
    fprintf(f, "usage: cserve bench --model DIR [--dtype fp32|bf16|int8] [--threads N] [--prompt-len 128]\n"
               "                    [--gen 64] [--batches 1,4,16,64] [--kv-cache-dtype auto|fp32|bf16|int8]\n"
               "       cserve bench --kv-memory   (KV cache memory of distilgpt2 / gpt2-large shapes; no model)\n"
               "       cserve bench --attention   (decode attention over a paged KV cache, one thread; no model)\n");
}

static int32_t bench_id(int i) { return (int32_t)(((long)i * 7919 + 13) % 50000); }

/* Greedy choice through the sampler, as a server's greedy request makes it. */
static int32_t greedy_pick(cs_sampler *s, float *logits) {
    static const cs_sample_params greedy = {.do_sample = 0, .temperature = 1, .top_k = 0, .top_p = 1,
                                            .repetition_penalty = 1};
    return cs_sampler_pick(s, &greedy, logits, NULL, 0, NULL);
}

/* The decode loop picks its B tokens as the server's scheduler does: rows
 * split over the pool when there are 8 or more, a sampler per thread. */
typedef struct pick_ctx {
    cs_sampler *smp;
    float *logits;
    int32_t *next;
    size_t V;
} pick_ctx;

static void job_pick(void *vc, int tid, size_t b0, size_t b1) {
    pick_ctx *c = vc;
    for (size_t b = b0; b < b1; b++) c->next[b] = greedy_pick(&c->smp[tid], c->logits + b * c->V);
}

static int fail(const cs_err *err) {
    fprintf(stderr, "cserve bench: %s\n", err->msg);
    return 1;
}

/* Resident memory of this process in bytes (/proc/self/statm). */
static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (!f) return 0;
    if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
    fclose(f);
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* --kv-memory: for distilgpt2's and gpt2-large's shapes and each KV dtype, a
 * 4 GiB pool is filled with 512-token sequences (every block written), and
 * the process's resident memory is read before and after: sequences that fit,
 * and measured bytes per 1,000 cached tokens. Also what the same 4 GiB held
 * as one full-context (1,024-token) buffer per slot, as before paging. */
static int kv_memory_report(void) {
    static const struct {
        const char *name;
        size_t L, C, H, ctx;
    } shapes[] = {{"distilgpt2", 6, 768, 12, 1024}, {"gpt2-large", 36, 1280, 20, 1024}};
    const size_t budget = (size_t)4 << 30, seq_tokens = 512, seq_blocks = seq_tokens / CS_KV_BLOCK;
    printf("{\"kv_memory\": [");
    int first = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int dt = CS_KV_F32; dt <= CS_KV_I8; dt++) {
            const size_t per_tok = cs_kvpool_bytes_per_token(shapes[si].L, shapes[si].C, shapes[si].H, (cs_kvdtype)dt);
            cs_kvpool *p;
            cs_err err;
            if (cs_kvpool_create(&p, shapes[si].L, shapes[si].C, shapes[si].H, (cs_kvdtype)dt,
                                 budget / per_tok / CS_KV_BLOCK * CS_KV_BLOCK, &err))
                return fail(&err);
            cs_kvpool_info pi;
            cs_kvpool_get_info(p, &pi);
            const size_t r0 = rss_bytes();
            size_t seqs = 0;
            for (;;) { /* a sequence takes its 32 blocks or none */
                if (cs_kvpool_free_blocks(p) < seq_blocks) break;
                for (size_t b = 0; b < seq_blocks; b++) memset(cs_kvpool_alloc(p), 1, pi.block_bytes);
                seqs++;
            }
            const size_t r1 = rss_bytes();
            const double tokens = (double)seqs * (double)seq_tokens;
            printf("%s{\"shape\": \"%s\", \"n_layer\": %zu, \"n_embd\": %zu, \"kv_dtype\": \"%s\", "
                   "\"bytes_per_1000_tokens\": %zu, \"measured_rss_per_1000_tokens\": %.0f, "
                   "\"block_bytes\": %zu, \"seqs_512_in_4gib\": %zu, \"full_context_slots_in_4gib\": %zu}",
                   first ? "" : ", ", shapes[si].name, shapes[si].L, shapes[si].C, cs_kvdtype_name((cs_kvdtype)dt),
                   per_tok * 1000, tokens > 0 ? (double)(r1 - r0) / tokens * 1000.0 : 0.0, pi.block_bytes, seqs,
                   budget / (shapes[si].ctx * shapes[si].L * 2 * shapes[si].C * 4));
            fflush(stdout);
            first = 0;
            cs_kvpool_free(p);
        }
    printf("]}\n");
    return 0;
}


/* --attention: one decode step's attention for 32 sequences of distilgpt2's
 * shape (6 layers x 12 heads of 64) at 64, 256 and 1,024 cached positions,
 * one thread, fp32, bf16 and int8 caches. The pool is the engine's: the sequences
 * take their blocks in lockstep, as a batch that grows together does, so one
 * sequence's blocks lie 32 blocks apart. Reports the best of 5 passes and the
 * cache bytes read per second, for the table's attend kernel and for the
 * per-key form (cs_attend_generic: the same table's dot and axpy called key by
 * key), in the same run. */
static int attention_report(void) {
    enum { S = 32, L = 6, H = 12, HD = 64, C = H * HD, REPS = 5, MAXN = 1024 };
    static const size_t ctxs[] = {64, 256, MAXN};
    const cs_kern *k = cs_kern_best();
    float q[HD], out[HD], *att = malloc(MAXN * sizeof(float));
    void **blk = malloc(sizeof(void *) * S * (MAXN / CS_KV_BLOCK));
    if (!att || !blk) return 1;
    for (int i = 0; i < HD; i++) q[i] = 0.05f * (float)((i * 37) % 23 - 11);
    printf("{\"kernels\": \"%s\", \"sequences\": %d, \"n_layer\": %d, \"n_head\": %d, \"head_dim\": %d, "
           "\"attention\": [", k->name, S, L, H, HD);
    int first = 1;
    for (size_t ci = 0; ci < sizeof ctxs / sizeof *ctxs; ci++)
        for (int dt = CS_KV_F32; dt <= CS_KV_I8; dt++) {
            const size_t n = ctxs[ci], nb = n / CS_KV_BLOCK;
            const cs_kvdtype kd = (cs_kvdtype)dt;
            const size_t rb = cs_kv_row_bytes(kd, HD); /* one cached row of a head */
            cs_kvpool *p;
            cs_err err;
            if (cs_kvpool_create(&p, L, C, H, kd, S * n, &err)) return fail(&err);
            uint32_t x = 12345;
            for (size_t b = 0; b < nb; b++)
                for (size_t sq = 0; sq < S; sq++) {
                    char *bk = blk[sq * nb + b] = cs_kvpool_alloc(p);
                    for (size_t r = 0; r < (size_t)L * 2 * H * CS_KV_BLOCK; r++) { /* every row of the block */
                        float v[HD];
                        for (size_t e = 0; e < HD; e++) {
                            x = x * 1664525u + 1013904223u;
                            v[e] = (float)(x >> 8) / 16777216.0f - 0.5f;
                        }
                        char *row = bk + r * rb;
                        if (kd == CS_KV_I8) cs_kv_quantize_row(v, HD, (int8_t *)row);
                        else if (kd == CS_KV_BF16)
                            for (size_t e = 0; e < HD; e++) ((uint16_t *)(void *)row)[e] = cs_bf16_from_f32(v[e]);
                        else memcpy(row, v, sizeof v);
                    }
                }
            double best[2] = {1e30, 1e30};
            for (int rep = 0; rep < REPS; rep++)
                for (int form = 0; form < 2; form++) {
                    const double t0 = now_s();
                    for (size_t l = 0; l < L; l++)
                        for (size_t sq = 0; sq < S; sq++)
                            for (size_t h = 0; h < H; h++) {
                                const cs_kvhead kh = cs_kvpool_head(p, blk + sq * nb, l, h);
                                if (form == 0)
                                    (kd == CS_KV_I8     ? k->attend_i8
                                     : kd == CS_KV_BF16 ? k->attend_bf16
                                                        : k->attend)(q, &kh, n, HD, 0.125f, att, out);
                                else if (kd == CS_KV_I8) cs_attend_i8_generic(k, q, &kh, n, HD, 0.125f, att, out);
                                else if (kd == CS_KV_BF16) cs_attend_bf16_generic(k, q, &kh, n, HD, 0.125f, att, out);
                                else cs_attend_generic(k, q, &kh, n, HD, 0.125f, att, out);
                            }
                    const double t = now_s() - t0;
                    if (t < best[form]) best[form] = t;
                }
            const double bytes = (double)S * (double)n * L * 2.0 * H * (double)rb;
            printf("%s{\"positions\": %zu, \"kv_dtype\": \"%s\", \"cache_mb\": %.1f, \"kernel_ms\": %.3f, "
                   "\"kernel_gbs\": %.2f, \"per_key_ms\": %.3f, \"per_key_gbs\": %.2f}",
                   first ? "" : ", ", n, cs_kvdtype_name(kd), bytes / 1e6, best[0] * 1e3, bytes / best[0] / 1e9,
                   best[1] * 1e3, bytes / best[1] / 1e9);
            fflush(stdout);
            first = 0;
            cs_kvpool_free(p);
        }
    printf("]}\n");
    free(att);
    free(blk);
    return 0;
}

int cs_cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"dtype", required_argument, 0, 'd'},
        {"threads", required_argument, 0, 't'}, {"prompt-len", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'g'},     {"batches", required_argument, 0, 'b'},
        {"kv-cache-dtype", required_argument, 0, 'k'}, {"kv-memory", no_argument, 0, 'K'},
        {"attention", no_argument, 0, 'A'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *dir = NULL, *dtype = "fp32", *batches = "1,4,16,64", *kvdt = "auto";
    int threads = 0, prompt_len = 128, gen = 64, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:d:t:p:g:b:k:KAh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'd': dtype = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'p': prompt_len = atoi(optarg); break;
        case 'g': gen = atoi(optarg); break;
        case 'b': batches = optarg; break;
        case 'k': kvdt = optarg; break;
        case 'K': return kv_memory_report();
        case 'A': return attention_report();
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    cs_gpt2_opts mo = {0};
    cs_kvdtype kdt = CS_KV_F32;
    if (!dir || prompt_len < 1 || gen < 1 || cs_wdtype_parse(dtype, &mo.dtype) || cs_kvdtype_resolve(kvdt, mo.dtype, &kdt)) {
        usage(stderr);
        return 2;
    }
    cs_err err;
    double t0 = now_s();
    cs_model *m = NULL;
    cs_pool *pool = NULL;
    if (cs_model_load_opts(&m, dir, &mo, &err)) return fail(&err);
    const double load_s = now_s() - t0;
    if (cs_pool_create(&pool, threads, &err)) return fail(&err);
    const cs_gpt2 *net = m->net;
    const size_t V = (size_t)net->cfg.vocab_size;
    cs_sampler *smps = calloc((size_t)cs_pool_size(pool), sizeof *smps); /* smps[0]: this thread's */
    if (!smps) return 1;
    for (int i = 0; i < cs_pool_size(pool); i++)
        if (cs_sampler_init(&smps[i], V, &err)) return fail(&err);
    if (prompt_len + 1 > net->cfg.n_positions || 16 + gen > net->cfg.n_positions) {
        fprintf(stderr, "cserve bench: prompt/gen exceed the model's %d positions\n", net->cfg.n_positions);
        return 2;
    }
    int maxB = 1;
    for (const char *p = batches; *p;) {
        int b = atoi(p);
        if (b > maxB) maxB = b;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    float *logits = malloc((size_t)maxB * V * sizeof(float));
    int32_t *ids = malloc((size_t)prompt_len * sizeof(int32_t));
    if (!logits || !ids) return 1;
    for (int i = 0; i < prompt_len; i++) ids[i] = bench_id(i);
    cs_gpt2_state st;
    if (cs_gpt2_state_init(&st, net, prompt_len + 1, prompt_len, pool, &err)) return fail(&err);
    /* As the peers' runners: one untimed call at full size (first touch of the weights and of
     * the scratch for prompt_len rows), then the best of 3. */
    double prefill_s = 0;
    for (int r = -1; r < 3; r++) {
        cs_gpt2_state_reset(&st);
        t0 = now_s();
        if (cs_gpt2_forward(net, &st, ids, (size_t)prompt_len, logits, 0, &err)) return fail(&err);
        const double dt = now_s() - t0;
        if (r == 0 || (r > 0 && dt < prefill_s)) prefill_s = dt;
    }
    cs_gpt2_state_free(&st);
    printf("{\"engine\": \"cserve\", \"dtype\": \"%s\", \"kv_cache_dtype\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, \"load_s\": %.4f, "
           "\"packed_cache_hit\": %s, \"prefill_tokens\": %d, \"prefill_tokens_per_s\": %.2f, \"gen\": %d, \"decode\": {",
           cs_wdtype_name(mo.dtype), cs_kvdtype_name(kdt), net->kern->name, cs_pool_size(pool), load_s, net->from_cache ? "true" : "false",
           prompt_len, prompt_len / prefill_s, gen);
    char *list = strdup(batches), *save = NULL;
    int first = 1;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        const int B = atoi(tok);
        if (B < 1) continue;
        cs_gpt2_kv *kv = calloc((size_t)B, sizeof *kv);
        cs_gpt2_seq *sq = calloc((size_t)B, sizeof *sq);
        int32_t *next = malloc((size_t)B * sizeof *next);
        cs_gpt2_ws ws;
        cs_kvpool *kvp; /* one pool for the batch, as a server's scheduler has */
        if (!kv || !sq || !next || cs_gpt2_ws_init(&ws, net, B > 16 ? B : 16, B, pool, &err)) return 1;
        if (cs_kvpool_create(&kvp, (size_t)net->cfg.n_layer, (size_t)net->cfg.n_embd, (size_t)net->cfg.n_head, kdt, (size_t)B * (16 + gen + 16),
                             &err))
            return fail(&err);
        for (int b = 0; b < B; b++)
            if (cs_gpt2_kv_attach(&kv[b], net, kvp, 16 + gen, &err)) return fail(&err);
        /* Twice, the first untimed, as the peers' runners warm up at full size:
         * the pool's pages and the rows of logits are first touched there (a
         * page fault and a cleared 2 MB page every few new blocks; a running
         * server has them), so the timed pass measures the steps alone. */
        double dt = 0;
        for (int rep = 0; rep < 2; rep++) {
            for (int b = 0; b < B; b++) {
                cs_gpt2_kv_clear(&kv[b]);
                cs_gpt2_seq q = {.kv = &kv[b], .tokens = ids, .n = 16, .logits = logits};
                if (cs_gpt2_step(net, &ws, &q, 1, &err)) return fail(&err);
                next[b] = greedy_pick(&smps[0], logits);
            }
            t0 = now_s();
            for (int g = 0; g < gen; g++) {
                for (int b = 0; b < B; b++)
                    sq[b] = (cs_gpt2_seq){.kv = &kv[b], .tokens = &next[b], .n = 1, .logits = logits + (size_t)b * V};
                if (cs_gpt2_step(net, &ws, sq, B, &err)) return fail(&err);
                pick_ctx pc = {.smp = smps, .logits = logits, .next = next, .V = V};
                if (B >= 8) cs_pool_for(pool, (size_t)B, 4, job_pick, &pc);
                else job_pick(&pc, 0, 0, (size_t)B);
            }
            dt = now_s() - t0;
        }
        printf("%s\"%d\": %.2f", first ? "" : ", ", B, (double)B * gen / dt);
        fflush(stdout);
        first = 0;
        for (int b = 0; b < B; b++) cs_gpt2_kv_free(&kv[b]);
        cs_kvpool_free(kvp);
        cs_gpt2_ws_free(&ws);
        free(kv);
        free(sq);
        free(next);
    }
    free(list);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("}, \"peak_rss_mb\": %.1f}\n", ru.ru_maxrss / 1024.0);
    free(logits);
    free(ids);
    for (int i = 0; i < cs_pool_size(pool); i++) cs_sampler_free(&smps[i]);
    free(smps);
    cs_pool_free(pool);
    cs_model_free(m);
    return 0;
}
