/* cs_sampler: next-token selection with Hugging Face generate() semantics.
 *
 * Order (as transformers applies its logits processors when sampling):
 * repetition penalty, then temperature, top-k, top-p; then a draw from the
 * softmax of what is left. Greedy (do_sample = 0) applies the repetition
 * penalty and takes the first arg-max. Tokens removed by top-k / top-p become
 * -INFINITY; the surviving set equals the one transformers keeps, ties included
 * (top-k keeps every score equal to the k-th largest; top-p sorts ascending by
 * (score, id), softmax in float, cumulative sum in double, and always keeps the
 * most likely token).
 *
 * The RNG is xoshiro256** seeded through splitmix64: the same seed gives the
 * same tokens on every machine (not the same as torch's generator).
 *
 * A cs_sampler holds scratch for one vocabulary; the per-token path allocates
 * nothing. Not thread-safe: one per thread. */
#ifndef CS_SAMPLER_H
#define CS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct cs_rng {
    uint64_t s[4];
} cs_rng;

void cs_rng_seed(cs_rng *r, uint64_t seed);
uint64_t cs_rng_next(cs_rng *r);
double cs_rng_uniform(cs_rng *r); /* [0, 1) with 53 random bits */

typedef struct cs_sample_params {
    int do_sample;            /* 0: greedy */
    float temperature;        /* > 0; 1 disables */
    int top_k;                /* >= 0; 0 disables */
    float top_p;              /* (0, 1]; 1 disables */
    float repetition_penalty; /* > 0; 1 disables */
} cs_sample_params;

/* Checks ranges; err names the offending field. */
int cs_sample_params_check(const cs_sample_params *p, cs_err *err);

typedef struct cs_sampler {
    size_t V;
    float *vals;     /* (V + 16) scratch */
    int32_t *idx;    /* (V) scratch */
    uint8_t *seen;   /* (V) repetition-penalty marks */
    uint64_t *keys;  /* (2V) top-p sort keys and radix scratch */
    double *w;       /* (V) draw weights */
    float *cand;     /* (V) candidates' scores, in the order of idx */
} cs_sampler;

int cs_sampler_init(cs_sampler *s, size_t vocab, cs_err *err);
void cs_sampler_free(cs_sampler *s);

/* The individual processors, in place on scores (V). Exposed for tests. */
void cs_sampler_repetition_penalty(cs_sampler *s, float *scores, const int32_t *hist, size_t n_hist, float penalty);
void cs_sampler_temperature(float *scores, size_t V, float temperature);
void cs_sampler_top_k(cs_sampler *s, float *scores, int k);
void cs_sampler_top_p(cs_sampler *s, float *scores, float top_p);

/* What top-k's scan finds in scores[0..n) (n <= V, 1 <= k <= n, no NaN): the
 * k-th largest (ties counted), and the smallest and largest in *mn / *mx.
 * Exposed for tests. */
float cs_sampler_kth(cs_sampler *s, const float *scores, size_t n, int k, float *mn, float *mx);

/* Whether top-k's scan of the scores may use AVX-512 (the default where the
 * CPU has it; 0: the SSE scan). Both find the same k-th largest, minimum and
 * maximum; tests run each. Process-wide; call it while no sampler runs. */
void cs_sampler_simd(int avx512);

/* All processors of p (as generate() would apply them), in place. */
void cs_sampler_process(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist);

/* Picks the next token; scores (V) is modified (what it holds afterwards is
 * unspecified). hist: ids so far (prompt and generated) for the repetition
 * penalty. With top-k it finds the same candidates and scores as the
 * processors in turn without writing the vocabulary (sampler.c, pick_top_k). */
int32_t cs_sampler_pick(cs_sampler *s, const cs_sample_params *p, float *scores, const int32_t *hist, size_t n_hist,
                        cs_rng *rng);

#endif
