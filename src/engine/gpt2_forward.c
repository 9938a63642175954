/* The batched GPT-2 forward pass (see gpt2.h). Rows are the tokens of all
 * sequences in the step, concatenated: row r belongs to sequence row_seq[r] at
 * absolute position row_pos[r]. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gpt2.h"

#define ATT_ROWS 16 /* prompt rows per attention work item (see job_attention) */

/* int8 KV cache, head sizes a power of two up to KV_ROT_MAX: keys and values
 * are cached rotated by the Walsh-Hadamard transform H (k' = H k, v' = H v),
 * queries turned the same way (q' = H q, scores scaled by 1 / hd more, so
 * q' . k' / hd = q . k) and each output turned back (out = H out' / hd). A
 * channel far larger than the rest (trained models' keys have such) would set
 * a row's int8 step alone; H spreads it over every element of the row. */
#define KV_ROT_MAX 256
static int kv_rotated(cs_kvdtype dt, size_t hd) { return dt == CS_KV_I8 && hd <= KV_ROT_MAX && (hd & (hd - 1)) == 0; }

static int kv_setup(cs_gpt2_kv *kv, const cs_gpt2 *m, cs_kvpool *pool, int own, int n_ctx, cs_err *err) {
    const cs_gpt2_config *c = &m->cfg;
    cs_kvpool_info pi;
    cs_kvpool_get_info(pool, &pi);
    if (pi.n_layer != (size_t)c->n_layer || pi.n_embd != (size_t)c->n_embd || pi.n_head != (size_t)c->n_head) {
        if (own) cs_kvpool_free(pool);
        return cs_err_set(err, "KV cache pool shaped for %zu layers x %zu (%zu heads), the model has %d x %d (%d heads)",
                          pi.n_layer, pi.n_embd, pi.n_head, c->n_layer, c->n_embd, c->n_head);
    }
    if ((size_t)n_ctx > pi.blocks_total * CS_KV_BLOCK) n_ctx = (int)(pi.blocks_total * CS_KV_BLOCK);
    kv->n_ctx = n_ctx;
    kv->pool = pool;
    kv->own_pool = own;
    kv->blk = calloc(((size_t)n_ctx + CS_KV_BLOCK - 1) / CS_KV_BLOCK, sizeof *kv->blk);
    if (!kv->blk) {
        cs_gpt2_kv_free(kv);
        return cs_err_set(err, "out of memory for a %d-token KV cache", n_ctx);
    }
    return 0;
}

int cs_gpt2_kv_init(cs_gpt2_kv *kv, const cs_gpt2 *m, int n_ctx, cs_kvdtype dt, cs_err *err) {
    memset(kv, 0, sizeof *kv);
    const cs_gpt2_config *c = &m->cfg;
    if (n_ctx <= 0 || n_ctx > c->n_positions) n_ctx = c->n_positions;
    cs_kvpool *pool;
    if (cs_kvpool_create(&pool, (size_t)c->n_layer, (size_t)c->n_embd, (size_t)c->n_head, dt, (size_t)n_ctx, err)) return -1;
    return kv_setup(kv, m, pool, 1, n_ctx, err);
}

int cs_gpt2_kv_attach(cs_gpt2_kv *kv, const cs_gpt2 *m, cs_kvpool *pool, int n_ctx, cs_err *err) {
    memset(kv, 0, sizeof *kv);
    if (n_ctx <= 0 || n_ctx > m->cfg.n_positions) n_ctx = m->cfg.n_positions;
    return kv_setup(kv, m, pool, 0, n_ctx, err);
}

int cs_gpt2_kv_blocks_needed(const cs_gpt2_kv *kv, int n_tokens) {
    const int want = (n_tokens + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
    return want > kv->n_blk ? want - kv->n_blk : 0;
}

int cs_gpt2_kv_reserve(cs_gpt2_kv *kv, int n_tokens) {
    if (n_tokens > kv->n_ctx) return -1;
    const int want = (n_tokens + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
    if (want - kv->n_blk > (int)cs_kvpool_free_blocks(kv->pool)) return -1;
    while (kv->n_blk < want) kv->blk[kv->n_blk++] = cs_kvpool_alloc(kv->pool);
    return 0;
}

void cs_gpt2_kv_clear(cs_gpt2_kv *kv) {
    while (kv->n_blk > 0) {
        cs_kvpool_release(kv->pool, kv->blk[--kv->n_blk]);
        kv->blk[kv->n_blk] = NULL;
    }
    kv->n_past = 0;
}

void cs_gpt2_kv_free(cs_gpt2_kv *kv) {
    if (kv->pool && kv->blk) cs_gpt2_kv_clear(kv);
    if (kv->own_pool) cs_kvpool_free(kv->pool);
    free(kv->blk);
    memset(kv, 0, sizeof *kv);
}

int cs_gpt2_ws_init(cs_gpt2_ws *ws, const cs_gpt2 *m, int max_tokens, int max_logit_rows, cs_pool *pool,
                    cs_err *err) {
    memset(ws, 0, sizeof *ws);
    const cs_gpt2_config *c = &m->cfg;
    if (max_tokens < 1) max_tokens = 1;
    if (max_logit_rows < 1) max_logit_rows = 1;
    ws->max_tokens = max_tokens;
    ws->max_logit_rows = max_logit_rows;
    ws->pool = pool;
    ws->n_threads = pool ? cs_pool_size(pool) : 1;
    const size_t T = (size_t)max_tokens, C = (size_t)c->n_embd, F = (size_t)c->n_inner, R = (size_t)max_logit_rows;
    ws->x = malloc(T * C * sizeof(float));
    ws->h = malloc(T * C * sizeof(float));
    ws->qkv = malloc(T * 3 * C * sizeof(float));
    ws->ff = malloc(T * F * sizeof(float));
    ws->att = malloc((size_t)ws->n_threads * ATT_ROWS * (size_t)c->n_positions * sizeof(float));
    ws->lrows = malloc(R * C * sizeof(float));
    ws->logits = malloc(R * (size_t)c->vocab_size * sizeof(float));
    ws->row_seq = malloc(T * sizeof(int));
    ws->row_pos = malloc(T * sizeof(int));
    if (pool && cs_pool_size(pool) > 1) { /* int8 inputs quantized once per matmul (see matmul) */
        const size_t rows = T > R ? T : R, K = (F > C ? F : C) + 3;
        ws->q8 = malloc(rows * K);
        ws->sx8 = malloc(rows * sizeof(float));
        if (!ws->q8 || !ws->sx8) {
            cs_gpt2_ws_free(ws);
            return cs_err_set(err, "out of memory for a %d-token workspace", max_tokens);
        }
    }
    if (!ws->x || !ws->h || !ws->qkv || !ws->ff || !ws->att || !ws->lrows || !ws->logits || !ws->row_seq ||
        !ws->row_pos) {
        cs_gpt2_ws_free(ws);
        return cs_err_set(err, "out of memory for a %d-token workspace", max_tokens);
    }
    return 0;
}

void cs_gpt2_ws_free(cs_gpt2_ws *ws) {
    free(ws->x);
    free(ws->h);
    free(ws->qkv);
    free(ws->ff);
    free(ws->att);
    free(ws->lrows);
    free(ws->logits);
    free(ws->row_seq);
    free(ws->row_pos);
    free(ws->q8);
    free(ws->sx8);
    memset(ws, 0, sizeof *ws);
}

/* ------------------------------------------------------------- parallel jobs */

typedef struct step_ctx {
    const cs_gpt2 *m;
    cs_gpt2_ws *ws;
    cs_gpt2_seq *seqs;
    size_t T;     /* rows in this step */
    size_t layer;
    /* matmul job */
    const cs_pmat *mat;
    const float *mx;
    size_t mldx, mT;
    float *my;
    size_t mldy;
    size_t qld; /* int8: bytes between the quantized rows in ws->q8 */
    /* row job (layernorm) */
    float *ly;
    const float *lx, *lw, *lb;
    size_t lrows;
} step_ctx;

/* Runs fn over items [0, n) on the pool (chunks handed out dynamically, at
 * least `grain` items each), or on this thread alone. Every output is computed
 * whole by one call, so the split never changes the arithmetic. */
static void run(step_ctx *c, size_t n, size_t grain, cs_pool_range_fn fn) {
    if (c->ws->pool) cs_pool_for(c->ws->pool, n, grain, fn, c);
    else fn(c, 0, 0, n);
}

/* Items are groups of 4 panels (the widest register tile). */
static void job_matmul(void *vc, int tid, size_t g0, size_t g1) {
    step_ctx *c = vc;
    (void)tid;
    size_t p0 = g0 * 4, p1 = g1 * 4 < c->mat->n_panels ? g1 * 4 : c->mat->n_panels;
    if (p0 < p1) c->m->kern->matmul(c->mat, c->mx, c->mldx, c->mT, c->my, c->mldy, p0, p1);
}

/* int8 on the pool: the input rows are quantized once per matmul (split by
 * rows when there are many), and every chunk multiplies those (matmul_q8)
 * instead of quantizing all rows again for its few panels. */
static void job_quantize(void *vc, int tid, size_t r0, size_t r1) {
    step_ctx *c = vc;
    (void)tid;
    c->m->kern->quantize_rows(c->mx + r0 * c->mldx, c->mldx, r1 - r0, c->mat->K, c->mat->smooth,
                              c->ws->q8 + r0 * c->qld, c->qld, c->ws->sx8 + r0);
}

static void job_matmul_q8(void *vc, int tid, size_t g0, size_t g1) {
    step_ctx *c = vc;
    (void)tid;
    size_t p0 = g0 * 4, p1 = g1 * 4 < c->mat->n_panels ? g1 * 4 : c->mat->n_panels;
    if (p0 < p1)
        c->m->kern->matmul_q8(c->mat, c->ws->q8, c->qld, c->ws->sx8, c->mx, c->mldx, c->mT, c->my, c->mldy, p0, p1);
}

static void matmul(step_ctx *c, const cs_pmat *w, const float *x, size_t ldx, size_t T, float *y, size_t ldy) {
    c->mat = w;
    c->mx = x;
    c->mldx = ldx;
    c->mT = T;
    c->my = y;
    c->mldy = ldy;
    if (w->dt == CS_W_I8 && c->ws->q8) { /* q8 exists only with a pool of 2+ threads */
        c->qld = (w->K + 3) / 4 * 4;
        if (T * w->K >= 65536) run(c, T, 1, job_quantize);
        else job_quantize(c, 0, 0, T);
        run(c, (w->n_panels + 3) / 4, 1, job_matmul_q8);
        return;
    }
    run(c, (w->n_panels + 3) / 4, 1, job_matmul);
}

static void job_layernorm(void *vc, int tid, size_t r0, size_t r1) {
    step_ctx *c = vc;
    (void)tid;
    const size_t C = (size_t)c->m->cfg.n_embd;
    for (size_t r = r0; r < r1; r++)
        c->m->kern->layernorm(c->ly + r * C, c->lx + r * C, c->lw, c->lb, C, c->m->cfg.layer_norm_epsilon);
}

static void layernorm(step_ctx *c, float *y, const float *x, const float *w, const float *b, size_t rows) {
    c->ly = y;
    c->lx = x;
    c->lw = w;
    c->lb = b;
    c->lrows = rows;
    if (rows * (size_t)c->m->cfg.n_embd < 16384) job_layernorm(c, 0, 0, rows); /* too small to share */
    else run(c, rows, 1, job_layernorm);
}

static void act_other(float *x, size_t n, cs_act act) {
    switch (act) {
    case CS_ACT_GELU_ERF:
        for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
        break;
    case CS_ACT_RELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
        break;
    case CS_ACT_SILU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    case CS_ACT_QUICK:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case CS_ACT_GELU_TANH: break;
    }
}

/* Items are 16-element blocks (they keep vectors whole); the last one may be short. */
static void job_act(void *vc, int tid, size_t b, size_t e) {
    step_ctx *c = vc;
    (void)tid;
    const size_t total = c->T * (size_t)c->m->cfg.n_inner;
    b *= 16;
    e = e * 16 < total ? e * 16 : total;
    if (c->m->cfg.act == CS_ACT_GELU_TANH) c->m->kern->gelu_tanh(c->ws->ff + b, e - b);
    else act_other(c->ws->ff + b, e - b, c->m->cfg.act);
}

/* Attention: work items are (row, head). A decode row (its sequence has one
 * new token) runs attend alone; a prompt chunk's rows go in blocks of
 * ATT_ROWS: the item of a block's first row runs attend_causal over the whole
 * block (the kernel shares key/value loads between its queries, with the same
 * bits per row as attend), and the items of its other rows do nothing. Blocks
 * keep both cores busy on one long prompt. q comes from qkv, keys/values from
 * each row's own sequence cache (already holding this step's tokens). */
static void job_attention(void *vc, int tid, size_t i0, size_t i1) {
    step_ctx *c = vc;
    const cs_gpt2 *m = c->m;
    cs_gpt2_ws *ws = c->ws;
    const size_t C = (size_t)m->cfg.n_embd, H = (size_t)m->cfg.n_head, hd = C / H;
    float scale = m->cfg.scale_attn_weights ? 1.0f / sqrtf((float)hd) : 1.0f;
    if (m->cfg.scale_attn_by_inverse_layer_idx) scale /= (float)(c->layer + 1);
    float *att = ws->att + (size_t)tid * ATT_ROWS * (size_t)m->cfg.n_positions; /* this thread's scratch */
    for (size_t it = i0; it < i1; it++) {
        const size_t r = it / H, h = it % H;
        const cs_gpt2_seq *sq = &c->seqs[ws->row_seq[r]];
        const cs_gpt2_kv *kv = sq->kv;
        const size_t pos = (size_t)ws->row_pos[r];
        const cs_kvhead kh = cs_kvpool_head(kv->pool, kv->blk, c->layer, h);
        const cs_kvdtype dt = cs_kvpool_dtype(kv->pool);
        float *q = ws->qkv + r * 3 * C + h * hd; /* this item's alone: may be turned in place */
        float *out = ws->h + r * C + h * hd;
        const int rot = kv_rotated(dt, hd);
        const float sc = rot ? scale / (float)hd : scale; /* q' = H q: its 1 / hd goes with the scale */
        if (sq->n == 1) {
            if (rot) m->kern->fwht(q, hd, 1.0f);
            if (dt == CS_KV_I8) m->kern->attend_i8(q, &kh, pos + 1, hd, sc, att, out);
            else if (dt == CS_KV_BF16) m->kern->attend_bf16(q, &kh, pos + 1, hd, scale, att, out);
            else m->kern->attend(q, &kh, pos + 1, hd, scale, att, out);
            if (rot) m->kern->fwht(out, hd, 1.0f / (float)hd);
            continue;
        }
        const size_t i = pos - (size_t)kv->n_past; /* index in the chunk (n_past moves after the step) */
        if (i % ATT_ROWS) continue;                /* done by its block's first row */
        const size_t nq = (size_t)sq->n - i < ATT_ROWS ? (size_t)sq->n - i : ATT_ROWS;
        if (rot)
            for (size_t t = 0; t < nq; t++) m->kern->fwht(q + t * 3 * C, hd, 1.0f);
        if (dt == CS_KV_I8) m->kern->attend_causal_i8(q, 3 * C, &kh, pos, nq, hd, sc, att, out, C);
        else if (dt == CS_KV_BF16) m->kern->attend_causal_bf16(q, 3 * C, &kh, pos, nq, hd, scale, att, out, C);
        else m->kern->attend_causal(q, 3 * C, &kh, pos, nq, hd, scale, att, out, C);
        if (rot)
            for (size_t t = 0; t < nq; t++) m->kern->fwht(out + t * C, hd, 1.0f / (float)hd);
    }
}

/* Appends this step's keys and values (from qkv) to each row's cache: items
 * are (row, head); each writes its own row of its sequence's block, so items
 * never share an output. int8 rows are rotated first (kv_rotated). */
static void job_append(void *vc, int tid, size_t i0, size_t i1) {
    step_ctx *c = vc;
    (void)tid;
    const cs_gpt2 *m = c->m;
    cs_gpt2_ws *ws = c->ws;
    const size_t C = (size_t)m->cfg.n_embd, H = (size_t)m->cfg.n_head, hd = C / H, l = c->layer;
    for (size_t it = i0; it < i1; it++) {
        const size_t i = it / H, h = it % H;
        cs_gpt2_kv *kv = c->seqs[ws->row_seq[i]].kv;
        const size_t pos = (size_t)ws->row_pos[i];
        const cs_kvdtype dt = cs_kvpool_dtype(kv->pool);
        const size_t vd = cs_kvpool_voff_delta(C, hd, dt), off = cs_kvpool_krow_off(C, hd, dt, l, h, pos);
        const float *kx = ws->qkv + i * 3 * C + C + h * hd, *vx = kx + C;
        if (dt == CS_KV_I8) {
            int8_t *kb = (int8_t *)kv->blk[pos / CS_KV_BLOCK] + off;
            float tk[KV_ROT_MAX], tv[KV_ROT_MAX]; /* the rotated rows */
            if (kv_rotated(dt, hd)) {
                memcpy(tk, kx, hd * sizeof(float));
                memcpy(tv, vx, hd * sizeof(float));
                m->kern->fwht(tk, hd, 1.0f);
                m->kern->fwht(tv, hd, 1.0f);
                kx = tk;
                vx = tv;
            }
            m->kern->kv_quantize_row(kx, hd, kb);
            m->kern->kv_quantize_row(vx, hd, kb + vd);
        } else if (dt == CS_KV_BF16) {
            uint16_t *kb = (uint16_t *)kv->blk[pos / CS_KV_BLOCK] + off, *vb = kb + vd;
            for (size_t e = 0; e < hd; e++) {
                kb[e] = cs_bf16_from_f32(kx[e]);
                vb[e] = cs_bf16_from_f32(vx[e]);
            }
        } else {
            float *kb = (float *)kv->blk[pos / CS_KV_BLOCK] + off;
            memcpy(kb, kx, hd * sizeof(float));
            memcpy(kb + vd, vx, hd * sizeof(float));
        }
    }
}

/* Calibration: raises amax[k] to max |x[t][k]| over T rows of K. */
static void track_max(float *amax, const float *x, size_t T, size_t K) {
    if (!amax) return;
    for (size_t t = 0; t < T; t++)
        for (size_t k = 0; k < K; k++) amax[k] = fmaxf(amax[k], fabsf(x[t * K + k]));
}

/* ------------------------------------------------------------------- step */

static void embed_row(const cs_gpt2 *m, int32_t tok, int pos, float *x) {
    const size_t C = (size_t)m->cfg.n_embd;
    const float *p = m->wpe + (size_t)pos * C;
    if (m->wte) {
        const float *e = m->wte + (size_t)tok * C;
        for (size_t i = 0; i < C; i++) x[i] = e[i] + p[i];
    } else { /* tied: the LM head's packed column tok is the embedding */
        for (size_t i = 0; i < C; i++) x[i] = cs_pmat_get(&m->lm_head, i, (size_t)tok) + p[i];
    }
}

int cs_gpt2_step(const cs_gpt2 *m, cs_gpt2_ws *ws, cs_gpt2_seq *seqs, int n_seqs, cs_err *err) {
    const cs_gpt2_config *cf = &m->cfg;
    const size_t C = (size_t)cf->n_embd, F = (size_t)cf->n_inner, V = (size_t)cf->vocab_size;
    size_t T = 0, R = 0;
    for (int s = 0; s < n_seqs; s++) {
        const cs_gpt2_seq *q = &seqs[s];
        if (q->n <= 0) return cs_err_set(err, "sequence %d: no tokens to process", s);
        if (q->n > q->kv->n_ctx - q->kv->n_past)
            return cs_err_set(err, "context length exceeded: %d tokens cached + %d new > %d", q->kv->n_past, q->n,
                              q->kv->n_ctx);
        for (int i = 0; i < q->n; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= cf->vocab_size)
                return cs_err_set(err, "token id %d at index %d outside vocabulary [0, %d)", q->tokens[i], i,
                                  cf->vocab_size);
        T += (size_t)q->n;
        R += q->logits ? (q->all_logits ? (size_t)q->n : 1) : 0;
    }
    if (T == 0) return cs_err_set(err, "no tokens to process");
    if (T > (size_t)ws->max_tokens || R > (size_t)ws->max_logit_rows)
        return cs_err_set(err, "batch of %zu tokens / %zu logit rows exceeds the workspace (%d / %d)", T, R,
                          ws->max_tokens, ws->max_logit_rows);
    for (int s = 0; s < n_seqs; s++) {
        cs_gpt2_kv *kv = seqs[s].kv;
        cs_kvpool_info pi;
        cs_kvpool_get_info(kv->pool, &pi);
        if (pi.n_layer != (size_t)cf->n_layer || pi.n_embd != C)
            return cs_err_set(err, "sequence %d: KV cache shaped for %zu layers x %zu, the model has %d x %zu", s,
                              pi.n_layer, pi.n_embd, cf->n_layer, C);
        if (cs_gpt2_kv_reserve(kv, kv->n_past + seqs[s].n))
            return cs_err_set(err, "KV cache pool exhausted: sequence %d needs %d more blocks of %d tokens, %zu free",
                              s, cs_gpt2_kv_blocks_needed(kv, kv->n_past + seqs[s].n), CS_KV_BLOCK,
                              cs_kvpool_free_blocks(kv->pool));
    }
    size_t r = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < seqs[s].n; i++, r++) {
            ws->row_seq[r] = s;
            ws->row_pos[r] = seqs[s].kv->n_past + i;
            embed_row(m, seqs[s].tokens[i], ws->row_pos[r], ws->x + r * C);
        }
    step_ctx c = {.m = m, .ws = ws, .seqs = seqs, .T = T};
    float *x = ws->x, *h = ws->h, *qkv = ws->qkv, *ff = ws->ff;
    for (size_t l = 0; l < (size_t)cf->n_layer; l++) {
        const cs_gpt2_layer *ly = &m->layers[l];
        float *amax = ws->amax ? ws->amax + l * (3 * C + F) : NULL;
        c.layer = l;
        layernorm(&c, h, x, ly->ln1_w, ly->ln1_b, T);
        track_max(amax, h, T, C);
        matmul(&c, &ly->qkv, h, C, T, qkv, 3 * C);
        run(&c, T * (size_t)cf->n_head, 8, job_append); /* this step's keys and values into the caches */
        run(&c, T * (size_t)cf->n_head, 1, job_attention);
        track_max(amax ? amax + C : NULL, h, T, C);
        matmul(&c, &ly->proj, h, C, T, qkv, C); /* q/k/v consumed: reuse as scratch */
        for (size_t i = 0; i < T * C; i++) x[i] += qkv[i];
        layernorm(&c, h, x, ly->ln2_w, ly->ln2_b, T);
        track_max(amax ? amax + 2 * C : NULL, h, T, C);
        matmul(&c, &ly->fc, h, C, T, ff, F);
        run(&c, (T * F + 15) / 16, 64, job_act);
        track_max(amax ? amax + 3 * C : NULL, ff, T, F);
        matmul(&c, &ly->fcproj, ff, F, T, h, C);
        for (size_t i = 0; i < T * C; i++) x[i] += h[i];
    }
    /* Final layernorm and LM head only for the rows whose logits are wanted. */
    size_t lr = 0;
    r = 0;
    for (int s = 0; s < n_seqs; s++) {
        const cs_gpt2_seq *q = &seqs[s];
        for (int i = 0; i < q->n; i++, r++)
            if (q->logits && (q->all_logits || i == q->n - 1)) memcpy(ws->lrows + lr++ * C, x + r * C, C * sizeof(float));
    }
    if (R) {
        layernorm(&c, ws->lrows, ws->lrows, m->lnf_w, m->lnf_b, R);
        track_max(ws->amax ? ws->amax + (size_t)cf->n_layer * (3 * C + F) : NULL, ws->lrows, R, C);
        /* Straight into the callers' rows when they form one (R, V) array in
         * step order (the scheduler's batch buffer): no copy of R x V floats
         * while the other threads wait. */
        float *dst = NULL;
        int one_array = 1;
        lr = 0;
        for (int s = 0; s < n_seqs; s++) {
            const cs_gpt2_seq *q = &seqs[s];
            if (!q->logits) continue;
            if (!dst) dst = q->logits;
            else if (q->logits != dst + lr * V) one_array = 0;
            lr += q->all_logits ? (size_t)q->n : 1;
        }
        if (one_array) {
            matmul(&c, &m->lm_head, ws->lrows, C, R, dst, V);
        } else {
            matmul(&c, &m->lm_head, ws->lrows, C, R, ws->logits, V);
            lr = 0;
            for (int s = 0; s < n_seqs; s++) {
                const cs_gpt2_seq *q = &seqs[s];
                if (!q->logits) continue;
                const size_t rows = q->all_logits ? (size_t)q->n : 1;
                memcpy(q->logits, ws->logits + lr * V, rows * V * sizeof(float));
                lr += rows;
            }
        }
    }
    for (int s = 0; s < n_seqs; s++) seqs[s].kv->n_past += seqs[s].n;
    return 0;
}

/* -------------------------------------------------------- single sequence */

int cs_gpt2_state_init(cs_gpt2_state *s, const cs_gpt2 *m, int n_ctx, int max_chunk, cs_pool *pool, cs_err *err) {
    memset(s, 0, sizeof *s);
    if (cs_gpt2_kv_init(&s->kv, m, n_ctx, CS_KV_F32, err)) return -1;
    if (max_chunk <= 0) max_chunk = 64;
    if (max_chunk > s->kv.n_ctx) max_chunk = s->kv.n_ctx;
    if (cs_gpt2_ws_init(&s->ws, m, max_chunk, max_chunk, pool, err)) {
        cs_gpt2_kv_free(&s->kv);
        return -1;
    }
    s->n_ctx = s->kv.n_ctx;
    return 0;
}

void cs_gpt2_state_free(cs_gpt2_state *s) {
    cs_gpt2_kv_free(&s->kv);
    cs_gpt2_ws_free(&s->ws);
    memset(s, 0, sizeof *s);
}

int cs_gpt2_forward(const cs_gpt2 *m, cs_gpt2_state *s, const int32_t *tokens, size_t n, float *logits,
                    int all_logits, cs_err *err) {
    if (n == 0) return cs_err_set(err, "no tokens to process");
    if (n > (size_t)(s->kv.n_ctx - s->kv.n_past))
        return cs_err_set(err, "context length exceeded: %d tokens cached + %zu new > %d", s->kv.n_past, n,
                          s->kv.n_ctx);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return cs_err_set(err, "token id %d at index %zu outside vocabulary [0, %d)", tokens[i], i,
                              m->cfg.vocab_size);
    const size_t V = (size_t)m->cfg.vocab_size, chunk = (size_t)s->ws.max_tokens;
    for (size_t i = 0; i < n; i += chunk) {
        const size_t T = n - i < chunk ? n - i : chunk;
        const int last = i + T == n;
        cs_gpt2_seq q = {.kv = &s->kv, .tokens = tokens + i, .n = (int)T,
                         .logits = all_logits ? logits + i * V : last ? logits : NULL, .all_logits = all_logits};
        if (cs_gpt2_step(m, &s->ws, &q, 1, err)) return -1; /* cannot fail after the checks above */
    }
    s->n_past = s->kv.n_past;
    return 0;
}
