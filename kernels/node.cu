/*
 * node.cu - per-atom work of the ET layers that is not a GEMM: LayerNorm and its backward,
 * biases, vdot, the residual updates and their backward, the embeddings, and ghost rows
 * (built-in gather/fold on the GPU, packing for a host exchange). ET_SPEC.md section 4.
 */
#include "et_cuda.cuh"

static int nblk(long long n, int per) { return (int)((n + per - 1) / per); }

/* y = LayerNorm(x) (biased variance, eps 1e-5), one warp per row. */
static __global__ void k_layernorm(int n, int F, const float *__restrict__ x,
                                   const float *__restrict__ w, const float *__restrict__ b,
                                   float *__restrict__ y)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * F;
    float s = 0.f;
    for (int f = lane; f < F; f += 32)
        s += xr[f];
    float mu = warp_sum(s) / F;
    float v = 0.f;
    for (int f = lane; f < F; f += 32) {
        float d = xr[f] - mu;
        v += d * d;
    }
    float rs = rsqrtf(warp_sum(v) / F + 1e-5f);
    for (int f = lane; f < F; f += 32)
        y[(size_t)row * F + f] = (xr[f] - mu) * rs * w[f] + b[f];
}

/* gx += LayerNorm backward: rs (gh - mean(gh) - xh mean(gh xh)), gh = w gy. */
static __global__ void k_layernorm_bwd(int n, int F, const float *__restrict__ x,
                                       const float *__restrict__ w, const float *__restrict__ gy,
                                       float *__restrict__ gx)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= n)
        return;
    const float *xr = x + (size_t)row * F;
    const float *gr = gy + (size_t)row * F;
    float s = 0.f;
    for (int f = lane; f < F; f += 32)
        s += xr[f];
    float mu = warp_sum(s) / F;
    float v = 0.f;
    for (int f = lane; f < F; f += 32) {
        float d = xr[f] - mu;
        v += d * d;
    }
    float rs = rsqrtf(warp_sum(v) / F + 1e-5f);
    float m1 = 0.f, m2 = 0.f;
    for (int f = lane; f < F; f += 32) {
        float gh = w[f] * gr[f];
        m1 += gh;
        m2 += gh * (xr[f] - mu) * rs;
    }
    m1 = warp_sum(m1) / F;
    m2 = warp_sum(m2) / F;
    for (int f = lane; f < F; f += 32) {
        float xh = (xr[f] - mu) * rs;
        gx[(size_t)row * F + f] += rs * (w[f] * gr[f] - m1 - xh * m2);
    }
}

/* y[i][j] += b[j], y [n][w]. */
static __global__ void k_add_bias(long long total, int w, float *__restrict__ y,
                                  const float *__restrict__ b)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total)
        y[i] += b[i % w];
}

/*
 * After the q/k/v SGEMM, one thread per (row a < n, channel f): the five q/k/v biases of
 * channel f (qkv [n][5F]).
 */
static __global__ void k_node_pre(int n, int F, float *__restrict__ qkv,
                                  const float *__restrict__ qkv_b)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * F)
        return;
    long long a = i / F;
    int f = (int)(i % F);
    float *q = qkv + a * 5 * F;
    for (int j = 0; j < 5; j++)
        q[j * F + f] += qkv_b[j * F + f];
}

/*
 * Residual update of owned atoms (o without bias on input):
 *   o1, o2, o3 = o + b_o; x' = x + vdot o2 + o3; vec'[c] = vec[c] + P3[c] o1 + V[c],
 * vdot[t][f] = sum_c P1[t][c][f] P2[t][c][f] (P [.][3][3F]; c = 0, 1, 2 in order, as the CPU
 * path). vec, P NULL mean zeros (layer 0). The backward recomputes o from the
 * stored X. Rows nl <= t < n (ghosts, filled by the next exchange) of x' and vec' are set to
 * zero. o and P have the nl owned rows only (the caller passes one chunk of rows at a time).
 */
static __global__ void k_node_update(int n, int nl, int F, const float *__restrict__ x,
                                     const float *__restrict__ vec, const float *__restrict__ o,
                                     const float *__restrict__ ob, const float *__restrict__ P,
                                     const float *__restrict__ V, float *__restrict__ xn,
                                     float *__restrict__ vn)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * F)
        return;
    long long t = i / F;
    int f = (int)(i % F);
    if (t >= nl) {
        xn[i] = 0.f;
        for (int c = 0; c < 3; c++)
            vn[(t * 3 + c) * F + f] = 0.f;
        return;
    }
    /* every load first (restrict: none of the outputs aliases an input), then the stores */
    const float *orow = o + t * 3 * F;
    const float o1 = orow[f] + ob[f], o2 = orow[F + f] + ob[F + f],
                o3 = orow[2 * F + f] + ob[2 * F + f];
    float p[3][3] = {{0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}}, v0[3], vv[3];
#pragma unroll
    for (int c = 0; c < 3; c++) {
        const long long vi = (t * 3 + c) * F + f;
        if (P)
#pragma unroll
            for (int k = 0; k < 3; k++)
                p[c][k] = P[(t * 3 + c) * 3 * F + k * F + f];
        v0[c] = vec ? vec[vi] : 0.f;
        vv[c] = V[vi];
    }
    float vd = 0.f; /* vdot, in the CPU path's order */
    for (int c = 0; c < 3; c++)
        vd += p[c][0] * p[c][1];
    xn[i] = x[i] + vd * o2 + o3;
#pragma unroll
    for (int c = 0; c < 3; c++)
        vn[(t * 3 + c) * F + f] = v0[c] + p[c][2] * o1 + vv[c];
}

/*
 * Backward of the update for owned atoms, given gx = dE/dx', gvec = dE/dvec' and o = W_o X
 * recomputed from the stored X (without bias; o1 = o[0:F] + b, o2 = o[F:2F] + b):
 *   g_o1 = sum_c gvec[c] P3[c]; g_o2 = gx vdot; g_o3 = gx -> written over o [nl][3F];
 *   g_P1 = gx o2 P2, g_P2 = gx o2 P1, g_P3 = gvec o1 -> written over P (P NULL: layer 0).
 * Thread (t, f) reads o[t][f], o[t][F + f] before writing o[t][f], o[t][F + f], o[t][2F + f];
 * no other thread touches these entries, so the update in place is safe.
 * Also, for every row t < n: gvec_out[t][c][f] = gvec[t][c][f] (the outgoing dE/dvec starts
 * as the incoming one; a different buffer).
 */
static __global__ void k_node_bwd(int n, int nl, int F, const float *__restrict__ gx,
                                  const float *__restrict__ gvec, float *__restrict__ gvec_out,
                                  float *__restrict__ o, const float *__restrict__ ob,
                                  float *__restrict__ P)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * F)
        return;
    long long t = i / F;
    int f = (int)(i % F);
    /* every load first, then the stores (restrict: o, P and gvec_out alias no input; each
       thread's own entries of o and P are read before it writes them) */
    float gv[3];
#pragma unroll
    for (int c = 0; c < 3; c++)
        gv[c] = gvec[(t * 3 + c) * F + f];
    if (t >= nl) {
#pragma unroll
        for (int c = 0; c < 3; c++)
            gvec_out[(t * 3 + c) * F + f] = gv[c];
        return;
    }
    float *orow = o + t * 3 * F;
    const float o1 = orow[f] + ob[f], o2 = orow[F + f] + ob[F + f];
    const float g = gx[i];
    float p[3][3] = {{0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}};
    if (P)
#pragma unroll
        for (int c = 0; c < 3; c++)
#pragma unroll
            for (int k = 0; k < 3; k++)
                p[c][k] = P[(t * 3 + c) * 3 * F + k * F + f];
#pragma unroll
    for (int c = 0; c < 3; c++)
        gvec_out[(t * 3 + c) * F + f] = gv[c];
    float go1 = 0.f;
    float vd = 0.f; /* vdot as in the update, before P is overwritten below */
    for (int c = 0; c < 3; c++)
        vd += p[c][0] * p[c][1];
    if (P) {
        const float gvd = g * o2;
        for (int c = 0; c < 3; c++) {
            float *pr = P + (t * 3 + c) * 3 * F;
            go1 += gv[c] * p[c][2];
            pr[f] = gvd * p[c][1];
            pr[F + f] = gvd * p[c][0];
            pr[2 * F + f] = gv[c] * o1;
        }
    }
    orow[f] = go1;
    orow[F + f] = P ? g * vd : 0.f;
    orow[2 * F + f] = g;
}

/* cat[t][0:F] = emb[z_t] (the neighbour embedding fills cat[t][F:2F]). */
static __global__ void k_embed(int nl, int F, int ld, const int *__restrict__ z,
                               const float *__restrict__ emb, float *__restrict__ out)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)nl * F)
        return;
    long long t = i / F;
    int f = (int)(i % F);
    out[t * ld + f] = emb[(size_t)z[t] * F + f];
}

/*
 * Built-in exchange: ghost rows = owner rows; and the adjoint (add ghost rows into owners,
 * zero the ghost rows; k_ghost_fold below). One thread per (ghost g, column j < w), w = F (x only) or 4F (x and
 * vec: j < F in x [n][F], else column j - F of vec [n][3F]). Ghosts with owner -1 (partial
 * owners: another process's atoms, moved by the caller's exchange) are left alone.
 */
static __device__ __forceinline__ void ghost_pair(int nl, int F, int w, const int *owner,
                                                  float *x, float *vec, long long i, float **dst,
                                                  float **src)
{
    long long g = i / w;
    int j = (int)(i % w);
    long long o = owner[g];
    if (j < F) {
        *dst = &x[(nl + g) * F + j];
        *src = &x[o * F + j];
    } else {
        *dst = &vec[(nl + g) * 3 * F + (j - F)];
        *src = &vec[o * 3 * F + (j - F)];
    }
}

static __global__ void k_ghost_gather(int nl, int ng, int F, int w, const int *__restrict__ owner,
                                      float *x, float *vec)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ng * w)
        return;
    if (owner[i / w] < 0)
        return;
    float *d, *sr;
    ghost_pair(nl, F, w, owner, x, vec, i, &d, &sr);
    *d = *sr;
}

/*
 * The fold in a fixed order, the CPU path's (api.c builtin_reverse: owner += ghost g for g
 * ascending): key[p] / ghost[p] are the ghosts sorted by owner (stable: g ascending within an
 * owner; key nl for owner -1, left alone). Thread (p, column j) of the first entry of an owner's
 * run sums the owner's value and its images in that order and zeroes the images; the others
 * return. No atomics: the same bits every call. (The atomicAdd fold it replaces summed an
 * owner's images in whatever order the atomics landed.)
 */
static __global__ void k_ghost_fold(int nl, int ng, int F, int w, const int *__restrict__ key,
                                    const int *__restrict__ ghost, float *x, float *vec)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ng * w)
        return;
    const int p = (int)(i / w), j = (int)(i % w), o = key[p];
    if (o >= nl || (p > 0 && key[p - 1] == o))
        return;
    float *const dst = j < F ? &x[(size_t)o * F + j] : &vec[(size_t)o * 3 * F + (j - F)];
    float acc = *dst;
    /* the run's images FOLD_BATCH at a time: their keys and ghost indices, then their values,
       loaded before any add or store (a serial walk waited on key, ghost and value load by
       load: ~16 us per launch at 1,000 atoms, ncu v18), then added in the same order as
       before (q ascending: the same bits). key is sorted, so the images of o are a prefix. */
    constexpr int FOLD_BATCH = 8;
    for (int q0 = p;; q0 += FOLD_BATCH) {
        float *src[FOLD_BATCH];
        float val[FOLD_BATCH];
        bool in[FOLD_BATCH];
#pragma unroll
        for (int k = 0; k < FOLD_BATCH; k++) {
            const int q = q0 + k;
            in[k] = q < ng && key[q] == o;
            const size_t g = (size_t)nl + (in[k] ? ghost[q] : 0);
            src[k] = j < F ? &x[g * F + j] : &vec[g * 3 * F + (j - F)];
        }
#pragma unroll
        for (int k = 0; k < FOLD_BATCH; k++)
            val[k] = in[k] ? *src[k] : 0.f;
#pragma unroll
        for (int k = 0; k < FOLD_BATCH; k++)
            if (in[k]) {
                acc += val[k];
                *src[k] = 0.f;
            }
        if (!in[FOLD_BATCH - 1])
            break;
    }
    *dst = acc;
}

/* Sort keys of the fold: key[g] = owner[g] (nl for -1), ghost[g] = g. */
static __global__ void k_fold_keys(int nl, int ng, const int *__restrict__ owner,
                                   int *__restrict__ key, int *__restrict__ ghost)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g < ng) {
        key[g] = owner[g] >= 0 ? owner[g] : nl;
        ghost[g] = g;
    }
}

/* Host exchange rows: out[r] = (x[row0 + r], vec[row0 + r]) as doubles or floats (T), width F
   or 4F. */
template <class T>
static __global__ void k_pack(int row0, int rows, int F, const float *__restrict__ x,
                              const float *__restrict__ vec, T *__restrict__ out)
{
    int w = vec ? 4 * F : F;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * w)
        return;
    long long r = i / w;
    int j = (int)(i % w);
    long long a = row0 + r;
    out[i] = j < F ? (T)x[a * F + j] : (T)vec[a * 3 * F + (j - F)];
}

template <class T>
static __global__ void k_unpack(int row0, int rows, int F, const T *__restrict__ in,
                                float *__restrict__ x, float *__restrict__ vec, int add)
{
    int w = vec ? 4 * F : F;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * w)
        return;
    long long r = i / w;
    int j = (int)(i % w);
    long long a = row0 + r;
    float *d = j < F ? &x[a * F + j] : &vec[a * 3 * F + (j - F)];
    *d = add ? *d + (float)in[i] : (float)in[i];
}

static __global__ void k_zero_rows(long long total, float *a)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total)
        a[i] = 0.f;
}

/* ---- launchers ------------------------------------------------------------------------- */
#define WARP_GRID(n) nblk((long long)(n) * 32, 32 * ET_WARPS), 32 * ET_WARPS

extern "C" cudaError_t et_layernorm(cudaStream_t s, int n, int F, const float *x, const float *w,
                                    const float *b, float *y)
{
    if (n > 0)
        k_layernorm<<<WARP_GRID(n), 0, s>>>(n, F, x, w, b, y);
    return cudaGetLastError();
}

extern "C" cudaError_t et_layernorm_bwd(cudaStream_t s, int n, int F, const float *x,
                                        const float *w, const float *gy, float *gx)
{
    if (n > 0)
        k_layernorm_bwd<<<WARP_GRID(n), 0, s>>>(n, F, x, w, gy, gx);
    return cudaGetLastError();
}

extern "C" cudaError_t et_add_bias(cudaStream_t s, int n, int w, float *y, const float *b)
{
    long long total = (long long)n * w;
    if (total > 0)
        k_add_bias<<<nblk(total, 256), 256, 0, s>>>(total, w, y, b);
    return cudaGetLastError();
}

/* q/k/v bias over all n rows. */
extern "C" cudaError_t et_node_pre(cudaStream_t s, int n, int F, float *qkv, const float *qkv_b)
{
    if (n > 0)
        k_node_pre<<<nblk((long long)n * F, 256), 256, 0, s>>>(n, F, qkv, qkv_b);
    return cudaGetLastError();
}

extern "C" cudaError_t et_node_update(cudaStream_t s, int n, int nl, int F, const float *x,
                                      const float *vec, const float *o, const float *o_b,
                                      const float *P, const float *V, float *x_next,
                                      float *vec_next)
{
    if (n > 0)
        k_node_update<<<nblk((long long)n * F, 256), 256, 0, s>>>(n, nl, F, x, vec, o, o_b, P, V,
                                                                  x_next, vec_next);
    return cudaGetLastError();
}

extern "C" cudaError_t et_node_bwd(cudaStream_t s, int n, int nl, int F, const float *gx,
                                   const float *gvec, float *gvec_out, float *o, const float *o_b,
                                   float *P)
{
    if (n > 0)
        k_node_bwd<<<nblk((long long)n * F, 256), 256, 0, s>>>(n, nl, F, gx, gvec, gvec_out, o,
                                                               o_b, P);
    return cudaGetLastError();
}

extern "C" cudaError_t et_embed_cat(cudaStream_t s, int nl, int F, const int *z, const float *emb,
                                    float *cat)
{
    if (nl > 0)
        k_embed<<<nblk((long long)nl * F, 256), 256, 0, s>>>(nl, F, 2 * F, z, emb, cat);
    return cudaGetLastError();
}

extern "C" cudaError_t et_embed_plain(cudaStream_t s, int nl, int F, const int *z,
                                      const float *emb, float *x)
{
    if (nl > 0)
        k_embed<<<nblk((long long)nl * F, 256), 256, 0, s>>>(nl, F, F, z, emb, x);
    return cudaGetLastError();
}

extern "C" cudaError_t et_ghost_gather(cudaStream_t s, int nl, int ng, int F, const int *owner,
                                       float *x, float *vec)
{
    const int w = vec ? 4 * F : F;
    if (ng > 0)
        k_ghost_gather<<<nblk((long long)ng * w, 256), 256, 0, s>>>(nl, ng, F, w, owner, x, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t et_ghost_fold(cudaStream_t s, int nl, int ng, int F, const int *key,
                                     const int *ghost, float *x, float *vec)
{
    const int w = vec ? 4 * F : F;
    if (ng > 0)
        k_ghost_fold<<<nblk((long long)ng * w, 256), 256, 0, s>>>(nl, ng, F, w, key, ghost, x, vec);
    return cudaGetLastError();
}

extern "C" cudaError_t et_fold_keys(cudaStream_t s, int nl, int ng, const int *owner, int *key,
                                    int *ghost)
{
    if (ng > 0)
        k_fold_keys<<<(ng + 255) / 256, 256, 0, s>>>(nl, ng, owner, key, ghost);
    return cudaGetLastError();
}

extern "C" cudaError_t et_pack(cudaStream_t s, int row0, int rows, int F, const float *x,
                               const float *vec, double *out)
{
    long long total = (long long)rows * (vec ? 4 * F : F);
    if (total > 0)
        k_pack<double><<<nblk(total, 256), 256, 0, s>>>(row0, rows, F, x, vec, out);
    return cudaGetLastError();
}

extern "C" cudaError_t et_unpack(cudaStream_t s, int row0, int rows, int F, const double *in,
                                 float *x, float *vec, int add)
{
    long long total = (long long)rows * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack<double><<<nblk(total, 256), 256, 0, s>>>(row0, rows, F, in, x, vec, add);
    return cudaGetLastError();
}

/* The same rows as floats (the packed forward exchange, DS4SCI_CUDA_XCH_F32). */
extern "C" cudaError_t et_pack_f32(cudaStream_t s, int row0, int rows, int F, const float *x,
                                   const float *vec, float *out)
{
    long long total = (long long)rows * (vec ? 4 * F : F);
    if (total > 0)
        k_pack<float><<<nblk(total, 256), 256, 0, s>>>(row0, rows, F, x, vec, out);
    return cudaGetLastError();
}

extern "C" cudaError_t et_unpack_f32(cudaStream_t s, int row0, int rows, int F, const float *in,
                                     float *x, float *vec)
{
    long long total = (long long)rows * (vec ? 4 * F : F);
    if (total > 0)
        k_unpack<float><<<nblk(total, 256), 256, 0, s>>>(row0, rows, F, in, x, vec, 0);
    return cudaGetLastError();
}

extern "C" cudaError_t et_zero_rows(cudaStream_t s, int row0, int rows, int w, float *a)
{
    long long total = (long long)rows * w;
    if (total > 0)
        k_zero_rows<<<nblk(total, 256), 256, 0, s>>>(total, a + (long long)row0 * w);
    return cudaGetLastError();
}
