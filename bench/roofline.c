/* roofline: the physical limits the benchmark compares every engine against, measured on this
 * machine, printed as one JSON object.
 *
 *   memory read bandwidth: every thread streams its share of an array much larger than the last
 *       level cache (default 2 GiB; the build machines have a 260 MB L3), summing it with vector
 *       loads; best of several passes. Reported for all threads and for one thread.
 *   instruction peaks: for each instruction the engine's matrix kernels use on this CPU, every
 *       thread runs a loop of it into many independent accumulators (enough to cover latency x
 *       ports); reported per core (one thread) and in total (all threads at once). Operations are
 *       counted as 2 per multiply-add (one multiply, one add), whatever the instruction does with
 *       the products afterwards:
 *         fp32 FMA    vfmadd231ps: 2 x lanes (zmm 32, ymm 16 FLOP)
 *         bf16 dot    vdpbf16ps zmm (AVX512_BF16): 32 bf16 products summed in pairs into 16 fp32
 *                     lanes = 64 FLOP. Without AVX512_BF16 there is none: the bf16 kernels widen
 *                     the weights to fp32 and use FMA, so bf16's compute peak is the fp32 one.
 *         int8 dot    vpdpbusd (u8 x s8 products summed in fours into int32): zmm (AVX512_VNNI)
 *                     128 OP, ymm (AVX-VNNI) 64 OP; else the AVX2 sequence vpmaddubsw (u8 x s8,
 *                     pairs summed into int16, saturating) + vpmaddwd by ones (into int32) +
 *                     vpaddd: 32 products = 64 OP per sequence.
 *         int8 kernel (when there is no AVX512_VNNI, as on AVX2-only CPUs) the exact sequence of
 *                     the AVX2 int8 kernel's 4-row tile (see i8_kernel): vpsignb + vpmaddubsw +
 *                     vpmaddwd + vpaddd per row and weight vector, vpabsb per weight vector.
 *
 * The vector width and instructions are picked at run time (AVX-512F, else AVX2+FMA, else
 * portable C with GCC vector extensions), so one `cc -O2` build works on any x86-64 (and
 * elsewhere via the generic path, which measures memory and fp32 only).
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
#include <cpuid.h>
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

/* Dot-product instructions: acc = DP(acc, a, b), 12 independent accumulators, each chained
 * through the instruction itself (so nothing can be hoisted out of the loop); they start from
 * different values, or the compiler would merge the identical chains into one. The integer sums
 * wrap and the bf16 ones stay far below overflow; neither has a slow path. */
#define DP_BODY(V, DP, SET1, A, B, OPS)                                                         \
    V c0 = SET1(1), c1 = SET1(2), c2 = SET1(3), c3 = SET1(4), c4 = SET1(5), c5 = SET1(6);      \
    V c6 = SET1(7), c7 = SET1(8), c8 = SET1(9), c9 = SET1(10), c10 = SET1(11), c11 = SET1(12); \
    for (long i = 0; i < iters; i++) {                                                         \
        c0 = DP(c0, A, B); c1 = DP(c1, A, B); c2 = DP(c2, A, B); c3 = DP(c3, A, B);            \
        c4 = DP(c4, A, B); c5 = DP(c5, A, B); c6 = DP(c6, A, B); c7 = DP(c7, A, B);            \
        c8 = DP(c8, A, B); c9 = DP(c9, A, B); c10 = DP(c10, A, B); c11 = DP(c11, A, B);        \
    }                                                                                          \
    V s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;                        \
    __asm__ volatile("" : : "x"(s));                                                           \
    return (double)iters * 12 * (OPS);

/* vdpbf16ps zmm: 32 products (64 FLOP) per instruction */
__attribute__((target("avx512f,avx512bf16"))) static double bf16_avx512(long iters) {
    const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-5f), _mm512_set1_ps(1e-5f));
    DP_BODY(__m512, _mm512_dpbf16_ps, _mm512_set1_ps, a, a, 64)
}

/* vpdpbusd zmm: 64 u8 x s8 products (128 OP) per instruction */
__attribute__((target("avx512f,avx512vnni"))) static double i8_vnni512(long iters) {
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    DP_BODY(__m512i, _mm512_dpbusd_epi32, _mm512_set1_epi32, a, b, 128)
}

/* vpdpbusd ymm, VEX-encoded (AVX-VNNI): 32 products (64 OP) per instruction */
__attribute__((target("avx2,avxvnni"))) static double i8_avxvnni(long iters) {
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
    DP_BODY(__m256i, _mm256_dpbusd_avx_epi32, _mm256_set1_epi32, a, b, 64)
}

/* AVX2 without VNNI: vpmaddubsw + vpmaddwd (by ones) + vpaddd, 32 products (64 OP) per
 * sequence. The products do not depend on the accumulators, so an empty asm statement tells
 * the compiler that x changes every iteration (it costs no instruction) and the six weight
 * vectors differ (no common subexpression). */
__attribute__((target("avx2"))) static double i8_avx2(long iters) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i w0 = _mm256_set1_epi8(1), w1 = _mm256_set1_epi8(-2), w2 = _mm256_set1_epi8(3);
    const __m256i w3 = _mm256_set1_epi8(-4), w4 = _mm256_set1_epi8(5), w5 = _mm256_set1_epi8(-6);
    __m256i x = _mm256_set1_epi8(7);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
#define I8SEQ(c, w) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))
    for (long i = 0; i < iters; i++) {
        __asm__ volatile("" : "+x"(x));
        I8SEQ(c0, w0); I8SEQ(c1, w1); I8SEQ(c2, w2); I8SEQ(c3, w3); I8SEQ(c4, w4); I8SEQ(c5, w5);
    }
#undef I8SEQ
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                 _mm256_add_epi32(c4, c5));
    __asm__ volatile("" : : "x"(s));
    return (double)iters * 6 * 64;
}

/* The exact int8 sequence of src/engine/kernels_avx2.c (tile_i8), a tile of 4 rows x one
 * 16-column panel per group of 4 k: the panel's two 32-byte weight vectors loaded (from a 4 KiB
 * buffer that stays in L1, as a kernel's current panel block does) and made absolute (vpabsb)
 * once for the 4 rows; per row, its 4 activation bytes broadcast, vpsignb (the activations take
 * the weights' signs), vpmaddubsw (|w| x signed x, exact: both sides within +-127), vpmaddwd by
 * ones, vpaddd, for each vector: 4 x 64 products (512 OP) per trip. */
__attribute__((target("avx2"))) static double i8_kernel(long iters) {
    static _Thread_local int8_t wb[4096] __attribute__((aligned(64)));
    static _Thread_local int8_t xb[4 * 512] __attribute__((aligned(64)));
    for (int i = 0; i < 4096; i++) wb[i] = (int8_t)((i * 37 + 11) % 255 - 127);
    for (int i = 0; i < 4 * 512; i++) xb[i] = (int8_t)((i * 53 + 5) % 255 - 127);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
            a31 = a00;
#define ROW(r, c0, c1)                                                                               \
    do {                                                                                             \
        int32_t x4;                                                                                  \
        memcpy(&x4, xq + (r) * 512, 4);                                                              \
        const __m256i xv = _mm256_set1_epi32(x4);                                                    \
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(xv, w0)), ones)); \
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(xv, w1)), ones)); \
    } while (0)
    for (long i = 0; i < iters; i++) {
        const int8_t *w = wb + (size_t)(i & 63) * 64, *xq = xb + (size_t)(i & 127) * 4;
        const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)w);
        const __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)(w + 32));
        const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
        ROW(0, a00, a01); ROW(1, a10, a11); ROW(2, a20, a21); ROW(3, a30, a31);
    }
#undef ROW
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a00, a01), _mm256_add_epi32(a10, a11)),
                                 _mm256_add_epi32(_mm256_add_epi32(a20, a21), _mm256_add_epi32(a30, a31)));
    __asm__ volatile("" : : "x"(s));
    return (double)iters * 512;
}
#endif

/* One measured instruction (or sequence): the JSON keys it is reported under, what it is. */
typedef double (*peak_fn)(long iters); /* runs iters loop trips, returns the operations done */
typedef struct {
    const char *key;   /* JSON prefix: KEY_instr, KEY_g{flops,ops}_per_core, ..._total */
    const char *unit;  /* "gflops" or "gops" */
    const char *instr; /* NULL: not available on this CPU */
    peak_fn fn;
    double per_core, total;
} peak;

enum { PK_BF16, PK_I8, PK_I8_KERNEL, PK_N };
static peak peaks[PK_N] = {
    [PK_BF16] = {"bf16_dot", "gflops", NULL, NULL, 0, 0},
    [PK_I8] = {"int8_dot", "gops", NULL, NULL, 0, 0},
    [PK_I8_KERNEL] = {"int8_kernel", "gops", NULL, NULL, 0, 0},
};
static char features[128] = "";
static const char *fma_instr = "fp32 multiply + add (portable C, 8 lanes), 16 FLOP";

static float (*read_fn)(const float *, size_t) = read_generic;
static double (*fma_fn)(long) = fma_generic;
static const char *isa = "generic";

#if HAVE_X86
/* AVX-VNNI: CPUID.(EAX=7,ECX=1):EAX bit 4 (asked directly: not every compiler's
 * __builtin_cpu_supports knows the name); the OS saving ymm state is implied by avx2. */
static int has_avxvnni(void) {
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx2") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
}
#endif

static void pick_isa(void) {
#if HAVE_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports takes only literals */
    const int has[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
                       __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bf16"),
                       __builtin_cpu_supports("avx512vnni"), has_avxvnni()};
    static const char *const names[] = {"avx2", "fma", "avx512f", "avx512bf16", "avx512vnni", "avxvnni"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (has[i]) {
            if (features[0]) strcat(features, " ");
            strcat(features, names[i]);
        }
    if (__builtin_cpu_supports("avx512f")) {
        read_fn = read_avx512, fma_fn = fma_avx512, isa = "avx512f";
        fma_instr = "vfmadd231ps zmm (AVX-512F), 32 FLOP";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        read_fn = read_avx2, fma_fn = fma_avx2, isa = "avx2+fma";
        fma_instr = "vfmadd231ps ymm (AVX2+FMA), 16 FLOP";
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"))
        peaks[PK_BF16].instr = "vdpbf16ps zmm (AVX512_BF16), 64 FLOP", peaks[PK_BF16].fn = bf16_avx512;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni")) {
        peaks[PK_I8].instr = "vpdpbusd zmm (AVX512_VNNI), 128 OP", peaks[PK_I8].fn = i8_vnni512;
    } else if (__builtin_cpu_supports("avx2")) {
        if (has_avxvnni())
            peaks[PK_I8].instr = "vpdpbusd ymm (AVX-VNNI), 64 OP", peaks[PK_I8].fn = i8_avxvnni;
        else
            peaks[PK_I8].instr = "vpmaddubsw + vpmaddwd + vpaddd ymm (AVX2), 64 OP", peaks[PK_I8].fn = i8_avx2;
        peaks[PK_I8_KERNEL].instr =
            "4 rows x (vpbroadcastd + 2 x (vpsignb + vpmaddubsw + vpmaddwd + vpaddd)) + 2 x vpabsb ymm "
            "(AVX2, exact), 512 OP";
        peaks[PK_I8_KERNEL].fn = i8_kernel;
    }
#endif
}

/* ---------- threads: each worker is pinned to one CPU of the affinity mask ---------- */

typedef struct {
    int cpu, nthreads, idx;
    float *buf;
    size_t n;          /* floats in the whole array */
    int mode;          /* 0 first touch, 1 read, 2 instruction peak (fn) */
    peak_fn fn;
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
        w->flops = w->fn(w->fma_iters);
    }
    w->t1 = now_s();
    return NULL;
}

static int cpus[1024];

/* Runs one phase on nthreads workers; returns the wall time from the common start to the last
 * finisher (min start, max end) and the summed flops. */
static double run_phase(int nthreads, int mode, float *buf, size_t n, peak_fn fn, long fma_iters,
                        double *flops) {
    pthread_t th[1024];
    worker *ws = calloc((size_t)nthreads, sizeof *ws);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        ws[i] = (worker){.cpu = cpus[i], .nthreads = nthreads, .idx = i, .buf = buf, .n = n,
                         .mode = mode, .fn = fn, .fma_iters = fma_iters};
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
        double dt = run_phase(nthreads, 1, buf, n, NULL, 0, NULL);
        double gbs = (double)n * sizeof(float) / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

/* Best of several passes of fn on nthreads threads, in G operations per second. */
static double best_gops(peak_fn fn, int nthreads, int passes) {
    /* calibrate iterations to ~0.2 s on one thread */
    long iters = 1 << 20;
    for (;;) {
        double t0 = now_s();
        fn(iters);
        if (now_s() - t0 > 0.05) break;
        iters *= 2;
    }
    iters *= 4;
    double best = 0;
    for (int p = 0; p < passes; p++) {
        double fl = 0, dt = run_phase(nthreads, 2, NULL, 0, fn, iters, &fl);
        if (fl / dt / 1e9 > best) best = fl / dt / 1e9;
    }
    return best;
}

/* ", \"KEY\": VALUE" with VALUE a number with one decimal, or null when absent */
static void put_num(const char *key, const char *suffix, int have, double v) {
    if (have) printf(", \"%s%s\": %.1f", key, suffix, v);
    else printf(", \"%s%s\": null", key, suffix);
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
    run_phase(nthreads, 0, buf, n, NULL, 0, NULL); /* first touch by the reading threads */
    double bw_all = best_bandwidth(nthreads, buf, n, 6);
    double bw_one = best_bandwidth(1, buf, n, 3);
    /* Last-level-cache bandwidth: a 64 MiB slice (far above L2, inside a large L3), read once
     * to load it, then timed. On CPUs whose L3 is smaller than 64 MiB this is DRAM again. */
    size_t nllc = (size_t)64 * 1024 * 1024 / sizeof(float);
    if (nllc > n) nllc = n;
    run_phase(nthreads, 1, buf, nllc, NULL, 0, NULL);
    double bw_llc = best_bandwidth(nthreads, buf, nllc, 10);
    free(buf);
    double fma_one = best_gops(fma_fn, 1, 3);
    double fma_all = best_gops(fma_fn, nthreads, 3);
    for (int k = 0; k < PK_N; k++)
        if (peaks[k].fn) {
            peaks[k].per_core = best_gops(peaks[k].fn, 1, 3);
            peaks[k].total = best_gops(peaks[k].fn, nthreads, 3);
        }
    printf("{\"isa\": \"%s\", \"threads\": %d, \"array_mb\": %zu, \"bandwidth_gbs\": %.2f, "
           "\"bandwidth_gbs_1thread\": %.2f, \"bandwidth_gbs_64mb\": %.2f, "
           "\"fma_gflops_per_core\": %.1f, \"fma_gflops_total\": %.1f, \"fma_instr\": \"%s\", "
           "\"features\": \"%s\", \"ops_counted\": \"2 per multiply-add\"",
           isa, nthreads, mb, bw_all, bw_one, bw_llc, fma_one, fma_all, fma_instr, features);
    for (int k = 0; k < PK_N; k++) {
        const peak *p = &peaks[k];
        if (p->instr) printf(", \"%s_instr\": \"%s\"", p->key, p->instr);
        else printf(", \"%s_instr\": null", p->key);
        char suffix[32];
        snprintf(suffix, sizeof suffix, "_%s_per_core", p->unit);
        put_num(p->key, suffix, p->fn != NULL, p->per_core);
        snprintf(suffix, sizeof suffix, "_%s_total", p->unit);
        put_num(p->key, suffix, p->fn != NULL, p->total);
    }
    printf("}\n");
    return 0;
}
