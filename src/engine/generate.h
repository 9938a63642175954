/* cs_gen: the autoregressive generation loop for one sequence.
 *
 * Semantics follow transformers' generate() as the text-generation pipeline
 * calls it (reference release 4.57.6; 4.51.3 for the legacy defaults): the
 * prompt is processed, then tokens are picked one at a time (cs_sampler)
 * until EOS (unless ignore_eos), max_new_tokens, or - when max_new_tokens is
 * unset - max_length total tokens counting the prompt.
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
    int max_new_tokens;   /* -1: use max_length */
    int max_length;       /* prompt + new tokens; used when max_new_tokens < 0 */
    int max_length_given; /* max_length came with the call (request, CLI): see cs_gen_new_tokens */
    int eos_token_id;     /* -1: none */
    int ignore_eos;       /* generate the full length even past EOS */
} cs_gen_params;

/* generate()'s own max_length, which the call did not choose: it then means
 * CS_GEN_DEFAULT_MAX_LENGTH new tokens, up to the context. */
#define CS_GEN_DEFAULT_MAX_LENGTH 20

/* Which transformers' text-generation pipeline the defaults follow.
 *   CS_PIPELINE_457  transformers >= 4.52 (reference 4.57.6, what the seed's pin
 *                    `transformers>=4.52.4` installs): the pipeline's own
 *                    max_new_tokens=256, do_sample=true, temperature=0.7 come
 *                    first; the model's generation_config.json fills only what
 *                    the pipeline leaves at generate()'s defaults (a max_length
 *                    there other than 20 turns the 256 off); then
 *                    task_specific_params["text-generation"] is applied on top
 *                    (distilgpt2's max_length=50 then changes nothing, since
 *                    max_new_tokens wins).
 *   CS_PIPELINE_451  transformers <= 4.51 (reference 4.51.3): the model's
 *                    generation config, then task_specific_params (distilgpt2:
 *                    sampling up to max_length=50 counting the prompt). */
typedef enum cs_pipeline_defaults { CS_PIPELINE_457 = 0, CS_PIPELINE_451 = 1 } cs_pipeline_defaults;

/* "4.57" (also "4.52" and later 4.x, "5") or "4.51" (also "legacy" and older
 * 4.x) -> *out; -1 for anything else. */
int cs_pipeline_defaults_parse(const char *s, cs_pipeline_defaults *out);
const char *cs_pipeline_defaults_name(cs_pipeline_defaults d); /* "4.57" or "4.51" */

/* transformers' built-in defaults: greedy, max_length 20, top_k 50, top_p 1,
 * temperature 1, repetition_penalty 1, no EOS. */
void cs_gen_params_builtin(cs_gen_params *p);

/* Defaults for a model directory, as the text-generation pipeline of release
 * `which` resolves them (see cs_pipeline_defaults) from generation_config.json
 * (or, without it, config.json's top-level generation keys) and config.json's
 * task_specific_params["text-generation"]. Errors name the file and key.
 * cs_gen_params_load is cs_gen_params_load_for(CS_PIPELINE_457). */
int cs_gen_params_load(cs_gen_params *p, const char *model_dir, cs_err *err);
int cs_gen_params_load_for(cs_gen_params *p, const char *model_dir, cs_pipeline_defaults which, cs_err *err);

/* Number of new tokens p asks for after a prompt of n_prompt tokens, or -1 with
 * err (saying what fits) where transformers raises:
 *  - max_new_tokens when set; else max_length counting the prompt, where a
 *    max_length of CS_GEN_DEFAULT_MAX_LENGTH that the call did not give means
 *    20 new tokens, capped at the context; a prompt that already reaches
 *    max_length is refused (transformers raises ValueError);
 *  - the prompt must fit n_ctx, and prompt + new tokens at most n_ctx + 1 (the
 *    last token is never fed back; one more needs a position the model lacks:
 *    IndexError in transformers). */
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
    int32_t *seq;  /* (n_ctx + 1) prompt followed by generated ids */
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
