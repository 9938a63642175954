/* libFuzzer target: the model directory's JSON configuration
 * (cs_gpt2_config_load in src/engine/gpt2.h, cs_gen_params_load in
 * src/engine/generate.h).
 *
 * The first input byte picks what the rest becomes, in a directory made once:
 *   0: config.json (no generation_config.json)
 *   1: generation_config.json, next to a fixed valid config.json
 *   2: both: config.json up to the first NUL byte, generation_config.json after
 * Both loaders run on every input. On success the values must lie in the
 * ranges the loaders promise (named limits of gpt2.h, the key table of
 * generate.c); on failure the error message must be set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>

#include "engine/generate.h"
#include "engine/gpt2.h"
#include "fuzz_common.h"

static char g_dir[256], g_cfg[300], g_gen[300];

/* Removes DIR/config.json, DIR/generation_config.json and DIR. */
static void remove_dir(const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    unlink(p);
    rmdir(dir);
}

static void cleanup(void) { remove_dir(g_dir); }

/* The directory is TMP/cs-fuzz-config-PID; a crash (abort) skips atexit, so
 * the ones of processes that are gone are removed here. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *tmp = getenv("TMPDIR");
    struct stat sb;
    if (!tmp || !*tmp) tmp = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp";
    DIR *d = opendir(tmp);
    for (struct dirent *e; d && (e = readdir(d));) {
        int pid = 0, len = 0;
        if (sscanf(e->d_name, "cs-fuzz-config-%d%n", &pid, &len) == 1 && e->d_name[len] == 0 && pid > 0 &&
            kill(pid, 0) != 0 && errno == ESRCH) {
            char stale[512];
            snprintf(stale, sizeof stale, "%s/%s", tmp, e->d_name);
            remove_dir(stale);
        }
    }
    if (d) closedir(d);
    snprintf(g_dir, sizeof g_dir, "%s/cs-fuzz-config-%d", tmp, (int)getpid());
    remove_dir(g_dir); /* a previous process with this pid */
    if (mkdir(g_dir, 0700) != 0) fz_fail("mkdir %s: %s", g_dir, strerror(errno));
    snprintf(g_cfg, sizeof g_cfg, "%s/config.json", g_dir);
    snprintf(g_gen, sizeof g_gen, "%s/generation_config.json", g_dir);
    atexit(cleanup);
    return 0;
}

static void check_gpt2(const cs_gpt2_config *c) {
    if (c->n_layer < 1 || c->n_layer > CS_GPT2_MAX_LAYER) fz_fail("n_layer %d", c->n_layer);
    if (c->n_embd < 1 || c->n_embd > CS_GPT2_MAX_EMBD) fz_fail("n_embd %d", c->n_embd);
    if (c->n_head < 1 || c->n_embd % c->n_head) fz_fail("n_head %d for n_embd %d", c->n_head, c->n_embd);
    if (c->n_inner < 1 || c->n_inner > 4 * CS_GPT2_MAX_EMBD) fz_fail("n_inner %d", c->n_inner);
    if (c->n_positions < 1 || c->n_positions > CS_GPT2_MAX_POSITIONS) fz_fail("n_positions %d", c->n_positions);
    if (c->vocab_size < 1 || c->vocab_size > CS_GPT2_MAX_VOCAB) fz_fail("vocab_size %d", c->vocab_size);
    if (!(c->layer_norm_epsilon > 0 && c->layer_norm_epsilon <= 1)) fz_fail("layer_norm_epsilon %g", c->layer_norm_epsilon);
    if (c->act < CS_ACT_GELU_TANH || c->act > CS_ACT_QUICK) fz_fail("act %d", (int)c->act);
    if (c->bos_token_id < -1 || c->bos_token_id > CS_GPT2_MAX_VOCAB) fz_fail("bos_token_id %d", c->bos_token_id);
    if (c->eos_token_id < -1 || c->eos_token_id > CS_GPT2_MAX_VOCAB) fz_fail("eos_token_id %d", c->eos_token_id);
    if ((unsigned)c->scale_attn_weights > 1 || (unsigned)c->scale_attn_by_inverse_layer_idx > 1 ||
        (unsigned)c->tie_word_embeddings > 1)
        fz_fail("a boolean field is not 0/1");
}

static void check_gen(const cs_gen_params *p) {
    const cs_sample_params *s = &p->sample;
    if ((unsigned)s->do_sample > 1) fz_fail("do_sample %d", s->do_sample);
    if (!(s->temperature >= 0 && s->temperature <= 1e6f)) fz_fail("temperature %g", s->temperature);
    if (!(s->top_p >= 0 && s->top_p <= 1)) fz_fail("top_p %g", s->top_p);
    if (!(s->repetition_penalty >= 0 && s->repetition_penalty <= 1e6f))
        fz_fail("repetition_penalty %g", s->repetition_penalty);
    if (s->top_k < 0 || s->top_k > 1000000000) fz_fail("top_k %d", s->top_k);
    if (p->max_length < 1 || p->max_length > 1000000000) fz_fail("max_length %d", p->max_length);
    if (p->max_new_tokens < -1 || p->max_new_tokens > 1000000000) fz_fail("max_new_tokens %d", p->max_new_tokens);
    if (p->eos_token_id < -1) fz_fail("eos_token_id %d", p->eos_token_id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char k_fixed[] = "{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, "
                                  "\"vocab_size\": 300, \"n_positions\": 64, \"eos_token_id\": 256}";
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 3;
    const char *body = (const char *)data + 1;
    const size_t n = size - 1;
    switch (mode) {
    case 0:
        fz_write_file(g_cfg, body, n);
        unlink(g_gen);
        break;
    case 1:
        fz_write_file(g_cfg, k_fixed, sizeof k_fixed - 1);
        fz_write_file(g_gen, body, n);
        break;
    default: {
        const char *z = memchr(body, 0, n);
        const size_t cl = z ? (size_t)(z - body) : n;
        fz_write_file(g_cfg, body, cl);
        fz_write_file(g_gen, z ? z + 1 : "", z ? n - cl - 1 : 0);
        break;
    }
    }
    cs_gpt2_config cfg;
    cs_err err = {{0}};
    if (cs_gpt2_config_load(&cfg, g_cfg, &err)) fz_check_err(&err, "cs_gpt2_config_load");
    else check_gpt2(&cfg);
    cs_gen_params gp;
    memset(&err, 0, sizeof err);
    if (cs_gen_params_load(&gp, g_dir, &err)) fz_check_err(&err, "cs_gen_params_load");
    else check_gen(&gp);
    return 0;
}
