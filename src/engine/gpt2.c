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
#define PACK_MAGIC "CSPACK04"
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

/* A matrix packed into panels. Source shape (rows, cols); transposed: the
 * source is (N, K) (an embedding used as the LM head) instead of (K, N). */
static int walk_mat(walk *w, cs_pmat *pm, const char *name, size_t K, size_t N, int transposed, const float *bias) {
    const cs_wdtype dt = w->m->wdtype;
    void *wp = take(w, cs_pmat_wbytes(dt, K, N));
    float *sp = dt == CS_W_I8 ? take(w, cs_pmat_sbytes(dt, N)) : NULL;
    *pm = cs_pmat_view(dt, K, N, wp, sp, bias);
    if (!w->st) return 0;
    const int64_t shp[2] = {transposed ? (int64_t)N : (int64_t)K, transposed ? (int64_t)K : (int64_t)N};
    if (load_tensor(w->st, name, 2, shp, w->tmp, w->err)) return -1;
    cs_pmat_pack(dt, w->tmp, K, N, transposed ? K : N, transposed, wp, sp);
    return 0;
}

static int walk_model(walk *w) {
    cs_gpt2 *m = w->m;
    const cs_gpt2_config *c = &m->cfg;
    const size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    take(w, PACK_HEADER);
    if (walk_f32(w, &m->wpe, "wpe.weight", 2, (int64_t)P, (int64_t)C) ||
        walk_f32(w, &m->lnf_w, "ln_f.weight", 1, (int64_t)C, 0) ||
        walk_f32(w, &m->lnf_b, "ln_f.bias", 1, (int64_t)C, 0))
        return -1;
    if (c->tie_word_embeddings) {
        m->wte = NULL;
        if (walk_mat(w, &m->lm_head, "wte.weight", C, V, 1, NULL)) return -1;
    } else {
        if (w->st && !cs_st_find(w->st, "lm_head.weight"))
            return cs_err_set(w->err, "%s: missing tensor lm_head.weight (tie_word_embeddings is false)",
                              cs_st_path(w->st));
        if (walk_f32(w, &m->wte, "wte.weight", 2, (int64_t)V, (int64_t)C) ||
            walk_mat(w, &m->lm_head, "lm_head.weight", C, V, 1, NULL))
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
            walk_mat(w, &ly->qkv, NAME("attn.c_attn.weight"), C, 3 * C, 0, qkv_b) ||
            walk_mat(w, &ly->proj, NAME("attn.c_proj.weight"), C, C, 0, proj_b) ||
            walk_mat(w, &ly->fc, NAME("mlp.c_fc.weight"), C, F, 0, fc_b) ||
            walk_mat(w, &ly->fcproj, NAME("mlp.c_proj.weight"), F, C, 0, fcproj_b))
            return -1;
#undef NAME
    }
    w->off = (w->off + 63) & ~(size_t)63;
    return 0;
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
    w = (walk){.m = m, .err = err, .st = st, .tmp = malloc(tmp_n * sizeof(float))};
    if (posix_memalign(&m->blob, 64, total) != 0) m->blob = NULL;
    if (!w.tmp || !m->blob) {
        free(w.tmp);
        cs_err_set(err, "out of memory for %zu bytes of weights", total);
        goto fail;
    }
    m->blob_len = total;
    w.base = m->blob;
    int rc = walk_model(&w);
    free(w.tmp);
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
