/*
 * safetensors.c - strict safetensors reader; see safetensors.h for the layout and the checks.
 */
#include "safetensors.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes per element of every dtype the safetensors format defines; 0 for an unknown name. */
static int32_t dtype_size(const char *dtype) {
    static const struct {
        const char *name;
        int32_t size;
    } table[] = {{"BOOL", 1},    {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
                 {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},     {"BF16", 2},
                 {"I32", 4},     {"U32", 4}, {"F32", 4}, {"F64", 8},     {"I64", 8},
                 {"U64", 8},     {"C64", 8}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(dtype, table[i].name) == 0)
            return table[i].size;
    return 0;
}

/* A JSON number that is an exact non-negative integer not above 2^53 (doubles are exact). */
static int json_to_u53(const cJSON *item, int64_t *out) {
    if (!cJSON_IsNumber(item))
        return -1;
    double v = item->valuedouble;
    if (!(v >= 0.0 && v <= 9007199254740992.0))
        return -1;
    int64_t i = (int64_t)v;
    if ((double)i != v)
        return -1;
    *out = i;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int ds4sci_json_has_duplicate_key(const cJSON *obj, const char **dup) {
    size_t n = 0;
    for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next)
        n++;
    if (n < 2)
        return 0;
    const char **names = malloc(n * sizeof *names);
    if (!names) {
        *dup = "(out of memory while checking keys)";
        return 1;
    }
    size_t k = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        names[k++] = c->string ? c->string : "";
    qsort(names, n, sizeof *names, cmp_str_ptr);
    int found = 0;
    for (size_t i = 1; i < n && !found; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) {
            *dup = names[i];
            found = 1;
        }
    }
    free(names);
    return found;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const ds4sci_st_tensor *)a)->name, ((const ds4sci_st_tensor *)b)->name);
}

static int cmp_tensor_ptr_by_offset(const void *a, const void *b) {
    const ds4sci_st_tensor *x = *(const ds4sci_st_tensor *const *)a;
    const ds4sci_st_tensor *y = *(const ds4sci_st_tensor *const *)b;
    return (x->data > y->data) - (x->data < y->data);
}

void ds4sci_st_free(ds4sci_st_file *file) {
    if (!file)
        return;
    cJSON_Delete(file->header);
    free(file->tensors);
    memset(file, 0, sizeof *file);
}

/* One header entry -> *t. Returns DS4SCI_OK or a FORMAT error naming the tensor. */
static ds4sci_status parse_entry(const cJSON *entry, const unsigned char *data, uint64_t data_len,
                                 const char *fname, ds4sci_st_tensor *t, char *err,
                                 size_t err_len) {
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return ds4sci_fail(
            err, err_len, DS4SCI_ERR_FORMAT,
            "%s: tensor %s: header entry is not an object {dtype, shape, data_offsets}", fname,
            name);
    const char *dup = NULL;
    if (ds4sci_json_has_duplicate_key(entry, &dup))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT, "%s: tensor %s: key \"%s\" repeated",
                           fname, name, dup);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: \"dtype\" missing or not a string", fname, name);
    t->name = name;
    t->dtype = dtype->valuestring;
    t->dtype_size = dtype_size(t->dtype);
    if (t->dtype_size == 0)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: unknown dtype \"%.32s\" (not a safetensors dtype)",
                           fname, name, t->dtype);
    if (!cJSON_IsArray(shape))
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: \"shape\" missing or not an array", fname, name);
    int n_dim = cJSON_GetArraySize(shape);
    if (n_dim > DS4SCI_ST_MAX_NDIM)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: %d dimensions, at most %d supported", fname, name, n_dim,
                           DS4SCI_ST_MAX_NDIM);
    t->ndim = n_dim;
    /* numel * dtype_size must fit the data buffer: stop multiplying before it can overflow */
    int64_t numel = 1;
    int has_zero = 0, too_big = 0, d = 0;
    for (const cJSON *c = shape->child; c; c = c->next, d++) {
        int64_t v;
        if (json_to_u53(c, &v) != 0)
            return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                               "%s: tensor %s: shape[%d] is not a non-negative integer", fname,
                               name, d);
        t->shape[d] = v;
        if (v == 0)
            has_zero = 1;
        else if (!too_big && numel > (int64_t)(data_len / (uint64_t)v))
            too_big = 1;
        else if (!too_big)
            numel *= v;
    }
    if (has_zero)
        numel = 0;
    else if (too_big)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: shape has more elements than the %llu-byte data buffer",
                           fname, name, (unsigned long long)data_len);
    t->numel = numel;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: \"data_offsets\" missing or not [begin, end]", fname,
                           name);
    int64_t begin, end;
    if (json_to_u53(offs->child, &begin) != 0 || json_to_u53(offs->child->next, &end) != 0)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: data_offsets are not non-negative integers", fname,
                           name);
    if (begin > end || (uint64_t)end > data_len)
        return ds4sci_fail(
            err, err_len, DS4SCI_ERR_FORMAT,
            "%s: tensor %s: data_offsets [%lld, %lld] outside the data buffer of %llu "
            "bytes (file truncated?)",
            fname, name, (long long)begin, (long long)end, (unsigned long long)data_len);
    if (t->numel * t->dtype_size != end - begin)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: tensor %s: %lld elements of dtype %s need %lld bytes, data_offsets "
                           "[%lld, %lld] hold %lld",
                           fname, name, (long long)t->numel, t->dtype,
                           (long long)(t->numel * t->dtype_size), (long long)begin, (long long)end,
                           (long long)(end - begin));
    t->data = data + begin;
    t->used = 0;
    return DS4SCI_OK;
}

ds4sci_status ds4sci_st_parse(const unsigned char *buf, size_t size, const char *fname,
                              ds4sci_st_file *file, char *err, size_t err_len) {
    memset(file, 0, sizeof *file);
    if (!buf || size < 8)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: %zu bytes, too short for a safetensors file (8-byte header length "
                           "+ JSON header)",
                           fname, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > DS4SCI_ST_MAX_HEADER)
        return ds4sci_fail(
            err, err_len, DS4SCI_ERR_FORMAT,
            "%s: header length %llu bytes exceeds the limit of %u (not a safetensors "
            "file, or corrupted)",
            fname, (unsigned long long)hlen, DS4SCI_ST_MAX_HEADER);
    if (hlen < 2 || hlen > size - 8)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: header length %llu bytes, but the file has %zu bytes after the "
                           "8-byte length (truncated?)",
                           fname, (unsigned long long)hlen, size - 8);
    if (buf[8] != '{')
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: header does not start with '{' (not a safetensors file)", fname);

    /* cJSON needs a NUL-terminated string; the header may not contain a NUL itself. */
    char *text = malloc((size_t)hlen + 1);
    if (!text)
        return ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM,
                           "%s: out of memory for a %llu-byte header", fname,
                           (unsigned long long)hlen);
    memcpy(text, buf + 8, (size_t)hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *header = cJSON_ParseWithOpts(text, &end, 0);
    if (!header) {
        size_t at = end ? (size_t)(end - text) : 0;
        free(text);
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                           "%s: header is not valid JSON (error near byte %zu of %llu)", fname, at,
                           (unsigned long long)hlen);
    }
    for (const char *p = end; p < text + hlen; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            size_t at = (size_t)(p - text);
            free(text);
            cJSON_Delete(header);
            return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                               "%s: header has bytes after the JSON object (at byte %zu of %llu)",
                               fname, at, (unsigned long long)hlen);
        }
    }
    free(text);
    if (!cJSON_IsObject(header)) {
        cJSON_Delete(header);
        return ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT, "%s: header is not a JSON object",
                           fname);
    }
    file->header = header;

    const char *dup = NULL;
    if (ds4sci_json_has_duplicate_key(header, &dup)) {
        ds4sci_status failed = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                           "%s: header key \"%s\" repeated", fname, dup);
        ds4sci_st_free(file);
        return failed;
    }

    const unsigned char *data = buf + 8 + hlen;
    uint64_t data_len = (uint64_t)size - 8 - hlen;
    int32_t n = 0;
    for (const cJSON *c = header->child; c; c = c->next)
        if (strcmp(c->string, "__metadata__") != 0)
            n++;
    if (n > 0) {
        file->tensors = calloc((size_t)n, sizeof *file->tensors);
        if (!file->tensors) {
            ds4sci_status failed = ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM,
                                               "%s: out of memory for %d tensors", fname, n);
            ds4sci_st_free(file);
            return failed;
        }
    }
    ds4sci_status status = DS4SCI_OK;
    for (const cJSON *c = header->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(c)) {
                ds4sci_status failed = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                                   "%s: __metadata__ is not a JSON object", fname);
                ds4sci_st_free(file);
                return failed;
            }
            for (const cJSON *m = c->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    ds4sci_status failed =
                        ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                    "%s: __metadata__ value \"%s\" is not a string (safetensors "
                                    "metadata maps strings to strings)",
                                    fname, m->string);
                    ds4sci_st_free(file);
                    return failed;
                }
            }
            if (ds4sci_json_has_duplicate_key(c, &dup)) {
                ds4sci_status failed =
                    ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                "%s: __metadata__ key \"%s\" repeated", fname, dup);
                ds4sci_st_free(file);
                return failed;
            }
            file->metadata = c;
            continue;
        }
        status =
            parse_entry(c, data, data_len, fname, &file->tensors[file->n_tensors], err, err_len);
        if (status != DS4SCI_OK) {
            ds4sci_st_free(file);
            return status;
        }
        file->n_tensors++;
    }

    /* No two tensors may share bytes (zero-size tensors share nothing). */
    if (file->n_tensors > 1) {
        ds4sci_st_tensor **by_off = malloc((size_t)file->n_tensors * sizeof *by_off);
        if (!by_off) {
            ds4sci_status failed =
                ds4sci_fail(err, err_len, DS4SCI_ERR_NOMEM, "%s: out of memory", fname);
            ds4sci_st_free(file);
            return failed;
        }
        for (int32_t i = 0; i < file->n_tensors; i++)
            by_off[i] = &file->tensors[i];
        qsort(by_off, (size_t)file->n_tensors, sizeof *by_off, cmp_tensor_ptr_by_offset);
        const ds4sci_st_tensor *prev = NULL;
        for (int32_t i = 0; i < file->n_tensors; i++) {
            const ds4sci_st_tensor *t = by_off[i];
            int64_t nbytes = t->numel * t->dtype_size;
            if (nbytes == 0)
                continue;
            if (prev && t->data < prev->data + prev->numel * prev->dtype_size) {
                status = ds4sci_fail(err, err_len, DS4SCI_ERR_FORMAT,
                                     "%s: tensors %s and %s overlap in the data buffer", fname,
                                     prev->name, t->name);
                break;
            }
            prev = t;
        }
        free(by_off);
        if (status != DS4SCI_OK) {
            ds4sci_st_free(file);
            return status;
        }
        qsort(file->tensors, (size_t)file->n_tensors, sizeof *file->tensors, cmp_tensor_name);
    }
    return DS4SCI_OK;
}

ds4sci_st_tensor *ds4sci_st_find(const ds4sci_st_file *file, const char *name) {
    int32_t lo = 0, hi = file->n_tensors - 1;
    while (lo <= hi) {
        int32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(file->tensors[mid].name, name);
        if (c == 0)
            return &file->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

int ds4sci_st_to_f64(const ds4sci_st_tensor *t, double *dst) {
    const unsigned char *p = t->data;
    if (strcmp(t->dtype, "F32") == 0) {
        for (int64_t i = 0; i < t->numel; i++, p += 4) {
            uint32_t u =
                (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            float f;
            memcpy(&f, &u, sizeof f);
            dst[i] = (double)f;
        }
        return 0;
    }
    if (strcmp(t->dtype, "F64") == 0) {
        for (int64_t i = 0; i < t->numel; i++, p += 8) {
            uint64_t u = 0;
            for (int b = 7; b >= 0; b--)
                u = (u << 8) | p[b];
            memcpy(&dst[i], &u, sizeof u);
        }
        return 0;
    }
    return -1;
}
