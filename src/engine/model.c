#include "engine/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cs_model_load(cs_model **out, const char *dir, cs_err *err) { return cs_model_load_opts(out, dir, NULL, err); }

int cs_model_load_opts(cs_model **out, const char *dir, const cs_gpt2_opts *opts, cs_err *err) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cs_err_set(err, "%s: not a model directory (expected config.json, model.safetensors, vocab.json, "
                               "merges.txt)", dir);
    cs_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        return cs_err_set(err, "out of memory");
    }
    char p1[4096], p2[4096];
    cs_gpt2_config cfg;
    snprintf(p1, sizeof p1, "%s/config.json", dir);
    if (cs_gpt2_config_load(&cfg, p1, err)) goto fail;
    if (cs_gen_params_load(&m->defaults, dir, err)) goto fail;
    if (cs_gen_params_load_for(&m->defaults_legacy, dir, CS_PIPELINE_451, err)) goto fail;
    if (cs_tok_config_clean_up(dir, &m->clean_up_spaces, err)) goto fail;
    snprintf(p1, sizeof p1, "%s/vocab.json", dir);
    snprintf(p2, sizeof p2, "%s/merges.txt", dir);
    if (cs_tok_load(&m->tok, p1, p2, err)) goto fail;
    if (cs_tok_vocab_size(m->tok) > cfg.vocab_size) {
        cs_err_set(err, "%s: tokenizer has %d ids but config.json vocab_size is %d", p1, cs_tok_vocab_size(m->tok),
                   cfg.vocab_size);
        goto fail;
    }
    snprintf(p1, sizeof p1, "%s/model.safetensors", dir);
    if (cs_gpt2_load(&m->net, &cfg, p1, opts, err)) goto fail;
    *out = m;
    return 0;
fail:
    cs_model_free(m);
    return -1;
}

void cs_model_free(cs_model *m) {
    if (!m) return;
    cs_gpt2_free(m->net);
    cs_tok_free(m->tok);
    free(m->dir);
    free(m);
}
