/*
 * ne_species.cu - the neighbour embedding by species: its filter is linear in the basis, and
 * its other factor depends only on the sender's species, so the per-edge work of k_ne_fwd and
 * k_ne_bwd (F channels x K basis terms per edge) becomes K + 1 sums per edge and two node
 * GEMMs (docs/gpu.md v37).
 *
 * NeighborEmbedding (ET_SPEC.md section 3): m_t = sum_e (A f(r_e) + a) c(r_e) (.) E_nb[z_s(e)]
 * over the non-self edges e = (s -> t) of row t, A = distance_proj [F][K], a its bias. With the
 * species present numbered 0 .. S - 1 (slot of z: map[z]) and J = S (K + 1):
 *
 *   Y[t][p (K + 1) + k] = sum_{e: slot(z_s) = p} f_k(r_e) c(r_e)   (k < K),
 *   Y[t][p (K + 1) + K] = sum_{e: slot(z_s) = p} c(r_e),
 *   B[ch][p (K + 1) + k] = E_nb[z_p][ch] A[ch][k],   B[ch][p (K + 1) + K] = E_nb[z_p][ch] a[ch],
 *   m = Y B^T (a GEMM, [nl][J] x [J][F]).
 *
 * Backward: with g = dE/dm, H = g B ([nl][F] x [F][J]) and p = slot(z_s) of edge e in row t,
 *
 *   dE/dr_e = c(r) sum_k H[t][p (K + 1) + k] f'_k(r)
 *             + c'(r) (sum_k H[t][p (K + 1) + k] f_k(r) + H[t][p (K + 1) + K]),
 *
 * added to gw[e] along w_e / r as k_ne_bwd does. The same sums as k_ne_fwd / k_ne_bwd in
 * another order (fp32 rounding only); the basis values are the edge passes' (expnorm_k,
 * rbf_k_pi: the flush at e^-20 included), the cutoff k_ne_fwd's (cutoff_pi) and k_ne_bwd's
 * (et_cutoff_f).
 *
 * Kernels: k_ne_sp_b (B from the weights and the slots' z, when the species change),
 * k_ne_sp_fwd (one warp per row, lane = basis index k: per edge one basis value per lane added
 * to the warp's row of Y in shared memory, in row order), k_ne_sp_bwd (one warp per row, lane =
 * edge: H's row in shared memory, each lane's edge summed over k in one lane; the slot rows
 * are K + 1 = 33 floats apart, so lanes of different species read different banks).
 */
#include "edge_common.cuh"

constexpr int NE_SP_WARPS = 8;

/* B [F][J] from ne_wt [K][F], ne_b [F], ne_emb [max_z][F] and the slots' z (sp_z [S]) */
static __global__ void k_ne_sp_b(int F, int K, int S, const int *__restrict__ sp_z,
                                 const float *__restrict__ ne_wt, const float *__restrict__ ne_b,
                                 const float *__restrict__ ne_emb, float *__restrict__ B)
{
    const int J = S * (K + 1);
    const long long total = (long long)F * J;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i / J), j = (int)(i - (long long)ch * J);
        const int p = j / (K + 1), k = j - p * (K + 1);
        const float e = ne_emb[(size_t)sp_z[p] * F + ch];
        B[i] = e * (k < K ? ne_wt[(size_t)k * F + ch] : ne_b[ch]);
    }
}

/* Y [nl][J] (see the header); the self-loop (each row's first edge) left out */
static __global__ void __launch_bounds__(32 * NE_SP_WARPS)
    k_ne_sp_fwd(const et_edge_common c, const int *__restrict__ map, const int *__restrict__ z,
                int J, float *__restrict__ Y)
{
    extern __shared__ float ne_sp_sm[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *const acc = ne_sp_sm + (size_t)warp * J;
    const int K = c.K, K1 = K + 1;
    const bool en = c.rbf == ET_RBF_EXPNORM;
    /* this lane's basis indices k = lane, lane + 32 (k = K: the cutoff sum, f = 1) */
    float ak[2], bk[2];
#pragma unroll
    for (int q = 0; q < 2; q++) {
        const int k = lane + 32 * q;
        ak[q] = k < K ? __ldg(c.rbf_a + k) : 0.f;
        bk[q] = k < K && c.rbf_b ? __ldg(c.rbf_b + k) : 0.f;
    }
    for (int t = blockIdx.x * NE_SP_WARPS + warp; t < c.n_local;
         t += gridDim.x * NE_SP_WARPS) {
        for (int j = lane; j < J; j += 32)
            acc[j] = 0.f;
        __syncwarp();
        const int e0 = c.row_off[t] + 1, e1 = c.row_off[t + 1];
        for (int cb = e0; cb < e1; cb += 32) {
            const int nv = min(32, e1 - cb);
            /* lane i: edge cb + i's r, slot, cutoff, and the expnorm envelope and u */
            float r = c.cu, cc = 0.f, phi = 0.f, u = 0.f;
            int off = 0;
            if (lane < nv) {
                r = c.e_geo[cb + lane].w;
                off = __ldg(map + __ldg(z + c.e_src[cb + lane])) * K1;
                cc = cutoff_pi(r, c.cl, c.cu, nullptr);
                if (en) {
                    phi = cutoff_pi(r, 0.0f, c.cu, nullptr);
                    u = expf(c.alpha * (c.cl - r));
                }
            }
            for (int i = 0; i < nv; i++) {
                const float ri = __shfl_sync(0xffffffffu, r, i);
                const float ci = __shfl_sync(0xffffffffu, cc, i);
                const float pi = __shfl_sync(0xffffffffu, phi, i);
                const float ui = __shfl_sync(0xffffffffu, u, i);
                const int oi = __shfl_sync(0xffffffffu, off, i);
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const int k = lane + 32 * q;
                    if (k > K)
                        break;
                    float f = 1.f;
                    if (k < K)
                        f = en ? expnorm_k(c, ui, pi, 0.f, ak[q], bk[q], nullptr)
                               : rbf_k_pi(c, ri, ak[q], bk[q], nullptr);
                    acc[oi + k] += f * ci;
                }
            }
        }
        __syncwarp();
        float *const yr = Y + (size_t)t * J;
        for (int j = lane; j < J; j += 32)
            yr[j] = acc[j];
        __syncwarp();
    }
}

/* gw[e] += dE/dr_e w_e / r_e for the non-self edges (see the header) */
static __global__ void __launch_bounds__(32 * NE_SP_WARPS)
    k_ne_sp_bwd(const et_edge_common c, const int *__restrict__ map, const int *__restrict__ z,
                int J, const float *__restrict__ H, float *__restrict__ gw)
{
    extern __shared__ float ne_sp_sm[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *const hr = ne_sp_sm + (size_t)warp * J;
    const int K = c.K, K1 = K + 1;
    const bool en = c.rbf == ET_RBF_EXPNORM;
    for (int t = blockIdx.x * NE_SP_WARPS + warp; t < c.n_local;
         t += gridDim.x * NE_SP_WARPS) {
        __syncwarp(); /* the previous row's reads of hr */
        const float *const hg = H + (size_t)t * J;
        for (int j = lane; j < J; j += 32)
            hr[j] = hg[j];
        __syncwarp();
        const int e0 = c.row_off[t] + 1, e1 = c.row_off[t + 1];
        for (int e = e0 + lane; e < e1; e += 32) {
            const float4 geo = c.e_geo[e];
            const float r = geo.w;
            const float *const h = hr + __ldg(map + __ldg(z + c.e_src[e])) * K1;
            float dc = 0.f;
            const float cc = et_cutoff_f(r, c.cl, c.cu, &dc);
            float dphi = 0.f, phi = 0.f, u = 0.f;
            if (en) {
                phi = cutoff_pi(r, 0.0f, c.cu, &dphi);
                u = expf(c.alpha * (c.cl - r));
            }
            float P = 0.f, Q = 0.f;
            for (int k = 0; k < K; k++) {
                const float a = __ldg(c.rbf_a + k), b = c.rbf_b ? __ldg(c.rbf_b + k) : 0.f;
                float df = 0.f;
                const float f = en ? expnorm_k(c, u, phi, dphi, a, b, &df)
                                   : rbf_k_pi(c, r, a, b, &df);
                P = fmaf(h[k], df, P);
                Q = fmaf(h[k], f, Q);
            }
            const float gr = fmaf(cc, P, (Q + h[K]) * dc);
            const float inv = 1.f / r;
            float *const go = gw + 3 * (size_t)e;
            go[0] += gr * geo.x * inv;
            go[1] += gr * geo.y * inv;
            go[2] += gr * geo.z * inv;
        }
    }
}

/* kern over the c->n_local rows, NE_SP_WARPS warps per block, a row of J floats of shared
   memory per warp */
template <typename... P, typename... A>
static cudaError_t ne_sp_launch(void (*kern)(P...), cudaStream_t s, const et_edge_common *c,
                                int J, A... args)
{
    if (c->n_local == 0)
        return cudaSuccess;
    const size_t smem = sizeof(float) * (size_t)NE_SP_WARPS * J;
    int grid = 0;
    const cudaError_t e = resident_grid(kern, smem, NE_SP_WARPS, c->n_local, &grid);
    if (e != cudaSuccess)
        return e;
    kern<<<grid, 32 * NE_SP_WARPS, smem, s>>>(*c, args...);
    return cudaGetLastError();
}

extern "C" int et_ne_species_ok(int F, int K, int S)
{
    return S >= 1 && S <= ET_NE_SP_MAX && K >= 1 && K < 64 && S * (K + 1) <= 3 * F;
}

extern "C" cudaError_t et_ne_species_b(cudaStream_t s, int F, int K, int S, const int *sp_z,
                                       const float *ne_wt, const float *ne_b,
                                       const float *ne_emb, float *B)
{
    const long long total = (long long)F * S * (K + 1);
    const int blocks = (int)((total + 255) / 256 < 1024 ? (total + 255) / 256 : 1024);
    if (total > 0)
        k_ne_sp_b<<<blocks, 256, 0, s>>>(F, K, S, sp_z, ne_wt, ne_b, ne_emb, B);
    return cudaGetLastError();
}

extern "C" cudaError_t et_ne_species_forward(cudaStream_t s, const et_edge_common *c,
                                             const int *map, const int *z, int J, float *Y)
{
    return ne_sp_launch(k_ne_sp_fwd, s, c, J, map, z, J, Y);
}

extern "C" cudaError_t et_ne_species_backward(cudaStream_t s, const et_edge_common *c,
                                              const int *map, const int *z, int J,
                                              const float *H, float *gw)
{
    return ne_sp_launch(k_ne_sp_bwd, s, c, J, map, z, J, H, gw);
}
