/* cs_model: a Hugging Face GPT-2 model directory, loaded.
 *
 *   DIR/config.json             architecture (cs_gpt2_config)
 *   DIR/model.safetensors       weights
 *   DIR/vocab.json, merges.txt  tokenizer
 *   DIR/generation_config.json  optional generation defaults
 *   DIR/tokenizer_config.json   optional: clean_up_tokenization_spaces
 *
 * Immutable after load: share one cs_model between threads; each generating
 * thread owns its cs_gen. */
#ifndef CS_MODEL_H
#define CS_MODEL_H

#include "engine/err.h"
#include "engine/generate.h"
#include "engine/gpt2.h"
#include "engine/tokenizer.h"

typedef struct cs_model {
    char *dir;
    cs_gpt2 *net;
    cs_tok *tok;
    cs_gen_params defaults;        /* the pipeline's, transformers >= 4.52: cs_gen_params_load */
    cs_gen_params defaults_legacy; /* transformers <= 4.51: cs_gen_params_load_for(CS_PIPELINE_451) */
    int clean_up_spaces;           /* tokenizer_config.json's clean_up_tokenization_spaces (default false) */
} cs_model;

/* Errors name the file at fault ("DIR/model.safetensors: tensor h.0...: ...").
 * opts (may be NULL: fp32, packed cache on) choose the weight dtype etc. */
int cs_model_load(cs_model **out, const char *dir, cs_err *err);
int cs_model_load_opts(cs_model **out, const char *dir, const cs_gpt2_opts *opts, cs_err *err);
void cs_model_free(cs_model *m);

#endif
