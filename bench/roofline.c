/* roofline: the two physical limits the benchmark compares every engine against, measured on
 * this machine, printed as one JSON object.
 *
 *   memory read bandwidth: every thread streams its share of an array much larger than the last
 *       level cache (default 2 GiB; the build machines have a 260 MB L3), summing it with vector
 *       loads; best of several passes. Reported for all threads and for one thread.
 *   fp32 FMA peak: every thread runs a loop of fused multiply-adds into many independent vector
 *       accumulators (enough to cover FMA latency x ports); reported per core (one thread) and
 *       in total (all threads at once).
 *
 * The vector width is picked at run time: AVX-512F, else AVX2+FMA, else portable C (GCC vector
 * extensions), so one `cc -O2` build works on any x86-64 (and elsewhere via the generic path).
 *
 *   usage: roofline [THREADS] [ARRAY_MB]      (defaults: all CPUs of the affinity mask, 2048)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------- kernels: read-sum over [p, p+n) floats; FMA loop of iters x ACC vectors ---------- */

typedef float v8f __attribute__((vector_size(32)));

static float read_generic(const float *p, size_t n) {
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        v8f x0, x1, x2, x3;
        memcpy(&x0, p + i, 32);
        memcpy(&x1, p + i + 8, 32);
        memcpy(&x2, p + i + 16, 32);
        memcpy(&x3, p + i + 24, 32);
        a0 += x0; a1 += x1; a2 += x2; a3 += x3;
    }
    v8f s = a0 + a1 + a2 + a3;
    float r = 0;
    for (int k = 0; k < 8; k++) r += s[k];
    for (; i < n; i++) r += p[i];
    return r;
}

/* 12 independent accumulators of 8 lanes: 192 flops per iteration. */
static double fma_generic(long iters) {
    v8f acc[12], m = {0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f};
    v8f a = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};
    for (int k = 0; k < 12; k++) acc[k] = a * (float)(k + 1);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++) acc[k] = acc[k] * m + a;
    float r = 0;
    for (int k = 0; k < 12; k++) r += acc[k][0];
    __asm__ volatile("" : : "r"(&r) : "memory");
    return (double)iters * 12 * 8 * 2;
}

#if HAVE_X86
__attribute__((target("avx2,fma"))) static float read_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float t[8], r = 0;
    _mm256_storeu_ps(t, s);
    for (int k = 0; k < 8; k++) r += t[k];
    for (; i < n; i++) r += p[i];
    return r;
}

#define FMA_BODY(V, FMA, SET1, W)                                                              \
    V m = SET1(0.999f), a = SET1(1e-7f);                                                       \
    V c0 = SET1(1), c1 = SET1(2), c2 = SET1(3), c3 = SET1(4), c4 = SET1(5), c5 = SET1(6);      \
    V c6 = SET1(7), c7 = SET1(8), c8 = SET1(9), c9 = SET1(10), c10 = SET1(11), c11 = SET1(12); \
    for (long i = 0; i < iters; i++) {                                                         \
        c0 = FMA(c0, m, a); c1 = FMA(c1, m, a); c2 = FMA(c2, m, a); c3 = FMA(c3, m, a);        \
        c4 = FMA(c4, m, a); c5 = FMA(c5, m, a); c6 = FMA(c6, m, a); c7 = FMA(c7, m, a);        \
        c8 = FMA(c8, m, a); c9 = FMA(c9, m, a); c10 = FMA(c10, m, a); c11 = FMA(c11, m, a);    \
    }                                                                                          \
    V s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;                        \
    __asm__ volatile("" : : "x"(s));                                                           \
    return (double)iters * 12 * (W) * 2;

__attribute__((target("avx2,fma"))) static double fma_avx2(long iters) {
    FMA_BODY(__m256, _mm256_fmadd_ps, _mm256_set1_ps, 8)
}

__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    float r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) r += p[i];
    return r;
}

__attribute__((target("avx512f"))) static double fma_avx512(long iters) {
    FMA_BODY(__m512, _mm512_fmadd_ps, _mm512_set1_ps, 16)
}
#endif

static float (*read_fn)(const float *, size_t) = read_generic;
static double (*fma_fn)(long) = fma_generic;
static const char *isa = "generic";

static void pick_isa(void) {
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        read_fn = read_avx512, fma_fn = fma_avx512, isa = "avx512f";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        read_fn = read_avx2, fma_fn = fma_avx2, isa = "avx2+fma";
    }
#endif
}

/* ---------- threads: each worker is pinned to one CPU of the affinity mask ---------- */

typedef struct {
    int cpu, nthreads, idx;
    float *buf;
    size_t n;          /* floats in the whole array */
    int mode;          /* 0 first touch, 1 read, 2 fma */
    long fma_iters;
    double flops, t0, t1;
    volatile float sink;
} worker;

static pthread_barrier_t barrier;

static void *work(void *arg) {
    worker *w = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    size_t chunk = (w->n / (size_t)w->nthreads) & ~(size_t)63;
    size_t lo = chunk * (size_t)w->idx, hi = w->idx == w->nthreads - 1 ? w->n : lo + chunk;
    pthread_barrier_wait(&barrier);
    w->t0 = now_s();
    if (w->mode == 0) {
        for (size_t i = lo; i < hi; i++) w->buf[i] = (float)(i & 1023) * 1e-3f;
    } else if (w->mode == 1) {
        w->sink = read_fn(w->buf + lo, hi - lo);
    } else {
        w->flops = fma_fn(w->fma_iters);
    }
    w->t1 = now_s();
    return NULL;
}

static int cpus[1024];

/* Runs one phase on nthreads workers; returns the wall time from the common start to the last
 * finisher (min start, max end) and the summed flops. */
static double run_phase(int nthreads, int mode, float *buf, size_t n, long fma_iters,
                        double *flops) {
    pthread_t th[1024];
    worker *ws = calloc((size_t)nthreads, sizeof *ws);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        ws[i] = (worker){.cpu = cpus[i], .nthreads = nthreads, .idx = i, .buf = buf, .n = n,
                         .mode = mode, .fma_iters = fma_iters};
        pthread_create(&th[i], NULL, work, &ws[i]);
    }
    double t0 = 1e300, t1 = 0, fl = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        if (ws[i].t0 < t0) t0 = ws[i].t0;
        if (ws[i].t1 > t1) t1 = ws[i].t1;
        fl += ws[i].flops;
    }
    pthread_barrier_destroy(&barrier);
    free(ws);
    if (flops) *flops = fl;
    return t1 - t0;
}

static double best_bandwidth(int nthreads, float *buf, size_t n, int passes) {
    double best = 0;
    for (int p = 0; p < passes; p++) {
        double dt = run_phase(nthreads, 1, buf, n, 0, NULL);
        double gbs = (double)n * sizeof(float) / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

static double best_gflops(int nthreads, int passes) {
    /* calibrate iterations to ~0.2 s on one thread */
    long iters = 1 << 20;
    for (;;) {
        double t0 = now_s();
        fma_fn(iters);
        if (now_s() - t0 > 0.05) break;
        iters *= 2;
    }
    iters *= 4;
    double best = 0;
    for (int p = 0; p < passes; p++) {
        double fl = 0, dt = run_phase(nthreads, 2, NULL, 0, iters, &fl);
        if (fl / dt / 1e9 > best) best = fl / dt / 1e9;
    }
    return best;
}

int main(int argc, char **argv) {
    cpu_set_t set;
    int ncpu = 0;
    sched_getaffinity(0, sizeof set, &set);
    for (int c = 0; c < CPU_SETSIZE && ncpu < 1024; c++)
        if (CPU_ISSET(c, &set)) cpus[ncpu++] = c;
    int nthreads = argc > 1 ? atoi(argv[1]) : ncpu;
    if (nthreads < 1 || nthreads > ncpu) nthreads = ncpu;
    size_t mb = argc > 2 ? (size_t)atol(argv[2]) : 2048;
    if (mb < 64) mb = 64;
    pick_isa();

    size_t n = mb * 1024 * 1024 / sizeof(float);
    float *buf = NULL;
    if (posix_memalign((void **)&buf, 2 * 1024 * 1024, n * sizeof(float))) {
        fprintf(stderr, "roofline: cannot allocate %zu MiB\n", mb);
        return 1;
    }
#ifdef MADV_HUGEPAGE
    madvise(buf, n * sizeof(float), MADV_HUGEPAGE); /* fewer page faults on first touch */
#endif
    run_phase(nthreads, 0, buf, n, 0, NULL); /* first touch by the reading threads */
    double bw_all = best_bandwidth(nthreads, buf, n, 6);
    double bw_one = best_bandwidth(1, buf, n, 3);
    /* Last-level-cache bandwidth: a 64 MiB slice (far above L2, inside a large L3), read once
     * to load it, then timed. On CPUs whose L3 is smaller than 64 MiB this is DRAM again. */
    size_t nllc = (size_t)64 * 1024 * 1024 / sizeof(float);
    if (nllc > n) nllc = n;
    run_phase(nthreads, 1, buf, nllc, 0, NULL);
    double bw_llc = best_bandwidth(nthreads, buf, nllc, 10);
    free(buf);
    double fma_one = best_gflops(1, 3);
    double fma_all = best_gflops(nthreads, 3);
    printf("{\"isa\": \"%s\", \"threads\": %d, \"array_mb\": %zu, \"bandwidth_gbs\": %.2f, "
           "\"bandwidth_gbs_1thread\": %.2f, \"bandwidth_gbs_64mb\": %.2f, "
           "\"fma_gflops_per_core\": %.1f, \"fma_gflops_total\": %.1f}\n",
           isa, nthreads, mb, bw_all, bw_one, bw_llc, fma_one, fma_all);
    return 0;
}
