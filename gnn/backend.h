/*
 * backend.h - the private interface between the public API (api.c) and a compute backend
 * (CPU reference in et_cpu.c, CUDA in backend_cuda.c), a struct of function pointers in the
 * style of ggml's ggml_backend_i. Not installed; no CUDA types.
 *
 * Contract, for every backend:
 *  - create() gets the validated model description (borrowed: it outlives the state) and the
 *    options (never NULL, already defaulted). On success it sets *state and returns DS4SCI_OK;
 *    on failure it leaves *state NULL (or frees what it made), writes a NUL-terminated message
 *    into err (err_len >= 1 bytes; never NULL) and returns the status (DS4SCI_ERR_DEVICE,
 *    DS4SCI_ERR_NOMEM, DS4SCI_ERR_UNSUPPORTED, ...).
 *  - compute() gets a system that api.c has already validated (counts >= 0, required arrays
 *    present, CSR monotone, indices in range and != i, finite positions, every z in the
 *    model's element list, no pair closer than 1e-4), an exchange that is never NULL (api.c
 *    wraps the built-in ghost_owner exchange), and a result whose requested arrays
 *    (non-NULL pointers) have the sizes documented in ds4sci.h. It fills energy and virial
 *    always and every non-NULL array (overwriting, not adding); result->energy excludes the
 *    model's energy shift (et_desc.mean). Ghost rows of forces / atom_virial hold the
 *    contributions on the ghost copies (not folded).
 *    Exchange sequence: every backend makes exactly these calls, in this order, whatever
 *    n_local and n_ghost are (0 included), so LAMMPS's collective communication stays
 *    matched between processes and between backends (the row layout inside a width is the
 *    backend's own business):
 *      forward(width F)                         layer-0 input x (after the neighbour embedding)
 *      forward(width 4F)  for l = 1 .. L-1      layer-l input (x, vec), before layer l
 *      reverse(width 4F)  for l = L-1 .. 1      gradient of layer-l input, after its backward
 *      reverse(width F)   if neighbor_embedding  gradient of the layer-0 x, for the neighbour
 *                                               embedding backward
 *    After a reverse the backend zeroes (ignores) the ghost rows itself: the exchange may
 *    leave them as they were. A non-zero return from a callback gives DS4SCI_ERR_EXCHANGE.
 *    Errors write err as for create().
 *  - destroy(NULL) is a no-op.
 *  - A state is used by one thread at a time.
 *  - Device memory (optional: NULL where the backend's rows are not on a GPU, as for the CPU
 *    backend; api.c then answers DS4SCI_ERR_UNSUPPORTED): ipc_export, ipc_open, ipc_close and
 *    copy implement ds4sci_ipc_export / _open / _close and ds4sci_device_copy on arguments
 *    that api.c has checked (pointers non-NULL, n >= 0, every copy with bytes > 0 has dst and
 *    src). They may be called from inside a wire plan's move() during compute(), on the same
 *    thread and the same state (re-entrant): they must then leave compute's state alone (no
 *    workspace growth, no profile marks, nothing queued that compute would wait for or that
 *    would outlive the call) and only touch what the caller named. Errors write err as for
 *    create().
 */
#ifndef DS4SCI_BACKEND_H
#define DS4SCI_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ds4sci.h"
#include "et_desc.h"

typedef struct ds4sci_backend_i {
    const char *name;     /* "cpu", "cuda" */
    ds4sci_device device; /* DS4SCI_DEVICE_CPU or DS4SCI_DEVICE_CUDA (never AUTO) */

    ds4sci_status (*create)(const et_desc *desc, const ds4sci_options *options, void **state,
                            char *err, size_t err_len);
    ds4sci_status (*compute)(void *state, const ds4sci_system *system,
                             const ds4sci_exchange *exchange, ds4sci_result *result, char *err,
                             size_t err_len);
    void (*destroy)(void *state);

    /* device memory for a wire plan's move with device buffers (see above); NULL: none */
    ds4sci_status (*ipc_export)(void *state, const void *ptr, ds4sci_ipc_handle *handle, char *err,
                                size_t err_len);
    ds4sci_status (*ipc_open)(void *state, const ds4sci_ipc_handle *handle, void **base, char *err,
                              size_t err_len);
    ds4sci_status (*ipc_close)(void *state, void *base, char *err, size_t err_len);
    ds4sci_status (*copy)(void *state, const ds4sci_copy *copies, int32_t n, char *err,
                          size_t err_len);

    /* 1: compute() checks the candidates itself (indices in [0, n_total) and != i, no pair
       closer than DS4SCI_MIN_PAIR_DIST; the CUDA backend on the GPU, DS4SCI_CUDA_DEVICE_CHECKS)
       and fails with DS4SCI_ERR_INPUT and ds4sci_check_receiver's message, so api.c skips
       that loop; NULL or 0: api.c checks (the contract above) */
    int (*checks_pairs)(void *state);

    /* ds4sci_ctx_same_neighbors, for the next compute() only (api.c calls it before every
       compute, with 0 unless the caller promised and the counts match); NULL: ignored */
    void (*same_neighbors)(void *state, int same);
} ds4sci_backend_i;

/* The float64 OpenMP reference (et_cpu.c). */
extern const ds4sci_backend_i ds4sci_backend_cpu;

#ifdef DS4SCI_HAVE_CUDA
/* The fused CUDA backend (backend_cuda.c). */
extern const ds4sci_backend_i ds4sci_backend_cuda;
/* 1 if a CUDA device is usable (driver present, at least one device), else 0. */
int ds4sci_backend_cuda_available(void);
int ds4sci_backend_cuda_device_count(void);
#endif

/*
 * For tests and benchmarks without a model file (api.c): a context over a bare description
 * (borrowed: it must outlive the context); every z in [0, desc->max_z) is accepted and
 * energy_shift is desc->mean. Otherwise as ds4sci_ctx_create.
 */
ds4sci_status ds4sci_ctx_create_desc(const et_desc *desc, const ds4sci_options *options,
                                     ds4sci_ctx **ctx, char *err, size_t err_len);

/*
 * 1 if `exchange` is api.c's built-in single-process exchange (driven by
 * system->ghost_owner). A backend may then refresh and fold ghosts itself (e.g. without
 * leaving the GPU) instead of calling it, provided the results are the same.
 */
int ds4sci_exchange_is_builtin(const ds4sci_exchange *exchange);

/*
 * With partial owners (system->ghost_owner together with a caller exchange, ds4sci.h), api.c
 * passes the backend its own exchange, which runs the caller's callbacks for the ghosts of
 * other processes and copies / folds the periodic images itself (on the host). For that
 * exchange this returns the caller's, so that a backend may handle the images itself (e.g. on
 * the GPU) and call the caller's callbacks directly, with the same results; else NULL.
 */
const ds4sci_exchange *ds4sci_exchange_partial_user(const ds4sci_exchange *exchange);

/* api.c's check of the candidates of owned atom i (indices, overlapping atoms), its message
   into err (DS4SCI_ERR_INPUT), or DS4SCI_OK: for a backend that checks on the device and
   names the first bad receiver it found. */
ds4sci_status ds4sci_check_receiver(const ds4sci_system *sys, int64_t i, char *err,
                                    size_t err_len);

/* The backend state of a context (for backend introspection in tests, e.g. et_cpu.h). */
void *ds4sci_ctx_backend_state(const ds4sci_ctx *ctx);

#endif /* DS4SCI_BACKEND_H */
