/* cs_log: the server's log, one JSON object per line on stderr.
 *
 *   {"ts":"2025-01-31T12:00:00.123Z","level":"info","msg":"listening on 0.0.0.0:8000"}
 *
 * Each line is written with one fwrite of the whole line, so lines from
 * different threads never interleave. Text is made valid UTF-8 (invalid bytes
 * become U+FFFD) so every line parses as JSON.
 *
 * Threads: every function may be called from any thread. Nothing is kept
 * between calls; an allocation failure drops the line. */
#ifndef CS_LOG_H
#define CS_LOG_H

#include <jansson.h>
#include <stddef.h>

#define CS_LOG_MAX_MSG 1023 /* bytes of a cs_log message (longer ones are cut) */

/* Writes {"ts", "level", "msg"}; level: "debug", "info", "warn", "error". */
void cs_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes obj (a JSON object the caller built, e.g. an access-log record) as
 * one line. Takes the reference to obj; NULL writes nothing. */
void cs_log_json(json_t *obj);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" (cap >= 25). */
void cs_log_ts(char *out, size_t cap);

#endif
