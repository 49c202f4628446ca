/*
 * graph.cu - the edge list on the GPU: the caller's candidate neighbours (CSR by owned
 * receiver, may hold a skin) filtered to cl^2 <= d^2 < cu^2, with the self-loop first in each
 * row, then the senders whose owned atom is >= t (owned senders s > t, ghosts whose owner is
 * >= t or unknown) in the caller's candidate order, then those whose owned atom is < t in the
 * reverse of that order (deterministic; the merged backward skips the filter backward of
 * most of those, whose pair is done in the other row: edge_bwd.cu). The owned atom of a
 * ghost is its ghost_owner with the built-in exchange, unknown (the ghost itself) otherwise.
 * Geometry in fp64, stored as fp32.
 */
#include "et_cuda.cuh"

/* One warp per owned receiver: row_cnt[i] = 1 (self-loop) + kept candidates. */
static __global__ void k_graph_count(int nl, const double *__restrict__ pos,
                                     const int64_t *__restrict__ coff,
                                     const int *__restrict__ cidx, double cl2, double cu2,
                                     int *__restrict__ row_cnt, int n, double min2, int *bad)
{
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= nl)
        return;
    double px = pos[3 * warp], py = pos[3 * warp + 1], pz = pos[3 * warp + 2];
    int cnt = 0;
    bool wrong = false;
    for (int64_t c = coff[warp] + lane; c < coff[warp + 1]; c += 32) {
        int j = cidx[c];
        if (bad && (j < 0 || j >= n || j == warp)) { /* never read pos[j] */
            wrong = true;
            continue;
        }
        double dx = pos[3 * j] - px, dy = pos[3 * j + 1] - py, dz = pos[3 * j + 2] - pz;
        double d2 = dx * dx + dy * dy + dz * dz;
        cnt += (d2 >= cl2 && d2 < cu2);
        wrong = wrong || (bad && d2 < min2);
    }
    for (int o = 16; o > 0; o >>= 1)
        cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
    if (lane == 0)
        row_cnt[warp] = cnt + 1;
    if (bad && __any_sync(0xffffffffu, wrong) && lane == 0)
        atomicMin(bad, warp); /* the lowest bad receiver: the same whatever the order */
}

/* The owned atom of atom u: u itself when owned, its ghost owner when known (gown: the built-in
   exchange's ghost_owner [n - nl]), else -1. */
static __device__ __forceinline__ int owned_of(int u, int nl, const int *__restrict__ gown)
{
    return u < nl ? u : (gown ? gown[u - nl] : -1);
}

/* Slots [a, b) of a row (one half: the caller's __syncwarp before) stably sorted by r, in
   place: lane's elements a + lane + 32 q ranked against all of [a, b) by (r, slot) (a strict
   total order: ties keep their order), written at a + rank. Halves longer than 32 RS_NB stay
   in their order (correct, only less compact windows). */
constexpr int RS_NB = 4;
static __device__ __forceinline__ void sort_by_r(int a, int b, int lane, int *__restrict__ e_src,
                                                 float4 *__restrict__ e_geo)
{
    if (b - a < 2 || b - a > 32 * RS_NB)
        return;
    int src[RS_NB], rk[RS_NB];
    float4 geo[RS_NB];
#pragma unroll
    for (int q = 0; q < RS_NB; q++) {
        const int i = a + lane + 32 * q;
        rk[q] = 0;
        src[q] = 0;
        geo[q] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < b) {
            src[q] = e_src[i];
            geo[q] = e_geo[i];
        }
    }
    for (int j = a; j < b; j++) {
        const float rj = e_geo[j].w; /* the same address in every lane: a broadcast */
#pragma unroll
        for (int q = 0; q < RS_NB; q++) {
            const int i = a + lane + 32 * q;
            rk[q] += rj < geo[q].w || (rj == geo[q].w && j < i);
        }
    }
    __syncwarp(); /* every read of [a, b) before the writes */
#pragma unroll
    for (int q = 0; q < RS_NB; q++) {
        const int i = a + lane + 32 * q;
        if (i < b) {
            e_src[a + rk[q]] = src[q];
            e_geo[a + rk[q]] = geo[q];
        }
    }
}

/* One warp per owned receiver: write the self-loop, then the kept candidates whose owned atom
   is not < t in order from the row's start, and those whose owned atom is < t in order from
   the row's end backwards; with rsort each of the two groups then sorted by r (sort_by_r), so
   that a chunk's edges have close distances and narrower basis windows (edge_common.cuh
   stage_rbf_of). */
static __global__ void k_graph_fill(int nl, const double *__restrict__ pos,
                                    const int64_t *__restrict__ coff, const int *__restrict__ cidx,
                                    double cl2, double cu2, const int *__restrict__ row_off,
                                    const int *__restrict__ gown, int *__restrict__ e_src,
                                    int *__restrict__ e_dst, float4 *__restrict__ e_geo, int n,
                                    int guard, int fold, int rsort)
{
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= nl)
        return;
    int t = warp;
    double px = pos[3 * t], py = pos[3 * t + 1], pz = pos[3 * t + 2];
    int out = row_off[t];
    if (lane == 0) {
        e_src[out] = t;
        e_dst[out] = t;
        e_geo[out] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    out++;
    int back = row_off[t + 1]; /* the s < t group fills the row from its end */
    int64_t c0 = coff[t], c1 = coff[t + 1];
    for (int64_t base = c0; base < c1; base += 32) {
        int64_t c = base + lane;
        bool keep = false;
        int j = 0;
        double dx = 0, dy = 0, dz = 0, d2 = 0;
        if (c < c1 && !(guard && (cidx[c] < 0 || cidx[c] >= n || cidx[c] == t))) {
            j = cidx[c];
            dx = pos[3 * j] - px;
            dy = pos[3 * j + 1] - py;
            dz = pos[3 * j + 2] - pz;
            d2 = dx * dx + dy * dy + dz * dz;
            keep = d2 >= cl2 && d2 < cu2;
        }
        const int jo = keep ? owned_of(j, nl, gown) : -1;
        const bool low = jo >= 0 && jo < t;
        const unsigned hi_mask = __ballot_sync(0xffffffffu, keep && !low),
                       lo_mask = __ballot_sync(0xffffffffu, keep && low),
                       below = (1u << lane) - 1u;
        if (keep) {
            int slot = low ? back - 1 - __popc(lo_mask & below) : out + __popc(hi_mask & below);
            e_src[slot] = fold ? jo : j; /* fold: a periodic image's owned atom */
            e_dst[slot] = t;
            e_geo[slot] = make_float4((float)dx, (float)dy, (float)dz, (float)sqrt(d2));
        }
        out += __popc(hi_mask);
        back -= __popc(lo_mask);
    }
    if (rsort) { /* out == back: the groups are [row_off[t] + 1, out), [out, row_off[t + 1]) */
        __syncwarp();
        sort_by_r(row_off[t] + 1, out, lane, e_src, e_geo);
        __syncwarp();
        sort_by_r(out, row_off[t + 1], lane, e_src, e_geo);
    }
}

static __global__ void k_iota(int n, int *out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = i;
}

static __global__ void k_count_by(int ne, const int *__restrict__ key, int *cnt)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < ne)
        atomicAdd(&cnt[key[i]], 1); /* integer counts: the result is order-independent */
}

static int blocks_for(long long n, int per) { return (int)((n + per - 1) / per); }

extern "C" cudaError_t et_graph_count(cudaStream_t s, int nl, const double *pos,
                                      const int64_t *coff, const int *cidx, double cl2, double cu2,
                                      int *row_cnt, int n, double min2, int *bad)
{
    if (nl > 0)
        k_graph_count<<<blocks_for((long long)nl * 32, 256), 256, 0, s>>>(
            nl, pos, coff, cidx, cl2, cu2, row_cnt, n, min2, bad);
    return cudaGetLastError();
}

extern "C" cudaError_t et_graph_fill(cudaStream_t s, int nl, const double *pos,
                                     const int64_t *coff, const int *cidx, double cl2, double cu2,
                                     const int *row_off, const int *gown, int *e_src, int *e_dst,
                                     float4 *e_geo, int n, double min2, int guard, int fold,
                                     int rsort)
{
    (void)min2; /* overlapping pairs stay edges (the call fails after the step anyway) */
    if (nl > 0)
        k_graph_fill<<<blocks_for((long long)nl * 32, 256), 256, 0, s>>>(
            nl, pos, coff, cidx, cl2, cu2, row_off, gown, e_src, e_dst, e_geo, n, guard,
            fold && gown, rsort);
    return cudaGetLastError();
}

extern "C" cudaError_t et_iota(cudaStream_t s, int n, int *out)
{
    if (n > 0)
        k_iota<<<blocks_for(n, 256), 256, 0, s>>>(n, out);
    return cudaGetLastError();
}

extern "C" cudaError_t et_count_by(cudaStream_t s, int ne, const int *key, int *cnt)
{
    if (ne > 0)
        k_count_by<<<blocks_for(ne, 256), 256, 0, s>>>(ne, key, cnt);
    return cudaGetLastError();
}

/*
 * Reverse-edge map of the merged backward (edge_bwd.cu), one thread per edge e = (s -> t) in
 * row t, in two kernels. k_edge_rev0 writes a candidate c[e]: e itself for the self-loop (first
 * in its row); for any other edge whose sender's owned atom so (s itself, or the owner of a
 * periodic image: gown, built-in exchange only) is known, the first non-self edge k of row so whose sender's
 * owned atom is t and whose geometry is
 * exactly the reverse, w(k) = -w(e), r(k) = r(e) (always so for owned pairs: k_graph_fill
 * rounds the exactly antisymmetric fp64 difference; for an image pair, whose fp64 positions
 * carry the shift, equal in all but ~1e-8 of the cases, which then stay -1); else -1. k_edge_rev
 * keeps the mutual ones, rev[e] = c[e] when c[c[e]] = e, else -1: the map is an involution
 * (a duplicated candidate's later copies, whose candidate answers the first copy, two ghosts of
 * one image, asymmetric lists drop out), so "the merged
 * pass did e's sender work" is exactly rev[e] >= 0. The receiver of rev[e] is e's sender's
 * owned atom. ne may exceed the real edges row_off[nl] (CUDA graph mode: padded slots, whose
 * senders sort past every atom in the transpose index): those get -1.
 */
static __global__ void k_edge_rev0(int ne, int nl, const int *__restrict__ row_off,
                                   const int *__restrict__ e_src, const int *__restrict__ e_dst,
                                   const float4 *__restrict__ e_geo, const int *__restrict__ gown,
                                   int *__restrict__ cand)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= ne)
        return;
    if (e >= row_off[nl]) { /* CUDA graph mode: padded slot past the real edges */
        cand[e] = -1;
        return;
    }
    const int t = e_dst[e], s = e_src[e], r0 = row_off[t];
    int out = -1;
    /* the self-loop by its slot: with folded images (k_graph_fill) an atom's own periodic
       image is sender t too */
    const int so = e != r0 ? owned_of(s, nl, gown) : -1;
    if (e == r0) {
        out = e;
    } else if (so >= 0) {
        const float4 g = e_geo[e];
        const int k1 = row_off[so + 1];
        for (int k = row_off[so] + 1; k < k1; k++) {
            const int u = e_src[k];
            if (owned_of(u, nl, gown) == t) {
                const float4 h = e_geo[k];
                if (h.x == -g.x && h.y == -g.y && h.z == -g.z && h.w == g.w) {
                    out = k;
                    break;
                }
            }
        }
    }
    cand[e] = out;
}

static __global__ void k_edge_rev(int ne, const int *__restrict__ cand, int *__restrict__ rev)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= ne)
        return;
    const int c = cand[e];
    rev[e] = c >= 0 && cand[c] == e ? c : -1;
}
/* One thread per atom a (owned or ghost; a = n: the scan's last entry, 0): how many of its
   transpose row's edges have rev < 0. */
static __global__ void k_tr_rest_count(int n, const int *__restrict__ tr_off,
                                       const int *__restrict__ tr_edge,
                                       const int *__restrict__ rev, int *__restrict__ cnt)
{
    const int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a > n)
        return;
    int m = 0;
    if (a < n)
        for (int k = tr_off[a]; k < tr_off[a + 1]; k++)
            m += rev[tr_edge[k]] < 0 ? 1 : 0;
    cnt[a] = m;
}

/* One thread per atom a: those edges, in order, at tr_off2[a] .. tr_off2[a + 1] - 1, and
   their receivers beside them. */
static __global__ void k_tr_rest_fill(int n, const int *__restrict__ tr_off,
                                      const int *__restrict__ tr_edge, const int *__restrict__ rev,
                                      const int *__restrict__ e_dst,
                                      const int *__restrict__ tr_off2, int *__restrict__ tr_edge2,
                                      int *__restrict__ tr_dst2)
{
    const int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n)
        return;
    int o = tr_off2[a];
    for (int k = tr_off[a]; k < tr_off[a + 1]; k++) {
        const int e = tr_edge[k];
        if (rev[e] < 0) {
            tr_dst2[o] = e_dst[e];
            tr_edge2[o++] = e;
        }
    }
}

extern "C" cudaError_t et_edge_rev(cudaStream_t s, int nl, int n, int ne, const int *row_off,
                                   const int *e_src, const int *e_dst, const float4 *e_geo,
                                   const int *gown, const int *tr_off, const int *tr_edge,
                                   int *cand, int *rev, int *rest_cnt)
{
    if (ne > 0) {
        k_edge_rev0<<<blocks_for(ne, 256), 256, 0, s>>>(ne, nl, row_off, e_src, e_dst, e_geo, gown,
                                                        cand);
        k_edge_rev<<<blocks_for(ne, 256), 256, 0, s>>>(ne, cand, rev);
    }
    k_tr_rest_count<<<blocks_for(n + 1, 256), 256, 0, s>>>(n, tr_off, tr_edge, rev, rest_cnt);
    return cudaGetLastError();
}

extern "C" cudaError_t et_edge_rest(cudaStream_t s, int n, const int *tr_off, const int *tr_edge,
                                    const int *rev, const int *e_dst, const int *tr_off2,
                                    int *tr_edge2, int *tr_dst2)
{
    if (n > 0)
        k_tr_rest_fill<<<blocks_for(n, 256), 256, 0, s>>>(n, tr_off, tr_edge, rev, e_dst,
                                                           tr_off2, tr_edge2, tr_dst2);
    return cudaGetLastError();
}

/* Spreads the low 10 bits of v to every third bit (bit b to bit 3b). */
static __device__ __forceinline__ unsigned spread3(unsigned v)
{
    v &= 0x3ffu;
    v = (v | (v << 16)) & 0x030000ffu;
    v = (v | (v << 8)) & 0x0300f00fu;
    v = (v | (v << 4)) & 0x030c30c3u;
    v = (v | (v << 2)) & 0x09249249u;
    return v;
}

/* key[i] = the Morton code of owned atom i's cell (side h; cell indices mod 1024, so a system
   wider than 1024 cells wraps, which costs locality at the wrap, never correctness), val[i] = i */
static __global__ void k_order_keys(int nl, const double *__restrict__ pos, double inv_h,
                                    int *__restrict__ key, int *__restrict__ val)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nl)
        return;
    const unsigned cx = (unsigned)(long long)floor(pos[3 * i] * inv_h),
                   cy = (unsigned)(long long)floor(pos[3 * i + 1] * inv_h),
                   cz = (unsigned)(long long)floor(pos[3 * i + 2] * inv_h);
    key[i] = (int)(spread3(cx) | (spread3(cy) << 1) | (spread3(cz) << 2));
    val[i] = i;
}

extern "C" cudaError_t et_order_keys(cudaStream_t s, int nl, const double *pos, double h, int *key,
                                     int *val)
{
    if (nl <= 0)
        return cudaSuccess;
    if (!(h > 0.0))
        return cudaErrorInvalidValue;
    k_order_keys<<<blocks_for(nl, 256), 256, 0, s>>>(nl, pos, 1.0 / h, key, val);
    return cudaGetLastError();
}
