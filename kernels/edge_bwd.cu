/*
 * edge_bwd.cu - fused backward edge passes of an attention layer (ET_SPEC.md section 6), with
 * every per-edge quantity (RBF, filters, attention, messages) recomputed, never stored:
 *
 * (With a row split S > 1, for few rows, S warps share a row, each its every S-th chunk, and
 * the per-row sums go through et_split_sum: edge_split.cu.)
 *
 *  receiver pass (one warp per owned receiver t, its CSR row):
 *    g_q[t] = sum_e g_apre k[s] dk, and per edge the geometry gradient
 *    dE/dw_e = (g_d - d (d . g_d)) / r + g_r d, g_r = sum_k g_f_k f'_k(r) + g_c c'(r),
 *    added to gw[e] (each edge is owned by one warp: no atomics);
 *  sender pass (one warp per atom s, owned or ghost, over the transpose index):
 *    g_k[s] = sum_e g_apre q[t] dk, g_v[s] = sum_e g_v~ dv (c), g_vec[s] += sum_e g_mv g1.
 *
 * Notation per edge e = (s -> t): g_mx = gX[t], g_mv = gV[t]; x~, g1, g2 the value parts;
 * g_A = sum_d g_mx x~; g_a = g_A (vector_cutoff) or g_A c; g_apre = g_a attn_act'(a_pre).
 */
#include "edge_common.cuh"
#include "edge_gates.cuh"

/*
 * Both passes work on a chunk of E edges in two halves, so that only half of the filter
 * pre-activations are live at a time (fewer registers, more warps per SM): first dk and the
 * value filter (attention, scalar message), then the two gate filters (vector message). The
 * RBF of the chunk is staged once and serves both halves.
 */
template <int CPL, int SILU>
static __device__ __forceinline__ void merged_send_first(const et_edge_common &c,
                                                         const et_edge_layer &l,
                                                         const float (&kt)[CPL],
                                                         const float (&vt)[CPL], int s, int f0,
                                                         bool on, int G, float (&ak)[CPL],
                                                         float (&av)[CPL], const float (&dk)[CPL],
                                                         const float (&dv)[CPL], float sv, float cc,
                                                         bool pair, float (&gp)[2][CPL]);
template <int CPL, int SILU>
static __device__ __forceinline__ void merged_send_second(const et_edge_common &c,
                                                          const et_edge_layer &l,
                                                          const float (&vt1)[CPL],
                                                          const float (&vt2)[CPL],
                                                          const float (&vst)[3][CPL], int s,
                                                          int f0, float *acc,
                                                          const float (&dv1)[CPL],
                                                          const float (&dv2)[CPL],
                                                          const float (&ddv1)[CPL],
                                                          const float (&ddv2)[CPL], float sv,
                                                          const float (&dse)[3], bool pair,
                                                          float (&gp)[2][CPL]);

/*
 * The per-edge arrays of a half of bwd_recv_row's rolled per-edge loop live in the warp's shared
 * scratch (lane-private slots, so no synchronisation): pre_to_smem evaluates the half's two
 * filter parts P0, P0 + 1 for the chunk's E edges and stores them, slot i part p at
 * s_pre[(2 i + p) AW]; turn i of the loop reads slot i and gp_to_smem puts edge i's g_pre in
 * its place (and rotates the lane's E partial dE/dr sums by one, so that the current edge's is
 * always grl[0]: after E turns they are in edge order again; the turn passes the current
 * edge's new sum gr0, so that the rotation is E moves, not E + 1); back_from_smem runs the filter
 * backward from the stored g_pre. (In registers, with all slots rotating, the pre-activations
 * cost 32 live registers and ~70 moves per edge at CPL 4.)
 */
template <int CPL, int P0>
static __device__ __forceinline__ void pre_to_smem(const float *s_wt, const float *s_b,
                                                   const float *s_rbf, int kw, int F, int wl,
                                                   float *s_pre)
{
    constexpr int E = ET_EDGE_CHUNK, AW = 32 * CPL;
    float a[E][2][CPL];
    filter_pre<CPL, E, 2, 4, P0>(s_wt, s_b, s_rbf, kw, F, wl, a);
#pragma unroll
    for (int i = 0; i < E; i++) {
        st_vec<CPL>(s_pre + 2 * i * AW, a[i][0]);
        st_vec<CPL>(s_pre + (2 * i + 1) * AW, a[i][1]);
    }
}

template <int CPL>
static __device__ __forceinline__ void gp_to_smem(float *s_pre, int i, const float (&gp)[2][CPL],
                                                  float (&grl)[ET_EDGE_CHUNK], float gr0)
{
    constexpr int E = ET_EDGE_CHUNK, AW = 32 * CPL;
    st_vec<CPL>(s_pre + 2 * i * AW, gp[0]);
    st_vec<CPL>(s_pre + (2 * i + 1) * AW, gp[1]);
#pragma unroll
    for (int k = 0; k + 1 < E; k++)
        grl[k] = grl[k + 1];
    grl[E - 1] = gr0;
}

template <int CPL, int P0>
static __device__ __forceinline__ void back_from_smem(const float *s_wt, const float *s_drbf,
                                                      int kw, int F, int wl, const float *s_pre,
                                                      float (&grl)[ET_EDGE_CHUNK])
{
    constexpr int E = ET_EDGE_CHUNK, AW = 32 * CPL;
    float a[E][2][CPL];
#pragma unroll
    for (int i = 0; i < E; i++) {
        ld_vec<CPL>(s_pre + 2 * i * AW, a[i][0]);
        ld_vec<CPL>(s_pre + (2 * i + 1) * AW, a[i][1]);
    }
    filter_back<CPL, E, 2, 4, P0>(s_wt, s_drbf, kw, F, wl, a, grl);
}

/*
 * The receiver work of owned row t (k_edge_bwd_recv and k_edge_bwd_merged): g_q[t] into gq
 * (this item's chunks cb0, cb0 + step, ... of the row) and dE/dw added to gw[e]. MERGED: also
 * the sender work of each edge's reverse (rev[e] >= 0) into the lane's shared-memory
 * accumulators acc (zeroed here first; see k_edge_bwd_merged), right after the edge's receiver
 * work in each half, from the activations dk, dv and dv1, dv2. Without MERGED the code is the
 * receiver pass's alone.
 *
 * MERGED, pairs: e = (s -> t) and its reverse e' share r, so the filter part of dE/dr of both,
 * sum_k g_f_k f'_k with g_f = W^T (g_pre(e) + g_pre(e')), is one filter backward: the warp of
 * the edge of smaller index does it for the pair (e < e': g_pre(e') comes from the sender
 * work of e', added to e's), and the other skips it (e' < e: e's g_pre left zero). dE/dr d_e'
 * on e' acts on the atoms and the virial as dE/dr d_e on e (w(e') = -w(e); for a periodic
 * image s, e' acts on s's owned atom and an image of t: the same forces once the ghosts are
 * folded), so the pair's radial filter term goes to gw[e]; the cutoff and direction terms stay
 * per edge. graph.cu puts the edges whose other end's owned atom is < t (e' < e) last in each
 * row, so that the filter backward is skipped for whole chunks.
 *
 * MERGED with a periodic image s (built-in exchange: the map pairs e with the edge of row so,
 * s's owned atom): the sender work of e' reads the receiver's q, dE/dX and dE/dV at row s,
 * which hold so's (et_cuda.cu gathers dE/dX and dE/dV of ghost rows before the pass).
 */
template <int CPL, int SILU, bool MERGED>
static __device__ __forceinline__ void bwd_recv_row(const et_edge_common c,
                                                    const et_edge_layer l, const int t,
                                                    const int sp, const int S, const int F,
                                                    const int D, const int lane, const bool on,
                                                    const int f0, const int wl,
                                                    const int G, const int vx_off, float *s_wt,
                                                    float *s_b, float *s_rbf, float *s_drbf,
                                                    float *acc, float (&gq)[CPL])
{
    constexpr int E = ET_EDGE_CHUNK;
    constexpr int AW = 32 * CPL; /* MERGED: stride of the accumulator parts */
    /* edge_warp_floats: [5][E] past s_drbf: per edge sv, c'(r) and dE/dd (x, y, z); then the
       two metadata buffers (edge_meta_fetch, MW floats each) */
    constexpr int MW = edge_meta_floats(1);
    float *const s_sc = s_drbf + c.K * E;
    float *const s_meta = s_sc + 5 * E;
    /* this lane's per-edge pre-activations, then g_pre, of a half: slot i part p at
       s_pre[(2 i + p) AW] (edge_warp_floats: [E][2][32 CPL] past the metadata; lane-private) */
    float *const s_pre = s_meta + 2 * MW + lane * CPL;
#pragma unroll
    for (int j = 0; j < CPL; j++)
        gq[j] = 0.f;
    if constexpr (MERGED) {
        float zero[CPL];
#pragma unroll
        for (int j = 0; j < CPL; j++)
            zero[j] = 0.f;
#pragma unroll
        for (int p = 0; p < 7; p++)
            st_vec<CPL>(acc + p * AW, zero);
    }
    const float *const trow = l.qkv + (size_t)t * 5 * F; /* MERGED: t as the sender of e' */
    const int e0 = c.row_off[t], e1 = c.row_off[t + 1];
    /* The chunks' metadata (e_geo, gw, e_src, rev) through the warp's buffers (edge_meta_fetch):
       the next chunk's copy flies into s_meta + MW during a chunk's work (the row's first:
       at the row's start), and edge_meta_take moves it to s_meta when its turn
       comes, so that the chunk's metadata sits at fixed offsets from s_sc (a buffer chosen
       by a toggle or by cb took one more register for the whole chunk: ptxas then spilled
       two values at 128 registers). */
    const edge_meta<true> md = edge_meta<true>::at(s_meta);
    if (e0 + sp * E < e1)
        edge_meta_fetch<true, MERGED>(c, l.gw, e0 + sp * E, min(E, e1 - e0 - sp * E), lane,
                                      s_meta + MW);
    for (int cb = e0 + sp * E; cb < e1; cb += S * E) {
        const int nv = min(E, e1 - cb);
        /* this chunk's metadata into s_meta (the previous chunk's readers are past the closing
           __syncwarp), then the next chunk's copy into s_meta + MW */
        edge_meta_take<MW>(s_meta, lane);
        if (cb + S * E < e1)
            edge_meta_fetch<true, MERGED>(c, l.gw, cb + S * E, min(E, e1 - cb - S * E), lane,
                                          s_meta + MW);
        /* per edge, carried from the first half to the second: sv and c'(r) in the warp's
           shared scratch s_sc[0:2][E] (uniform over the warp: no registers), this lane's part
           of dE/dr (filter backward, cutoff) in grl; from the second half to the end of the
           chunk: the warp's dE/dd / sv in s_sc[2:5][E] */
        float grl[E];
        /* MERGED: bit i of rm: edge i has a reverse; of pm: ... and this warp does the pair's
           filter backward (it takes the reverse's g_pre too); of xm: ... and the other does
           (skipped here; the self-loop too, which has none). The pair's filter backward is
           done at its edge of the smaller index: in the row of the smaller receiver, or for a
           periodic self-image pair (small boxes: s an image of t) both in this row.
           back: some edge of the chunk needs the filter backward. */
        unsigned rm = 0, pm = 0, xm = 0;
        bool back = !MERGED;
        if constexpr (MERGED) {
            /* lane i < nv: edge i's bits (rm 0..3, pm 4..7, xm 8..11, back 12..15), or-ed
               over the warp by one redux.sync: masks that ptxas knows to be warp-uniform, so
               that the per-edge branches on them need no BSSY/BSYNC */
            static_assert(E <= 4, "four bits per mask");
            unsigned bits = 0;
            if (lane < nv) {
                const int e = cb + lane, re = md.rev[lane];
                const bool hp = re >= 0 && c.pair;
                bits = (re >= 0 ? 1u : 0u) | ((hp && e < re) ? 0x10u : 0u) |
                       ((hp && re <= e) ? 0x100u : 0u) |
                       ((md.geo[lane].w != 0.f && !(hp && re < e)) ? 0x1000u : 0u);
                bits <<= lane;
            }
            bits = __reduce_or_sync(0xffffffffu, bits);
            rm = bits & 0xfu;
            pm = bits >> 4 & 0xfu;
            xm = bits >> 8 & 0xfu;
            back = (bits >> 12) != 0u;
        }
#pragma unroll
        for (int i = 0; i < E; i++)
            grl[i] = 0.f;
        /* r_i read where each RBF needs it (not held in registers across the loop above) */
        const auto r_of = [&](int i) { return md.geo[i].w; };
        const int kw = stage_rbf_of<E, true, true, true>(c, r_of, nv, lane, s_rbf, s_drbf);
        float dcl;
        const float ccl = cutoff_lane<E>(c, r_of, nv, lane, &dcl);
        /* 1 / r of edge lane mod E (0: the self-loop, empty slots), shuffled as the cutoff */
        const int ie = lane & (E - 1);
        const float invl = ie < nv && md.geo[ie].w != 0.f ? 1.f / md.geo[ie].w : 0.f;
        __syncwarp();
        /*
         * The edges of a half in a rolled loop (one copy of the per-edge code: unrolled four
         * times, the merged kernel's code outgrew the instruction cache, measured: 137 KB of
         * SASS, 3.2 of 8.9 cycles per issued instruction waiting for instructions). The
         * per-edge arrays rotate by one slot per edge, so that edge i is always in slot 0:
         * a[] holds the pre-activations of the edges not yet done and then the g_pre of
         * those done (a[E-1] = edge i's after its turn), in order again after E turns.
         */
        {
            /* t's q and dE/dX here and dE/dV before the second half, read per chunk rather
               than once per row: live in their half only (as row values they held 20
               registers through both halves: ~5 instructions per edge and half more, measured
               in the SASS, for rematerialised addresses and constants). MERGED: so are t's
               rows that the sender work of e' reads (k, v~ here; v1, v2, vec before the
               second half): read per edge they were 7 of the pass's ~20 row loads per edge,
               all from L2 (the L1 hit rate is 1.5%, docs/gpu.md v34); per chunk, the same
               128 registers and no spills, the merged pass 578 -> 551 ms at 1M atoms (v35) */
            float q[CPL], gX[CPL];
            ldg_vec<CPL>(l.qkv + (size_t)t * 5 * F + f0, q);
            ldg_vec<CPL>(l.gX + (size_t)t * F + f0, gX);
            zero_off<CPL>(on, q);
            zero_off<CPL>(on, gX);
            float kt[CPL], vt[CPL]; /* MERGED: k[t], v~[t] for the sender work of e' */
            /* MERGED: the g_k and g_v value accumulators (the parts the first half adds to) in
               registers through the half, from and back to acc (the same sums in the same
               order; 2 LDS + 2 STS and 4 instructions less per edge, no spills: 1M atoms
               -1.5%, v35; the second half's two gate parts so spill 8 B) */
            float ak[CPL], av[CPL];
            if constexpr (MERGED) {
                ldg_vec<CPL>(trow + F + f0, kt);
                ldg_vec<CPL>(trow + vx_off, vt);
                zero_off<CPL>(on, kt);
                zero_off<CPL>(on, vt);
                ld_vec<CPL>(acc, ak);
                ld_vec<CPL>(acc + AW, av);
            }
            pre_to_smem<CPL, 0>(s_wt, s_b, s_rbf, kw, F, wl, s_pre);
#pragma unroll 1
            for (int i = 0; i < E; i++) {
                float a0[2][CPL], gp[2][CPL];
                ld_vec<CPL>(s_pre + 2 * i * AW, a0[0]);
                ld_vec<CPL>(s_pre + (2 * i + 1) * AW, a0[1]);
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    gp[0][j] = gp[1][j] = 0.f;
                float gr0 = 0.f; /* grl[0] is 0 here: this loop is the first to set it */
                if (i < nv) {
                    const int s = md.src[i];
                    const bool self = md.geo[i].w == 0.f; /* r = 0: the self-loop only */
                    const float cc = __shfl_sync(0xffffffffu, ccl, i),
                                dc = __shfl_sync(0xffffffffu, dcl, i);
                    const float *srow = l.qkv + (size_t)s * 5 * F;
                    float kk[CPL], vv[CPL];
                    ldg_vec<CPL>(srow + F + f0, kk);
                    ldg_vec<CPL>(srow + vx_off, vv);
                    float dk[CPL], ddk[CPL], dv[CPL], ddv[CPL];
                    actv_vec<CPL, SILU>(dk_used<SILU>(c), c.act, a0[0], dk, &ddk);
                    actv_vec<CPL, SILU>(dv_used<SILU>(c), c.act, a0[1], dv, &ddv);
                    /* kd = k dk and gxv = g_mx v~ serve the logit and g_q, g_A and g_pre */
                    float kd[CPL], gxv[CPL];
                    float part = 0.f, gA_part = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        kd[j] = kk[j] * dk[j];
                        part = fmaf(q[j], kd[j], part);
                        gxv[j] = gX[j] * vv[j];
                        gA_part = fmaf(gxv[j], dv[j], gA_part);
                    }
                    float da;
                    const float at = actv<SILU>(c.attn_act, head_sum<SILU>(part, G), &da);
                    const float A = c.vc ? at : at * cc;
                    const float svi = c.vc ? cc : 1.f;
                    if (lane == 0) {
                        s_sc[i] = svi;
                        s_sc[E + i] = dc;
                    }
                    /* g_A = sv sum_d g_mx v~ dv; g_c = at sum_d g_mx v~ dv either way (through
                       sv = c with vector_cutoff, else through A = at c) */
                    const float gA = head_sum<SILU>(gA_part, G) * svi;
                    const float gapre = (c.vc ? gA : gA * cc) * da;
                    gr0 = self ? 0.f : gA_part * at * dc;
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        gq[j] = fmaf(gapre, kd[j], gq[j]);
                    /* g_pre without the factors act'(pre) (dk' and dv'), which a pair's
                       reverse shares: applied once below. The self-loop has no geometry
                       gradient; xm: the pair's filter backward is the other warp's. */
                    const bool mine = !self && !(xm >> i & 1u);
                    if (mine) {
                        const float As = A * svi;
#pragma unroll
                        for (int j = 0; j < CPL; j++) {
                            gp[0][j] = gapre * q[j] * kk[j];
                            gp[1][j] = gxv[j] * As;
                        }
                    }
                    if constexpr (MERGED)
                        if (rm >> i & 1u) /* the sender work of (t -> so), first half */
                            merged_send_first<CPL, SILU>(c, l, kt, vt, s, f0, on, G, ak, av,
                                                         dk, dv, svi, cc, pm >> i & 1u, gp);
                    if (mine)
#pragma unroll
                        for (int j = 0; j < CPL; j++) {
                            gp[0][j] *= ddk[j];
                            gp[1][j] *= ddv[j];
                        }
                }
                gp_to_smem<CPL>(s_pre, i, gp, grl, gr0);
            }
            if constexpr (MERGED) {
                st_vec<CPL>(acc, ak);
                st_vec<CPL>(acc + AW, av);
            }
            if (back)
                back_from_smem<CPL, 0>(s_wt, s_drbf, kw, F, wl, s_pre, grl);
            __syncwarp(); /* s_sc written */
        }
        {
            float gV[3][CPL];
#pragma unroll
            for (int cx = 0; cx < 3; cx++) {
                ldg_vec<CPL>(l.gV + ((size_t)t * 3 + cx) * F + f0, gV[cx]);
                zero_off<CPL>(on, gV[cx]);
            }
            /* MERGED: v1[t], v2[t] and vec[t] for the sender work of e' */
            float vt1[CPL], vt2[CPL], vst[3][CPL];
            if constexpr (MERGED) {
                ldg_vec<CPL>(trow + vx_off + D, vt1);
                ldg_vec<CPL>(trow + vx_off + 2 * D, vt2);
                zero_off<CPL>(on, vt1);
                zero_off<CPL>(on, vt2);
#pragma unroll
                for (int cx = 0; cx < 3; cx++) {
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        vst[cx][j] = 0.f;
                    if (l.vec)
                        ldg_vec<CPL>(l.vec + ((size_t)t * 3 + cx) * F + f0, vst[cx]);
                }
            }
            pre_to_smem<CPL, 2>(s_wt, s_b, s_rbf, kw, F, wl, s_pre);
#pragma unroll 1
            for (int i = 0; i < E; i++) {
                float a0[2][CPL], gp[2][CPL];
                ld_vec<CPL>(s_pre + 2 * i * AW, a0[0]);
                ld_vec<CPL>(s_pre + (2 * i + 1) * AW, a0[1]);
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    gp[0][j] = gp[1][j] = 0.f;
                float gr0 = grl[0];
                if (i < nv) {
                    const int s = md.src[i];
                    const float svi = s_sc[i];
                    /* MERGED: e's direction times sv (0 for the self-loop), for the sender
                       work of e', whose direction is -d (the sign is applied there, where it
                       folds into the operands: a negation here was three FADDs per edge) */
                    float dse[3] = {0.f, 0.f, 0.f};
                    /* xm: the pair's filter backward is the other warp's */
                    const bool mine = !MERGED || !(xm >> i & 1u);
                    /* the gates' activations and derivatives once per edge: the receiver
                       work and the reverse's sender work (merged_send_second) read the same
                       pre-activations (e and e' share r) */
                    float dv1a[CPL], dv2a[CPL], ddv1a[CPL], ddv2a[CPL];
                    actv_vec<CPL, SILU>(dv_used<SILU>(c), c.act, a0[0], dv1a, &ddv1a);
                    actv_vec<CPL, SILU>(dv_used<SILU>(c), c.act, a0[1], dv2a, &ddv2a);
                    /* nothing of the self-loop's (r = 0) second half reaches g_q */
                    if (md.geo[i].w != 0.f) {
                        const float4 g = md.geo[i];
                        const float inv = __shfl_sync(0xffffffffu, invl, i);
                        const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
                        const float dirs[3] = {dir[0] * svi, dir[1] * svi, dir[2] * svi};
                        float v1[CPL], v2[CPL], vs[3][CPL];
                        ldg_gate_rows<CPL>(l.qkv, l.vec, s, F, D, f0, vx_off, v1, v2, vs);
                        /* g_d = sv sum_ch g_mv v2 dv2 (sv applied below); g_c (vector_cutoff)
                           = sum_ch (g_mv . vec[s]) v1 dv1 + (g_mv . d) v2 dv2, the second term
                           d . (g_d / sv); g_pre of the gates (g_mv . d sv: with sv) */
                        float gc_part = 0.f;
                        float gd_part[3] = {0.f, 0.f, 0.f};
                        float gvv1[CPL];
#pragma unroll
                        for (int j = 0; j < CPL; j++) {
                            const float g2 = v2[j] * dv2a[j];
#pragma unroll
                            for (int cx = 0; cx < 3; cx++)
                                gd_part[cx] = fmaf(gV[cx][j], g2, gd_part[cx]);
                            gvv1[j] = (gV[0][j] * vs[0][j] + gV[1][j] * vs[1][j] +
                                       gV[2][j] * vs[2][j]) *
                                      v1[j];
                            gc_part = fmaf(gvv1[j], dv1a[j], gc_part);
                        }
                        /* one branch for the CPL channels (inside the loop above: one per
                           channel) */
                        if (mine)
#pragma unroll
                            for (int j = 0; j < CPL; j++) {
                                gp[0][j] = gvv1[j] * (svi * ddv1a[j]);
                                gp[1][j] = (gV[0][j] * dirs[0] + gV[1][j] * dirs[1] +
                                            gV[2][j] * dirs[2]) *
                                           v2[j] * ddv2a[j];
                            }
                        if (c.vc) {
                            gc_part = fmaf(gd_part[0], dir[0], gc_part);
                            gc_part = fmaf(gd_part[1], dir[1], gc_part);
                            gc_part = fmaf(gd_part[2], dir[2], gc_part);
                            gr0 += gc_part * s_sc[E + i];
                        }
                        /* g_d / sv summed over the warp into s_sc[2 + cx][i] (lanes 0, 8, 16):
                           the direction part of dE/dw_e goes with the radial part, below */
                        const float gd = warp_sum4(gd_part[0], gd_part[1], gd_part[2], 0.f, lane);
                        if ((lane & 7) == 0 && lane < 24)
                            s_sc[(2 + (lane >> 3)) * E + i] = gd;
#pragma unroll
                        for (int cx = 0; cx < 3; cx++)
                            dse[cx] = dirs[cx];
                    }
                    if constexpr (MERGED)
                        if (rm >> i & 1u) /* the sender work of (t -> so), second half: -d */
                            merged_send_second<CPL, SILU>(c, l, vt1, vt2, vst, s, f0,
                                                          acc, dv1a, dv2a, ddv1a,
                                                          ddv2a, svi, dse,
                                                          pm >> i & 1u, gp);
                }
                gp_to_smem<CPL>(s_pre, i, gp, grl, gr0);
            }
            if (back)
                back_from_smem<CPL, 2>(s_wt, s_drbf, kw, F, wl, s_pre, grl);
        }
        /* dE/dw_e = dE/dr_e d + (g_d - d (d . g_d)) / r: the radial part (filters, RBF,
           cutoff) summed over the warp for the chunk's edges at once (lane 8 i: edge i), and
           the direction part from s_sc (g_d = sv * the sum there), one lane per edge */
        static_assert(E == 4, "warp_sum4: four edges per chunk");
        __syncwarp(); /* s_sc's g_d written */
        {
            const float gr = warp_sum4(grl[0], grl[1], grl[2], grl[3], lane);
            const int i = lane >> 3, e = cb + i;
            if ((lane & 7) == 0 && i < nv && md.geo[i].w != 0.f) {
                const float4 g = md.geo[i];
                const float inv = 1.f / g.w;
                const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
                const float gd[3] = {s_sc[2 * E + i], s_sc[3 * E + i], s_sc[4 * E + i]};
                const float dd = gd[0] * dir[0] + gd[1] * dir[1] + gd[2] * dir[2];
                const float invs = inv * s_sc[i];
                const float4 ga = md.gw[i];
                float *const go = l.gw + 3 * (size_t)e;
                go[0] = ga.x + fmaf(gr, dir[0], (gd[0] - dir[0] * dd) * invs);
                go[1] = ga.y + fmaf(gr, dir[1], (gd[1] - dir[1] * dd) * invs);
                go[2] = ga.z + fmaf(gr, dir[2], (gd[2] - dir[2] * dd) * invs);
            }
        }
        __syncwarp();
    }
}

template <int CPL, int SILU, bool SPLIT>
static __global__ void __launch_bounds__(32 * ET_EDGE_WARPS, EDGE_MIN_BLOCKS(CPL))
    k_edge_bwd_recv(const et_edge_common c, const et_edge_layer l, const int nsplit,
                    float *const part)
{
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform();
    const edge_smem sh = edge_smem_load(l.filt_wt, l.filt_b, F, c.K, 4, 1);
    const auto [D, G, on, f0, wl, vx_off] = edge_lane_of<CPL, SILU>(c, lane);
    /* work item w = (part sp, receiver t), part-major; !SPLIT (S = 1): t = w, the whole row */
    const int S = SPLIT ? nsplit : 1, rows = c.n_local, items = rows * S;
    const bool dyn = c.work != nullptr;
    for (int w = edge_item(c.work, dyn, blockIdx.x * ET_EDGE_WARPS + warp, lane); w < items;
         w = edge_item(c.work, dyn, w + gridDim.x * ET_EDGE_WARPS, lane)) {
        const int sp = SPLIT ? w / rows : 0, t = edge_row(c, SPLIT ? w - sp * rows : w);
        float gq[CPL];
        bwd_recv_row<CPL, SILU, false>(c, l, t, sp, S, F, D, lane, on, f0, wl, G, vx_off, sh.wt, sh.b,
                                       sh.rbf, sh.drbf, nullptr, gq);
        if (on) /* SPLIT: the partial g_q of item (sp, t), summed by et_split_sum */
            st_vec<CPL>((!SPLIT ? l.gqkv + (size_t)t * 5 * F
                                : part + ((size_t)sp * rows + t) * F) + f0, gq);
    }
}

template <int CPL, int SILU, bool SPLIT, bool REST = false>
static __global__ void __launch_bounds__(32 * ET_EDGE_WARPS, EDGE_MIN_BLOCKS(CPL))
    k_edge_bwd_send(const et_edge_common c, const et_edge_layer l, const int nsplit,
                    float *const part)
{
    constexpr int E = ET_EDGE_CHUNK;
    /* REST with no uncovered edge and no ghost rows (the merged pass with the periodic images
       folded: the usual case): nothing to do, so no block stages the filter weights (64 KB
       each at F = 128: 9.7 us per launch at 1,000 atoms, docs/gpu.md v24) */
    if constexpr (REST)
        if (c.n_total == c.n_local && c.tr_off2[c.n_total] == 0)
            return;
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform();
    const edge_smem sh = edge_smem_load(l.filt_wt, l.filt_b, F, c.K, 4, 0);
    float *s_wt = sh.wt, *s_b = sh.b, *s_rbf = sh.rbf;

    const auto [D, G, on, f0, wl, vx_off] = edge_lane_of<CPL, SILU>(c, lane);
    /* work item w = (part sp, sender s), part-major; !SPLIT (S = 1): s = w, the whole row */
    const int S = SPLIT ? nsplit : 1, rows = c.n_total, items = rows * S;
    const bool dyn = c.work != nullptr;
    for (int w = edge_item(c.work, dyn, blockIdx.x * ET_EDGE_WARPS + warp, lane); w < items;
         w = edge_item(c.work, dyn, w + gridDim.x * ET_EDGE_WARPS, lane)) {
        const int sp = SPLIT ? w / rows : 0, s = SPLIT ? w - sp * rows : w;
        /* REST (after the merged pass, S = 1): only the edges it did not cover (tr_edge2);
           an owned row without such edges is complete already */
        const int e0 = REST ? c.tr_off2[s] : c.tr_off[s],
                  e1 = REST ? c.tr_off2[s + 1] : c.tr_off[s + 1];
        const int *const tr_edge = REST ? c.tr_edge2 : c.tr_edge;
        if (REST && e1 == e0 && s < c.n_local)
            continue;
        const float *srow = l.qkv + (size_t)s * 5 * F;
        float kk[CPL], vv[3][CPL], vs[3][CPL];
        ldg_vec<CPL>(srow + F + f0, kk);
        zero_off<CPL>(on, kk);
#pragma unroll
        for (int p = 0; p < 3; p++) {
            ldg_vec<CPL>(srow + vx_off + p * D, vv[p]);
            zero_off<CPL>(on, vv[p]);
        }
#pragma unroll
        for (int cx = 0; cx < 3; cx++) {
            if (l.vec)
                ldg_vec<CPL>(l.vec + ((size_t)s * 3 + cx) * F + f0, vs[cx]);
            else
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    vs[cx][j] = 0.f;
        }
        float gk[CPL], gv[3][CPL], gvec[3][CPL];
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            gk[j] = 0.f;
#pragma unroll
            for (int p = 0; p < 3; p++)
                gv[p][j] = gvec[p][j] = 0.f;
        }
        for (int cb = e0 + sp * E; cb < e1; cb += S * E) {
            const int nv = min(E, e1 - cb);
            int eid[E], rcv[E];
            float r[E], sv[E];
#pragma unroll
            for (int i = 0; i < E; i++) {
                eid[i] = i < nv ? tr_edge[cb + i] : 0;
                /* the receivers: REST from tr_dst2 (beside tr_edge2; the merged path keeps no
                   e_dst past the graph build) */
                rcv[i] = i < nv ? (REST ? c.tr_dst2[cb + i] : c.e_dst[eid[i]]) : 0;
                r[i] = i < nv ? c.e_geo[eid[i]].w : 0.f;
            }
            /* [0, K): no window in this pass (at its register cap, it spills 8-24 B already) */
            const int kw = stage_rbf<E, false, false>(c, r, nv, lane, s_rbf, nullptr);
            __syncwarp();
            {
                float pre[E][2][CPL];
                filter_pre<CPL, E, 2, 4, 0>(s_wt, s_b, s_rbf, kw, F, wl, pre);
#pragma unroll
                for (int i = 0; i < E; i++) {
                    if (i >= nv)
                        break;
                    const int t = rcv[i];
                    const float cc = cutoff_pi(r[i], c.cl, c.cu, nullptr);
                    float q[CPL], gX[CPL];
                    ldg_vec<CPL>(l.qkv + (size_t)t * 5 * F + f0, q);
                    ldg_vec<CPL>(l.gX + (size_t)t * F + f0, gX);
                    zero_off<CPL>(on, gX);
                    float dk[CPL], dv[CPL];
                    float part = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        dk[j] = dk_used<SILU>(c) ? actv<SILU>(c.act, pre[i][0][j], nullptr) : 1.f;
                        dv[j] = dv_used<SILU>(c) ? actv<SILU>(c.act, pre[i][1][j], nullptr) : 1.f;
                        part = fmaf(q[j] * kk[j], dk[j], part);
                    }
                    float da;
                    const float a = actv<SILU>(c.attn_act, head_sum<SILU>(part, G), &da);
                    const float A = c.vc ? a : a * cc;
                    sv[i] = c.vc ? cc : 1.f;
                    float gA_part = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        gA_part = fmaf(gX[j], vv[0][j] * dv[j] * sv[i], gA_part);
                    const float gA = head_sum<SILU>(gA_part, G);
                    const float gapre = (c.vc ? gA : gA * cc) * da;
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        gk[j] = fmaf(gapre * q[j], dk[j], gk[j]);
                        gv[0][j] = fmaf(gX[j] * A * sv[i], dv[j], gv[0][j]);
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
                    const int e = eid[i];
                    const int t = rcv[i];
                    const float4 g = c.e_geo[e];
                    const float inv = g.w == 0.f ? 0.f : 1.f / g.w;
                    const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
                    float gV[3][CPL];
#pragma unroll
                    for (int cx = 0; cx < 3; cx++)
                        ldg_vec<CPL>(l.gV + ((size_t)t * 3 + cx) * F + f0, gV[cx]);
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        float dv1 = 1.f, dv2 = 1.f;
                        if (dv_used<SILU>(c)) {
                            dv1 = actv<SILU>(c.act, pre[i][0][j], nullptr);
                            dv2 = actv<SILU>(c.act, pre[i][1][j], nullptr);
                        }
                        const float g1 = vv[1][j] * dv1 * sv[i];
                        const float gvt1 = gV[0][j] * vs[0][j] + gV[1][j] * vs[1][j] + gV[2][j] * vs[2][j];
                        const float gvt2 = gV[0][j] * dir[0] + gV[1][j] * dir[1] + gV[2][j] * dir[2];
                        gv[1][j] = fmaf(gvt1 * sv[i], dv1, gv[1][j]);
                        gv[2][j] = fmaf(gvt2 * sv[i], dv2, gv[2][j]);
#pragma unroll
                        for (int cx = 0; cx < 3; cx++)
                            gvec[cx][j] = fmaf(gV[cx][j], g1, gvec[cx][j]);
                    }
                }
            }
        }
        if (!on)
            continue;
        float *grow = l.gqkv + (size_t)s * 5 * F;
        if (s >= c.n_local && sp == 0) {
            float zero[CPL];
#pragma unroll
            for (int j = 0; j < CPL; j++)
                zero[j] = 0.f;
            st_vec<CPL>(grow + f0, zero);
        }
        if (SPLIT) {
            /* the partial row [g_k | g_v (gqkv's layout from F on) | g_vec] of item (sp, s),
               summed by et_split_sum into gqkv[s][F:5F] (=) and gvec[s] (+=) */
            float *pr = part + ((size_t)sp * rows + s) * 7 * F;
            st_vec<CPL>(pr + f0, gk);
#pragma unroll
            for (int p = 0; p < 3; p++)
                st_vec<CPL>(pr + (vx_off - F) + p * D, gv[p]);
#pragma unroll
            for (int cx = 0; cx < 3; cx++)
                st_vec<CPL>(pr + (size_t)(4 + cx) * F + f0, gvec[cx]);
            continue;
        }
        if (REST && s < c.n_local) { /* add to the merged pass's sums of the owned row */
            float cur[CPL];
            ld_vec<CPL>(grow + F + f0, cur);
#pragma unroll
            for (int j = 0; j < CPL; j++)
                gk[j] += cur[j];
#pragma unroll
            for (int p = 0; p < 3; p++) {
                ld_vec<CPL>(grow + vx_off + p * D, cur);
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    gv[p][j] += cur[j];
            }
        }
        st_vec<CPL>(grow + F + f0, gk);
#pragma unroll
        for (int p = 0; p < 3; p++)
            st_vec<CPL>(grow + vx_off + p * D, gv[p]);
#pragma unroll
        for (int cx = 0; cx < 3; cx++) {
            float *gp = l.gvec + ((size_t)s * 3 + cx) * F + f0;
            float cur[CPL];
            ld_vec<CPL>(gp, cur);
#pragma unroll
            for (int j = 0; j < CPL; j++)
                cur[j] += gvec[cx][j];
            st_vec<CPL>(gp, cur);
        }
    }
}

/*
 * Merged backward pass (DS4SCI_CUDA_MERGED=1; docs/gpu.md "Merged backward pass"): one warp per
 * owned receiver t over its CSR row, as k_edge_bwd_recv, and for each edge e = (s -> t) with
 * rev[e] >= 0 also the sender pass's work of the reverse edge e' = (t -> s) (receiver s,
 * sender t), from the same filter evaluation: e and e' have the same r (graph.cu, k_edge_rev),
 * so the same RBF, filters dk, dv, gates and cutoff; the direction of e' is -d. The self-loop
 * is its own reverse (its sender work, direction 0, is done here too). The sender sums of t
 * (g_k, g_v, g_vec) are accumulated over the row in shared memory (7 x 32 CPL floats per warp:
 * the receiver work alone is at 124 of 128 registers) and stored at the end of the row: gqkv[t] gets
 * g_q | g_k | g_v (=), gvec[t] += g_vec. Every write goes to t's own rows or to gw[e] of t's
 * row: no atomics, a fixed order (row order, then et_edge_backward_send adds the edges not
 * covered, tr_edge2, in transpose order). The sender work of e' is the code of k_edge_bwd_send
 * with (its s, its t) = (t, s) (merged_send_first / merged_send_second), done for edge i right
 * after its receiver work in each half, from the activations dk, dv (first half) and the
 * second half's pre-activations (dv1, dv2 evaluated again there: cheaper than keeping them
 * live): done there, edge i's pre-activations are dead before the next edge's (doing it after
 * the filter backward kept all four edges' activations live across it: 168 / 428 B of spills
 * at CPL 4 instead of 60 / 216 B, v7). The pairs of reverse edges share one radial filter
 * backward (bwd_recv_row).
 *
 * Blocks of up to ET_MERGED_WARPS warps, one block per SM (filters 4 K F floats + per warp the
 * scratch of k_edge_bwd_recv, with its metadata buffers, and the accumulators: 213,248 B at
 * F = 128, K = 32, 16 warps; the H200 allows 232,448 B per block), so 16 warps per SM as the
 * receiver pass's two blocks of 8; registers capped at 128 alike.
 */
#ifndef ET_MERGED_WARPS /* (a build may set it: docs/gpu.md v34 measured 8, 12) */
#define ET_MERGED_WARPS 16
#endif
/* at CPL = 8 (F = 256) blocks of at most 8 warps (the filters take 128 KB of shared memory
   anyway), so that the kernel may use up to 255 registers as k_edge_bwd_recv does */
#define MERGED_MAXW(CPL) ((CPL) >= 8 ? 8 : ET_MERGED_WARPS)

static __host__ __device__ inline size_t merged_warp_floats(int K, int CPL)
{
    return edge_warp_floats(K, 32 * CPL, 1) + 7 * 32 * (size_t)CPL;
}

static inline size_t merged_smem_bytes(int F, int K, int CPL, int warps)
{
    return 4 * ((size_t)K * 4 * F + 4 * (size_t)F + (size_t)warps * merged_warp_floats(K, CPL));
}

/*
 * The sender work of the reverse edge e' = (t -> s) of e = (s -> t) in the merged pass
 * (k_edge_bwd_send's code with its (s, t) = (t, s)), from e's filter activations: first half
 * (dk, dv: g_k, g_v value) and second half (dv1, dv2, direction dir2 = -d, 0 for the
 * self-loop: g_v gates, g_vec), added to the lane's accumulators acc (parts AW apart). t's
 * rows (kt = k[t], vt = v~[t]; vt1, vt2 = v1[t], v2[t], vst = vec[t], 0 in the first layer)
 * come in from the caller, read once per chunk half (bwd_recv_row).
 */
template <int CPL, int SILU>
static __device__ __forceinline__ void merged_send_first(const et_edge_common &c,
                                                         const et_edge_layer &l,
                                                         const float (&kt)[CPL],
                                                         const float (&vt)[CPL], int s, int f0,
                                                         bool on, int G, float (&ak)[CPL],
                                                         float (&av)[CPL], const float (&dk)[CPL],
                                                         const float (&dv)[CPL], float sv, float cc,
                                                         bool pair, float (&gp)[2][CPL])
{
    const int F = edge_f<CPL>(c);
    float q2[CPL], gX2[CPL];
    ldg_vec<CPL>(l.qkv + (size_t)s * 5 * F + f0, q2);
    ldg_vec<CPL>(l.gX + (size_t)s * F + f0, gX2);
    zero_off<CPL>(on, gX2);
    /* qd = q[s] dk and gxd = g_mx[s] dv serve the logit and g_k, g_A and g_v */
    float qd[CPL], gxd[CPL];
    float part = 0.f, gA_part = 0.f;
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        qd[j] = q2[j] * dk[j];
        part = fmaf(qd[j], kt[j], part);
        gxd[j] = gX2[j] * dv[j];
        gA_part = fmaf(gxd[j], vt[j], gA_part);
    }
    float da;
    const float a = actv<SILU>(c.attn_act, head_sum<SILU>(part, G), &da);
    const float A = c.vc ? a : a * cc;
    const float As = A * sv;
    const float gA = head_sum<SILU>(gA_part, G) * sv;
    const float gapre = (c.vc ? gA : gA * cc) * da;
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        ak[j] = fmaf(gapre, qd[j], ak[j]);
        av[j] = fmaf(As, gxd[j], av[j]);
    }
    if (pair) /* e's g_pre += that of e' (receiver s, sender t), before the factors dk', dv' */
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            gp[0][j] = fmaf(gapre * q2[j], kt[j], gp[0][j]);
            gp[1][j] = fmaf(gX2[j] * As, vt[j], gp[1][j]);
        }
}

template <int CPL, int SILU>
static __device__ __forceinline__ void merged_send_second(const et_edge_common &c,
                                                          const et_edge_layer &l,
                                                          const float (&vt1)[CPL],
                                                          const float (&vt2)[CPL],
                                                          const float (&vst)[3][CPL], int s,
                                                          int f0, float *acc,
                                                          const float (&dv1)[CPL],
                                                          const float (&dv2)[CPL],
                                                          const float (&ddv1)[CPL],
                                                          const float (&ddv2)[CPL], float sv,
                                                          const float (&dse)[3], bool pair,
                                                          float (&gp)[2][CPL])
{
    constexpr int AW = 32 * CPL;
    const int F = edge_f<CPL>(c);
    float gV2[3][CPL];
#pragma unroll
    for (int cx = 0; cx < 3; cx++)
        ldg_vec<CPL>(l.gV + ((size_t)s * 3 + cx) * F + f0, gV2[cx]);
    /* g_v gate 1: (gV2 . vec[t]) dv1 sv; gate 2: (gV2 . dir2) dv2 sv with dir2 = -d (dse = d sv:
       gvt2s = -(gV2 . dse), the same bits as the sum over -dse). The gates dv1, dv2 and their
       derivatives are the receiver work's (the same pre-activations). g1 = v1[t] dv1 sv for
       g_vec below. */
    float g1[CPL];
    {
        float gvt1[CPL], a1[CPL], a2[CPL];
#pragma unroll
        for (int j = 0; j < CPL; j++)
            gvt1[j] = gV2[0][j] * vst[0][j] + gV2[1][j] * vst[1][j] + gV2[2][j] * vst[2][j];
        ld_vec<CPL>(acc + 2 * AW, a1);
        ld_vec<CPL>(acc + 3 * AW, a2);
#pragma unroll
        for (int j = 0; j < CPL; j++) {
            const float dv1s = dv1[j] * sv;
            const float gvt2s = -(gV2[0][j] * dse[0] + gV2[1][j] * dse[1] + gV2[2][j] * dse[2]);
            a1[j] = fmaf(gvt1[j], dv1s, a1[j]);
            a2[j] = fmaf(gvt2s, dv2[j], a2[j]);
            if (pair) { /* e's g_pre += that of e' (receiver s, sender t) */
                gp[0][j] = fmaf(gvt1[j] * vt1[j], sv * ddv1[j], gp[0][j]);
                gp[1][j] = fmaf(gvt2s * vt2[j], ddv2[j], gp[1][j]);
            }
            g1[j] = vt1[j] * dv1s;
        }
        st_vec<CPL>(acc + 2 * AW, a1);
        st_vec<CPL>(acc + 3 * AW, a2);
    }
    /* g_vec[t] += gV2 g1 */
#pragma unroll
    for (int cx = 0; cx < 3; cx++) {
        float ag[CPL];
        ld_vec<CPL>(acc + (4 + cx) * AW, ag);
#pragma unroll
        for (int j = 0; j < CPL; j++)
            ag[j] = fmaf(gV2[cx][j], g1[j], ag[j]);
        st_vec<CPL>(acc + (4 + cx) * AW, ag);
    }
}

template <int CPL, int SILU, bool SPLIT>
static __global__ void __launch_bounds__(32 * MERGED_MAXW(CPL), 1)
    k_edge_bwd_merged(const et_edge_common c, const et_edge_layer l, const int nsplit,
                      float *const part)
{
    constexpr int E = ET_EDGE_CHUNK;
    constexpr int AW = 32 * CPL; /* stride of the accumulator parts (>= F; lane-major) */
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform(), nwb = blockDim.x >> 5;
    extern __shared__ float4 sm4[];
    float *sm = reinterpret_cast<float *>(sm4);
    float *const s_wt = sm, *const s_b = sm + (size_t)c.K * 4 * F;
    float *const s_rbf = s_b + 4 * F + (size_t)warp * merged_warp_floats(c.K, CPL);
    float *const s_drbf = s_rbf + c.K * E;
    /* this lane's accumulators: part p (0 g_k, 1..3 g_v value / gate 1 / gate 2, 4..6 g_vec
       x, y, z) at acc[p * AW + j]; private to the lane (off lanes too: no sharing) */
    float *const acc = s_rbf + merged_warp_floats(c.K, CPL) - 7 * AW + lane * CPL;
    block_copy(s_wt, l.filt_wt, c.K * 4 * F);
    block_copy(s_b, l.filt_b, 4 * F);
    __syncthreads();

    const auto [D, G, on, f0, wl, vx_off] = edge_lane_of<CPL, SILU>(c, lane);
    /* work item w = (part sp, receiver t), part-major, as k_edge_bwd_recv; !SPLIT: t = w */
    const int S = SPLIT ? nsplit : 1, rows = c.n_local, items = rows * S;
    const bool dyn = c.work != nullptr;
    for (int w = edge_item(c.work, dyn, blockIdx.x * nwb + warp, lane); w < items;
         w = edge_item(c.work, dyn, w + gridDim.x * nwb, lane)) {
        const int sp = SPLIT ? w / rows : 0, t = edge_row(c, SPLIT ? w - sp * rows : w);
        float gq[CPL];
        bwd_recv_row<CPL, SILU, true>(c, l, t, sp, S, F, D, lane, on, f0, wl, G, vx_off, s_wt,
                                      s_b, s_rbf, s_drbf, acc, gq);
        if (!on)
            continue;
        /* SPLIT: the partial row of item (sp, t), [gqkv's 5F | g_vec 3F], summed by
           et_split_sum into gqkv[t] (=) and gvec[t] (+=) */
        float *grow = SPLIT ? part + ((size_t)sp * rows + t) * 8 * F : l.gqkv + (size_t)t * 5 * F;
        float v[CPL];
        st_vec<CPL>(grow + f0, gq);
        ld_vec<CPL>(acc, v);
        st_vec<CPL>(grow + F + f0, v);
#pragma unroll
        for (int p = 0; p < 3; p++) {
            ld_vec<CPL>(acc + (1 + p) * AW, v);
            st_vec<CPL>(grow + vx_off + p * D, v);
        }
#pragma unroll
        for (int cx = 0; cx < 3; cx++) {
            ld_vec<CPL>(acc + (4 + cx) * AW, v);
            if (SPLIT) {
                st_vec<CPL>(grow + (size_t)(5 + cx) * F + f0, v);
                continue;
            }
            float *gp = l.gvec + ((size_t)t * 3 + cx) * F + f0;
            float cur[CPL];
            ld_vec<CPL>(gp, cur);
#pragma unroll
            for (int j = 0; j < CPL; j++)
                cur[j] += v[j];
            st_vec<CPL>(gp, cur);
        }
    }
}

/* Warps per block of the merged kernel (<= ET_MERGED_WARPS) whose shared memory fits a block on
   this device; 0 when not even one does. smem (non-NULL) gets the bytes. */
template <int CPL> static int merged_warps(const et_edge_common *c, size_t *smem)
{
    int dev, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
            cudaSuccess)
        return 0;
    int w = MERGED_MAXW(CPL);
    while (w > 0 && merged_smem_bytes(c->F, c->K, CPL, w) > (size_t)optin)
        w--;
    if (smem)
        *smem = merged_smem_bytes(c->F, c->K, CPL, w);
    return w;
}

template <int CPL>
static cudaError_t launch_merged(cudaStream_t s, int split, float *part, const et_edge_common *c,
                                 const et_edge_layer *l)
{
    size_t smem = 0;
    const int w = merged_warps<CPL>(c, &smem);
    if (w < 1)
        return cudaErrorInvalidConfiguration;
    auto kern = split > 1 ? by_act(c, k_edge_bwd_merged<CPL, ACT_ANY, true>,
                                   k_edge_bwd_merged<CPL, ACT_SILU, true>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST, true>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST_DKV, true>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST_DKV_G, true>)
                          : by_act(c, k_edge_bwd_merged<CPL, ACT_ANY, false>,
                                   k_edge_bwd_merged<CPL, ACT_SILU, false>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST, false>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST_DKV, false>,
                                   k_edge_bwd_merged<CPL, ACT_SILU_FAST_DKV_G, false>);
    int grid = 0;
    cudaError_t e = resident_grid(kern, smem, w, (long long)c->n_local * split, &grid);
    if (e != cudaSuccess)
        return e;
    kern<<<grid, 32 * w, smem, s>>>(*c, *l, split, part);
    e = cudaGetLastError();
    if (e != cudaSuccess || split == 1)
        return e;
    const int F = c->F;
    return et_split_sum(s, split, c->n_local, part, l->gqkv, 5 * F, 5 * F, 0, l->gvec, 3 * F,
                        3 * F, 1);
}

/* The sender pass after the merged pass: the edges it did not cover (S = 1). */
template <int CPL>
static cudaError_t launch_send_rest(cudaStream_t s, int grid, const et_edge_common *c,
                                    const et_edge_layer *l)
{
    return launch_persistent(by_act(c, k_edge_bwd_send<CPL, ACT_ANY, false, true>,
                                    k_edge_bwd_send<CPL, ACT_SILU, false, true>,
                                    k_edge_bwd_send<CPL, ACT_SILU_FAST, false, true>),
                             edge_smem_bytes(c->F, c->K, 4, 0), grid, s, *c, *l, 1,
                             (float *)nullptr);
}

extern "C" int et_edge_merged_ok(int CPL, const et_edge_common *c)
{
    switch (CPL) {
    case 1: return merged_warps<1>(c, nullptr) >= 1;
    case 2: return merged_warps<2>(c, nullptr) >= 1;
    case 4: return merged_warps<4>(c, nullptr) >= 1;
    case 8: return merged_warps<8>(c, nullptr) >= 1;
    default: return 0;
    }
}

/*
 * Neighbour-embedding backward for owned receiver t, given g_m = dE/dm[t] (gm [nl][F]):
 * per non-self edge, g_pre = g_m E_nb[z_s] c(r), g_c = sum g_m E_nb[z_s] pre, and
 * gw[e] += (sum_k g_f_k f'_k + g_c c') d_e.
 *
 * Per chunk (as the layer kernels, docs/gpu.md v16): e_geo, gw and e_src staged in the warp's
 * scratch one chunk ahead (edge_meta_fetch<true, false> / edge_meta_take); lane i < nv evaluates
 * edge i's cutoff and starts the load of its sender's type z[s] before the RBF staging (the chain
 * e_src -> z -> E_nb row without exposed latency per edge); the chunk's four dE/dw sums in one
 * warp_sum4 (the same butterfly, bit for bit, as warp_sum), written by lanes 0/8/16/24 from the
 * staged gw and e_geo (no global read-modify-write).
 *
 * LIN = false: the filter evaluated (filter_pre), then filter_back, as before, value for value.
 * LIN = true (the default, launcher): by linearity, with ge = g_m E_nb[z_s] and
 * a_k = sum_ch ge[ch] W[ch][k] (this lane's channels),
 *   sum_k g_f_k f'_k = c(r) sum_k a_k f'_k,   g_c = sum_k a_k f_k + sum_ch ge[ch] b[ch],
 * one pass over W (E CPL + 2E FMAs per k instead of 2 E CPL + E, and no pre-activations held):
 * the same sums in another order (fp32 rounding only). DS4SCI_CUDA_NE_EXACT=1 takes LIN = false.
 * Both sum over the chunk's basis window (stage_rbf_of, c.kwin; the same bits as over all K).
 */
template <int CPL, bool LIN>
static __global__ void __launch_bounds__(32 * ET_EDGE_WARPS, NE_BWD_MIN_BLOCKS(CPL))
    k_ne_bwd(const et_edge_common c, const float *ne_wt, const float *ne_b, const float *ne_emb,
             const int *z, const float *gm, float *gw)
{
    constexpr int E = ET_EDGE_CHUNK;
    constexpr int MW = edge_meta_floats(1);
    const int F = edge_f<CPL>(c);
    const int lane = threadIdx.x & 31, warp = warp_uniform();
    const edge_smem sh = ne_smem_load(ne_wt, ne_b, F, c.K, 1);
    float *s_wt = sh.wt, *s_b = sh.b, *s_rbf = sh.rbf, *s_drbf = sh.drbf, *s_meta = sh.meta;
    const edge_meta<true> md = edge_meta<true>::at(s_meta);
    const bool on = lane * CPL < F;
    const int f0 = on ? lane * CPL : 0, wl = f0 / CPL;
    const int ie = lane & (E - 1); /* the chunk's edge whose cutoff and sender type this lane gets */
    for (int t = blockIdx.x * ET_EDGE_WARPS + warp; t < c.n_local; t += gridDim.x * ET_EDGE_WARPS) {
        float g[CPL];
        ldg_vec<CPL>(gm + (size_t)t * F + f0, g);
        zero_off<CPL>(on, g);
        const int e0 = c.row_off[t] + 1, e1 = c.row_off[t + 1];
        if (e0 < e1)
            edge_meta_fetch<true, false>(c, gw, e0, min(E, e1 - e0), lane, s_meta + MW);
        for (int cb = e0; cb < e1; cb += E) {
            const int nv = min(E, e1 - cb);
            edge_meta_take<MW>(s_meta, lane);
            if (cb + E < e1)
                edge_meta_fetch<true, false>(c, gw, cb + E, min(E, e1 - cb - E), lane,
                                             s_meta + MW);
            const bool ev = ie < nv;
            /* in flight during the RBF staging (row 0 for the empty slots) */
            const int zl = ev ? __ldg(z + md.src[ie]) : 0;
            const int kw = stage_rbf_of<E, true, false, true>(
                c, [&](int i) { return md.geo[i].w; }, nv, lane, s_rbf, s_drbf);
            float ccl = 0.f, dcl = 0.f;
            if (ev)
                ccl = et_cutoff_f(md.geo[ie].w, c.cl, c.cu, &dcl);
            __syncwarp();
            /* ge = g_m E_nb[z_s] for the lane's channels (finite garbage for slots i >= nv: their
               sums are never written) */
            float ge[E][CPL];
#pragma unroll
            for (int i = 0; i < E; i++) {
                const int zs = __shfl_sync(0xffffffffu, zl, i);
                float en[CPL];
                ldg_vec<CPL>(ne_emb + (size_t)zs * F + f0, en);
#pragma unroll
                for (int j = 0; j < CPL; j++)
                    ge[i][j] = g[j] * en[j];
            }
            float v[E]; /* this lane's share of each edge's radial dE/dr */
            if constexpr (LIN) {
                float P[E], Q[E];
#pragma unroll
                for (int i = 0; i < E; i++)
                    P[i] = Q[i] = 0.f;
                /* pointer steps (the row offsets as immediates where unrolled); k over the
                   chunk's basis window kw: outside it f_k = f'_k = 0 exactly, P and Q the
                   same bits (fmaf(a, 0, x) = x) */
                const int k0 = kw & 0xffff, k1 = kw >> 16;
                const float *w_k = s_wt + (size_t)k0 * F + wl * CPL, *r_k = s_rbf + k0 * E,
                            *d_k = s_drbf + k0 * E;
#pragma unroll 2
                for (int k = k0; k < k1; k++, w_k += F, r_k += E, d_k += E) {
                    float w[CPL], rb[E], d[E], a[E];
                    ld_vec<CPL>(w_k, w);
                    lds_chunk<E>(r_k, rb);
                    lds_chunk<E>(d_k, d);
#pragma unroll
                    for (int i = 0; i < E; i++) {
                        a[i] = ge[i][0] * w[0];
#pragma unroll
                        for (int j = 1; j < CPL; j++)
                            a[i] = fmaf(ge[i][j], w[j], a[i]);
                        P[i] = fmaf(a[i], d[i], P[i]);
                        Q[i] = fmaf(a[i], rb[i], Q[i]);
                    }
                }
                float bb[CPL];
                ld_vec<CPL>(s_b + wl * CPL, bb);
#pragma unroll
                for (int i = 0; i < E; i++) {
                    float gb = Q[i];
#pragma unroll
                    for (int j = 0; j < CPL; j++)
                        gb = fmaf(ge[i][j], bb[j], gb);
                    const float cc = __shfl_sync(0xffffffffu, ccl, i),
                                dc = __shfl_sync(0xffffffffu, dcl, i);
                    v[i] = fmaf(cc, P[i], gb * dc);
                }
            } else {
                float pre[E][1][CPL], gpre[E][1][CPL], grl[E], cc[E], dc[E];
#pragma unroll
                for (int i = 0; i < E; i++) {
                    cc[i] = __shfl_sync(0xffffffffu, ccl, i);
                    dc[i] = __shfl_sync(0xffffffffu, dcl, i);
                }
                filter_pre<CPL, E, 1>(s_wt, s_b, s_rbf, kw, F, wl, pre);
#pragma unroll
                for (int i = 0; i < E; i++) {
                    float gcd = 0.f;
                    grl[i] = 0.f;
#pragma unroll
                    for (int j = 0; j < CPL; j++) {
                        gpre[i][0][j] = ge[i][j] * cc[i];
                        gcd = fmaf(ge[i][j], pre[i][0][j], gcd);
                    }
                    v[i] = gcd * dc[i]; /* added to grl below, as grl + gcd before */
                }
                filter_back<CPL, E, 1>(s_wt, s_drbf, kw, F, wl, gpre, grl);
#pragma unroll
                for (int i = 0; i < E; i++)
                    v[i] = grl[i] + v[i];
            }
            /* lane 8i: edge i's sum; the next chunk's edge_meta_take (__syncwarp first) orders
               these reads of s_meta (and the loop's of s_rbf, s_drbf) before its writes */
            const float gr = warp_sum4(v[0], v[1], v[2], v[3], lane);
            const int iw = lane >> 3;
            if ((lane & 7) == 0 && iw < nv) {
                const float4 geo = md.geo[iw];
                const float inv = 1.f / geo.w;
                const float4 acc = md.gw[iw];
                float *const go = gw + 3 * (size_t)(cb + iw);
                go[0] = acc.x + gr * geo.x * inv;
                go[1] = acc.y + gr * geo.y * inv;
                go[2] = acc.z + gr * geo.z * inv;
            }
        }
    }
}

template <int CPL>
static cudaError_t launch_recv(cudaStream_t s, int grid, int S, float *part,
                               const et_edge_common *c, const et_edge_layer *l)
{
    cudaError_t e = launch_persistent(
        S == 1 ? by_act(c, k_edge_bwd_recv<CPL, ACT_ANY, false>,
                        k_edge_bwd_recv<CPL, ACT_SILU, false>,
                        k_edge_bwd_recv<CPL, ACT_SILU_FAST, false>)
               : by_act(c, k_edge_bwd_recv<CPL, ACT_ANY, true>,
                        k_edge_bwd_recv<CPL, ACT_SILU, true>,
                        k_edge_bwd_recv<CPL, ACT_SILU_FAST, true>),
        edge_smem_bytes(c->F, c->K, 4, 1), split_grid(grid, c->n_local, S), s, *c, *l, S, part);
    if (e != cudaSuccess || S == 1)
        return e;
    const int F = c->F;
    return et_split_sum(s, S, c->n_local, part, l->gqkv, 5 * F, F, 0, NULL, 0, 0, 0);
}

template <int CPL>
static cudaError_t launch_send(cudaStream_t s, int grid, int S, float *part,
                               const et_edge_common *c, const et_edge_layer *l)
{
    cudaError_t e = launch_persistent(
        S == 1 ? by_act(c, k_edge_bwd_send<CPL, ACT_ANY, false>,
                        k_edge_bwd_send<CPL, ACT_SILU, false>,
                        k_edge_bwd_send<CPL, ACT_SILU_FAST, false>)
               : by_act(c, k_edge_bwd_send<CPL, ACT_ANY, true>,
                        k_edge_bwd_send<CPL, ACT_SILU, true>,
                        k_edge_bwd_send<CPL, ACT_SILU_FAST, true>),
        edge_smem_bytes(c->F, c->K, 4, 0), split_grid(grid, c->n_total, S), s, *c, *l, S, part);
    if (e != cudaSuccess || S == 1)
        return e;
    const int F = c->F;
    return et_split_sum(s, S, c->n_total, part, l->gqkv + F, 5 * F, 4 * F, 0, l->gvec, 3 * F,
                        3 * F, 1);
}

template <int CPL> static cudaError_t slots_bwd(const et_edge_common *c, int *recv, int *send)
{
    cudaError_t e = edge_slots(by_act(c, k_edge_bwd_recv<CPL, ACT_ANY, false>,
                                      k_edge_bwd_recv<CPL, ACT_SILU, false>,
                                      k_edge_bwd_recv<CPL, ACT_SILU_FAST, false>),
                               edge_smem_bytes(c->F, c->K, 4, 1), recv);
    if (e != cudaSuccess)
        return e;
    return edge_slots(by_act(c, k_edge_bwd_send<CPL, ACT_ANY, false>,
                             k_edge_bwd_send<CPL, ACT_SILU, false>,
                             k_edge_bwd_send<CPL, ACT_SILU_FAST, false>),
                      edge_smem_bytes(c->F, c->K, 4, 0), send);
}

template <int CPL>
static cudaError_t launch_ne_bwd(cudaStream_t s, int grid, const et_edge_common *c,
                                 const float *w, const float *b, const float *emb, const int *z,
                                 const float *gm, float *gw)
{
    /* DS4SCI_CUDA_NE_EXACT=1: the filter evaluated and differentiated as before (k_ne_bwd) */
    static const int exact = [] {
        const char *v = getenv("DS4SCI_CUDA_NE_EXACT");
        return v && atoi(v) != 0;
    }();
    return launch_persistent(exact ? k_ne_bwd<CPL, false> : k_ne_bwd<CPL, true>,
                             ne_smem_bytes(c->F, c->K, 1), grid, s, *c, w, b, emb, z, gm, gw);
}

extern "C" cudaError_t et_edge_backward_recv(cudaStream_t s, int CPL, int grid, int split,
                                             float *part, const et_edge_common *c,
                                             const et_edge_layer *l)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (split < 1 || (split > 1 && !part) || !edge_shape_ok(CPL, c))
        return cudaErrorInvalidValue;
    if (c->rev) /* merged pass: receivers and the reverse edges' sender work */
        return dispatch_cpl(CPL, [&](auto C) {
            return launch_merged<decltype(C)::value>(s, split, part, c, l);
        });
    return dispatch_cpl(CPL, [&](auto C) {
        return launch_recv<decltype(C)::value>(s, grid, split, part, c, l);
    });
}

extern "C" cudaError_t et_edge_backward_send(cudaStream_t s, int CPL, int grid, int split,
                                             float *part, const et_edge_common *c,
                                             const et_edge_layer *l)
{
    if (c->n_total == 0)
        return cudaSuccess;
    if (split < 1 || (split > 1 && !part) || !edge_shape_ok(CPL, c))
        return cudaErrorInvalidValue;
    if (c->rev) /* after the merged pass: only the edges it did not cover (S = 1 always) */
        return dispatch_cpl(CPL, [&](auto C) {
            return launch_send_rest<decltype(C)::value>(s, grid, c, l);
        });
    return dispatch_cpl(CPL, [&](auto C) {
        return launch_send<decltype(C)::value>(s, grid, split, part, c, l);
    });
}

extern "C" cudaError_t et_edge_backward_slots(int CPL, const et_edge_common *c, int *recv_slots,
                                              int *send_slots)
{
    return dispatch_cpl(CPL, [&](auto C) {
        return slots_bwd<decltype(C)::value>(c, recv_slots, send_slots);
    });
}

extern "C" cudaError_t et_ne_backward(cudaStream_t s, int CPL, int grid, const et_edge_common *c,
                                      const float *ne_wt, const float *ne_b, const float *ne_emb,
                                      const int *z, const float *gm, float *gw)
{
    if (c->n_local == 0)
        return cudaSuccess;
    if (!edge_shape_ok(CPL, c)) /* k_ne_bwd takes F = 32 CPL (edge_f) */
        return cudaErrorInvalidValue;
    return dispatch_cpl(CPL, [&](auto C) {
        return launch_ne_bwd<decltype(C)::value>(s, grid, c, ne_wt, ne_b, ne_emb, z, gm, gw);
    });
}
