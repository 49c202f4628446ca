/*
 * edge_fwd_tc.cu - the fused forward edge pass of an attention layer with the radial filters on
 * the float64 tensor cores (docs/tensor_cores.md, last section; docs/gpu.md "Left to do" 1).
 * Opt-in (DS4SCI_CUDA_TC=1) while it is measured: layers with F = 64 or 128 (CPL 2, 4), K <= 32
 * basis functions, no row split; everything else runs k_edge_fwd (edge_fwd.cu).
 *
 * The same layer as k_edge_fwd (its header has the formulas), in another order: one warp per
 * owned receiver t walks its row in tiles of 16 edges. Per tile, lane (g, t4) evaluates the
 * basis f_k(r) of edges g and g + 8 for k = 4 s + t4 (s = 0..7), which is the A fragment of
 * mma.sync.m16n8k16 .f64 (edges as M, the basis as K); the filter weights [K][4F] (the
 * layer's filt_wt, part p's channel n = p F + lane CPL + j) are in shared memory once per SM
 * as floats at tc_w_addr (the swizzle of bench_filter_mma's d8_w_addr: conflict-free B
 * fragments), converted to double per use. The products of float inputs are exact and the
 * sums float64, so pre = float(sum) + b is within one rounding of the exact value (the FFMA
 * filter: up to 33). Per part (dk, dv value, dv gate 1, dv gate 2) the 16 x F activations are
 * staged as [edge][channel] in the warp's shared scratch and the message code reads them as
 * k_edge_fwd reads its filters (lane = CPL channels): attention from dk, then X from the value
 * part, then V from the two gates. The terms of V are added gate by gate (all edges' vec[s] g1
 * terms, then the g2 d terms), not edge by edge: other last bits than k_edge_fwd.
 */
#include "edge_common.cuh"
#include "edge_gates.cuh"

/* warps per block (one block per SM: the weights once per SM); 16 by default, the variants
   with fewer warps have more registers per warp for gathers in flight */
constexpr int TC_WARPS = 16;
constexpr int TC_KP = 32;    /* basis functions padded to two k-steps of 16 */
constexpr int P_NR_MAX = 4;  /* sender rows per edge a part reads at most (gate 1: v1, vec x 3) */

/* W[k][n] (n = p F + channel of part p) in shared memory: blocks of 8 channels, rows of 8 per
   k, the channel's bits 2 and 0 flipped by k's bits 1 and 2 (bench_filter_mma d8_w_addr) */
static __device__ __forceinline__ int tc_w_addr(int k, int n)
{
    return (n >> 3) * (8 * TC_KP) + 8 * k + ((n & 7) ^ (4 * ((k >> 1) & 1)) ^ ((k >> 2) & 1));
}

/* D += A B, m16n8k16 .f64: a[2 p + h] = A[g + 8 h][t + 4 p], b[p] = B[t + 4 p][g],
   c[2 h + i] = D[g + 8 h][2 t + i] (lane = 4 g + t) */
static __device__ __forceinline__ void dmma16816(double (&c)[4], const double (&a)[8],
                                                 const double (&b)[4])
{
    asm("mma.sync.aligned.m16n8k16.row.col.f64.f64.f64.f64 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7, %8, %9, %10, %11}, {%12, %13, %14, %15}, {%0, %1, %2, %3};"
        : "+d"(c[0]), "+d"(c[1]), "+d"(c[2]), "+d"(c[3])
        : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(a[4]), "d"(a[5]), "d"(a[6]), "d"(a[7]),
          "d"(b[0]), "d"(b[1]), "d"(b[2]), "d"(b[3]));
}

/* Tile kinds. E8 = 0: 16-edge tiles, the basis as the A fragment (edges as M), the weights as
   floats at tc_w_addr (B), the staging [16][F + 8]. E8 = 1 (F = 128 only): 8-edge tiles, the
   weights as the A fragment (channels as M: part p's m-tile mt is channels p F + 16 mt ..
   + 15) in float64, stored fragment by fragment (tc8_w_idx: each lane's a[2 q], a[2 q + 1]
   one 16-byte load, a warp's load 512 contiguous bytes: conflict-free, no conversions), the
   basis as B (edges as N: lane (g, t4) evaluates edge g's f_k for k = 4 q + t4 + 16 ks), the
   biases as the accumulators' start (float64), the staging [8][F + 4] (C fragment: lane
   (g, t4) holds channels g, g + 8 of edges 2 t4, 2 t4 + 1; the stride F + 4 makes its scalar
   stores conflict-free). Per edge E8 = 1 has no weight conversions, half the basis work and
   less tile padding (rows of ~53 edges: 56 slots against 64). */
template <int CPL, int E8> static constexpr int tc_ss() { return 32 * CPL + (E8 ? 4 : 8); }
template <int E8> static constexpr int tc_tile() { return E8 ? 8 : 16; }

/* index (in double2) of the fragment pair q of lane ln for part p, m-tile mt, k-step ks */
static __device__ __forceinline__ int tc8_w_idx(int p, int mt, int ks, int q, int ln)
{
    return (((p * 8 + mt) * 2 + ks) * 4 + q) * 32 + ln;
}

template <int CPL, int E8> static size_t tc_smem_bytes(int warps)
{
    constexpr int F = 32 * CPL;
    const size_t st = (size_t)warps * tc_tile<E8>() * tc_ss<CPL, E8>() * sizeof(float);
    if (E8)
        return sizeof(double) * ((size_t)TC_KP * 4 * F + 4 * F) + st;
    return sizeof(float) * ((size_t)TC_KP * 4 * F + 4 * F) + st;
}

template <int CPL, int SILU, int W, int TB, int E8, int MU = 1, int KS2 = 0>
static __global__ void __launch_bounds__(32 * W, 1)
    k_edge_fwd_tc(const et_edge_common c, const et_edge_layer l)
{
    constexpr int F = 32 * CPL, NT = F / 8, SS = tc_ss<CPL, E8>(), TE = tc_tile<E8>();
    static_assert(!E8 || CPL == 4, "8-edge tiles: F = 128");
    constexpr unsigned FULL = 0xffffffffu;
    extern __shared__ float4 sm4[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    float *s_w = nullptr, *s_b = nullptr, *s_st;
    double2 *s_w8 = nullptr;
    double *s_b8 = nullptr;
    if constexpr (E8) {
        s_w8 = reinterpret_cast<double2 *>(sm4);
        s_b8 = reinterpret_cast<double *>(s_w8 + TC_KP * 4 * F / 2);
        s_st = reinterpret_cast<float *>(s_b8 + 4 * F) + warp * TE * SS;
        for (int i = threadIdx.x; i < TC_KP * 4 * F / 2; i += blockDim.x) {
            const int ln = i & 31, q = (i >> 5) & 3, ks = (i >> 7) & 1, mt = (i >> 8) & 7,
                      p = i >> 11;
            const int k = 16 * ks + 4 * q + (ln & 3), n = p * F + 16 * mt + (ln >> 2);
            s_w8[i] = k < c.K ? make_double2((double)__ldg(l.filt_wt + (size_t)k * 4 * F + n),
                                             (double)__ldg(l.filt_wt + (size_t)k * 4 * F + n + 8))
                              : make_double2(0.0, 0.0);
        }
        for (int i = threadIdx.x; i < 4 * F; i += blockDim.x)
            s_b8[i] = (double)__ldg(l.filt_b + i);
    } else {
        s_w = reinterpret_cast<float *>(sm4);
        s_b = s_w + TC_KP * 4 * F;
        s_st = s_b + 4 * F + warp * TE * SS;
        for (int i = threadIdx.x; i < TC_KP * 4 * F; i += blockDim.x) {
            const int k = i / (4 * F), n = i - k * 4 * F;
            s_w[tc_w_addr(k, n)] = k < c.K ? __ldg(l.filt_wt + i) : 0.f;
        }
        for (int i = threadIdx.x; i < 4 * F; i += blockDim.x)
            s_b[i] = __ldg(l.filt_b + i);
    }
    __syncthreads();

    const edge_lane el = edge_lane_of<CPL>(c, lane);
    const int D = el.D, G = el.G, f0 = el.f0, vx_off = el.vx_off;
    const bool en = c.rbf == ET_RBF_EXPNORM;
    for (int t = blockIdx.x * W + warp; t < c.n_local; t += gridDim.x * W) {
        float q[CPL], ax[CPL], av[3][CPL];
        ldg_vec<CPL>(l.qkv + (size_t)t * 5 * F + f0, q);
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            ax[j] = 0.f;
            av[0][j] = av[1][j] = av[2][j] = 0.f;
        }
        const int e0 = c.row_off[t], e1 = c.row_off[t + 1];
        for (int cb = e0; cb < e1; cb += TE) {
            const int nv = min(TE, e1 - cb);
            /* lane ie = lane mod TE: edge cb + ie's geometry, sender, attention cutoff c(r) and
               the gates' direction factor (vc ? c : 1) / r (0: the self-loop, empty slots) */
            const int ie = lane & (TE - 1);
            float4 geo = make_float4(0.f, 0.f, 0.f, c.cu);
            int src = t;
            if (ie < nv) {
                geo = c.e_geo[cb + ie];
                src = c.e_src[cb + ie];
            }
            const float ccl = ie < nv ? cutoff_pi(geo.w, c.cl, c.cu, nullptr) : 0.f;
            const float invsl = ie < nv && src != t ? (c.vc ? ccl : 1.f) / geo.w : 0.f;
            /* the basis f_k(r) (0 for empty slots and k >= K), as stage_rbf_of evaluates it:
               E8 = 0, edges g and g + 8 for k = 4 s + t4 (the A fragments); E8 = 1, edge g for
               k = 4 s + t4 (B fragments of k-step s / 4) */
            constexpr int NM = E8 ? 1 : 2;
            float a[NM][8];
#pragma unroll
            for (int m = 0; m < NM; m++) {
                const int e = g + 8 * m;
                const float r = __shfl_sync(FULL, geo.w, e);
                const bool ok = e < nv;
                const float rr = ok ? r : c.cu;
                const float phi = en ? cutoff_pi(rr, 0.0f, c.cu, nullptr) : 0.f;
                const float u = en ? expf(c.alpha * (c.cl - rr)) : 0.f;
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    const int k = 4 * s + t4;
                    float f = 0.f;
                    if (ok && k < c.K) {
                        const float ak = __ldg(c.rbf_a + k), bk = c.rbf_b ? __ldg(c.rbf_b + k) : 0.f;
                        f = en ? et_expnorm_k_f(u, phi, 0.f, c.alpha, ak, bk, nullptr)
                               : rbf_k_pi(c, rr, ak, bk, nullptr);
                    }
                    a[m][s] = f;
                }
            }
            float A[TE]; /* attention weight of edge i for this lane's head */
            /* part p for the tile: TE edges x F channels, activated, into the staging */
            auto stage = [&](int p) {
                const bool use = p == 0 ? dk_used<SILU>(c) : dv_used<SILU>(c);
                if constexpr (E8) {
                    double bd[2][4];
#pragma unroll
                    for (int ks = 0; ks < 2; ks++)
#pragma unroll
                        for (int qq = 0; qq < 4; qq++)
                            bd[ks][qq] = (double)a[0][4 * ks + qq];
                    /* MU m-tiles at a time: their DMMAs issued before any result is used
                       (MU = 1: the compiler schedules two unrolled m-tiles; with KS2 the two
                       k-steps into separate accumulators, added after) */
#pragma unroll(MU == 1 ? 2 : 1)
                    for (int mt0 = 0; mt0 < 8; mt0 += MU) {
                        double acc[MU][4], acc2[MU][4];
#pragma unroll
                        for (int u = 0; u < MU; u++) {
                            const int n = p * F + 16 * (mt0 + u) + g; /* channels n, n + 8 */
                            const double b0 = s_b8[n], b1 = s_b8[n + 8];
                            acc[u][0] = acc[u][1] = b0;
                            acc[u][2] = acc[u][3] = b1;
#pragma unroll
                            for (int j = 0; j < 4; j++)
                                acc2[u][j] = 0.0;
                        }
#pragma unroll
                        for (int ks = 0; ks < 2; ks++)
#pragma unroll
                            for (int u = 0; u < MU; u++) {
                                double af[8];
#pragma unroll
                                for (int qq = 0; qq < 4; qq++) {
                                    const double2 w = s_w8[tc8_w_idx(p, mt0 + u, ks, qq, lane)];
                                    af[2 * qq] = w.x;
                                    af[2 * qq + 1] = w.y;
                                }
                                dmma16816(KS2 && ks == 1 ? acc2[u] : acc[u], af, bd[ks]);
                            }
#pragma unroll
                        for (int u = 0; u < MU; u++)
#pragma unroll
                            for (int h = 0; h < 2; h++)
#pragma unroll
                                for (int i = 0; i < 2; i++) {
                                    const float y = (float)(KS2 ? acc[u][2 * h + i] + acc2[u][2 * h + i]
                                                                : acc[u][2 * h + i]);
                                    s_st[(2 * t4 + i) * SS + 16 * (mt0 + u) + g + 8 * h] =
                                        use ? actv<SILU>(c.act, y, nullptr) : 1.f;
                                }
                    }
                } else {
                    double ad[2][8];
#pragma unroll
                    for (int m = 0; m < 2; m++)
#pragma unroll
                        for (int s = 0; s < 8; s++)
                            ad[m][s] = (double)a[m][s];
#pragma unroll 2
                    for (int jj = 0; jj < NT; jj++) {
                        const int nb = p * F + 8 * jj; /* the n-tile's first channel */
                        double acc[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
                        for (int S = 0; S < 2; S++) {
                            double af[8], bf[4];
#pragma unroll
                            for (int qq = 0; qq < 4; qq++) {
                                const int s = 4 * S + qq;
                                af[2 * qq] = ad[0][s];
                                af[2 * qq + 1] = ad[1][s];
                                bf[qq] = (double)s_w[tc_w_addr(4 * s + t4, nb + g)];
                            }
                            dmma16816(acc, af, bf);
                        }
                        const float2 b2 = *reinterpret_cast<const float2 *>(s_b + nb + 2 * t4);
                        float y[4] = {(float)acc[0] + b2.x, (float)acc[1] + b2.y,
                                      (float)acc[2] + b2.x, (float)acc[3] + b2.y};
#pragma unroll
                        for (int qq = 0; qq < 4; qq++)
                            y[qq] = use ? actv<SILU>(c.act, y[qq], nullptr) : 1.f;
                        *reinterpret_cast<float2 *>(s_st + g * SS + 8 * jj + 2 * t4) =
                            make_float2(y[0], y[1]);
                        *reinterpret_cast<float2 *>(s_st + (g + 8) * SS + 8 * jj + 2 * t4) =
                            make_float2(y[2], y[3]);
                    }
                }
            };
            /* The sender rows part P's messages read (NR per edge: k; v; v gate 1 and vec;
               v gate 2), gathered for B edges at once (TC_B) so that their latencies overlap,
               with PIPE the next batch's while this one is used (the first batch's before the
               part's MMAs). Empty slots read the receiver's row (src = t): valid memory. */
            auto gather = [&](auto PC, int i0, auto &rw) {
                constexpr int P = decltype(PC)::value;
                constexpr int B = std::extent<std::remove_reference_t<decltype(rw)>, 0>::value;
#pragma unroll
                for (int b = 0; b < B; b++) {
                    const int s = __shfl_sync(FULL, src, (i0 + b) & (TE - 1));
                    const float *srow = l.qkv + (size_t)s * 5 * F;
                    if constexpr (P == 0) {
                        ldg_vec<CPL>(srow + F + f0, rw[b][0]);
                    } else if constexpr (P == 1) {
                        ldg_vec<CPL>(srow + vx_off, rw[b][0]);
                    } else if constexpr (P == 2) {
                        ldg_vec<CPL>(srow + vx_off + D, rw[b][0]);
                        const float *vrow = l.vec + (size_t)s * 3 * F + f0;
#pragma unroll
                        for (int cx = 0; cx < 3; cx++) {
                            if (l.vec)
                                ldg_vec<CPL>(vrow + cx * F, rw[b][1 + cx]);
                            else
#pragma unroll
                                for (int j = 0; j < CPL; j++)
                                    rw[b][1 + cx][j] = 0.f;
                        }
                    } else {
                        ldg_vec<CPL>(srow + vx_off + 2 * D, rw[b][0]);
                    }
                }
            };
            /* the messages of part P for edge i (< nv), lane = channels f0 .. f0 + CPL - 1 */
            auto message = [&](auto PC, int i, const float (&rw)[P_NR_MAX][CPL]) {
                constexpr int P = decltype(PC)::value;
                float fv[CPL];
                ld_vec<CPL>(s_st + i * SS + f0, fv);
                const float cc = __shfl_sync(FULL, ccl, i);
                const float sv = c.vc ? cc : 1.f;
                if constexpr (P == 0) {
                    float part = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        part = fmaf(q[j] * rw[0][j], fv[j], part);
                    const float aa = actv<SILU>(c.attn_act, group_sum(part, G), nullptr);
                    A[i] = (c.vc ? aa : aa * cc) * sv;
                } else if constexpr (P == 1) {
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        ax[j] = fmaf(rw[0][j] * fv[j], A[i], ax[j]);
                } else if constexpr (P == 2) {
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        const float g1 = rw[0][j] * fv[j] * sv;
#pragma unroll
                        for (int cx = 0; cx < 3; cx++)
                            av[cx][j] = fmaf(rw[1 + cx][j], g1, av[cx][j]);
                    }
                } else {
                    const float invs = __shfl_sync(FULL, invsl, i);
                    const float dirs[3] = {__shfl_sync(FULL, geo.x, i) * invs,
                                           __shfl_sync(FULL, geo.y, i) * invs,
                                           __shfl_sync(FULL, geo.z, i) * invs};
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        const float g2 = rw[0][j] * fv[j];
#pragma unroll
                        for (int cx = 0; cx < 3; cx++)
                            av[cx][j] = fmaf(g2, dirs[cx], av[cx][j]);
                    }
                }
            };
            auto part = [&](auto PC) {
                constexpr int P = decltype(PC)::value;
                constexpr int B = P == 2 ? (TB > 1 ? TB / 2 : 1) : TB;
                float rw[B][P_NR_MAX][CPL];
                stage(P);
                __syncwarp();
#pragma unroll
                for (int i0 = 0; i0 < TE; i0 += B) {
                    if (i0 >= nv)
                        break;
                    gather(PC, i0, rw);
#pragma unroll
                    for (int b = 0; b < B; b++)
                        if (i0 + b < nv)
                            message(PC, i0 + b, rw[b]);
                }
                __syncwarp();
            };
            part(std::integral_constant<int, 0>{});
            part(std::integral_constant<int, 1>{});
            part(std::integral_constant<int, 2>{});
            part(std::integral_constant<int, 3>{});
        }
        st_vec<CPL>(l.X + (size_t)t * F + f0, ax);
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
            st_vec<CPL>(l.V + (size_t)t * 3 * F + (size_t)cx * F + f0, av[cx]);
    }
}

template <int CPL, int W, int TB, int E8, int MU = 1, int KS2 = 0>
static cudaError_t launch_fwd_tc_v(cudaStream_t s, const et_edge_common *c, const et_edge_layer *l)
{
    const auto kern = by_act(c, k_edge_fwd_tc<CPL, ACT_ANY, W, TB, E8, MU, KS2>,
                             k_edge_fwd_tc<CPL, ACT_SILU, W, TB, E8, MU, KS2>,
                             k_edge_fwd_tc<CPL, ACT_SILU_FAST, W, TB, E8, MU, KS2>,
                             k_edge_fwd_tc<CPL, ACT_SILU_FAST_DKV, W, TB, E8, MU, KS2>);
    const size_t smem = tc_smem_bytes<CPL, E8>(W);
    int grid = 0;
    const cudaError_t e = resident_grid(kern, smem, W, c->n_local, &grid);
    if (e != cudaSuccess)
        return e;
    kern<<<grid, 32 * W, smem, s>>>(*c, *l);
    return cudaGetLastError();
}

/* DS4SCI_CUDA_TC=1: 16-edge tiles, =2: 8-edge tiles with the weights in float64 (F = 128;
   other F: 16-edge tiles), =3: as 2 with 2 m-tiles' DMMAs issued before their results are
   used (2: the compiler's schedule of 2 unrolled m-tiles), =4: as 2 with the k-steps in
   separate accumulators, =5: 4 m-tiles at a time with 12 warps (168 registers); measured side
   by side */
template <int CPL>
static cudaError_t launch_fwd_tc(cudaStream_t s, const et_edge_common *c, const et_edge_layer *l)
{
    if constexpr (CPL == 4) {
        if (c->tc == 2)
            return launch_fwd_tc_v<CPL, TC_WARPS, 4, 1>(s, c, l);
        if (c->tc == 3)
            return launch_fwd_tc_v<CPL, TC_WARPS, 4, 1, 2, 0>(s, c, l);
        if (c->tc == 4)
            return launch_fwd_tc_v<CPL, TC_WARPS, 4, 1, 1, 1>(s, c, l);
        if (c->tc == 5)
            return launch_fwd_tc_v<CPL, 12, 4, 1, 4, 0>(s, c, l);
    }
    return launch_fwd_tc_v<CPL, TC_WARPS, 4, 0>(s, c, l);
}

/* Whether et_edge_forward_tc takes this layer (otherwise k_edge_fwd does). */
extern "C" int et_edge_forward_tc_ok(int CPL, int split, const et_edge_common *c)
{
    return split == 1 && (CPL == 2 || CPL == 4) && c->F == 32 * CPL && c->K >= 1 &&
           c->K <= TC_KP && c->D % CPL == 0;
}

extern "C" cudaError_t et_edge_forward_tc(cudaStream_t s, int CPL, const et_edge_common *c,
                                          const et_edge_layer *l)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (CPL == 4)
        return launch_fwd_tc<4>(s, c, l);
    if (CPL == 2)
        return launch_fwd_tc<2>(s, c, l);
    return cudaErrorInvalidValue;
}
