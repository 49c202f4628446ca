/*
 * ds4sci_kernels.h - plain C entry points of the CUDA ET backend (library ds4sci_kernels).
 * gnn/backend_cuda.c adapts them to the backend interface of gnn/backend.h. No CUDA types.
 *
 * A ds4sci_cuda_et holds the model's weights on one GPU (fp32, uploaded once at create), a
 * CUDA stream, a cuBLAS handle and a workspace that grows geometrically with the system and is
 * reused between calls. Every call validates its arguments and returns a status; messages go
 * to err (NUL-terminated, err_len bytes, err may be NULL).
 *
 * Profiling (opt-in): with the environment variable DS4SCI_CUDA_PROFILE set to a file name at
 * create time, every compute records CUDA events between its stages, and free appends to that
 * file one line per stage with the mean milliseconds per call, plus the workspace bytes and the
 * peak device memory in use. Nothing is recorded otherwise.
 */
#ifndef DS4SCI_KERNELS_H
#define DS4SCI_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "ds4sci.h"
#include "et_desc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4sci_cuda_et ds4sci_cuda_et;

/* Number of usable CUDA devices (0 when there is no driver or no device). */
int ds4sci_cuda_device_count(void);

/*
 * Upload a validated model description to device `device_id`. DS4SCI_ERR_UNSUPPORTED for
 * shapes the kernels do not take (hidden_channels must be 16, 32, 64, 128 or 256, F/H a
 * power-of-two multiple of max(1, F/32), num_rbf <= 64); DS4SCI_ERR_DEVICE(_NOMEM) for CUDA
 * failures.
 */
ds4sci_status ds4sci_cuda_et_create(const et_desc *desc, int32_t device_id, ds4sci_cuda_et **out,
                                    char *err, size_t err_len);

void ds4sci_cuda_et_free(ds4sci_cuda_et *et);

/*
 * Energy, forces and virials as ds4sci_compute documents them, for a system that the caller
 * has validated (see gnn/backend.h). Ghost features are refreshed through `exchange` with host
 * arrays ([n_total][width] doubles; widths F and 4F, the sequence of gnn/backend.h), unless
 * `builtin_ghosts` is non-zero: then system->ghost_owner drives the refresh and the fold on
 * the GPU and `exchange` is not called. With `builtin_ghosts` zero and system->ghost_owner set
 * (partial owners, ds4sci.h), ghosts with an owner >= 0 are refreshed and folded on the GPU and
 * the exchange moves only the rows of the ghosts with -1.
 */
ds4sci_status ds4sci_cuda_et_compute(ds4sci_cuda_et *et, const ds4sci_system *system,
                                     const ds4sci_exchange *exchange, int builtin_ghosts,
                                     ds4sci_result *result, char *err, size_t err_len);

/* Device bytes held by the workspace and weights of `et`. */
size_t ds4sci_cuda_et_device_bytes(const ds4sci_cuda_et *et);

/* ds4sci_ctx_same_neighbors: the next compute may keep its copy of the candidate list
   (with DS4SCI_CUDA_RESIDENT_NBR=1; api.c has checked the counts). */
void ds4sci_cuda_et_same_neighbors(ds4sci_cuda_et *et, int same);

/* 1 if this context checks the candidates on the GPU (DS4SCI_CUDA_DEVICE_CHECKS=1); after a
   compute that failed with DS4SCI_ERR_INPUT and an empty message, the owned atom whose
   candidates it flagged (the lowest), else -1. */
int ds4sci_cuda_et_checks_pairs(const ds4sci_cuda_et *et);
long long ds4sci_cuda_et_bad_receiver(const ds4sci_cuda_et *et);

/*
 * Device memory for a wire plan's move with device buffers (ds4sci.h, ds4sci_ipc_export ...;
 * gnn/backend.h: each may be called from inside move() during ds4sci_cuda_et_compute, on the
 * same thread, and leaves the compute's state alone). All run on et's device.
 *  - ipc_export: the CUDA IPC handle of the allocation of et's workspace that holds ptr, and
 *    ptr's offset in it; DS4SCI_ERR_ARG when ptr is in none (not device memory of et).
 *  - ipc_open: another process's allocation mapped into et's device (peer access enabled
 *    lazily); *base is its start (handle->offset not applied).
 *  - ipc_close: unmaps a base from ipc_open.
 *  - copy: the n copies in order on et's stream (cudaMemcpyDefault: device, peer or host
 *    memory, each pointer valid in this process), then waits for them.
 * CUDA failures give DS4SCI_ERR_DEVICE with CUDA's reason; the CUDA error state is cleared.
 */
ds4sci_status ds4sci_cuda_et_ipc_export(ds4sci_cuda_et *et, const void *ptr,
                                        ds4sci_ipc_handle *handle, char *err, size_t err_len);
ds4sci_status ds4sci_cuda_et_ipc_open(ds4sci_cuda_et *et, const ds4sci_ipc_handle *handle,
                                      void **base, char *err, size_t err_len);
ds4sci_status ds4sci_cuda_et_ipc_close(ds4sci_cuda_et *et, void *base, char *err,
                                       size_t err_len);
ds4sci_status ds4sci_cuda_et_copy(ds4sci_cuda_et *et, const ds4sci_copy *copies, int32_t n,
                                  char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* DS4SCI_KERNELS_H */
