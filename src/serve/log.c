/* cs_log: see log.h. */
#include "serve/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/utf8.h"

void cs_log_ts(char *out, size_t cap) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000L) % 1000);
}

void cs_log_json(json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(obj);
    if (!s) return;
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return;
    }
    line[n] = '\n';
    fwrite(line, 1, n + 1, stderr);
    free(line);
}

void cs_log(const char *level, const char *fmt, ...) {
    char msg[CS_LOG_MAX_MSG + 1], ts[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t ml;
    char *clean = cs_utf8_repair(msg, strlen(msg), &ml);
    cs_log_ts(ts, sizeof ts);
    cs_log_json(json_pack("{s:s, s:s, s:s%}", "ts", ts, "level", level, "msg", clean ? clean : "", clean ? ml : 0));
    free(clean);
}

/* ------------------------------------------------------------ the ring */

struct cs_logring {
    pthread_mutex_t mu;
    cs_logrec *recs;
    size_t cap, head, n; /* head: the oldest */
    uint64_t seq;
};

int cs_logring_create(cs_logring **out, size_t cap) {
    *out = NULL;
    cs_logring *g = calloc(1, sizeof *g);
    if (!g) return -1;
    g->cap = cap ? cap : CS_LOGRING_MAX;
    g->recs = calloc(g->cap, sizeof *g->recs);
    if (!g->recs) {
        free(g);
        return -1;
    }
    pthread_mutex_init(&g->mu, NULL);
    *out = g;
    return 0;
}

void cs_logring_free(cs_logring *g) {
    if (!g) return;
    pthread_mutex_destroy(&g->mu);
    free(g->recs);
    free(g);
}

void cs_logring_add(cs_logring *g, const cs_logrec *rec) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    cs_logrec *dst;
    if (g->n < g->cap) {
        dst = &g->recs[(g->head + g->n) % g->cap];
        g->n++;
    } else {
        dst = &g->recs[g->head];
        g->head = (g->head + 1) % g->cap;
    }
    *dst = *rec;
    dst->seq = ++g->seq;
    pthread_mutex_unlock(&g->mu);
}

int cs_logring_status_match(const char *pat, int status) {
    if (!pat || !*pat) return 1;
    if (!strcmp(pat, "err")) return status >= 400;
    if (strlen(pat) == 3 && pat[0] >= '1' && pat[0] <= '9' && (pat[1] == 'x' || pat[1] == 'X') &&
        (pat[2] == 'x' || pat[2] == 'X'))
        return status / 100 == pat[0] - '0';
    char *end = NULL;
    const long v = strtol(pat, &end, 10);
    return end && end != pat && !*end && v == status;
}

static int rec_match(const cs_logrec *r, const cs_logring_filter *f) {
    if (!f) return 1;
    if (r->seq <= f->after) return 0;
    if (f->app && f->app[0] && strcmp(r->app, f->app) != 0) return 0;
    if (!cs_logring_status_match(f->status, r->status)) return 0;
    return !f->path || !f->path[0] || strstr(r->path, f->path) != NULL;
}

size_t cs_logring_query(cs_logring *g, const cs_logring_filter *f, cs_logrec *out, size_t cap, uint64_t *last_seq) {
    size_t k = 0;
    if (last_seq) *last_seq = 0;
    if (!g) return 0;
    pthread_mutex_lock(&g->mu);
    for (size_t i = g->n; i-- > 0 && k < cap;) {
        const cs_logrec *r = &g->recs[(g->head + i) % g->cap];
        if (rec_match(r, f)) out[k++] = *r;
    }
    if (last_seq) *last_seq = g->seq;
    pthread_mutex_unlock(&g->mu);
    return k;
}
