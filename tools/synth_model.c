/* cs-synth: writes a synthetic GPT-2 checkpoint (Hugging Face model directory).
 *
 * Weights are a pure function of (seed, tensor name, shape), so the same command
 * yields the same bytes on every machine; tests/data/ref holds what Hugging Face
 * transformers computes on these files (tools/make_reference.py).
 *
 *   cs-synth --out DIR --layers L --embd C --heads H --positions P [--vocab V]
 *            [--seed S] [--dtype f32|f16|bf16] [--prefix] [--lm-head] [--buffers]
 *            [--act NAME] [--tokenizer DIR] [--pipeline-defaults]
 *            [--outliers N --outlier-scale S] [--mlp-outliers N --mlp-outlier-scale S]
 *
 * Random weights lack the outlier features of trained GPT-2 (a few residual /
 * LayerNorm-output channels tens of times larger than the rest), which is what
 * breaks int8 activation quantization; the outlier options add them:
 *   --outliers N: N channels (the same in every layer, as in trained models) of
 *     every LayerNorm gain (ln_1, ln_2, ln_f) are S times larger, and the
 *     weights that read them (c_attn and c_fc rows, the tied wte's columns)
 *     sqrt(S) times smaller;
 *   --mlp-outliers N: in each layer N hidden MLP units have their c_fc weight
 *     column scaled by S and S added to their bias, so the GELU output (the
 *     input of mlp.c_proj) carries N channels around S times the rest; their
 *     mlp.c_proj rows are sqrt(S) times smaller.
 * Without them the output is byte-identical to earlier versions. */
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
    int outliers, mlp_outliers;
    float outlier_scale, mlp_outlier_scale;
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

/* Picks n distinct indices in [0, range) from a stream named `what` (a pure
 * function of the seed, so the same on every machine). */
static void pick_channels(const opts *o, const char *what, int n, size_t range, size_t *out) {
    uint64_t s = o->seed * 0x2545F4914F6CDD1Dull ^ fnv1a(what);
    for (int i = 0; i < n; i++) {
        size_t c;
        int dup;
        do {
            c = (size_t)(splitmix(&s) % range);
            dup = 0;
            for (int j = 0; j < i; j++) dup |= out[j] == c;
        } while (dup);
        out[i] = c;
    }
}

/* How a tensor's values are edited after drawing (outlier channels). */
typedef enum edit_kind {
    EDIT_NONE,
    EDIT_LN_GAIN,   /* (C): outlier channels x S */
    EDIT_READS_LN,  /* (C, X) c_attn: rows of the outlier channels / sqrt(S) */
    EDIT_FC_WEIGHT, /* (C, F): as EDIT_READS_LN, and the MLP outlier columns x S_mlp */
    EDIT_FC_BIAS,   /* (F): MLP outlier units x S_mlp + S_mlp */
    EDIT_FC_PROJ,   /* (F, C): rows of the MLP outlier units / sqrt(S_mlp) */
    EDIT_WTE,       /* (V, C): the tied LM head reads ln_f: columns of the outlier channels / sqrt(S) */
} edit_kind;

/* The weights that read an outlier channel are sqrt(S) smaller, as training
 * leaves them: the channel then counts sqrt(S) times a plain one in the
 * products, so it matters without swamping them, and the fp32 network stays
 * about as well conditioned as the plain one up to S ~ 40 (fp32 is the
 * reference the reduced formats are measured against; at S = 60 bf16's error
 * is already 4.7x its plain one). */
static void edit_values(const opts *o, edit_kind kind, int layer, float *v, size_t n) {
    enum { MAXO = 64 };
    size_t ch[MAXO];
    char what[64];
    const size_t C = (size_t)o->embd, F = 4 * C;
    if (o->outliers > 0 && (kind == EDIT_LN_GAIN || kind == EDIT_READS_LN || kind == EDIT_FC_WEIGHT ||
                            kind == EDIT_WTE)) {
        pick_channels(o, "ln-outliers", o->outliers, C, ch);
        const float down = 1.0f / sqrtf(o->outlier_scale);
        for (int i = 0; i < o->outliers; i++) {
            if (kind == EDIT_LN_GAIN) v[ch[i]] *= o->outlier_scale;
            else if (kind == EDIT_WTE)
                for (size_t r = 0; r < n / C; r++) v[r * C + ch[i]] *= down;
            else
                for (size_t j = 0; j < n / C; j++) v[ch[i] * (n / C) + j] *= down;
        }
    }
    if (o->mlp_outliers > 0 && (kind == EDIT_FC_WEIGHT || kind == EDIT_FC_BIAS || kind == EDIT_FC_PROJ)) {
        snprintf(what, sizeof what, "mlp-outliers-%d", layer);
        pick_channels(o, what, o->mlp_outliers, F, ch);
        const float S = o->mlp_outlier_scale, down = 1.0f / sqrtf(S);
        for (int i = 0; i < o->mlp_outliers; i++) {
            if (kind == EDIT_FC_BIAS) v[ch[i]] = v[ch[i]] * S + S;
            else if (kind == EDIT_FC_PROJ)
                for (size_t j = 0; j < C; j++) v[ch[i] * C + j] *= down;
            else
                for (size_t r = 0; r < C; r++) v[r * F + ch[i]] *= S;
        }
    }
}

/* Fills a tensor: uniform with standard deviation `std` around `mean`, then
 * the outlier edit for its kind. */
static void *make_tensor(const opts *o, const char *name, size_t n, float mean, float std, edit_kind kind,
                         int layer) {
    uint64_t s = o->seed * 0x2545F4914F6CDD1Dull ^ fnv1a(name);
    size_t esz = cs_dtype_size(o->dtype);
    unsigned char *buf = malloc(n * esz);
    float *vals = malloc(n * sizeof(float));
    if (!buf || !vals) {
        free(buf);
        free(vals);
        return NULL;
    }
    const float amp = std * 1.7320508f; /* uniform(-a, a) has std a / sqrt(3) */
    for (size_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&s) >> 11) / 9007199254740992.0; /* [0, 1) */
        vals[i] = mean + amp * (float)(2.0 * u - 1.0);
    }
    edit_values(o, kind, layer, vals, n);
    for (size_t i = 0; i < n; i++) {
        const float v = vals[i];
        if (o->dtype == CS_DT_F32) {
            memcpy(buf + 4 * i, &v, 4);
        } else {
            uint16_t h = o->dtype == CS_DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
            buf[2 * i] = (unsigned char)h;
            buf[2 * i + 1] = (unsigned char)(h >> 8);
        }
    }
    free(vals);
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
                    "                [--tokenizer DIR] [--pipeline-defaults] [--outliers N --outlier-scale S]\n"
                    "                [--mlp-outliers N --mlp-outlier-scale S]\n");
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
        INTARG("--outliers", outliers) INTARG("--mlp-outliers", mlp_outliers)
#undef INTARG
        if (strcmp(a, "--outlier-scale") == 0 && v) { o.outlier_scale = strtof(v, NULL); i++; continue; }
        if (strcmp(a, "--mlp-outlier-scale") == 0 && v) { o.mlp_outlier_scale = strtof(v, NULL); i++; continue; }
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
        o.embd % o.heads || o.outliers < 0 || o.outliers > 64 || o.outliers > o.embd || o.mlp_outliers < 0 ||
        o.mlp_outliers > 64 || o.mlp_outliers > 4 * o.embd || (o.outliers && !(o.outlier_scale > 0)) ||
        (o.mlp_outliers && !(o.mlp_outlier_scale > 0)))
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
#define ADD(nm, mean, std, ...) ADDE(nm, mean, std, EDIT_NONE, -1, __VA_ARGS__)
#define ADDE(nm, mean, std, kind, layer, ...)                                             \
    do {                                                                                  \
        const int64_t shp_[] = {__VA_ARGS__};                                             \
        cs_st_write_entry *e = &ent[n];                                                   \
        snprintf(names[n], CS_ST_MAX_NAME, "%s", nm);                                     \
        e->name = names[n];                                                               \
        e->dtype = o.dtype;                                                               \
        e->rank = (int)(sizeof shp_ / sizeof *shp_);                                      \
        size_t nel_ = 1;                                                                  \
        for (int d_ = 0; d_ < e->rank; d_++) nel_ *= (size_t)(e->shape[d_] = shp_[d_]);   \
        e->data = make_tensor(&o, names[n], nel_, mean, std, kind, layer);                \
        if (!e->data) goto out;                                                           \
        n++;                                                                              \
    } while (0)
    char nm[CS_ST_MAX_NAME];
#define NM(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
    /* Scales chosen so logits spread over several units (clear argmax for greedy
     * checks) while attention and MLP still shape the residual stream. */
    ADDE(NM("%swte.weight", pre), 0, 2.0f * sc, EDIT_WTE, -1, (int64_t)V, (int64_t)C);
    ADD(NM("%swpe.weight", pre), 0, 1.0f * sc, (int64_t)P, (int64_t)C);
    for (int l = 0; l < o.layers && n + 16 < MAXT; l++) {
        ADDE(NM("%sh.%d.ln_1.weight", pre, l), 1.0f, 0.1f, EDIT_LN_GAIN, l, (int64_t)C);
        ADD(NM("%sh.%d.ln_1.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADDE(NM("%sh.%d.attn.c_attn.weight", pre, l), 0, 1.5f * sc, EDIT_READS_LN, l, (int64_t)C, (int64_t)(3 * C));
        ADD(NM("%sh.%d.attn.c_attn.bias", pre, l), 0, 0.05f, (int64_t)(3 * C));
        ADD(NM("%sh.%d.attn.c_proj.weight", pre, l), 0, 0.7f * sc, (int64_t)C, (int64_t)C);
        ADD(NM("%sh.%d.attn.c_proj.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADDE(NM("%sh.%d.ln_2.weight", pre, l), 1.0f, 0.1f, EDIT_LN_GAIN, l, (int64_t)C);
        ADD(NM("%sh.%d.ln_2.bias", pre, l), 0, 0.05f, (int64_t)C);
        ADDE(NM("%sh.%d.mlp.c_fc.weight", pre, l), 0, 1.0f * sc, EDIT_FC_WEIGHT, l, (int64_t)C, (int64_t)F);
        ADDE(NM("%sh.%d.mlp.c_fc.bias", pre, l), 0, 0.05f, EDIT_FC_BIAS, l, (int64_t)F);
        ADDE(NM("%sh.%d.mlp.c_proj.weight", pre, l), 0, 0.5f * sc, EDIT_FC_PROJ, l, (int64_t)F, (int64_t)C);
        ADD(NM("%sh.%d.mlp.c_proj.bias", pre, l), 0, 0.05f, (int64_t)C);
        if (o.buffers) /* old checkpoints carry the causal-mask buffer; loaders must ignore it */
            ADD(NM("%sh.%d.attn.bias", pre, l), 0, 1.0f, 1, 1, (int64_t)P, (int64_t)P);
    }
    ADDE(NM("%sln_f.weight", pre), 1.0f, 0.1f, EDIT_LN_GAIN, -1, (int64_t)C);
    ADD(NM("%sln_f.bias", pre), 0, 0.05f, (int64_t)C);
    if (o.lm_head) { /* tied: same values as wte */
        ent[n] = ent[0];
        snprintf(names[n], CS_ST_MAX_NAME, "lm_head.weight");
        ent[n].name = names[n];
        n++;
    }
#undef ADD
#undef ADDE
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
