/*
 * err.h - the one formatter of error messages for gnn/ sources: every fallible call writes a
 * NUL-terminated message into the caller's (err, err_len) buffer; err NULL or err_len 0 means
 * "no message wanted".
 */
#ifndef DS4SCI_ERR_H
#define DS4SCI_ERR_H

#include <stddef.h>

#include "ds4sci.h"

/* Format the message into err. */
void ds4sci_errf(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Format the message into err and return status, for `return ds4sci_fail(...)`. */
ds4sci_status ds4sci_fail(char *err, size_t err_len, ds4sci_status status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* DS4SCI_ERR_H */
