/*
 * edge_unfused.cu - the unfused baseline of the edge passes (issue 5 part 5), selected with
 * DS4SCI_CUDA_EDGE=unfused; benchmark only. Same inputs and outputs as the fused launchers
 * (edge_fwd.cu, edge_bwd.cu), the same math (ET_SPEC.md section 4 and 6), computed the way a
 * framework computes it: every per-edge intermediate is a tensor in global memory, each step
 * is its own kernel or library call, and aggregation is a sparse-times-dense product.
 *
 * Forward of one layer, E = number of edges (receiver-major CSR, self-loops included):
 *   1. RBF f[E][K] and cutoff c[E] (elementwise kernel);
 *   2. filter pre-activations P[E][4F] = f W (cuBLAS SGEMM, fp32, no TF32; W = the layer's
 *      dk | dv filters, K x 4F), then the activation A[E][4F] = act(P + b) (elementwise);
 *   3. gathers of q[receiver], k, v, vec[sender] into [E][F], [E][F], [E][3F], [E][3F];
 *   4. attention a[E][H] = attn_act(sum_d q k dk) (one thread per edge and head);
 *   5. messages m_x[E][F], m_v[3][E][F] (elementwise);
 *   6. aggregation at the receiver: X = R m_x, V_c = R m_v,c with cuSPARSE SpMM, R the
 *      [n_local x E] receiver-edge incidence matrix in CSR (row_off, columns = edge ids).
 * Backward of one layer: steps 1-4 again (with the derivatives f', act', attn_act'), gathers of
 * dE/dX, dE/dV at the receiver, per-edge gradients g_apre[E][H] and then (elementwise) the
 * filter gradient G[E][4F] and the per-edge contributions to g_q, g_k, g_v, g_vec; the filter
 * backward dE/df = G W^T (SGEMM); the geometry gradient dE/dw_e from dE/df, f', the cutoff and
 * the direction (one warp per edge, written into gw[e] += ...: each edge is one warp's, no
 * atomics); aggregation of g_q at the receivers (SpMM with R) and of g_k, g_v, g_vec at the
 * senders (SpMM with S, the [n x E] sender-edge incidence matrix in CSR: tr_off, tr_edge).
 * The backward recomputes the layer's forward edge tensors (the fused kernels recompute too;
 * a framework's autograd would instead keep them for all layers, which costs L times the
 * memory: TorchMD-Net itself is in the same benchmark for that).
 *
 * Scratch: one grow-only arena (sized for the backward's tensors at the call's edge count, so
 * the first call allocates the peak) and a grow-only cuSPARSE buffer, freed by
 * et_unfused_release. The edge count is read back from row_off[n_local] with one stream
 * synchronisation per call (the fused launchers never need it). No atomics.
 * Library handles and scratch are process-wide: one context at a time (this is a benchmark
 * switch, read once per context from the environment); a change of device recreates them.
 *
 * cuSPARSE is loaded at run time (dlopen, next to the cuBLAS the kernels link), so that the
 * kernels library's link line does not change for a benchmark-only path.
 *
 * Supported: every option the fused kernels take (activations, rbf types, distance influence,
 * vector_cutoff), F a multiple of 4; otherwise, and beyond 2^31 elements in one dense
 * operand, cudaErrorNotSupported (with a line on stderr).
 */
#include <cusparse.h>
#include <dlfcn.h>
#include <string.h>

#include "et_cuda.cuh"

namespace {

/* ---- cuSPARSE through dlopen ------------------------------------------------------------- */
struct sp_api {
    void *lib;
    decltype(&cusparseCreate) create;
    decltype(&cusparseDestroy) destroy;
    decltype(&cusparseSetStream) set_stream;
    decltype(&cusparseGetErrorString) err_str;
    decltype(&cusparseCreateConstCsr) create_csr;
    decltype(&cusparseDestroySpMat) destroy_sp;
    decltype(&cusparseCreateConstDnMat) create_cdn;
    decltype(&cusparseCreateDnMat) create_dn;
    decltype(&cusparseDestroyDnMat) destroy_dn;
    decltype(&cusparseSpMM_bufferSize) spmm_size;
    decltype(&cusparseSpMM) spmm;
};

struct uf_state {
    int device;
    cublasHandle_t blas;
    cusparseHandle_t sp;
    sp_api api;
    char *arena;
    size_t arena_cap;
    void *spbuf;
    size_t spbuf_cap;
    int *h_ne;         /* pinned: the edge count */
    int alg;           /* the SpMM algorithm that worked, or -1 */
};

uf_state g_uf = {-1, nullptr, nullptr, {}, nullptr, 0, nullptr, 0, nullptr, -1};

#define UF_TRY(call)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return e_;                                                                             \
    } while (0)

cudaError_t blas_err(cublasStatus_t b, const char *what)
{
    if (b == CUBLAS_STATUS_SUCCESS)
        return cudaSuccess;
    fprintf(stderr, "edge_unfused: cublas %s: status %d\n", what, (int)b);
    return b == CUBLAS_STATUS_ALLOC_FAILED ? cudaErrorMemoryAllocation
           : b == CUBLAS_STATUS_NOT_SUPPORTED ? cudaErrorNotSupported
                                              : cudaErrorUnknown;
}

cudaError_t sp_err(cusparseStatus_t st, const char *what)
{
    if (st == CUSPARSE_STATUS_SUCCESS)
        return cudaSuccess;
    fprintf(stderr, "edge_unfused: cusparse %s: %s (status %d)\n", what,
            g_uf.api.err_str ? g_uf.api.err_str(st) : "?", (int)st);
    return st == CUSPARSE_STATUS_ALLOC_FAILED ? cudaErrorMemoryAllocation
           : st == CUSPARSE_STATUS_NOT_SUPPORTED ? cudaErrorNotSupported
                                                 : cudaErrorUnknown;
}

bool load_cusparse(sp_api *a)
{
    const char *names[] = {"libcusparse.so.12", "libcusparse.so", nullptr, nullptr,
                           "/usr/local/cuda/lib64/libcusparse.so.12"};
    /* the toolkit directory of the cuBLAS this program runs with */
    static char near_blas[2][1024];
    Dl_info info;
    if (dladdr((void *)&cublasCreate_v2, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash) {
            int len = (int)(slash - info.dli_fname);
            snprintf(near_blas[0], sizeof(near_blas[0]), "%.*s/libcusparse.so.12", len,
                     info.dli_fname);
            snprintf(near_blas[1], sizeof(near_blas[1]), "%.*s/libcusparse.so", len,
                     info.dli_fname);
            names[2] = near_blas[0];
            names[3] = near_blas[1];
        }
    }
    void *lib = nullptr;
    for (const char *n : names)
        if (n && (lib = dlopen(n, RTLD_NOW | RTLD_LOCAL)) != nullptr)
            break;
    if (!lib) {
        fprintf(stderr, "edge_unfused: cannot load libcusparse (%s)\n", dlerror());
        return false;
    }
    a->lib = lib;
#define SYM(field, name)                                                                           \
    do {                                                                                           \
        *(void **)&a->field = dlsym(lib, #name);                                                   \
        if (!a->field) {                                                                           \
            fprintf(stderr, "edge_unfused: libcusparse lacks %s\n", #name);                       \
            dlclose(lib);                                                                          \
            memset(a, 0, sizeof(*a));                                                              \
            return false;                                                                          \
        }                                                                                          \
    } while (0)
    SYM(create, cusparseCreate);
    SYM(destroy, cusparseDestroy);
    SYM(set_stream, cusparseSetStream);
    SYM(err_str, cusparseGetErrorString);
    SYM(create_csr, cusparseCreateConstCsr);
    SYM(destroy_sp, cusparseDestroySpMat);
    SYM(create_cdn, cusparseCreateConstDnMat);
    SYM(create_dn, cusparseCreateDnMat);
    SYM(destroy_dn, cusparseDestroyDnMat);
    SYM(spmm_size, cusparseSpMM_bufferSize);
    SYM(spmm, cusparseSpMM);
#undef SYM
    return true;
}

void release_all()
{
    if (g_uf.arena)
        cudaFree(g_uf.arena);
    if (g_uf.spbuf)
        cudaFree(g_uf.spbuf);
    if (g_uf.h_ne)
        cudaFreeHost(g_uf.h_ne);
    if (g_uf.blas)
        cublasDestroy(g_uf.blas);
    if (g_uf.sp && g_uf.api.destroy)
        g_uf.api.destroy(g_uf.sp);
    if (g_uf.api.lib)
        dlclose(g_uf.api.lib);
    g_uf = uf_state{-1, nullptr, nullptr, {}, nullptr, 0, nullptr, 0, nullptr, -1};
}

/* Handles for the current device (created on first use); stream s for both libraries. */
cudaError_t state_init(cudaStream_t s)
{
    int dev = 0;
    UF_TRY(cudaGetDevice(&dev));
    if (g_uf.blas && g_uf.device != dev)
        release_all();
    if (!g_uf.blas) {
        if (!load_cusparse(&g_uf.api))
            return cudaErrorNotSupported;
        g_uf.device = dev;
        cudaError_t e = blas_err(cublasCreate(&g_uf.blas), "create");
        if (e == cudaSuccess)
            e = blas_err(cublasSetMathMode(g_uf.blas, CUBLAS_DEFAULT_MATH), "math mode");
        if (e == cudaSuccess)
            e = sp_err(g_uf.api.create(&g_uf.sp), "create");
        if (e == cudaSuccess)
            e = cudaMallocHost((void **)&g_uf.h_ne, sizeof(int));
        if (e != cudaSuccess) {
            release_all();
            return e;
        }
    }
    UF_TRY(blas_err(cublasSetStream(g_uf.blas, s), "set stream"));
    UF_TRY(sp_err(g_uf.api.set_stream(g_uf.sp, s), "set stream"));
    return cudaSuccess;
}

/* ---- scratch arena ------------------------------------------------------------------------ */
struct uf_bufs {
    int *iota;       /* [E] column ids of R */
    float *ones;     /* [E] values of R and S */
    float *rbf;      /* [E][K] */
    float *drbf;     /* [E][K] (backward) */
    float2 *cut;     /* [E] (c, c') */
    float *pre;      /* [E][4F] filter pre-activations (without bias); backward: dE/dpre */
    float *act;      /* [E][4F] dk | dv (value, gate 1, gate 2) */
    float *dact;     /* [E][4F] their derivatives (backward) */
    float *qt;       /* [E][F] q of the receiver */
    float *ks;       /* [E][F] k of the sender */
    float *vs;       /* [E][3F] v of the sender (head-interleaved, as in qkv) */
    float *vecs;     /* [E][3][F] vec of the sender */
    float *att;      /* [E][H] attention a */
    float *datt;     /* [E][H] attn_act' (backward) */
    float *gxt;      /* [E][F] dE/dX of the receiver (backward) */
    float *gvt;      /* [E][3][F] dE/dV of the receiver (backward) */
    float *gapre;    /* [E][H] dE/d(attention pre-activation) (backward) */
    float *gcf;      /* [E][F] per-channel terms of the cutoff's gradient (backward) */
    float *gf;       /* [E][K] dE/df (backward) */
    float *msg;      /* [8][E][F] messages (forward: 4 blocks) and per-edge gradients */
    float *agg;      /* [4][n][F] aggregation outputs before the strided copies */
};

size_t align_up(size_t b) { return (b + 255) & ~(size_t)255; }

/* Offsets of every tensor for E edges and n rows; base == nullptr only sizes. */
size_t carve(char *base, size_t E, size_t n, size_t F, size_t K, size_t H, uf_bufs *b)
{
    size_t off = 0;
    auto take = [&](size_t bytes) -> char * {
        char *p = base ? base + off : nullptr;
        off += align_up(bytes ? bytes : 4);
        return p;
    };
    const size_t f4 = sizeof(float);
    b->iota = (int *)take(E * sizeof(int));
    b->ones = (float *)take(E * f4);
    b->rbf = (float *)take(E * K * f4);
    b->drbf = (float *)take(E * K * f4);
    b->cut = (float2 *)take(E * sizeof(float2));
    b->pre = (float *)take(E * 4 * F * f4);
    b->act = (float *)take(E * 4 * F * f4);
    b->dact = (float *)take(E * 4 * F * f4);
    b->qt = (float *)take(E * F * f4);
    b->ks = (float *)take(E * F * f4);
    b->vs = (float *)take(E * 3 * F * f4);
    b->vecs = (float *)take(E * 3 * F * f4);
    b->att = (float *)take(E * H * f4);
    b->datt = (float *)take(E * H * f4);
    b->gxt = (float *)take(E * F * f4);
    b->gvt = (float *)take(E * 3 * F * f4);
    b->gapre = (float *)take(E * H * f4);
    b->gcf = (float *)take(E * F * f4);
    b->gf = (float *)take(E * K * f4);
    b->msg = (float *)take(8 * E * F * f4);
    b->agg = (float *)take(4 * (n ? n : 1) * F * f4);
    return off;
}

cudaError_t arena_get(size_t E, size_t n, const et_edge_common *c, uf_bufs *b)
{
    const size_t need = carve(nullptr, E, n, c->F, c->K, c->H, b);
    if (need > g_uf.arena_cap) {
        if (g_uf.arena)
            cudaFree(g_uf.arena); /* synchronises the device: no kernel still uses it */
        g_uf.arena = nullptr;
        g_uf.arena_cap = 0;
        if (cudaMalloc((void **)&g_uf.arena, need) != cudaSuccess) {
            (void)cudaGetLastError(); /* not sticky: leave no stale error for the caller */
            g_uf.arena = nullptr;
            fprintf(stderr,
                    "edge_unfused: cudaMalloc of %zu bytes failed (%zu edges, %.0f bytes per "
                    "edge of materialised per-edge tensors)\n",
                    need, E, E ? (double)need / E : 0.0);
            return cudaErrorMemoryAllocation;
        }
        g_uf.arena_cap = need;
    }
    carve(g_uf.arena, E, n, c->F, c->K, c->H, b);
    return cudaSuccess;
}

/* ---- kernels ------------------------------------------------------------------------------ */
int grid_for(size_t work)
{
    size_t b = (work + 255) / 256;
    const size_t cap = (size_t)132 * 64; /* grid-stride beyond this */
    if (b > cap)
        b = cap;
    return (int)(b ? b : 1);
}

#define GRID_STRIDE(i, total)                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);                  \
         i += (size_t)gridDim.x * blockDim.x)

__global__ void k_fill(int E, int *iota, float *ones)
{
    GRID_STRIDE(i, (size_t)E)
    {
        iota[i] = (int)i;
        ones[i] = 1.f;
    }
}

/* f[e][k], f'[e][k] (drbf non-NULL) and (c, c') of every edge. */
__global__ void k_rbf(const et_edge_common c, int E, float *rbf, float *drbf, float2 *cut)
{
    const int K = c.K;
    GRID_STRIDE(i, (size_t)E * K)
    {
        const size_t e = i / K;
        const int k = (int)(i % K);
        const float r = c.e_geo[e].w;
        const float ak = c.rbf_a[k], bk = c.rbf_b ? c.rbf_b[k] : 0.f;
        float df = 0.f;
        rbf[i] = rbf_k(c, r, ak, bk, drbf ? &df : nullptr);
        if (drbf)
            drbf[i] = df;
        if (k == 0) {
            float dc;
            const float cc = et_cutoff_f(r, c.cl, c.cu, &dc);
            cut[e] = make_float2(cc, dc);
        }
    }
}

/* act[e][ch] = act(pre[e][ch] + b[ch]) for the dk part (ch < F) and the dv parts; 1 (and a
   zero derivative) where the model has no dk / dv. */
__global__ void k_act(int E, int F, int act_id, int use_dk, int use_dv, const float *pre,
                      const float *bias, float *act, float *dact)
{
    const int W = 4 * F;
    GRID_STRIDE(i, (size_t)E * W)
    {
        const int ch = (int)(i % W);
        const bool use = ch < F ? use_dk : use_dv;
        float y = 1.f, d = 0.f;
        if (use)
            y = act_f(act_id, pre[i] + bias[ch], &d);
        act[i] = y;
        if (dact)
            dact[i] = d;
    }
}

/* dst[e][0:w] = src[idx[e] * ld + off + 0:w] (w, ld, off multiples of 4; float4 copies). */
__global__ void k_gather(int E, const int *idx, const float *src, int ld, int off, int w,
                         float *dst)
{
    const int w4 = w / 4;
    GRID_STRIDE(i, (size_t)E * w4)
    {
        const size_t e = i / w4;
        const int j = (int)(i % w4);
        const float4 *s4 = reinterpret_cast<const float4 *>(src + (size_t)idx[e] * ld + off);
        reinterpret_cast<float4 *>(dst)[i] = s4[j];
    }
}

/* a[e][h] = attn_act(sum_d q k dk) and its derivative (datt non-NULL). */
__global__ void k_attn(int E, int F, int H, int D, int attn_act, const float *qt, const float *ks,
                       const float *act, float *att, float *datt)
{
    GRID_STRIDE(i, (size_t)E * H)
    {
        const size_t e = i / H;
        const int h = (int)(i % H);
        const float *q = qt + e * F + h * D, *k = ks + e * F + h * D;
        const float *dk = act + e * 4 * F + h * D;
        float s = 0.f;
        for (int d = 0; d < D; d++)
            s = fmaf(q[d] * k[d], dk[d], s);
        float da;
        att[i] = act_f(attn_act, s, &da);
        if (datt)
            datt[i] = da;
    }
}

/* Forward messages: m_x[e][f] = x~ A, m_v[c][e][f] = vec_s[c][f] g1 + g2 d_e[c]. */
__global__ void k_msg_fwd(const et_edge_common c, int E, const float2 *cut, const float *act,
                          const float *vs, const float *vecs, const float *att, float *msg)
{
    const int F = c.F, D = c.D, H = c.H;
    GRID_STRIDE(i, (size_t)E * F)
    {
        const size_t e = i / F;
        const int f = (int)(i % F);
        const float cc = cut[e].x;
        const float a = att[e * H + f / D];
        const float A = c.vc ? a : a * cc;
        const float sv = c.vc ? cc : 1.f;
        const float4 g = c.e_geo[e];
        const float inv = g.w == 0.f ? 0.f : 1.f / g.w; /* r = 0: the self-loop */
        const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
        const float *ae = act + e * 4 * F;
        const float *ve = vs + e * 3 * F;
        const float xt = ve[ET_VIDX(f, 0, D)] * ae[F + f] * sv;
        const float g1 = ve[ET_VIDX(f, 1, D)] * ae[2 * F + f] * sv;
        const float g2 = ve[ET_VIDX(f, 2, D)] * ae[3 * F + f] * sv;
        msg[i] = xt * A;
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
            msg[(size_t)(1 + cx) * E * F + i] = vecs[e * 3 * F + cx * F + f] * g1 + g2 * dir[cx];
    }
}

/* Backward, per edge and head: g_A = sum_d dE/dX x~; g_apre = (g_A or g_A c) attn_act'. */
__global__ void k_attn_bwd(const et_edge_common c, int E, const float2 *cut, const float *act,
                           const float *vs, const float *gxt, const float *datt, float *gapre)
{
    const int F = c.F, D = c.D, H = c.H;
    GRID_STRIDE(i, (size_t)E * H)
    {
        const size_t e = i / H;
        const int h = (int)(i % H);
        const float cc = cut[e].x;
        const float sv = c.vc ? cc : 1.f;
        const float *ae = act + e * 4 * F, *ve = vs + e * 3 * F, *gx = gxt + e * F;
        float gA = 0.f;
        for (int d = 0; d < D; d++) {
            const int f = h * D + d;
            gA = fmaf(gx[f], ve[ET_VIDX(f, 0, D)] * ae[F + f] * sv, gA);
        }
        gapre[i] = (c.vc ? gA : gA * cc) * datt[i];
    }
}

/* Backward, per edge and channel: dE/dpre (gpre), the cutoff-gradient terms gcf[e][f] (through
   sv = c with vector_cutoff: sum_p g_v~_p v_p dv_p; without: dE/dX x~ a, through A = a c), and
   the per-edge gradient messages, msg blocks: 0 g_q (to the receiver), 1 g_k, 2..4 g_v in
   qkv's head-interleaved v order (block 2 + x / F, column x % F for v column x), 5..7
   g_vec[c] (to the sender). */
__global__ void k_grad_edge(const et_edge_common c, int E, const float2 *cut, const float *act,
                            const float *dact, const float *qt, const float *ks, const float *vs,
                            const float *vecs, const float *gxt, const float *gvt,
                            const float *att, const float *gapre, float *gpre, float *gcf,
                            float *msg)
{
    const int F = c.F, D = c.D, H = c.H;
    const size_t EF = (size_t)E * F;
    GRID_STRIDE(i, EF)
    {
        const size_t e = i / F;
        const int f = (int)(i % F), h = f / D;
        const float cc = cut[e].x;
        const float a = att[e * H + h];
        const float A = c.vc ? a : a * cc;
        const float sv = c.vc ? cc : 1.f;
        const float gp = gapre[e * H + h];
        const float4 g = c.e_geo[e];
        const float inv = g.w == 0.f ? 0.f : 1.f / g.w; /* r = 0: the self-loop */
        const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
        const float *ae = act + e * 4 * F, *de = dact + e * 4 * F;
        const float *ve = vs + e * 3 * F;
        const float q = qt[i], k = ks[i], dk = ae[f], gX = gxt[i];
        float gV[3], vc3[3];
#pragma unroll
        for (int cx = 0; cx < 3; cx++) {
            gV[cx] = gvt[e * 3 * F + cx * F + f];
            vc3[cx] = vecs[e * 3 * F + cx * F + f];
        }
        const float gvt_p[3] = {gX * A, gV[0] * vc3[0] + gV[1] * vc3[1] + gV[2] * vc3[2],
                                gV[0] * dir[0] + gV[1] * dir[1] + gV[2] * dir[2]};
        float *ge = gpre + e * 4 * F;
        ge[f] = gp * q * k * de[f];
        msg[i] = gp * k * dk;      /* g_q */
        msg[EF + i] = gp * q * dk; /* g_k */
        float g1 = 0.f, gc = 0.f;
#pragma unroll
        for (int p = 0; p < 3; p++) {
            const int x = ET_VIDX(f, p, D);
            const float v = ve[x], dv = ae[(1 + p) * F + f];
            ge[(1 + p) * F + f] = gvt_p[p] * v * sv * de[(1 + p) * F + f];
            msg[(size_t)(2 + x / F) * EF + e * F + (x % F)] = gvt_p[p] * sv * dv;
            gc = fmaf(gvt_p[p] * v, dv, gc);
            if (p == 1)
                g1 = v * dv * sv;
        }
        /* without vector_cutoff: sv = 1 and x~ = v_0 dv_0 */
        gcf[i] = c.vc ? gc : gX * (ve[ET_VIDX(f, 0, D)] * ae[F + f]) * a;
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
            msg[(size_t)(5 + cx) * EF + i] = gV[cx] * g1;
    }
}

/* Geometry gradient, one warp per edge: g_d = sum_f dE/dV g2, g_c = sum_f gcf,
   g_r = sum_k dE/df_k f'_k + g_c c'; gw[e] += (g_d - d (d . g_d)) / r + g_r d. Self-loops
   have none. */
__global__ void k_geo_grad(const et_edge_common c, int E, const float2 *cut, const float *act,
                           const float *vs, const float *gvt, const float *gcf, const float *gf,
                           const float *drbf, float *gw)
{
    const int F = c.F, D = c.D, K = c.K;
    const int lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t e = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < (size_t)E;
         e += warps) {
        if (c.e_geo[e].w == 0.f)
            continue; /* the self-loop (r = 0); the same for the whole warp */
        const float2 cd = cut[e];
        const float sv = c.vc ? cd.x : 1.f;
        const float4 g = c.e_geo[e];
        const float inv = 1.f / g.w;
        const float dir[3] = {g.x * inv, g.y * inv, g.z * inv};
        const float *ae = act + e * 4 * F, *ve = vs + e * 3 * F, *gv = gvt + e * 3 * F;
        float gd[3] = {0.f, 0.f, 0.f}, gc = 0.f, gr = 0.f;
        for (int f = lane; f < F; f += 32) {
            const float g2 = ve[ET_VIDX(f, 2, D)] * ae[3 * F + f] * sv;
#pragma unroll
            for (int cx = 0; cx < 3; cx++)
                gd[cx] = fmaf(gv[cx * F + f], g2, gd[cx]);
            gc += gcf[e * F + f];
        }
        for (int k = lane; k < K; k += 32)
            gr = fmaf(gf[e * K + k], drbf[e * K + k], gr);
        gr = warp_sum(gr);
        gc = warp_sum(gc);
#pragma unroll
        for (int cx = 0; cx < 3; cx++)
            gd[cx] = warp_sum(gd[cx]);
        if (lane == 0) {
            gr += gc * cd.y;
            const float dd = gd[0] * dir[0] + gd[1] * dir[1] + gd[2] * dir[2];
            float *const acc = gw + 3 * e;
            acc[0] += (gd[0] - dir[0] * dd) * inv + gr * dir[0];
            acc[1] += (gd[1] - dir[1] * dd) * inv + gr * dir[1];
            acc[2] += (gd[2] - dir[2] * dd) * inv + gr * dir[2];
        }
    }
}

/* gvec[s][c][f] += agg[c][s][f] */
__global__ void k_add_vec(int n, int F, const float *agg, float *gvec)
{
    const size_t nF = (size_t)n * F;
    GRID_STRIDE(i, 3 * nF)
    {
        const size_t s = i / (3 * F);
        const int r = (int)(i % (3 * F)), cx = r / F, f = r % F;
        gvec[i] += agg[cx * nF + s * F + f];
    }
}

/* ---- library calls and the two launchers -------------------------------------------------- */
constexpr int GEMM_CHUNK = 1 << 20; /* edges per SGEMM call: operands stay below 2^31 elements */

/* pre[e][0:4F] = sum_k f[e][k] W[k][0:4F] (W = filt_wt as a row-major [K][4F] matrix). */
cudaError_t gemm_filters(int E, int K, int F, const float *W, const float *rbf, float *pre)
{
    const int W4 = 4 * F;
    const float one = 1.f, zero = 0.f;
    for (int e0 = 0; e0 < E; e0 += GEMM_CHUNK) {
        const int m = E - e0 < GEMM_CHUNK ? E - e0 : GEMM_CHUNK;
        UF_TRY(blas_err(cublasSgemm(g_uf.blas, CUBLAS_OP_N, CUBLAS_OP_N, W4, m, K, &one, W, W4,
                                    rbf + (size_t)e0 * K, K, &zero, pre + (size_t)e0 * W4, W4),
                        "filters"));
    }
    return cudaSuccess;
}

/* gf[e][k] = sum_ch gpre[e][ch] W[k][ch]. */
cudaError_t gemm_filters_bwd(int E, int K, int F, const float *W, const float *gpre, float *gf)
{
    const int W4 = 4 * F;
    const float one = 1.f, zero = 0.f;
    for (int e0 = 0; e0 < E; e0 += GEMM_CHUNK) {
        const int m = E - e0 < GEMM_CHUNK ? E - e0 : GEMM_CHUNK;
        UF_TRY(blas_err(cublasSgemm(g_uf.blas, CUBLAS_OP_T, CUBLAS_OP_N, K, m, W4, &one, W, W4,
                                    gpre + (size_t)e0 * W4, W4, &zero, gf + (size_t)e0 * K, K),
                        "filter backward"));
    }
    return cudaSuccess;
}

/* C[rows][F] = A B: A the [rows x E] 0/1 CSR matrix (off, cols, ones), B [E][F] row-major. */
cudaError_t spmm(int rows, int E, const int *off, const int *cols, const float *ones,
                 const float *B, int F, float *C)
{
    if (rows == 0 || E == 0)
        return cudaSuccess;
    const sp_api &a = g_uf.api;
    cusparseConstSpMatDescr_t A = nullptr;
    cusparseConstDnMatDescr_t Bd = nullptr;
    cusparseDnMatDescr_t Cd = nullptr;
    cudaError_t e = sp_err(a.create_csr(&A, rows, E, E, off, cols, ones, CUSPARSE_INDEX_32I,
                                        CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO, CUDA_R_32F),
                           "create CSR");
    if (e == cudaSuccess)
        e = sp_err(a.create_cdn(&Bd, E, F, F, B, CUDA_R_32F, CUSPARSE_ORDER_ROW), "create B");
    if (e == cudaSuccess)
        e = sp_err(a.create_dn(&Cd, rows, F, F, C, CUDA_R_32F, CUSPARSE_ORDER_ROW), "create C");
    if (e == cudaSuccess) {
        /* CSR_ALG2 first (row-major operands, documented bit-wise reproducible); the default
           one if this cuSPARSE refuses it. The one that worked is kept. (The unfused path's
           energies still differ between calls on one system at the 3e-8 level with either
           algorithm, on the H200: the cause is elsewhere; docs/gpu_bench.md.) */
        static const cusparseSpMMAlg_t algs[] = {CUSPARSE_SPMM_CSR_ALG2, CUSPARSE_SPMM_ALG_DEFAULT,
                                                 CUSPARSE_SPMM_CSR_ALG1};
        const float one = 1.f, zero = 0.f;
        const cusparseOperation_t N = CUSPARSE_OPERATION_NON_TRANSPOSE;
        cusparseStatus_t st = CUSPARSE_STATUS_NOT_SUPPORTED, first = CUSPARSE_STATUS_SUCCESS;
        for (int t = g_uf.alg >= 0 ? g_uf.alg : 0; t < 3; t++) {
            size_t bytes = 0;
            st = a.spmm_size(g_uf.sp, N, N, &one, A, Bd, &zero, Cd, CUDA_R_32F, algs[t], &bytes);
            if (st == CUSPARSE_STATUS_SUCCESS && bytes > g_uf.spbuf_cap) {
                if (g_uf.spbuf)
                    cudaFree(g_uf.spbuf);
                g_uf.spbuf = nullptr;
                g_uf.spbuf_cap = 0;
                if (cudaMalloc(&g_uf.spbuf, bytes) != cudaSuccess) {
                    (void)cudaGetLastError();
                    g_uf.spbuf = nullptr;
                    e = cudaErrorMemoryAllocation;
                    break;
                }
                g_uf.spbuf_cap = bytes;
            }
            if (st == CUSPARSE_STATUS_SUCCESS)
                st = a.spmm(g_uf.sp, N, N, &one, A, Bd, &zero, Cd, CUDA_R_32F, algs[t],
                            g_uf.spbuf);
            if (st == CUSPARSE_STATUS_SUCCESS) {
                if (g_uf.alg != t)
                    fprintf(stderr, "edge_unfused: cusparseSpMM algorithm %d\n", (int)algs[t]);
                g_uf.alg = t;
                break;
            }
            if (first == CUSPARSE_STATUS_SUCCESS)
                first = st;
            if (st == CUSPARSE_STATUS_ALLOC_FAILED || g_uf.alg >= 0)
                break;
        }
        if (e == cudaSuccess && st != CUSPARSE_STATUS_SUCCESS)
            e = sp_err(first != CUSPARSE_STATUS_SUCCESS ? first : st, "SpMM");
    }
    if (Cd)
        a.destroy_dn(Cd);
    if (Bd)
        a.destroy_dn(Bd);
    if (A)
        a.destroy_sp(A);
    return e;
}

cudaError_t check_supported(const et_edge_common *c)
{
    if (c->F % 4 != 0 || c->H < 1 || c->D * c->H != c->F || c->K < 1) {
        fprintf(stderr, "edge_unfused: hidden_channels %d, heads %d, num_rbf %d not supported "
                        "(needs F a multiple of 4)\n", c->F, c->H, c->K);
        return cudaErrorNotSupported;
    }
    return cudaSuccess;
}

/* The edge count, row_off[n_local], read back (one stream synchronisation). */
cudaError_t edge_count(cudaStream_t s, const et_edge_common *c, int *E)
{
    UF_TRY(cudaMemcpyAsync(g_uf.h_ne, c->row_off + c->n_local, sizeof(int),
                           cudaMemcpyDeviceToHost, s));
    UF_TRY(cudaStreamSynchronize(s));
    *E = *g_uf.h_ne;
    return cudaSuccess;
}

/* cuSPARSE's dense operands are [E][F] blocks: keep each below 2^31 elements (checked after
   the allocation, so that a system too large for the device reports out of memory). */
cudaError_t check_size(int E, int F)
{
    if ((size_t)E * F > (size_t)INT32_MAX) {
        fprintf(stderr, "edge_unfused: %d edges x %d channels: a dense operand beyond 2^31 "
                        "elements is not supported\n", E, F);
        return cudaErrorNotSupported;
    }
    return cudaSuccess;
}

/* Steps shared by both passes: RBF, filters, activations, gathers, attention. */
cudaError_t edge_front(cudaStream_t s, const et_edge_common *c, const et_edge_layer *l, int E,
                       const uf_bufs &b, bool bwd)
{
    const int F = c->F, K = c->K;
    k_fill<<<grid_for(E), 256, 0, s>>>(E, b.iota, b.ones);
    k_rbf<<<grid_for((size_t)E * K), 256, 0, s>>>(*c, E, b.rbf, bwd ? b.drbf : nullptr, b.cut);
    UF_TRY(cudaGetLastError());
    UF_TRY(gemm_filters(E, K, F, l->filt_wt, b.rbf, b.pre));
    k_act<<<grid_for((size_t)E * 4 * F), 256, 0, s>>>(E, F, c->act, c->use_dk, c->use_dv, b.pre,
                                                       l->filt_b, b.act, bwd ? b.dact : nullptr);
    k_gather<<<grid_for((size_t)E * F / 4), 256, 0, s>>>(E, c->e_dst, l->qkv, 5 * F, 0, F, b.qt);
    k_gather<<<grid_for((size_t)E * F / 4), 256, 0, s>>>(E, c->e_src, l->qkv, 5 * F, F, F, b.ks);
    k_gather<<<grid_for((size_t)E * 3 * F / 4), 256, 0, s>>>(E, c->e_src, l->qkv, 5 * F, 2 * F,
                                                             3 * F, b.vs);
    if (l->vec)
        k_gather<<<grid_for((size_t)E * 3 * F / 4), 256, 0, s>>>(E, c->e_src, l->vec, 3 * F, 0,
                                                                 3 * F, b.vecs);
    else
        UF_TRY(cudaMemsetAsync(b.vecs, 0, (size_t)E * 3 * F * sizeof(float), s));
    k_attn<<<grid_for((size_t)E * c->H), 256, 0, s>>>(E, F, c->H, c->D, c->attn_act, b.qt, b.ks,
                                                      b.act, b.att, bwd ? b.datt : nullptr);
    return cudaGetLastError();
}

} /* namespace */

extern "C" cudaError_t et_edge_forward_unfused(cudaStream_t s, const et_edge_common *c,
                                               const et_edge_layer *l)
{
    const int nl = c->n_local, F = c->F;
    if (nl == 0)
        return cudaSuccess;
    UF_TRY(check_supported(c));
    UF_TRY(state_init(s));
    int E = 0;
    UF_TRY(edge_count(s, c, &E));
    uf_bufs b;
    UF_TRY(arena_get((size_t)E, (size_t)c->n_total, c, &b));
    UF_TRY(check_size(E, F));
    UF_TRY(edge_front(s, c, l, E, b, false));
    k_msg_fwd<<<grid_for((size_t)E * F), 256, 0, s>>>(*c, E, b.cut, b.act, b.vs, b.vecs, b.att,
                                                      b.msg);
    UF_TRY(cudaGetLastError());
    /* X = R m_x; V[:, c, :] = R m_v,c (through a contiguous [nl][F] block, then a strided copy) */
    UF_TRY(spmm(nl, E, c->row_off, b.iota, b.ones, b.msg, F, l->X));
    for (int cx = 0; cx < 3; cx++) {
        float *blk = b.agg + (size_t)cx * nl * F;
        UF_TRY(spmm(nl, E, c->row_off, b.iota, b.ones, b.msg + (size_t)(1 + cx) * E * F, F, blk));
        UF_TRY(cudaMemcpy2DAsync(l->V + (size_t)cx * F, 3 * F * sizeof(float), blk,
                                 F * sizeof(float), F * sizeof(float), nl,
                                 cudaMemcpyDeviceToDevice, s));
    }
    return cudaSuccess;
}

extern "C" cudaError_t et_edge_backward_unfused(cudaStream_t s, const et_edge_common *c,
                                                const et_edge_layer *l)
{
    const int n = c->n_total, nl = c->n_local, F = c->F, K = c->K;
    if (n == 0)
        return cudaSuccess;
    UF_TRY(check_supported(c));
    UF_TRY(state_init(s));
    int E = 0;
    UF_TRY(edge_count(s, c, &E));
    const size_t row = 5 * (size_t)F * sizeof(float);
    if (E == 0) /* no edges: g_q, g_k, g_v are zero; g_vec and gw unchanged */
        return cudaMemsetAsync(l->gqkv, 0, (size_t)n * row, s);
    uf_bufs b;
    UF_TRY(arena_get((size_t)E, (size_t)n, c, &b));
    UF_TRY(check_size(E, F));
    UF_TRY(edge_front(s, c, l, E, b, true));
    k_gather<<<grid_for((size_t)E * F / 4), 256, 0, s>>>(E, c->e_dst, l->gX, F, 0, F, b.gxt);
    k_gather<<<grid_for((size_t)E * 3 * F / 4), 256, 0, s>>>(E, c->e_dst, l->gV, 3 * F, 0, 3 * F,
                                                             b.gvt);
    k_attn_bwd<<<grid_for((size_t)E * c->H), 256, 0, s>>>(*c, E, b.cut, b.act, b.vs, b.gxt,
                                                          b.datt, b.gapre);
    /* dE/dpre overwrites pre (no longer needed) */
    k_grad_edge<<<grid_for((size_t)E * F), 256, 0, s>>>(*c, E, b.cut, b.act, b.dact, b.qt, b.ks,
                                                        b.vs, b.vecs, b.gxt, b.gvt, b.att,
                                                        b.gapre, b.pre, b.gcf, b.msg);
    UF_TRY(cudaGetLastError());
    UF_TRY(gemm_filters_bwd(E, K, F, l->filt_wt, b.pre, b.gf));
    k_geo_grad<<<grid_for((size_t)E * 32), 256, 0, s>>>(*c, E, b.cut, b.act, b.vs, b.gvt, b.gcf,
                                                        b.gf, b.drbf, l->gw);
    UF_TRY(cudaGetLastError());

    /* g_q of owned receivers: R msg_0; ghosts' g_q = 0 */
    UF_TRY(spmm(nl, E, c->row_off, b.iota, b.ones, b.msg, F, b.agg));
    UF_TRY(cudaMemcpy2DAsync(l->gqkv, row, b.agg, F * sizeof(float), F * sizeof(float), nl,
                             cudaMemcpyDeviceToDevice, s));
    if (n > nl)
        UF_TRY(cudaMemset2DAsync(l->gqkv + (size_t)nl * 5 * F, row, 0, F * sizeof(float), n - nl,
                                 s));
    /* g_k and g_v (4 column blocks of qkv's k | v part) of every sender: S msg_1..4 */
    for (int bb = 0; bb < 4; bb++) {
        float *blk = b.agg + (size_t)bb * n * F;
        UF_TRY(spmm(n, E, c->tr_off, c->tr_edge, b.ones, b.msg + (size_t)(1 + bb) * E * F, F,
                    blk));
        UF_TRY(cudaMemcpy2DAsync(l->gqkv + (size_t)(1 + bb) * F, row, blk, F * sizeof(float),
                                 F * sizeof(float), n, cudaMemcpyDeviceToDevice, s));
    }
    /* g_vec += S msg_5..7 */
    for (int cx = 0; cx < 3; cx++)
        UF_TRY(spmm(n, E, c->tr_off, c->tr_edge, b.ones, b.msg + (size_t)(5 + cx) * E * F, F,
                    b.agg + (size_t)cx * n * F));
    k_add_vec<<<grid_for((size_t)n * 3 * F), 256, 0, s>>>(n, F, b.agg, l->gvec);
    return cudaGetLastError();
}


extern "C" void et_unfused_release(void) { release_all(); }
