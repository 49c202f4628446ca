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
 * it is 1, 2, 4 or 8; else by rows per slot: 1 from 16 up (large systems: the code and order as
 * without the split), 2 from 2, 4 from 1/4, else 8. The passes take their items from a counter
 * (DS4SCI_CUDA_DYN, v29-v30), so rows of different lengths even out without many items per
 * warp, and fewer parts mean fewer partial rows for k_split_sum to read. Measured on the H200
 * (docs/gpu.md v33, reference model, 2,112 slots, bench_gpu 5 steps, two rounds, ms per step for
 * S = 8/4/2/1): 1,000 atoms 2.04/2.02/2.12/3.05; 2,197 3.76/3.69/3.93/4.73; 4,913
 * 7.40/7.14/7.08/7.85; 10,648 15.2/14.3/14.1/14.8; 19,683 27.6/26.0/25.3/26.0; 29,791
 * 41.8/39.4/38.2/38.5; 97,336 atoms took S = 1 in v24 (S = 2 +4%). The rule before v33
 * (items rows x S >= 8 x slots, before the counter: v24) took 8 at 1,000 and 2,197 atoms and 1
 * from 16,896 rows (19,683 atoms: 26.0 instead of 25.3 ms).
 */
static int split_factor(int rows, int slots, int force)
{
    int S = 1;
    if (force == 1 || force == 2 || force == 4 || force == 8) {
        S = force;
    } else if (rows > 0 && slots > 0 && (long long)rows < 16LL * slots) {
        S = (long long)rows >= 2LL * slots ? 2 : 4LL * rows >= (long long)slots ? 4 : 8;
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
