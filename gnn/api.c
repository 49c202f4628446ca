/*
 * api.c - the public API around the backends: status names, options, contexts (backend
 * choice), input validation and the built-in single-process ghost exchange.
 *
 * Every backend gets a validated system (see backend.h), so the checks live here once.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "ds4sci.h"
#include "err.h"
#include "model_internal.h"

struct ds4sci_ctx {
    const ds4sci_model *model; /* NULL for contexts made from a bare description */
    const et_desc *desc;
    const ds4sci_backend_i *backend;
    void *state;
    unsigned char *z_ok; /* [max_z] 1 if z is an element of the model */
    char elements[256];  /* "H C N O" for messages */
    int n_threads;       /* OpenMP threads for validation (options.n_threads or default) */
    int same_nbr;        /* ds4sci_ctx_same_neighbors for the next compute */
    int have_last;       /* last_* hold the counts of the last successful compute */
    int64_t last_nl, last_ng, last_nc;
    char err[1024];
};

const char *ds4sci_status_name(ds4sci_status status) {
    switch (status) {
    case DS4SCI_OK:
        return "DS4SCI_OK";
    case DS4SCI_ERR_ARG:
        return "DS4SCI_ERR_ARG";
    case DS4SCI_ERR_IO:
        return "DS4SCI_ERR_IO";
    case DS4SCI_ERR_FORMAT:
        return "DS4SCI_ERR_FORMAT";
    case DS4SCI_ERR_UNSUPPORTED:
        return "DS4SCI_ERR_UNSUPPORTED";
    case DS4SCI_ERR_NOMEM:
        return "DS4SCI_ERR_NOMEM";
    case DS4SCI_ERR_INPUT:
        return "DS4SCI_ERR_INPUT";
    case DS4SCI_ERR_EXCHANGE:
        return "DS4SCI_ERR_EXCHANGE";
    case DS4SCI_ERR_DEVICE:
        return "DS4SCI_ERR_DEVICE";
    case DS4SCI_ERR_DEVICE_NOMEM:
        return "DS4SCI_ERR_DEVICE_NOMEM";
    }
    return "DS4SCI_ERR_UNKNOWN";
}

void ds4sci_options_init(ds4sci_options *options) {
    if (!options)
        return;
    memset(options, 0, sizeof(*options));
    options->device = DS4SCI_DEVICE_AUTO;
    options->device_id = 0;
    options->n_threads = 0;
}

int ds4sci_cuda_available(void) {
#ifdef DS4SCI_HAVE_CUDA
    return ds4sci_backend_cuda_available();
#else
    return 0;
#endif
}

int ds4sci_gpu_count(void) {
#ifdef DS4SCI_HAVE_CUDA
    return ds4sci_backend_cuda_device_count();
#else
    return 0;
#endif
}

static ds4sci_status pick_backend(const ds4sci_options *opt, const ds4sci_backend_i **be, char *err,
                                  size_t err_len) {
    switch (opt->device) {
    case DS4SCI_DEVICE_CPU:
        *be = &ds4sci_backend_cpu;
        return DS4SCI_OK;
    case DS4SCI_DEVICE_AUTO:
#ifdef DS4SCI_HAVE_CUDA
        *be = ds4sci_backend_cuda_available() ? &ds4sci_backend_cuda : &ds4sci_backend_cpu;
#else
        *be = &ds4sci_backend_cpu;
#endif
        return DS4SCI_OK;
    case DS4SCI_DEVICE_CUDA:
#ifdef DS4SCI_HAVE_CUDA
        if (!ds4sci_backend_cuda_available()) {
            ds4sci_errf(err, err_len, "device CUDA requested: no usable CUDA device");
            return DS4SCI_ERR_DEVICE;
        }
        *be = &ds4sci_backend_cuda;
        return DS4SCI_OK;
#else
        ds4sci_errf(err, err_len, "device CUDA requested: ds4sci was built without CUDA");
        return DS4SCI_ERR_DEVICE;
#endif
    }
    ds4sci_errf(err, err_len, "options.device = %d: expected DS4SCI_DEVICE_AUTO, _CPU or _CUDA",
                (int)opt->device);
    return DS4SCI_ERR_ARG;
}

/* Shared by the public create and the description-only create (model NULL: every z in
   [0, max_z) is accepted). */
static ds4sci_status ctx_create(const ds4sci_model *model, const et_desc *desc,
                                const ds4sci_options *options, ds4sci_ctx **out, char *err,
                                size_t err_len) {
    ds4sci_options opt;
    if (options)
        opt = *options;
    else
        ds4sci_options_init(&opt);
    if (opt.n_threads < 0) {
        ds4sci_errf(err, err_len, "options.n_threads = %d: expected >= 0", (int)opt.n_threads);
        return DS4SCI_ERR_ARG;
    }
    const ds4sci_backend_i *be = NULL;
    ds4sci_status s = pick_backend(&opt, &be, err, err_len);
    if (s != DS4SCI_OK)
        return s;

    ds4sci_ctx *ctx = (ds4sci_ctx *)calloc(1, sizeof(*ctx));
    unsigned char *z_ok = (unsigned char *)calloc((size_t)(desc->max_z > 0 ? desc->max_z : 1), 1);
    if (!ctx || !z_ok) {
        free(ctx);
        free(z_ok);
        ds4sci_errf(err, err_len, "cannot allocate a context");
        return DS4SCI_ERR_NOMEM;
    }
    ctx->model = model;
    ctx->desc = desc;
    ctx->n_threads = opt.n_threads > 0 ? opt.n_threads : 1;
#ifdef _OPENMP
    if (opt.n_threads <= 0)
        ctx->n_threads = omp_get_max_threads();
#endif
    ctx->backend = be;
    ctx->z_ok = z_ok;
    if (model) {
        const ds4sci_model_info *info = ds4sci_model_get_info(model);
        size_t len = 0;
        for (int32_t i = 0; i < info->n_elements; i++) {
            int32_t z = info->element_z[i];
            if (z >= 0 && z < desc->max_z)
                z_ok[z] = 1;
            if (len + 8 < sizeof(ctx->elements))
                len += (size_t)snprintf(ctx->elements + len, sizeof(ctx->elements) - len, "%s%d",
                                        i ? " " : "", (int)z);
        }
    } else {
        memset(z_ok, 1, (size_t)desc->max_z);
        snprintf(ctx->elements, sizeof(ctx->elements), "0 .. %d", (int)desc->max_z - 1);
    }

    char berr[512] = "";
    s = be->create(desc, &opt, &ctx->state, berr, sizeof(berr));
    if (s != DS4SCI_OK) {
        ds4sci_errf(err, err_len, "%s backend: %s", be->name, berr);
        free(z_ok);
        free(ctx);
        return s;
    }
    *out = ctx;
    return DS4SCI_OK;
}

ds4sci_status ds4sci_ctx_create(const ds4sci_model *model, const ds4sci_options *options,
                                ds4sci_ctx **ctx, char *err, size_t err_len) {
    if (err && err_len)
        err[0] = '\0';
    if (!ctx) {
        ds4sci_errf(err, err_len, "ds4sci_ctx_create: ctx is NULL");
        return DS4SCI_ERR_ARG;
    }
    *ctx = NULL;
    if (!model) {
        ds4sci_errf(err, err_len, "ds4sci_ctx_create: model is NULL");
        return DS4SCI_ERR_ARG;
    }
    return ctx_create(model, ds4sci_model_desc(model), options, ctx, err, err_len);
}

ds4sci_status ds4sci_ctx_create_desc(const et_desc *desc, const ds4sci_options *options,
                                     ds4sci_ctx **ctx, char *err, size_t err_len) {
    if (err && err_len)
        err[0] = '\0';
    if (!ctx || !desc) {
        ds4sci_errf(err, err_len, "ds4sci_ctx_create_desc: %s is NULL", ctx ? "desc" : "ctx");
        return DS4SCI_ERR_ARG;
    }
    *ctx = NULL;
    if (desc->F <= 0 || desc->H <= 0 || desc->F % desc->H != 0 || desc->D != desc->F / desc->H ||
        desc->K <= 0 || desc->L <= 0 || desc->max_z <= 0 || !desc->layers) {
        ds4sci_errf(
            err, err_len,
            "ds4sci_ctx_create_desc: inconsistent description (F %d, H %d, D %d, K %d, L %d, "
            "max_z %d)",
            (int)desc->F, (int)desc->H, (int)desc->D, (int)desc->K, (int)desc->L, (int)desc->max_z);
        return DS4SCI_ERR_ARG;
    }
    return ctx_create(NULL, desc, options, ctx, err, err_len);
}

void ds4sci_ctx_free(ds4sci_ctx *ctx) {
    if (!ctx)
        return;
    ctx->backend->destroy(ctx->state);
    free(ctx->z_ok);
    free(ctx);
}

ds4sci_device ds4sci_ctx_device(const ds4sci_ctx *ctx) {
    return ctx ? ctx->backend->device : DS4SCI_DEVICE_CPU;
}

const char *ds4sci_ctx_backend_name(const ds4sci_ctx *ctx) {
    return ctx ? ctx->backend->name : "";
}

const char *ds4sci_ctx_error(const ds4sci_ctx *ctx) {
    return ctx ? ctx->err : "";
}

void *ds4sci_ctx_backend_state(const ds4sci_ctx *ctx) {
    return ctx ? ctx->state : NULL;
}

/* ---- validation --------------------------------------------------------------------------- */

static ds4sci_status fail(ds4sci_ctx *ctx, ds4sci_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof(ctx->err), fmt, ap);
    va_end(ap);
    return s;
}

/* The first ghost whose owner is outside [lowest, n_local), or n_ghost if none. */
static int64_t first_bad_owner(const int32_t *owner, int64_t ng, int64_t nl, int32_t lowest) {
    for (int64_t g = 0; g < ng; g++)
        if (owner[g] < lowest || owner[g] >= nl)
            return g;
    return ng;
}

/* The first ghost that names an owned atom (ghost_owner >= 0) with another atomic number, or
   ng: a copy is the same atom (the CUDA backend folds periodic images into their owners, so
   an image's element must be its owner's). */
static int64_t first_bad_copy(const ds4sci_system *sys) {
    const int64_t nl = sys->n_local, ng = sys->n_ghost;
    if (!sys->ghost_owner)
        return ng;
    for (int64_t g = 0; g < ng; g++) {
        const int32_t o = sys->ghost_owner[g];
        if (o >= 0 && o < nl && sys->z[nl + g] != sys->z[o])
            return g;
    }
    return ng;
}

/* A wire plan (ds4sci.h): partial owners, a transport, owned send rows, and recv rows that
   are exactly the ghosts with owner -1, each once over all peers. */
static ds4sci_status validate_plan(ds4sci_ctx *ctx, const ds4sci_system *sys,
                                   const ds4sci_wire_plan *pl) {
    const int32_t nl = sys->n_local, ng = sys->n_ghost;
    if (!sys->ghost_owner && ng > 0)
        return fail(ctx, DS4SCI_ERR_ARG, "exchange: a wire plan needs partial owners "
                                         "(system->ghost_owner)");
    if (!pl->move || pl->n_peers < 0 || (pl->n_peers > 0 && !pl->peers))
        return fail(ctx, DS4SCI_ERR_ARG, "exchange plan: %s",
                    !pl->move ? "move is NULL" : "n_peers < 0 or peers NULL");
    if (pl->device_buffers != 0 && pl->device_buffers != 1)
        return fail(ctx, DS4SCI_ERR_ARG,
                    "exchange plan: device_buffers = %d, expected 0 (move takes host pointers) "
                    "or 1 (also device pointers)",
                    (int)pl->device_buffers);
    unsigned char *seen = (unsigned char *)calloc((size_t)(ng > 0 ? ng : 1), 1);
    if (!seen)
        return fail(ctx, DS4SCI_ERR_NOMEM, "exchange plan: cannot check it (out of memory)");
    ds4sci_status st = DS4SCI_OK;
    for (int32_t p = 0; p < pl->n_peers && st == DS4SCI_OK; p++) {
        const ds4sci_wire_peer *q = &pl->peers[p];
        if (q->n_send < 0 || q->n_recv < 0 || (q->n_send > 0 && !q->send_rows) ||
            (q->n_recv > 0 && !q->recv_rows)) {
            st = fail(ctx, DS4SCI_ERR_ARG, "exchange plan: peer %d: n_send %d, n_recv %d with "
                      "a NULL or negative list", (int)p, (int)q->n_send, (int)q->n_recv);
            break;
        }
        for (int32_t k = 0; k < q->n_send; k++)
            if (q->send_rows[k] < 0 || q->send_rows[k] >= nl) {
                st = fail(ctx, DS4SCI_ERR_INPUT, "exchange plan: peer %d: send_rows[%d] = %d, "
                          "expected an owned atom in [0, %d)", (int)p, (int)k,
                          (int)q->send_rows[k], (int)nl);
                break;
            }
        for (int32_t k = 0; k < q->n_recv && st == DS4SCI_OK; k++) {
            const int32_t r = q->recv_rows[k];
            const int64_t g = (int64_t)r - nl;
            if (g < 0 || g >= ng || sys->ghost_owner[g] != -1 || seen[g])
                st = fail(ctx, DS4SCI_ERR_INPUT, "exchange plan: peer %d: recv_rows[%d] = %d, "
                          "expected a ghost in [%d, %d) with ghost_owner -1, once over all "
                          "peers", (int)p, (int)k, (int)r, (int)nl, (int)(nl + ng));
            else
                seen[g] = 1;
        }
    }
    for (int32_t g = 0; g < ng && st == DS4SCI_OK; g++)
        if (sys->ghost_owner[g] == -1 && !seen[g])
            st = fail(ctx, DS4SCI_ERR_INPUT, "exchange plan: ghost %d (atom %d) has "
                      "ghost_owner -1 but no peer sends it", (int)g, (int)(nl + g));
    free(seen);
    return st;
}

ds4sci_status ds4sci_check_receiver(const ds4sci_system *sys, int64_t i, char *err,
                                    size_t err_len) {
    const int64_t n = (int64_t)sys->n_local + sys->n_ghost;
    const double min2 = DS4SCI_MIN_PAIR_DIST * DS4SCI_MIN_PAIR_DIST;
    const double *pi = sys->pos + 3 * i;
    for (int64_t k = sys->nbr_offset[i]; k < sys->nbr_offset[i + 1]; k++) {
        const int32_t j = sys->nbr_index[k];
        if (j < 0 || j >= n || j == i) {
            snprintf(err, err_len,
                     "atom %lld: neighbour %lld is atom %d, expected an atom in [0, %lld) other "
                     "than itself",
                     (long long)i, (long long)(k - sys->nbr_offset[i]), (int)j, (long long)n);
            return DS4SCI_ERR_INPUT;
        }
        const double *pj = sys->pos + 3 * (int64_t)j;
        const double dx = pj[0] - pi[0], dy = pj[1] - pi[1], dz = pj[2] - pi[2];
        const double d2 = dx * dx + dy * dy + dz * dz;
        if (d2 < min2) {
            snprintf(err, err_len, "atoms %lld and %d overlap: distance %g < %g", (long long)i,
                     (int)j, sqrt(d2), DS4SCI_MIN_PAIR_DIST);
            return DS4SCI_ERR_INPUT;
        }
    }
    return DS4SCI_OK;
}

static ds4sci_status validate(ds4sci_ctx *ctx, const ds4sci_system *sys,
                              const ds4sci_exchange *exchange) {
    const int64_t nl = sys->n_local, ng = sys->n_ghost, n = nl + ng;
    int64_t g_bad;
    if (nl < 0 || ng < 0)
        return fail(ctx, DS4SCI_ERR_ARG, "system: n_local = %lld, n_ghost = %lld: expected >= 0",
                    (long long)nl, (long long)ng);
    if (n > INT32_MAX)
        return fail(ctx, DS4SCI_ERR_ARG, "system: n_local + n_ghost = %lld exceeds INT32_MAX",
                    (long long)n);
    if (n > 0 && (!sys->pos || !sys->z))
        return fail(ctx, DS4SCI_ERR_ARG, "system: %s is NULL for %lld atoms",
                    sys->pos ? "z" : "pos", (long long)n);
    if (!sys->nbr_offset)
        return fail(ctx, DS4SCI_ERR_ARG,
                    "system: nbr_offset is NULL (needs n_local + 1 = %lld "
                    "entries)",
                    (long long)(nl + 1));
    if (sys->nbr_offset[0] != 0)
        return fail(ctx, DS4SCI_ERR_INPUT, "system: nbr_offset[0] = %lld, expected 0",
                    (long long)sys->nbr_offset[0]);
    for (int64_t i = 0; i < nl; i++)
        if (sys->nbr_offset[i + 1] < sys->nbr_offset[i])
            return fail(ctx, DS4SCI_ERR_INPUT,
                        "system: nbr_offset decreases at atom %lld (%lld then %lld)", (long long)i,
                        (long long)sys->nbr_offset[i], (long long)sys->nbr_offset[i + 1]);
    if (sys->nbr_offset[nl] > 0 && !sys->nbr_index)
        return fail(ctx, DS4SCI_ERR_ARG, "system: nbr_index is NULL for %lld neighbours",
                    (long long)sys->nbr_offset[nl]);
    if (!exchange) {
        if (ng > 0 && !sys->ghost_owner)
            return fail(ctx, DS4SCI_ERR_ARG,
                        "system: ghost_owner is NULL for %lld ghosts and no "
                        "exchange was given",
                        (long long)ng);
        if ((g_bad = first_bad_owner(sys->ghost_owner, ng, nl, 0)) < ng)
            return fail(ctx, DS4SCI_ERR_INPUT,
                        "ghost %lld (atom %lld): ghost_owner = %d, expected an owned atom in "
                        "[0, %lld)",
                        (long long)g_bad, (long long)(nl + g_bad), (int)sys->ghost_owner[g_bad],
                        (long long)nl);
    } else if (!exchange->forward || !exchange->reverse) {
        return fail(ctx, DS4SCI_ERR_ARG, "exchange: %s callback is NULL",
                    exchange->forward ? "reverse" : "forward");
    } else if (sys->ghost_owner && (g_bad = first_bad_owner(sys->ghost_owner, ng, nl, -1)) < ng) {
        return fail(ctx, DS4SCI_ERR_INPUT,
                    "ghost %lld (atom %lld): ghost_owner = %d, expected an owned atom in [0, %lld) "
                    "or -1 (another process's atom, for the exchange)",
                    (long long)g_bad, (long long)(nl + g_bad), (int)sys->ghost_owner[g_bad],
                    (long long)nl);
    }
    if ((g_bad = first_bad_copy(sys)) < ng)
        return fail(ctx, DS4SCI_ERR_INPUT,
                    "ghost %lld (atom %lld) is a copy of owned atom %d (ghost_owner) but has "
                    "z = %d, the owned atom z = %d",
                    (long long)g_bad, (long long)(nl + g_bad), (int)sys->ghost_owner[g_bad],
                    (int)sys->z[nl + g_bad], (int)sys->z[sys->ghost_owner[g_bad]]);
    if (exchange &&
        (exchange->n_send_rows < 0 || (exchange->n_send_rows > 0 && !exchange->send_rows))) {
        return fail(ctx, DS4SCI_ERR_ARG, "exchange: n_send_rows = %d with send_rows %s",
                    (int)exchange->n_send_rows, exchange->send_rows ? "set" : "NULL");
    } else if (exchange && exchange->n_send_rows > 0) {
        unsigned char *seen = (unsigned char *)calloc((size_t)nl, 1);
        if (!seen)
            return fail(ctx, DS4SCI_ERR_NOMEM, "exchange: cannot check send_rows (out of memory)");
        for (int32_t k = 0; k < exchange->n_send_rows; k++) {
            const int32_t r = exchange->send_rows[k];
            if (r < 0 || r >= nl || seen[r]) {
                free(seen);
                return fail(ctx, DS4SCI_ERR_INPUT,
                            "exchange: send_rows[%d] = %d, expected an owned atom in [0, %lld) "
                            "not listed before",
                            (int)k, (int)r, (long long)nl);
            }
            seen[r] = 1;
        }
        free(seen);
    }
    if (exchange && exchange->plan) {
        ds4sci_status ps = validate_plan(ctx, sys, exchange->plan);
        if (ps != DS4SCI_OK)
            return ps;
    }
    for (int64_t i = 0; i < n; i++) {
        const double *p = sys->pos + 3 * i;
        if (!isfinite(p[0]) || !isfinite(p[1]) || !isfinite(p[2]))
            return fail(ctx, DS4SCI_ERR_INPUT, "atom %lld: non-finite position (%g, %g, %g)",
                        (long long)i, p[0], p[1], p[2]);
        const int32_t z = sys->z[i];
        if (z < 0 || z >= ctx->desc->max_z || !ctx->z_ok[z])
            return fail(ctx, DS4SCI_ERR_INPUT,
                        "atom %lld: z = %d is not an element of the model (z in: %s)", (long long)i,
                        (int)z, ctx->elements);
    }
    /* Pairs: the costly check (every candidate), so in parallel to find the first bad
       receiver, then serially within it for the message (deterministic either way). A
       backend that checks them itself (on the GPU: checks_pairs) gets them unchecked here. */
    if (ctx->backend->checks_pairs && ctx->backend->checks_pairs(ctx->state))
        return DS4SCI_OK;
    const double min2 = DS4SCI_MIN_PAIR_DIST * DS4SCI_MIN_PAIR_DIST;
    int64_t first_bad = nl;
#pragma omp parallel for schedule(static) reduction(min : first_bad) num_threads(ctx->n_threads)
    for (int64_t i = 0; i < nl; i++) {
        const double *pi = sys->pos + 3 * i;
        for (int64_t k = sys->nbr_offset[i]; k < sys->nbr_offset[i + 1]; k++) {
            const int32_t j = sys->nbr_index[k];
            if (j < 0 || j >= n || j == i) {
                first_bad = i < first_bad ? i : first_bad;
                break;
            }
            const double *pj = sys->pos + 3 * (int64_t)j;
            const double dx = pj[0] - pi[0], dy = pj[1] - pi[1], dz = pj[2] - pi[2];
            if (dx * dx + dy * dy + dz * dz < min2) {
                first_bad = i < first_bad ? i : first_bad;
                break;
            }
        }
    }
    if (first_bad < nl)
        return ds4sci_check_receiver(sys, first_bad, ctx->err, sizeof(ctx->err));
    return DS4SCI_OK;
}

/* ---- built-in exchange -------------------------------------------------------------------- */

typedef struct builtin_exchange {
    int32_t n_local, n_ghost;
    const int32_t *owner; /* -1 (partial owners only): not this exchange's ghost */
} builtin_exchange;

static int builtin_forward(void *user, double *data, int32_t width) {
    const builtin_exchange *b = (const builtin_exchange *)user;
    for (int32_t g = 0; g < b->n_ghost; g++)
        if (b->owner[g] >= 0)
            memcpy(data + ((size_t)b->n_local + g) * width, data + (size_t)b->owner[g] * width,
                   sizeof(double) * (size_t)width);
    return 0;
}

static int builtin_reverse(void *user, double *data, int32_t width) {
    const builtin_exchange *b = (const builtin_exchange *)user;
    for (int32_t g = 0; g < b->n_ghost; g++) {
        if (b->owner[g] < 0)
            continue;
        const double *src = data + ((size_t)b->n_local + g) * width;
        double *dst = data + (size_t)b->owner[g] * width;
        for (int32_t k = 0; k < width; k++)
            dst[k] += src[k];
    }
    return 0;
}

int ds4sci_exchange_is_builtin(const ds4sci_exchange *exchange) {
    return exchange && exchange->forward == builtin_forward && exchange->reverse == builtin_reverse;
}

/* ---- partial owners: the caller's exchange for other processes' ghosts, the built-in one for
   this process's periodic images ------------------------------------------------------------ */

typedef struct partial_exchange {
    builtin_exchange images; /* owner >= 0: image of an owned atom; -1: the caller's */
    const ds4sci_exchange *user;
} partial_exchange;

/* The image rows the caller must not use: NaN, so that a callback reading or adding them
   shows in the results (ds4sci.h: their values are unspecified during the callbacks). */
static void poison_images(const builtin_exchange *b, double *data, int32_t width) {
    for (int32_t g = 0; g < b->n_ghost; g++)
        if (b->owner[g] >= 0)
            for (int32_t k = 0; k < width; k++)
                data[((size_t)b->n_local + g) * width + k] = NAN;
}

/* The other processes' rows through the wire plan (ds4sci.h): pack this process's rows in
   plan order, move, then set the ghost rows (forward) or add the returned rows into the owned
   rows, peer by peer and row by row (reverse: a fixed order). Returns move's result, or -1 when
   the buffers cannot be allocated. */
static int plan_exchange(const ds4sci_wire_plan *pl, double *data, int32_t width, int reverse) {
    const size_t w = (size_t)width;
    size_t n_send = 0, n_recv = 0;
    for (int32_t p = 0; p < pl->n_peers; p++) {
        n_send += (size_t)pl->peers[p].n_send;
        n_recv += (size_t)pl->peers[p].n_recv;
    }
    const size_t n_out = reverse ? n_recv : n_send, n_in = reverse ? n_send : n_recv;
    double *out = (double *)malloc((n_out > 0 ? n_out : 1) * w * sizeof(double));
    double *in = (double *)malloc((n_in > 0 ? n_in : 1) * w * sizeof(double));
    int rc = -1;
    if (out && in) {
        size_t k = 0;
        for (int32_t p = 0; p < pl->n_peers; p++) {
            const ds4sci_wire_peer *q = &pl->peers[p];
            const int32_t nr = reverse ? q->n_recv : q->n_send;
            const int32_t *rows = reverse ? q->recv_rows : q->send_rows;
            for (int32_t r = 0; r < nr; r++, k++)
                memcpy(out + k * w, data + (size_t)rows[r] * w, w * sizeof(double));
        }
        rc = pl->move(pl->user, out, in, w * sizeof(double), reverse, 0);
        k = 0;
        for (int32_t p = 0; p < pl->n_peers && rc == 0; p++) {
            const ds4sci_wire_peer *q = &pl->peers[p];
            const int32_t nr = reverse ? q->n_send : q->n_recv;
            const int32_t *rows = reverse ? q->send_rows : q->recv_rows;
            for (int32_t r = 0; r < nr; r++, k++) {
                double *row = data + (size_t)rows[r] * w;
                if (reverse)
                    for (size_t c = 0; c < w; c++)
                        row[c] += in[k * w + c];
                else
                    memcpy(row, in + k * w, w * sizeof(double));
            }
        }
    }
    free(out);
    free(in);
    return rc;
}

static int partial_forward(void *user, double *data, int32_t width) {
    partial_exchange *p = (partial_exchange *)user;
    poison_images(&p->images, data, width);
    const int rc = p->user->plan ? plan_exchange(p->user->plan, data, width, 0)
                                 : p->user->forward(p->user->user, data, width);
    builtin_forward(&p->images, data, width);
    return rc;
}

static int partial_reverse(void *user, double *data, int32_t width) {
    partial_exchange *p = (partial_exchange *)user;
    builtin_reverse(&p->images, data, width);
    poison_images(&p->images, data, width);
    return p->user->plan ? plan_exchange(p->user->plan, data, width, 1)
                         : p->user->reverse(p->user->user, data, width);
}

const ds4sci_exchange *ds4sci_exchange_partial_user(const ds4sci_exchange *exchange) {
    if (!exchange || exchange->forward != partial_forward || exchange->reverse != partial_reverse)
        return NULL;
    return ((const partial_exchange *)exchange->user)->user;
}

ds4sci_status ds4sci_compute(ds4sci_ctx *ctx, const ds4sci_system *system,
                             const ds4sci_exchange *exchange, ds4sci_result *result) {
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    /* the promise of ds4sci_ctx_same_neighbors holds for this call only, whatever its fate */
    const int same = ctx->same_nbr;
    ctx->same_nbr = 0;
    /* ... and refers to the last call only if that one succeeded: any call that fails (bad
       input included) leaves nothing to keep, so the next promise is refused */
    const int had_last = ctx->have_last;
    ctx->have_last = 0;
    if (!system || !result)
        return fail(ctx, DS4SCI_ERR_ARG, "ds4sci_compute: %s is NULL",
                    system ? "result" : "system");
    ds4sci_status s = validate(ctx, system, exchange);
    if (s != DS4SCI_OK)
        return s;
    builtin_exchange bi = {system->n_local, system->n_ghost, system->ghost_owner};
    ds4sci_exchange builtin = {builtin_forward, builtin_reverse, &bi, NULL, 0, NULL, NULL};
    partial_exchange pi = {bi, exchange};
    ds4sci_exchange partial = {partial_forward, partial_reverse, &pi,
                               exchange ? exchange->send_rows : NULL,
                               exchange ? exchange->n_send_rows : 0, NULL, NULL};
    /* a plan always through the wrapper: every process then calls move(), ghosts or not */
    const ds4sci_exchange *ex =
        !exchange ? &builtin
        : (system->ghost_owner && system->n_ghost > 0) || exchange->plan ? &partial
                                                                          : exchange;
    /* ... and only with the counts of the last successful call */
    const int64_t nc = system->nbr_offset[system->n_local];
    if (same && !(had_last && ctx->last_nl == system->n_local &&
                  ctx->last_ng == system->n_ghost && ctx->last_nc == nc))
        return fail(ctx, DS4SCI_ERR_ARG,
                    "ds4sci_ctx_same_neighbors: promised the previous call's neighbour list, "
                    "but n_local %d, n_ghost %d, %lld candidates differ from it (%s)",
                    (int)system->n_local, (int)system->n_ghost, (long long)nc,
                    had_last ? "the last call's counts" : "no previous call");
    if (ctx->backend->same_neighbors)
        ctx->backend->same_neighbors(ctx->state, same);
    char berr[sizeof(ctx->err) - 32] = "";
    s = ctx->backend->compute(ctx->state, system, ex, result, berr, sizeof(berr));
    if (s == DS4SCI_OK) {
        ctx->have_last = 1;
        ctx->last_nl = system->n_local;
        ctx->last_ng = system->n_ghost;
        ctx->last_nc = nc;
    }
    if (s == DS4SCI_ERR_EXCHANGE && ctx->err[0]) {
        /* ctx->err was cleared above, so a message there now is that of the last call on this
           context made from inside a callback (ds4sci_ipc_open in move(), ...), which failed:
           most likely why the callback did */
        char inner[sizeof(ctx->err)];
        memcpy(inner, ctx->err, sizeof(inner));
        return fail(ctx, s, "%s backend: %s (inside the exchange: %s)", ctx->backend->name, berr,
                    inner);
    }
    if (s != DS4SCI_OK)
        return fail(ctx, s, "%s backend: %s", ctx->backend->name, berr);
    return DS4SCI_OK;
}

ds4sci_status ds4sci_ctx_same_neighbors(ds4sci_ctx *ctx, int32_t same) {
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    if (same != 0 && same != 1)
        return fail(ctx, DS4SCI_ERR_ARG, "ds4sci_ctx_same_neighbors: same = %d, expected 0 or 1",
                    (int)same);
    ctx->same_nbr = same;
    return DS4SCI_OK;
}

/* ---- device memory for a wire plan's move (ds4sci.h) ---------------------------------------
   The arguments are checked here, the work is the backend's (backend.h: optional ops, which
   may run inside move() during compute(): these functions therefore only write ctx->err). */

/* DS4SCI_ERR_UNSUPPORTED naming the backend when it has no such op (the CPU backend). */
static ds4sci_status no_device_memory(ds4sci_ctx *ctx, const char *fn) {
    return fail(ctx, DS4SCI_ERR_UNSUPPORTED, "%s: the %s backend has no device memory", fn,
                ctx->backend->name);
}

/* A backend op's status, its message (if any) into ctx->err under the function's name. */
static ds4sci_status device_result(ds4sci_ctx *ctx, const char *fn, ds4sci_status s,
                                   const char *berr) {
    if (s != DS4SCI_OK)
        return fail(ctx, s, "%s: %s backend: %s", fn, ctx->backend->name, berr);
    return DS4SCI_OK;
}

ds4sci_status ds4sci_ipc_export(ds4sci_ctx *ctx, const void *device_ptr,
                                ds4sci_ipc_handle *handle) {
    static const char fn[] = "ds4sci_ipc_export";
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    if (!device_ptr || !handle)
        return fail(ctx, DS4SCI_ERR_ARG, "%s: %s is NULL", fn, handle ? "device_ptr" : "handle");
    if (!ctx->backend->ipc_export)
        return no_device_memory(ctx, fn);
    char berr[sizeof(ctx->err) - 64] = "";
    memset(handle, 0, sizeof(*handle));
    const ds4sci_status s =
        ctx->backend->ipc_export(ctx->state, device_ptr, handle, berr, sizeof(berr));
    return device_result(ctx, fn, s, berr);
}

ds4sci_status ds4sci_ipc_open(ds4sci_ctx *ctx, const ds4sci_ipc_handle *handle, void **base) {
    static const char fn[] = "ds4sci_ipc_open";
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    if (base)
        *base = NULL;
    if (!handle || !base)
        return fail(ctx, DS4SCI_ERR_ARG, "%s: %s is NULL", fn, handle ? "base" : "handle");
    if (!ctx->backend->ipc_open)
        return no_device_memory(ctx, fn);
    char berr[sizeof(ctx->err) - 64] = "";
    const ds4sci_status s = ctx->backend->ipc_open(ctx->state, handle, base, berr, sizeof(berr));
    return device_result(ctx, fn, s, berr);
}

ds4sci_status ds4sci_ipc_close(ds4sci_ctx *ctx, void *base) {
    static const char fn[] = "ds4sci_ipc_close";
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    if (!base)
        return fail(ctx, DS4SCI_ERR_ARG, "%s: base is NULL", fn);
    if (!ctx->backend->ipc_close)
        return no_device_memory(ctx, fn);
    char berr[sizeof(ctx->err) - 64] = "";
    const ds4sci_status s = ctx->backend->ipc_close(ctx->state, base, berr, sizeof(berr));
    return device_result(ctx, fn, s, berr);
}

ds4sci_status ds4sci_device_copy(ds4sci_ctx *ctx, const ds4sci_copy *copies, int32_t n) {
    static const char fn[] = "ds4sci_device_copy";
    if (!ctx)
        return DS4SCI_ERR_ARG;
    ctx->err[0] = '\0';
    if (n < 0 || (n > 0 && !copies))
        return fail(ctx, DS4SCI_ERR_ARG,
                    "%s: n = %d with copies %s: expected n >= 0 and copies set when n > 0", fn,
                    (int)n, copies ? "set" : "NULL");
    for (int32_t k = 0; k < n; k++)
        if (copies[k].bytes > 0 && (!copies[k].dst || !copies[k].src))
            return fail(ctx, DS4SCI_ERR_ARG, "%s: copies[%d].%s is NULL for %zu bytes", fn, (int)k,
                        copies[k].dst ? "src" : "dst", copies[k].bytes);
    if (!ctx->backend->copy)
        return no_device_memory(ctx, fn);
    if (n == 0)
        return DS4SCI_OK;
    char berr[sizeof(ctx->err) - 64] = "";
    const ds4sci_status s = ctx->backend->copy(ctx->state, copies, n, berr, sizeof(berr));
    return device_result(ctx, fn, s, berr);
}

void ds4sci_fold_ghosts(double *data, int32_t width, int32_t n_local, int32_t n_ghost,
                        const int32_t *ghost_owner) {
    if (!data || !ghost_owner || width <= 0 || n_local < 0 || n_ghost <= 0)
        return;
    for (int32_t g = 0; g < n_ghost; g++) {
        const int32_t o = ghost_owner[g];
        double *src = data + ((size_t)n_local + g) * width;
        if (o >= 0 && o < n_local) {
            double *dst = data + (size_t)o * width;
            for (int32_t k = 0; k < width; k++)
                dst[k] += src[k];
        }
        memset(src, 0, sizeof(double) * (size_t)width);
    }
}
