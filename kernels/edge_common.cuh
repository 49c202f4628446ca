/*
 * edge_common.cuh - pieces shared by the fused edge kernels (edge_fwd.cu, edge_bwd.cu):
 * shared-memory layout, the radial basis staged per warp, and the filter evaluation
 * pre = W f(r) + b for a chunk of E edges with W in shared memory.
 *
 * Thread mapping: one warp per atom; lane l holds the CPL = max(1, F/32) scalar channels
 * f = l*CPL .. l*CPL+CPL-1, all in one head (CPL divides D), and the matching channels of
 * every 3F value part (ET_VIDX). The G = D/CPL lanes of a head are consecutive. When F < 32
 * the lanes l >= F are idle ("off"): they address channel 0 (valid memory) and hold zero
 * features, so they add nothing to any sum, and they store nothing.
 *
 * Filter weights in shared memory, "transposed lane-major": s_wt[k][p][lane][j] =
 * W_p[channel(p, lane, j)][k] for part p (0: dk, 1..3: dv value / gate 1 / gate 2), so that a
 * warp reading part p of row k reads 32*CPL consecutive floats (no bank conflicts).
 */
#ifndef DS4SCI_EDGE_COMMON_CUH
#define DS4SCI_EDGE_COMMON_CUH

#include <climits>
#include <type_traits>

#include "et_cuda.cuh"

/*
 * The warp's index in the block, threadIdx.x >> 5, as a value that ptxas knows to be the same
 * in every lane (redux.sync: the result of a warp-wide reduction is, and lives in a uniform
 * register). Everything derived from it (the work item, the row, the chunk bounds, the metadata
 * read from the warp's shared scratch) is then provably warp-uniform too, so that branches on
 * those values keep the warp converged and the shuffles need no divergence checks (BRA.DIV,
 * BSSY/BSYNC; with threadIdx.x >> 5, ptxas must allow for 2D blocks, where it is not uniform).
 * The whole warp must call it (kernel entry).
 */
static __device__ __forceinline__ int warp_uniform()
{
    return (int)__reduce_max_sync(0xffffffffu, threadIdx.x >> 5);
}

template <int CPL> static __device__ __forceinline__ void ld_vec(const float *p, float (&v)[CPL])
{
    if constexpr (CPL == 1) {
        v[0] = p[0];
    } else if constexpr (CPL == 2) {
        float2 a = *reinterpret_cast<const float2 *>(p);
        v[0] = a.x;
        v[1] = a.y;
    } else {
#pragma unroll
        for (int q = 0; q < CPL / 4; q++) {
            float4 a = *reinterpret_cast<const float4 *>(p + 4 * q);
            v[4 * q] = a.x;
            v[4 * q + 1] = a.y;
            v[4 * q + 2] = a.z;
            v[4 * q + 3] = a.w;
        }
    }
}

template <int CPL> static __device__ __forceinline__ void st_vec(float *p, const float (&v)[CPL])
{
    if constexpr (CPL == 1) {
        p[0] = v[0];
    } else if constexpr (CPL == 2) {
        *reinterpret_cast<float2 *>(p) = make_float2(v[0], v[1]);
    } else {
#pragma unroll
        for (int q = 0; q < CPL / 4; q++)
            *reinterpret_cast<float4 *>(p + 4 * q) =
                make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
}

/*
 * Activations in the edge kernels. SILU = true (activation and attn_activation both SiLU, the
 * common case) inlines SiLU; otherwise one out-of-line function evaluates any activation. The
 * fully unrolled edge loops evaluate 16-64 activations per edge: inlining et_activate_grad's
 * five-way switch for each made the kernels too large for the instruction cache (measured:
 * 69% of stall cycles waiting for instruction fetch).
 */
static __device__ __noinline__ float2 act_any(int a, float x)
{
    float d;
    float y = et_activate_grad_f((et_act)a, x, &d);
    return make_float2(y, d);
}

/*
 * SiLU in the edge kernels: x s(x) with s = 1 / (1 + exp(-x)), the reciprocal by the hardware
 * approximation (div.approx, 2 ulp; 1 + exp(-x) >= 1, and +inf gives s = 0) instead of the
 * IEEE division, whose fix-up sequence and slow-path branch cost more than the exponential.
 * FAST (the default): the exponential as __expf does it, ex2.approx of -x log2(e) (relative
 * error ~|x| 2^-22), but the flush-to-zero form: __expf's ex2.approx.f32 keeps subnormal
 * results by a compare and two predicated multiplies, and those only arise for
 * exp(-x) < 2^-126, where 1 + exp(-x) rounds to 1 either way (the same s, bit for bit, 3
 * instructions fewer). DS4SCI_CUDA_FASTEXP=0 takes expf. Measured on the H200 (docs/gpu.md
 * v6): forces vs the float64 CPU path and TorchMD-Net's float64 golden data are the same with
 * both (golden median 3.9e-7 vs 3.8e-7, TorchMD-Net's own float32 5.4e-7; reference model 1k
 * atoms 1.32e-6 vs 1.31e-6), so the faster one is the default.
 * The derivative s (1 + x (1 - s)) is evaluated as y (1 - s) + s with y = x s (one multiply
 * fewer). The result differs from et_silu_grad_f by a few ulp.
 */
static __device__ __forceinline__ float exp2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <bool FAST> static __device__ __forceinline__ float silu_fast(float x, float *d)
{
    const float e = FAST ? exp2_ftz(x * -1.4426950408889634f) : expf(-x);
    const float s = __fdividef(1.0f, 1.0f + e);
    const float y = x * s;
    if (d)
        *d = fmaf(y, 1.0f - s, s);
    return y;
}

/* Activation of the edge kernels: SILU = ACT_ANY any activation (out of line), ACT_SILU SiLU
   (both the filter and the attention activation), ACT_SILU_FAST SiLU with __expf,
   ACT_SILU_FAST_DKV the same for a layer with both filters dk and dv (distance_influence
   "both", TorchMD-Net's default): their tests and the 1.0f defaults leave the per-edge code
   (docs/gpu.md v19: ~20 instructions per edge in the forward, ~37 in the merged backward).
   ACT_SILU_FAST_DKV also takes 4 lanes per head (G = D / CPL = 4: 8 heads at F = 32 CPL,
   TorchMD-Net's default), so that a head sum is two shuffles with no test of G (head_sum:
   with G at run time, one branch per sum and the general loop beside it, ~7 instructions per
   edge in the merged backward); ACT_SILU_FAST_DKV_G is the same for any G (by_act). */
enum {
    ACT_ANY = 0,
    ACT_SILU = 1,
    ACT_SILU_FAST = 2,
    ACT_SILU_FAST_DKV = 3,
    ACT_SILU_FAST_DKV_G = 4
};

/* whether the layer has the filter dk (dv): known at compile time for ACT_SILU_FAST_DKV(_G) */
template <int SILU> static __device__ __forceinline__ bool dk_used(const et_edge_common &c)
{
    return SILU == ACT_SILU_FAST_DKV || SILU == ACT_SILU_FAST_DKV_G || c.use_dk;
}
template <int SILU> static __device__ __forceinline__ bool dv_used(const et_edge_common &c)
{
    return SILU == ACT_SILU_FAST_DKV || SILU == ACT_SILU_FAST_DKV_G || c.use_dv;
}

/* group_sum over the G lanes of a head, G = 4 at compile time for ACT_SILU_FAST_DKV (the same
   butterfly, bit for bit) */
template <int SILU> static __device__ __forceinline__ float head_sum(float v, int G)
{
    return group_sum(v, SILU == ACT_SILU_FAST_DKV ? 4 : G);
}

template <int SILU> static __device__ __forceinline__ float actv(int a, float x, float *d)
{
    if constexpr (SILU != ACT_ANY) {
        (void)a;
        return silu_fast<SILU >= ACT_SILU_FAST>(x, d);
    } else {
        float2 r = act_any(a, x);
        if (d)
            *d = r.y;
        return r.x;
    }
}

/* y[j] = act(x[j]) for the lane's CPL channels when use (the layer has that filter), else
   y[j] = 1; with d, also d[j] = act'(x[j]), else 0. One branch for the CPL channels (per
   channel, the branches and the moves of the constants cost ~3 instructions each). */
template <int CPL, int SILU>
static __device__ __forceinline__ void actv_vec(bool use, int a, const float (&x)[CPL],
                                                float (&y)[CPL], float (*d)[CPL] = nullptr)
{
    if (use) {
#pragma unroll
        for (int j = 0; j < CPL; j++)
            y[j] = actv<SILU>(a, x[j], d ? &(*d)[j] : nullptr);
    } else {
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            y[j] = 1.f;
            if (d)
                (*d)[j] = 0.f;
        }
    }
}

/* The instantiation of a kernel template a launch uses: by_act(c, k<.., ACT_ANY>,
   k<.., ACT_SILU>, k<.., ACT_SILU_FAST>[, k<.., ACT_SILU_FAST_DKV>[, k<.., ACT_SILU_FAST_DKV_G>]]).
   With fast_dkv_g, fast_dkv is taken for D = 4 CPL (G = 4) only: it assumes it (head_sum,
   edge_d). */
template <class Kern>
static inline Kern by_act(const et_edge_common *c, Kern any, Kern silu, Kern fast,
                          Kern fast_dkv = nullptr, Kern fast_dkv_g = nullptr)
{
    if (c->act != ET_ACT_SILU || c->attn_act != ET_ACT_SILU)
        return any;
    if (!c->fastexp)
        return silu;
    if (!fast_dkv || !c->use_dk || !c->use_dv)
        return fast;
    return fast_dkv_g && c->D != 4 * edge_cpl(c->F) ? fast_dkv_g : fast_dkv;
}

/* Zero a lane's channels when it is off (F < 32). */
template <int CPL> static __device__ __forceinline__ void zero_off(bool on, float (&v)[CPL])
{
    if (!on)
#pragma unroll
        for (int j = 0; j < CPL; j++)
            v[j] = 0.f;
}

/* Read-only global load of CPL floats through the non-coherent cache. */
template <int CPL> static __device__ __forceinline__ void ldg_vec(const float *p, float (&v)[CPL])
{
    if constexpr (CPL == 1) {
        v[0] = __ldg(p);
    } else if constexpr (CPL == 2) {
        float2 a = __ldg(reinterpret_cast<const float2 *>(p));
        v[0] = a.x;
        v[1] = a.y;
    } else {
#pragma unroll
        for (int q = 0; q < CPL / 4; q++) {
            float4 a = __ldg(reinterpret_cast<const float4 *>(p + 4 * q));
            v[4 * q] = a.x;
            v[4 * q + 1] = a.y;
            v[4 * q + 2] = a.z;
            v[4 * q + 3] = a.w;
        }
    }
}

/*
 * CosineCutoff(cl, cu) at r as et_cutoff_f (gnn/et_math.h), with cos/sin(pi x) from sincospif
 * (argument reduction by an integer, no slow path) instead of cosf/sinf(pi x): differs from
 * et_cutoff_f by the rounding of pi x (~1e-7 absolute). dc (non-NULL) gets dc/dr.
 */
static __device__ __forceinline__ float cutoff_pi(float r, float cl, float cu, float *dc)
{
    float x, scale;
    if (cl > 0.f) {
        if (!(r > cl && r < cu)) {
            if (dc)
                *dc = 0.f;
            return 0.f;
        }
        x = 2.0f * (r - cl) / (cu - cl) + 1.0f;
        scale = 2.0f * (float)ET_PI / (cu - cl);
    } else {
        if (!(r < cu)) {
            if (dc)
                *dc = 0.f;
            return 0.f;
        }
        x = r / cu;
        scale = (float)ET_PI / cu;
    }
    if (dc) {
        float sn, cs;
        sincospif(x, &sn, &cs);
        *dc = -0.5f * scale * sn;
        return 0.5f * (cs + 1.0f);
    }
    return 0.5f * (cospif(x) + 1.0f);
}

/* ExpNormal basis function k (et_expnorm_k_f), 0 (and *df 0) where its exponent beta (u - mu)^2
   exceeds c.rbf_flush (et_cuda.cuh ET_RBF_FLUSH: values below ~2^-29 of the peak) */
static __device__ __forceinline__ float expnorm_k(const et_edge_common &c, float u, float phi,
                                                  float dphi, float ak, float bk, float *df)
{
    const float du = u - ak;
    if (bk * (du * du) > c.rbf_flush) {
        if (df)
            *df = 0.f;
        return 0.f;
    }
    return et_expnorm_k_f(u, phi, dphi, c.alpha, ak, bk, df);
}

/* Radial basis function k at r (rbf_k of et_cuda.cuh with cutoff_pi as the envelope). */
static __device__ __forceinline__ float rbf_k_pi(const et_edge_common &c, float r, float ak,
                                                 float bk, float *df)
{
    if (c.rbf == ET_RBF_EXPNORM) {
        float dphi = 0.f;
        const float phi = cutoff_pi(r, 0.0f, c.cu, df ? &dphi : nullptr);
        const float u = expf(c.alpha * (c.cl - r));
        return expnorm_k(c, u, phi, dphi, ak, bk, df);
    }
    const float x = r - ak;
    /* flushed past c.rbf_flush as expnorm_k (rbf_coeff < 0) */
    const float v = -c.rbf_coeff * (x * x) > c.rbf_flush ? 0.f : expf(c.rbf_coeff * (x * x));
    if (df)
        *df = v * 2.0f * c.rbf_coeff * x;
    return v;
}

/*
 * Stage f_k(r_i) (and f'_k(r_i) into s_drbf when DRBF) for the nv <= E edges of a chunk into
 * this warp's s_rbf[k][E] / s_drbf[k][E]; edges i >= nv get 0. (DRBF a compile-time choice: with
 * "s_drbf ? &df : nullptr" at run time the kernel kept df and dphi in local memory wherever the
 * compiler could not prove s_drbf non-NULL.) The expnorm basis's per-edge parts (the envelope
 * phi, phi' and u = exp(alpha (cl - r))) do not depend on k: lane l evaluates them for edge
 * l mod E only and the lanes exchange them by shuffles, instead of every lane evaluating them
 * for every edge (the same functions of the same r: the same bits; docs/gpu.md v19). PAR =
 * false: every lane evaluates them (the 3 E values held across the k loop spill in kernels
 * capped at 64 registers or fewer: the neighbour embedding's, the separate sender pass).
 *
 * Returns the chunk's basis window (kwin_pack; warp-uniform): with WIN and c.kwin, [k0, k1)
 * holds every k at which some staged value (f_k(r_i), or f'_k(r_i) when DRBF) is nonzero.
 * Outside it every staged value is exactly 0, and the filters' k loops over [k0, k1) give the
 * same bits as over [0, K) (fmaf(0, w, a) = a): the expnorm basis exp(-beta (u - mu_k)^2)
 * underflows to 0 ~20 spacings of its means away from the edge's u, so a chunk of 4 edges
 * needs ~21 of 32, and with the flush of values below e^-20 of the peak (expnorm_k, rbf_k_pi)
 * ~11 (docs/gpu.md v32, v33). Without WIN (kernels whose registers have no room for the window):
 * [0, K).
 */
static __host__ __device__ __forceinline__ int kwin_pack(int k0, int k1) { return k0 | k1 << 16; }

template <int E, bool DRBF = false, bool PAR = true, bool WIN = false, class R>
static __device__ __forceinline__ int stage_rbf_of(const et_edge_common &c, R r, int nv,
                                                   int lane, float *s_rbf, float *s_drbf)
{
    static_assert(E <= 32 && (E & (E - 1)) == 0, "lane & (E - 1) maps lanes onto the edges");
    const bool en = c.rbf == ET_RBF_EXPNORM;
    float phi[E], dphi[E], u[E];
    if (PAR && en) {
        const int ie = lane & (E - 1);
        float ri = c.cu; /* phi = 0 for the empty slots */
#pragma unroll
        for (int i = 0; i < E; i++)
            if (i == ie && i < nv)
                ri = r(i);
        float dp = 0.f;
        const float p = cutoff_pi(ri, 0.0f, c.cu, DRBF ? &dp : nullptr);
        const float uu = expf(c.alpha * (c.cl - ri));
#pragma unroll
        for (int i = 0; i < E; i++) {
            phi[i] = __shfl_sync(0xffffffffu, p, i);
            u[i] = __shfl_sync(0xffffffffu, uu, i);
            dphi[i] = DRBF ? __shfl_sync(0xffffffffu, dp, i) : 0.f;
        }
    }
    /* f_k (and f'_k) of the chunk's edges into the staging; whether any of them is nonzero */
    const auto stage_k = [&](int k) {
        const float ak = __ldg(c.rbf_a + k), bk = c.rbf_b ? __ldg(c.rbf_b + k) : 0.f;
        bool nz = false;
#pragma unroll
        for (int i = 0; i < E; i++) {
            float df = 0.f, f = 0.f;
            if (i < nv)
                f = PAR && en ? expnorm_k(c, u[i], phi[i], dphi[i], ak, bk, DRBF ? &df : nullptr)
                              : rbf_k_pi(c, r(i), ak, bk, DRBF ? &df : nullptr);
            s_rbf[k * E + i] = f;
            if (DRBF)
                s_drbf[k * E + i] = df;
            nz |= f != 0.f || df != 0.f;
        }
        return nz;
    };
    if constexpr (!WIN) {
        for (int k = lane; k < c.K; k += 32)
            stage_k(k);
        return kwin_pack(0, c.K);
    }
    int k_lo = c.K, k_hi = 0;
    for (int kb = 0; kb < c.K; kb += 32) {
        const bool nz = kb + lane < c.K && stage_k(kb + lane);
        if (c.kwin) {
            const unsigned m = __ballot_sync(0xffffffffu, nz);
            if (m) {
                k_lo = min(k_lo, kb + __ffs(m) - 1);
                k_hi = kb + 32 - __clz(m);
            }
        }
    }
    if (!c.kwin)
        return kwin_pack(0, c.K);
    /* every value 0: one term, the bias plus 0 */
    return k_hi > k_lo ? kwin_pack(k_lo, k_hi) : kwin_pack(0, 1);
}

/* The attention cutoff c(r) (and c'(r) when dc) of edge lane mod E of a chunk (0 for the empty
   slots), for the lanes to exchange by shuffles (__shfl_sync(..., i) gives edge i's) instead
   of every lane evaluating it for every edge. */
template <int E, class R>
static __device__ __forceinline__ float cutoff_lane(const et_edge_common &c, R r, int nv, int lane,
                                                    float *dc)
{
    static_assert(E <= 32 && (E & (E - 1)) == 0, "lane & (E - 1) maps lanes onto the edges");
    const int ie = lane & (E - 1);
    float ri = c.cu;
#pragma unroll
    for (int i = 0; i < E; i++)
        if (i == ie && i < nv)
            ri = r(i);
    if (ie >= nv) {
        if (dc)
            *dc = 0.f;
        return 0.f;
    }
    return cutoff_pi(ri, c.cl, c.cu, dc);
}

/* r_i from an array r[E] */
template <int E, bool DRBF = false, bool PAR = true>
static __device__ __forceinline__ int stage_rbf(const et_edge_common &c, const float (&r)[E],
                                                int nv, int lane, float *s_rbf, float *s_drbf)
{
    return stage_rbf_of<E, DRBF, PAR>(c, [&](int i) { return r[i]; }, nv, lane, s_rbf, s_drbf);
}

/* The E values of row k of a warp's staged [K][E] array (s_rbf, s_drbf): one 16-byte shared
   load when E = 4. */
template <int E>
static __device__ __forceinline__ void lds_chunk(const float *p, float (&v)[E])
{
    if constexpr (E == 4) {
        const float4 a = *reinterpret_cast<const float4 *>(p);
        v[0] = a.x;
        v[1] = a.y;
        v[2] = a.z;
        v[3] = a.w;
    } else {
#pragma unroll
        for (int i = 0; i < E; i++)
            v[i] = p[i];
    }
}

/*
 * pre[i][p][j] = b_q[ch] + sum_k W_q[ch][k] f_k(r_i), q = P0 + p, for the lane's channels ch of
 * parts P0 .. P0+NP-1 of filters stored with NPT parts per row k, for the E edges staged in
 * s_rbf, k over the window kw (kwin_pack(k0, k1), k1 > k0: stage_rbf_of's, or all of [0, K)).
 * Each weight read from shared memory is used E times.
 */
template <int CPL, int E, int NP, int NPT = NP, int P0 = 0>
static __device__ __forceinline__ void filter_pre(const float *s_wt, const float *s_b,
                                                  const float *s_rbf, int kw, int F, int wl,
                                                  float (&pre)[E][NP][CPL])
{
    const int lane = wl, k0 = kw & 0xffff, k1 = kw >> 16;
    /* row k of the lane's weights */
    const float *w_k = s_wt + (size_t)k0 * NPT * F + P0 * F + lane * CPL;
    const float *rb_k = s_rbf + k0 * E;
    /* k = k0 with the bias as the addend: the accumulators start there without moves */
    {
        float rb[E];
        lds_chunk<E>(rb_k, rb);
#pragma unroll
        for (int p = 0; p < NP; p++) {
            float b[CPL], w[CPL];
            ld_vec<CPL>(s_b + (P0 + p) * F + lane * CPL, b);
            ld_vec<CPL>(w_k + p * F, w);
#pragma unroll
            for (int i = 0; i < E; i++)
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    pre[i][p][j] = fmaf(rb[i], w[j], b[j]);
        }
    }
#pragma unroll 2
    for (int k = k0 + 1; k < k1; k++) {
        rb_k += E;
        w_k += NPT * F;
        float rb[E];
        lds_chunk<E>(rb_k, rb);
#pragma unroll
        for (int p = 0; p < NP; p++) {
            float w[CPL];
            ld_vec<CPL>(w_k + p * F, w);
#pragma unroll
            for (int i = 0; i < E; i++)
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    pre[i][p][j] = fmaf(rb[i], w[j], pre[i][p][j]);
        }
    }
}

/*
 * Filter backward, radial part, for the E edges of a chunk: given gp[i][p][j] = dE/dpre of edge i
 * for the lane's channels of parts P0 .. P0+NP-1 (rows of NPT parts; zero for edges that have no
 * geometry gradient), adds to grl[i] this lane's share of (k over the window kw, as filter_pre)
 *   sum_k g_f_k(i) f'_k(r_i),  g_f_k(i) = sum_ch gp[i][ch] W[ch][k],
 * the caller sums grl[i] over the warp. By linearity the cross-lane sum of g_f_k needs no
 * transpose: each lane multiplies its own partial sum over its channels by f'_k(r_i) (the same
 * for every lane, from s_drbf) and the one warp sum at the end adds the lanes. Each weight read
 * from shared memory serves the E edges.
 */
template <int CPL, int E, int NP, int NPT = NP, int P0 = 0>
static __device__ __forceinline__ void filter_back(const float *s_wt, const float *s_drbf, int kw,
                                                   int F, int wl, const float (&gp)[E][NP][CPL],
                                                   float (&grl)[E])
{
    s_wt += P0 * F;
#pragma unroll 2
    for (int k = kw & 0xffff; k < kw >> 16; k++) {
        float acc[E];
#pragma unroll
        for (int i = 0; i < E; i++)
            acc[i] = 0.f;
#pragma unroll
        for (int p = 0; p < NP; p++) {
            float w[CPL];
            ld_vec<CPL>(s_wt + (size_t)k * NPT * F + p * F + wl * CPL, w);
#pragma unroll
            for (int i = 0; i < E; i++)
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    acc[i] = fmaf(gp[i][p][j], w[j], acc[i]);
        }
        float d[E];
        lds_chunk<E>(s_drbf + k * E, d);
#pragma unroll
        for (int i = 0; i < E; i++)
            grl[i] = fmaf(acc[i], d[i], grl[i]);
    }
}

/*
 * Warp sums of four values at once: lane l returns sum over the warp of v[l >> 3] (lanes 0-7 the
 * sum of v0, 8-15 of v1, 16-23 of v2, 24-31 of v3). The first two butterfly steps exchange only
 * the half of the values the partner keeps: 6 shuffles and 6 adds instead of 20 and 20.
 */
static __device__ __forceinline__ float warp_sum4(float v0, float v1, float v2, float v3, int lane)
{
    const bool h16 = lane & 16, h8 = lane & 8;
    float k0 = h16 ? v2 : v0, k1 = h16 ? v3 : v1; /* kept: (v0, v1) low half, (v2, v3) high */
    k0 += __shfl_xor_sync(0xffffffffu, h16 ? v0 : v2, 16);
    k1 += __shfl_xor_sync(0xffffffffu, h16 ? v1 : v3, 16);
    float d = h8 ? k1 : k0;
    d += __shfl_xor_sync(0xffffffffu, h8 ? k0 : k1, 8);
#pragma unroll
    for (int o = 4; o > 0; o >>= 1)
        d += __shfl_xor_sync(0xffffffffu, d, o);
    return d;
}

/* Blocks per SM the layer edge kernels are compiled for (__launch_bounds__): two blocks of
   ET_EDGE_WARPS warps cap the registers at 128 per thread; at CPL = 8 (F = 256) the filters
   alone take 128 KB of shared memory, so one block fits anyway. */
#define EDGE_MIN_BLOCKS(CPL) ((CPL) >= 8 ? 1 : 2)

/* Cooperative copy of n floats (n % 4 == 0, both 16-byte aligned) into shared memory. */
static __device__ __forceinline__ void block_copy(float *dst, const float *src, int n)
{
    for (int i = threadIdx.x; i < n / 4; i += blockDim.x)
        reinterpret_cast<float4 *>(dst)[i] = __ldg(reinterpret_cast<const float4 *>(src) + i);
}

/*
 * Per-edge metadata of a chunk, staged in the warp's shared scratch by cp.async (edge_meta_fetch)
 * one chunk ahead, so that the per-edge code reads it with LDS: a buffer holds e_geo [E] (float4),
 * with_back also gw [E] (x, y, z in float4 slots, w unset: the receiver pass's dE/dw sums,
 * [ne][3] floats in global memory, added to at the chunk's end),
 * then e_src [E], with_back also rev [E] (the merged pass). Two buffers per warp: the chunk's
 * own and the next one's, in flight. Measured (ncu, merged pass, reference model, 10k atoms):
 * ~60% of its long-scoreboard stalls were these loads consumed right after issue, a full L2
 * latency per edge each (e_src, e_geo per edge in both halves, rev / e_src / e_geo at the
 * chunk's start, e_src / e_geo / gw in the dE/dw section).
 */
static __host__ __device__ constexpr int edge_meta_floats(int with_back)
{
    return (with_back ? 10 : 5) * ET_EDGE_CHUNK;
}

/* Floats of a warp's scratch in an edge kernel: s_rbf [K][E], with_back also s_drbf [K][E] and
   the backward's per-edge scalars s_sc [5][E]; at edge_meta_off the two metadata buffers
   (edge_meta_floats each); with_back then the receiver work's per-edge pre-activations / g_pre
   s_pre [E][2][32 CPL] (lane-major per slot). All 16-byte multiples (E = 4). */
static __host__ __device__ inline size_t edge_meta_off(int K, int with_back)
{
    return (with_back ? 2 * (size_t)K + 5 : (size_t)K) * ET_EDGE_CHUNK;
}

static __host__ __device__ inline size_t edge_warp_floats(int K, int F, int with_back)
{
    return edge_meta_off(K, with_back) + 2 * (size_t)edge_meta_floats(with_back) +
           (with_back ? (size_t)ET_EDGE_CHUNK * 2 * 32 * edge_cpl(F) : 0);
}

/* Bytes of dynamic shared memory of an edge kernel: weights [K][NP*F] + bias [NP*F], then the
   scratch of each warp (edge_warp_floats). */
static inline size_t edge_smem_bytes(int F, int K, int NP, int with_back)
{
    return 4 * ((size_t)K * NP * F + NP * F + ET_EDGE_WARPS * edge_warp_floats(K, F, with_back));
}

static __device__ __forceinline__ float *warp_scratch(float *sm, int F, int K, int NP,
                                                      int with_back, int warp)
{
    return sm + (size_t)K * NP * F + NP * F + warp * edge_warp_floats(K, F, with_back);
}

/* Asynchronous copies global -> shared (sm_80+): no register holds the data in flight. The
   16-byte form bypasses L1 (.cg: nothing here is read twice by one SM). */
static __device__ __forceinline__ void cp_async4(void *dst, const void *src)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src) : "memory");
}

static __device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}

/* Wait for this thread's cp.async copies; the warp's other lanes read them only after a
   __syncwarp() that follows (edge_meta_wait). */
static __device__ __forceinline__ void cp_async_wait_all()
{
    asm volatile("cp.async.wait_all;" ::: "memory");
}

/*
 * The metadata of a chunk in a warp's buffer m (edge_meta_floats): pointers into it. WB: the
 * backward's layout (gw, rev), else e_geo and e_src only.
 */
template <bool WB> struct edge_meta {
    const float4 *geo, *gw;
    const int *src, *rev;
    static __device__ __forceinline__ edge_meta at(const float *m)
    {
        constexpr int E = ET_EDGE_CHUNK;
        edge_meta r;
        r.geo = reinterpret_cast<const float4 *>(m);
        r.gw = WB ? r.geo + E : nullptr;
        r.src = reinterpret_cast<const int *>(m + (WB ? 8 : 4) * E);
        r.rev = WB ? r.src + E : nullptr;
        return r;
    }
};

/*
 * Start the copy of the metadata of the nv (1 .. E) edges at cb into the warp's buffer m: one
 * copy per lane (lanes 0 .. E-1 e_geo, 16 bytes each; with WB lanes E .. 4E-1 gw, one float
 * each (gw is [ne][3]); then e_src, with REV rev); slots i >= nv are left as they are (every
 * reader checks i < nv). The buffer must not be read by any lane until edge_meta_wait; nor
 * written while a lane may still read it (the caller's __syncwarp between its last reads and
 * this call).
 */
template <bool WB, bool REV>
static __device__ __forceinline__ void edge_meta_fetch(const et_edge_common &c, const float *gw,
                                                       int cb, int nv, int lane, float *m)
{
    constexpr int E = ET_EDGE_CHUNK;
    static_assert(E == 4, "16-byte alignment of the metadata buffers");
    constexpr int NG = WB ? 3 * E : 0; /* lanes with one float of gw */
    if (lane < E) {
        if (lane < nv)
            cp_async16(m + 4 * lane, c.e_geo + cb + lane);
    } else if (lane < E + NG) {
        const int k = lane - E, i = k / 3;
        if (i < nv)
            cp_async4(m + 4 * E + 4 * i + (k - 3 * i), gw + 3 * (size_t)(cb + i) + (k - 3 * i));
    } else if (lane < E + NG + (REV ? 2 * E : E)) {
        const int k = lane - E - NG, i = k & (E - 1);
        if (i < nv)
            cp_async4(m + 4 * (WB ? 2 * E : E) + k, (k < E ? c.e_src : c.rev) + cb + i);
    }
}

/* The warp's copies into its metadata buffer are complete and visible to every lane. */
static __device__ __forceinline__ void edge_meta_wait()
{
    cp_async_wait_all();
    __syncwarp();
}

/*
 * Double buffering at fixed addresses: wait for the warp's copies into m + MW (edge_meta_fetch),
 * move them to m, where the chunk's code reads them. On return m is visible to every lane and
 * m + MW free for the next edge_meta_fetch. No lane may be reading m when the warp calls this.
 */
template <int MW>
static __device__ __forceinline__ void edge_meta_take(float *m, int lane)
{
    static_assert(MW % 4 == 0, "float4 moves");
    edge_meta_wait();
    if (lane < MW / 4)
        reinterpret_cast<float4 *>(m)[lane] = reinterpret_cast<const float4 *>(m + MW)[lane];
    __syncwarp();
}

/*
 * F of a layer edge kernel instantiated for CPL channels per lane: 32 CPL, a compile-time
 * constant (the row offsets of the gathers and the shared-memory strides fold into immediates),
 * except at CPL = 1, where F is 16 or 32. The entry points check it (edge_shape_ok).
 */
template <int CPL> static __device__ __forceinline__ int edge_f(const et_edge_common &c)
{
    return CPL > 1 ? 32 * CPL : c.F;
}

static inline bool edge_shape_ok(int CPL, const et_edge_common *c)
{
    return CPL == edge_cpl(c->F) && (CPL == 1 ? c->F <= 32 : c->F == 32 * CPL) && c->K >= 1;
}

/*
 * A lane's place in the layer edge kernels: it holds channels f0 .. f0 + CPL - 1 of each F-wide
 * part (wl = f0 / CPL; on: false for the idle lanes when F < 32 CPL, which read channel 0 and
 * store nothing), G lanes per head of D channels, and its value channel at vx_off in a q/k/v row.
 */
struct edge_lane {
    int D, G;
    bool on;
    int f0, wl, vx_off;
};

/* D of a head: 4 CPL at compile time for ACT_SILU_FAST_DKV (G = 4: head_sum), so that the
   value row offsets (vx_off, + D, + 2 D) fold into shifts and immediates */
template <int CPL, int SILU = ACT_ANY>
static __device__ __forceinline__ int edge_d(const et_edge_common &c)
{
    return SILU == ACT_SILU_FAST_DKV ? 4 * CPL : c.D;
}

template <int CPL, int SILU = ACT_ANY>
static __device__ __forceinline__ edge_lane edge_lane_of(const et_edge_common &c, int lane)
{
    edge_lane r;
    r.D = edge_d<CPL, SILU>(c);
    r.G = r.D / CPL;
    r.on = lane * CPL < edge_f<CPL>(c);
    r.f0 = r.on ? lane * CPL : 0;
    r.wl = r.f0 / CPL;
    r.vx_off = 2 * edge_f<CPL>(c) + ET_VIDX(r.f0, 0, r.D);
    return r;
}

/*
 * Start of every edge kernel: the block copies the NP filter parts (weights [K][NP*F], biases
 * [NP*F]) into dynamic shared memory; each warp gets its scratch (s_rbf, and with with_back
 * s_drbf; the metadata buffers; layout of edge_smem_bytes). Ends with __syncthreads().
 */
struct edge_smem {
    float *wt, *b;      /* filter weights and biases in shared memory */
    float *rbf, *drbf;  /* this warp's scratch (drbf: with_back only) */
    float *meta;        /* this warp's two metadata buffers (edge_meta_fetch) */
};

static __device__ __forceinline__ edge_smem edge_smem_load(const float *wt, const float *b, int F,
                                                           int K, int NP, int with_back)
{
    extern __shared__ float4 sm4[];
    float *sm = reinterpret_cast<float *>(sm4);
    edge_smem m;
    m.wt = sm;
    m.b = sm + (size_t)K * NP * F;
    m.rbf = warp_scratch(sm, F, K, NP, with_back, warp_uniform());
    m.drbf = with_back ? m.rbf + K * ET_EDGE_CHUNK : nullptr;
    m.meta = m.rbf + edge_meta_off(K, with_back);
    block_copy(m.wt, wt, K * NP * F);
    block_copy(m.b, b, NP * F);
    __syncthreads();
    return m;
}

/*
 * Grid of a persistent edge kernel: as many blocks as fit on the device at once (each block
 * loads the filter weights into shared memory once), but never more than *grid asks for when
 * *grid > 0 (the rows to cover).
 */
template <typename Kern>
static cudaError_t persistent_grid(Kern kern, size_t smem, int *grid, int warps = ET_EDGE_WARPS)
{
    int dev, sms, per_sm = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, 32 * warps, smem);
    if (e != cudaSuccess)
        return e;
    if (per_sm < 1)
        return cudaErrorInvalidConfiguration;
    int g = sms * per_sm;
    if (*grid > 0 && *grid < g)
        g = *grid;
    *grid = g;
    return cudaSuccess;
}

/* Warps of a persistent edge kernel resident on the device at once (persistent_grid's full
   grid times ET_EDGE_WARPS): the row split's measure of "few rows" (edge_split.cu). */
template <typename... P>
static cudaError_t edge_slots(void (*kern)(P...), size_t smem, int *slots)
{
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    int g = 0;
    if (e == cudaSuccess)
        e = persistent_grid(kern, smem, &g);
    *slots = e == cudaSuccess ? g * ET_EDGE_WARPS : 0;
    return e;
}

/* The first / next work item of a warp in a persistent edge kernel: round-robin (w = warp's
   global index, then + the grid's warps), or with c.work (DS4SCI_CUDA_DYN) the next
   number from that counter (lane 0 takes it, the warp shares it): the items are the same, only
   which warp runs which changes, so the results do not. */
static __device__ __forceinline__ int edge_item(const int *work_ctr, bool dyn, int w_rr, int lane)
{
    if (!dyn)
        return w_rr;
    int w = 0;
    if (lane == 0)
        w = atomicAdd(const_cast<int *>(work_ctr), 1);
    return __shfl_sync(0xffffffffu, w, 0);
}

/* The receiver row of a pass's t-th row: order[t] with a receiver order (c.order), else t. */
static __device__ __forceinline__ int edge_row(const et_edge_common &c, int t)
{
    return c.order ? __ldg(c.order + t) : t;
}

/* Grid of a layer edge pass over `rows` rows split S ways: the caller's grid (one warp per row)
   when S = 1, else one warp per (part, row) item (persistent_grid caps both). */
static inline int split_grid(int grid, int rows, int S)
{
    return S > 1 ? (int)(((long long)rows * S + ET_EDGE_WARPS - 1) / ET_EDGE_WARPS) : grid;
}

/* Launch a persistent edge kernel (grid: persistent_grid) with smem bytes of dynamic shared
   memory, ET_EDGE_WARPS warps per block. */
template <typename... P, typename... A>
static cudaError_t launch_persistent(void (*kern)(P...), size_t smem, int grid, cudaStream_t s,
                                     A... args)
{
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess)
        return e;
    if ((e = persistent_grid(kern, smem, &grid)) != cudaSuccess)
        return e;
    kern<<<grid, 32 * ET_EDGE_WARPS, smem, s>>>(args...);
    return cudaGetLastError();
}

/* Grid of a kernel with its own block size (warps per block) and smem bytes of dynamic shared
   memory (its limit raised to that): persistent_grid's, capped at one warp per item (items > 0;
   the callers return before launching for no rows). */
template <typename... P>
static cudaError_t resident_grid(void (*kern)(P...), size_t smem, int warps, long long items,
                                 int *grid)
{
    const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem);
    if (e != cudaSuccess)
        return e;
    const long long need = (items + warps - 1) / warps;
    *grid = need < INT_MAX ? (int)need : INT_MAX;
    return persistent_grid(kern, smem, grid, warps);
}

/* Calls launch(std::integral_constant<int, CPL>) for the channels-per-lane values the kernels
   are instantiated for (F = 32 * CPL). */
template <typename L>
static cudaError_t dispatch_cpl(int CPL, L launch)
{
    switch (CPL) {
    case 1: return launch(std::integral_constant<int, 1>());
    case 2: return launch(std::integral_constant<int, 2>());
    case 4: return launch(std::integral_constant<int, 4>());
    case 8: return launch(std::integral_constant<int, 8>());
    default: return cudaErrorInvalidValue;
    }
}

/*
 * Shared memory of the neighbour-embedding kernels (k_ne_fwd, k_ne_bwd): the filter [K][F] and
 * its bias [F], then per warp s_rbf [K][E], with back also s_drbf [K][E], then the two metadata
 * buffers (edge_meta_floats(back) each; edge_meta_fetch / edge_meta_take). None of the layer
 * kernels' receiver scratch (s_sc, s_pre): at F = 128, K = 32 the backward's block takes 27.6 KB
 * instead of 61 KB (shared memory no longer limits its blocks per SM). All 16-byte multiples
 * (E = 4, F % 4 == 0).
 */
static __host__ __device__ inline size_t ne_warp_floats(int K, int back)
{
    return (back ? 2 : 1) * (size_t)K * ET_EDGE_CHUNK + 2 * (size_t)edge_meta_floats(back);
}

static inline size_t ne_smem_bytes(int F, int K, int back)
{
    return 4 * ((size_t)K * F + F + ET_EDGE_WARPS * ne_warp_floats(K, back));
}

/* Blocks per SM the neighbour-embedding kernels are compiled for (__launch_bounds__; their
   shared memory allows more): forward 48 registers (40 warps per SM) at CPL <= 4, backward 64
   (32 warps per SM; 80 and 24 uncapped); CPL = 8 half of that. */
#define NE_FWD_MIN_BLOCKS(CPL) ((CPL) >= 8 ? 3 : 5)
#define NE_BWD_MIN_BLOCKS(CPL) ((CPL) >= 8 ? 2 : 4)

/* edge_smem_load for the ne_smem_bytes layout (one filter part). Ends with __syncthreads(). */
static __device__ __forceinline__ edge_smem ne_smem_load(const float *wt, const float *b, int F,
                                                         int K, int back)
{
    extern __shared__ float4 sm4[];
    float *sm = reinterpret_cast<float *>(sm4);
    edge_smem m;
    m.wt = sm;
    m.b = sm + (size_t)K * F;
    m.rbf = m.b + F + (size_t)warp_uniform() * ne_warp_floats(K, back);
    m.drbf = back ? m.rbf + K * ET_EDGE_CHUNK : nullptr;
    m.meta = m.rbf + (back ? 2 : 1) * K * ET_EDGE_CHUNK;
    block_copy(m.wt, wt, K * F);
    block_copy(m.b, b, F);
    __syncthreads();
    return m;
}

#endif /* DS4SCI_EDGE_COMMON_CUH */
