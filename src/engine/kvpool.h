/* cs_kvpool: fixed-size blocks for paged KV caches.
 *
 * A block holds CS_KV_BLOCK positions of one sequence for every layer: per
 * layer l, the keys then the values (B * H rows each: fp32, bf16 rounded to
 * nearest even, or int8 with the row's scale after it; see kernels.h), each
 * head by head: head h's B rows of ld elements are contiguous, so head h of
 * layer l is the cs_kvhead
 * {koff = l * 2 * B * H * ld + h * B * ld, voff = koff + B * H * ld, ld}
 * (B = CS_KV_BLOCK, H heads of hd = C / H, ld = hd, or hd + 4 bytes for
 * int8; see cs_kvpool_head). A decode step's
 * attention for one head then reads B * hd contiguous elements per block
 * (4 KiB for distilgpt2) instead of hd elements n_embd apart, which the
 * hardware prefetchers follow. A sequence takes blocks
 * as it grows and gives them back when it ends, so memory follows the tokens
 * actually held, not slots x context.
 *
 * The pool reserves address space for its capacity once (2 MB aligned, in
 * 2 MB pages where the kernel grants them) and the kernel commits pages when
 * a block is first written; cs_kvpool_trim hands the pages of free blocks
 * back (the next use of such a block costs page faults and zeroed pages).
 * Freed blocks are reused last-in first-out, so the memory touched stays at
 * the high-water mark of tokens held (in 2 MB steps).
 *
 * Thread-safety: none. A pool and its blocks are used by one thread at a time
 * (the scheduler's engine thread); forward passes only read and write the
 * blocks a caller hands them. */
#ifndef CS_KVPOOL_H
#define CS_KVPOOL_H

#include <stddef.h>

#include "engine/err.h"
#include "engine/kernels.h"

#define CS_KVPOOL_MAX_BLOCKS (1u << 24) /* 268M tokens: far past any memory here */

typedef struct cs_kvpool cs_kvpool;

/* A pool for a model of n_layer x n_embd in n_head heads with room for
 * max_tokens positions (rounded up to whole blocks). Fails when the address
 * space cannot be reserved or n_head does not divide n_embd. */
int cs_kvpool_create(cs_kvpool **out, size_t n_layer, size_t n_embd, size_t n_head, cs_kvdtype dt, size_t max_tokens,
                     cs_err *err);
void cs_kvpool_free(cs_kvpool *p);

/* A free block, or NULL when every block is in use. */
void *cs_kvpool_alloc(cs_kvpool *p);
void cs_kvpool_release(cs_kvpool *p, void *blk);

/* Returns the memory of the free blocks to the system. */
void cs_kvpool_trim(cs_kvpool *p);

typedef struct cs_kvpool_info {
    cs_kvdtype dt;
    size_t n_layer, n_embd, n_head;
    size_t block_bytes;      /* one block, whole pages */
    size_t bytes_per_token;  /* n_layer * 2 * n_head * cs_kv_row_bytes(dt, head size) */
    size_t blocks_total, blocks_used;
    size_t blocks_resident;  /* blocks whose pages have been touched since the last trim */
} cs_kvpool_info;

void cs_kvpool_get_info(const cs_kvpool *p, cs_kvpool_info *out);
size_t cs_kvpool_free_blocks(const cs_kvpool *p);
cs_kvdtype cs_kvpool_dtype(const cs_kvpool *p);

/* The view of head h of layer l through a sequence's block table. */
cs_kvhead cs_kvpool_head(const cs_kvpool *p, void *const *blk, size_t l, size_t h);

/* Bytes one cached position takes over all layers: keys and values. */
static inline size_t cs_kvpool_bytes_per_token(size_t n_layer, size_t n_embd, size_t n_head, cs_kvdtype dt) {
    return n_layer * 2 * n_head * cs_kv_row_bytes(dt, n_embd / n_head);
}

/* A cached row's stride in elements of dt (int8: hd bytes and the scale). */
static inline size_t cs_kvpool_ld(cs_kvdtype dt, size_t hd) { return dt == CS_KV_I8 ? hd + sizeof(float) : hd; }

/* Where position j's key row of head h (size hd) of layer l starts in its
 * block (elements of dt); its value row is cs_kvpool_voff_delta further. */
static inline size_t cs_kvpool_krow_off(size_t n_embd, size_t hd, cs_kvdtype dt, size_t l, size_t h, size_t j) {
    const size_t ld = cs_kvpool_ld(dt, hd), rows = CS_KV_BLOCK * (n_embd / hd);
    return l * 2 * rows * ld + h * CS_KV_BLOCK * ld + (j % CS_KV_BLOCK) * ld;
}
static inline size_t cs_kvpool_voff_delta(size_t n_embd, size_t hd, cs_kvdtype dt) {
    return CS_KV_BLOCK * (n_embd / hd) * cs_kvpool_ld(dt, hd);
}

#endif
