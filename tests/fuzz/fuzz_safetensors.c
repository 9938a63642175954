/* libFuzzer target: cs_st_open on arbitrary bytes (src/engine/safetensors.h).
 *
 * The input is the whole .safetensors file. On success every invariant the
 * header promises is checked: names unique, NUL-terminated and findable with
 * cs_st_find, rank <= CS_ST_MAX_RANK, nelem == product(shape), nbytes ==
 * nelem * dtype size, every tensor inside the data section (the file after the
 * 8-byte length and the header) and no two overlapping. Then every byte of
 * every tensor is read and F32/F16/BF16 data goes through cs_dtype_to_f32
 * (ASan sees the reads through a heap copy; the mapping itself is not
 * instrumented). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"
#include "fuzz_common.h"

static int g_fd = -1;
static char g_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_fd = fz_memfd("fuzz.safetensors", g_path, sizeof g_path);
    return 0;
}

typedef struct span {
    const char *p;
    size_t n;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_fill(g_fd, data, size);
    cs_st *st = NULL;
    cs_err err = {{0}};
    if (cs_st_open(&st, g_path, &err)) {
        if (st) fz_fail("cs_st_open failed but set *out");
        fz_check_err(&err, "cs_st_open");
        return 0;
    }
    /* data section size, from the same length prefix the parser read */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    if (size < 8 || hlen > size - 8) fz_fail("opened a file whose header length %llu exceeds its size %zu",
                                             (unsigned long long)hlen, size);
    const size_t data_len = size - 8 - (size_t)hlen;

    const size_t n = cs_st_count(st);
    if (cs_st_at(st, n) != NULL) fz_fail("cs_st_at(count) is not NULL");
    span *sp = calloc(n + 1, sizeof *sp);
    if (!sp) abort();
    size_t total = 0;
    unsigned sink = 0;
    for (size_t i = 0; i < n; i++) {
        const cs_st_tensor *t = cs_st_at(st, i);
        if (!t) fz_fail("cs_st_at(%zu) is NULL below count %zu", i, n);
        if (strnlen(t->name, CS_ST_MAX_NAME) >= CS_ST_MAX_NAME) fz_fail("tensor %zu: name not terminated", i);
        if (cs_st_find(st, t->name) != t) fz_fail("cs_st_find(\"%s\") does not return it", t->name);
        if (t->dtype < 0 || t->dtype >= CS_DT_COUNT) fz_fail("tensor %s: dtype %d", t->name, (int)t->dtype);
        if (t->rank < 0 || t->rank > CS_ST_MAX_RANK) fz_fail("tensor %s: rank %d", t->name, t->rank);
        size_t ne = 1;
        for (int d = 0; d < t->rank; d++) {
            if (t->shape[d] < 0) fz_fail("tensor %s: negative dim", t->name);
            ne *= (size_t)t->shape[d];
        }
        if (ne != t->nelem) fz_fail("tensor %s: nelem %zu != product(shape) %zu", t->name, t->nelem, ne);
        const size_t esz = cs_dtype_size(t->dtype);
        if (t->nbytes != t->nelem * esz) fz_fail("tensor %s: nbytes %zu != %zu * %zu", t->name, t->nbytes, t->nelem, esz);
        if (t->nbytes > data_len) fz_fail("tensor %s: %zu bytes > data section %zu", t->name, t->nbytes, data_len);
        if (t->nbytes) sp[total++] = (span){t->data, t->nbytes};

        /* read it all, through a heap copy so ASan bounds the conversion */
        unsigned char *copy = malloc(t->nbytes ? t->nbytes : 1);
        if (!copy) abort();
        memcpy(copy, t->data, t->nbytes);
        for (size_t b = 0; b < t->nbytes; b++) sink += copy[b];
        if (t->dtype == CS_DT_F32 || t->dtype == CS_DT_F16 || t->dtype == CS_DT_BF16) {
            float *f = malloc((t->nelem ? t->nelem : 1) * sizeof *f);
            if (!f) abort();
            if (cs_dtype_to_f32(t->dtype, copy, f, t->nelem)) fz_fail("cs_dtype_to_f32 refused %s", cs_dtype_name(t->dtype));
            for (size_t k = 0; k < t->nelem; k++) sink += (unsigned)(f[k] == f[k]);
            free(f);
        } else if (cs_dtype_to_f32(t->dtype, copy, NULL, 0) == 0) {
            fz_fail("cs_dtype_to_f32 accepted %s", cs_dtype_name(t->dtype));
        }
        free(copy);
    }
    /* all tensors inside one data section of data_len bytes, none overlapping */
    if (total) {
        qsort(sp, total, sizeof *sp, span_cmp);
        for (size_t i = 1; i < total; i++)
            if (sp[i - 1].p + sp[i - 1].n > sp[i].p) fz_fail("two tensors overlap");
        if ((size_t)(sp[total - 1].p + sp[total - 1].n - sp[0].p) > data_len)
            fz_fail("tensors span more than the %zu-byte data section", data_len);
    }
    free(sp);
    __asm__ volatile("" : : "r"(sink)); /* keep the reads */
    cs_st_close(st);
    return 0;
}
