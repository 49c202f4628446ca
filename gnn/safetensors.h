/*
 * safetensors.h - a strict, bounds-checked reader of the safetensors container (gnn/ only).
 *
 * Layout (https://github.com/huggingface/safetensors): 8-byte little-endian unsigned header
 * length N, N bytes of UTF-8 JSON (an object, possibly padded with trailing spaces), then the
 * data buffer. Each header entry other than "__metadata__" is
 *   "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data buffer. "__metadata__", if present, is an
 * object of string values.
 *
 * The reader never trusts the file: the header length is capped before anything is allocated,
 * every offset is checked against the buffer, byte counts must equal numel * dtype size, tensors
 * may not overlap, names and keys may not repeat. It does not copy tensor data: st_tensor.data
 * points into the caller's buffer, which must outlive the st_file.
 */
#ifndef DS4SCI_SAFETENSORS_H
#define DS4SCI_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "ds4sci.h"

/* Largest header accepted, checked before allocating: real model headers are a few tens of KB. */
#define DS4SCI_ST_MAX_HEADER (100u * 1024u * 1024u)
/* Most dimensions a tensor may have. */
#define DS4SCI_ST_MAX_NDIM 8

typedef struct ds4sci_st_tensor {
    const char *name;   /* key in the header (owned by st_file.header) */
    const char *dtype;  /* "F32", "F64", "BF16", ... as written */
    int32_t dtype_size; /* bytes per element */
    int32_t ndim;       /* 0 for a scalar */
    int64_t shape[DS4SCI_ST_MAX_NDIM];
    int64_t numel;             /* product of shape (1 for ndim 0) */
    const unsigned char *data; /* [numel * dtype_size] bytes inside the caller's buffer */
    int32_t used;              /* scratch flag for the caller (0 after parsing) */
} ds4sci_st_tensor;

typedef struct ds4sci_st_file {
    cJSON *header;             /* the parsed header (owned) */
    const cJSON *metadata;     /* "__metadata__" object, or NULL if absent */
    ds4sci_st_tensor *tensors; /* [n_tensors], sorted by name */
    int32_t n_tensors;
} ds4sci_st_file;

/*
 * Parse `size` bytes at `buf`. `fname` is used as the prefix of messages. On success fills
 * *file (free with ds4sci_st_free); on failure *file is zeroed, err holds the reason and the
 * status is DS4SCI_ERR_FORMAT (or DS4SCI_ERR_NOMEM).
 */
ds4sci_status ds4sci_st_parse(const unsigned char *buf, size_t size, const char *fname,
                              ds4sci_st_file *file, char *err, size_t err_len);
void ds4sci_st_free(ds4sci_st_file *file);

/* The tensor called `name`, or NULL. Binary search (tensors are sorted by name). */
ds4sci_st_tensor *ds4sci_st_find(const ds4sci_st_file *file, const char *name);

/* Convert an F32 or F64 tensor's little-endian data to host doubles: dst[numel]. Returns 0,
 * or -1 if the dtype is neither F32 nor F64. */
int ds4sci_st_to_f64(const ds4sci_st_tensor *t, double *dst);

/* 0 if `obj` has no repeated key, else 1 and *dup is one of the repeated keys. JSON allows
 * repeated keys; cJSON keeps them all; a strict reader must refuse them. */
int ds4sci_json_has_duplicate_key(const cJSON *obj, const char **dup);

#endif /* DS4SCI_SAFETENSORS_H */
