/*
 * backend_cuda.c - the CUDA backend: gnn/backend.h's interface on top of the kernels library
 * (kernels/ds4sci_kernels.h). Compiled into the core only when DS4SCI_HAVE_CUDA is defined.
 *
 * Ghost refresh: api.c always passes an exchange (its built-in single-process exchange wraps
 * system->ghost_owner). When that exchange is the built-in one, ghosts are gathered from their
 * owners and folded back on the GPU, without leaving it; otherwise the caller's exchange is
 * called with host arrays, in the sequence of backend.h. The built-in one is recognised by
 * api.c's ds4sci_exchange_is_builtin. With partial owners (ds4sci.h) api.c's wrapper is replaced
 * by the caller's exchange: the periodic images are gathered and folded on the GPU, the
 * caller's callbacks move only the other processes' ghosts.
 */
#ifdef DS4SCI_HAVE_CUDA

#include <stdio.h>

#include "backend.h"
#include "../kernels/ds4sci_kernels.h"

int ds4sci_backend_cuda_available(void)
{
    return ds4sci_cuda_device_count() > 0;
}

int ds4sci_backend_cuda_device_count(void)
{
    int n = ds4sci_cuda_device_count();
    return n > 0 ? n : 0;
}

static ds4sci_status cuda_create(const et_desc *desc, const ds4sci_options *options, void **state,
                                 char *err, size_t err_len)
{
    ds4sci_cuda_et *et = NULL;
    ds4sci_status st = ds4sci_cuda_et_create(desc, options->device_id, &et, err, err_len);
    *state = st == DS4SCI_OK ? et : NULL;
    return st;
}

static ds4sci_status cuda_compute(void *state, const ds4sci_system *system,
                                  const ds4sci_exchange *exchange, ds4sci_result *result,
                                  char *err, size_t err_len)
{
    int builtin = ds4sci_exchange_is_builtin(exchange) &&
                  (system->n_ghost == 0 || system->ghost_owner != NULL);
    /* partial owners: the images on the GPU, the caller's callbacks for the rest */
    const ds4sci_exchange *user = ds4sci_exchange_partial_user(exchange);
    if (user)
        exchange = user;
    ds4sci_cuda_et *et = (ds4sci_cuda_et *)state;
    ds4sci_status st =
        ds4sci_cuda_et_compute(et, system, exchange, builtin, result, err, err_len);
    const long long bad = st == DS4SCI_ERR_INPUT ? ds4sci_cuda_et_bad_receiver(et) : -1;
    if (bad >= 0 && ds4sci_check_receiver(system, bad, err, err_len) == DS4SCI_OK)
        /* flagged on the GPU, clean on the host (a distance at the threshold, rounded
           differently): still refused, naming the atom */
        snprintf(err, err_len, "atom %lld: a neighbour closer than %g (or a bad index) found by "
                 "the GPU's input check", bad, DS4SCI_MIN_PAIR_DIST);
    return st;
}

static int cuda_checks_pairs(void *state)
{
    return ds4sci_cuda_et_checks_pairs((const ds4sci_cuda_et *)state);
}

static void cuda_destroy(void *state)
{
    ds4sci_cuda_et_free((ds4sci_cuda_et *)state);
}

/* Device memory for a wire plan's move with device buffers (backend.h: may run inside move()
   during cuda_compute; the kernels library keeps off the compute's state) */
static ds4sci_status cuda_ipc_export(void *state, const void *ptr, ds4sci_ipc_handle *handle,
                                     char *err, size_t err_len)
{
    return ds4sci_cuda_et_ipc_export((ds4sci_cuda_et *)state, ptr, handle, err, err_len);
}

static ds4sci_status cuda_ipc_open(void *state, const ds4sci_ipc_handle *handle, void **base,
                                   char *err, size_t err_len)
{
    return ds4sci_cuda_et_ipc_open((ds4sci_cuda_et *)state, handle, base, err, err_len);
}

static ds4sci_status cuda_ipc_close(void *state, void *base, char *err, size_t err_len)
{
    return ds4sci_cuda_et_ipc_close((ds4sci_cuda_et *)state, base, err, err_len);
}

static ds4sci_status cuda_copy(void *state, const ds4sci_copy *copies, int32_t n, char *err,
                               size_t err_len)
{
    return ds4sci_cuda_et_copy((ds4sci_cuda_et *)state, copies, n, err, err_len);
}

static void cuda_same_neighbors(void *state, int same)
{
    ds4sci_cuda_et_same_neighbors((ds4sci_cuda_et *)state, same);
}

const ds4sci_backend_i ds4sci_backend_cuda = {
    "cuda", DS4SCI_DEVICE_CUDA, cuda_create, cuda_compute, cuda_destroy,
    cuda_ipc_export, cuda_ipc_open, cuda_ipc_close, cuda_copy, cuda_checks_pairs,
    cuda_same_neighbors,
};

#endif /* DS4SCI_HAVE_CUDA */
