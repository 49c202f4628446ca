/*
 * exchange.cu - packing of listed feature rows for a caller's ghost exchange with a send-rows
 * hint (ds4sci_exchange.send_rows): only the owned rows that other processes need travel
 * between device and host. Row layout as et_pack: x (F values) then vec (3F), as doubles (or
 * as floats for the packed forward exchange).
 */
#include "et_cuda.cuh"

template <class T>
static __global__ void k_pack_rows(const int *__restrict__ rows, int n, int F,
                                   const float *__restrict__ x, const float *__restrict__ vec,
                                   T *__restrict__ out)
{
    const int w = vec ? 4 * F : F;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * w)
        return;
    const long long a = rows[i / w];
    const int j = (int)(i % w);
    out[i] = j < F ? (T)x[a * F + j] : (T)vec[a * 3 * F + (j - F)];
}

template <class T>
static __global__ void k_unpack_rows_add(const int *__restrict__ rows, int n, int F,
                                         const T *__restrict__ in, float *__restrict__ x,
                                         float *__restrict__ vec)
{
    const int w = vec ? 4 * F : F;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * w)
        return;
    const long long a = rows[i / w];
    const int j = (int)(i % w);
    float *d = j < F ? &x[a * F + j] : &vec[a * 3 * F + (j - F)];
    *d += (float)in[i];
}

/* Row rows[k] of (x[, vec]) = in[k] (doubles, or floats for the packed forward exchange). */
template <class T>
static __global__ void k_unpack_rows(const int *__restrict__ rows, int n, int F,
                                     const T *__restrict__ in, float *__restrict__ x,
                                     float *__restrict__ vec)
{
    const int w = vec ? 4 * F : F;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * w)
        return;
    const long long a = rows[i / w];
    const int j = (int)(i % w);
    float *d = j < F ? &x[a * F + j] : &vec[a * 3 * F + (j - F)];
    *d = (float)in[i];
}

static unsigned blocks_for(long long total) { return (unsigned)((total + 255) / 256); }

/* out[k] = row rows[k] of (x[, vec]), k < n. */
extern "C" cudaError_t et_pack_rows(cudaStream_t s, const int *rows, int n, int F, const float *x,
                                    const float *vec, double *out)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_pack_rows<double><<<blocks_for(total), 256, 0, s>>>(rows, n, F, x, vec, out);
    return cudaGetLastError();
}

/* The same as floats (the packed forward exchange, DS4SCI_CUDA_XCH_F32). */
extern "C" cudaError_t et_pack_rows_f32(cudaStream_t s, const int *rows, int n, int F,
                                        const float *x, const float *vec, float *out)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_pack_rows<float><<<blocks_for(total), 256, 0, s>>>(rows, n, F, x, vec, out);
    return cudaGetLastError();
}

/* Row rows[k] of (x[, vec]) = in[k], k < n (the partial owners' remote ghost rows). */
extern "C" cudaError_t et_unpack_rows(cudaStream_t s, const int *rows, int n, int F,
                                      const double *in, float *x, float *vec)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack_rows<double><<<blocks_for(total), 256, 0, s>>>(rows, n, F, in, x, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t et_unpack_rows_f32(cudaStream_t s, const int *rows, int n, int F,
                                          const float *in, float *x, float *vec)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack_rows<float><<<blocks_for(total), 256, 0, s>>>(rows, n, F, in, x, vec);
    return cudaGetLastError();
}

/* Row rows[k] of (x[, vec]) += in[k], k < n; rows must be distinct (no atomics). */
extern "C" cudaError_t et_unpack_rows_add(cudaStream_t s, const int *rows, int n, int F,
                                          const double *in, float *x, float *vec)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack_rows_add<double><<<blocks_for(total), 256, 0, s>>>(rows, n, F, in, x, vec);
    return cudaGetLastError();
}

/* The same from float rows (the caller's reverse_f32 with partial owners). */
extern "C" cudaError_t et_unpack_rows_add_f32(cudaStream_t s, const int *rows, int n, int F,
                                              const float *in, float *x, float *vec)
{
    const long long total = (long long)n * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack_rows_add<float><<<blocks_for(total), 256, 0, s>>>(rows, n, F, in, x, vec);
    return cudaGetLastError();
}
