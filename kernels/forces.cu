/*
 * forces.cu - from the accumulated edge gradients g_w = dE/dw_e (w_e = r_s - r_t) to forces
 * F_t += g_w, F_s -= g_w (ghost rows included, not folded), per-atom virial (each edge term
 * -w (x) g_w split half to each end) and the fp64 totals. No atomics: every atom walks its
 * receiver row and its sender edges (the transpose list, or the reverses of its row's edges
 * and its uncovered edges); totals reduce in a fixed order.
 */
#include "et_cuda.cuh"

#define RED_THREADS 256

/* Warp-wide fp64 sum (butterfly: the same order every call). */
static __device__ __forceinline__ double warp_sum_d(double x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Block-wide fp64 sum of NV values per thread into out[blockIdx.x * NV + k]. */
template <int NV>
static __device__ void block_sum(double (&v)[NV], double *out)
{
    __shared__ double s[RED_THREADS / 32][NV];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const double x = warp_sum_d(v[k]);
        if (lane == 0)
            s[warp][k] = x;
    }
    __syncthreads();
    if (threadIdx.x < NV) {
        double x = 0.0;
        for (int w = 0; w < RED_THREADS / 32; w++)
            x += s[w][threadIdx.x];
        out[blockIdx.x * NV + threadIdx.x] = x;
    }
}

/* One warp per atom: its lanes take every 32nd edge of each pass (one thread per atom walked
   ~106 edges with dependent loads: 26 us at 1,000 atoms, where 4 of 264 blocks had atoms;
   2.3 us now, docs/gpu.md v24). The per-atom sums are butterflies over the lanes; the totals
   (virial) stay per lane until block_sum. */
static __global__ void __launch_bounds__(RED_THREADS)
    k_forces(int nl, int n, const int *__restrict__ row_off, const int *__restrict__ tr_off,
             const int *__restrict__ tr_edge, const int *__restrict__ rev,
             const int *__restrict__ tr_off2, const int *__restrict__ tr_edge2,
             const float4 *__restrict__ geo, const float *__restrict__ gw,
             double *__restrict__ forces, double *__restrict__ atom_virial,
             double *__restrict__ part)
{
    const int lane = threadIdx.x & 31, wpb = RED_THREADS / 32;
    double v[6] = {0, 0, 0, 0, 0, 0};
    for (int a = blockIdx.x * wpb + (threadIdx.x >> 5); a < n; a += gridDim.x * wpb) {
        double f[3] = {0, 0, 0}, av[6] = {0, 0, 0, 0, 0, 0};
        /* pass 0: a receives (its row); a sends: pass 1 the transpose index, or without it
           (rev) pass 1 the reverses of a's row edges (every paired edge a sends is one: rev is
           an involution; the self-loop's dE/dw is 0) and pass 2 a's uncovered edges */
        for (int pass = 0; pass < 3; pass++) {
            int lo = 0, hi = 0;
            if (pass == 0 || (pass == 1 && !tr_edge)) {
                if (a < nl) {
                    lo = row_off[a];
                    hi = row_off[a + 1];
                }
            } else if (pass == 1) {
                lo = tr_off[a];
                hi = tr_off[a + 1];
            } else if (!tr_edge) {
                lo = tr_off2[a];
                hi = tr_off2[a + 1];
            }
            const double sign = pass == 0 ? 1.0 : -1.0;
            for (int i = lo + lane; i < hi; i += 32) {
                const int e = pass == 0 ? i
                              : pass == 2 ? tr_edge2[i]
                              : tr_edge   ? tr_edge[i]
                                          : rev[i];
                if (e < 0)
                    continue;
                const float4 w = geo[e];
                const float gx = gw[3 * (size_t)e], gy = gw[3 * (size_t)e + 1],
                            gz = gw[3 * (size_t)e + 2];
                f[0] += sign * gx;
                f[1] += sign * gy;
                f[2] += sign * gz;
                av[0] -= 0.5 * w.x * gx;
                av[1] -= 0.5 * w.y * gy;
                av[2] -= 0.5 * w.z * gz;
                av[3] -= 0.5 * w.x * gy;
                av[4] -= 0.5 * w.x * gz;
                av[5] -= 0.5 * w.y * gz;
            }
        }
        if (forces)
            for (int c = 0; c < 3; c++) {
                const double t = warp_sum_d(f[c]);
                if (lane == 0)
                    forces[(size_t)a * 3 + c] = t;
            }
        if (atom_virial)
            for (int c = 0; c < 6; c++) {
                const double t = warp_sum_d(av[c]);
                if (lane == 0)
                    atom_virial[(size_t)a * 6 + c] = t;
            }
        for (int c = 0; c < 6; c++)
            v[c] += av[c];
    }
    block_sum<6>(v, part);
}

static __global__ void __launch_bounds__(RED_THREADS)
    k_sum_energy(int nl, const double *__restrict__ e, double *__restrict__ part)
{
    double v[1] = {0.0};
    for (int a = blockIdx.x * blockDim.x + threadIdx.x; a < nl; a += gridDim.x * blockDim.x)
        v[0] += e[a];
    block_sum<1>(v, part);
}

/* out7[0] = sum of part[0][0..n_part), out7[1 + k] = sum of part[1 + ...] (see layout below). */
static __global__ void __launch_bounds__(RED_THREADS)
    k_reduce_parts(int n_part, const double *__restrict__ part, double *__restrict__ out7)
{
    /* part layout: [n_part] energy partials, then [n_part][6] virial partials */
    double v[7] = {0, 0, 0, 0, 0, 0, 0};
    for (int i = threadIdx.x; i < n_part; i += blockDim.x) {
        v[0] += part[i];
        for (int c = 0; c < 6; c++)
            v[1 + c] += part[n_part + (size_t)i * 6 + c];
    }
    block_sum<7>(v, out7);
}

extern "C" cudaError_t et_forces(cudaStream_t s, int nl, int n, const int *row_off,
                                 const int *tr_off, const int *tr_edge, const int *rev,
                                 const int *tr_off2, const int *tr_edge2, const float4 *e_geo,
                                 const float *gw, double *forces, double *atom_virial,
                                 int n_part, double *part)
{
    k_forces<<<n_part, RED_THREADS, 0, s>>>(nl, n, row_off, tr_off, tr_edge, rev, tr_off2,
                                            tr_edge2, e_geo, gw, forces, atom_virial,
                                            part + n_part);
    return cudaGetLastError();
}

extern "C" cudaError_t et_sum_energy(cudaStream_t s, int nl, const double *atom_e, int n_part,
                                     double *part)
{
    k_sum_energy<<<n_part, RED_THREADS, 0, s>>>(nl, atom_e, part);
    return cudaGetLastError();
}

extern "C" cudaError_t et_reduce_parts(cudaStream_t s, int n_part, const double *part,
                                       double *out7)
{
    k_reduce_parts<<<1, RED_THREADS, 0, s>>>(n_part, part, out7);
    return cudaGetLastError();
}
