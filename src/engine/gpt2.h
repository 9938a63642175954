/* cs_gpt2: the GPT-2 architecture: weights, KV caches, batched forward.
 *
 * Loading reads config.json + model.safetensors (F32/F16/BF16, tensor names
 * with or without the "transformer." prefix, lm_head tied to wte or not) and
 * repacks every matrix once into 16-column panels in the chosen weight dtype
 * (fp32, bf16, int8 with per-output-column scales; see engine/kernels.h). For
 * int8 the loader first runs the fp32 model over a few fixed calibration texts
 * and gives each matrix SmoothQuant factors from the largest activation seen
 * per input channel (kernels.h), so outlier channels do not swamp the one
 * activation scale per row. The
 * packed model is one contiguous blob; it is cached in a file keyed by the
 * source file's path, size and mtime, so later processes mmap it read-only (N
 * replicas share one copy in the page cache and start in milliseconds).
 *
 * cs_gpt2_step runs one forward over a batch of sequences at different
 * positions (decode tokens and prompt chunks together), each with its own KV
 * cache; matmuls see all rows at once, so weights are read once per step.
 * Work is split over a cs_pool when one is given. The step allocates nothing.
 *
 * Thread-safety: a loaded cs_gpt2 is immutable and may be shared; a workspace
 * and the KV caches passed to a step belong to that step's caller. */
#ifndef CS_GPT2_H
#define CS_GPT2_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/kernels.h"
#include "engine/kvpool.h"
#include "engine/threadpool.h"

typedef enum cs_act {
    CS_ACT_GELU_TANH, /* "gelu_new", "gelu_pytorch_tanh", "gelu_fast": GPT-2's tanh form */
    CS_ACT_GELU_ERF,  /* "gelu" */
    CS_ACT_RELU,      /* "relu" */
    CS_ACT_SILU,      /* "silu", "swish" */
    CS_ACT_QUICK,     /* "quick_gelu": x * sigmoid(1.702 x) */
} cs_act;

/* Limits on what a config.json may ask for (named so errors can cite them). */
#define CS_GPT2_MAX_LAYER 256
#define CS_GPT2_MAX_EMBD 16384
#define CS_GPT2_MAX_POSITIONS 131072
#define CS_GPT2_MAX_VOCAB 1048576

typedef struct cs_gpt2_config {
    int n_layer, n_head, n_embd, n_inner, n_positions, vocab_size;
    float layer_norm_epsilon;
    cs_act act;
    int scale_attn_weights;              /* divide scores by sqrt(head_dim) */
    int scale_attn_by_inverse_layer_idx; /* also divide by (layer + 1) */
    int tie_word_embeddings;
    int bos_token_id, eos_token_id;      /* -1 when absent */
} cs_gpt2_config;

/* Parses config.json (strict about types, tolerant of unrelated keys).
 * Errors read "PATH: key 'n_embd': ..." */
int cs_gpt2_config_load(cs_gpt2_config *cfg, const char *path, cs_err *err);

typedef struct cs_gpt2_layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* (C) */
    cs_pmat qkv;    /* C -> 3C */
    cs_pmat proj;   /* C -> C */
    cs_pmat fc;     /* C -> F (F = n_inner) */
    cs_pmat fcproj; /* F -> C */
} cs_gpt2_layer;

typedef struct cs_gpt2 {
    cs_gpt2_config cfg;
    cs_wdtype wdtype;
    const float *wpe;           /* (P, C) */
    const float *lnf_w, *lnf_b; /* (C) */
    const float *wte;           /* (V, C) input embeddings when untied; NULL when tied */
    cs_pmat lm_head;            /* C -> V; when tied also the input embeddings */
    cs_gpt2_layer *layers;      /* (L) */
    const cs_kern *kern;
    void *blob;                 /* everything above points into it */
    size_t blob_len;
    int blob_mapped;            /* 1: mmap of the cache file, 0: malloc */
    int from_cache;             /* loaded from an existing cache file */
} cs_gpt2;

typedef struct cs_gpt2_opts {
    cs_wdtype dtype;       /* default fp32 */
    int no_cache;          /* don't read or write the packed cache file */
    const char *cache_dir; /* NULL: $CS_CACHE_DIR, $XDG_CACHE_HOME/cserve or ~/.cache/cserve */
    const cs_kern *kern;   /* NULL: cs_kern_best() */
} cs_gpt2_opts;

/* Loads (or maps the cached packing of) a safetensors file for a parsed config.
 * opts may be NULL (fp32, cache on). A cache that cannot be written is not an
 * error: the packed weights then live in memory. CS_NO_CACHE=1 disables it. */
int cs_gpt2_load(cs_gpt2 **out, const cs_gpt2_config *cfg, const char *safetensors_path,
                 const cs_gpt2_opts *opts, cs_err *err);
void cs_gpt2_free(cs_gpt2 *m);

/* One sequence's KV cache: a table of blocks from a cs_kvpool (kvpool.h),
 * taken as the sequence grows. Either private (cs_gpt2_kv_init: a pool of its
 * own with room for n_ctx tokens) or drawing on a pool shared with other
 * sequences (cs_gpt2_kv_attach), where a step can find the pool empty. */
typedef struct cs_gpt2_kv {
    int n_ctx;        /* capacity in tokens (<= n_positions) */
    int n_past;       /* tokens already cached */
    cs_kvpool *pool;
    int own_pool;
    void **blk;       /* (ceil(n_ctx / CS_KV_BLOCK)); the first n_blk are held */
    int n_blk;
} cs_gpt2_kv;

/* n_ctx <= 0 or > n_positions means n_positions. */
int cs_gpt2_kv_init(cs_gpt2_kv *kv, const cs_gpt2 *m, int n_ctx, cs_kvdtype dt, cs_err *err);
/* A cache on a shared pool (borrowed; it must outlive kv and match the model's shape). */
int cs_gpt2_kv_attach(cs_gpt2_kv *kv, const cs_gpt2 *m, cs_kvpool *pool, int n_ctx, cs_err *err);
/* Holds blocks for n_tokens positions in all (n_tokens <= n_ctx). 0, or -1
 * when the pool has too few free blocks (the blocks taken so far are kept). */
int cs_gpt2_kv_reserve(cs_gpt2_kv *kv, int n_tokens);
/* Blocks the cache still needs for n_tokens positions in all. */
int cs_gpt2_kv_blocks_needed(const cs_gpt2_kv *kv, int n_tokens);
/* Empties the cache and gives its blocks back to the pool. */
void cs_gpt2_kv_clear(cs_gpt2_kv *kv);
void cs_gpt2_kv_free(cs_gpt2_kv *kv);

/* Scratch for steps of up to max_tokens tokens with up to max_logit_rows rows
 * of logits. pool may be NULL (single thread); it is borrowed, not owned. */
typedef struct cs_gpt2_ws {
    int max_tokens, max_logit_rows, n_threads;
    cs_pool *pool;
    float *x;      /* (T, C) residual stream */
    float *h;      /* (T, C) layernorm / attention output */
    float *qkv;    /* (T, 3C) */
    float *ff;     /* (T, F) */
    float *att;    /* (n_threads, 16 * P) attention scores (gpt2_forward.c) */
    float *lrows;  /* (R, C) final hidden rows that need logits */
    float *logits; /* (R, V) */
    int *row_seq, *row_pos; /* (T) which sequence / absolute position each row is */
    int8_t *q8;  /* (max(T, R), K rounded up to 4) quantized int8 matmul input, or NULL (no pool) */
    float *sx8;  /* its row scales */
    /* Calibration (int8 packing, gpt2.c): NULL normally; else (L * (3C + F) + C)
     * running per-channel max |x| of every matmul input: per layer the inputs of
     * qkv (C), proj (C), fc (C) and fcproj (F), then the LM head's (C). Set and
     * owned by the caller; steps only raise it. */
    float *amax;
} cs_gpt2_ws;

int cs_gpt2_ws_init(cs_gpt2_ws *ws, const cs_gpt2 *m, int max_tokens, int max_logit_rows, cs_pool *pool,
                    cs_err *err);
void cs_gpt2_ws_free(cs_gpt2_ws *ws);

/* One sequence's part of a step: n tokens appended to kv. logits: NULL (none),
 * (V) for the last token, or (n, V) when all_logits. */
typedef struct cs_gpt2_seq {
    cs_gpt2_kv *kv;
    const int32_t *tokens;
    int n;
    float *logits;
    int all_logits;
} cs_gpt2_seq;

/* Runs one batched forward. Fails without changing any cache's tokens when a
 * token is out of range, a cache would overflow, the batch exceeds the
 * workspace, or a shared pool runs out of blocks (blocks reserved before that
 * stay with their caches). */
int cs_gpt2_step(const cs_gpt2 *m, cs_gpt2_ws *ws, cs_gpt2_seq *seqs, int n_seqs, cs_err *err);

/* Convenience for one sequence (tests, the CLI): a KV cache plus a workspace
 * for chunks of max_chunk tokens; longer inputs are split into chunks. */
typedef struct cs_gpt2_state {
    cs_gpt2_kv kv;
    cs_gpt2_ws ws;
    int n_past; /* mirror of kv.n_past */
    int n_ctx;
} cs_gpt2_state;

/* n_ctx <= 0 means n_positions; max_chunk <= 0 means 64. pool may be NULL. */
int cs_gpt2_state_init(cs_gpt2_state *s, const cs_gpt2 *m, int n_ctx, int max_chunk, cs_pool *pool, cs_err *err);
void cs_gpt2_state_free(cs_gpt2_state *s);
static inline void cs_gpt2_state_reset(cs_gpt2_state *s) {
    cs_gpt2_kv_clear(&s->kv);
    s->n_past = 0;
}

/* Appends n tokens and writes logits: (n, V) when all_logits, else (V) for the
 * last token. Fails (state unchanged) on bad ids or context overflow. */
int cs_gpt2_forward(const cs_gpt2 *m, cs_gpt2_state *s, const int32_t *tokens, size_t n, float *logits,
                    int all_logits, cs_err *err);

#endif
