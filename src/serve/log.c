/* cs_log: see log.h. */
#include "serve/log.h"

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
