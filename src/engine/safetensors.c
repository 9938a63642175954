#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct cs_st {
    char *path;
    void *map;
    size_t map_len;
    cs_st_tensor *tensors;
    size_t n;
};

static const struct {
    const char *name;
    size_t size;
} dtypes[CS_DT_COUNT] = {
    [CS_DT_F64] = {"F64", 8}, [CS_DT_F32] = {"F32", 4}, [CS_DT_F16] = {"F16", 2},
    [CS_DT_BF16] = {"BF16", 2}, [CS_DT_I64] = {"I64", 8}, [CS_DT_I32] = {"I32", 4},
    [CS_DT_I16] = {"I16", 2}, [CS_DT_I8] = {"I8", 1}, [CS_DT_U8] = {"U8", 1},
    [CS_DT_BOOL] = {"BOOL", 1},
};

size_t cs_dtype_size(cs_dtype dt) { return dt < CS_DT_COUNT ? dtypes[dt].size : 0; }
const char *cs_dtype_name(cs_dtype dt) { return dt < CS_DT_COUNT ? dtypes[dt].name : "?"; }

static int parse_dtype(const char *s, cs_dtype *out) {
    for (int i = 0; i < CS_DT_COUNT; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (cs_dtype)i;
            return 0;
        }
    return -1;
}

static int cmp_by_offset(const void *a, const void *b) {
    const cs_st_tensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const cs_st_tensor *)a)->name, ((const cs_st_tensor *)b)->name);
}

/* Validates one header entry and fills t. data_base/data_len describe the data section. */
static int parse_entry(const char *name, json_t *v, const char *data_base, size_t data_len,
                       cs_st_tensor *t, cs_err *err) {
    if (strlen(name) >= CS_ST_MAX_NAME) return cs_err_set(err, "tensor name too long (%.40s...)", name);
    memcpy(t->name, name, strlen(name) + 1);
    if (!json_is_object(v)) return cs_err_set(err, "tensor %s: entry is not an object", name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return cs_err_set(err, "tensor %s: missing or non-string dtype", name);
    if (parse_dtype(json_string_value(jd), &t->dtype))
        return cs_err_set(err, "tensor %s: unknown dtype '%s'", name, json_string_value(jd));
    if (!json_is_array(js)) return cs_err_set(err, "tensor %s: missing or non-array shape", name);
    if (json_array_size(js) > CS_ST_MAX_RANK)
        return cs_err_set(err, "tensor %s: rank %zu exceeds %d", name, json_array_size(js), CS_ST_MAX_RANK);
    t->rank = (int)json_array_size(js);
    size_t nelem = 1;
    for (int i = 0; i < t->rank; i++) {
        json_t *d = json_array_get(js, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return cs_err_set(err, "tensor %s: shape[%d] is not a non-negative integer", name, i);
        t->shape[i] = json_integer_value(d);
        if (t->shape[i] != 0 && nelem > SIZE_MAX / (size_t)t->shape[i])
            return cs_err_set(err, "tensor %s: shape overflows", name);
        nelem *= (size_t)t->shape[i];
    }
    t->nelem = nelem;
    size_t esz = dtypes[t->dtype].size;
    if (nelem > SIZE_MAX / esz) return cs_err_set(err, "tensor %s: shape overflows", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return cs_err_set(err, "tensor %s: data_offsets must be [begin, end]", name);
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < 0)
        return cs_err_set(err, "tensor %s: data_offsets must be non-negative integers", name);
    uint64_t b = (uint64_t)json_integer_value(jb), e = (uint64_t)json_integer_value(je);
    if (b > e) return cs_err_set(err, "tensor %s: data_offsets begin > end", name);
    if (e > data_len)
        return cs_err_set(err, "tensor %s: data_offsets end %llu beyond data size %zu (truncated file?)",
                          name, (unsigned long long)e, data_len);
    if (e - b != nelem * esz)
        return cs_err_set(err, "tensor %s: %llu bytes for shape needing %zu", name,
                          (unsigned long long)(e - b), nelem * esz);
    t->data = data_base + b;
    t->nbytes = (size_t)(e - b);
    return 0;
}

int cs_st_open(cs_st **out, const char *path, cs_err *err) {
    *out = NULL;
    cs_st *st = calloc(1, sizeof *st);
    json_t *root = NULL;
    int fd = -1;
    if (!st || !(st->path = strdup(path))) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cs_err_set(err, "cannot open: %s", strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        cs_err_set(err, "not a regular file");
        goto fail;
    }
    if (sb.st_size < 8) {
        cs_err_set(err, "file is %lld bytes, too short for a safetensors header", (long long)sb.st_size);
        goto fail;
    }
    st->map_len = (size_t)sb.st_size;
    st->map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        cs_err_set(err, "mmap failed: %s", strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    const unsigned char *p = st->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > CS_ST_MAX_HEADER) {
        cs_err_set(err, "header length %llu exceeds limit %llu", (unsigned long long)hlen,
                   (unsigned long long)CS_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > st->map_len - 8) {
        cs_err_set(err, "header length %llu beyond end of file (%zu bytes; truncated?)",
                   (unsigned long long)hlen, st->map_len);
        goto fail;
    }
    if (hlen < 2 || p[8] != '{') {
        cs_err_set(err, "header does not start with a JSON object");
        goto fail;
    }
    json_error_t jerr;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        cs_err_set(err, "header JSON invalid at byte %d: %s", jerr.position, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        cs_err_set(err, "header is not a JSON object");
        goto fail;
    }
    const char *data_base = (const char *)p + 8 + hlen;
    size_t data_len = st->map_len - 8 - (size_t)hlen;
    st->tensors = calloc(json_object_size(root) + 1, sizeof *st->tensors);
    if (!st->tensors) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                cs_err_set(err, "__metadata__ is not an object");
                goto fail;
            }
            continue;
        }
        if (parse_entry(key, val, data_base, data_len, &st->tensors[st->n], err)) goto fail;
        st->n++;
    }
    /* Overlap check: sort by start offset; each non-empty tensor must start at
     * or after the end of the previous non-empty one. Empty tensors occupy no
     * bytes and are skipped: comparing neighbours blindly would let an empty
     * tensor sorted between two overlapping ones hide the overlap. */
    qsort(st->tensors, st->n, sizeof *st->tensors, cmp_by_offset);
    const cs_st_tensor *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
        const cs_st_tensor *b = &st->tensors[i];
        if (!b->nbytes) continue;
        if (prev && (const char *)prev->data + prev->nbytes > (const char *)b->data) {
            cs_err_set(err, "tensors %s and %s overlap", prev->name, b->name);
            goto fail;
        }
        prev = b;
    }
    qsort(st->tensors, st->n, sizeof *st->tensors, cmp_by_name);
    json_decref(root);
    *out = st;
    return 0;
fail:
    if (fd >= 0) close(fd);
    json_decref(root);
    cs_err_prefix(err, "%s", path);
    cs_st_close(st);
    return -1;
}

void cs_st_close(cs_st *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->map_len);
    free(st->tensors);
    free(st->path);
    free(st);
}

size_t cs_st_count(const cs_st *st) { return st->n; }
const cs_st_tensor *cs_st_at(const cs_st *st, size_t i) { return i < st->n ? &st->tensors[i] : NULL; }
const char *cs_st_path(const cs_st *st) { return st->path; }

const cs_st_tensor *cs_st_find(const cs_st *st, const char *name) {
    cs_st_tensor key;
    if (strlen(name) >= CS_ST_MAX_NAME) return NULL;
    strcpy(key.name, name);
    return bsearch(&key, st->tensors, st->n, sizeof *st->tensors, cmp_by_name);
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int cs_dtype_to_f32(cs_dtype dt, const void *src, float *dst, size_t n) {
    const unsigned char *s = src;
    switch (dt) {
    case CS_DT_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case CS_DT_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
        return 0;
    case CS_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)(s[2 * i] | s[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return 0;
    default:
        return -1;
    }
}

int cs_st_write(const char *path, const cs_st_write_entry *entries, size_t n, cs_err *err) {
    json_t *root = json_object();
    char *hdr = NULL;
    FILE *f = NULL;
    if (!root) return cs_err_set(err, "out of memory");
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const cs_st_write_entry *e = &entries[i];
        json_t *shape = json_array();
        size_t nel = 1;
        for (int d = 0; d < e->rank; d++) {
            json_array_append_new(shape, json_integer(e->shape[d]));
            nel *= (size_t)e->shape[d];
        }
        uint64_t nb = nel * cs_dtype_size(e->dtype);
        json_object_set_new(root, e->name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", cs_dtype_name(e->dtype), "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        cs_err_set(err, "out of memory");
        goto fail;
    }
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    f = fopen(path, "wb");
    if (!f) {
        cs_err_set(err, "%s: cannot create: %s", path, strerror(errno));
        goto fail;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < n; i++) {
        const cs_st_write_entry *e = &entries[i];
        size_t nel = 1;
        for (int d = 0; d < e->rank; d++) nel *= (size_t)e->shape[d];
        size_t nb = nel * cs_dtype_size(e->dtype);
        ok = fwrite(e->data, 1, nb, f) == nb;
    }
    if (fclose(f) != 0) ok = 0;
    f = NULL;
    if (!ok) {
        cs_err_set(err, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    free(hdr);
    json_decref(root);
    return 0;
fail:
    if (f) fclose(f);
    free(hdr);
    json_decref(root);
    return -1;
}
