#include "engine/gpt2.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
        /* Checked after the conversion to float: 1e-50 is positive but becomes 0. */
        if (!json_is_number(eps) || !((float)json_number_value(eps) >= FLT_MIN) || json_number_value(eps) > 1) {
            cs_err_set(err, "key 'layer_norm_epsilon': expected a number in [%g, 1] (a normal float)", (double)FLT_MIN);
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

/* Converts tensor NAME of the given shape into dst (fp32), checking shape,
 * dtype and finiteness. */
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

/* The packed blob: a header page, then every array 64-byte aligned in a fixed
 * order that depends only on (config, dtype). The same walk sizes the blob,
 * fills it from safetensors, or points into a mapped cache file. */
#define PACK_MAGIC "CSPACK05" /* 05: int8 matrices carry smoothing factors and fp32 outlier rows */
#define PACK_HEADER 4096

typedef struct pack_header {
    char magic[8];
    uint32_t wdtype, cfg_size;
    cs_gpt2_config cfg;
    uint64_t src_size, src_mtime_ns, src_ino, total;
} pack_header;

typedef struct walk {
    cs_gpt2 *m;
    char *base;        /* NULL: sizing pass */
    size_t off;
    const cs_st *st;   /* non-NULL: fill from the source */
    float *tmp;        /* scratch for one source tensor */
    const float *amax; /* int8: calibration maxima (cs_gpt2_ws.amax layout) */
    double *sm;        /* int8: scratch for one matrix's smoothing factors */
    float *sf;         /* int8: the same rounded to float */
    cs_err *err;
} walk;

static void *take(walk *w, size_t bytes) {
    w->off = (w->off + 63) & ~(size_t)63;
    void *p = w->base ? w->base + w->off : NULL;
    w->off += bytes;
    return p;
}

/* An fp32 vector/matrix copied as is. */
static int walk_f32(walk *w, const float **dst, const char *name, int rank, int64_t d0, int64_t d1) {
    const int64_t shp[2] = {d0, d1};
    size_t n = (size_t)d0 * (rank == 2 ? (size_t)d1 : 1);
    float *p = take(w, n * sizeof(float));
    *dst = p;
    if (w->st && load_tensor(w->st, name, rank, shp, p, w->err)) return -1;
    return 0;
}

/* SmoothQuant migration strength: s_k = max|X_k|^a / max|W_k|^(1 - a); 0.5
 * leaves activations and weight rows equally flat (SmoothQuant's choice for
 * GPT-style models). */
#define SMOOTH_ALPHA 0.5
/* Smoothing only where the channels left after taking out the outliers still
 * spread this much (largest calibration max over the median): on flat inputs
 * it only moves rounding error around (measured: tiny's int8 max error 0.044
 * -> 0.064 with it), so those matrices stay exactly as plain int8 packs them. */
#define SMOOTH_MIN_SPREAD 3.0

/* int8 smoothing factors for W (K, N; element (k, n) at W[k * ldk + n * ldn])
 * from the calibration maxima xmax (K) of its input: s_k as above, each max
 * floored at 1e-5 of the largest so a channel that calibration never saw (or
 * an all-zero weight row) gets a finite factor. */
static void smooth_factors(const float *W, size_t K, size_t N, size_t ldk, size_t ldn, const float *xmax, double *s) {
    double xtop = 0, wtop = 0;
    for (size_t k = 0; k < K; k++) {
        double wm = 0;
        for (size_t n = 0; n < N; n++) wm = fmax(wm, fabs((double)W[k * ldk + n * ldn]));
        s[k] = wm;
        xtop = fmax(xtop, (double)xmax[k]);
        wtop = fmax(wtop, wm);
    }
    if (!(xtop > 0) || !(wtop > 0)) {
        for (size_t k = 0; k < K; k++) s[k] = 1;
        return;
    }
    for (size_t k = 0; k < K; k++) {
        const double xm = fmax((double)xmax[k], 1e-5 * xtop) / xtop, wm = fmax(s[k], 1e-5 * wtop) / wtop;
        s[k] = pow(xm, SMOOTH_ALPHA) / pow(wm, 1 - SMOOTH_ALPHA);
    }
}

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int cmp_u32(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The input channels whose calibration max is at least CS_I8_OUTLIER_RATIO x
 * the median channel's, largest first, at most CS_I8_MAX_OUTLIERS; written to
 * idx in ascending order. *spread: the largest max among the other channels
 * over the median (0 when the median is 0). scratch: K floats. */
static size_t pick_outliers(const float *xmax, size_t K, float *scratch, uint32_t *idx, double *spread) {
    memcpy(scratch, xmax, K * sizeof(float));
    qsort(scratch, K, sizeof(float), cmp_float);
    const float lim = CS_I8_OUTLIER_RATIO * scratch[K / 2];
    size_t n = 0;
    *spread = 0;
    if (!(lim > 0)) return 0;
    while (n < CS_I8_MAX_OUTLIERS) {
        size_t best = K;
        for (size_t k = 0; k < K; k++) {
            int taken = 0;
            for (size_t j = 0; j < n; j++) taken |= idx[j] == k;
            if (!taken && xmax[k] >= lim && (best == K || xmax[k] > xmax[best])) best = k;
        }
        if (best == K) break;
        idx[n++] = (uint32_t)best;
    }
    *spread = (double)scratch[K - 1 - n] / (double)scratch[K / 2];
    qsort(idx, n, sizeof *idx, cmp_u32);
    return n;
}

#define USES_SMOOTH 0x80000000u /* in an int8 matrix's outlier count word: smooth is in use */

/* A matrix packed into panels. Source shape (rows, cols); transposed: the
 * source is (N, K) (an embedding used as the LM head) instead of (K, N).
 * xmax_off: where its input's calibration maxima sit in w->amax (int8). */
static int walk_mat(walk *w, cs_pmat *pm, const char *name, size_t K, size_t N, int transposed, const float *bias,
                    size_t xmax_off) {
    const cs_wdtype dt = w->m->wdtype;
    void *wp = take(w, cs_pmat_wbytes(dt, K, N));
    float *sp = dt == CS_W_I8 ? take(w, cs_pmat_sbytes(dt, N)) : NULL;
    float *rp = dt == CS_W_I8 ? take(w, K * sizeof(float)) : NULL;
    uint32_t *oh = dt == CS_W_I8 ? take(w, (1 + CS_I8_MAX_OUTLIERS) * sizeof(uint32_t)) : NULL; /* count, idx */
    float *ow = dt == CS_W_I8 ? take(w, CS_I8_MAX_OUTLIERS * ((N + CS_PANEL - 1) / CS_PANEL) * CS_PANEL * sizeof(float))
                              : NULL;
    *pm = cs_pmat_view(dt, K, N, wp, sp, bias);
    if (oh && w->base && !w->st) { /* mapped: as packed */
        pm->n_out = oh[0] & ~USES_SMOOTH;
        pm->smooth = oh[0] & USES_SMOOTH ? rp : NULL;
    }
    if (oh) {
        pm->out_idx = oh + 1;
        pm->out_w = ow;
    }
    if (!w->st) return 0;
    const int64_t shp[2] = {transposed ? (int64_t)N : (int64_t)K, transposed ? (int64_t)K : (int64_t)N};
    if (load_tensor(w->st, name, 2, shp, w->tmp, w->err)) return -1;
    if (dt != CS_W_I8) {
        cs_pmat_pack(dt, w->tmp, K, N, transposed ? K : N, transposed, wp, sp);
        return 0;
    }
    /* s as float: the packed weights and r = 1 / s use the same rounded factor */
    float *sf = w->sf;
    size_t n_out = 0;
    if (w->amax) {
        const float *xmax = w->amax + xmax_off;
        double spread;
        n_out = pick_outliers(xmax, K, sf, oh + 1, &spread);
        if (spread > SMOOTH_MIN_SPREAD) {
            smooth_factors(w->tmp, K, N, transposed ? 1 : N, transposed ? K : 1, xmax, w->sm);
            for (size_t k = 0; k < K; k++) sf[k] = (float)w->sm[k];
        } else {
            for (size_t k = 0; k < K; k++) sf[k] = 1.0f;
        }
        for (size_t j = 0; j < n_out; j++) sf[oh[1 + j]] = 0.0f; /* out of the int8 product */
    } else {
        for (size_t k = 0; k < K; k++) sf[k] = 1.0f;
    }
    /* a matrix with neither keeps plain int8's quantizer path (no multiply) */
    int uses = n_out > 0;
    for (size_t k = 0; k < K; k++) uses |= sf[k] != 1.0f;
    oh[0] = (uint32_t)n_out | (uses ? USES_SMOOTH : 0);
    pm->n_out = n_out;
    pm->smooth = uses ? rp : NULL;
    for (size_t k = 0; k < K; k++) rp[k] = sf[k] > 0 ? 1.0f / sf[k] : 0.0f;
    cs_pmat_pack_smooth(dt, w->tmp, K, N, transposed ? K : N, transposed, sf, wp, sp);
    cs_pmat_pack_outliers(w->tmp, K, N, transposed ? K : N, transposed, oh + 1, n_out, ow);
    return 0;
}

static int walk_model(walk *w) {
    cs_gpt2 *m = w->m;
    const cs_gpt2_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    const size_t head_off = (size_t)c->n_layer * (3 * C + F);
    take(w, PACK_HEADER);
    if (walk_f32(w, &m->wpe, "wpe.weight", 2, (int64_t)P, (int64_t)C) ||
        walk_f32(w, &m->lnf_w, "ln_f.weight", 1, (int64_t)C, 0) ||
        walk_f32(w, &m->lnf_b, "ln_f.bias", 1, (int64_t)C, 0))
        return -1;
    if (c->tie_word_embeddings) {
        m->wte = NULL;
        if (walk_mat(w, &m->lm_head, "wte.weight", C, V, 1, NULL, head_off)) return -1;
    } else {
        if (w->st && !cs_st_find(w->st, "lm_head.weight"))
            return cs_err_set(w->err, "%s: missing tensor lm_head.weight (tie_word_embeddings is false)",
                              cs_st_path(w->st));
        if (walk_f32(w, &m->wte, "wte.weight", 2, (int64_t)V, (int64_t)C) ||
            walk_mat(w, &m->lm_head, "lm_head.weight", C, V, 1, NULL, head_off))
            return -1;
    }
    for (size_t l = 0; l < (size_t)c->n_layer; l++) {
        cs_gpt2_layer *ly = &m->layers[l];
        char n[CS_ST_MAX_NAME];
        const float *qkv_b, *proj_b, *fc_b, *fcproj_b;
#define NAME(suffix) (snprintf(n, sizeof n, "h.%zu.%s", l, suffix), n)
        if (walk_f32(w, &ly->ln1_w, NAME("ln_1.weight"), 1, (int64_t)C, 0) ||
            walk_f32(w, &ly->ln1_b, NAME("ln_1.bias"), 1, (int64_t)C, 0) ||
            walk_f32(w, &ly->ln2_w, NAME("ln_2.weight"), 1, (int64_t)C, 0) ||
            walk_f32(w, &ly->ln2_b, NAME("ln_2.bias"), 1, (int64_t)C, 0) ||
            walk_f32(w, &qkv_b, NAME("attn.c_attn.bias"), 1, (int64_t)(3 * C), 0) ||
            walk_f32(w, &proj_b, NAME("attn.c_proj.bias"), 1, (int64_t)C, 0) ||
            walk_f32(w, &fc_b, NAME("mlp.c_fc.bias"), 1, (int64_t)F, 0) ||
            walk_f32(w, &fcproj_b, NAME("mlp.c_proj.bias"), 1, (int64_t)C, 0) ||
            walk_mat(w, &ly->qkv, NAME("attn.c_attn.weight"), C, 3 * C, 0, qkv_b, l * (3 * C + F)) ||
            walk_mat(w, &ly->proj, NAME("attn.c_proj.weight"), C, C, 0, proj_b, l * (3 * C + F) + C) ||
            walk_mat(w, &ly->fc, NAME("mlp.c_fc.weight"), C, F, 0, fc_b, l * (3 * C + F) + 2 * C) ||
            walk_mat(w, &ly->fcproj, NAME("mlp.c_proj.weight"), F, C, 0, fcproj_b, l * (3 * C + F) + 3 * C))
            return -1;
#undef NAME
    }
    w->off = (w->off + 63) & ~(size_t)63;
    return 0;
}

/* ------------------------------------------------------------ calibration */

/* GPT-2 tokens of three short texts written for this purpose (prose about this
 * project, a few lines of code with numbers, and mixed-language prose), so
 * calibration needs no tokenizer and gives the same factors everywhere. Ids
 * are taken modulo the vocabulary for models with a smaller one. */
static const int32_t CALIB_0[] = {
    32, 402, 11571, 12, 17, 12, 17989, 2746, 4382, 287, 327, 25, 262, 32278, 3113, 15989, 1932, 316, 641,
    669, 36628, 11, 11241, 4340, 262, 6152, 11, 4539, 257, 7365, 1740, 2651, 1208, 290, 8405, 262, 1306,
    11241, 11, 981, 262, 6038, 18173, 8781, 7007, 4654, 290, 2666, 262, 15458, 379, 790, 2239, 13};
static const int32_t CALIB_1[] = {
    4299, 1388, 7, 22046, 2599, 198, 220, 220, 220, 329, 1312, 287, 2837, 7, 11925, 7, 22046, 8, 2599, 198,
    220, 220, 220, 220, 220, 220, 220, 3601, 7, 72, 11, 26498, 58, 72, 12962, 220, 1303, 513, 13, 1415, 11,
    352, 11, 830, 290, 5433, 4, 198, 220, 220, 220, 1441, 19779, 482, 1298, 6407, 92};
static const int32_t CALIB_2[] = {
    818, 257, 1402, 7404, 416, 262, 5417, 11, 262, 661, 277, 1348, 11, 25889, 11, 290, 1297, 3923, 286, 7937,
    326, 1239, 1625, 736, 13, 1004, 6195, 346, 384, 18507, 4548, 26, 12466, 253, 21169, 18849, 38857, 16843,
    20375, 11, 12466, 120, 18849, 21169, 0};
#define CALIB_MAX_LEN 64

/* Runs the fp32 model over the calibration texts (each from position 0, where
 * trained models show their largest activations) and returns the per-channel
 * maxima of every matmul input (cs_gpt2_ws.amax layout; caller frees). */
static int calibrate(const cs_gpt2_config *cfg, const char *path, const cs_kern *kern, float **amax_out,
                     cs_err *err) {
    static const struct {
        const int32_t *ids;
        size_t n;
    } texts[] = {{CALIB_0, sizeof CALIB_0 / sizeof *CALIB_0},
                 {CALIB_1, sizeof CALIB_1 / sizeof *CALIB_1},
                 {CALIB_2, sizeof CALIB_2 / sizeof *CALIB_2}};
    const cs_gpt2_opts fo = {.dtype = CS_W_F32, .no_cache = 1, .kern = kern};
    const size_t C = (size_t)cfg->n_embd, F = (size_t)cfg->n_inner, V = (size_t)cfg->vocab_size;
    const int len_cap = cfg->n_positions < CALIB_MAX_LEN ? cfg->n_positions : CALIB_MAX_LEN;
    cs_gpt2 *f = NULL;
    cs_gpt2_ws ws = {0};
    cs_gpt2_kv kv = {0};
    float *amax = calloc((size_t)cfg->n_layer * (3 * C + F) + C, sizeof(float));
    float *logits = malloc((size_t)len_cap * V * sizeof(float));
    int rc = -1;
    if (!amax || !logits) {
        cs_err_set(err, "out of memory for int8 calibration");
        goto out;
    }
    if (cs_gpt2_load(&f, cfg, path, &fo, err) || cs_gpt2_ws_init(&ws, f, len_cap, len_cap, NULL, err)) goto out;
    ws.amax = amax;
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t ids[CALIB_MAX_LEN];
        const int n = (int)texts[i].n < len_cap ? (int)texts[i].n : len_cap;
        for (int k = 0; k < n; k++) ids[k] = texts[i].ids[k] % cfg->vocab_size;
        if (cs_gpt2_kv_init(&kv, f, n, CS_KV_F32, err)) goto out;
        cs_gpt2_seq q = {.kv = &kv, .tokens = ids, .n = n, .logits = logits, .all_logits = 1};
        if (cs_gpt2_step(f, &ws, &q, 1, err)) goto out;
        cs_gpt2_kv_free(&kv);
    }
    *amax_out = amax;
    amax = NULL;
    rc = 0;
out:
    cs_gpt2_kv_free(&kv);
    cs_gpt2_ws_free(&ws);
    cs_gpt2_free(f);
    free(amax);
    free(logits);
    return rc;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Cache file path for (source, dtype); 0 on success. */
static int cache_path(char *out, size_t cap, const char *src, cs_wdtype dt, const char *dir_opt) {
    char real[PATH_MAX], dir[PATH_MAX];
    if (!realpath(src, real)) return -1;
    const char *d = dir_opt ? dir_opt : getenv("CS_CACHE_DIR");
    if (d && *d) {
        snprintf(dir, sizeof dir, "%s", d);
    } else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME")) {
        snprintf(dir, sizeof dir, "%s/cserve", getenv("XDG_CACHE_HOME"));
    } else if (getenv("HOME") && *getenv("HOME")) {
        snprintf(dir, sizeof dir, "%s/.cache/cserve", getenv("HOME"));
    } else {
        return -1;
    }
    int n = snprintf(out, cap, "%s/%016llx-%s.cspack", dir, (unsigned long long)fnv1a(real), cs_wdtype_name(dt));
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static void fill_header(pack_header *h, const cs_gpt2 *m, const struct stat *sb, size_t total) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, PACK_MAGIC, 8);
    h->wdtype = (uint32_t)m->wdtype;
    h->cfg_size = (uint32_t)sizeof m->cfg;
    h->cfg = m->cfg;
    h->src_size = (uint64_t)sb->st_size;
    h->src_mtime_ns = (uint64_t)sb->st_mtim.tv_sec * 1000000000ull + (uint64_t)sb->st_mtim.tv_nsec;
    h->src_ino = (uint64_t)sb->st_ino;
    h->total = total;
}

/* Packed weights in 2 MB pages where the kernel can: every decode step
 * streams all of them, and with 4 KB pages that is a TLB miss every 4 KB of
 * each of the panels a tile reads side by side. A hint, asked before the
 * first touch (a page cache filled on demand then uses 2 MB folios; pages
 * already cached keep theirs); its failure changes nothing. One thread, T =
 * 32 rows, distilgpt2's matrices cycled from 12 copies each (beyond L3),
 * 2 MB against 4 KB pages, 3 runs each (Zen 4 EPYC): int8 (VNNI) 298-307 ->
 * 319-333 GOP/s, fp32 85-92 -> 91-97 GFLOP/s. A file mapping here: the int8
 * pack read into a cold page cache is 45 of its 86 MB in 2 MB mappings
 * without the hint, 86 with it. */
static void weights_hugepage(void *p, size_t len) {
#ifdef MADV_HUGEPAGE
    if (len >= ((size_t)2 << 20)) (void)madvise(p, len, MADV_HUGEPAGE);
#else
    (void)p, (void)len;
#endif
}

/* Maps an existing, matching cache file; 0 on success, -1 if absent/stale. */
static int map_cache(cs_gpt2 *m, const char *path, const pack_header *want) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat sb;
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size == want->total)
        p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return -1;
    weights_hugepage(p, (size_t)sb.st_size);
    pack_header h;
    memcpy(&h, p, sizeof h);
    if (memcmp(&h, want, sizeof h) != 0) {
        munmap(p, (size_t)sb.st_size);
        return -1;
    }
    m->blob = p;
    m->blob_len = (size_t)sb.st_size;
    m->blob_mapped = 1;
    return 0;
}

/* Writes the blob to path atomically (temp file + rename). Failures are ignored
 * by the caller: the cache is an optimisation. */
static int write_cache(const char *path, const void *blob, size_t len) {
    char dir[PATH_MAX + 64], tmp[PATH_MAX + 96];
    if (strlen(path) >= PATH_MAX) return -1;
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) return -1;
    *slash = '\0';
    /* mkdir -p for the last two levels (~/.cache/cserve) */
    char *mid = strrchr(dir, '/');
    if (mid) {
        *mid = '\0';
        mkdir(dir, 0755);
        *mid = '/';
    }
    mkdir(dir, 0755);
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    const char *p = blob;
    size_t left = len;
    while (left) {
        ssize_t k = write(fd, p, left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        p += k;
        left -= (size_t)k;
    }
    int ok = left == 0 && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int cs_gpt2_load(cs_gpt2 **out, const cs_gpt2_config *cfg, const char *path, const cs_gpt2_opts *opts,
                 cs_err *err) {
    *out = NULL;
    const cs_gpt2_opts dflt = {0};
    if (!opts) opts = &dflt;
    cs_st *st = NULL;
    walk w = {0};
    cs_gpt2 *m = calloc(1, sizeof *m);
    if (!m) return cs_err_set(err, "out of memory");
    m->cfg = *cfg;
    m->wdtype = opts->dtype;
    m->kern = opts->kern ? opts->kern : cs_kern_best();
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        cs_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    w = (walk){.m = m, .err = err};
    if (walk_model(&w)) goto fail; /* sizing pass */
    const size_t total = w.off;
    pack_header hdr;
    fill_header(&hdr, m, &sb, total);
    const char *ne = getenv("CS_NO_CACHE");
    const int use_cache = !opts->no_cache && !(ne && *ne && strcmp(ne, "0") != 0);
    char cpath[PATH_MAX + 64];
    const int have_cpath = use_cache && cache_path(cpath, sizeof cpath, path, m->wdtype, opts->cache_dir) == 0;
    if (have_cpath && map_cache(m, cpath, &hdr) == 0) {
        m->from_cache = 1;
        w = (walk){.m = m, .base = m->blob, .err = err};
        walk_model(&w); /* points into the mapping; cannot fail without a source */
        *out = m;
        return 0;
    }
    if (cs_st_open(&st, path, err)) goto fail;
    if (cfg->n_layer < CS_GPT2_MAX_LAYER) { /* a checkpoint with more layers than the config is mismatched */
        char n[CS_ST_MAX_NAME];
        snprintf(n, sizeof n, "h.%d.ln_1.weight", cfg->n_layer);
        if (find_tensor(st, n)) {
            cs_err_set(err, "%s: tensor %s exists but config n_layer is %d", path, n, cfg->n_layer);
            goto fail;
        }
    }
    const size_t C = (size_t)cfg->n_embd, F = (size_t)cfg->n_inner, V = (size_t)cfg->vocab_size;
    size_t tmp_n = V * C > C * F ? V * C : C * F;
    if (3 * C * C > tmp_n) tmp_n = 3 * C * C;
    if ((size_t)cfg->n_positions * C > tmp_n) tmp_n = (size_t)cfg->n_positions * C;
    float *amax = NULL;
    if (m->wdtype == CS_W_I8 && calibrate(cfg, path, m->kern, &amax, err)) goto fail;
    w = (walk){.m = m, .err = err, .st = st, .tmp = malloc(tmp_n * sizeof(float)), .amax = amax,
               .sm = malloc((C > F ? C : F) * sizeof(double)), .sf = malloc((C > F ? C : F) * sizeof(float))};
    if (posix_memalign(&m->blob, (size_t)2 << 20, total) != 0) m->blob = NULL;
    else weights_hugepage(m->blob, total);
    if (!w.tmp || !w.sm || !w.sf || !m->blob) {
        free(w.tmp);
        free(w.sm);
        free(w.sf);
        free(amax);
        cs_err_set(err, "out of memory for %zu bytes of weights", total);
        goto fail;
    }
    m->blob_len = total;
    w.base = m->blob;
    int rc = walk_model(&w);
    free(w.tmp);
    free(w.sm);
    free(w.sf);
    free(amax);
    if (rc) goto fail;
    memset(m->blob, 0, PACK_HEADER);
    memcpy(m->blob, &hdr, sizeof hdr);
    cs_st_close(st);
    st = NULL;
    if (have_cpath && write_cache(cpath, m->blob, total) == 0 && map_cache(m, cpath, &hdr) == 0) {
        /* Switch to the shared read-only mapping so this process, too, holds one copy. */
        free(w.base);
        w = (walk){.m = m, .base = m->blob, .err = err};
        walk_model(&w);
    }
    *out = m;
    return 0;
fail:
    cs_st_close(st);
    cs_gpt2_free(m);
    return -1;
}

void cs_gpt2_free(cs_gpt2 *m) {
    if (!m) return;
    if (m->blob_mapped) munmap(m->blob, m->blob_len);
    else free(m->blob);
    free(m->layers);
    free(m);
}
