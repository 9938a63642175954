/* cs_gpt2: the GPT-2 architecture (fp32 reference path) with a KV cache.
 *
 * A model is loaded from config.json + model.safetensors (F32/F16/BF16, tensor
 * names with or without the "transformer." prefix, lm_head tied to wte). All
 * weights are converted once into one fp32 params buffer owned by cs_gpt2.
 * The forward pass appends tokens to a cs_gpt2_state (one sequence's KV cache)
 * and returns next-token logits. The per-token path allocates nothing.
 *
 * Thread-safety: a loaded cs_gpt2 is immutable and may be shared; a
 * cs_gpt2_state belongs to one thread at a time. */
#ifndef CS_GPT2_H
#define CS_GPT2_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

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
    const float *ln1_w, *ln1_b;     /* (C) */
    const float *qkv_w, *qkv_b;     /* (C, 3C), (3C) */
    const float *proj_w, *proj_b;   /* (C, C), (C) */
    const float *ln2_w, *ln2_b;     /* (C) */
    const float *fc_w, *fc_b;       /* (C, F), (F)   F = n_inner */
    const float *fcproj_w, *fcproj_b; /* (F, C), (C) */
} cs_gpt2_layer;

typedef struct cs_gpt2 {
    cs_gpt2_config cfg;
    float *params; /* one buffer, all weights below point into it */
    size_t n_params;
    const float *wte;  /* (V, C) */
    const float *lm_head; /* (V, C): wte when tied (tie_word_embeddings, the default) */
    const float *wpe;  /* (P, C) */
    const float *lnf_w, *lnf_b; /* (C) */
    cs_gpt2_layer *layers; /* (L) */
} cs_gpt2;

/* Loads weights from a safetensors file for an already-parsed config. */
int cs_gpt2_load(cs_gpt2 **out, const cs_gpt2_config *cfg, const char *safetensors_path, cs_err *err);
void cs_gpt2_free(cs_gpt2 *m);

typedef struct cs_gpt2_state {
    int n_ctx;     /* KV capacity in tokens (<= n_positions) */
    int max_chunk; /* tokens processed per internal step */
    int n_past;    /* tokens already in the cache */
    float *k, *v;  /* (L, n_ctx, C) each */
    /* activations for one chunk of T <= max_chunk tokens */
    float *x;      /* (T, C) residual stream */
    float *h;      /* (T, C) layernorm output / attention output */
    float *qkv;    /* (T, 3C) */
    float *ff;     /* (T, F) */
    float *att;    /* (n_ctx) attention scores for one query */
} cs_gpt2_state;

/* n_ctx <= 0 means n_positions; max_chunk <= 0 means 64. */
int cs_gpt2_state_init(cs_gpt2_state *s, const cs_gpt2 *m, int n_ctx, int max_chunk, cs_err *err);
void cs_gpt2_state_free(cs_gpt2_state *s);
static inline void cs_gpt2_state_reset(cs_gpt2_state *s) { s->n_past = 0; }

/* Appends n tokens at positions n_past.. and writes logits: (n, V) when
 * all_logits, else (V) for the last token only. Fails (state unchanged) when a
 * token id is out of range or the context would exceed n_ctx. */
int cs_gpt2_forward(const cs_gpt2 *m, cs_gpt2_state *s, const int32_t *tokens, size_t n,
                    float *logits, int all_logits, cs_err *err);

#endif
