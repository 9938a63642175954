/* cs_pool (see threadpool.h): dynamic chunks from one atomic counter, bounded
 * polling then futex sleep on both sides, and a width that follows how late
 * the workers are. */
#include "engine/threadpool.h"
#include "engine/kernels.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CALLER_SPIN_NS 30000LL         /* caller polls this long for the last chunks, then sleeps */
#define CALLER_SPIN_BUSY_NS 5000LL     /* ... while the CPUs are contended */
#define DELAY_SAMPLE_NS 10000000LL     /* each thread reads its run-queue delay every 10 ms */
#define DELAY_BUSY_FRAC 0.10           /* waiting for a CPU > 10% of the time: contended */
#define BUSY_HOLD_NS 100000000LL       /* a contended sample holds for 100 ms */
#define WIN_MIN_JOBS 64                /* a width decision needs this many multi-threaded jobs */
#define WIN_MIN_NS 100000000LL         /* ... over at least 100 ms (tens of scheduler slices) */
#define BACKOFF_MIN_NS 200000000LL     /* first re-probe of the full width after 200 ms */
#define BACKOFF_MAX_NS 3200000000LL    /* failed probes double the wait, up to 3.2 s */
#define CAP_RECHECK_NS 1000000000LL    /* affinity mask and cgroup quota re-read every second */
#define MAX_CHUNKS_PER_THREAD 64

enum { JOB_FOR, JOB_RUN };

/* Run-queue delay of one thread (/proc/thread-self/schedstat, second field:
 * ns spent runnable but waiting for a CPU), sampled every DELAY_SAMPLE_NS. */
typedef struct delay_probe {
    int64_t t_ns, delay_ns;
} delay_probe;

typedef struct worker {
    _Alignas(64) _Atomic uint32_t go; /* futex word: sequence of the last job posted to this worker */
    _Atomic uint32_t sleeping;        /* 1 while in (or about to enter) futex_wait on go */
    _Atomic uint64_t chunks;          /* chunks this worker ran */
    uint32_t rng;                     /* jitter_us's random state */
    delay_probe probe;
    struct cs_pool *p;
    pthread_t th;
    int tid;
} worker;

/* A job as a worker sees it (copied out of the pool before claiming). */
typedef struct job {
    int kind;
    cs_pool_fn run_fn;
    cs_pool_range_fn for_fn;
    void *ctx;
    size_t n_items, chunk;
    uint32_t n_chunks;
} job;

struct cs_pool {
    int n;
    cs_pool_opts o;
    worker *w; /* [n]; w[0] is the caller's slot, unused */
    /* The current job, written by the caller before it publishes `claim`.
     * Atomic (relaxed) because a worker late from the previous job may read
     * them while the caller writes the next job's: its claim then fails and
     * it discards what it read. */
    _Atomic int kind;
    _Atomic(cs_pool_fn) run_fn;
    _Atomic(cs_pool_range_fn) for_fn;
    _Atomic(void *) ctx;
    _Atomic size_t n_items, chunk;
    _Atomic uint32_t n_chunks;
    _Alignas(64) _Atomic uint64_t claim; /* (job sequence << 32) | next unclaimed chunk */
    _Alignas(64) _Atomic uint32_t left;  /* chunks of the job not finished; futex word of the caller */
    _Atomic uint32_t caller_sleeping;
    _Atomic int stop;
    _Atomic int64_t busy_until_ns; /* CPUs contended until then: no polling */
    /* Caller-only state. */
    _Alignas(64) uint32_t seq;
    int width, cap;
    int probing;
    int64_t cap_checked_ns, probe_at_ns, backoff_ns;
    int64_t win_start_ns, win_help_ns, win_wait_ns;
    delay_probe probe;
    int win_jobs;
    cs_pool_stats st; /* caller's counters; worker_chunks summed from the workers on demand */
    _Atomic uint64_t busy_samples;
};

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Reads a small file into buf without allocating (this runs between jobs). */
static int read_small(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t r = read(fd, buf, cap - 1);
    close(fd);
    if (r < 0) return -1;
    buf[r] = 0;
    return 0;
}

/* Samples the calling thread's run-queue delay at most every DELAY_SAMPLE_NS;
 * when it waited for a CPU more than DELAY_BUSY_FRAC of the time since the last
 * sample, another process competes for its CPU: marks the pool contended for
 * BUSY_HOLD_NS. Whether this thread or another one sees it, every thread then
 * stops polling: a polling thread would hold a CPU that a preempted one of
 * ours (or the neighbour) could use. Without /proc the pool never marks itself. */
static void sample_delay(cs_pool *p, delay_probe *pr, int64_t t) {
    if (t - pr->t_ns < DELAY_SAMPLE_NS) return;
    char buf[128];
    long long run = 0, delay = -1;
    if (read_small("/proc/thread-self/schedstat", buf, sizeof buf) == 0) {
        char *end;
        run = strtoll(buf, &end, 10);
        delay = strtoll(end, NULL, 10);
    }
    (void)run;
    if (pr->t_ns > 0 && delay >= pr->delay_ns && pr->delay_ns >= 0 &&
        (double)(delay - pr->delay_ns) > DELAY_BUSY_FRAC * (double)(t - pr->t_ns)) {
        atomic_store_explicit(&p->busy_until_ns, t + BUSY_HOLD_NS, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->busy_samples, 1, memory_order_relaxed);
    }
    pr->t_ns = t;
    pr->delay_ns = delay;
}

static int busy(cs_pool *p, int64_t t) { return t < atomic_load_explicit(&p->busy_until_ns, memory_order_relaxed); }

/* ------------------------------------------------------------------ workers */

static void load_job(cs_pool *p, job *j) {
    j->kind = atomic_load_explicit(&p->kind, memory_order_relaxed);
    j->run_fn = atomic_load_explicit(&p->run_fn, memory_order_relaxed);
    j->for_fn = atomic_load_explicit(&p->for_fn, memory_order_relaxed);
    j->ctx = atomic_load_explicit(&p->ctx, memory_order_relaxed);
    j->n_items = atomic_load_explicit(&p->n_items, memory_order_relaxed);
    j->chunk = atomic_load_explicit(&p->chunk, memory_order_relaxed);
    j->n_chunks = atomic_load_explicit(&p->n_chunks, memory_order_relaxed);
}

static void exec_chunk(const job *j, int tid, uint32_t idx, int n) {
    if (j->kind == JOB_RUN) {
        j->run_fn(j->ctx, (int)idx, n);
    } else {
        const size_t b = (size_t)idx * j->chunk;
        const size_t e = j->n_items - b < j->chunk ? j->n_items : b + j->chunk;
        j->for_fn(j->ctx, tid, b, e);
    }
}

/* Claims and runs chunks of job s until none is left. A claim is a CAS on the
 * whole (sequence, index) word, so a worker still holding an older job's
 * sequence can never take a chunk of the current one. The job fields it read
 * before a successful claim are that job's: the caller writes the next job's
 * only after every chunk of this one finished, this one included. */
static void work(cs_pool *p, worker *w, uint32_t s) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != s) return;
        job j;
        load_job(p, &j);
        atomic_thread_fence(memory_order_acquire); /* pairs with run_job's fence: see there */
        if ((uint32_t)c >= j.n_chunks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (p->o.jitter_us > 0) {
            w->rng ^= w->rng << 13, w->rng ^= w->rng >> 17, w->rng ^= w->rng << 5;
            usleep(w->rng % (uint32_t)p->o.jitter_us);
        }
        exec_chunk(&j, w->tid, (uint32_t)c, p->n);
        atomic_fetch_add_explicit(&w->chunks, 1, memory_order_relaxed);
        /* seq_cst pairs with the caller's store to caller_sleeping: either it
         * sees left == 0 or this thread sees it asleep and wakes it. */
        if (atomic_fetch_sub_explicit(&p->left, 1, memory_order_seq_cst) == 1 &&
            atomic_load_explicit(&p->caller_sleeping, memory_order_seq_cst))
            futex_wake(&p->left, 1);
    }
}

/* Waits for a job other than `seen`: polls for spin_ns (unless the CPUs are
 * contended), then sleeps. */
static uint32_t wait_go(cs_pool *p, worker *w, uint32_t seen, int64_t spin_ns) {
    uint32_t g = atomic_load_explicit(&w->go, memory_order_acquire);
    if (g != seen) return g;
    const int64_t t0 = now_ns();
    sample_delay(p, &w->probe, t0);
    if (spin_ns > 0 && !busy(p, t0)) {
        for (unsigned it = 1;; it++) {
            cpu_relax();
            if ((g = atomic_load_explicit(&w->go, memory_order_acquire)) != seen) return g;
            if ((it & 63) == 0 && now_ns() - t0 > spin_ns) break;
        }
    }
    for (;;) {
        atomic_store_explicit(&w->sleeping, 1, memory_order_seq_cst);
        if ((g = atomic_load_explicit(&w->go, memory_order_seq_cst)) == seen) futex_wait(&w->go, seen);
        atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
        if ((g = atomic_load_explicit(&w->go, memory_order_acquire)) != seen) return g;
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    cs_pool *p = w->p;
    const int64_t spin_ns = (int64_t)p->o.spin_us * 1000;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_go(p, w, seen, spin_ns);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        work(p, w, seen);
    }
    cs_kern_thread_cleanup();
    return NULL;
}

/* -------------------------------------------------------------- CPU limits */

/* ceil(quota / period) from cgroup v2 cpu.max or v1 cfs files; 0 if unlimited/unknown. */
static int cgroup_cpus(void) {
    char buf[128];
    long long q = -1, per = 0;
    if (read_small("/sys/fs/cgroup/cpu.max", buf, sizeof buf) == 0) {
        if (strncmp(buf, "max", 3) != 0) {
            char *end;
            q = strtoll(buf, &end, 10);
            per = strtoll(end, NULL, 10);
        }
    } else {
        if (read_small("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", buf, sizeof buf) == 0) q = strtoll(buf, NULL, 10);
        if (read_small("/sys/fs/cgroup/cpu/cpu.cfs_period_us", buf, sizeof buf) == 0) per = strtoll(buf, NULL, 10);
    }
    if (q <= 0 || per <= 0) return 0;
    return (int)((q + per - 1) / per);
}

static int affinity_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    return CPU_COUNT(&set);
}

int cs_cpu_count(void) {
    const char *env = getenv("CS_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    int n = affinity_cpus();
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int q = cgroup_cpus();
    if (q > 0 && q < n) n = q;
    return n > 0 ? n : 1;
}

/* ------------------------------------------------------------------- pool */

static int env_int(const char *name, int lo, int hi, int def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    long v = strtol(s, &end, 10);
    return *end || v < lo || v > hi ? def : (int)v;
}

cs_pool_opts cs_pool_default_opts(void) {
    return (cs_pool_opts){.adapt = env_int("CS_POOL_ADAPT", 0, 1, 1),
                          .spin_us = env_int("CS_POOL_SPIN_US", 0, 100000, 50),
                          .chunks = env_int("CS_POOL_CHUNKS", 1, MAX_CHUNKS_PER_THREAD, 4)};
}

int cs_pool_create(cs_pool **out, int n, cs_err *err) { return cs_pool_create_opts(out, n, NULL, err); }

int cs_pool_create_opts(cs_pool **out, int n, const cs_pool_opts *opts, cs_err *err) {
    *out = NULL;
    if (n <= 0) n = cs_cpu_count();
    if (n > CS_POOL_MAX_THREADS) n = CS_POOL_MAX_THREADS;
    cs_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
    if (!p) return cs_err_set(err, "out of memory");
    memset(p, 0, sizeof *p);
    p->o = opts ? *opts : cs_pool_default_opts();
    if (p->o.spin_us < 0) p->o.spin_us = 0;
    if (p->o.chunks < 1 || p->o.chunks > MAX_CHUNKS_PER_THREAD) p->o.chunks = 4;
    if (p->o.jitter_us < 0) p->o.jitter_us = 0;
    p->n = 1; /* threads started so far, for cs_pool_free on failure */
    p->width = p->cap = n;
    p->backoff_ns = BACKOFF_MIN_NS;
    p->w = aligned_alloc(64, (size_t)n * sizeof *p->w);
    if (!p->w) {
        free(p);
        return cs_err_set(err, "out of memory");
    }
    memset(p->w, 0, (size_t)n * sizeof *p->w);
    for (int i = 1; i < n; i++) {
        p->w[i].p = p;
        p->w[i].tid = i;
        p->w[i].rng = 2463534242u + (uint32_t)i * 7919u;
        if (pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]) != 0) {
            cs_pool_free(p);
            return cs_err_set(err, "cannot start thread %d of %d", i, n);
        }
        p->n = i + 1;
    }
    p->cap_checked_ns = p->win_start_ns = now_ns();
    *out = p;
    return 0;
}

void cs_pool_free(cs_pool *p) {
    if (!p) return;
    atomic_store_explicit(&p->stop, 1, memory_order_seq_cst);
    for (int i = 1; i < p->n; i++) {
        atomic_fetch_add_explicit(&p->w[i].go, 1, memory_order_seq_cst);
        futex_wake(&p->w[i].go, 1);
    }
    for (int i = 1; i < p->n; i++) pthread_join(p->w[i].th, NULL);
    free(p->w);
    free(p);
}

int cs_pool_size(const cs_pool *p) { return p->n; }

int cs_pool_width(const cs_pool *p) { return p->width; }

void cs_pool_get_stats(const cs_pool *p, cs_pool_stats *out) {
    *out = p->st;
    out->worker_chunks = 0;
    for (int i = 1; i < p->n; i++) out->worker_chunks += atomic_load_explicit(&p->w[i].chunks, memory_order_relaxed);
    out->chunks += out->worker_chunks;
    out->busy_samples = atomic_load_explicit(&p->busy_samples, memory_order_relaxed);
}

/* Width for the next job: the CPU cap (re-read every second) and the probe schedule. */
static int pick_width(cs_pool *p, int64_t t) {
    if (p->n == 1) return 1;
    sample_delay(p, &p->probe, t);
    if (t - p->cap_checked_ns >= CAP_RECHECK_NS) {
        p->cap_checked_ns = t;
        int cap = p->n, a = affinity_cpus(), q = cgroup_cpus();
        if (a > 0 && a < cap) cap = a;
        if (q > 0 && q < cap) cap = q;
        if (cap > p->cap) p->probe_at_ns = t; /* more CPUs: try them now */
        p->cap = cap;
        if (p->width > cap) p->width = cap;
    }
    if (!p->o.adapt) return p->width = p->cap;
    if (p->width < p->cap && t >= p->probe_at_ns) {
        p->width = p->cap;
        p->probing = 1;
        p->win_jobs = 0;
        p->win_help_ns = p->win_wait_ns = 0;
        p->win_start_ns = t;
    }
    return p->width;
}

/* After a multi-threaded job (the caller ran `mine` of its n_chunks chunks
 * from t0 to t_own, then waited until t1): the window's verdict on the width.
 * The workers' help is what their chunks would have cost the caller, at its
 * own time per chunk in the same job; when the caller spends longer than that
 * waiting for them, fewer threads finish sooner. */
static void account(cs_pool *p, int64_t t0, int64_t t_own, int64_t t1, uint32_t mine, uint32_t n_chunks) {
    const int64_t wait_ns = t1 - t_own;
    p->st.job_ns += (uint64_t)(t1 - t0);
    p->st.wait_ns += (uint64_t)wait_ns;
    if (!p->o.adapt || mine == 0) return; /* no measure of a chunk's cost in this job */
    if (p->win_jobs++ == 0) p->win_start_ns = t0;
    p->win_help_ns += (t_own - t0) * (int64_t)(n_chunks - mine) / (int64_t)mine;
    p->win_wait_ns += wait_ns;
    if (p->win_jobs < WIN_MIN_JOBS || t1 - p->win_start_ns < WIN_MIN_NS) return;
    if (p->win_wait_ns > p->win_help_ns) {
        p->width--;
        p->st.narrowings++;
        p->backoff_ns = p->probing ? (p->backoff_ns * 2 < BACKOFF_MAX_NS ? p->backoff_ns * 2 : BACKOFF_MAX_NS)
                                   : BACKOFF_MIN_NS;
        p->probe_at_ns = t1 + p->backoff_ns;
    } else if (p->probing) {
        p->backoff_ns = BACKOFF_MIN_NS;
    }
    p->probing = 0;
    p->win_jobs = 0;
    p->win_help_ns = p->win_wait_ns = 0;
}

/* Posts a job to workers 1..width-1, takes chunks itself, waits for the rest. */
static void run_job(cs_pool *p, int width, int64_t t0, int kind, cs_pool_fn run_fn, cs_pool_range_fn for_fn,
                    void *ctx, size_t n_items, size_t chunk, uint32_t n_chunks) {
    const uint32_t s = ++p->seq;
    /* Close the claim word before the job fields change: a worker still in
     * work() for the previous job may have loaded the old claim (index past
     * the old job's end) and then read this job's fields; were the claim word
     * unchanged, its CAS would succeed against this job's larger n_chunks, run
     * a chunk twice and take one decrement too many from `left` (the caller
     * then waited forever). With the word changed first its CAS fails, and a
     * worker that loads the closed word sees no chunk left. */
    atomic_store_explicit(&p->claim, ((uint64_t)s << 32) | UINT32_MAX, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&p->kind, kind, memory_order_relaxed);
    atomic_store_explicit(&p->run_fn, run_fn, memory_order_relaxed);
    atomic_store_explicit(&p->for_fn, for_fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->n_items, n_items, memory_order_relaxed);
    atomic_store_explicit(&p->chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&p->n_chunks, n_chunks, memory_order_relaxed);
    atomic_store_explicit(&p->left, n_chunks, memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)s << 32, memory_order_release);
    for (int i = 1; i < width; i++) {
        atomic_store_explicit(&p->w[i].go, s, memory_order_seq_cst);
        if (atomic_load_explicit(&p->w[i].sleeping, memory_order_seq_cst)) futex_wake(&p->w[i].go, 1);
    }
    const job j = {kind, run_fn, for_fn, ctx, n_items, chunk, n_chunks};
    uint32_t mine = 0;
    for (;;) { /* the sequence cannot change under the caller: fetch_add is enough */
        const uint32_t idx = (uint32_t)atomic_fetch_add_explicit(&p->claim, 1, memory_order_relaxed);
        if (idx >= n_chunks) break;
        exec_chunk(&j, 0, idx, p->n);
        mine++;
    }
    p->st.chunks += mine;
    const int64_t t_own = now_ns();
    if (atomic_fetch_sub_explicit(&p->left, mine, memory_order_acq_rel) != mine) {
        const int64_t spin_ns = busy(p, t_own) ? CALLER_SPIN_BUSY_NS : CALLER_SPIN_NS;
        int64_t t = t_own;
        for (unsigned it = 1; atomic_load_explicit(&p->left, memory_order_acquire) != 0; it++) {
            cpu_relax();
            if ((it & 63) == 0 && (t = now_ns()) - t_own > spin_ns) {
                /* A worker is off its CPU mid-chunk: sleep rather than hold a CPU it may need. */
                for (;;) {
                    atomic_store_explicit(&p->caller_sleeping, 1, memory_order_seq_cst);
                    const uint32_t v = atomic_load_explicit(&p->left, memory_order_seq_cst);
                    if (v == 0) break;
                    p->st.caller_sleeps++;
                    futex_wait(&p->left, v);
                }
                atomic_store_explicit(&p->caller_sleeping, 0, memory_order_relaxed);
                atomic_thread_fence(memory_order_acquire);
                break;
            }
        }
        account(p, t0, t_own, now_ns(), mine, n_chunks);
    } else {
        account(p, t0, t_own, t_own, mine, n_chunks);
    }
}

void cs_pool_for(cs_pool *p, size_t n, size_t grain, cs_pool_range_fn fn, void *ctx) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    p->st.jobs++;
    const int64_t t0 = now_ns();
    const int width = pick_width(p, t0);
    if (width < p->n) p->st.narrow_jobs++;
    size_t chunk = (n + (size_t)width * (size_t)p->o.chunks - 1) / ((size_t)width * (size_t)p->o.chunks);
    if (chunk < grain) chunk = grain;
    const size_t n_chunks = (n + chunk - 1) / chunk;
    if (width == 1 || n_chunks == 1) {
        fn(ctx, 0, 0, n);
        p->st.chunks++;
        return;
    }
    run_job(p, width, t0, JOB_FOR, NULL, fn, ctx, n, chunk, (uint32_t)n_chunks);
}

void cs_pool_run(cs_pool *p, cs_pool_fn fn, void *ctx) {
    p->st.jobs++;
    const int64_t t0 = now_ns();
    const int width = pick_width(p, t0);
    if (width < p->n) p->st.narrow_jobs++;
    if (width == 1) {
        for (int i = 0; i < p->n; i++) fn(ctx, i, p->n);
        p->st.chunks += (uint64_t)p->n;
        return;
    }
    run_job(p, width, t0, JOB_RUN, fn, NULL, ctx, (size_t)p->n, 1, (uint32_t)p->n);
}
