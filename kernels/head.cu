/*
 * head.cu - elementwise and per-atom parts of out_norm and the EquivariantScalar head (two
 * GatedEquivariantBlocks), forward and backward (ET_SPEC.md sections 4 end, 5 and 6 "Head").
 * The matrix products are batched cuBLAS SGEMMs over all owned atoms, issued by head() in
 * et_cuda.cu between these kernels; every intermediate is an [nl][...] row-major array:
 *
 *   forward                                   backward, g_y = (std, 0)
 *   cat0[:, 0:F]  = out_norm(x)   norm_in     g1    = L2'[0] std act'(y1p1)     energy
 *   u0 = W1 vec, w0 = W2 vec      (SGEMM)     gcat1 = L1'^T g1                  (SGEMM)
 *   cat0[:, F:2F] = |u0|          vnorm       gu1   = vnorm_bwd(u1, gcat1[Fh:]) vnorm_bwd
 *   y1p0 = L1 cat0 (+b), y1a0 = act bias_act  gv1   = W1'^T gu1                 (SGEMM)
 *   y20 = L2 y1a0 (+b)            (SGEMM)     gy20, gw0 from gcat1, gv1         gate0_bwd
 *   cat1[:, 0:Fh] = act(s),                   gy10  = L2^T gy20, *= act'(y1p0)  (SGEMM), dact
 *   v1 = gate w0                  gate0       gcat0 = L1^T gy10                 (SGEMM)
 *   u1 = W1' v1                   (SGEMM)     gu0   = vnorm_bwd(u0, gcat0[F:])  vnorm_bwd
 *   cat1[:, Fh:F] = |u1|          vnorm       gvec  = W1^T gu0 + W2^T gw0       (SGEMM x 2)
 *   y1p1 = L1' cat1 (+b)          (SGEMM)     gx    = out_norm backward         norm_out
 *   e = L2'[0] act(y1p1) + b      energy
 *
 * Same formulas as the fused one-warp-per-atom head it replaces; sums over channels inside a
 * kernel run in a fixed order (lane-strided partial sums, then a butterfly): deterministic.
 * Outputs per atom: e_i = std * s_i + atomref[z_i] (fp64), dE/dx_L [F], dE/dvec_L [3][F].
 */
#include "et_cuda.cuh"

static int nblk(long long n, int per) { return (int)((n + per - 1) / per); }
#define WARP_GRID(n) nblk((long long)(n) * 32, 32 * ET_WARPS), 32 * ET_WARPS

/* cat0[t][0:F] = LayerNorm(x[t]) with out_norm's weight and bias (ld of cat0: 2F). */
static __global__ void k_norm_in(int nl, int F, const float *__restrict__ x,
                                 const float *__restrict__ w, const float *__restrict__ b,
                                 float *__restrict__ cat0)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= nl)
        return;
    const float *xr = x + (size_t)t * F;
    float s = 0.f;
    for (int f = lane; f < F; f += 32)
        s += xr[f];
    const float mu = warp_sum(s) / F;
    float v = 0.f;
    for (int f = lane; f < F; f += 32)
        v += (xr[f] - mu) * (xr[f] - mu);
    const float rs = rsqrtf(warp_sum(v) / F + 1e-5f);
    for (int f = lane; f < F; f += 32)
        cat0[(size_t)t * 2 * F + f] = (xr[f] - mu) * rs * w[f] + b[f];
}

/* y[i] += b[i % w]; a[i] = act(y[i]) (y keeps the pre-activation with its bias). */
static __global__ void k_bias_act(long long total, int w, int act, float *__restrict__ y,
                                  const float *__restrict__ b, float *__restrict__ a)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total)
        return;
    const float v = y[i] + b[i % w];
    y[i] = v;
    a[i] = act_f(act, v, nullptr);
}

/* nrm[t * ldn + i] = sqrt(|u[t][:, i]|^2 + eps2) over the Cartesian axis, u [nl][3][w]
   (eps2 = head_vector_norm_eps^2; 0: TorchMD-Net's plain norm). */
static __global__ void k_vnorm(int nl, int w, const float *__restrict__ u, float *__restrict__ nrm,
                               int ldn, float eps2)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (long long)nl * w)
        return;
    const long long t = j / w;
    const int i = (int)(j % w);
    const float *ur = u + t * 3 * w;
    const float a = ur[i], b = ur[w + i], c = ur[2 * w + i];
    nrm[t * ldn + i] = sqrtf(a * a + b * b + c * c + eps2);
}

/*
 * Block 0's outputs (F = 2 Fh): y20 += bias (kept: (s, gate)); cat1[t][o] = act(s[o]);
 * v1[t][c][o] = gate[o] w0[t][c][o]. Thread (t, o < Fh) alone touches y20[t][o], y20[t][Fh + o].
 */
static __global__ void k_gate0(int nl, int Fh, int act, float *__restrict__ y20,
                               const float *__restrict__ b, const float *__restrict__ w0,
                               float *__restrict__ cat1, float *__restrict__ v1)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (long long)nl * Fh)
        return;
    const long long t = j / Fh;
    const int o = (int)(j % Fh);
    float *y = y20 + t * 2 * Fh;
    const float s = y[o] + b[o], g = y[Fh + o] + b[Fh + o];
    y[o] = s;
    y[Fh + o] = g;
    cat1[t * 2 * Fh + o] = act_f(act, s, nullptr);
    for (int c = 0; c < 3; c++)
        v1[(t * 3 + c) * Fh + o] = g * w0[(t * 3 + c) * Fh + o];
}

/*
 * Block 1's scalar output, one warp per atom (Fh = F/2 channels):
 *   y = y1p1 + b1; e = sum_i L2'[0][i] act(y_i) + b2[0]; atom_e = std e + atomref[z] (fp64);
 *   g1[t][i] = L2'[0][i] std act'(y_i).
 */
static __global__ void k_energy(int nl, int Fh, int act, const float *__restrict__ y1p1,
                                const float *__restrict__ b1, const float *__restrict__ l2,
                                const float *__restrict__ b2, float std_scale,
                                const double *__restrict__ atomref, const int *__restrict__ z,
                                double *__restrict__ atom_e, float *__restrict__ g1)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= nl)
        return;
    float es = 0.f;
    for (int i = lane; i < Fh; i += 32) {
        float d;
        const float a = act_f(act, y1p1[(size_t)t * Fh + i] + b1[i], &d);
        es = fmaf(l2[i], a, es);
        g1[(size_t)t * Fh + i] = l2[i] * std_scale * d;
    }
    es = warp_sum(es) + b2[0];
    if (lane == 0)
        atom_e[t] = (double)es * (double)std_scale + atomref[z[t]];
}

/*
 * gu[t][c][i] = gn[t * ldg + i] u[t][c][i] / n[t * ldn + i], 0 where n = 0 (PyTorch's
 * subgradient of the norm), u, gu [nl][3][w]; n is the (smoothed) norm of k_vnorm, so the same
 * formula is the gradient of sqrt(|u|^2 + eps^2) too.
 */
static __global__ void k_vnorm_bwd(int nl, int w, const float *__restrict__ u,
                                   const float *__restrict__ nrm, int ldn,
                                   const float *__restrict__ gn, int ldg, float *__restrict__ gu)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (long long)nl * w)
        return;
    const long long t = j / w;
    const int i = (int)(j % w);
    const float n = nrm[t * ldn + i];
    const float s = n > 0.f ? gn[t * ldg + i] / n : 0.f;
    for (int c = 0; c < 3; c++)
        gu[(t * 3 + c) * w + i] = u[(t * 3 + c) * w + i] * s;
}

/*
 * Block 0 backward at its outputs (F = 2 Fh), from g_cat1 [nl][F] (first Fh: dE/dact(s)) and
 * g_v1 [nl][3][Fh]:
 *   gy20[t][o] = gcat1[t][o] act'(s[o]); gy20[t][Fh + o] = sum_c gv1[c][o] w0[c][o];
 *   gw0[t][c][o] = gate[o] gv1[c][o].
 */
static __global__ void k_gate0_bwd(int nl, int Fh, int act, const float *__restrict__ y20,
                                   const float *__restrict__ gcat1, const float *__restrict__ gv1,
                                   const float *__restrict__ w0, float *__restrict__ gy20,
                                   float *__restrict__ gw0)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (long long)nl * Fh)
        return;
    const long long t = j / Fh;
    const int o = (int)(j % Fh);
    const float *y = y20 + t * 2 * Fh;
    float d;
    act_f(act, y[o], &d);
    gy20[t * 2 * Fh + o] = gcat1[t * 2 * Fh + o] * d;
    const float gate = y[Fh + o];
    float gg = 0.f;
    for (int c = 0; c < 3; c++) {
        const long long k = (t * 3 + c) * Fh + o;
        gg = fmaf(gv1[k], w0[k], gg);
        gw0[k] = gate * gv1[k];
    }
    gy20[t * 2 * Fh + Fh + o] = gg;
}

/* g[i] *= act'(y[i]). */
static __global__ void k_dact(long long total, int act, const float *__restrict__ y,
                              float *__restrict__ g)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total)
        return;
    float d;
    act_f(act, y[i], &d);
    g[i] *= d;
}

/* out_norm backward, one warp per atom: gx = rs (w gh - mean(w gh) - xh mean(w gh xh)),
   gh = gcat0[t][0:F] (ld 2F), xh = (x - mu) rs recomputed from x. */
static __global__ void k_norm_out(int nl, int F, const float *__restrict__ x,
                                  const float *__restrict__ w, const float *__restrict__ gcat0,
                                  float *__restrict__ gx)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= nl)
        return;
    const float *xr = x + (size_t)t * F;
    const float *gr = gcat0 + (size_t)t * 2 * F;
    float s = 0.f;
    for (int f = lane; f < F; f += 32)
        s += xr[f];
    const float mu = warp_sum(s) / F;
    float v = 0.f;
    for (int f = lane; f < F; f += 32)
        v += (xr[f] - mu) * (xr[f] - mu);
    const float rs = rsqrtf(warp_sum(v) / F + 1e-5f);
    float m1 = 0.f, m2 = 0.f;
    for (int f = lane; f < F; f += 32) {
        const float gh = w[f] * gr[f];
        m1 += gh;
        m2 += gh * ((xr[f] - mu) * rs);
    }
    m1 = warp_sum(m1) / F;
    m2 = warp_sum(m2) / F;
    for (int f = lane; f < F; f += 32)
        gx[(size_t)t * F + f] = rs * (w[f] * gr[f] - m1 - ((xr[f] - mu) * rs) * m2);
}

/* ---- launchers ------------------------------------------------------------------------- */
extern "C" cudaError_t et_head_norm_in(cudaStream_t s, int nl, int F, const float *x,
                                       const float *w, const float *b, float *cat0)
{
    if (nl > 0)
        k_norm_in<<<WARP_GRID(nl), 0, s>>>(nl, F, x, w, b, cat0);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_bias_act(cudaStream_t s, int rows, int w, int act, float *y,
                                        const float *b, float *a)
{
    const long long total = (long long)rows * w;
    if (total > 0)
        k_bias_act<<<nblk(total, 256), 256, 0, s>>>(total, w, act, y, b, a);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_vnorm(cudaStream_t s, int nl, int w, const float *u, float *nrm,
                                     int ldn, float eps2)
{
    if (nl > 0)
        k_vnorm<<<nblk((long long)nl * w, 256), 256, 0, s>>>(nl, w, u, nrm, ldn, eps2);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_gate0(cudaStream_t s, int nl, int Fh, int act, float *y20,
                                     const float *b, const float *w0, float *cat1, float *v1)
{
    if (nl > 0)
        k_gate0<<<nblk((long long)nl * Fh, 256), 256, 0, s>>>(nl, Fh, act, y20, b, w0, cat1, v1);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_energy(cudaStream_t s, int nl, int Fh, int act, const float *y1p1,
                                      const float *b1, const float *l2, const float *b2,
                                      float std_scale, const double *atomref, const int *z,
                                      double *atom_e, float *g1)
{
    if (nl > 0)
        k_energy<<<WARP_GRID(nl), 0, s>>>(nl, Fh, act, y1p1, b1, l2, b2, std_scale, atomref, z,
                                          atom_e, g1);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_vnorm_bwd(cudaStream_t s, int nl, int w, const float *u,
                                         const float *nrm, int ldn, const float *gn, int ldg,
                                         float *gu)
{
    if (nl > 0)
        k_vnorm_bwd<<<nblk((long long)nl * w, 256), 256, 0, s>>>(nl, w, u, nrm, ldn, gn, ldg, gu);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_gate0_bwd(cudaStream_t s, int nl, int Fh, int act,
                                         const float *y20, const float *gcat1, const float *gv1,
                                         const float *w0, float *gy20, float *gw0)
{
    if (nl > 0)
        k_gate0_bwd<<<nblk((long long)nl * Fh, 256), 256, 0, s>>>(nl, Fh, act, y20, gcat1, gv1, w0,
                                                                  gy20, gw0);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_dact(cudaStream_t s, int rows, int w, int act, const float *y,
                                    float *g)
{
    const long long total = (long long)rows * w;
    if (total > 0)
        k_dact<<<nblk(total, 256), 256, 0, s>>>(total, act, y, g);
    return cudaGetLastError();
}

extern "C" cudaError_t et_head_norm_out(cudaStream_t s, int nl, int F, const float *x,
                                        const float *w, const float *gcat0, float *gx)
{
    if (nl > 0)
        k_norm_out<<<WARP_GRID(nl), 0, s>>>(nl, F, x, w, gcat0, gx);
    return cudaGetLastError();
}
