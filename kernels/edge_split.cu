/*
 * edge_split.cu - row split of the fused layer edge kernels for small systems (declarations
 * and the layout of the partial sums: et_cuda.cuh, et_edge_split; docs/gpu.md "Row split for
 * small systems").
 *
 * The fused passes run one warp per row (receiver t, or sender s in the sender pass). With
 * fewer rows than a few times the warps resident on the device, warps are short (too few to
 * hide latency) and the longest rows set the time. A split S > 1 gives each row S work items
 * (p, t), p = 0 .. S-1, item p taking the row's chunks p, p + S, p + 2S, ... (chunks of
 * ET_EDGE_CHUNK edges, cut as without the split, self-loop first in chunk 0); each edge is
 * evaluated exactly as with S = 1. The per-row sums of item p go to part[p][t][...], and
 * k_split_sum adds the S partials in the order p = 0 .. S-1 into the outputs: no atomics, the
 * same result every call. S = 1 is the unsplit kernel, unchanged.
 */
#include "edge_common.cuh"

#include <limits.h>

/*
 * Split factor of a pass over `rows` rows of a kernel with `slots` resident warps: force when
 * it is 1, 2, 4 or 8; else 1 from 8 x slots rows up (large systems: the code and order as
 * without the split), below that the smallest S in 2, 4, 8 with rows x S >= 8 x slots (about
 * eight items per warp, so that rows of different lengths even out over a warp's items), at
 * most 8. Measured on the H200 (docs/gpu.md v24, reference model, 2,112 slots, bench_gpu 5
 * steps, ms per step for S = 1/2/4/8): 1,000 atoms 3.85/2.71/2.66/2.68; 2,197 atoms
 * 6.80/5.68/5.03/5.01; 4,913 10.85/9.68/9.56/9.71; 10,648 20.20/19.37/19.51/19.86; 19,683
 * 34.42/34.32/35.12/36.10; 29,791 51.15/51.84/53.85 (S = 1/2/4); 97,336 161.1/167.4/174.6. The
 * bound was 4 x slots before (v7, older kernels): 10,648 atoms took S = 1, now S = 2 (-4%).
 */
static int split_factor(int rows, int slots, int force)
{
    int S = 1;
    if (force == 1 || force == 2 || force == 4 || force == 8) {
        S = force;
    } else if (rows > 0 && slots > 0 && (long long)rows < 8LL * slots) {
        S = 2;
        while (S < 8 && (long long)rows * S < 8LL * slots)
            S *= 2;
    }
    /* the items w < rows x S are ints in the kernels */
    while (S > 1 && (long long)rows * S > INT_MAX)
        S /= 2;
    return S;
}

extern "C" cudaError_t et_edge_split_plan(int CPL, const et_edge_common *c, int force,
                                          et_edge_split *sp)
{
    sp->fwd = sp->recv = sp->send = 1;
    sp->part_floats = 0;
    int s_fwd = 0, s_recv = 0, s_send = 0;
    cudaError_t e = et_edge_forward_slots(CPL, c, &s_fwd);
    if (e == cudaSuccess)
        e = et_edge_backward_slots(CPL, c, &s_recv, &s_send);
    if (e != cudaSuccess)
        return e;
    sp->fwd = split_factor(c->n_local, s_fwd, force);
    sp->recv = split_factor(c->n_local, s_recv, force);
    sp->send = split_factor(c->n_total, s_send, force);
    /* partial row widths: forward X | V (4F), receivers g_q (F; the merged pass, which runs
       with the receivers' factor: gqkv's 5F | g_vec 3F, so 8F), senders g_k | g_v | g_vec (7F) */
    const size_t F = (size_t)c->F;
    size_t need = 0, v;
    if (sp->fwd > 1 && (v = (size_t)sp->fwd * c->n_local * 4 * F) > need)
        need = v;
    if (sp->recv > 1 && (v = (size_t)sp->recv * c->n_local * 8 * F) > need)
        need = v;
    if (sp->send > 1 && (v = (size_t)sp->send * c->n_total * 7 * F) > need)
        need = v;
    sp->part_floats = need;
    return cudaSuccess;
}

/*
 * dst = (or +=) sum over p = 0 .. S-1, in that order, of part[p][row][j], j < W = w0 + w1:
 * columns j < w0 go to d0[row * ld0 + j], columns w0 + j to d1[row * ld1 + j].
 */
static __global__ void k_split_sum(const float *part, int S, int rows, int w0, int w1,
                                   float *d0, int ld0, int add0, float *d1, int ld1, int add1)
{
    const size_t W = (size_t)(w0 + w1), total = (size_t)rows * W;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float sum = part[i];
        for (int p = 1; p < S; p++)
            sum += part[(size_t)p * total + i];
        const size_t row = i / W, j = i - row * W;
        float *d;
        int add;
        if (j < (size_t)w0) {
            d = d0 + row * ld0 + j;
            add = add0;
        } else {
            d = d1 + row * ld1 + (j - w0);
            add = add1;
        }
        *d = add ? *d + sum : sum;
    }
}

extern "C" cudaError_t et_split_sum(cudaStream_t s, int S, int rows, const float *part,
                                    float *d0, int ld0, int w0, int add0, float *d1, int ld1,
                                    int w1, int add1)
{
    const size_t total = (size_t)rows * (size_t)(w0 + w1);
    if (total == 0)
        return cudaSuccess;
    const size_t blocks = (total + 255) / 256;
    k_split_sum<<<(int)(blocks < 8192 ? blocks : 8192), 256, 0, s>>>(part, S, rows, w0, w1, d0,
                                                                     ld0, add0, d1, ld1, add1);
    return cudaGetLastError();
}
