/* Writes the seed corpus of fuzz_safetensors (tests/fuzz/corpus/safetensors/)
 * with cs_st_write, plus one file with __metadata__ written by hand. The
 * outputs are committed; rerun only to change them:
 *   cc -std=c11 -D_GNU_SOURCE -Isrc tests/fuzz/gen_st_seeds.c src/engine/safetensors.c \
 *      src/engine/err.c -ljansson -o /tmp/gen && /tmp/gen tests/fuzz/corpus/safetensors */
#include <stdio.h>
#include <string.h>

#include "engine/safetensors.h"

static int put(const char *dir, const char *name, const cs_st_write_entry *e, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cs_err err = {{0}};
    if (cs_st_write(path, e, n, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int rc = 0;

    const float f6[6] = {0.5f, -1.0f, 2.0f, 3.25f, -0.0f, 1e-3f};
    const cs_st_write_entry tiny[] = {{"wte.weight", CS_DT_F32, 2, {2, 3}, f6}};
    rc |= put(dir, "tiny-f32.safetensors", tiny, 1);

    const unsigned short h4[4] = {0x3c00, 0xc000, 0x0001, 0x7c00}; /* 1, -2, subnormal, inf */
    const unsigned short b4[4] = {0x3f80, 0xbf80, 0x7fc0, 0x0000};
    const long long i1[1] = {-7};
    const unsigned char u3[3] = {1, 2, 255};
    const float s1[1] = {42.0f};
    const cs_st_write_entry mixed[] = {
        {"h.0.attn.bias", CS_DT_F16, 1, {4}, h4},
        {"h.0.ln_1.weight", CS_DT_BF16, 2, {2, 2}, b4},
        {"step", CS_DT_I64, 1, {1}, i1},
        {"mask", CS_DT_U8, 1, {3}, u3},
        {"empty", CS_DT_BOOL, 1, {0}, u3},
        {"scalar", CS_DT_F32, 0, {0}, s1},
    };
    rc |= put(dir, "mixed-dtypes.safetensors", mixed, sizeof mixed / sizeof *mixed);

    /* __metadata__, as transformers writes it, and a tensor starting at offset 0 */
    const char hdr[] = "{\"__metadata__\":{\"format\":\"pt\"},\"transformer.wpe.weight\":"
                       "{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}";
    char path[1024];
    snprintf(path, sizeof path, "%s/metadata.safetensors", dir);
    FILE *f = fopen(path, "wb");
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((unsigned long long)padded >> (8 * i));
    const float w2[2] = {1.0f, -1.0f};
    int ok = f && fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fwrite(w2, 1, sizeof w2, f) == sizeof w2;
    if (!f || fclose(f) != 0 || !ok) {
        fprintf(stderr, "%s: write failed\n", path);
        rc = 1;
    }
    return rc;
}
