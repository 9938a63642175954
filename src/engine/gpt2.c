#include "engine/gpt2.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

/* ---------------------------------------------------------------- config */

static int get_int(json_t *root, const char *key, int lo, int hi, int dflt, int *out, cs_err *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (dflt == INT32_MIN) return cs_err_set(err, "missing required key '%s'", key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v)) return cs_err_set(err, "key '%s': expected an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return cs_err_set(err, "key '%s': %lld outside [%d, %d]", key, (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_bool(json_t *root, const char *key, int dflt, int *out, cs_err *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v)) return cs_err_set(err, "key '%s': expected true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int parse_act(const char *s, cs_act *out) {
    static const struct {
        const char *name;
        cs_act act;
    } acts[] = {
        {"gelu_new", CS_ACT_GELU_TANH}, {"gelu_pytorch_tanh", CS_ACT_GELU_TANH},
        {"gelu_fast", CS_ACT_GELU_TANH}, {"gelu", CS_ACT_GELU_ERF}, {"relu", CS_ACT_RELU},
        {"silu", CS_ACT_SILU}, {"swish", CS_ACT_SILU}, {"quick_gelu", CS_ACT_QUICK},
    };
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        if (strcmp(s, acts[i].name) == 0) {
            *out = acts[i].act;
            return 0;
        }
    return -1;
}

int cs_gpt2_config_load(cs_gpt2_config *cfg, const char *path, cs_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line < 0) return cs_err_set(err, "%s: %s", path, jerr.text);
        return cs_err_set(err, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    int rc = -1;
    if (!json_is_object(root)) {
        cs_err_set(err, "top level is not a JSON object");
        goto out;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2") != 0)) {
        cs_err_set(err, "key 'model_type': '%s' is not a GPT-2 model",
                   json_is_string(mt) ? json_string_value(mt) : "(not a string)");
        goto out;
    }
    int n_ctx_alias = 0;
    if (get_int(root, "n_layer", 1, CS_GPT2_MAX_LAYER, INT32_MIN, &cfg->n_layer, err) ||
        get_int(root, "n_head", 1, CS_GPT2_MAX_EMBD, INT32_MIN, &cfg->n_head, err) ||
        get_int(root, "n_embd", 1, CS_GPT2_MAX_EMBD, INT32_MIN, &cfg->n_embd, err) ||
        get_int(root, "vocab_size", 1, CS_GPT2_MAX_VOCAB, INT32_MIN, &cfg->vocab_size, err) ||
        get_int(root, "n_ctx", 1, CS_GPT2_MAX_POSITIONS, 0, &n_ctx_alias, err) ||
        get_int(root, "n_positions", 1, CS_GPT2_MAX_POSITIONS, n_ctx_alias ? n_ctx_alias : INT32_MIN,
                &cfg->n_positions, err) ||
        get_int(root, "n_inner", 1, 4 * CS_GPT2_MAX_EMBD, 4 * cfg->n_embd, &cfg->n_inner, err) ||
        get_bool(root, "scale_attn_weights", 1, &cfg->scale_attn_weights, err) ||
        get_bool(root, "scale_attn_by_inverse_layer_idx", 0, &cfg->scale_attn_by_inverse_layer_idx, err) ||
        get_bool(root, "tie_word_embeddings", 1, &cfg->tie_word_embeddings, err) ||
        get_int(root, "bos_token_id", 0, CS_GPT2_MAX_VOCAB, -1, &cfg->bos_token_id, err) ||
        get_int(root, "eos_token_id", 0, CS_GPT2_MAX_VOCAB, -1, &cfg->eos_token_id, err))
        goto out;
    if (cfg->n_embd % cfg->n_head) {
        cs_err_set(err, "key 'n_embd': %d is not divisible by n_head %d", cfg->n_embd, cfg->n_head);
        goto out;
    }
    json_t *eps = json_object_get(root, "layer_norm_epsilon");
    cfg->layer_norm_epsilon = 1e-5f;
    if (eps && !json_is_null(eps)) {
        if (!json_is_number(eps) || json_number_value(eps) <= 0 || json_number_value(eps) > 1) {
            cs_err_set(err, "key 'layer_norm_epsilon': expected a number in (0, 1]");
            goto out;
        }
        cfg->layer_norm_epsilon = (float)json_number_value(eps);
    }
    json_t *act = json_object_get(root, "activation_function");
    cfg->act = CS_ACT_GELU_TANH;
    if (act && !json_is_null(act) && (!json_is_string(act) || parse_act(json_string_value(act), &cfg->act))) {
        cs_err_set(err, "key 'activation_function': unsupported '%s'",
                   json_is_string(act) ? json_string_value(act) : "(not a string)");
        goto out;
    }
    if (json_is_true(json_object_get(root, "add_cross_attention"))) {
        cs_err_set(err, "key 'add_cross_attention': encoder-decoder GPT-2 is not supported");
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    if (rc && err && strncmp(err->msg, path, strlen(path)) != 0) cs_err_prefix(err, "%s", path);
    return rc;
}

/* ----------------------------------------------------------------- loading */

/* Finds NAME or "transformer." NAME. */
static const cs_st_tensor *find_tensor(const cs_st *st, const char *name) {
    const cs_st_tensor *t = cs_st_find(st, name);
    if (t) return t;
    char full[CS_ST_MAX_NAME + 16];
    int n = snprintf(full, sizeof full, "transformer.%s", name);
    return n > 0 && n < CS_ST_MAX_NAME ? cs_st_find(st, full) : NULL;
}

/* Copies tensor NAME of the given shape into dst (fp32). */
static int load_tensor(const cs_st *st, const char *name, int rank, const int64_t *shape, float *dst,
                       cs_err *err) {
    const cs_st_tensor *t = find_tensor(st, name);
    if (!t) return cs_err_set(err, "%s: missing tensor %s", cs_st_path(st), name);
    int ok = t->rank == rank;
    for (int i = 0; ok && i < rank; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96] = "", got[96] = "";
        for (int i = 0; i < rank; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)shape[i]);
        for (int i = 0; i < t->rank; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
        return cs_err_set(err, "%s: tensor %s has shape [%s], config needs [%s]", cs_st_path(st), t->name, got, want);
    }
    if (cs_dtype_to_f32(t->dtype, t->data, dst, t->nelem))
        return cs_err_set(err, "%s: tensor %s has dtype %s (need F32, F16 or BF16)", cs_st_path(st), t->name,
                          cs_dtype_name(t->dtype));
    for (size_t i = 0; i < t->nelem; i++)
        if (!isfinite(dst[i]))
            return cs_err_set(err, "%s: tensor %s has a non-finite value at index %zu", cs_st_path(st), t->name, i);
    return 0;
}

int cs_gpt2_load(cs_gpt2 **out, const cs_gpt2_config *cfg, const char *path, cs_err *err) {
    *out = NULL;
    cs_st *st = NULL;
    cs_gpt2 *m = calloc(1, sizeof *m);
    if (!m) return cs_err_set(err, "out of memory");
    m->cfg = *cfg;
    const size_t L = (size_t)cfg->n_layer, C = (size_t)cfg->n_embd, F = (size_t)cfg->n_inner,
                 V = (size_t)cfg->vocab_size, P = (size_t)cfg->n_positions;
    const size_t per_layer = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C;
    int untied = !cfg->tie_word_embeddings;
    m->n_params = V * C * (untied ? 2 : 1) + P * C + 2 * C + L * per_layer;
    if (cs_st_open(&st, path, err)) goto fail;
    m->params = malloc(m->n_params * sizeof(float));
    m->layers = calloc(L, sizeof *m->layers);
    if (!m->params || !m->layers) {
        cs_err_set(err, "out of memory for %zu parameters", m->n_params);
        goto fail;
    }
    float *p = m->params;
#define TAKE(ptr, name, rank, ...)                                             \
    do {                                                                       \
        const int64_t shp_[] = {__VA_ARGS__};                                  \
        if (load_tensor(st, name, rank, shp_, p, err)) goto fail;              \
        size_t n_ = 1;                                                         \
        for (int i_ = 0; i_ < rank; i_++) n_ *= (size_t)shp_[i_];              \
        ptr = p;                                                               \
        p += n_;                                                               \
    } while (0)
    TAKE(m->wte, "wte.weight", 2, (int64_t)V, (int64_t)C);
    TAKE(m->wpe, "wpe.weight", 2, (int64_t)P, (int64_t)C);
    TAKE(m->lnf_w, "ln_f.weight", 1, (int64_t)C);
    TAKE(m->lnf_b, "ln_f.bias", 1, (int64_t)C);
    m->lm_head = m->wte;
    if (untied) {
        if (!cs_st_find(st, "lm_head.weight")) {
            cs_err_set(err, "%s: missing tensor lm_head.weight (tie_word_embeddings is false)", path);
            goto fail;
        }
        const int64_t shp[] = {(int64_t)V, (int64_t)C};
        if (load_tensor(st, "lm_head.weight", 2, shp, p, err)) goto fail;
        m->lm_head = p;
        p += V * C;
    }
    for (size_t l = 0; l < L; l++) {
        cs_gpt2_layer *ly = &m->layers[l];
        char n[CS_ST_MAX_NAME];
#define NAME(suffix) (snprintf(n, sizeof n, "h.%zu.%s", l, suffix), n)
        TAKE(ly->ln1_w, NAME("ln_1.weight"), 1, (int64_t)C);
        TAKE(ly->ln1_b, NAME("ln_1.bias"), 1, (int64_t)C);
        TAKE(ly->qkv_w, NAME("attn.c_attn.weight"), 2, (int64_t)C, (int64_t)(3 * C));
        TAKE(ly->qkv_b, NAME("attn.c_attn.bias"), 1, (int64_t)(3 * C));
        TAKE(ly->proj_w, NAME("attn.c_proj.weight"), 2, (int64_t)C, (int64_t)C);
        TAKE(ly->proj_b, NAME("attn.c_proj.bias"), 1, (int64_t)C);
        TAKE(ly->ln2_w, NAME("ln_2.weight"), 1, (int64_t)C);
        TAKE(ly->ln2_b, NAME("ln_2.bias"), 1, (int64_t)C);
        TAKE(ly->fc_w, NAME("mlp.c_fc.weight"), 2, (int64_t)C, (int64_t)F);
        TAKE(ly->fc_b, NAME("mlp.c_fc.bias"), 1, (int64_t)F);
        TAKE(ly->fcproj_w, NAME("mlp.c_proj.weight"), 2, (int64_t)F, (int64_t)C);
        TAKE(ly->fcproj_b, NAME("mlp.c_proj.bias"), 1, (int64_t)C);
#undef NAME
    }
#undef TAKE
    if (cfg->n_layer < CS_GPT2_MAX_LAYER) { /* a checkpoint with more layers than the config is mismatched */
        char n[CS_ST_MAX_NAME];
        snprintf(n, sizeof n, "h.%d.ln_1.weight", cfg->n_layer);
        if (find_tensor(st, n)) {
            cs_err_set(err, "%s: tensor %s exists but config n_layer is %d", path, n, cfg->n_layer);
            goto fail;
        }
    }
    cs_st_close(st);
    *out = m;
    return 0;
fail:
    cs_st_close(st);
    cs_gpt2_free(m);
    return -1;
}

void cs_gpt2_free(cs_gpt2 *m) {
    if (!m) return;
    free(m->params);
    free(m->layers);
    free(m);
}

/* ------------------------------------------------------------------- state */

int cs_gpt2_state_init(cs_gpt2_state *s, const cs_gpt2 *m, int n_ctx, int max_chunk, cs_err *err) {
    memset(s, 0, sizeof *s);
    const cs_gpt2_config *c = &m->cfg;
    if (n_ctx <= 0 || n_ctx > c->n_positions) n_ctx = c->n_positions;
    if (max_chunk <= 0) max_chunk = 64;
    if (max_chunk > n_ctx) max_chunk = n_ctx;
    s->n_ctx = n_ctx;
    s->max_chunk = max_chunk;
    const size_t L = (size_t)c->n_layer, C = (size_t)c->n_embd, F = (size_t)c->n_inner, T = (size_t)max_chunk;
    s->k = malloc(L * (size_t)n_ctx * C * sizeof(float));
    s->v = malloc(L * (size_t)n_ctx * C * sizeof(float));
    s->x = malloc(T * C * sizeof(float));
    s->h = malloc(T * C * sizeof(float));
    s->qkv = malloc(T * 3 * C * sizeof(float));
    s->ff = malloc(T * F * sizeof(float));
    s->att = malloc((size_t)n_ctx * sizeof(float));
    if (!s->k || !s->v || !s->x || !s->h || !s->qkv || !s->ff || !s->att) {
        cs_gpt2_state_free(s);
        return cs_err_set(err, "out of memory for a %d-token KV cache", n_ctx);
    }
    return 0;
}

void cs_gpt2_state_free(cs_gpt2_state *s) {
    free(s->k);
    free(s->v);
    free(s->x);
    free(s->h);
    free(s->qkv);
    free(s->ff);
    free(s->att);
    memset(s, 0, sizeof *s);
}

/* ----------------------------------------------------------------- kernels */

/* Eight independent partial sums: lets the compiler vectorise without
 * reassociating a single accumulator (no -ffast-math). */
static float dot(const float *a, const float *b, size_t n) {
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y (T, N) = x (T, K) @ w (K, N) + b (N). Row-major, Conv1D layout. */
static void matmul(float *y, const float *x, const float *w, const float *b, size_t T, size_t K, size_t N) {
    for (size_t t = 0; t < T; t++) memcpy(y + t * N, b, N * sizeof(float));
    const size_t KB = 64; /* keep a block of W rows hot across all T rows */
    for (size_t k0 = 0; k0 < K; k0 += KB) {
        size_t k1 = k0 + KB < K ? k0 + KB : K;
        for (size_t t = 0; t < T; t++) {
            float *yr = y + t * N;
            const float *xr = x + t * K;
            for (size_t k = k0; k < k1; k++) {
                const float a = xr[k];
                const float *wr = w + k * N;
                for (size_t n = 0; n < N; n++) yr[n] += a * wr[n];
            }
        }
    }
}

static void layernorm(float *y, const float *x, const float *w, const float *b, size_t T, size_t C, float eps) {
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * C;
        float *yr = y + t * C;
        float mean = 0;
        for (size_t i = 0; i < C; i++) mean += xr[i];
        mean /= (float)C;
        float var = 0;
        for (size_t i = 0; i < C; i++) {
            float d = xr[i] - mean;
            var += d * d;
        }
        var /= (float)C;
        const float rstd = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < C; i++) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
}

static void activation(float *x, size_t n, cs_act act) {
    switch (act) {
    case CS_ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            const float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        }
        break;
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
    }
}

/* Causal self-attention for T new tokens at positions pos0.. ; q/k/v come from
 * qkv (T, 3C); k and v are written into the cache first. out: (T, C). */
static void attention(const cs_gpt2 *m, cs_gpt2_state *s, size_t layer, const float *qkv, float *out, size_t T,
                      size_t pos0) {
    const size_t C = (size_t)m->cfg.n_embd, H = (size_t)m->cfg.n_head, hd = C / H, n_ctx = (size_t)s->n_ctx;
    float *kc = s->k + layer * n_ctx * C, *vc = s->v + layer * n_ctx * C;
    for (size_t t = 0; t < T; t++) {
        memcpy(kc + (pos0 + t) * C, qkv + t * 3 * C + C, C * sizeof(float));
        memcpy(vc + (pos0 + t) * C, qkv + t * 3 * C + 2 * C, C * sizeof(float));
    }
    float scale = m->cfg.scale_attn_weights ? 1.0f / sqrtf((float)hd) : 1.0f;
    if (m->cfg.scale_attn_by_inverse_layer_idx) scale /= (float)(layer + 1);
    float *att = s->att;
    for (size_t t = 0; t < T; t++) {
        const size_t npos = pos0 + t + 1; /* keys 0..pos0+t */
        for (size_t h = 0; h < H; h++) {
            const float *q = qkv + t * 3 * C + h * hd;
            float mx = -INFINITY;
            for (size_t j = 0; j < npos; j++) {
                att[j] = dot(q, kc + j * C + h * hd, hd) * scale;
                if (att[j] > mx) mx = att[j];
            }
            float sum = 0;
            for (size_t j = 0; j < npos; j++) {
                att[j] = expf(att[j] - mx);
                sum += att[j];
            }
            const float inv = 1.0f / sum;
            float *o = out + t * C + h * hd;
            memset(o, 0, hd * sizeof(float));
            for (size_t j = 0; j < npos; j++) {
                const float p = att[j] * inv;
                const float *vr = vc + j * C + h * hd;
                for (size_t i = 0; i < hd; i++) o[i] += p * vr[i];
            }
        }
    }
}

enum { LOGITS_NONE, LOGITS_LAST, LOGITS_ALL };

/* One chunk of T <= max_chunk tokens. */
static void forward_chunk(const cs_gpt2 *m, cs_gpt2_state *s, const int32_t *tok, size_t T, float *logits,
                          int mode) {
    const cs_gpt2_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    const size_t pos0 = (size_t)s->n_past;
    float *x = s->x, *h = s->h, *qkv = s->qkv, *ff = s->ff;
    for (size_t t = 0; t < T; t++) {
        const float *e = m->wte + (size_t)tok[t] * C, *p = m->wpe + (pos0 + t) * C;
        for (size_t i = 0; i < C; i++) x[t * C + i] = e[i] + p[i];
    }
    for (size_t l = 0; l < (size_t)c->n_layer; l++) {
        const cs_gpt2_layer *ly = &m->layers[l];
        layernorm(h, x, ly->ln1_w, ly->ln1_b, T, C, c->layer_norm_epsilon);
        matmul(qkv, h, ly->qkv_w, ly->qkv_b, T, C, 3 * C);
        attention(m, s, l, qkv, h, T, pos0);
        matmul(qkv, h, ly->proj_w, ly->proj_b, T, C, C); /* q/k/v are consumed: reuse as scratch */
        for (size_t i = 0; i < T * C; i++) x[i] += qkv[i];
        layernorm(h, x, ly->ln2_w, ly->ln2_b, T, C, c->layer_norm_epsilon);
        matmul(ff, h, ly->fc_w, ly->fc_b, T, C, F);
        activation(ff, T * F, c->act);
        matmul(h, ff, ly->fcproj_w, ly->fcproj_b, T, F, C);
        for (size_t i = 0; i < T * C; i++) x[i] += h[i];
    }
    s->n_past += (int)T;
    if (mode == LOGITS_NONE) return;
    const int all_logits = mode == LOGITS_ALL;
    const size_t t0 = all_logits ? 0 : T - 1;
    layernorm(h + t0 * C, x + t0 * C, m->lnf_w, m->lnf_b, T - t0, C, c->layer_norm_epsilon);
    for (size_t t = t0; t < T; t++) {
        float *out = logits + (all_logits ? t * V : 0);
        const float *hr = h + t * C;
        for (size_t v = 0; v < V; v++) out[v] = dot(hr, m->lm_head + v * C, C);
    }
}

int cs_gpt2_forward(const cs_gpt2 *m, cs_gpt2_state *s, const int32_t *tokens, size_t n, float *logits,
                    int all_logits, cs_err *err) {
    if (n == 0) return cs_err_set(err, "no tokens to process");
    if (n > (size_t)(s->n_ctx - s->n_past))
        return cs_err_set(err, "context length exceeded: %d tokens cached + %zu new > %d", s->n_past, n, s->n_ctx);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return cs_err_set(err, "token id %d at index %zu outside vocabulary [0, %d)", tokens[i], i,
                              m->cfg.vocab_size);
    const size_t V = (size_t)m->cfg.vocab_size;
    for (size_t i = 0; i < n; i += (size_t)s->max_chunk) {
        size_t T = n - i < (size_t)s->max_chunk ? n - i : (size_t)s->max_chunk;
        if (all_logits)
            forward_chunk(m, s, tokens + i, T, logits + i * V, LOGITS_ALL);
        else /* earlier chunks only fill the cache */
            forward_chunk(m, s, tokens + i, T, logits, i + T == n ? LOGITS_LAST : LOGITS_NONE);
    }
    return 0;
}
