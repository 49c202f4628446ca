/* err.c - see err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

void ds4sci_errf(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

ds4sci_status ds4sci_fail(char *err, size_t err_len, ds4sci_status status, const char *fmt, ...) {
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return status;
}
