/* cs_sha256: SHA-256 (FIPS 180-4), streaming.
 *
 * Used to verify files downloaded from the Hugging Face Hub, whose large (LFS)
 * files carry the SHA-256 of their content as ETag. Portable C, plus SHA-NI on x86
 * CPUs that have it (chosen at run time); nothing allocates. A cs_sha256 is a value
 * owned by its caller: init, update any number of times, final once (after final,
 * init again to reuse). Not thread-safe per object; distinct objects may be used
 * from distinct threads. */
#ifndef CS_SHA256_H
#define CS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define CS_SHA256_DIGEST 32  /* bytes */
#define CS_SHA256_HEX 65     /* 64 lowercase hex digits + NUL */

typedef struct cs_sha256 {
    uint32_t h[8];   /* chaining state */
    uint64_t len;    /* message bytes so far */
    uint8_t buf[64]; /* pending partial block */
    size_t nbuf;     /* bytes in buf, < 64 */
} cs_sha256;

void cs_sha256_init(cs_sha256 *s);
/* data may be NULL when n == 0. */
void cs_sha256_update(cs_sha256 *s, const void *data, size_t n);
void cs_sha256_final(cs_sha256 *s, uint8_t out[CS_SHA256_DIGEST]);

/* One-shot digest of a buffer. */
void cs_sha256_buf(const void *data, size_t n, uint8_t out[CS_SHA256_DIGEST]);

/* Implementation switch, process-wide, for tests and benchmarks: on=0 forces the scalar
 * reference, on=1 uses SHA-NI when the CPU has it (the default). Returns 1 when the
 * accelerated implementation is available. Both give identical digests. */
int cs_sha256_use_accel(int on);

/* Lowercase hex of a digest into out (CS_SHA256_HEX bytes, NUL-terminated). */
void cs_sha256_hex(const uint8_t d[CS_SHA256_DIGEST], char out[CS_SHA256_HEX]);

#endif
