/* cs_st: read-only, fully bounds-checked view of a .safetensors file.
 *
 * The file is mmap'd; tensors are described by (dtype, shape, byte range) and
 * point into the mapping. Every header field is validated at open: header length
 * inside the file and below CS_ST_MAX_HEADER, valid JSON object, known dtype,
 * shape rank <= CS_ST_MAX_RANK with no overflow, data_offsets inside the data
 * section, byte size == product(shape) * dtype size, no two tensors overlapping.
 * After a successful open, any tensor's bytes may be read without further checks.
 *
 * Thread-safety: an opened cs_st is immutable and may be shared by threads. */
#ifndef CS_SAFETENSORS_H
#define CS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define CS_ST_MAX_HEADER ((uint64_t)100 << 20) /* same cap as the reference library */
#define CS_ST_MAX_RANK 8
#define CS_ST_MAX_NAME 256

typedef enum cs_dtype {
    CS_DT_F64, CS_DT_F32, CS_DT_F16, CS_DT_BF16,
    CS_DT_I64, CS_DT_I32, CS_DT_I16, CS_DT_I8, CS_DT_U8, CS_DT_BOOL,
    CS_DT_COUNT
} cs_dtype;

typedef struct cs_st_tensor {
    char name[CS_ST_MAX_NAME];
    cs_dtype dtype;
    int rank;
    int64_t shape[CS_ST_MAX_RANK];
    size_t nelem;
    const void *data; /* into the mapping; nbytes long; alignment not guaranteed */
    size_t nbytes;
} cs_st_tensor;

typedef struct cs_st cs_st;

/* Opens and validates path. Returns 0, or -1 with err = "PATH: what is wrong
 * (tensor NAME)". */
int cs_st_open(cs_st **out, const char *path, cs_err *err);
void cs_st_close(cs_st *st); /* NULL is a no-op */

size_t cs_st_count(const cs_st *st);
const cs_st_tensor *cs_st_at(const cs_st *st, size_t i);
/* NULL when absent. */
const cs_st_tensor *cs_st_find(const cs_st *st, const char *name);
const char *cs_st_path(const cs_st *st);

size_t cs_dtype_size(cs_dtype dt);
const char *cs_dtype_name(cs_dtype dt);

/* Converts n elements of F32/F16/BF16 data (unaligned ok) to float. */
int cs_dtype_to_f32(cs_dtype dt, const void *src, float *dst, size_t n);



/* Writing (for tools and tests). Each entry: name, dtype, shape, data of
 * product(shape) * dtype-size bytes. Header is padded to 8 bytes as the
 * reference writer does. Returns 0 or -1 with err. */
typedef struct cs_st_write_entry {
    const char *name;
    cs_dtype dtype;
    int rank;
    int64_t shape[CS_ST_MAX_RANK];
    const void *data;
} cs_st_write_entry;
int cs_st_write(const char *path, const cs_st_write_entry *entries, size_t n, cs_err *err);
#endif
