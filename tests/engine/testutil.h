/* Helpers shared by the engine tests (header-only; each test is one program). */
#ifndef CS_TESTUTIL_H
#define CS_TESTUTIL_H

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file; NULL when missing. */
static inline void *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

static inline json_t *tu_load_json(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) fprintf(stderr, "%s:%d: %s\n", path, e.line, e.text);
    return j;
}

/* Quick mode (sanitizer builds): fewer of the expensive reference cases. */
static inline int tu_quick(void) {
    const char *q = getenv("CS_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

/* Deterministic test inputs: one xorshift64 stream per test program. A test
 * that defines TU_RNG_SEED before including this header gets its own stream,
 * so its inputs stay the same from run to run and across edits elsewhere. */
#ifndef TU_RNG_SEED
#define TU_RNG_SEED 88172645463325252ull
#endif

static inline uint64_t *tu_rng_state(void) {
    static uint64_t s = TU_RNG_SEED;
    return &s;
}

/* Uniform in [-1, 1). */
static inline float tu_frand(void) {
    uint64_t *r = tu_rng_state();
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    return (float)((*r >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

/* x[i] uniform in [-scale, scale). */
static inline void tu_fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * tu_frand();
}

/* A paged copy of npos key rows kc and value rows vc (row stride ld), laid
 * out as the KV pool's blocks are (engine/kernels.h: CS_KV_BLOCK key rows then
 * CS_KV_BLOCK value rows per block) but with the blocks in reverse order in
 * memory and NaN in every unused row, so a kernel that does not follow the
 * block table reads garbage. elem: 4 (fp32) or 2 (bf16: rows rounded). */
#ifdef CS_KERNELS_H
typedef struct tu_paged {
    void *buf;
    const void **blk;
    cs_kvhead h;
} tu_paged;

static inline void tu_paged_make(tu_paged *p, const float *kc, const float *vc, size_t npos, size_t ld, int elem) {
    const size_t nb = (npos + CS_KV_BLOCK - 1) / CS_KV_BLOCK + 1, per = 2 * CS_KV_BLOCK * ld;
    p->buf = malloc(nb * per * (size_t)elem);
    p->blk = malloc(nb * sizeof *p->blk);
    if (!p->buf || !p->blk) abort();
    if (elem == 4)
        for (size_t i = 0; i < nb * per; i++) ((float *)p->buf)[i] = NAN;
    else
        for (size_t i = 0; i < nb * per; i++) ((uint16_t *)p->buf)[i] = 0x7fc0; /* bf16 NaN */
    for (size_t b = 0; b < nb; b++) p->blk[b] = (char *)p->buf + (nb - 1 - b) * per * (size_t)elem;
    for (size_t j = 0; j < npos; j++) {
        const size_t ko = (j % CS_KV_BLOCK) * ld, vo = CS_KV_BLOCK * ld + ko;
        for (size_t e = 0; e < ld; e++) {
            if (elem == 4) {
                ((float *)p->blk[j / CS_KV_BLOCK])[ko + e] = kc[j * ld + e];
                ((float *)p->blk[j / CS_KV_BLOCK])[vo + e] = vc[j * ld + e];
            } else {
                ((uint16_t *)p->blk[j / CS_KV_BLOCK])[ko + e] = cs_bf16_from_f32(kc[j * ld + e]);
                ((uint16_t *)p->blk[j / CS_KV_BLOCK])[vo + e] = cs_bf16_from_f32(vc[j * ld + e]);
            }
        }
    }
    p->h = (cs_kvhead){.blk = p->blk, .koff = 0, .voff = CS_KV_BLOCK * ld, .ld = ld};
}

/* The same rows in an int8 cache (kernels.h): the first hd elements of each
 * source row quantized with cs_kv_quantize_row, rows ld + 4 bytes apart
 * (unaligned scales when ld is odd), the bytes past a row's scale 0x7f. */
static inline void tu_paged_make_i8(tu_paged *p, const float *kc, const float *vc, size_t npos, size_t ld, size_t hd) {
    const size_t l8 = ld + sizeof(float), nb = (npos + CS_KV_BLOCK - 1) / CS_KV_BLOCK + 1, per = 2 * CS_KV_BLOCK * l8;
    p->buf = malloc(nb * per);
    p->blk = malloc(nb * sizeof *p->blk);
    if (!p->buf || !p->blk) abort();
    memset(p->buf, 0x7f, nb * per);
    for (size_t b = 0; b < nb; b++) p->blk[b] = (char *)p->buf + (nb - 1 - b) * per;
    for (size_t j = 0; j < npos; j++) {
        int8_t *kr = (int8_t *)p->blk[j / CS_KV_BLOCK] + (j % CS_KV_BLOCK) * l8;
        cs_kv_quantize_row(kc + j * ld, hd, kr);
        cs_kv_quantize_row(vc + j * ld, hd, kr + CS_KV_BLOCK * l8);
    }
    p->h = (cs_kvhead){.blk = p->blk, .koff = 0, .voff = CS_KV_BLOCK * l8, .ld = l8};
}

static inline void tu_paged_free(tu_paged *p) {
    free(p->buf);
    free(p->blk);
}
#endif

#endif
