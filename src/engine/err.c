#include "engine/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cs_err_set(cs_err *e, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int cs_err_prefix(cs_err *e, const char *fmt, ...) {
    if (!e) return -1;
    char pre[CS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    size_t np = strlen(pre), nm = strnlen(e->msg, CS_ERR_MAX - 1);
    if (np + 2 >= CS_ERR_MAX) np = CS_ERR_MAX - 3;
    if (np + 2 + nm >= CS_ERR_MAX) nm = CS_ERR_MAX - 1 - np - 2;
    memmove(e->msg + np + 2, e->msg, nm);
    memcpy(e->msg, pre, np);
    e->msg[np] = ':';
    e->msg[np + 1] = ' ';
    e->msg[np + 2 + nm] = '\0';
    return -1;
}
