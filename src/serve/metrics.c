#include "serve/metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define VLLM_MAX_NAME 256 /* bytes of the model_name label (longer names are cut) */
#define PROC_STAT_MAX 1024 /* bytes of /proc/self/stat we read (the fields we need come first) */

/* Seconds; the same buckets serve request latency and time to first token. */
static const double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
#define NB (sizeof BUCKETS / sizeof BUCKETS[0])

typedef struct hist {
    uint64_t counts[NB + 1]; /* non-cumulative; last is +Inf */
    double sum;
    uint64_t n;
} hist;

typedef struct series {
    char route[CS_METRICS_MAX_LABEL], method[CS_METRICS_MAX_LABEL];
    int status;
    uint64_t count;
} series;

typedef struct route_hist {
    char route[CS_METRICS_MAX_LABEL];
    hist h;
} route_hist;

struct cs_metrics {
    pthread_mutex_t mu;
    series s[CS_METRICS_MAX_SERIES];
    int n_s;
    uint64_t other[CS_METRICS_STATUS_MAX + 1]; /* by status: unknown methods, and series past the table */
    route_hist lat[CS_METRICS_MAX_ROUTES];
    int n_lat;
    hist ttft;
    uint64_t prompt_tokens, gen_tokens;
    _Atomic long inflight;
};

int cs_metrics_create(cs_metrics **out, cs_err *err) {
    cs_metrics *m = calloc(1, sizeof *m);
    if (!m) return cs_err_set(err, "out of memory");
    pthread_mutex_init(&m->mu, NULL);
    *out = m;
    return 0;
}

void cs_metrics_free(cs_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void hist_add(hist *h, double v) {
    size_t i = 0;
    while (i < NB && v > BUCKETS[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

/* Copies a label value, keeping only characters that need no escaping. */
static void label_copy(char *dst, const char *src) {
    size_t n = 0;
    for (; src && *src && n + 1 < CS_METRICS_MAX_LABEL; src++)
        if (*src >= 0x20 && *src < 0x7f && *src != '"' && *src != '\\') dst[n++] = *src;
    dst[n] = 0;
}

/* The methods that get a label of their own (RFC 9110 and PATCH; case-sensitive,
 * as methods are): anything else a client invents is "other", so that junk
 * cannot use up the series table. */
static int known_method(const char *m) {
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"};
    for (size_t i = 0; m && i < sizeof known / sizeof *known; i++)
        if (!strcmp(m, known[i])) return 1;
    return 0;
}

void cs_metrics_request(cs_metrics *m, const char *route, const char *method, int status, double latency_s) {
    char r[CS_METRICS_MAX_LABEL], me[CS_METRICS_MAX_LABEL];
    label_copy(r, route);
    label_copy(me, method);
    if (status < 0 || status > CS_METRICS_STATUS_MAX) status = 0;
    pthread_mutex_lock(&m->mu);
    int i = 0;
    if (!known_method(method)) {
        i = -1;
    } else {
        while (i < m->n_s && !(m->s[i].status == status && !strcmp(m->s[i].route, r) && !strcmp(m->s[i].method, me)))
            i++;
        if (i == m->n_s) {
            if (m->n_s < CS_METRICS_MAX_SERIES) {
                memcpy(m->s[i].route, r, sizeof r);
                memcpy(m->s[i].method, me, sizeof me);
                m->s[i].status = status;
                m->n_s++;
            } else {
                i = -1; /* full: counted under route="other", method="other" */
            }
        }
    }
    if (i < 0) m->other[status]++;
    else m->s[i].count++;
    int j = 0;
    while (j < m->n_lat && strcmp(m->lat[j].route, r)) j++;
    if (j == m->n_lat) {
        if (m->n_lat < CS_METRICS_MAX_ROUTES) m->n_lat++;
        else label_copy(m->lat[j = CS_METRICS_MAX_ROUTES - 1].route, "other");
        if (m->lat[j].h.n == 0) memcpy(m->lat[j].route, r, sizeof r);
    }
    hist_add(&m->lat[j].h, latency_s);
    pthread_mutex_unlock(&m->mu);
}

void cs_metrics_ttft(cs_metrics *m, double seconds) {
    pthread_mutex_lock(&m->mu);
    hist_add(&m->ttft, seconds);
    pthread_mutex_unlock(&m->mu);
}

void cs_metrics_tokens(cs_metrics *m, uint64_t prompt, uint64_t generated) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += prompt;
    m->gen_tokens += generated;
    pthread_mutex_unlock(&m->mu);
}

void cs_metrics_inflight_add(cs_metrics *m, int delta) { atomic_fetch_add(&m->inflight, delta); }
long cs_metrics_inflight(cs_metrics *m) { return atomic_load(&m->inflight); }

/* ------------------------------------------------------------- rendering */

typedef struct buf {
    char *p;
    size_t n, cap;
    int oom;
} buf;

__attribute__((format(printf, 2, 3))) static void bprintf(buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)k;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void render_hist(buf *b, const char *name, const char *labels, const hist *h) {
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (size_t i = 0; i < NB; i++) {
        cum += h->counts[i];
        bprintf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, BUCKETS[i], (unsigned long long)cum);
    }
    cum += h->counts[NB];
    bprintf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    if (labels[0]) {
        bprintf(b, "%s_sum{%s} %.9g\n", name, labels, h->sum);
        bprintf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->n);
    } else {
        bprintf(b, "%s_sum %.9g\n", name, h->sum);
        bprintf(b, "%s_count %llu\n", name, (unsigned long long)h->n);
    }
}

static void gauge(buf *b, const char *name, const char *help, double v) {
    bprintf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.9g\n", name, help, name, name, v);
}

/* A gauge with every digit: byte counts and epoch seconds exceed %.9g's precision. */
static void gauge_exact(buf *b, const char *name, const char *help, double v) {
    bprintf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

/* Seconds since the epoch at which the system booted (btime in /proc/stat), or -1. */
static double boot_time(void) {
    FILE *f = fopen("/proc/stat", "re");
    if (!f) return -1;
    char line[256];
    double bt = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "btime ", 6)) {
            bt = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return bt;
}

/* The process_* series of Prometheus client libraries, for this process (Linux /proc). */
static void render_process(buf *b) {
    char st[PROC_STAT_MAX];
    FILE *f = fopen("/proc/self/stat", "re");
    size_t n = f ? fread(st, 1, sizeof st - 1, f) : 0;
    if (f) fclose(f);
    st[n] = 0;
    const char *p = strrchr(st, ')'); /* the command name may hold spaces and parentheses */
    unsigned long long v[24] = {0};   /* v[i]: field i+3 of proc(5), from the state on */
    int got = 0;
    if (p) {
        p++;
        for (; got < 24 && *p; got++) {
            while (*p == ' ') p++;
            char *end;
            v[got] = strtoull(p, &end, 10);
            if (got == 0) end = (char *)p + 1; /* the state is a letter */
            if (end == p) break;
            p = end;
        }
    }
    const double tck = (double)sysconf(_SC_CLK_TCK), page = (double)sysconf(_SC_PAGESIZE);
    if (got >= 22 && tck > 0) {
        /* utime 14, stime 15, starttime 22, vsize 23, rss 24 (pages) */
        bprintf(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                   "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
                (double)(v[11] + v[12]) / tck);
        gauge_exact(b, "process_virtual_memory_bytes", "Virtual memory size in bytes.", (double)v[20]);
        gauge_exact(b, "process_resident_memory_bytes", "Resident memory size in bytes.", (double)v[21] * page);
        double bt = boot_time();
        if (bt >= 0)
            bprintf(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                       "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
                    bt + (double)v[19] / tck);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long fds = -1; /* the directory's own descriptor is not the process's */
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') fds++;
        closedir(d);
        gauge_exact(b, "process_open_fds", "Number of open file descriptors.", (double)(fds < 0 ? 0 : fds));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        gauge_exact(b, "process_max_fds", "Maximum number of open file descriptors.",
              rl.rlim_cur == RLIM_INFINITY ? -1.0 : (double)rl.rlim_cur);
}

/* vLLM's scheduler gauges, with its names, help texts and label. */
static void render_vllm(buf *b, const cs_metrics_gauges *g) {
    char name[2 * VLLM_MAX_NAME + 1];
    size_t n = 0;
    for (const char *p = g->model_name; *p && n + 2 < sizeof name; p++) { /* a label value, escaped */
        if (*p == '\\' || *p == '"') name[n++] = '\\', name[n++] = *p;
        else if (*p == '\n') name[n++] = '\\', name[n++] = 'n';
        else name[n++] = *p;
    }
    name[n] = 0;
    bprintf(b, "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
               "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"%s\"} %d\n"
               "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
               "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"%s\"} %d\n",
            name, g->running, name, g->waiting);
    if (g->kv_usage >= 0)
        bprintf(b, "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
                   "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"%s\"} %.9g\n",
                name, g->kv_usage);
    if (g->kv_capacity)
        bprintf(b, "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
                   "# TYPE vllm:num_preemptions_total counter\nvllm:num_preemptions_total{model_name=\"%s\"} %llu\n",
                name, (unsigned long long)g->preemptions);
}

int cs_metrics_render(cs_metrics *m, const cs_metrics_gauges *g, char **out, size_t *len) {
    buf b = {.cap = 8192};
    b.p = malloc(b.cap);
    if (!b.p) return -1;
    b.p[0] = 0;
    pthread_mutex_lock(&m->mu);
    bprintf(&b, "# HELP cserve_http_requests_total HTTP requests by route, method and status code.\n"
                "# TYPE cserve_http_requests_total counter\n");
    for (int i = 0; i < m->n_s; i++)
        bprintf(&b, "cserve_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %llu\n", m->s[i].route,
                m->s[i].method, m->s[i].status, (unsigned long long)m->s[i].count);
    for (int st = 0; st <= CS_METRICS_STATUS_MAX; st++)
        if (m->other[st])
            bprintf(&b, "cserve_http_requests_total{route=\"other\",method=\"other\",status=\"%d\"} %llu\n", st,
                    (unsigned long long)m->other[st]);
    bprintf(&b, "# HELP cserve_http_request_duration_seconds Time from request headers to the end of the response.\n"
                "# TYPE cserve_http_request_duration_seconds histogram\n");
    for (int i = 0; i < m->n_lat; i++) {
        char labels[CS_METRICS_MAX_LABEL + 16];
        snprintf(labels, sizeof labels, "route=\"%s\"", m->lat[i].route);
        render_hist(&b, "cserve_http_request_duration_seconds", labels, &m->lat[i].h);
    }
    bprintf(&b, "# HELP cserve_time_to_first_token_seconds Time from admission to the first generated token.\n"
                "# TYPE cserve_time_to_first_token_seconds histogram\n");
    render_hist(&b, "cserve_time_to_first_token_seconds", "", &m->ttft);
    bprintf(&b,
            "# HELP cserve_prompt_tokens_total Prompt tokens of finished generation requests.\n"
            "# TYPE cserve_prompt_tokens_total counter\ncserve_prompt_tokens_total %llu\n"
            "# HELP cserve_generation_tokens_total Tokens generated.\n"
            "# TYPE cserve_generation_tokens_total counter\ncserve_generation_tokens_total %llu\n",
            (unsigned long long)m->prompt_tokens, (unsigned long long)m->gen_tokens);
    pthread_mutex_unlock(&m->mu);
    gauge(&b, "cserve_requests_in_flight", "Generation requests accepted and not finished.",
          (double)cs_metrics_inflight(m));
    if (g) {
        gauge(&b, "cserve_ready", "1 when the server accepts generation requests.", g->ready);
        gauge(&b, "cserve_scheduler_queue_depth", "Requests waiting for a batch slot.", g->queued);
        gauge(&b, "cserve_scheduler_running", "Sequences in the running batch.", g->running);
        gauge(&b, "cserve_scheduler_max_running", "Batch slots (max_ongoing_requests).", g->max_running);
        gauge(&b, "cserve_scheduler_max_queued", "Queue capacity (max_queued_requests).", g->max_queued);
        gauge(&b, "cserve_batch_size", "Sequences in the last engine step.", g->batch_size);
        bprintf(&b, "# HELP cserve_engine_steps_total Batched forward steps.\n# TYPE cserve_engine_steps_total counter\n"
                    "cserve_engine_steps_total %llu\n",
                (unsigned long long)g->steps);
        if (g->kv_capacity) {
            gauge(&b, "cserve_kv_cache_tokens", "Tokens held in the KV cache.", (double)g->kv_tokens);
            gauge(&b, "cserve_kv_cache_capacity_tokens", "Tokens the KV cache pool can hold.", (double)g->kv_capacity);
            gauge(&b, "cserve_kv_cache_bytes", "Memory the KV cache pool holds now (blocks in use or kept for reuse).",
                  (double)g->kv_bytes);
            bprintf(&b, "# HELP cserve_scheduler_preemptions_total Sequences preempted (KV memory or fair share) "
                        "and computed again later.\n# TYPE cserve_scheduler_preemptions_total counter\n"
                        "cserve_scheduler_preemptions_total %llu\n",
                    (unsigned long long)g->preemptions);
        }
        if (g->model_name) render_vllm(&b, g);
    }
    render_process(&b);
    if (b.oom) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.n;
    return 0;
}
