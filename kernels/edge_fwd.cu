/*
 * edge_fwd.cu - fused forward edge pass of an attention layer, and of the neighbour embedding.
 * One warp per owned receiver t walks its CSR row (self-loop first) in chunks of E edges; the
 * RBF, the filters dk/dv, the attention and the messages live in registers and shared memory
 * only, and X[t], V[t] are accumulated in registers: no per-edge tensor, no atomics. With a
 * row split S > 1 (few rows, et_edge_split) S warps share a row, each its every S-th chunk, and
 * write partial X, V that et_split_sum adds up in a fixed order.
 *
 * Per edge e = (s -> t), head h (ET_SPEC.md section 4, steps 4-6):
 *   dk = act(W_dk f + b_dk), dv = act(W_dv f + b_dv)
 *   a = attn_act(sum_d q[t] k[s] dk);  A = a (vector_cutoff) or a c(r)
 *   (x~, g1, g2) = v[s] dv (times c(r) with vector_cutoff)
 *   X[t] += x~ A;  V[t][c] += vec[s][c] g1 + g2 d_e[c]
 */
#include "edge_common.cuh"
#include "edge_gates.cuh"

template <int CPL, int SILU, bool SPLIT>
static __global__ void __launch_bounds__(32 * ET_EDGE_WARPS, EDGE_MIN_BLOCKS(CPL))
    k_edge_fwd(const et_edge_common c, const et_edge_layer l, const int nsplit, float *const part)
{
    constexpr int E = ET_EDGE_CHUNK;
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform();
    const edge_smem sh = edge_smem_load(l.filt_wt, l.filt_b, F, c.K, 4, 0);
    float *s_wt = sh.wt, *s_b = sh.b, *s_rbf = sh.rbf, *s_meta = sh.meta;
    /* the chunk's e_geo and e_src in s_meta (edge_meta_fetch one chunk ahead into s_meta + MW,
       edge_meta_take; as bwd_recv_row) */
    constexpr int MW = edge_meta_floats(0);
    const edge_meta<false> md = edge_meta<false>::at(s_meta);

    const auto [D, G, on, f0, wl, vx_off] = edge_lane_of<CPL, SILU>(c, lane);
    /* work item w = (part sp, receiver t), part-major; !SPLIT (S = 1): t = w, the whole row */
    const int S = SPLIT ? nsplit : 1, rows = c.n_local, items = rows * S;
    const bool dyn = c.work != nullptr;
    for (int w = edge_item(c.work, dyn, blockIdx.x * ET_EDGE_WARPS + warp, lane); w < items;
         w = edge_item(c.work, dyn, w + gridDim.x * ET_EDGE_WARPS, lane)) {
        const int sp = SPLIT ? w / rows : 0, t = edge_row(c, SPLIT ? w - sp * rows : w);
        float q[CPL], ax[CPL], av[3][CPL];
        ldg_vec<CPL>(l.qkv + (size_t)t * 5 * F + f0, q);
        zero_off<CPL>(on, q);
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            ax[j] = 0.f;
            av[0][j] = av[1][j] = av[2][j] = 0.f;
        }
        const int e0 = c.row_off[t], e1 = c.row_off[t + 1];
        if (e0 + sp * E < e1)
            edge_meta_fetch<false, false>(c, nullptr, e0 + sp * E, min(E, e1 - e0 - sp * E),
                                          lane, s_meta + MW);
        for (int cb = e0 + sp * E; cb < e1; cb += S * E) {
            const int nv = min(E, e1 - cb);
            edge_meta_take<MW>(s_meta, lane);
            if (cb + S * E < e1)
                edge_meta_fetch<false, false>(c, nullptr, cb + S * E, min(E, e1 - cb - S * E),
                                              lane, s_meta + MW);
            float sv[E];
            const auto r_of = [&](int i) { return md.geo[i].w; };
            const int kw = stage_rbf_of<E, false, true, true>(c, r_of, nv, lane, s_rbf, nullptr);
            const float ccl = cutoff_lane<E>(c, r_of, nv, lane, nullptr);
            /* sv / r of edge lane mod E, the gates' direction factor (0: the self-loop, empty
               slots), shuffled as the cutoff: one division per chunk instead of one per edge */
            const int ie = lane & (E - 1);
            const float invsl =
                ie < nv && md.geo[ie].w != 0.f ? (c.vc ? ccl : 1.f) / md.geo[ie].w : 0.f;
            __syncwarp();
            /* Two halves, so that only half of the pre-activations are live at a time (fewer
               registers, more warps per SM): first dk and the value filter (attention and the
               scalar message), then the two gate filters (the vector message). */
            {
                float pre[E][2][CPL];
                filter_pre<CPL, E, 2, 4, 0>(s_wt, s_b, s_rbf, kw, F, wl, pre);
#pragma unroll
                for (int i = 0; i < E; i++) {
                    if (i >= nv)
                        break;
                    const int s = md.src[i];
                    const float cc = __shfl_sync(0xffffffffu, ccl, i);
                    const float *srow = l.qkv + (size_t)s * 5 * F;
                    float kk[CPL], vv[CPL];
                    ldg_vec<CPL>(srow + F + f0, kk);
                    ldg_vec<CPL>(srow + vx_off, vv);
                    float part = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        float dk = dk_used<SILU>(c) ? actv<SILU>(c.act, pre[i][0][j], nullptr) : 1.f;
                        part = fmaf(q[j] * kk[j], dk, part);
                    }
                    const float a = actv<SILU>(c.attn_act, head_sum<SILU>(part, G), nullptr);
                    sv[i] = c.vc ? cc : 1.f;
                    const float A = (c.vc ? a : a * cc) * sv[i];
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        const float dv0 = dv_used<SILU>(c) ? actv<SILU>(c.act, pre[i][1][j], nullptr) : 1.f;
                        ax[j] = fmaf(vv[j] * dv0, A, ax[j]);
                    }
                }
            }
            {
                float pre[E][2][CPL];
                filter_pre<CPL, E, 2, 4, 2>(s_wt, s_b, s_rbf, kw, F, wl, pre);
                __syncwarp();
#pragma unroll
                for (int i = 0; i < E; i++) {
                    if (i >= nv)
                        break;
                    const int s = md.src[i];
                    const float4 g = md.geo[i];
                    /* d sv: the factor sv of the second gate applied once per edge */
                    const float invs = __shfl_sync(0xffffffffu, invsl, i); /* the self-loop: 0 */
                    const float dirs[3] = {g.x * invs, g.y * invs, g.z * invs};
                    float v1[CPL], v2[CPL], vs[3][CPL];
                    ldg_gate_rows<CPL>(l.qkv, l.vec, s, F, D, f0, vx_off, v1, v2, vs);
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        float dv1 = 1.f, dv2 = 1.f;
                        if (dv_used<SILU>(c)) {
                            dv1 = actv<SILU>(c.act, pre[i][0][j], nullptr);
                            dv2 = actv<SILU>(c.act, pre[i][1][j], nullptr);
                        }
                        const float g1 = v1[j] * dv1 * sv[i];
                        const float g2 = v2[j] * dv2;
#pragma unroll
                        for (int cx = 0; cx < 3; cx++)
                            av[cx][j] = fmaf(g2, dirs[cx], fmaf(vs[cx][j], g1, av[cx][j]));
                    }
                }
            }
        }
        if (on) {
            /* SPLIT: the partial row [X | V] of item (sp, t), summed by et_split_sum */
            float *xo = !SPLIT ? l.X + (size_t)t * F : part + ((size_t)sp * rows + t) * 4 * F;
            float *vo = !SPLIT ? l.V + (size_t)t * 3 * F : xo + F;
            st_vec<CPL>(xo + f0, ax);
#pragma unroll
            for (int cx = 0; cx < 3; cx++)
                st_vec<CPL>(vo + (size_t)cx * F + f0, av[cx]);
        }
    }
}

/*
 * Neighbour embedding message of owned receiver t (non-self edges):
 *   m[t] = sum_e (A f_e + a) c(r_e) E_nb[z_s], written to cat[t][F:2F].
 * Per chunk (as the layer kernels, docs/gpu.md v16): e_geo and e_src staged in the warp's
 * scratch one chunk ahead (edge_meta_fetch / edge_meta_take); lane i < nv evaluates edge i's
 * cutoff and starts the load of its sender's type z[s] before the RBF staging, so that the chain
 * e_src -> z -> E_nb row costs no exposed latency per edge; the other lanes get both by shuffle.
 * Same arithmetic as before, value for value.
 */
template <int CPL>
static __global__ void __launch_bounds__(32 * ET_EDGE_WARPS, NE_FWD_MIN_BLOCKS(CPL))
    k_ne_fwd(const et_edge_common c, const float *ne_wt, const float *ne_b, const float *ne_emb,
             const int *z, float *cat)
{
    constexpr int E = ET_EDGE_CHUNK;
    constexpr int MW = edge_meta_floats(0);
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform();
    const edge_smem sh = ne_smem_load(ne_wt, ne_b, F, c.K, 0);
    float *s_wt = sh.wt, *s_b = sh.b, *s_rbf = sh.rbf, *s_meta = sh.meta;
    const edge_meta<false> md = edge_meta<false>::at(s_meta);
    const bool on = lane * CPL < F;
    const int f0 = on ? lane * CPL : 0;
    const int ie = lane & (E - 1); /* the chunk's edge whose cutoff and sender type this lane gets */
    for (int t = blockIdx.x * ET_EDGE_WARPS + warp; t < c.n_local; t += gridDim.x * ET_EDGE_WARPS) {
        float m[CPL];
#pragma unroll
        for (int j = 0; j < CPL; j++)
            m[j] = 0.f;
        const int e0 = c.row_off[t] + 1, e1 = c.row_off[t + 1];
        if (e0 < e1)
            edge_meta_fetch<false, false>(c, nullptr, e0, min(E, e1 - e0), lane, s_meta + MW);
        for (int cb = e0; cb < e1; cb += E) {
            const int nv = min(E, e1 - cb);
            edge_meta_take<MW>(s_meta, lane);
            if (cb + E < e1)
                edge_meta_fetch<false, false>(c, nullptr, cb + E, min(E, e1 - cb - E), lane,
                                              s_meta + MW);
            const bool ev = ie < nv;
            /* in flight during the RBF staging and the filter (row 0 for the empty slots) */
            const int zl = ev ? __ldg(z + md.src[ie]) : 0;
            const int kw = stage_rbf_of<E, false, false, true>(
                c, [&](int i) { return md.geo[i].w; }, nv, lane, s_rbf, nullptr);
            const float ccl = ev ? cutoff_pi(md.geo[ie].w, c.cl, c.cu, nullptr) : 0.f;
            __syncwarp();
            float pre[E][1][CPL];
            filter_pre<CPL, E, 1>(s_wt, s_b, s_rbf, kw, F, f0 / CPL, pre);
            /* the next chunk's edge_meta_take (__syncwarp first) orders these reads of s_rbf
               and s_meta before its writes */
#pragma unroll
            for (int i = 0; i < E; i++) {
                if (i >= nv)
                    break;
                const float cc = __shfl_sync(0xffffffffu, ccl, i);
                const int zs = __shfl_sync(0xffffffffu, zl, i);
                float en[CPL]; /* E_nb is a few rows: L1 hits */
                ldg_vec<CPL>(ne_emb + (size_t)zs * F + f0, en);
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    m[j] = fmaf(pre[i][0][j] * cc, en[j], m[j]);
            }
        }
        if (on)
            st_vec<CPL>(cat + (size_t)t * 2 * F + F + f0, m);
    }
}

extern "C" size_t et_edge_smem(int F, int K, int part_count, int with_back)
{
    return edge_smem_bytes(F, K, part_count, with_back);
}

template <int CPL>
static cudaError_t launch_fwd(cudaStream_t s, int grid, int S, float *part,
                              const et_edge_common *c, const et_edge_layer *l)
{
    cudaError_t e = launch_persistent(
        S == 1 ? by_act(c, k_edge_fwd<CPL, ACT_ANY, false>, k_edge_fwd<CPL, ACT_SILU, false>,
                        k_edge_fwd<CPL, ACT_SILU_FAST, false>,
                        k_edge_fwd<CPL, ACT_SILU_FAST_DKV, false>,
                        k_edge_fwd<CPL, ACT_SILU_FAST_DKV_G, false>)
               : by_act(c, k_edge_fwd<CPL, ACT_ANY, true>, k_edge_fwd<CPL, ACT_SILU, true>,
                        k_edge_fwd<CPL, ACT_SILU_FAST, true>,
                        k_edge_fwd<CPL, ACT_SILU_FAST_DKV, true>,
                        k_edge_fwd<CPL, ACT_SILU_FAST_DKV_G, true>),
        edge_smem_bytes(c->F, c->K, 4, 0), split_grid(grid, c->n_local, S), s, *c, *l, S, part);
    if (e != cudaSuccess || S == 1)
        return e;
    const int F = c->F;
    return et_split_sum(s, S, c->n_local, part, l->X, F, F, 0, l->V, 3 * F, 3 * F, 0);
}

template <int CPL> static cudaError_t slots_fwd(const et_edge_common *c, int *slots)
{
    return edge_slots(by_act(c, k_edge_fwd<CPL, ACT_ANY, false>, k_edge_fwd<CPL, ACT_SILU, false>,
                             k_edge_fwd<CPL, ACT_SILU_FAST, false>,
                             k_edge_fwd<CPL, ACT_SILU_FAST_DKV, false>,
                             k_edge_fwd<CPL, ACT_SILU_FAST_DKV_G, false>),
                      edge_smem_bytes(c->F, c->K, 4, 0), slots);
}

template <int CPL>
static cudaError_t launch_ne(cudaStream_t s, int grid, const et_edge_common *c, const float *w,
                             const float *b, const float *emb, const int *z, float *cat)
{
    return launch_persistent(k_ne_fwd<CPL>, ne_smem_bytes(c->F, c->K, 0), grid, s, *c, w, b,
                             emb, z, cat);
}

extern "C" cudaError_t et_edge_forward(cudaStream_t s, int CPL, int grid, int split, float *part,
                                       const et_edge_common *c, const et_edge_layer *l)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (split < 1 || (split > 1 && !part) || !edge_shape_ok(CPL, c))
        return cudaErrorInvalidValue;
    if (c->tc && et_edge_forward_tc_ok(CPL, split, c))
        return et_edge_forward_tc(s, CPL, c, l);
    return dispatch_cpl(CPL, [&](auto C) {
        return launch_fwd<decltype(C)::value>(s, grid, split, part, c, l);
    });
}

extern "C" cudaError_t et_edge_forward_slots(int CPL, const et_edge_common *c, int *slots)
{
    return dispatch_cpl(CPL, [&](auto C) { return slots_fwd<decltype(C)::value>(c, slots); });
}

extern "C" cudaError_t et_ne_forward(cudaStream_t s, int CPL, int grid, const et_edge_common *c,
                                     const float *ne_wt, const float *ne_b, const float *ne_emb,
                                     const int *z, float *cat)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (!edge_shape_ok(CPL, c)) /* k_ne_fwd takes F = 32 CPL (edge_f) */
        return cudaErrorInvalidValue;
    return dispatch_cpl(CPL, [&](auto C) {
        return launch_ne<decltype(C)::value>(s, grid, c, ne_wt, ne_b, ne_emb, z, cat);
    });
}
