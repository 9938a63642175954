/* cs_log: the server's log, one JSON object per line on stderr.
 *
 *   {"ts":"2025-01-31T12:00:00.123Z","level":"info","msg":"listening on 0.0.0.0:8000"}
 *
 * Each line is written with one fwrite of the whole line, so lines from
 * different threads never interleave. Text is made valid UTF-8 (invalid bytes
 * become U+FFFD) so every line parses as JSON.
 *
 * Threads: every function may be called from any thread. Nothing is kept
 * between calls; an allocation failure drops the line.
 *
 * cs_logring: the recent access-log records in memory (a bounded ring,
 * allocated once), for the dashboard's log panel: written by the HTTP
 * threads as requests end, read by the control loop. Kept whether or not the
 * access log is written to stderr. Thread-safe (one mutex). */
#ifndef CS_LOG_H
#define CS_LOG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CS_LOG_MAX_MSG 1023 /* bytes of a cs_log message (longer ones are cut) */

/* Writes {"ts", "level", "msg"}; level: "debug", "info", "warn", "error". */
void cs_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes obj (a JSON object the caller built, e.g. an access-log record) as
 * one line. Takes the reference to obj; NULL writes nothing. */
void cs_log_json(json_t *obj);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" (cap >= 25). */
void cs_log_ts(char *out, size_t cap);

#define CS_LOGRING_MAX 1000     /* records the ring keeps by default */
#define CS_LOGRING_PATH 256     /* bytes of a path kept (longer ones are cut) */

typedef struct cs_logrec {
    uint64_t seq;               /* 1, 2, ... in the order records were added */
    double ts;                  /* wall clock (s) when the request ended */
    int status;                 /* 499: the client left first */
    double latency_ms;
    char method[16], path[CS_LOGRING_PATH], app[128], replica[16], request_id[136];
} cs_logrec;

typedef struct cs_logring cs_logring;

/* cap records (0: CS_LOGRING_MAX). */
int cs_logring_create(cs_logring **out, size_t cap);
void cs_logring_free(cs_logring *g); /* NULL is a no-op */

/* Copies rec in (its seq is assigned here), dropping the oldest when full. */
void cs_logring_add(cs_logring *g, const cs_logrec *rec);

/* Which records a query wants: NULL or "" fields match everything. status:
 * "404" (exact), "4xx" (a class) or "err" (400 and above); path: a substring. */
typedef struct cs_logring_filter {
    const char *app, *status, *path;
    uint64_t after;             /* only records with seq > after */
} cs_logring_filter;

/* Whether status matches the pattern above (pure). */
int cs_logring_status_match(const char *pattern, int status);

/* Copies up to cap matching records into out, newest first; returns how
 * many. *last_seq (may be NULL) gets the newest seq in the ring. */
size_t cs_logring_query(cs_logring *g, const cs_logring_filter *f, cs_logrec *out, size_t cap, uint64_t *last_seq);

#endif
