#include "engine/kvpool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct cs_kvpool {
    cs_kvdtype dt;
    size_t n_layer, n_embd, n_head;
    size_t block_bytes, n_blocks;
    char *base;        /* n_blocks * block_bytes, reserved with mmap (2 MB aligned when that large) */
    size_t fresh;      /* blocks [fresh, n_blocks) have never been handed out */
    uint32_t *stack;   /* freed blocks, reused last in first out */
    size_t n_stack;
    uint8_t *resident; /* per block: pages touched since the last trim */
    size_t n_resident, n_used;
};

/* Address space for len bytes of zeroed pages, committed on first touch. A
 * region of 2 MB or more starts on a 2 MB boundary and asks for 2 MB pages:
 * a decode step's attention reads each sequence's blocks a head at a time,
 * 2-4 KiB here and there across the pool, so with 4 KiB pages nearly every
 * read of a head's rows began with a TLB miss (the pool of a busy server is
 * 100s of MB, the TLBs cover a few). NULL on failure. */
#define KV_HUGE ((size_t)2 << 20)
static void *reserve(size_t len) {
    const int prot = PROT_READ | PROT_WRITE, fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (len < KV_HUGE) {
        void *m = mmap(NULL, len, prot, fl, -1, 0);
        return m == MAP_FAILED ? NULL : m;
    }
    char *m = mmap(NULL, len + KV_HUGE, prot, fl, -1, 0);
    if (m == MAP_FAILED) return NULL;
    char *a = (char *)(((uintptr_t)m + KV_HUGE - 1) & ~(uintptr_t)(KV_HUGE - 1));
    if (a > m) munmap(m, (size_t)(a - m));
    munmap(a + len, (size_t)(m + KV_HUGE - a));
#ifdef MADV_HUGEPAGE
    (void)madvise(a, len, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
#endif
    return a;
}

int cs_kvpool_create(cs_kvpool **out, size_t n_layer, size_t n_embd, size_t n_head, cs_kvdtype dt, size_t max_tokens,
                     cs_err *err) {
    *out = NULL;
    if (n_layer == 0 || n_embd == 0 || n_head == 0) return cs_err_set(err, "KV cache: empty model shape");
    if (n_embd % n_head) return cs_err_set(err, "KV cache: %zu heads do not divide n_embd %zu", n_head, n_embd);
    long pg = sysconf(_SC_PAGESIZE);
    const size_t page = pg > 0 ? (size_t)pg : 4096;
    const size_t raw = cs_kvpool_bytes_per_token(n_layer, n_embd, n_head, dt) * CS_KV_BLOCK;
    const size_t bb = (raw + page - 1) / page * page;
    size_t nb = (max_tokens + CS_KV_BLOCK - 1) / CS_KV_BLOCK;
    if (nb == 0) nb = 1;
    if (nb > CS_KVPOOL_MAX_BLOCKS || nb > SIZE_MAX / bb)
        return cs_err_set(err, "KV cache of %zu tokens is too large (at most %u blocks of %d tokens)", max_tokens,
                          CS_KVPOOL_MAX_BLOCKS, CS_KV_BLOCK);
    cs_kvpool *p = calloc(1, sizeof *p);
    if (!p) return cs_err_set(err, "out of memory");
    p->dt = dt;
    p->n_layer = n_layer;
    p->n_embd = n_embd;
    p->n_head = n_head;
    p->block_bytes = bb;
    p->n_blocks = nb;
    p->stack = malloc(nb * sizeof *p->stack);
    p->resident = calloc(nb, 1);
    void *m = reserve(nb * bb);
    if (!m) {
        free(p->stack);
        free(p->resident);
        free(p);
        return cs_err_set(err, "cannot reserve %zu MiB of address space for a %zu-token KV cache",
                          nb * bb >> 20, nb * CS_KV_BLOCK);
    }
    p->base = m;
    if (!p->stack || !p->resident) {
        cs_kvpool_free(p);
        return cs_err_set(err, "out of memory");
    }
    *out = p;
    return 0;
}

void cs_kvpool_free(cs_kvpool *p) {
    if (!p) return;
    if (p->base) munmap(p->base, p->n_blocks * p->block_bytes);
    free(p->stack);
    free(p->resident);
    free(p);
}

void *cs_kvpool_alloc(cs_kvpool *p) {
    size_t b;
    if (p->n_stack) b = p->stack[--p->n_stack];
    else if (p->fresh < p->n_blocks) b = p->fresh++;
    else return NULL;
    if (!p->resident[b]) {
        p->resident[b] = 1;
        p->n_resident++;
    }
    p->n_used++;
    return p->base + b * p->block_bytes;
}

void cs_kvpool_release(cs_kvpool *p, void *blk) {
    if (!blk) return;
    const size_t b = (size_t)((char *)blk - p->base) / p->block_bytes;
    p->stack[p->n_stack++] = (uint32_t)b;
    p->n_used--;
}

void cs_kvpool_trim(cs_kvpool *p) {
    if (p->n_used == 0 && p->n_resident > 0 &&
        madvise(p->base, p->n_blocks * p->block_bytes, MADV_DONTNEED) == 0) {
        /* all free: one call over the whole pool drops its 2 MB pages whole,
         * so the next use gets 2 MB pages again (madvise on single blocks
         * splits those a block shares with its neighbours, for good), and
         * blocks are handed out from the start again, in address order */
        p->fresh = 0;
        p->n_stack = 0;
        memset(p->resident, 0, p->n_blocks);
        p->n_resident = 0;
        return;
    }
    for (size_t i = 0; i < p->n_stack; i++) {
        const size_t b = p->stack[i];
        if (!p->resident[b]) continue;
        /* the block's contents are dead: its pages may go (read back as zeros) */
        if (madvise(p->base + b * p->block_bytes, p->block_bytes, MADV_DONTNEED) == 0) {
            p->resident[b] = 0;
            p->n_resident--;
        }
    }
}

void cs_kvpool_get_info(const cs_kvpool *p, cs_kvpool_info *out) {
    *out = (cs_kvpool_info){.dt = p->dt, .n_layer = p->n_layer, .n_embd = p->n_embd, .n_head = p->n_head,
                            .block_bytes = p->block_bytes,
                            .bytes_per_token = cs_kvpool_bytes_per_token(p->n_layer, p->n_embd, p->n_head, p->dt), .blocks_total = p->n_blocks,
                            .blocks_used = p->n_used, .blocks_resident = p->n_resident};
}

size_t cs_kvpool_free_blocks(const cs_kvpool *p) { return p->n_blocks - p->n_used; }

cs_kvdtype cs_kvpool_dtype(const cs_kvpool *p) { return p->dt; }

cs_kvhead cs_kvpool_head(const cs_kvpool *p, void *const *blk, size_t l, size_t h) {
    const size_t hd = p->n_embd / p->n_head;
    const size_t koff = cs_kvpool_krow_off(p->n_embd, hd, p->dt, l, h, 0);
    return (cs_kvhead){.blk = (const void *const *)blk, .koff = koff,
                       .voff = koff + cs_kvpool_voff_delta(p->n_embd, hd, p->dt), .ld = cs_kvpool_ld(p->dt, hd)};
}
