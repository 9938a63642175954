/* Generation loop: defaults resolved like the text-generation pipeline, length
 * and EOS rules of generate(), seeds, early stop, and model-directory errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/tokenizer.h"
#include "testutil.h"

static cs_model *tiny;

static int setup(void **state) {
    (void)state;
    cs_err err;
    if (cs_model_load(&tiny, "build/models/tiny", &err)) fail_msg("%s", err.msg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    cs_model_free(tiny);
    return 0;
}

/* distilgpt2 carries task_specific_params {"text-generation": {"do_sample": true,
 * "max_length": 50}}. transformers >= 4.52 (reference 4.57.6): the pipeline's own
 * max_new_tokens=256, do_sample, temperature 0.7 come first, so max_length 50 no
 * longer limits anything; <= 4.51: max_length 50 counting the prompt. */
static void test_pipeline_defaults(void **state) {
    (void)state;
    cs_gen_params p;
    cs_err err;
    assert_int_equal(cs_gen_params_load(&p, "build/models/distil", &err), 0);
    assert_int_equal(p.sample.do_sample, 1);
    assert_int_equal(p.max_new_tokens, 256);
    assert_int_equal(p.max_length, 50);
    assert_int_equal(p.sample.top_k, 50);
    assert_true(p.sample.top_p == 1.0f && p.sample.temperature == 0.7f && p.sample.repetition_penalty == 1.0f);
    assert_int_equal(p.eos_token_id, 50256);
    assert_int_equal(cs_gen_params_load_for(&p, "build/models/distil", CS_PIPELINE_451, &err), 0);
    assert_int_equal(p.sample.do_sample, 1);
    assert_int_equal(p.max_length, 50);
    assert_int_equal(p.max_new_tokens, -1);
    assert_true(p.sample.temperature == 1.0f);
    /* Without task_specific_params: 256 new tokens at 0.7; <= 4.51 generate()'s own defaults. */
    assert_int_equal(tiny->defaults.sample.do_sample, 1);
    assert_int_equal(tiny->defaults.max_new_tokens, 256);
    assert_int_equal(tiny->defaults.eos_token_id, 50256);
    assert_int_equal(tiny->defaults_legacy.sample.do_sample, 0);
    assert_int_equal(tiny->defaults_legacy.max_length, 20);
    assert_int_equal(tiny->defaults_legacy.max_new_tokens, -1);
    assert_int_equal(cs_gen_new_tokens(&tiny->defaults_legacy, 4, 128, &err), 20); /* 20 new */
    assert_int_equal(cs_gen_new_tokens(&tiny->defaults_legacy, 120, 128, &err), 8); /* up to the context */
    assert_int_equal(cs_gen_new_tokens(&tiny->defaults, 4, 128, &err), -1);         /* 256 do not fit */
    assert_non_null(strstr(err.msg, "at most 125 new tokens"));
    cs_pipeline_defaults d;
    assert_int_equal(cs_pipeline_defaults_parse("4.51", &d), 0);
    assert_int_equal(d, CS_PIPELINE_451);
    assert_int_equal(cs_pipeline_defaults_parse("4.57.6", &d), 0);
    assert_int_equal(d, CS_PIPELINE_457);
    assert_int_equal(cs_pipeline_defaults_parse("5", &d), 0);
    assert_int_equal(d, CS_PIPELINE_457);
    assert_int_equal(cs_pipeline_defaults_parse("4.x", &d), -1);
    assert_int_equal(cs_pipeline_defaults_parse("3.0", &d), -1);
}

/* transformers' clean_up_tokenization and the pipeline's cut by the prompt's decode. */
static void test_clean_up(void **state) {
    (void)state;
    char s[] = "Hello , world . It 's what you 're doing , isn 't it ?  .";
    size_t n = cs_tok_clean_up_spaces(s, strlen(s));
    assert_string_equal(s, "Hello, world. It's what you're doing, isn 't it? ."); /* as transformers 4.57.6 */
    assert_int_equal(n, strlen(s));
    char *t;
    size_t tl, stable;
    /* "He said '" + " yes" -> "He said'yes": the cut by len("He said '") eats " y" */
    assert_int_equal(cs_tok_pipeline_text("He said '", 9, " yes", 4, 1, 1, &t, &tl, &stable), 0);
    assert_string_equal(t, "es");
    assert_int_equal(stable, tl);
    free(t);
    assert_int_equal(cs_tok_pipeline_text("He said '", 9, " yes", 4, 0, 1, &t, &tl, &stable), 0);
    assert_string_equal(t, " yes");
    free(t);
    /* the cut counts code points; an incomplete character waits while more may come */
    assert_int_equal(cs_tok_pipeline_text("caf\xc3\xa9", 5, " ,\xe2\x82", 4, 1, 0, &t, &tl, &stable), 0);
    assert_string_equal(t, ",");
    assert_int_equal(stable, 0); /* the clean-up may still change the last characters */
    free(t);
    assert_int_equal(cs_tok_pipeline_text("caf\xc3\xa9", 5, " ,\xe2\x82", 4, 1, 1, &t, &tl, &stable), 0);
    assert_string_equal(t, ",\xef\xbf\xbd");
    free(t);
    /* tokenizer_config.json's clean_up_tokenization_spaces: false when absent */
    char dir[] = "/tmp/cs-tokcfg-XXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    int clean = -1;
    cs_err err;
    assert_int_equal(cs_tok_config_clean_up(dir, &clean, &err), 0);
    assert_int_equal(clean, 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"model_max_length\": 1024, \"clean_up_tokenization_spaces\": true}", f);
    fclose(f);
    assert_int_equal(cs_tok_config_clean_up(dir, &clean, &err), 0);
    assert_int_equal(clean, 1);
    f = fopen(path, "w");
    fputs("{\"clean_up_tokenization_spaces\": \"yes\"}", f);
    fclose(f);
    assert_int_equal(cs_tok_config_clean_up(dir, &clean, &err), -1);
    assert_non_null(strstr(err.msg, "clean_up_tokenization_spaces"));
    unlink(path);
    rmdir(dir);
}

static void test_generation_config_overrides_and_errors(void **state) {
    (void)state;
    char dir[] = "/tmp/cs-gen-test-XXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"eos_token_id\": 7, \"task_specific_params\": {\"text-generation\": {\"max_length\": 30}}}", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"do_sample\": true, \"top_p\": 0.9, \"temperature\": 0.7, \"max_length\": 99, \"eos_token_id\": [3, 4]}", f);
    fclose(f);
    cs_gen_params p;
    cs_err err;
    assert_int_equal(cs_gen_params_load(&p, dir, &err), 0);
    assert_int_equal(p.sample.do_sample, 1);
    assert_true(p.sample.top_p == 0.9f && p.sample.temperature == 0.7f);
    assert_int_equal(p.max_length, 30); /* the task's value wins, as in the pipeline */
    assert_int_equal(p.eos_token_id, 3);
    f = fopen(path, "w");
    fputs("{\"top_k\": \"fifty\"}", f);
    fclose(f);
    assert_int_equal(cs_gen_params_load(&p, dir, &err), -1);
    assert_non_null(strstr(err.msg, "generation_config.json"));
    assert_non_null(strstr(err.msg, "top_k"));
    f = fopen(path, "w");
    fputs("{\"top_p\": 1.5", f);
    fclose(f);
    assert_int_equal(cs_gen_params_load(&p, dir, &err), -1);
    assert_non_null(strstr(err.msg, "generation_config.json:1"));
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_length_rules(void **state) {
    (void)state;
    cs_gen_params p;
    cs_gen_params_builtin(&p);
    cs_err err;
    p.max_length = 50;
    assert_int_equal(cs_gen_new_tokens(&p, 4, 1024, &err), 46); /* max_length counts the prompt */
    assert_int_equal(cs_gen_new_tokens(&p, 50, 1024, &err), -1);
    assert_non_null(strstr(err.msg, "max_length"));
    p.max_new_tokens = 10; /* wins over max_length */
    assert_int_equal(cs_gen_new_tokens(&p, 60, 1024, &err), 10);
    assert_int_equal(cs_gen_new_tokens(&p, 1020, 1024, &err), -1);
    assert_non_null(strstr(err.msg, "context"));
    assert_int_equal(cs_gen_new_tokens(&p, 0, 1024, &err), -1);
    assert_non_null(strstr(err.msg, "empty prompt"));
}

static int32_t first_greedy_token(cs_gen *g, const int32_t *prompt, size_t n) {
    cs_gen_params p;
    cs_gen_params_builtin(&p);
    p.max_new_tokens = 1;
    cs_gen_result r;
    cs_err err;
    assert_int_equal(cs_gen_run(g, &p, prompt, n, NULL, NULL, NULL, &r, &err), 0);
    return r.tokens[0];
}

static void test_eos_and_limits(void **state) {
    (void)state;
    cs_gen g;
    cs_err err;
    assert_int_equal(cs_gen_init(&g, tiny->net, 0, &err), 0);
    const int32_t prompt[] = {7454, 2402, 257, 640};
    int32_t t0 = first_greedy_token(&g, prompt, 4);
    cs_gen_params p;
    cs_gen_params_builtin(&p);
    p.max_new_tokens = 16;
    p.eos_token_id = t0; /* make the first token the EOS */
    cs_gen_result r;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 4, NULL, NULL, NULL, &r, &err), 0);
    assert_int_equal(r.n_tokens, 1);
    assert_int_equal(r.finish, CS_FINISH_EOS);
    p.ignore_eos = 1;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 4, NULL, NULL, NULL, &r, &err), 0);
    assert_int_equal(r.n_tokens, 16);
    assert_int_equal(r.finish, CS_FINISH_LENGTH);
    p.max_new_tokens = -1;
    p.max_length = 9;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 4, NULL, NULL, NULL, &r, &err), 0);
    assert_int_equal(r.n_tokens, 5);
    p.max_new_tokens = 0;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 4, NULL, NULL, NULL, &r, &err), 0);
    assert_int_equal(r.n_tokens, 0);
    p.max_new_tokens = 4;
    p.sample.do_sample = 1;
    p.sample.temperature = 0;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 4, NULL, NULL, NULL, &r, &err), -1);
    assert_non_null(strstr(err.msg, "temperature"));
    cs_gen_free(&g);
}

static int stop_after_3(void *ud, int32_t tok) {
    (void)tok;
    return ++*(int *)ud >= 3;
}

static void test_seed_and_stop(void **state) {
    (void)state;
    cs_gen g;
    cs_err err;
    assert_int_equal(cs_gen_init(&g, tiny->net, 0, &err), 0);
    const int32_t prompt[] = {464, 2068, 7586};
    cs_gen_params p;
    cs_gen_params_builtin(&p);
    p.sample.do_sample = 1;
    p.sample.top_k = 0;
    p.max_new_tokens = 24;
    p.ignore_eos = 1;
    int32_t a[24], b[24];
    cs_gen_result r;
    cs_rng rng;
    cs_rng_seed(&rng, 123);
    assert_int_equal(cs_gen_run(&g, &p, prompt, 3, &rng, NULL, NULL, &r, &err), 0);
    memcpy(a, r.tokens, sizeof a);
    cs_rng_seed(&rng, 123);
    assert_int_equal(cs_gen_run(&g, &p, prompt, 3, &rng, NULL, NULL, &r, &err), 0);
    assert_memory_equal(a, r.tokens, sizeof a);
    cs_rng_seed(&rng, 124);
    assert_int_equal(cs_gen_run(&g, &p, prompt, 3, &rng, NULL, NULL, &r, &err), 0);
    memcpy(b, r.tokens, sizeof b);
    assert_memory_not_equal(a, b, sizeof a);
    int count = 0;
    assert_int_equal(cs_gen_run(&g, &p, prompt, 3, &rng, stop_after_3, &count, &r, &err), 0);
    assert_int_equal(r.n_tokens, 3);
    assert_int_equal(r.finish, CS_FINISH_STOPPED);
    cs_gen_free(&g);
}

static void test_model_dir_errors(void **state) {
    (void)state;
    cs_model *m = NULL;
    cs_err err = {{0}};
    assert_int_equal(cs_model_load(&m, "/nonexistent/model", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/model"));
    assert_null(m);
    char dir[] = "/tmp/cs-model-test-XXXXXX", cmd[512];
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "cp build/models/tiny/config.json build/models/tiny/vocab.json '%s'/", dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(cs_model_load(&m, dir, &err), -1);
    assert_non_null(strstr(err.msg, "merges.txt"));
    snprintf(cmd, sizeof cmd, "cp build/models/tiny/merges.txt '%s'/", dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(cs_model_load(&m, dir, &err), -1);
    assert_non_null(strstr(err.msg, "model.safetensors"));
    snprintf(cmd, sizeof cmd, "head -c 100000 build/models/tiny/model.safetensors > '%s'/model.safetensors", dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(cs_model_load(&m, dir, &err), -1);
    assert_non_null(strstr(err.msg, "truncated"));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_defaults), cmocka_unit_test(test_clean_up), cmocka_unit_test(test_generation_config_overrides_and_errors),
        cmocka_unit_test(test_length_rules),      cmocka_unit_test(test_eos_and_limits),
        cmocka_unit_test(test_seed_and_stop),     cmocka_unit_test(test_model_dir_errors),
    };
    return cmocka_run_group_tests_name("generate", tests, setup, teardown);
}
