#include "engine/generate.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cs_gen_params_builtin(cs_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->sample.do_sample = 0;
    p->sample.temperature = 1.0f;
    p->sample.top_k = 50;
    p->sample.top_p = 1.0f;
    p->sample.repetition_penalty = 1.0f;
    p->max_new_tokens = -1;
    p->max_length = 20;
    p->eos_token_id = -1;
}

/* Applies the generation keys of obj (a generation_config.json or a
 * task_specific_params entry) onto p. Unrelated keys are ignored, as
 * transformers ignores them; known keys with the wrong type are errors. */
static int apply_gen_keys(cs_gen_params *p, json_t *obj, const char *where, cs_err *err) {
    json_t *v;
    if ((v = json_object_get(obj, "do_sample")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) return cs_err_set(err, "%s: key 'do_sample': expected true or false", where);
        p->sample.do_sample = json_is_true(v);
    }
    static const struct {
        const char *key;
        int is_int;
        double lo, hi;
    } nums[] = {
        {"temperature", 0, 0, 1e6},     {"top_p", 0, 0, 1},         {"repetition_penalty", 0, 0, 1e6},
        {"top_k", 1, 0, 1e9},           {"max_length", 1, 1, 1e9},  {"max_new_tokens", 1, 0, 1e9},
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        v = json_object_get(obj, nums[i].key);
        if (!v || json_is_null(v)) continue;
        if (nums[i].is_int ? !json_is_integer(v) : !json_is_number(v))
            return cs_err_set(err, "%s: key '%s': expected %s", where, nums[i].key,
                              nums[i].is_int ? "an integer" : "a number");
        double x = json_number_value(v);
        if (x < nums[i].lo || x > nums[i].hi)
            return cs_err_set(err, "%s: key '%s': %g outside [%g, %g]", where, nums[i].key, x, nums[i].lo, nums[i].hi);
        switch (i) {
        case 0: p->sample.temperature = (float)x; break;
        case 1: p->sample.top_p = (float)x; break;
        case 2: p->sample.repetition_penalty = (float)x; break;
        case 3: p->sample.top_k = (int)x; break;
        case 4: p->max_length = (int)x; break;
        case 5: p->max_new_tokens = (int)x; break;
        }
    }
    if ((v = json_object_get(obj, "eos_token_id")) && !json_is_null(v)) {
        json_t *first = json_is_array(v) ? json_array_get(v, 0) : v; /* a list: its first id */
        if (!json_is_integer(first) || json_integer_value(first) < 0)
            return cs_err_set(err, "%s: key 'eos_token_id': expected a non-negative integer", where);
        p->eos_token_id = (int)json_integer_value(first);
    }
    return 0;
}

static json_t *load_json(const char *path, int optional, cs_err *err, int *rc) {
    *rc = 0;
    if (optional && access(path, F_OK) != 0) return NULL;
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        *rc = je.line > 0 ? cs_err_set(err, "%s:%d:%d: %s", path, je.line, je.column, je.text)
                               : cs_err_set(err, "%s: %s", path, je.text);
    } else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        *rc = cs_err_set(err, "%s: top level is not a JSON object", path);
    }
    return j;
}

int cs_pipeline_defaults_parse(const char *s, cs_pipeline_defaults *out) {
    if (!s) return -1;
    if (!strcmp(s, "legacy")) {
        *out = CS_PIPELINE_451;
        return 0;
    }
    int major = 0, minor = 0, n = 0;
    if (sscanf(s, "%d%n", &major, &n) != 1 || major < 4) return -1;
    if (s[n] == '.' && sscanf(s + n + 1, "%d", &minor) != 1) return -1;
    if (strspn(s, "0123456789.") != strlen(s)) return -1;
    /* the pipeline's own max_new_tokens=256 arrived in 4.52 */
    *out = major == 4 && minor < 52 ? CS_PIPELINE_451 : CS_PIPELINE_457;
    return 0;
}

const char *cs_pipeline_defaults_name(cs_pipeline_defaults d) { return d == CS_PIPELINE_451 ? "4.51" : "4.57"; }

/* transformers' _prepare_generation_config with model defaults on: every key
 * that g leaves at generate()'s default takes the model's value, when that is
 * not the default. */
static void fill_from_model(cs_gen_params *g, const cs_gen_params *mg) {
    cs_gen_params d;
    cs_gen_params_builtin(&d);
#define FILL(f)                                  \
    if (g->f == d.f && mg->f != d.f) g->f = mg->f;
    FILL(sample.do_sample)
    FILL(sample.temperature)
    FILL(sample.top_k)
    FILL(sample.top_p)
    FILL(sample.repetition_penalty)
    FILL(max_length)
    FILL(max_new_tokens)
    FILL(eos_token_id)
#undef FILL
    if (g->sample.temperature == 0.0f) g->sample.do_sample = 0;
}

/* generate() fills from the model's generation config at call time only when
 * that config was written by transformers >= 4.50 (or says no version). */
static int fills_at_call(json_t *gen) {
    json_t *v = gen ? json_object_get(gen, "transformers_version") : NULL;
    if (!json_is_string(v)) return 1;
    int major = 0, minor = 0;
    if (sscanf(json_string_value(v), "%d.%d", &major, &minor) != 2) return 1;
    return major > 4 || (major == 4 && minor >= 50);
}

int cs_gen_params_load(cs_gen_params *p, const char *dir, cs_err *err) {
    return cs_gen_params_load_for(p, dir, CS_PIPELINE_457, err);
}

int cs_gen_params_load_for(cs_gen_params *p, const char *dir, cs_pipeline_defaults which, cs_err *err) {
    cs_gen_params mg; /* the model's generation config */
    cs_gen_params_builtin(&mg);
    cs_gen_params_builtin(p);
    char path[4096];
    int rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = load_json(path, 0, err, &rc);
    if (!cfg) return -1;
    json_t *v = json_object_get(cfg, "eos_token_id");
    if (json_is_integer(v) && json_integer_value(v) >= 0) mg.eos_token_id = (int)json_integer_value(v);
    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s/generation_config.json", dir);
    json_t *gen = load_json(gpath, 1, err, &rc);
    if (rc) goto fail;
    /* without generation_config.json, transformers builds it from config.json */
    if (apply_gen_keys(&mg, gen ? gen : cfg, gen ? gpath : path, err)) goto fail;
    if (which == CS_PIPELINE_457) {
        /* TextGenerationPipeline._default_generation_config */
        p->max_new_tokens = 256;
        p->sample.do_sample = 1;
        p->sample.temperature = 0.7f;
        fill_from_model(p, &mg);
        /* a max_length of the model's own beats the pipeline's length default */
        if (p->max_new_tokens == 256 && p->max_length != CS_GEN_DEFAULT_MAX_LENGTH) p->max_new_tokens = -1;
    } else {
        *p = mg;
    }
    json_t *tsp = json_object_get(cfg, "task_specific_params");
    json_t *tg = json_is_object(tsp) ? json_object_get(tsp, "text-generation") : NULL;
    if (json_is_object(tg) && apply_gen_keys(p, tg, path, err)) goto fail;
    if (fills_at_call(gen)) fill_from_model(p, &mg);
    json_decref(gen);
    json_decref(cfg);
    return 0;
fail:
    json_decref(gen);
    json_decref(cfg);
    return -1;
}

int cs_gen_new_tokens(const cs_gen_params *p, size_t n_prompt, int n_ctx, cs_err *err) {
    if (n_prompt == 0) return cs_err_set(err, "empty prompt: at least one token is needed");
    if (n_prompt > (size_t)n_ctx)
        return cs_err_set(err, "prompt has %zu tokens, the model's context is %d", n_prompt, n_ctx);
    long n;
    if (p->max_new_tokens >= 0) {
        n = p->max_new_tokens;
    } else {
        long ml = p->max_length;
        if (!p->max_length_given && ml == CS_GEN_DEFAULT_MAX_LENGTH) {
            ml = CS_GEN_DEFAULT_MAX_LENGTH + (long)n_prompt;
            if (ml > n_ctx) ml = n_ctx;
        }
        if (ml <= (long)n_prompt)
            return cs_err_set(err, "prompt has %zu tokens but max_length is %ld (max_length counts the prompt; "
                                   "raise it or set max_new_tokens)", n_prompt, ml);
        n = ml - (long)n_prompt;
    }
    /* the last new token is never fed back, so it needs no position */
    if (n > (long)n_ctx + 1 - (long)n_prompt)
        return cs_err_set(err, "prompt (%zu tokens) + %ld new tokens exceeds the model's context of %d "
                               "(at most %ld new tokens fit after this prompt)",
                          n_prompt, n, n_ctx, (long)n_ctx + 1 - (long)n_prompt);
    return (int)n;
}

int cs_gen_init(cs_gen *g, const cs_gpt2 *m, int n_ctx, cs_err *err) { return cs_gen_init_pool(g, m, n_ctx, NULL, err); }

int cs_gen_init_pool(cs_gen *g, const cs_gpt2 *m, int n_ctx, cs_pool *pool, cs_err *err) {
    memset(g, 0, sizeof *g);
    g->m = m;
    if (cs_gpt2_state_init(&g->st, m, n_ctx, 0, pool, err)) return -1;
    if (cs_sampler_init(&g->smp, (size_t)m->cfg.vocab_size, err)) goto fail;
    g->logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    g->seq = malloc(((size_t)g->st.n_ctx + 1) * sizeof(int32_t));
    if (!g->logits || !g->seq) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    return 0;
fail:
    cs_gen_free(g);
    return -1;
}

void cs_gen_free(cs_gen *g) {
    cs_gpt2_state_free(&g->st);
    cs_sampler_free(&g->smp);
    free(g->logits);
    free(g->seq);
    memset(g, 0, sizeof *g);
}

int cs_gen_run(cs_gen *g, const cs_gen_params *p, const int32_t *prompt, size_t n_prompt, cs_rng *rng,
               cs_gen_on_token cb, void *ud, cs_gen_result *res, cs_err *err) {
    memset(res, 0, sizeof *res);
    if (cs_sample_params_check(&p->sample, err)) return -1;
    int n_new = cs_gen_new_tokens(p, n_prompt, g->st.n_ctx, err);
    if (n_new < 0) return -1;
    cs_gpt2_state_reset(&g->st);
    memcpy(g->seq, prompt, n_prompt * sizeof *prompt);
    g->n_seq = n_prompt;
    res->n_prompt = n_prompt;
    res->tokens = g->seq + n_prompt;
    res->finish = CS_FINISH_LENGTH;
    if (n_new == 0) return 0;
    if (cs_gpt2_forward(g->m, &g->st, prompt, n_prompt, g->logits, 0, err)) return -1;
    for (int i = 0; i < n_new; i++) {
        int32_t tok = cs_sampler_pick(&g->smp, &p->sample, g->logits, g->seq, g->n_seq, rng);
        g->seq[g->n_seq++] = tok;
        res->n_tokens++;
        if (cb && cb(ud, tok)) {
            res->finish = CS_FINISH_STOPPED;
            break;
        }
        if (tok == p->eos_token_id && !p->ignore_eos) {
            res->finish = CS_FINISH_EOS;
            break;
        }
        if (i + 1 < n_new && cs_gpt2_forward(g->m, &g->st, &tok, 1, g->logits, 0, err)) return -1;
    }
    return 0;
}
