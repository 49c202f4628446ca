/*
 * edge_fwd_tc.cu - the fused forward edge pass of an attention layer with the radial filters on
 * the float64 tensor cores (docs/tensor_cores.md, last section; docs/gpu.md v20-v21 and "Left
 * to do" 1). The default (DS4SCI_CUDA_TC=0: k_edge_fwd) since v27, for layers with F = 128,
 * K <= 32 basis functions and no row split; everything else runs k_edge_fwd (edge_fwd.cu).
 *
 * The same layer as k_edge_fwd (its header has the formulas), in another order: one warp per
 * owned receiver t walks its row in tiles of 8 edges. Per tile and part p (dk, dv value, dv
 * gate 1, dv gate 2) the filter pre-activations are D = W f + b by mma.sync.m16n8k16 .f64 with
 * the weights as the A fragment (channels as M: m-tile mt of part p is channels p F + 16 mt ..
 * + 15, 8 m-tiles x 2 k-steps per part), the basis as B (edges as N: lane (g, t4) evaluates
 * edge g's f_k(r) for k = 4 q + t4 + 16 ks once per tile) and the biases as the accumulators'
 * start. The weights [K][4F] (the layer's filt_wt) are in shared memory once per SM as float64,
 * fragment by fragment (tc_w_idx: a lane's a[2 q], a[2 q + 1] one 16-byte load, a warp's load
 * 512 contiguous bytes: conflict-free, no conversions; 128 KB). The products of float inputs
 * are exact and the sums float64, so pre = float(b + sum) is within one rounding of the exact
 * value (the FFMA filter: up to 33). The 8 x F activations of a part are staged as
 * [edge][channel] (stride F + 4: the C fragment's scalar stores, channels g, g + 8 of edges
 * 2 t4, 2 t4 + 1, are conflict-free) and the message code reads them as k_edge_fwd reads its
 * filters (lane = CPL channels), with the sender rows of 4 edges gathered at once: attention
 * from dk, then X from the value part, then V from the two gates. The terms of V are added
 * gate by gate (all edges' vec[s] g1 terms, then the g2 d terms), not edge by edge: other last
 * bits than k_edge_fwd.
 *
 * Measured (docs/gpu.md v21): the same speed as k_edge_fwd (1M atoms 1.823-1.838 against
 * 1.824-1.830 s/step; v22, with each part's first sender rows loaded before its DMMAs: 1.813
 * against 1.834; v27: 1.682 / 1.673 against 1.701 / 1.694, 97k atoms -2.5%) with half its
 * instructions (ncu: 2.61e8 against 5.36e8 for layer 5 at 10,648 atoms) but issue 32% busy
 * against 64%: latency bound (the gathers and the messages; v27: the six products of bf16
 * pieces on mma.bf16 instead of the DMMAs, branch tc-bf16x6, run at the same speed). Tried and
 * slower: 16-edge tiles with the basis as A and float weights (+7%), fewer warps with more
 * gathers in flight (8 warps +22%, 12 +12%), the k-steps in separate accumulators (+3%), 4
 * m-tiles at a time with 12 warps (+5%).
 */
#include "edge_common.cuh"
#include "edge_gates.cuh"

constexpr int TC_WARPS = 16; /* one block per SM: the weights once per SM */
constexpr int TC_F = 128;    /* the one width it takes: 8 m-tiles of 16 channels per part */
constexpr int TC_KP = 32;    /* basis functions padded to two k-steps of 16 */
constexpr int TC_TE = 8;     /* edges per tile */
constexpr int TC_TB = 4;     /* edges whose sender rows are gathered at once (gate 1: 2) */
constexpr int TC_SS = TC_F + 4; /* staging row stride */
constexpr int P_NR_MAX = 4;  /* sender rows per edge a part reads at most (gate 1: v1, vec x 3) */

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

/* index (in double2) of the fragment pair q of lane ln for part p, m-tile mt, k-step ks */
static __device__ __forceinline__ int tc_w_idx(int p, int mt, int ks, int q, int ln)
{
    return (((p * 8 + mt) * 2 + ks) * 4 + q) * 32 + ln;
}

static size_t tc_smem_bytes()
{
    constexpr int F = TC_F;
    return sizeof(double) * ((size_t)TC_KP * 4 * F + 4 * F) +
           sizeof(float) * (size_t)TC_WARPS * TC_TE * TC_SS;
}

template <int SILU, bool DYN>
static __global__ void __launch_bounds__(32 * TC_WARPS, 1)
    k_edge_fwd_tc(const et_edge_common c, const et_edge_layer l)
{
    constexpr int F = TC_F, CPL = F / 32, SS = TC_SS, TE = TC_TE, W = TC_WARPS;
    constexpr unsigned FULL = 0xffffffffu;
    extern __shared__ float4 sm4[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    double2 *const s_w = reinterpret_cast<double2 *>(sm4);
    double *const s_b = reinterpret_cast<double *>(s_w + TC_KP * 4 * F / 2);
    float *const s_st = reinterpret_cast<float *>(s_b + 4 * F) + warp * TE * SS;
    for (int i = threadIdx.x; i < TC_KP * 4 * F / 2; i += blockDim.x) {
        const int ln = i & 31, q = (i >> 5) & 3, ks = (i >> 7) & 1, mt = (i >> 8) & 7, p = i >> 11;
        const int k = 16 * ks + 4 * q + (ln & 3), n = p * F + 16 * mt + (ln >> 2);
        s_w[i] = k < c.K ? make_double2((double)__ldg(l.filt_wt + (size_t)k * 4 * F + n),
                                        (double)__ldg(l.filt_wt + (size_t)k * 4 * F + n + 8))
                         : make_double2(0.0, 0.0);
    }
    for (int i = threadIdx.x; i < 4 * F; i += blockDim.x)
        s_b[i] = (double)__ldg(l.filt_b + i);
    __syncthreads();

    const edge_lane el = edge_lane_of<CPL>(c, lane);
    const int D = el.D, G = el.G, f0 = el.f0, vx_off = el.vx_off;
    const bool en = c.rbf == ET_RBF_EXPNORM;
    /* DYN: the rows from the counter c.work (edge_item), else round-robin (a compile-time
       switch: ptxas spills 16 B more in the SILU_FAST_DKV kernel with a run-time one) */
    for (int it = edge_item(c.work, DYN, blockIdx.x * W + warp, lane); it < c.n_local;
         it = edge_item(c.work, DYN, it + gridDim.x * W, lane)) {
        const int t = edge_row(c, it); /* the it-th row of the pass */
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
            const float invsl = ie < nv && geo.w != 0.f ? (c.vc ? ccl : 1.f) / geo.w : 0.f;
            /* the basis f_k(r) of edge g for k = 4 s + t4 (0 for empty slots and k >= K), as
               stage_rbf_of evaluates it: B fragment q of k-step ks is a[4 ks + q] */
            float a[8];
            {
                const float r = __shfl_sync(FULL, geo.w, g);
                const bool ok = g < nv;
                const float rr = ok ? r : c.cu;
                const float phi = en ? cutoff_pi(rr, 0.0f, c.cu, nullptr) : 0.f;
                const float u = en ? expf(c.alpha * (c.cl - rr)) : 0.f;
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    const int k = 4 * s + t4;
                    float f = 0.f;
                    if (ok && k < c.K) {
                        const float ak = __ldg(c.rbf_a + k), bk = c.rbf_b ? __ldg(c.rbf_b + k) : 0.f;
                        f = en ? expnorm_k(c, u, phi, 0.f, ak, bk, nullptr)
                               : rbf_k_pi(c, rr, ak, bk, nullptr);
                    }
                    a[s] = f;
                }
            }
            /* whether k-step 1 (k = 16 .. 31) holds a nonzero basis value of the tile: with
               c.kwin, a tile of zeros there takes the first k-step only (D = b + W f is the
               same: the skipped products are exact zeros; with the flush of expnorm_k, every
               tile of edges longer than ~1.9 A at cu = 5 A); warp-uniform. Two copies of the
               tile's DMMA loop (stage_ks): 0.5% faster at 1M atoms than one rolled k-step
               loop, though the default instantiation spills 12 B (docs/gpu.md v33) */
            const bool ks1 = !c.kwin || __any_sync(FULL, a[4] != 0.f || a[5] != 0.f ||
                                                             a[6] != 0.f || a[7] != 0.f);
            float A[TE]; /* attention weight of edge i for this lane's head */
            /* part p for the tile: TE edges x F channels, activated, into the staging */
            auto stage_ks = [&](auto NC, int p) {
                constexpr int NKS = decltype(NC)::value; /* k-steps */
                const bool use = p == 0 ? dk_used<SILU>(c) : dv_used<SILU>(c);
                double bd[NKS][4];
#pragma unroll
                for (int ks = 0; ks < NKS; ks++)
#pragma unroll
                    for (int qq = 0; qq < 4; qq++)
                        bd[ks][qq] = (double)a[4 * ks + qq];
#pragma unroll 2
                for (int mt = 0; mt < 8; mt++) {
                    const int n = p * F + 16 * mt + g; /* channels n, n + 8 */
                    const double b0 = s_b[n], b1 = s_b[n + 8];
                    double acc[4] = {b0, b0, b1, b1};
#pragma unroll
                    for (int ks = 0; ks < NKS; ks++) {
                        double af[8];
#pragma unroll
                        for (int qq = 0; qq < 4; qq++) {
                            const double2 w = s_w[tc_w_idx(p, mt, ks, qq, lane)];
                            af[2 * qq] = w.x;
                            af[2 * qq + 1] = w.y;
                        }
                        dmma16816(acc, af, bd[ks]);
                    }
#pragma unroll
                    for (int h = 0; h < 2; h++)
#pragma unroll
                        for (int i = 0; i < 2; i++) {
                            const float y = (float)acc[2 * h + i];
                            s_st[(2 * t4 + i) * SS + 16 * mt + g + 8 * h] =
                                use ? actv<SILU>(c.act, y, nullptr) : 1.f;
                        }
                }
            };
            auto stage = [&](int p) {
                if (ks1)
                    stage_ks(std::integral_constant<int, 2>{}, p);
                else
                    stage_ks(std::integral_constant<int, 1>{}, p);
            };
            /* The sender rows part P's messages read (per edge: k; v; v gate 1 and vec; v gate
               2), gathered for B edges at once so that their latencies overlap (one at a time:
               +3% at 1M atoms with 16-edge tiles). Empty slots read the receiver's row (src =
               t): valid memory. */
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
                        ldg_vec_rows<CPL>(l.vec, s, F, f0, &rw[b][1]);
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
                constexpr int B = P == 2 ? TC_TB / 2 : TC_TB;
                float rw[B][P_NR_MAX][CPL];
                /* the first rows' loads in flight during the stage's DMMAs (nv >= 1; not for
                   gate 1, whose four rows per edge would not fit in the registers) */
                if constexpr (P != 2)
                    gather(PC, 0, rw);
                stage(P);
                __syncwarp();
#pragma unroll
                for (int i0 = 0; i0 < TE; i0 += B) {
                    if (i0 >= nv)
                        break;
                    if (i0 > 0 || P == 2)
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

static cudaError_t launch_fwd_tc(cudaStream_t s, const et_edge_common *c, const et_edge_layer *l)
{
    const auto kern =
        c->work ? by_act(c, k_edge_fwd_tc<ACT_ANY, true>, k_edge_fwd_tc<ACT_SILU, true>,
                         k_edge_fwd_tc<ACT_SILU_FAST, true>, k_edge_fwd_tc<ACT_SILU_FAST_DKV, true>)
                : by_act(c, k_edge_fwd_tc<ACT_ANY, false>, k_edge_fwd_tc<ACT_SILU, false>,
                         k_edge_fwd_tc<ACT_SILU_FAST, false>,
                         k_edge_fwd_tc<ACT_SILU_FAST_DKV, false>);
    const size_t smem = tc_smem_bytes();
    int grid = 0;
    const cudaError_t e = resident_grid(kern, smem, TC_WARPS, c->n_local, &grid);
    if (e != cudaSuccess)
        return e;
    kern<<<grid, 32 * TC_WARPS, smem, s>>>(*c, *l);
    return cudaGetLastError();
}

/* Whether et_edge_forward_tc takes this layer (otherwise k_edge_fwd does). */
extern "C" int et_edge_forward_tc_ok(int CPL, int split, const et_edge_common *c)
{
    return split == 1 && CPL == TC_F / 32 && c->F == TC_F && c->K >= 1 && c->K <= TC_KP &&
           c->D % CPL == 0;
}

extern "C" cudaError_t et_edge_forward_tc(cudaStream_t s, int CPL, const et_edge_common *c,
                                          const et_edge_layer *l)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (CPL != TC_F / 32)
        return cudaErrorInvalidValue;
    return launch_fwd_tc(s, c, l);
}
