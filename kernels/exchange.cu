/*
 * exchange.cu - listed feature rows for a caller's ghost exchange: the send-rows hint
 * (ds4sci_exchange.send_rows: only the owned rows that other processes need travel between
 * device and host) and the partial owners' remote ghost rows. Row layout as et_pack: x (F
 * values) then vec (3F), as doubles, or as floats for the packed exchange (forward rows, and
 * reverse rows where the caller offers reverse_f32).
 */
#include "et_cuda.cuh"

/* One thread per (k, column j < w), w = F (vec NULL) or 4F: out[k] = row rows[k] of
   (x[, vec]). */
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

/* The same threads: row rows[k] of (x[, vec]) = in[k] (ADD: += in[k]; rows distinct, no
   atomics). */
template <class T, int ADD>
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
    *d = ADD ? *d + (float)in[i] : (float)in[i];
}

static unsigned blocks_for(int n, int F, const float *vec, long long *total)
{
    *total = (long long)n * (vec ? 4 * F : F);
    return (unsigned)((*total + 255) / 256);
}

template <class T>
static cudaError_t pack_rows(cudaStream_t s, const int *rows, int n, int F, const float *x,
                             const float *vec, T *out)
{
    long long total;
    const unsigned b = blocks_for(n, F, vec, &total);
    if (total > 0)
        k_pack_rows<T><<<b, 256, 0, s>>>(rows, n, F, x, vec, out);
    return cudaGetLastError();
}

template <class T, int ADD>
static cudaError_t unpack_rows(cudaStream_t s, const int *rows, int n, int F, const T *in,
                               float *x, float *vec)
{
    long long total;
    const unsigned b = blocks_for(n, F, vec, &total);
    if (total > 0)
        k_unpack_rows<T, ADD><<<b, 256, 0, s>>>(rows, n, F, in, x, vec);
    return cudaGetLastError();
}

/* out[k] = row rows[k] of (x[, vec]), k < n, as doubles or floats. */
extern "C" cudaError_t et_pack_rows(cudaStream_t s, const int *rows, int n, int F, const float *x,
                                    const float *vec, double *out)
{
    return pack_rows<double>(s, rows, n, F, x, vec, out);
}

extern "C" cudaError_t et_pack_rows_f32(cudaStream_t s, const int *rows, int n, int F,
                                        const float *x, const float *vec, float *out)
{
    return pack_rows<float>(s, rows, n, F, x, vec, out);
}

/* Row rows[k] of (x[, vec]) = in[k], k < n (the partial owners' remote ghost rows). */
extern "C" cudaError_t et_unpack_rows(cudaStream_t s, const int *rows, int n, int F,
                                      const double *in, float *x, float *vec)
{
    return unpack_rows<double, 0>(s, rows, n, F, in, x, vec);
}

extern "C" cudaError_t et_unpack_rows_f32(cudaStream_t s, const int *rows, int n, int F,
                                          const float *in, float *x, float *vec)
{
    return unpack_rows<float, 0>(s, rows, n, F, in, x, vec);
}

/* Row rows[k] of (x[, vec]) += in[k], k < n; rows must be distinct (no atomics). */
extern "C" cudaError_t et_unpack_rows_add(cudaStream_t s, const int *rows, int n, int F,
                                          const double *in, float *x, float *vec)
{
    return unpack_rows<double, 1>(s, rows, n, F, in, x, vec);
}

extern "C" cudaError_t et_unpack_rows_add_f32(cudaStream_t s, const int *rows, int n, int F,
                                              const float *in, float *x, float *vec)
{
    return unpack_rows<float, 1>(s, rows, n, F, in, x, vec);
}

/*
 * The wire plan's reverse (DS4SCI_CUDA_WIRE): the rows returned for this process's send entries,
 * in[q] (floats, plan order), added into their owned rows in a fixed order. key / entry: the
 * send entries sorted by row (stable: entries ascending within a row, i.e. peer by peer and in
 * wire order, as the CPU path adds them). Thread (p, column j) of the first entry of a row's run
 * adds the run; the others return. No atomics.
 */
static __global__ void k_add_sorted(int n, int F, const int *__restrict__ key,
                                    const int *__restrict__ entry, const float *__restrict__ in,
                                    float *__restrict__ x, float *__restrict__ vec)
{
    const int w = vec ? 4 * F : F;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * w)
        return;
    const int p = (int)(i / w), j = (int)(i % w), r = key[p];
    if (p > 0 && key[p - 1] == r)
        return;
    float *const d = j < F ? &x[(size_t)r * F + j] : &vec[(size_t)r * 3 * F + (j - F)];
    float acc = *d;
    for (int q = p; q < n && key[q] == r; q++)
        acc += in[(size_t)entry[q] * w + j];
    *d = acc;
}

extern "C" cudaError_t et_add_sorted(cudaStream_t s, int n, int F, const int *key,
                                     const int *entry, const float *in, float *x, float *vec)
{
    long long total;
    const unsigned b = blocks_for(n, F, vec, &total);
    if (total > 0)
        k_add_sorted<<<b, 256, 0, s>>>(n, F, key, entry, in, x, vec);
    return cudaGetLastError();
}
