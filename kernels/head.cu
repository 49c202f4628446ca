/*
 * head.cu - out_norm and the EquivariantScalar head (two GatedEquivariantBlocks), forward and
 * backward fused, one warp per owned atom (ET_SPEC.md sections 4 end, 5 and 6 "Head").
 * Intermediates live in this warp's shared-memory scratch; weights are read through the
 * read-only cache, each matrix in the layout that makes the lanes' reads consecutive:
 * y = M x with Mt [in][out] (forward), g_x = M^T g_y with M [out][in] itself (backward).
 *
 * Outputs per atom: e_i = std * s_i + atomref[z_i] (fp64), dE/dx_L [F], dE/dvec_L [3][F].
 */
#include "et_cuda.cuh"

#define HEAD_WARPS 2

/* y[o] = b[o] + sum_i Mt[i * out + o] x[i] for o < out (b may be NULL). */
static __device__ void wmv(const float *__restrict__ Mt, const float *__restrict__ b,
                           const float *x, int in, int out, float *y, int lane)
{
    for (int o = lane; o < out; o += 32) {
        float acc = b ? __ldg(b + o) : 0.f;
        for (int i = 0; i < in; i++)
            acc = fmaf(__ldg(Mt + (size_t)i * out + o), x[i], acc);
        y[o] = acc;
    }
    __syncwarp();
}

static __device__ void wmv3(const float *__restrict__ Mt, const float *x, int in, int out, float *y,
                            int lane)
{
    for (int c = 0; c < 3; c++)
        wmv(Mt, nullptr, x + c * in, in, out, y + c * out, lane);
}

/* n[i] = |u[:, i]| over the Cartesian axis (u [3][w]). */
static __device__ void vnorm(const float *u, int w, float *n, int lane)
{
    for (int i = lane; i < w; i += 32)
        n[i] = sqrtf(u[i] * u[i] + u[w + i] * u[w + i] + u[2 * w + i] * u[2 * w + i]);
    __syncwarp();
}

/* g_u[c][i] = g_n[i] u[c][i] / n[i] (0 where n = 0: PyTorch's subgradient). */
static __device__ void vnorm_bwd(const float *u, const float *n, const float *gn, int w, float *gu,
                                 int lane)
{
    for (int i = lane; i < w; i += 32) {
        float s = n[i] > 0.f ? gn[i] / n[i] : 0.f;
        for (int c = 0; c < 3; c++)
            gu[c * w + i] = u[c * w + i] * s;
    }
    __syncwarp();
}

static __global__ void __launch_bounds__(32 * HEAD_WARPS)
    k_head(int nl, const et_dmodel m, const int *__restrict__ z, const float *__restrict__ x,
           const float *__restrict__ vec, double *__restrict__ atom_e, float *__restrict__ gx,
           float *__restrict__ gvec)
{
    extern __shared__ float4 sm4[];
    const int F = m.F, Fh = m.F / 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *w = reinterpret_cast<float *>(sm4) + (size_t)warp * 34 * F;
    float *xn = w;             /* [F]  (x - mu) rs                         */
    float *cat0 = xn + F;      /* [2F] (out_norm(x), n0)                  */
    float *v0 = cat0 + 2 * F;  /* [3F] vec                                */
    float *u0 = v0 + 3 * F;    /* [3F] W1 vec                             */
    float *w0 = u0 + 3 * F;    /* [3F/2] W2 vec                           */
    float *y1p0 = w0 + 3 * Fh; /* [F] L1 pre-activation                   */
    float *y1a0 = y1p0 + F;    /* [F] act                                 */
    float *y20 = y1a0 + F;     /* [F] (s, gate)                           */
    float *cat1 = y20 + F;     /* [F] (x1, n1)                            */
    float *v1 = cat1 + F;      /* [3F/2] gate * w0                        */
    float *u1 = v1 + 3 * Fh;   /* [3F/2]                                  */
    float *y1p1 = u1 + 3 * Fh; /* [F/2]                                   */
    float *y1a1 = y1p1 + Fh;   /* [F/2]                                   */
    float *g1 = y1a1 + Fh;     /* [F/2] backward scratch from here on      */
    float *gcat1 = g1 + Fh;    /* [F]                                     */
    float *gu1 = gcat1 + F;    /* [3F/2]                                  */
    float *gv1 = gu1 + 3 * Fh; /* [3F/2]                                  */
    float *gy20 = gv1 + 3 * Fh; /* [F]                                    */
    float *gy10 = gy20 + F;    /* [F]                                     */
    float *gcat0 = gy10 + F;   /* [2F]                                    */
    float *gu0 = gcat0 + 2 * F; /* [3F]                                   */
    float *gw0 = gu0 + 3 * F;  /* [3F/2]  total 33.5 F                    */

    for (int t = blockIdx.x * HEAD_WARPS + warp; t < nl; t += gridDim.x * HEAD_WARPS) {
        /* out_norm */
        const float *xr = x + (size_t)t * F;
        float s = 0.f;
        for (int f = lane; f < F; f += 32)
            s += xr[f];
        const float mu = warp_sum(s) / F;
        float v = 0.f;
        for (int f = lane; f < F; f += 32)
            v += (xr[f] - mu) * (xr[f] - mu);
        const float rs = rsqrtf(warp_sum(v) / F + 1e-5f);
        for (int f = lane; f < F; f += 32) {
            xn[f] = (xr[f] - mu) * rs;
            cat0[f] = xn[f] * m.on_w[f] + m.on_b[f];
        }
        for (int f = lane; f < 3 * F; f += 32)
            v0[f] = vec[(size_t)t * 3 * F + f];
        __syncwarp();

        /* block 0: F -> F/2, scalar activation */
        wmv3(m.h0_w1t, v0, F, F, u0, lane);
        vnorm(u0, F, cat0 + F, lane);
        wmv3(m.h0_w2t, v0, F, Fh, w0, lane);
        wmv(m.h0_l1t, m.h0_l1b, cat0, 2 * F, F, y1p0, lane);
        for (int i = lane; i < F; i += 32)
            y1a0[i] = act_f(m.act, y1p0[i], nullptr);
        __syncwarp();
        wmv(m.h0_l2t, m.h0_l2b, y1a0, F, F, y20, lane);
        for (int o = lane; o < Fh; o += 32) {
            cat1[o] = act_f(m.act, y20[o], nullptr);
            for (int c = 0; c < 3; c++)
                v1[c * Fh + o] = y20[Fh + o] * w0[c * Fh + o];
        }
        __syncwarp();

        /* block 1: F/2 -> 1, no scalar activation; only the scalar output matters */
        wmv3(m.h1_w1t, v1, Fh, Fh, u1, lane);
        vnorm(u1, Fh, cat1 + Fh, lane);
        wmv(m.h1_l1t, m.h1_l1b, cat1, F, Fh, y1p1, lane);
        float es = 0.f;
        for (int i = lane; i < Fh; i += 32) {
            float d;
            y1a1[i] = act_f(m.act, y1p1[i], &d);
            es = fmaf(m.h1_l2[i], y1a1[i], es); /* row 0 of L2 [2][F/2] */
            g1[i] = m.h1_l2[i] * m.std_scale * d;
        }
        es = warp_sum(es) + m.h1_l2b[0];
        if (lane == 0)
            atom_e[t] = (double)es * (double)m.std_scale + m.atomref[z[t]];
        __syncwarp();

        /* backward, block 1: g_y = (std, 0) */
        wmv(m.h1_l1, nullptr, g1, Fh, F, gcat1, lane); /* L1' [F/2][F] */
        vnorm_bwd(u1, cat1 + Fh, gcat1 + Fh, Fh, gu1, lane);
        wmv3(m.h1_w1, gu1, Fh, Fh, gv1, lane);

        /* block 0 */
        for (int o = lane; o < Fh; o += 32) {
            float d;
            act_f(m.act, y20[o], &d);
            gy20[o] = gcat1[o] * d;
            float gg = 0.f;
            for (int c = 0; c < 3; c++) {
                gg = fmaf(gv1[c * Fh + o], w0[c * Fh + o], gg);
                gw0[c * Fh + o] = y20[Fh + o] * gv1[c * Fh + o];
            }
            gy20[Fh + o] = gg;
        }
        __syncwarp();
        wmv(m.h0_l2, nullptr, gy20, F, F, gy10, lane);
        for (int i = lane; i < F; i += 32) {
            float d;
            act_f(m.act, y1p0[i], &d);
            gy10[i] *= d;
        }
        __syncwarp();
        wmv(m.h0_l1, nullptr, gy10, F, 2 * F, gcat0, lane);
        vnorm_bwd(u0, cat0 + F, gcat0 + F, F, gu0, lane);
        /* g_vec = W1^T g_u0 + W2^T g_w0, per component */
        for (int c = 0; c < 3; c++) {
            for (int i = lane; i < F; i += 32) {
                float acc = 0.f;
                for (int o = 0; o < F; o++)
                    acc = fmaf(__ldg(m.h0_w1 + (size_t)o * F + i), gu0[c * F + o], acc);
                for (int o = 0; o < Fh; o++)
                    acc = fmaf(__ldg(m.h0_w2 + (size_t)o * F + i), gw0[c * Fh + o], acc);
                gvec[((size_t)t * 3 + c) * F + i] = acc;
            }
        }
        /* out_norm backward */
        float m1 = 0.f, m2 = 0.f;
        for (int f = lane; f < F; f += 32) {
            float gh = m.on_w[f] * gcat0[f];
            m1 += gh;
            m2 += gh * xn[f];
        }
        m1 = warp_sum(m1) / F;
        m2 = warp_sum(m2) / F;
        for (int f = lane; f < F; f += 32)
            gx[(size_t)t * F + f] = rs * (m.on_w[f] * gcat0[f] - m1 - xn[f] * m2);
        __syncwarp();
    }
}

extern "C" cudaError_t et_head(cudaStream_t s, int nl, const et_dmodel *m, const int *z,
                               const float *x, const float *vec, double *atom_e, float *gx,
                               float *gvec)
{
    if (nl == 0)
        return cudaSuccess;
    size_t smem = (size_t)HEAD_WARPS * 34 * m->F * sizeof(float);
    cudaError_t e =
        cudaFuncSetAttribute(k_head, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return e;
    int dev, sms;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    long long want = (nl + HEAD_WARPS - 1) / HEAD_WARPS;
    int grid = (int)(want < (long long)sms * 16 ? want : (long long)sms * 16);
    k_head<<<grid, 32 * HEAD_WARPS, smem, s>>>(nl, *m, z, x, vec, atom_e, gx, gvec);
    return cudaGetLastError();
}
