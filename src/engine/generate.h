/* cs_gen: the autoregressive generation loop for one sequence.
 *
 * Semantics follow transformers' generate() as the text-generation pipeline
 * calls it: the prompt is processed, then tokens are picked one at a time
 * (cs_sampler) until EOS (unless ignore_eos), max_new_tokens, or - when
 * max_new_tokens is unset - max_length total tokens counting the prompt.
 *
 * A cs_gen owns a KV cache, sampler scratch and a logits buffer sized at init;
 * cs_gen_run allocates nothing. Not thread-safe: one cs_gen per thread; the
 * cs_gpt2 it points to may be shared. */
#ifndef CS_GENERATE_H
#define CS_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/gpt2.h"
#include "engine/sampler.h"

typedef struct cs_gen_params {
    cs_sample_params sample;
    int max_new_tokens; /* -1: use max_length */
    int max_length;     /* prompt + new tokens; used when max_new_tokens < 0 */
    int eos_token_id;   /* -1: none */
    int ignore_eos;     /* generate the full length even past EOS */
} cs_gen_params;

/* transformers' built-in defaults: greedy, max_length 20, top_k 50, top_p 1,
 * temperature 1, repetition_penalty 1, no EOS. */
void cs_gen_params_builtin(cs_gen_params *p);

/* Defaults for a model directory, as the text-generation pipeline resolves them:
 * built-ins, then config.json (eos_token_id), then generation_config.json (when
 * present), then config.json's task_specific_params["text-generation"] (this is
 * where distilgpt2 carries do_sample=true, max_length=50). Errors name the file
 * and key. */
int cs_gen_params_load(cs_gen_params *p, const char *model_dir, cs_err *err);

/* Number of new tokens p asks for after a prompt of n_prompt tokens, or -1 with
 * err when the request cannot be satisfied within n_ctx. */
int cs_gen_new_tokens(const cs_gen_params *p, size_t n_prompt, int n_ctx, cs_err *err);

typedef enum cs_finish { CS_FINISH_LENGTH, CS_FINISH_EOS, CS_FINISH_STOPPED } cs_finish;

/* Called for every new token (the EOS token included); return non-zero to
 * stop generation (client gone, stop string seen). */
typedef int (*cs_gen_on_token)(void *ud, int32_t token);

typedef struct cs_gen {
    const cs_gpt2 *m;
    cs_gpt2_state st;
    cs_sampler smp;
    float *logits; /* (V) */
    int32_t *seq;  /* (n_ctx) prompt followed by generated ids */
    size_t n_seq;
} cs_gen;

/* n_ctx <= 0: the model's n_positions. pool (may be NULL) is borrowed for the
 * forward passes and must outlive g. */
int cs_gen_init(cs_gen *g, const cs_gpt2 *m, int n_ctx, cs_err *err);
int cs_gen_init_pool(cs_gen *g, const cs_gpt2 *m, int n_ctx, cs_pool *pool, cs_err *err);
void cs_gen_free(cs_gen *g);

typedef struct cs_gen_result {
    const int32_t *tokens; /* new tokens (into g->seq; valid until the next run) */
    size_t n_tokens;
    size_t n_prompt;
    cs_finish finish;
} cs_gen_result;

/* Generates from prompt. rng is used only when sampling. cb may be NULL. */
int cs_gen_run(cs_gen *g, const cs_gen_params *p, const int32_t *prompt, size_t n_prompt, cs_rng *rng,
               cs_gen_on_token cb, void *ud, cs_gen_result *res, cs_err *err);

#endif
