/* cs-synth: writes a synthetic GPT-2 checkpoint (Hugging Face model directory).
 *
 * Weights are a pure function of (seed, tensor name, shape), so the same command
 * yields the same bytes on every machine; tests/data/ref holds what Hugging Face
 * transformers computes on these files (tools/make_reference.py).
 *
 *   cs-synth --out DIR --layers L --embd C --heads H --positions P [--vocab V]
 *            [--seed S] [--dtype f32|f16|bf16] [--prefix] [--lm-head] [--buffers]
 *            [--act NAME] [--tokenizer DIR] [--pipeline-defaults]
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/safetensors.h"

typedef struct opts {
    const char *out, *tokenizer, *act;
    int layers, embd, heads, positions, vocab, prefix, lm_head, buffers, pipeline_defaults;
    unsigned long long seed;
    cs_dtype dtype;
} opts;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static uint16_t f32_to_f16(float f) { /* round to nearest even; values here are small and normal */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (exp <= 0) { /* subnormal or zero in f16 */
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    if (h >= 0x7c00) h = 0x7c00;
    return (uint16_t)(sign | h);
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* Fills a tensor: uniform with standard deviation `std` around `mean`. */
static void *make_tensor(const opts *o, const char *name, size_t n, float mean, float std) {
    uint64_t s = o->seed * 0x2545F4914F6CDD1Dull ^ fnv1a(name);
    size_t esz = cs_dtype_size(o->dtype);
    unsigned char *buf = malloc(n * esz);
    if (!buf) return NULL;
    const float amp = std * 1.7320508f; /* uniform(-a, a) has std a / sqrt(3) */
    for (size_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&s) >> 11) / 9007199254740992.0; /* [0, 1) */
        float v = mean + amp * (float)(2.0 * u - 1.0);
        if (o->dtype == CS_DT_F32) {
            memcpy(buf + 4 * i, &v, 4);
        } else {
            uint16_t h = o->dtype == CS_DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
            buf[2 * i] = (unsigned char)h;
            buf[2 * i + 1] = (unsigned char)(h >> 8);
        }
    }
    return buf;
}

static int copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
    if (!in || !out) {
        if (in) fclose(in);
        return -1;
    }
    char buf[65536];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    fclose(in);
    return fclose(out) == 0 && ok ? 0 : -1;
}

static int usage(void) {
    fprintf(stderr, "usage: cs-synth --out DIR --layers L --embd C --heads H --positions P [--vocab V] [--seed S]\n"
                    "                [--dtype f32|f16|bf16] [--prefix] [--lm-head] [--buffers] [--act NAME]\n"
                    "                [--tokenizer DIR] [--pipeline-defaults]\n");
    return 2;
}

int main(int argc, char **argv) {
    opts o = {.vocab = 50257, .seed = 1, .dtype = CS_DT_F32, .act = "gelu_new"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define INTARG(flag, field)                        \
    if (strcmp(a, flag) == 0 && v) {               \
        o.field = atoi(v);                         \
        i++;                                       \
        continue;                                  \
    }
        INTARG("--layers", layers) INTARG("--embd", embd) INTARG("--heads", heads)
        INTARG("--positions", positions) INTARG("--vocab", vocab)
#undef INTARG
        if (strcmp(a, "--seed") == 0 && v) { o.seed = strtoull(v, NULL, 10); i++; continue; }
        if (strcmp(a, "--out") == 0 && v) { o.out = v; i++; continue; }
        if (strcmp(a, "--tokenizer") == 0 && v) { o.tokenizer = v; i++; continue; }
        if (strcmp(a, "--act") == 0 && v) { o.act = v; i++; continue; }
        if (strcmp(a, "--dtype") == 0 && v) {
            if (strcmp(v, "f32") == 0) o.dtype = CS_DT_F32;
            else if (strcmp(v, "f16") == 0) o.dtype = CS_DT_F16;
            else if (strcmp(v, "bf16") == 0) o.dtype = CS_DT_BF16;
            else return usage();
            i++;
            continue;
        }
        if (strcmp(a, "--prefix") == 0) { o.prefix = 1; continue; }
        if (strcmp(a, "--lm-head") == 0) { o.lm_head = 1; continue; }
        if (strcmp(a, "--buffers") == 0) { o.buffers = 1; continue; }
        if (strcmp(a, "--pipeline-defaults") == 0) { o.pipeline_defaults = 1; continue; }
        fprintf(stderr, "cs-synth: unknown argument '%s'\n", a);
        return usage();
    }
    if (!o.out || o.layers <= 0 || o.embd <= 0 || o.heads <= 0 || o.positions <= 0 || o.vocab <= 0 ||
        o.embd % o.heads)
        return usage();
    if (mkdir(o.out, 0755) && errno != EEXIST) {
        fprintf(stderr, "cs-synth: %s: %s\n", o.out, strerror(errno));
        return 1;
    }
    const size_t C = (size_t)o.embd, F = 4 * C, V = (size_t)o.vocab, P = (size_t)o.positions;
    const float sc = 1.0f / sqrtf((float)C);
    enum { MAXT = 16 * 64 + 8 };
    static cs_st_write_entry ent[MAXT];
    static char names[MAXT][CS_ST_MAX_NAME];
    size_t n = 0;
    const char *pre = o.prefix ? "transformer." : "";
    int rc = 1;
#define ADD(nm, mean, std, ...)                                                           \
    do {                                                                                  \
        const int64_t shp_[] = {__VA_ARGS__};                                             \
        cs_st_write_entry *e = &ent[n];                                                   \
        snprintf(names[n], CS_ST_MAX_NAME, "%s", nm);                                     \
        e->name = names[n];                                                               \
        e->dtype = o.dtype;                                                               \
        e->rank = (int)(sizeof shp_ / sizeof *shp_);                                      \
        size_t nel_ = 1;                                                                  \
        for (int d_ = 0; d_ < e->rank; d_++) nel_ *= (size_t)(e->shape[d_] = shp_[d_]);   \
        e->data = make_tensor(&o, names[n], nel_, mean, std);                             \
        if (!e->data) goto out;                                                           \
        n++;                                                                              \
    } while (0)
    char nm[CS_ST_MAX_NAME];
#define NM(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
    /* Scales chosen so logits spread over several units (clear argmax for greedy
     * checks) while attention and MLP still shape the residual stream. */
    ADD(NM("%swte.weight", pre), 0, 2.0f * sc, (int64_t)V, (int64_t)C);
    ADD(NM("%swpe.weight", pre), 0, 1.0f * sc, (int64_t)P, (int64_t)C);
    for (int l = 0; l < o.layers && n + 16 < MAXT; l++) {
        ADD(NM("%sh.%d.ln_1.weight", pre, l), 1.0f, 0.1f, (int64_t)C);
        ADD(NM("%sh.%d.ln_1.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADD(NM("%sh.%d.attn.c_attn.weight", pre, l), 0, 1.5f * sc, (int64_t)C, (int64_t)(3 * C));
        ADD(NM("%sh.%d.attn.c_attn.bias", pre, l), 0, 0.05f, (int64_t)(3 * C));
        ADD(NM("%sh.%d.attn.c_proj.weight", pre, l), 0, 0.7f * sc, (int64_t)C, (int64_t)C);
        ADD(NM("%sh.%d.attn.c_proj.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADD(NM("%sh.%d.ln_2.weight", pre, l), 1.0f, 0.1f, (int64_t)C);
        ADD(NM("%sh.%d.ln_2.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADD(NM("%sh.%d.mlp.c_fc.weight", pre, l), 0, 1.0f * sc, (int64_t)C, (int64_t)F);
        ADD(NM("%sh.%d.mlp.c_fc.bias", pre, l), 0, 0.05f, (int64_t)F);
        ADD(NM("%sh.%d.mlp.c_proj.weight", pre, l), 0, 0.5f * sc, (int64_t)F, (int64_t)C);
        ADD(NM("%sh.%d.mlp.c_proj.bias", pre, l), 0, 0.05f, (int64_t)C);
        if (o.buffers) /* old checkpoints carry the causal-mask buffer; loaders must ignore it */
            ADD(NM("%sh.%d.attn.bias", pre, l), 0, 1.0f, 1, 1, (int64_t)P, (int64_t)P);
    }
    ADD(NM("%sln_f.weight", pre), 1.0f, 0.1f, (int64_t)C);
    ADD(NM("%sln_f.bias", pre), 0, 0.05f, (int64_t)C);
    if (o.lm_head) { /* tied: same values as wte */
        ent[n] = ent[0];
        snprintf(names[n], CS_ST_MAX_NAME, "lm_head.weight");
        ent[n].name = names[n];
        n++;
    }
#undef ADD
    char path[4096];
    cs_err err;
    snprintf(path, sizeof path, "%s/model.safetensors", o.out);
    if (cs_st_write(path, ent, n, &err)) {
        fprintf(stderr, "cs-synth: %s\n", err.msg);
        goto out;
    }
    snprintf(path, sizeof path, "%s/config.json", o.out);
    FILE *f = fopen(path, "w");
    if (!f) goto out;
    fprintf(f,
            "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n"
            "  \"activation_function\": \"%s\",\n  \"attn_pdrop\": 0.1,\n  \"embd_pdrop\": 0.1,\n"
            "  \"resid_pdrop\": 0.1,\n  \"bos_token_id\": 50256,\n  \"eos_token_id\": 50256,\n"
            "  \"initializer_range\": 0.02,\n  \"layer_norm_epsilon\": 1e-05,\n  \"n_ctx\": %d,\n"
            "  \"n_embd\": %d,\n  \"n_head\": %d,\n  \"n_layer\": %d,\n  \"n_positions\": %d,\n"
            "  \"vocab_size\": %d,\n  \"torch_dtype\": \"%s\"",
            o.act, o.positions, o.embd, o.heads, o.layers, o.positions, o.vocab,
            o.dtype == CS_DT_F32 ? "float32" : o.dtype == CS_DT_F16 ? "float16" : "bfloat16");
    if (o.pipeline_defaults) /* as distilgpt2's config.json carries them */
        fprintf(f, ",\n  \"task_specific_params\": {\"text-generation\": {\"do_sample\": true, \"max_length\": 50}}");
    fprintf(f, "\n}\n");
    if (fclose(f)) goto out;
    snprintf(path, sizeof path, "%s/generation_config.json", o.out);
    f = fopen(path, "w");
    if (!f) goto out;
    fprintf(f, "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": 50256,\n  \"eos_token_id\": 50256\n}\n");
    if (fclose(f)) goto out;
    if (o.tokenizer) {
        const char *files[] = {"vocab.json", "merges.txt"};
        for (int i = 0; i < 2; i++) {
            char src[4096];
            snprintf(src, sizeof src, "%s/%s", o.tokenizer, files[i]);
            snprintf(path, sizeof path, "%s/%s", o.out, files[i]);
            if (copy_file(src, path)) {
                fprintf(stderr, "cs-synth: cannot copy %s\n", src);
                goto out;
            }
        }
    }
    rc = 0;
out:
    for (size_t i = 0; i < n; i++)
        if (!(o.lm_head && i == n - 1)) free((void *)ent[i].data);
    if (rc) fprintf(stderr, "cs-synth: failed writing %s\n", o.out);
    return rc;
}
