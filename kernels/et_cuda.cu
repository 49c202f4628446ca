/*
 * et_cuda.cu - the CUDA ET backend's driver: weights to the device once, the workspace, and
 * one compute() = input upload, edge list, neighbour embedding, L layers forward, head,
 * L layers backward (recomputing each layer's node work from its stored input), forces and
 * fp64 totals. One stream; the host waits only for the edge count (to size the workspace),
 * for caller exchanges (host exchanges; a wire plan's device buffers before its move()), and
 * for the results. Also the device memory calls for a wire plan's move (CUDA IPC, copies).
 */
#include <cub/cub.cuh>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#include "ds4sci_kernels.h"
#include "et_cuda.cuh"

/* ---- errors -------------------------------------------------------------------------------- */
static ds4sci_status fail(char *err, size_t len, ds4sci_status st, const char *fmt, ...)
{
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return st;
}

static ds4sci_status cu_fail(cudaError_t e, const char *what, char *err, size_t len)
{
    return fail(err, len, e == cudaErrorMemoryAllocation ? DS4SCI_ERR_DEVICE_NOMEM : DS4SCI_ERR_DEVICE,
                "cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

static ds4sci_status blas_fail(cublasStatus_t b, const char *what, char *err, size_t len)
{
    return fail(err, len, DS4SCI_ERR_DEVICE, "cublas: %s: status %d", what, (int)b);
}

#define CU(call, what)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return cu_fail(e_, what, err, err_len);                                                \
    } while (0)

#define ST(call)                                                                                   \
    do {                                                                                           \
        ds4sci_status s_ = (call);                                                                 \
        if (s_ != DS4SCI_OK)                                                                       \
            return s_;                                                                             \
    } while (0)

/* ---- weights ------------------------------------------------------------------------------- */
/* bytes of device memory for a weight (counted in dev_bytes); *dst NULL when it fails */
static ds4sci_status weight_alloc(ds4sci_cuda_et *et, void **dst, size_t bytes, char *err,
                                  size_t err_len)
{
    cudaError_t e = cudaMalloc(dst, bytes);
    if (e != cudaSuccess) {
        *dst = NULL;
        return fail(err, err_len, DS4SCI_ERR_DEVICE_NOMEM,
                    "cuda: cudaMalloc of %zu bytes for the model weights failed: %s", bytes,
                    cudaGetErrorString(e));
    }
    et->dev_bytes += bytes;
    return DS4SCI_OK;
}

static ds4sci_status upload(ds4sci_cuda_et *et, float **dst, const float *host, size_t n, char *err,
                            size_t err_len)
{
    ST(weight_alloc(et, (void **)dst, (n ? n : 1) * sizeof(float), err, err_len));
    if (n)
        CU(cudaMemcpy(*dst, host, n * sizeof(float), cudaMemcpyHostToDevice), "weight upload");
    return DS4SCI_OK;
}

/* fp32 copy of a double array (NULL -> zeros), optionally transposed from [rows][cols]. */
static ds4sci_status up_d(ds4sci_cuda_et *et, float **dst, const double *src, int rows, int cols,
                          int transpose, char *err, size_t err_len)
{
    size_t n = (size_t)rows * cols;
    float *h = (float *)calloc(n ? n : 1, sizeof(float));
    if (!h)
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    if (src)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                h[transpose ? (size_t)c * rows + r : (size_t)r * cols + c] = (float)src[(size_t)r * cols + c];
    ds4sci_status st = upload(et, dst, h, n, err, err_len);
    free(h);
    return st;
}

/* gemm_x3.cu's three bf16 pieces of a weight already on the device (et_gemm_x3_split: trans
   0 from W [N][K], 1 from B [K][N]); on et->stream, waited for by up_weights */
static ds4sci_status up_x3(ds4sci_cuda_et *et, uint16_t **dst, const float *w, int N, int K,
                           int trans, char *err, size_t err_len)
{
    ST(weight_alloc(et, (void **)dst, 3 * (size_t)N * K * sizeof(uint16_t), err, err_len));
    CU(et_gemm_x3_split(et->stream, N, K, w, trans ? N : K, trans, *dst), "weight split");
    return DS4SCI_OK;
}

/* Filters of layer l in the transposed lane-major layout of edge_common.cuh. */
static ds4sci_status up_filters(ds4sci_cuda_et *et, const et_desc *d, const et_layer *ly,
                                et_dlayer *dl, char *err, size_t err_len)
{
    const int F = d->F, K = d->K, D = d->D, CPL = edge_cpl(F);
    float *w = (float *)calloc((size_t)K * 4 * F, sizeof(float));
    float *b = (float *)calloc((size_t)4 * F, sizeof(float));
    if (!w || !b) {
        free(w);
        free(b);
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    }
    for (int p = 0; p < 4; p++)
        for (int lane = 0; lane < 32; lane++)
            for (int j = 0; j < CPL; j++) {
                const int f = lane * CPL + j;
                if (f >= F)
                    continue;
                const double *W = p == 0 ? ly->dk_w : ly->dv_w;
                const double *B = p == 0 ? ly->dk_b : ly->dv_b;
                const int ch = p == 0 ? f : ET_VIDX(f, p - 1, D);
                const size_t slot = (size_t)p * F + f;
                if (!W)
                    continue;
                b[slot] = (float)B[ch];
                for (int k = 0; k < K; k++)
                    w[(size_t)k * 4 * F + slot] = (float)W[(size_t)ch * K + k];
            }
    ds4sci_status st = upload(et, &dl->filt_wt, w, (size_t)K * 4 * F, err, err_len);
    if (st == DS4SCI_OK)
        st = upload(et, &dl->filt_b, b, (size_t)4 * F, err, err_len);
    free(w);
    free(b);
    return st;
}

static ds4sci_status up_weights(ds4sci_cuda_et *et, const et_desc *d, char *err, size_t err_len)
{
    et_dmodel *m = &et->m;
    const int F = d->F, K = d->K, Fh = F / 2;
    m->F = F;
    m->H = d->H;
    m->D = d->D;
    m->K = K;
    m->L = d->L;
    m->CPL = edge_cpl(F);
    m->max_z = d->max_z;
    m->act = d->act;
    m->attn_act = d->attn_act;
    m->rbf = d->rbf;
    m->use_dk = (d->dist_influence & ET_DI_KEYS) != 0;
    m->use_dv = (d->dist_influence & ET_DI_VALUES) != 0;
    m->ne = d->neighbor_embedding;
    m->vc = d->vector_cutoff;
    m->cl = (float)d->cutoff_lower;
    m->cu = (float)d->cutoff_upper;
    m->alpha = (float)d->alpha;
    m->std_scale = (float)d->std;
    m->head_eps2 = (float)(d->head_eps * d->head_eps);
    m->rbf_coeff = (float)d->rbf_coeff;
    if (d->rbf == ET_RBF_EXPNORM) {
        ST(up_d(et, &m->rbf_a, d->rbf_means, 1, K, 0, err, err_len));
        ST(up_d(et, &m->rbf_b, d->rbf_betas, 1, K, 0, err, err_len));
    } else {
        ST(up_d(et, &m->rbf_a, d->rbf_offset, 1, K, 0, err, err_len));
        m->rbf_b = NULL;
    }
    ST(up_d(et, &m->emb, d->emb, d->max_z, F, 0, err, err_len));
    if (m->ne) {
        ST(up_d(et, &m->ne_emb, d->ne_emb, d->max_z, F, 0, err, err_len));
        ST(up_d(et, &m->ne_wt, d->ne_dp_w, F, K, 1, err, err_len));
        ST(up_d(et, &m->ne_b, d->ne_dp_b, 1, F, 0, err, err_len));
        ST(up_d(et, &m->ne_comb_w, d->ne_comb_w, F, 2 * F, 0, err, err_len));
        ST(up_d(et, &m->ne_comb_b, d->ne_comb_b, 1, F, 0, err, err_len));
        /* the neighbour embedding by species: the slot map and B, made by compute_input */
        ST(weight_alloc(et, (void **)&m->ne_sp, sizeof(int) * ((size_t)d->max_z + ET_NE_SP_MAX),
                        err, err_len));
        ST(weight_alloc(et, (void **)&m->ne_spB,
                        sizeof(float) * (size_t)F * ET_NE_SP_MAX * (K + 1), err, err_len));
    }
    m->layers = (et_dlayer *)calloc((size_t)d->L, sizeof(et_dlayer));
    if (!m->layers)
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    for (int l = 0; l < d->L; l++) {
        const et_layer *ly = &d->layers[l];
        et_dlayer *dl = &m->layers[l];
        ST(up_d(et, &dl->ln_w, ly->ln_w, 1, F, 0, err, err_len));
        ST(up_d(et, &dl->ln_b, ly->ln_b, 1, F, 0, err, err_len));
        /* q | k | v rows stacked into one [5F][F] matrix and [5F] bias */
        double *w = (double *)malloc(sizeof(double) * 5 * F * F);
        double *b = (double *)malloc(sizeof(double) * 5 * F);
        if (!w || !b) {
            free(w);
            free(b);
            return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
        }
        memcpy(w, ly->q_w, sizeof(double) * F * F);
        memcpy(w + F * F, ly->k_w, sizeof(double) * F * F);
        memcpy(w + 2 * F * F, ly->v_w, sizeof(double) * 3 * F * F);
        memcpy(b, ly->q_b, sizeof(double) * F);
        memcpy(b + F, ly->k_b, sizeof(double) * F);
        memcpy(b + 2 * F, ly->v_b, sizeof(double) * 3 * F);
        ds4sci_status st = up_d(et, &dl->qkv_w, w, 5 * F, F, 0, err, err_len);
        if (st == DS4SCI_OK)
            st = up_d(et, &dl->qkv_b, b, 1, 5 * F, 0, err, err_len);
        free(w);
        free(b);
        ST(st);
        ST(up_d(et, &dl->o_w, ly->o_w, 3 * F, F, 0, err, err_len));
        ST(up_d(et, &dl->o_b, ly->o_b, 1, 3 * F, 0, err, err_len));
        ST(up_d(et, &dl->vec_w, ly->vec_w, 3 * F, F, 0, err, err_len));
        ST(up_filters(et, d, ly, dl, err, err_len));
        if (et->gemm_x3) {
            ST(up_x3(et, &dl->qkv_w3, dl->qkv_w, 5 * F, F, 0, err, err_len));
            ST(up_x3(et, &dl->o_w3, dl->o_w, 3 * F, F, 0, err, err_len));
            ST(up_x3(et, &dl->vec_w3, dl->vec_w, 3 * F, F, 0, err, err_len));
            ST(up_x3(et, &dl->qkv_w3t, dl->qkv_w, F, 5 * F, 1, err, err_len));
            ST(up_x3(et, &dl->o_w3t, dl->o_w, F, 3 * F, 1, err, err_len));
            ST(up_x3(et, &dl->vec_w3t, dl->vec_w, F, 3 * F, 1, err, err_len));
        }
    }
    if (et->gemm_x3)
        CU(cudaStreamSynchronize(et->stream), "weight split");
    ST(up_d(et, &m->on_w, d->out_norm_w, 1, F, 0, err, err_len));
    ST(up_d(et, &m->on_b, d->out_norm_b, 1, F, 0, err, err_len));
    const et_geb *h0 = &d->head[0], *h1 = &d->head[1];
    ST(up_d(et, &m->h0_w1, h0->vec1_w, F, F, 0, err, err_len));
    ST(up_d(et, &m->h0_w1t, h0->vec1_w, F, F, 1, err, err_len));
    ST(up_d(et, &m->h0_w2, h0->vec2_w, Fh, F, 0, err, err_len));
    ST(up_d(et, &m->h0_w2t, h0->vec2_w, Fh, F, 1, err, err_len));
    ST(up_d(et, &m->h0_l1, h0->up0_w, F, 2 * F, 0, err, err_len));
    ST(up_d(et, &m->h0_l1t, h0->up0_w, F, 2 * F, 1, err, err_len));
    ST(up_d(et, &m->h0_l1b, h0->up0_b, 1, F, 0, err, err_len));
    ST(up_d(et, &m->h0_l2, h0->up2_w, F, F, 0, err, err_len));
    ST(up_d(et, &m->h0_l2t, h0->up2_w, F, F, 1, err, err_len));
    ST(up_d(et, &m->h0_l2b, h0->up2_b, 1, F, 0, err, err_len));
    ST(up_d(et, &m->h1_w1, h1->vec1_w, Fh, Fh, 0, err, err_len));
    ST(up_d(et, &m->h1_w1t, h1->vec1_w, Fh, Fh, 1, err, err_len));
    ST(up_d(et, &m->h1_l1, h1->up0_w, Fh, F, 0, err, err_len));
    ST(up_d(et, &m->h1_l1t, h1->up0_w, Fh, F, 1, err, err_len));
    ST(up_d(et, &m->h1_l1b, h1->up0_b, 1, Fh, 0, err, err_len));
    ST(up_d(et, &m->h1_l2, h1->up2_w, 2, Fh, 0, err, err_len));
    ST(up_d(et, &m->h1_l2t, h1->up2_w, 2, Fh, 1, err, err_len));
    ST(up_d(et, &m->h1_l2b, h1->up2_b, 1, 2, 0, err, err_len));
    double *ar = (double *)calloc((size_t)d->max_z, sizeof(double));
    if (!ar)
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    if (d->atomref_enable && d->atomref)
        memcpy(ar, d->atomref, sizeof(double) * d->max_z);
    cudaError_t e = cudaMalloc((void **)&m->atomref, sizeof(double) * d->max_z);
    if (e == cudaSuccess)
        e = cudaMemcpy(m->atomref, ar, sizeof(double) * d->max_z, cudaMemcpyHostToDevice);
    free(ar);
    CU(e, "atomref upload");
    et->dev_bytes += sizeof(double) * d->max_z;
    return DS4SCI_OK;
}

static void free_weights(et_dmodel *m)
{
    float **p[] = {&m->rbf_a, &m->rbf_b, &m->emb, &m->ne_emb, &m->ne_wt, &m->ne_b, &m->ne_comb_w,
                   &m->ne_comb_b, &m->on_w, &m->on_b, &m->h0_w1, &m->h0_w1t, &m->h0_w2,
                   &m->h0_w2t, &m->h0_l1, &m->h0_l1t, &m->h0_l1b, &m->h0_l2, &m->h0_l2t,
                   &m->h0_l2b, &m->h1_w1, &m->h1_w1t, &m->h1_l1, &m->h1_l1t, &m->h1_l1b,
                   &m->h1_l2, &m->h1_l2t, &m->h1_l2b, &m->ne_spB};
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
        cudaFree(*p[i]);
    if (m->layers)
        for (int l = 0; l < m->L; l++) {
            et_dlayer *dl = &m->layers[l];
            cudaFree(dl->ln_w);
            cudaFree(dl->ln_b);
            cudaFree(dl->qkv_w);
            cudaFree(dl->qkv_b);
            cudaFree(dl->o_w);
            cudaFree(dl->o_b);
            cudaFree(dl->vec_w);
            cudaFree(dl->filt_wt);
            cudaFree(dl->filt_b);
            uint16_t *x3[] = {dl->qkv_w3, dl->o_w3, dl->vec_w3, dl->qkv_w3t, dl->o_w3t,
                              dl->vec_w3t};
            for (size_t i = 0; i < sizeof(x3) / sizeof(x3[0]); i++)
                cudaFree(x3[i]);
        }
    free(m->layers);
    cudaFree(m->atomref);
    cudaFree(m->ne_sp);
}

/* ---- create / free ------------------------------------------------------------------------- */
extern "C" int ds4sci_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

static int is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

/* a DS4SCI_CUDA_* switch: if_0 when the variable is "0", if_1 when it is "1", otherwise (unset
   or anything else) dflt */
static int env_switch(const char *name, int if_0, int if_1, int dflt)
{
    const char *v = getenv(name);
    return v && strcmp(v, "0") == 0 ? if_0 : v && strcmp(v, "1") == 0 ? if_1 : dflt;
}

/* gemm_x3 (auto) from this many rows of a GEMM (M: atoms, 3 x atoms for vec_proj): below, the
   128-row tiles leave SMs idle and cuBLAS's small-M kernels win (docs/gpu.md v36) */
#define X3_MIN_ROWS 16384

/* CUDA graph of the step (docs/gpu.md "CUDA graph of a step"), et->graph: 0 off
   (DS4SCI_CUDA_GRAPH=0, the unfused baseline, or a capture that failed); ET_GRAPH_ALL
   (DS4SCI_CUDA_GRAPH=1): every call with the built-in exchange; ET_GRAPH_AUTO (the default):
   the calls with the built-in exchange and at most ET_GRAPH_AUTO_ATOMS owned atoms, where the
   step's ~300 launches and its mid-step read-back cost a visible share of the step (v8) and
   the candidate-bound edge buffers cost little memory. */
#define ET_GRAPH_ALL 1
#define ET_GRAPH_AUTO 2
#define ET_GRAPH_AUTO_ATOMS 20000
/* A new key is captured at once (and the graph updated in place) only after a key that served
   at least this many calls: with lists rebuilt every step or two the normal launches are
   cheaper (their host work overlaps the GPU's; a capture leaves it idle: docs/gpu.md v25) */
#define ET_GRAPH_UPDATE_MIN_CALLS 4

/* Whether this call runs in graph mode (a caller exchange runs host callbacks mid-step). */
static int graph_call(const ds4sci_cuda_et *et, const ds4sci_system *sys, int builtin)
{
    return builtin && (et->graph == ET_GRAPH_ALL ||
                       (et->graph == ET_GRAPH_AUTO && sys->n_local <= ET_GRAPH_AUTO_ATOMS));
}

static int node_chunk_rows(const ds4sci_cuda_et *et, int nl);

/* The checkpoint level of a step with nl owned rows, n rows and ne1 edges (compute_body's rule,
   see there; compute_input asks it with the most edges the candidates can give, to know ahead
   whether level 2 will run); keep_all gets the workspace estimate with every input kept. With
   a caller exchange level 1 also holds the ghost rows of the inputs it recomputes (the stash,
   compute_body). */
static int checkpoint_level(const ds4sci_cuda_et *et, int builtin, int nl, int n, double ne1,
                            double *keep_all)
{
    const int L = et->m.L, F = et->m.F;
    const double nF = (double)(n > 0 ? n : 1) * F, nlF = (double)(nl > 0 ? nl : 1) * F;
    const double ngF = builtin || n <= nl ? 0.0 : (double)(n - nl) * F;
    const double keep_all_bytes =
        4.0 * ((double)(L + 1 + 3 * L + 1 + 5 + 5 + 7) * nF + (double)L * nlF) + 60.0 * ne1;
    auto kept1 = [&](int k) -> bool { return k < L && (k == L - 1 || k % 2 == 0); };
    int nkx1 = 0, nkv1 = 0, nxst1 = 0;
    for (int k = 0; k <= L; k++)
        if (kept1(k)) {
            nkx1++;
            if (k > 0)
                nkv1++;
        }
    for (int r = 0; r < L; r++)
        nxst1 += r + 1 < L && !kept1(r + 1) ? 0 : 1;
    const double level1_bytes =
        4.0 * ((double)(nkx1 + 1 + 3 * (nkv1 + 1) + 1 + 5 + 5 + 7) * nF + (double)nxst1 * nlF +
               13.0 * (double)node_chunk_rows(et, nl) * (double)F +
               4.0 * (double)(L - nkx1) * ngF) +
        60.0 * ne1;
    const double mem = (double)et->mem_at_create;
    if (keep_all)
        *keep_all = keep_all_bytes;
    /* level 1 from half of the memory with the built-in exchange; with a caller's only where
       keeping every input would not fit (until 2026-11-30 a caller exchange always kept them:
       runs that fitted then keep level 0's speed) */
    const double lim1 = builtin ? 0.5 : 0.96;
    return L < 3                            ? 0
           : et->checkpoint >= 0            ? et->checkpoint
           : level1_bytes > 0.96 * mem      ? 2
           : keep_all_bytes > lim1 * mem    ? 1
                                            : 0;
}

/* Whether this call folds the periodic images into their owned atoms (et->images: built-in
   exchange with ghosts): k_graph_fill names each image sender by its owned atom, so past the
   graph build the step has no ghost rows (n = n_local for every feature buffer and kernel),
   no ghost gathers between layers and no folds; the forces and atom virials come out folded
   (ds4sci.h: only the sums over copies are defined), the ghost rows zero. */
static int images_folded(const ds4sci_cuda_et *et, const ds4sci_system *sys, int builtin)
{
    return builtin && et->images && sys->n_ghost > 0;
}

extern "C" ds4sci_status ds4sci_cuda_et_create(const et_desc *d, int32_t device_id,
                                               ds4sci_cuda_et **out, char *err, size_t err_len)
{
    if (!out)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_create: out is NULL");
    *out = NULL;
    if (!d)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_create: desc is NULL");
    const int F = d->F, CPL = edge_cpl(F);
    if (!(F == 16 || F == 32 || F == 64 || F == 128 || F == 256) || d->D * d->H != F ||
        d->D % CPL != 0 || !is_pow2(d->D / CPL) || d->D / CPL > 32)
        return fail(err, err_len, DS4SCI_ERR_UNSUPPORTED,
                    "hidden_channels %d with %d heads: expected hidden_channels "
                    "16, 32, 64, 128 or 256 and a head size that is a power-of-two multiple of "
                    "max(1, hidden_channels/32)",
                    F, d->H);
    if (d->K < 1 || d->K > ET_MAX_K)
        return fail(err, err_len, DS4SCI_ERR_UNSUPPORTED,
                    "num_rbf %d: expected 1 to %d", d->K, ET_MAX_K);
    int ndev = ds4sci_cuda_device_count();
    if (ndev == 0)
        return fail(err, err_len, DS4SCI_ERR_DEVICE, "no usable CUDA device");
    if (device_id < 0 || device_id >= ndev)
        return fail(err, err_len, DS4SCI_ERR_DEVICE,
                    "device_id %d: expected 0 to %d", device_id, ndev - 1);
    CU(cudaSetDevice(device_id), "cudaSetDevice");
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, device_id), "cudaGetDeviceProperties");
    const size_t smem_need = et_edge_smem(F, d->K, 4, 1); /* the receivers' kernel */
    if (smem_need > prop.sharedMemPerBlockOptin)
        return fail(err, err_len, DS4SCI_ERR_UNSUPPORTED,
                    "filters of hidden_channels %d, num_rbf %d need %zu bytes of "
                    "shared memory per block, the device allows %zu",
                    F, d->K, smem_need, (size_t)prop.sharedMemPerBlockOptin);

    ds4sci_cuda_et *et = (ds4sci_cuda_et *)calloc(1, sizeof(*et));
    if (!et)
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    et->device = device_id;
    et->num_sms = prop.multiProcessorCount;
    ds4sci_status st = DS4SCI_OK;
    cudaError_t e = cudaStreamCreateWithFlags(&et->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        st = cu_fail(e, "cudaStreamCreate", err, err_len);
        goto out;
    }
    {
        cublasStatus_t b = cublasCreate(&et->blas);
        if (b == CUBLAS_STATUS_SUCCESS)
            b = cublasSetStream(et->blas, et->stream);
        /* fp32 SGEMMs (no TF32) by default; DS4SCI_CUDA_TF32=1: the node GEMMs on TF32 tensor
           cores, a fast mode (docs/gpu.md v19: 1M atoms -8.4%; forces 1.6e-3 relative RMS
           against float64, fp32 1.2e-6). cuBLAS's fp32 emulation by BF16x9 was tried in v19:
           no change in speed or results on the H200 (cuBLAS 13 does not emulate there) */
        if (b == CUBLAS_STATUS_SUCCESS)
            b = cublasSetMathMode(et->blas, env_switch("DS4SCI_CUDA_TF32", 0, 1, 0)
                                                ? CUBLAS_TF32_TENSOR_OP_MATH
                                                : CUBLAS_DEFAULT_MATH);
        if (b != CUBLAS_STATUS_SUCCESS) {
            st = blas_fail(b, "cublasCreate", err, err_len);
            goto out;
        }
    }
    /* the side stream and its cuBLAS handle (67 MB of device memory on the H200, v34) are made
       by the first call that uses them (side_init) */
    et->side = env_switch("DS4SCI_CUDA_SIDE", 0, 1, 1);
    /* the neighbour embedding by species (ne_species.cu, docs/gpu.md v37) */
    et->ne_species = env_switch("DS4SCI_CUDA_NE_SPECIES", 0, 1, 1);
    e = cudaMalloc((void **)&et->d_check, sizeof(int));
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&et->d_work, ET_WORK_SLOTS(d->L) * sizeof(int));
    if (e == cudaSuccess)
        e = cudaMallocHost((void **)&et->h_scalars, 64);
    if (e == cudaSuccess)
        e = cudaMallocHost((void **)&et->h_red, 16 * sizeof(double));
    if (e != cudaSuccess) {
        st = cu_fail(e, "cudaMallocHost", err, err_len);
        goto out;
    }
    {
        /* the node GEMMs on the bf16 tensor cores, each value in three pieces (gemm_x3.cu:
           docs/gpu.md v36, 3x more exact than SGEMM at its speed; the F = 128 check combos'
           forces 1.94e-6 -> 1.49e-6 against float64) from X3_MIN_ROWS rows,
           DS4SCI_CUDA_GEMM=x3 at every size, =sgemm never; never with DS4SCI_CUDA_TF32=1
           (cuBLAS's TF32 mode asked for) */
        const char *gm = getenv("DS4SCI_CUDA_GEMM");
        et->gemm_x3 = env_switch("DS4SCI_CUDA_TF32", 0, 1, 0)  ? 0
                      : gm && strcmp(gm, "sgemm") == 0 ? 0
                      : gm && strcmp(gm, "x3") == 0    ? 2
                                                       : 1;
        et->x3_min = X3_MIN_ROWS;
        if (et->gemm_x3) {
            e = et_gemm_x3_init();
            if (e != cudaSuccess) {
                st = cu_fail(e, "gemm_x3 init", err, err_len);
                goto out;
            }
        }
    }
    st = up_weights(et, d, err, err_len);
    if (st != DS4SCI_OK)
        goto out;
    {
        const char *eu = getenv("DS4SCI_CUDA_EDGE");
        et->edge_unfused = eu && strcmp(eu, "unfused") == 0;
        /* checkpointed layer inputs: auto by default (level 1 only when keeping all of them
           would take more than half of the memory free now: 1M atoms of the reference model
           keep all, -7% time for 4.6 KB/atom, docs/gpu.md v10; level 2 only when level 1 would
           not fit), DS4SCI_CUDA_CHECKPOINT=1|2 forces a level, =0 never */
        const char *ck = getenv("DS4SCI_CUDA_CHECKPOINT");
        et->checkpoint = ck && ck[0] >= '0' && ck[0] <= '2' && !ck[1] ? ck[0] - '0' : -1;
        /* the backward's repeated node work kept from the forward where memory allows (auto),
           DS4SCI_CUDA_KEEP=0|1|2 forces a level */
        const char *kp = getenv("DS4SCI_CUDA_KEEP");
        et->keep = kp && kp[0] >= '0' && kp[0] <= '2' && !kp[1] ? kp[0] - '0' : -1;
        et->keep_cap = 2;
        const char *mc = getenv("DS4SCI_CUDA_MEM_CAP");
        et->mem_cap = mc ? (size_t)strtoull(mc, NULL, 10) : 0;
        size_t fr = 0, tot = 0;
        et->mem_at_create = cudaMemGetInfo(&fr, &tot) == cudaSuccess ? fr : 0;
        /* merged backward (edge_bwd.cu), default on since measured on the H200 (docs/gpu.md
           v7: same errors, 1M atoms 3.26 vs 3.44 s/step); DS4SCI_CUDA_MERGED=0: separate
           receiver and sender passes */
        /* node work over chunks of owned rows: o and P (and the head's scratch) sized by one
           chunk instead of all atoms (docs/gpu.md v9); DS4SCI_CUDA_NODE_CHUNK=<rows> */
        const char *nc = getenv("DS4SCI_CUDA_NODE_CHUNK");
        et->node_chunk = nc && atoi(nc) > 0 ? atoi(nc) : 262144; /* v9: 1.7 GB, no cost */
        et->merged = env_switch("DS4SCI_CUDA_MERGED", 0, 1, 1);
        /* built-in exchange: periodic images folded into their owned atoms after the graph
           build (images_folded; default), DS4SCI_CUDA_IMAGES=rows: ghost rows as before */
        const char *im = getenv("DS4SCI_CUDA_IMAGES");
        et->images = !(im && strcmp(im, "rows") == 0);
        /* SiLU's exponential by ex2.approx: default on, see edge_common.cuh */
        et->fastexp = env_switch("DS4SCI_CUDA_FASTEXP", 0, 1, 1);
        /* merged backward: the radial filter backward once per pair of reverse edges (edge_bwd.cu
           bwd_recv_row); DS4SCI_CUDA_PAIR=0: once per edge, as before */
        et->pair = env_switch("DS4SCI_CUDA_PAIR", 0, 1, 1);
        /* the filters' k loops over each chunk's window of nonzero basis values (edge_common.cuh
           stage_rbf_of: the same bits, docs/gpu.md v32); DS4SCI_CUDA_KWIN=0: over all K. The
           basis values below e^-ET_RBF_FLUSH of the basis's peak are 0 in the fused passes
           (e^-20 ~ 2^-29: below fp32 round-off; the golden errors and the benchmark energies
           change at round-off level only, docs/gpu.md v32, v33): ~11 of 32 terms per edge
           (computed) instead of ~21. DS4SCI_CUDA_RBF_FLUSH=x: at e^-x instead, =0: none */
        et->kwin = env_switch("DS4SCI_CUDA_KWIN", 0, 1, 1);
        /* each row's two sender groups sorted by r in the graph build (graph.cu sort_by_r): a
           chunk's 4 edges then have close distances and share a narrower basis window;
           DS4SCI_CUDA_RSORT=0: the candidates' order */
        et->rsort = env_switch("DS4SCI_CUDA_RSORT", 0, 1, 1);
        const char *fl = getenv("DS4SCI_CUDA_RBF_FLUSH");
        et->rbf_flush = !fl ? ET_RBF_FLUSH : atof(fl) > 0 ? (float)atof(fl) : INFINITY;
        /* the forward edge pass's filters on the float64 tensor cores where edge_fwd_tc.cu
           takes the layer (F = 128, K <= 32, no row split): the default since docs/gpu.md v27
           (more exact, 1-2.5% faster at 97k-1M atoms); DS4SCI_CUDA_TC=0: the FFMA forward */
        et->tc = env_switch("DS4SCI_CUDA_TC", 0, 1, 1);
        /* the edge passes take their items (rows; (part, row) when split) from a counter
           (et_edge_common.work): docs/gpu.md v29 for the row-split passes (1k-10.6k atoms -5
           to -8%), v30 for S = 1 too (20k-97k atoms -4 to -5%); DS4SCI_CUDA_DYN=1: only the
           row-split passes (v29), =0: round-robin everywhere */
        et->dyn = env_switch("DS4SCI_CUDA_DYN", 0, 1, 2);
        /* the receiver passes' rows in a Morton order of their cells (et_edge_common.order;
           docs/gpu.md v30 item 5: with dynamic rows the window in flight shares L2 better
           when it is compact); DS4SCI_CUDA_ORDER=0 never, =1 always, default from
           ET_ORDER_MIN owned rows outside graph mode and below checkpoint level 2 */
        et->order = env_switch("DS4SCI_CUDA_ORDER", 0, 1, -1);
        /* forward caller exchange as packed floats, default on since measured (docs/gpu.md
           v7: the same bits arrive; 2 GPUs 1M Si atoms 0.673 vs 0.780 s/step);
           DS4SCI_CUDA_XCH_F32=0: rows of doubles */
        et->xch_f32 = env_switch("DS4SCI_CUDA_XCH_F32", 0, 1, 1);
        /* the caller's wire plan for the other processes' rows (docs/gpu.md v18, 1M Si atoms
           per GPU on 2 GPUs: device buffers by CUDA IPC 0.437 s/step, the callbacks 0.510, the
           plan on pinned host buffers 0.556): by default (-1) where the plan takes device
           buffers, else the callbacks; DS4SCI_CUDA_WIRE=1: the plan always, =0: never */
        /* the candidate list kept on the GPU between neighbour builds (auto: for callers
           that promise it, ds4sci_ctx_same_neighbors) and its checks (indices, overlapping
           atoms) in the graph kernels instead of api.c's host loop over every candidate:
           docs/gpu.md v19, LAMMPS 1M Si atoms on one H200, both on 0.434 -> 0.395 s/step
           (same thermo); =0 switches either off, DS4SCI_CUDA_RESIDENT_NBR=1 keeps the list
           for every caller */
        et->resident_nbr = env_switch("DS4SCI_CUDA_RESIDENT_NBR", 0, 1, -1);
        et->device_checks = env_switch("DS4SCI_CUDA_DEVICE_CHECKS", 0, 1, 1);
        et->wire = env_switch("DS4SCI_CUDA_WIRE", 0, 1, -1);
        const char *sx = getenv("DS4SCI_CUDA_SPLIT"); /* 1, 2, 4, 8; anything else: per pass */
        et->split_force = sx && (!strcmp(sx, "1") || !strcmp(sx, "2") || !strcmp(sx, "4") ||
                                 !strcmp(sx, "8")) ? atoi(sx) : 0;
        /* CUDA graph of the step: by default for small systems (graph_call), =1 always, =0
           never; not with the unfused baseline (cuSPARSE scratch allocated on first use). A
           graph-mode call records no profile stage events (events inside a capture time
           nothing): the profile's stage means are over the other calls */
        et->graph = et->edge_unfused
                        ? 0
                        : env_switch("DS4SCI_CUDA_GRAPH", 0, ET_GRAPH_ALL, ET_GRAPH_AUTO);
        et->graph_update = env_switch("DS4SCI_CUDA_GRAPH_UPDATE", 0, 1, 1);
        const char *pp = getenv("DS4SCI_CUDA_PROFILE");
        if (pp && *pp) {
            et->profile_path = strdup(pp);
            for (int i = 0; i < ET_MAX_EVENTS && et->profile_path; i++)
                if (cudaEventCreate(&et->ev[i]) != cudaSuccess) {
                    st = fail(err, err_len, DS4SCI_ERR_DEVICE, "cuda: cudaEventCreate failed");
                    goto out;
                }
        }
    }
out:
    if (st != DS4SCI_OK) {
        ds4sci_cuda_et_free(et);
        return st;
    }
    *out = et;
    return DS4SCI_OK;
}

static const char *const stage_names[ET_NSTAGES] = {
    "input+graph", "embedding", "node-fwd", "edge-fwd", "exchange", "head",
    "node-bwd", "edge-bwd-recv", "edge-bwd-send", "forces", "output"};

/* The side stream's objects (side_init), whichever were made; the fields cleared. */
static void side_free(ds4sci_cuda_et *et)
{
    if (et->blas2)
        cublasDestroy(et->blas2);
    if (et->ev_fork)
        cudaEventDestroy(et->ev_fork);
    if (et->ev_join)
        cudaEventDestroy(et->ev_join);
    if (et->stream2)
        cudaStreamDestroy(et->stream2);
    et->blas2 = NULL;
    et->ev_fork = et->ev_join = NULL;
    et->stream2 = NULL;
}

extern "C" void ds4sci_cuda_et_free(ds4sci_cuda_et *et)
{
    if (!et)
        return;
    cudaSetDevice(et->device);
    if (et->profile_path) {
        FILE *f = fopen(et->profile_path, "a");
        if (f) {
            fprintf(f, "calls %ld\n", et->profile_calls);
            for (int s = 0; s < ET_NSTAGES; s++)
                fprintf(f, "stage %s %.4f\n", stage_names[s],
                        et->profile_calls ? et->stage_ms[s] / et->profile_calls : 0.0);
            if (et->xch_calls) /* caller exchange: where its host time goes, ms per step */
                fprintf(f, "exchange_host calls/step %.1f d2h %.4f host_loops %.4f callback %.4f "
                           "h2d %.4f\n",
                        (double)et->xch_calls / (et->profile_calls ? et->profile_calls : 1),
                        et->xch_ms[0] / et->profile_calls, et->xch_ms[1] / et->profile_calls,
                        et->xch_ms[2] / et->profile_calls, et->xch_ms[3] / et->profile_calls);
            fprintf(f, "workspace_bytes %zu\n", et->dev_bytes);
            fprintf(f, "peak_device_used_bytes %zu\n", et->peak_used);
            fprintf(f, "atoms %lld edges %lld rows %lld\n", et->last_nt, et->last_ne,
                    et->last_n);
            /* graph mode: on (DS4SCI_CUDA_GRAPH=1), auto (the default: small systems), off
               (=0, or after a failed capture); the calls above are the calls with stage events,
               i.e. not in graph mode */
            fprintf(f, "checkpoint %d keep %d\n", et->last_ck, et->last_keep);
            fprintf(f, "cuda_graph %s captures %ld launches %ld updates %ld\n",
                    et->graph == ET_GRAPH_ALL ? "on" : et->graph ? "auto" : "off",
                    et->graph_captures, et->graph_replays, et->graph_updates);
            /* the neighbour embedding by species: successful calls that took it, its B made */
            fprintf(f, "ne_species calls %ld builds %ld\n", et->ne_sp_calls, et->ne_sp_builds);
            fclose(f);
        }
        for (int i = 0; i < ET_MAX_EVENTS; i++)
            if (et->ev[i])
                cudaEventDestroy(et->ev[i]);
        free(et->profile_path);
    }
    for (int i = 0; i < B_COUNT; i++)
        cudaFree(et->buf[i].p);
    if (et->edge_unfused)
        et_unfused_release();
    free_weights(&et->m);
    if (et->gexec)
        cudaGraphExecDestroy(et->gexec);
    if (et->blas)
        cublasDestroy(et->blas);
    cudaFree(et->blas_ws);
    side_free(et);
    if (et->stream)
        cudaStreamDestroy(et->stream);
    cudaFreeHost(et->h_scalars);
    cudaFree(et->d_check);
    cudaFree(et->d_work);
    cudaFreeHost(et->h_red);
    cudaFreeHost(et->h_xch);
    free(et->h_remote);
    free(et->h_wire);
    free(et->h_seen);
    free(et->h_map);
    free(et);
}

extern "C" size_t ds4sci_cuda_et_device_bytes(const ds4sci_cuda_et *et)
{
    return et ? et->dev_bytes : 0;
}

/* ---- workspace ----------------------------------------------------------------------------- */
static const char *const buf_names[] = {
    "positions", "atomic numbers", "neighbour offsets", "ghost owners",
    "row counts", "row offsets", "edge senders", "edge receivers", "edge geometry",
    "transpose offsets", "transpose edges", "transpose counts", "cub scratch",
    "layer inputs x", "layer inputs vec", "X per layer", "LayerNorm output, dE/dX, dE/dh",
    "q/k/v", "vec_proj output (one chunk), head scratch, neighbour indices", "o (one chunk)",
    "dE/dx", "dE/dvec",
    "dE/dvec", "dE/dqkv, sort scratch, embedding concat, V", "dE/dw", "atom energies", "forces",
    "atom virials", "partial sums", "row-split partial sums", "exchange staging",
    "reverse edges", "uncovered sender offsets", "uncovered sender edges",
    "partial ghost owners and remote ghost rows", "ghost fold order",
    "kept q/k/v, P and o per layer", "wire plan rows and their reverse order",
    "neighbour indices (resident)", "uncovered sender edges' receivers",
    "ghost rows of the recomputed layer inputs", "receiver row order"};
static_assert(sizeof(buf_names) / sizeof(buf_names[0]) == B_COUNT, "one name per buffer");

/* Give buffer i back (its next ensure() allocates it again). */
static void release(ds4sci_cuda_et *et, int i)
{
    et_buf *b = &et->buf[i];
    cudaFree(b->p);
    et->dev_bytes -= b->cap;
    b->p = NULL;
    b->cap = 0;
}

/* Make buf[i] hold at least `bytes`; never shrinks, keeps no contents. keep NULL: a smaller
   allocation is freed; else it is handed to the caller in *keep (NULL when there was none),
   who frees it later: for a buffer that other processes may still have mapped (exchange_wire;
   CUDA: freeing an allocation before its importers close it is undefined), and the new
   allocation then never lands at the old address. */
static ds4sci_status ensure_keep(ds4sci_cuda_et *et, int i, size_t bytes, void **keep, char *err,
                                 size_t err_len)
{
    et_buf *b = &et->buf[i];
    if (keep)
        *keep = NULL;
    if (bytes <= b->cap)
        return DS4SCI_OK;
    /* a captured graph bakes the buffers in: fail the capture rather than free memory it has
       recorded (compute() captures a new key at once, before knowing whether a buffer grows:
       then the call runs the normal launches, which grow it; with an unchanged key nothing
       grows, and a growth is a broken invariant that turns graph mode off) */
    if (et->capturing) {
        et->capture_grew = 1;
        return fail(err, err_len, DS4SCI_ERR_DEVICE,
                    "cuda graph: %s would grow during a capture", buf_names[i]);
    }
    /* the first allocation is exact; a buffer that has to grow gets 25% headroom */
    size_t want = b->cap > 0 ? bytes + bytes / 4 : bytes;
    if (keep)
        *keep = b->p;
    else
        cudaFree(b->p);
    et->dev_bytes -= b->cap;
    b->p = NULL;
    b->cap = 0;
    /* (the test cap: as if the device had no more) */
    const auto capped = [&](size_t w) { return et->mem_cap && et->dev_bytes + w > et->mem_cap; };
    cudaError_t e = capped(want) ? cudaErrorMemoryAllocation : cudaMalloc(&b->p, want);
    if (e != cudaSuccess && want > bytes) {
        cudaGetLastError();
        want = bytes;
        e = capped(want) ? cudaErrorMemoryAllocation : cudaMalloc(&b->p, want);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        b->p = NULL;
        return fail(err, err_len, DS4SCI_ERR_DEVICE_NOMEM,
                    "out of GPU memory: cudaMalloc of %zu bytes (%s) failed with "
                    "%zu bytes already held by this context, %zu of %zu bytes free on the "
                    "device%s",
                    bytes, buf_names[i], et->dev_bytes, fr, tot,
                    et->mem_cap ? " (DS4SCI_CUDA_MEM_CAP)" : "");
    }
    b->cap = want;
    et->dev_bytes += want;
    return DS4SCI_OK;
}

static ds4sci_status ensure(ds4sci_cuda_et *et, int i, size_t bytes, char *err, size_t err_len)
{
    return ensure_keep(et, i, bytes, NULL, err, err_len);
}

#define BUF(T, i) ((T *)et->buf[i].p)

/* ---- profile marks ------------------------------------------------------------------------- */
static void mark(ds4sci_cuda_et *et, int stage)
{
    if (!et->profile_path || !et->ev[0] || et->n_ev >= ET_MAX_EVENTS)
        return; /* (no events, or a graph-mode call: n_ev = ET_MAX_EVENTS) */
    et->ev_stage[et->n_ev] = stage;
    cudaEventRecord(et->ev[et->n_ev++], et->stream);
}

/* ---- GEMMs (row-major views; fp32, no TF32) ---------------------------------------------- */
/* The weight's gemm_x3 pieces where this GEMM (M rows) is to take them, else NULL (cuBLAS). */
static const uint16_t *x3w(const ds4sci_cuda_et *et, const uint16_t *w3, int M)
{
    return et->gemm_x3 == 2 || (et->gemm_x3 == 1 && M >= et->x3_min) ? w3 : NULL;
}

/* gemm_x3 on h's stream where w3 is given and the shape is one it takes (beta 0 or 1; bias
   [N] added to every row, beta 0 only) */
static int x3_gemm(cublasHandle_t h, int M, int N, int K, const float *A, const uint16_t *w3,
                   float beta, float *C, cublasStatus_t *st, const float *bias = NULL)
{
    if (!w3 || (beta != 0.f && beta != 1.f) || !et_gemm_x3_ok(M, N, K, A, C))
        return 0;
    cudaStream_t s = NULL;
    *st = cublasGetStream(h, &s);
    if (*st == CUBLAS_STATUS_SUCCESS &&
        et_gemm_x3(s, M, N, K, A, w3, beta, bias, C) != cudaSuccess)
        *st = CUBLAS_STATUS_EXECUTION_FAILED;
    return 1;
}

/* C[M][N] = A[M][K] W^T + beta C, W [N][K] row-major; w3: W's gemm_x3 pieces (x3w) or NULL;
   bias [N] (added to every row) only where gemm_x3 takes the GEMM (the caller checks with
   et_gemm_x3_ok): cuBLAS has no bias */
static cublasStatus_t gemm_awt(cublasHandle_t h, int M, int N, int K, const float *A,
                               const float *W, float beta, float *C,
                               const uint16_t *w3 = NULL, const float *bias = NULL)
{
    if (M <= 0)
        return CUBLAS_STATUS_SUCCESS;
    cublasStatus_t st;
    if (x3_gemm(h, M, N, K, A, w3, beta, C, &st, bias))
        return st;
    if (bias)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const float one = 1.f;
    return cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, K, A, K, &beta, C, N);
}

/* C[M][N] = A[M][K] B + beta C, B [K][N] row-major with leading dimension ldb; w3: B^T's
   gemm_x3 pieces (x3w; made for ldb = N) or NULL */
static cublasStatus_t gemm_ab(cublasHandle_t h, int M, int N, int K, const float *A,
                              const float *B, int ldb, float beta, float *C,
                              const uint16_t *w3 = NULL)
{
    if (M <= 0)
        return CUBLAS_STATUS_SUCCESS;
    cublasStatus_t st;
    if (ldb == N && x3_gemm(h, M, N, K, A, w3, beta, C, &st))
        return st;
    const float one = 1.f;
    return cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B, ldb, A, K, &beta, C, N);
}

#define BL(call, what)                                                                             \
    do {                                                                                           \
        cublasStatus_t b_ = (call);                                                                \
        if (b_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return blas_fail(b_, what, err, err_len);                                              \
    } while (0)

/* ---- head ---------------------------------------------------------------------------------- */
/* The head's intermediates, [nl][width] each (width in units of F, Fh = F/2). */
typedef struct head_ws {
    float *cat0, *u0, *w0, *y1p0, *y1a0, *y20, *cat1, *v1, *u1, *y1p1; /* 2, 3, 1.5, 1, 1, 1, 1,
                                                                           1.5, 1.5, 0.5 */
    float *g1, *gcat1, *gu1, *gv1, *gy20, *gw0, *gy10, *gcat0, *gu0;   /* 0.5, 1, 1.5, 1.5, 1,
                                                                           1.5, 1, 2, 3 */
} head_ws;

/*
 * out_norm + EquivariantScalar head forward and backward over the nl owned atoms (head.cu has
 * the math per step): batched SGEMMs, weights M [out][in] as uploaded (y = x M^T forward,
 * g_x = g_y M backward), elementwise kernels between them. Writes atom_e [nl] (fp64), gx
 * [nl][F] and gvec [nl][3][F] (owned rows only).
 */
static ds4sci_status head(ds4sci_cuda_et *et, int nl, const int *z, const float *x,
                          const float *vec, const head_ws *w, double *atom_e, float *gx,
                          float *gvec, char *err, size_t err_len)
{
    const et_dmodel *m = &et->m;
    const int F = m->F, Fh = F / 2, act = m->act;
    cudaStream_t s = et->stream;
    cublasHandle_t h = et->blas;
    if (nl <= 0)
        return DS4SCI_OK;
    /* block 0 (F -> F/2, scalar activation) */
    BL(gemm_awt(h, 3 * nl, F, F, vec, m->h0_w1, 0.f, w->u0), "head vec1_proj");
    BL(gemm_awt(h, 3 * nl, Fh, F, vec, m->h0_w2, 0.f, w->w0), "head vec2_proj");
    CU(et_head_norm_in(s, nl, F, x, m->on_w, m->on_b, w->cat0), "head out_norm");
    CU(et_head_vnorm(s, nl, F, w->u0, w->cat0 + F, 2 * F, m->head_eps2), "head norm");
    BL(gemm_awt(h, nl, F, 2 * F, w->cat0, m->h0_l1, 0.f, w->y1p0), "head update_net 0");
    CU(et_head_bias_act(s, nl, F, act, w->y1p0, m->h0_l1b, w->y1a0), "head activation");
    BL(gemm_awt(h, nl, F, F, w->y1a0, m->h0_l2, 0.f, w->y20), "head update_net 2");
    CU(et_head_gate0(s, nl, Fh, act, w->y20, m->h0_l2b, w->w0, w->cat1, w->v1), "head gate");
    /* block 1 (F/2 -> 1, no scalar activation; only the scalar output matters) */
    BL(gemm_awt(h, 3 * nl, Fh, Fh, w->v1, m->h1_w1, 0.f, w->u1), "head block 1 vec1_proj");
    CU(et_head_vnorm(s, nl, Fh, w->u1, w->cat1 + Fh, F, m->head_eps2), "head block 1 norm");
    BL(gemm_awt(h, nl, Fh, F, w->cat1, m->h1_l1, 0.f, w->y1p1), "head block 1 update_net 0");
    CU(et_head_energy(s, nl, Fh, act, w->y1p1, m->h1_l1b, m->h1_l2, m->h1_l2b, m->std_scale,
                      m->atomref, z, atom_e, w->g1), "head energy");
    /* backward, g_y = (std, 0) */
    BL(gemm_ab(h, nl, F, Fh, w->g1, m->h1_l1, F, 0.f, w->gcat1), "head block 1 backward");
    CU(et_head_vnorm_bwd(s, nl, Fh, w->u1, w->cat1 + Fh, F, w->gcat1 + Fh, F, w->gu1),
       "head block 1 norm backward");
    BL(gemm_ab(h, 3 * nl, Fh, Fh, w->gu1, m->h1_w1, Fh, 0.f, w->gv1), "head block 1 vec backward");
    CU(et_head_gate0_bwd(s, nl, Fh, act, w->y20, w->gcat1, w->gv1, w->w0, w->gy20, w->gw0),
       "head gate backward");
    BL(gemm_ab(h, nl, F, F, w->gy20, m->h0_l2, F, 0.f, w->gy10), "head update_net 2 backward");
    CU(et_head_dact(s, nl, F, act, w->y1p0, w->gy10), "head activation backward");
    BL(gemm_ab(h, nl, 2 * F, F, w->gy10, m->h0_l1, 2 * F, 0.f, w->gcat0),
       "head update_net 0 backward");
    CU(et_head_vnorm_bwd(s, nl, F, w->u0, w->cat0 + F, 2 * F, w->gcat0 + F, 2 * F, w->gu0),
       "head norm backward");
    BL(gemm_ab(h, 3 * nl, F, F, w->gu0, m->h0_w1, F, 0.f, gvec), "head vec1_proj backward");
    BL(gemm_ab(h, 3 * nl, F, Fh, w->gw0, m->h0_w2, F, 1.f, gvec), "head vec2_proj backward");
    CU(et_head_norm_out(s, nl, F, x, m->on_w, w->gcat0, gx), "head out_norm backward");
    return DS4SCI_OK;
}

/* ---- exchange ------------------------------------------------------------------------------ */
/* Host copies of the caller exchange: rows of w doubles, threaded when OpenMP is on (the rows
   are distinct: api.c rejects repeated send rows). dst[rows[k]] = src[k] (scatter), dst[k] =
   src[rows[k]] (gather), or zero (src NULL) the listed rows, or with rows NULL rows 0 .. nr-1. */
enum { ROWS_SCATTER, ROWS_GATHER, ROWS_ZERO };
static void host_rows(int mode, const int32_t *rows, int nr, int w, const double *src, double *dst)
{
    const size_t bytes = (size_t)w * sizeof(double);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if ((size_t)nr * w > (1u << 18))
#endif
    for (int k = 0; k < nr; k++) {
        const size_t r = rows ? (size_t)rows[k] : (size_t)k;
        if (mode == ROWS_SCATTER)
            memcpy(dst + r * w, src + (size_t)k * w, bytes);
        else if (mode == ROWS_GATHER)
            memcpy(dst + (size_t)k * w, src + r * w, bytes);
        else
            memset(dst + r * w, 0, bytes);
    }
}

/* Host wall clock in ms (profile only). */
static double wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

typedef struct xch_ctx {
    const ds4sci_exchange *ex;
    const int *owner; /* device ghost owners when built-in, else NULL */
    int nl, ng, F;
    const int *send_dev; /* the caller's send_rows hint on the device, NULL: none */
    /* partial owners (caller exchange): on the device the owners [ng] (-1: another process's)
       and the remote ghost rows [n_remote] (nl + g), which alone travel through the host */
    const int *part_owner, *remote_dev;
    const int32_t *remote; /* host copy of remote_dev */
    int n_remote;
    /* the ghosts sorted by owner (key: owner, nl for -1; ghost: g), for the fixed-order fold of
       the periodic images (built-in or partial owners), NULL without either */
    const int *fold_key, *fold_ghost;
    /* the caller's wire plan (et->wire): on the device the send entries [wire_ns] and the
       received rows [wire_nr], concatenated in plan order, and the send entries sorted by row
       (wire_key: rows, wire_entry: entry indices) for the reverse's adds; NULL: callbacks */
    const ds4sci_wire_plan *plan;
    const int *wire_send, *wire_recv, *wire_key, *wire_entry;
    int wire_ns, wire_nr;
} xch_ctx;

/* The caller's wire plan is used (et->wire: 1 always, 0 never, -1 where it takes device
   buffers), only with a caller exchange that has one. */
static int use_wire(const ds4sci_cuda_et *et, int builtin, const ds4sci_exchange *ex)
{
    if (builtin || !ex || !ex->plan)
        return 0;
    return et->wire > 0 || (et->wire < 0 && ex->plan->device_buffers != 0);
}

/*
 * The other processes' rows through the caller's wire plan (ds4sci.h; et->wire): the rows of
 * this process packed on the GPU in plan order (forward: the send entries; reverse: the remote
 * ghosts' gradients) as floats into B_XCH, the caller's move(), then forward the remote ghost
 * rows set and the periodic images gathered, or reverse (images folded first) the returned
 * rows added into the owned rows in plan order (et_add_sorted) and the ghost rows zeroed, as
 * the callback paths leave them.
 *   Host buffers (plan->device_buffers 0): one copy of the packed rows to pinned memory, move()
 * on host pointers, one copy back.
 *   Device buffers (1): move() gets B_XCH itself, out = dout at the start of the allocation
 * (so a peer maps it by its IPC handle with offset 0: dout must stay at the buffer's base) and
 * in = din right after it, and reads / writes them on the GPU (CUDA IPC between the processes
 * of a node, ds4sci_device_copy). The buffer must not change during a move: it is sized here,
 * before the pack (compute_body does not touch B_XCH otherwise); between moves it may grow, and
 * the caller sees that by comparing the pointer or the IPC handle at every move (the old
 * allocation lives until that move returns, exchange_wire, so the new one has a new address).
 *   Reached only where use_wire(): a plan and no built-in exchange (api.c passes a plan through
 * its partial-owner wrapper), so never in graph mode (graph_call: built-in exchange only): the
 * waits and move() below are host work that a capture could not record.
 * rows: dout [n_out][w] floats, din [n_in][w] floats, w = F or 4F.
 */
static ds4sci_status wire_rows(ds4sci_cuda_et *et, const xch_ctx *xc, int reverse, int dev,
                               float *x, float *vec, char *err, size_t err_len)
{
    cudaStream_t s = et->stream;
    const int nl = xc->nl, ng = xc->ng, F = xc->F;
    const size_t w = vec ? 4 * (size_t)F : (size_t)F; /* floats per row */
    const int n_out = reverse ? xc->wire_nr : xc->wire_ns;
    const int n_in = reverse ? xc->wire_ns : xc->wire_nr;
    const size_t floats = ((size_t)n_out + n_in) * w + 2;
    if (!dev && et->h_xch_cap * 2 < floats) {
        cudaFreeHost(et->h_xch);
        et->h_xch = NULL;
        et->h_xch_cap = 0;
        CU(cudaMallocHost((void **)&et->h_xch, (floats + 1) / 2 * sizeof(double)),
           "cudaMallocHost (exchange)");
        et->h_xch_cap = (floats + 1) / 2;
    }
    float *dout = (float *)et->buf[B_XCH].p, *din = dout + (size_t)n_out * w;
    float *hout = dev ? NULL : (float *)et->h_xch, *hin = dev ? NULL : hout + (size_t)n_out * w;
    /* profile: host wall time as the callback path counts it (xch_ms: pack, copy out and wait;
       -; move(); copy in, unpack and, with host buffers, wait), ms per step */
    const int prof = et->profile_path != NULL;
    double tm = prof ? wall_ms() : 0.0;
    auto lap = [&](int k) {
        if (prof) {
            const double now = wall_ms();
            et->xch_ms[k] += now - tm;
            tm = now;
        }
    };
    if (reverse && xc->part_owner)
        CU(et_ghost_fold(s, nl, ng, F, xc->fold_key, xc->fold_ghost, x, vec),
           "ghost fold (images)");
    CU(et_pack_rows_f32(s, reverse ? xc->wire_recv : xc->wire_send, n_out, F, x, vec, dout),
       "exchange pack (wire plan)");
    if (!dev && n_out > 0)
        CU(cudaMemcpyAsync(hout, dout, (size_t)n_out * w * sizeof(float),
                           cudaMemcpyDeviceToHost, s), "exchange copy");
    /* out complete before move() (ds4sci.h): with device buffers peers read dout from their
       own streams, which this stream's order does not cover */
    CU(cudaStreamSynchronize(s), "exchange sync");
    lap(0);
    const int rc = xc->plan->move(xc->plan->user, dev ? (const void *)dout : hout,
                                  dev ? (void *)din : hin, w * sizeof(float), reverse, dev);
    lap(2);
    if (rc != 0)
        return fail(err, err_len, DS4SCI_ERR_EXCHANGE, "wire plan move %s (%zu floats a row, "
                    "%s buffers) returned %d", reverse ? "reverse" : "forward", w,
                    dev ? "device" : "host", rc);
    if (!dev && n_in > 0)
        CU(cudaMemcpyAsync(din, hin, (size_t)n_in * w * sizeof(float), cudaMemcpyHostToDevice,
                           s), "exchange copy");
    if (!reverse) {
        CU(et_unpack_rows_f32(s, xc->wire_recv, n_in, F, din, x, vec),
           "exchange unpack (wire plan)");
        if (xc->part_owner)
            CU(et_ghost_gather(s, nl, ng, F, xc->part_owner, x, vec), "ghost gather (images)");
    } else {
        CU(et_add_sorted(s, n_in, F, xc->wire_key, xc->wire_entry, din, x, vec),
           "exchange add (wire plan)");
        CU(et_zero_rows(s, nl, ng, F, x), "zero ghost rows");
        if (vec)
            CU(et_zero_rows(s, nl, ng, 3 * F, vec), "zero ghost rows");
    }
    /* host buffers: the pinned buffer is reused by the next exchange, wait until the copy has
       read it. Device buffers: no wait. din was complete when move() returned (ds4sci.h: move
       fills in before it returns; ds4sci_device_copy waits on this stream), and the unpack
       above reads it in stream order, before anything later on this stream. dout is read by
       peers only inside move(), between the caller's barriers, all before move() returned
       here; the next write to dout is the next exchange's pack, queued after this call, and
       that exchange waits for its stream before its move() lets peers read again. Nothing of
       B_XCH reaches the host. So the unpack may overlap the host's next launches. */
    if (!dev)
        CU(cudaStreamSynchronize(s), "exchange sync");
    lap(3); /* (device buffers: the unpack's launch only; its run is in the stage's events) */
    et->xch_calls++;
    return DS4SCI_OK;
}

/* wire_rows with B_XCH sized first. With device buffers a B_XCH that has to grow keeps its
   old allocation until move() has returned: a peer may still have it mapped (opened by its
   IPC handle at an earlier move) and closes it only in this move, when it sees the new handle
   (docs/exchange_plan.md); freeing it before would be undefined (CUDA IPC). */
static ds4sci_status exchange_wire(ds4sci_cuda_et *et, const xch_ctx *xc, int reverse, float *x,
                                   float *vec, char *err, size_t err_len)
{
    if (et->capturing) /* a broken invariant (wire_rows: never in graph mode) */
        return fail(err, err_len, DS4SCI_ERR_DEVICE,
                    "cuda graph: a wire plan exchange during a capture");
    const int dev = xc->plan->device_buffers != 0;
    const size_t w = vec ? 4 * (size_t)xc->F : (size_t)xc->F;
    const size_t floats = ((size_t)xc->wire_ns + xc->wire_nr) * w + 2;
    void *old = NULL;
    ds4sci_status st =
        ensure_keep(et, B_XCH, floats * sizeof(float), dev ? &old : NULL, err, err_len);
    if (st == DS4SCI_OK)
        st = wire_rows(et, xc, reverse, dev, x, vec, err, err_len);
    /* (after a failure too: a failed exchange ends the run, peers included) */
    if (old)
        cudaFree(old);
    return st;
}

/* forward: ghost rows of (x[, vec]) from their owners; reverse: ghost rows added into owners,
   then zeroed. Width F when vec is NULL, else 4F. With partial owners the periodic images are
   gathered / folded on the device and only the remote ghost rows go through the host. */
static ds4sci_status exchange(ds4sci_cuda_et *et, const xch_ctx *xc, int reverse, float *x,
                              float *vec, char *err, size_t err_len)
{
    cudaStream_t s = et->stream;
    const int nl = xc->nl, ng = xc->ng, F = xc->F, n = nl + ng;
    et->call_xch++;
    if (xc->owner) {
        if (!reverse)
            CU(et_ghost_gather(s, nl, ng, F, xc->owner, x, vec), "ghost gather");
        else
            CU(et_ghost_fold(s, nl, ng, F, xc->fold_key, xc->fold_ghost, x, vec), "ghost fold");
        return DS4SCI_OK;
    }
    if (xc->plan)
        return exchange_wire(et, xc, reverse, x, vec, err, err_len);
    /* w doubles per row on the host; with DS4SCI_CUDA_XCH_F32 the forward exchange moves float
       rows, two floats per double (F is even), so the caller copies half the bytes: forward
       only copies rows, bit for bit (ds4sci.h), while reverse adds them */
    /* with the caller's send_rows hint only those owned rows travel, packed: on the device in
       dx[0, nr w) (nr <= nl, clear of the ghost rows at dx + nl w), on the host in the
       staging area after the n rows of hx */
    const int32_t *rows = xc->send_dev ? xc->ex->send_rows : NULL;
    const int nr = rows ? xc->ex->n_send_rows : 0;
    /* partial owners: the remote ghost rows packed on the device at dx + nl w (clear of the
       send rows), on the host after the send rows' staging (hq) */
    const int part = xc->part_owner != NULL, nq = part ? xc->n_remote : 0;
    /* the reverse as floats too where the caller adds floats (reverse_f32; partial owners
       with the hint, the plugin's halo plan): half the bytes, and the device adds the floats
       it would have rounded the doubles to anyway */
    const int pkr = reverse && part && rows && xc->ex->reverse_f32 && et->xch_f32;
    const int pk = (!reverse && et->xch_f32) || pkr;
    const int w = (vec ? 4 * F : F) / (pk ? 2 : 1);
    const size_t need = (size_t)(n > 0 ? n : 1) * w + (size_t)nr * w + (size_t)nq * w;
    ST(ensure(et, B_XCH, need * sizeof(double), err, err_len));
    if (et->h_xch_cap < need) {
        cudaFreeHost(et->h_xch);
        et->h_xch = NULL;
        et->h_xch_cap = 0;
        CU(cudaMallocHost((void **)&et->h_xch, need * sizeof(double)), "cudaMallocHost (exchange)");
        et->h_xch_cap = need;
    }
    double *dx = BUF(double, B_XCH), *hx = et->h_xch, *hp = et->h_xch + (size_t)n * w;
    double *hq = hp + (size_t)nr * w, *dq = dx + (size_t)nl * w;
    const int prof = et->profile_path != NULL;
    double tm = prof ? wall_ms() : 0.0;
    /* profile: add the wall time since the last mark to et->xch_ms[k] */
    auto mark = [&](int k) {
        if (prof) {
            const double now = wall_ms();
            et->xch_ms[k] += now - tm;
            tm = now;
        }
    };
    if (!reverse && rows) {
        if (pk)
            CU(et_pack_rows_f32(s, xc->send_dev, nr, F, x, vec, (float *)dx),
               "exchange pack (send rows)");
        else
            CU(et_pack_rows(s, xc->send_dev, nr, F, x, vec, dx), "exchange pack (send rows)");
        CU(cudaMemcpyAsync(hp, dx, (size_t)nr * w * sizeof(double), cudaMemcpyDeviceToHost, s),
           "exchange copy");
        CU(cudaStreamSynchronize(s), "exchange sync");
        mark(0);
        host_rows(ROWS_SCATTER, rows, nr, w, hp, hx);
        if (part)
            host_rows(ROWS_ZERO, xc->remote, nq, w, NULL, hx);
        else
            host_rows(ROWS_ZERO, NULL, ng, w, NULL, hx + (size_t)nl * w);
    } else if (!reverse) {
        if (pk)
            CU(et_pack_f32(s, 0, nl, F, x, vec, (float *)dx), "exchange pack");
        else
            CU(et_pack(s, 0, nl, F, x, vec, dx), "exchange pack");
        CU(cudaMemcpyAsync(hx, dx, (size_t)nl * w * sizeof(double), cudaMemcpyDeviceToHost, s),
           "exchange copy");
        CU(cudaStreamSynchronize(s), "exchange sync");
        mark(0);
        if (part)
            host_rows(ROWS_ZERO, xc->remote, nq, w, NULL, hx);
        else
            host_rows(ROWS_ZERO, NULL, ng, w, NULL, hx + (size_t)nl * w);
    } else if (part) {
        /* images folded into their owners on the device; the remote rows to the host */
        CU(et_ghost_fold(s, nl, ng, F, xc->fold_key, xc->fold_ghost, x, vec),
           "ghost fold (images)");
        if (pkr)
            CU(et_pack_rows_f32(s, xc->remote_dev, nq, F, x, vec, (float *)dq),
               "exchange pack (remote ghosts)");
        else
            CU(et_pack_rows(s, xc->remote_dev, nq, F, x, vec, dq), "exchange pack (remote ghosts)");
        CU(cudaMemcpyAsync(hq, dq, (size_t)nq * w * sizeof(double), cudaMemcpyDeviceToHost, s),
           "exchange copy");
        CU(cudaStreamSynchronize(s), "exchange sync");
        mark(0);
        host_rows(ROWS_SCATTER, xc->remote, nq, w, hq, hx);
        if (rows)
            host_rows(ROWS_ZERO, rows, nr, w, NULL, hx);
        else
            host_rows(ROWS_ZERO, NULL, nl, w, NULL, hx);
    } else {
        CU(et_pack(s, nl, ng, F, x, vec, dx + (size_t)nl * w), "exchange pack");
        CU(cudaMemcpyAsync(hx + (size_t)nl * w, dx + (size_t)nl * w,
                           (size_t)ng * w * sizeof(double), cudaMemcpyDeviceToHost, s),
           "exchange copy");
        CU(cudaStreamSynchronize(s), "exchange sync");
        mark(0);
        if (rows)
            host_rows(ROWS_ZERO, rows, nr, w, NULL, hx);
        else
            host_rows(ROWS_ZERO, NULL, nl, w, NULL, hx);
    }
    mark(1);
    int rc = pkr       ? xc->ex->reverse_f32(xc->ex->user, (float *)hx, 2 * w)
             : reverse ? xc->ex->reverse(xc->ex->user, hx, w)
                       : xc->ex->forward(xc->ex->user, hx, w);
    mark(2);
    if (rc != 0)
        return fail(err, err_len, DS4SCI_ERR_EXCHANGE, "ghost exchange %s (width %d) returned %d",
                    reverse ? "reverse" : "forward", w, rc);
    if (!reverse && part) {
        host_rows(ROWS_GATHER, xc->remote, nq, w, hx, hq);
        CU(cudaMemcpyAsync(dq, hq, (size_t)nq * w * sizeof(double), cudaMemcpyHostToDevice, s),
           "exchange copy");
        if (pk)
            CU(et_unpack_rows_f32(s, xc->remote_dev, nq, F, (const float *)dq, x, vec),
               "exchange unpack (remote ghosts)");
        else
            CU(et_unpack_rows(s, xc->remote_dev, nq, F, dq, x, vec),
               "exchange unpack (remote ghosts)");
        CU(et_ghost_gather(s, nl, ng, F, xc->part_owner, x, vec), "ghost gather (images)");
    } else if (!reverse) {
        CU(cudaMemcpyAsync(dx + (size_t)nl * w, hx + (size_t)nl * w,
                           (size_t)ng * w * sizeof(double), cudaMemcpyHostToDevice, s),
           "exchange copy");
        if (pk)
            CU(et_unpack_f32(s, nl, ng, F, (const float *)(dx + (size_t)nl * w), x, vec),
               "exchange unpack");
        else
            CU(et_unpack(s, nl, ng, F, dx + (size_t)nl * w, x, vec, 0), "exchange unpack");
    } else {
        if (rows) {
            host_rows(ROWS_GATHER, rows, nr, w, hx, hp);
            CU(cudaMemcpyAsync(dx, hp, (size_t)nr * w * sizeof(double), cudaMemcpyHostToDevice,
                               s),
               "exchange copy");
            if (pkr)
                CU(et_unpack_rows_add_f32(s, xc->send_dev, nr, F, (const float *)dx, x, vec),
                   "exchange unpack (send rows)");
            else
                CU(et_unpack_rows_add(s, xc->send_dev, nr, F, dx, x, vec),
                   "exchange unpack (send rows)");
        } else {
            CU(cudaMemcpyAsync(dx, hx, (size_t)nl * w * sizeof(double), cudaMemcpyHostToDevice,
                               s),
               "exchange copy");
            CU(et_unpack(s, 0, nl, F, dx, x, vec, 1), "exchange unpack");
        }
        CU(et_zero_rows(s, nl, ng, F, x), "zero ghost rows");
        if (vec)
            CU(et_zero_rows(s, nl, ng, 3 * F, vec), "zero ghost rows");
    }
    /* the host buffer is reused by the next exchange: wait until the copies have read it */
    CU(cudaStreamSynchronize(s), "exchange sync");
    mark(3); /* (includes the reverse's host gather of the send rows) */
    et->xch_calls++;
    return DS4SCI_OK;
}

/* ---- compute ------------------------------------------------------------------------------- */
/* Owned rows per chunk of the node work that needs o and P (at least 1, at most nl). */
static int node_chunk_rows(const ds4sci_cuda_et *et, int nl)
{
    return nl < 1 ? 1 : nl < et->node_chunk ? nl : et->node_chunk;
}

/* Where the caller's candidates live (compute_input): B_CAND when resident, else dE/dqkv's
   buffer at cand_offset, past the receivers of the most edges nl + nc candidates can give
   (compute_body's graph build writes those while it reads the candidates). */
static size_t cand_offset(int nl, int64_t nc)
{
    return ((size_t)(nl + nc + 1) * sizeof(int) + 255) / 256 * 256;
}

static int *cand_ptr(ds4sci_cuda_et *et, int nl, int64_t nc)
{
    return et->res_now ? (int *)et->buf[B_CAND].p
                       : (int *)((char *)et->buf[B_GQKV].p + cand_offset(nl, nc));
}

static int bits_for(int n)
{
    int b = 1;
    while (b < 31 && (1 << b) <= n)
        b++;
    return b;
}

/* A stable radix sort of n (key, value) int pairs in one device buffer, laid out as
   [key in | key out | value in | value out | cub scratch], each array 256-byte aligned: the
   receiver row order (B_ORDER), the ghost fold (B_FOLD) and the wire plan's send entries
   (B_WIRE, after its lists) use it. */
typedef struct {
    int n, bits;    /* pairs; key bits sorted (keys in [0, 2^bits)) */
    size_t arr;     /* bytes of one array */
    size_t tmp;     /* bytes of cub's scratch */
} sort_pairs_layout;

/* The layout for n pairs of bits-bit keys (cub asked for its scratch size). */
static cudaError_t sort_pairs_plan(int n, int bits, cudaStream_t s, sort_pairs_layout *L)
{
    L->n = n;
    L->bits = bits;
    L->arr = ((size_t)(n > 0 ? n : 1) * sizeof(int) + 255) / 256 * 256;
    L->tmp = 0;
    return cub::DeviceRadixSort::SortPairs(NULL, L->tmp, (const int *)NULL, (int *)NULL,
                                           (const int *)NULL, (int *)NULL, n, 0, bits, s);
}

static size_t sort_pairs_bytes(const sort_pairs_layout *L)
{
    return 4 * L->arr + L->tmp;
}

/* Array i of the layout at base (0 key in, 1 key out, 2 value in, 3 value out). */
static int *sort_pairs_array(const sort_pairs_layout *L, void *base, int i)
{
    return (int *)((char *)base + (size_t)i * L->arr);
}

/* Sorts the layout at base: keys in / values in -> keys out / values out. */
static cudaError_t sort_pairs_run(const sort_pairs_layout *L, void *base, cudaStream_t s)
{
    size_t tmp = L->tmp;
    return cub::DeviceRadixSort::SortPairs((char *)base + 4 * L->arr, tmp,
                                           sort_pairs_array(L, base, 0),
                                           sort_pairs_array(L, base, 1),
                                           sort_pairs_array(L, base, 2),
                                           sort_pairs_array(L, base, 3), L->n, 0, L->bits, s);
}

/* B_WIRE's layout for a wire plan of ns send entries and nr received rows: the concatenated
   lists (lists bytes), then the send entries' sort by row (sort_pairs_layout). */
static cudaError_t wire_layout(int ns, int nr, int nl, cudaStream_t s, size_t *lists,
                               sort_pairs_layout *sort)
{
    *lists = ((size_t)(ns + nr + 1) * sizeof(int) + 255) / 256 * 256;
    return sort_pairs_plan(ns, bits_for(nl), s, sort);
}

/* The neighbour embedding by species (ne_species.cu) for this call's atoms: et->ne_S the
   species present among all n (owned and ghost: senders may be either) when the kernels take
   them (et_ne_species_ok), else 0 (the per-edge kernels). The slots are the species in
   ascending z; the map and B are made again only when they change (outside any captured
   graph: a replay reads them where they are). One pass over z on the host per call. */
static ds4sci_status ne_species_prepare(ds4sci_cuda_et *et, const int32_t *z, int n, char *err,
                                        size_t err_len)
{
    const et_dmodel *m = &et->m;
    et->ne_S = 0;
    if (!m->ne || !et->ne_species || et->edge_unfused || n <= 0)
        return DS4SCI_OK;
    const int mz = m->max_z;
    if (!et->h_seen)
        et->h_seen = (unsigned char *)malloc((size_t)mz);
    if (!et->h_map)
        et->h_map = (int *)malloc(sizeof(int) * ((size_t)mz + ET_NE_SP_MAX));
    if (!et->h_seen || !et->h_map)
        return fail(err, err_len, DS4SCI_ERR_NOMEM, "host allocation failed");
    memset(et->h_seen, 0, (size_t)mz);
    for (int i = 0; i < n; i++) {
        const int zi = z[i];
        if (zi < 0 || zi >= mz)
            return DS4SCI_OK; /* (api.c's checks name it; the per-edge kernels never see it) */
        et->h_seen[zi] = 1;
    }
    int S = 0, sp[ET_NE_SP_MAX];
    for (int zi = 0; zi < mz; zi++)
        if (et->h_seen[zi]) {
            if (S == ET_NE_SP_MAX)
                return DS4SCI_OK;
            sp[S++] = zi;
        }
    if (!et_ne_species_ok(m->F, m->K, S))
        return DS4SCI_OK;
    if (S != et->ne_S_built || memcmp(sp, et->ne_sp_z, sizeof(int) * S) != 0) {
        int *map = et->h_map;
        for (int zi = 0; zi < mz; zi++)
            map[zi] = 0;
        for (int p = 0; p < S; p++) {
            map[sp[p]] = p;
            map[mz + p] = sp[p];
        }
        et->ne_S_built = 0; /* until the new map and B are on their way */
        cudaStream_t s = et->stream;
        CU(cudaMemcpyAsync(m->ne_sp, map, sizeof(int) * ((size_t)mz + S),
                           cudaMemcpyHostToDevice, s), "upload species map");
        CU(et_ne_species_b(s, m->F, m->K, S, m->ne_sp + mz, m->ne_wt, m->ne_b, m->ne_emb,
                           m->ne_spB),
           "neighbour embedding by species");
        memcpy(et->ne_sp_z, sp, sizeof(int) * S);
        et->ne_S_built = S;
        et->ne_sp_builds++;
    }
    et->ne_S = S;
    return DS4SCI_OK;
}

/* The step's inputs to the device (fixed buffers: a captured graph reads them there). */
static ds4sci_status compute_input(ds4sci_cuda_et *et, const ds4sci_system *sys,
                                   const ds4sci_exchange *ex, int builtin, char *err,
                                   size_t err_len)
{
    const int F = et->m.F;
    const int nl = sys->n_local, ng = sys->n_ghost;
    const long long n_ll = (long long)nl + ng;
    const int64_t nc = nl > 0 ? sys->nbr_offset[nl] : 0;
    if (n_ll > INT32_MAX / 16 || nc + nl > INT32_MAX)
        return fail(err, err_len, DS4SCI_ERR_UNSUPPORTED,
                    "%lld atoms, %lld candidate pairs: more than this build "
                    "indexes with 32-bit integers",
                    n_ll, (long long)nc);
    const int n = (int)n_ll;
    cudaStream_t s = et->stream;
    mark(et, ST_INPUT);

    /* inputs */
    const size_t n1 = n > 0 ? n : 1, nl1 = nl > 0 ? nl : 1;
    ST(ensure(et, B_POS, n1 * 3 * sizeof(double), err, err_len));
    ST(ensure(et, B_Z, n1 * sizeof(int), err, err_len));
    ST(ensure(et, B_COFF, (nl1 + 1) * sizeof(int64_t), err, err_len));
    /* the caller's candidate indices are needed only until the edge list is filled: they
       live in dE/dqkv's buffer (first written in the backward; compute_body's graph build
       puts the receivers in its first cand_off bytes, written by the fill, and after the fill
       the transpose index and its sort scratch, where the candidates were) at cand_off, past
       the most edges the candidates can give; the buffer sized here at least as dE/dqkv, so
       that it does not grow (with headroom) there unless the graph build needs more, which
       compute_body then allocates with the candidates copied over. (In the vec buffer until
       9778e30: its growth to the layer inputs' size then took 25% headroom, 11 GB at 10M
       atoms.) */
    const size_t cidx_bytes = (size_t)(nc > 0 ? nc : 1) * sizeof(int);
    const size_t rows = (size_t)(images_folded(et, sys, builtin) ? nl : n);
    const size_t cand_off = cand_offset(nl, nc);
    const size_t gqkv_bytes = 5 * (rows > 0 ? rows : 1) * (size_t)F * sizeof(float);
    const size_t gqkv_need =
        cand_off + cidx_bytes > gqkv_bytes ? cand_off + cidx_bytes : gqkv_bytes;
    /* resident (et->resident_nbr): in B_CAND, kept, and not uploaded again when the caller
       promised the previous call's list (api.c has checked that the counts match it) */
    /* (auto: not where level 2 will run, i.e. the largest systems, whose memory the list
       would take: 5.8 GB at 10M atoms with LAMMPS's skin; its upload costs ~1% there) */
    et->res_now = et->resident_nbr > 0 ||
                  (et->resident_nbr < 0 && et->promised &&
                   checkpoint_level(et, builtin, nl, (int)rows, (double)(nl + nc), NULL) != 2);
    if (!et->res_now && et->buf[B_CAND].cap > 0 && !et->capturing)
        release(et, B_CAND);
    const int keep_nbr = et->res_now && et->same_nbr && et->cand_valid;
    et->cand_valid = 0; /* until this call succeeds */
    if (et->res_now)
        ST(ensure(et, B_CAND, cidx_bytes, err, err_len));
    else
        ST(ensure(et, B_GQKV, gqkv_need, err, err_len));
    int *cidx = cand_ptr(et, nl, nc);
    /* B_GOWN: the ghost owners (built-in exchange), or the caller's send_rows hint */
    const int n_send = !builtin && ex && ex->send_rows ? ex->n_send_rows : 0;
    if (builtin)
        ST(ensure(et, B_GOWN, (ng > 0 ? ng : 1) * sizeof(int), err, err_len));
    else if (n_send > 0)
        ST(ensure(et, B_GOWN, (size_t)n_send * sizeof(int), err, err_len));
    if (n > 0) {
        CU(cudaMemcpyAsync(BUF(double, B_POS), sys->pos, (size_t)n * 3 * sizeof(double),
                           cudaMemcpyHostToDevice, s), "upload positions");
        CU(cudaMemcpyAsync(BUF(int, B_Z), sys->z, (size_t)n * sizeof(int), cudaMemcpyHostToDevice,
                           s), "upload z");
    }
    ST(ne_species_prepare(et, sys->z, n, err, err_len));
    if (nl > 0 && !keep_nbr) {
        CU(cudaMemcpyAsync(BUF(int64_t, B_COFF), sys->nbr_offset, (size_t)(nl + 1) * sizeof(int64_t),
                           cudaMemcpyHostToDevice, s), "upload neighbour offsets");
        if (nc > 0)
            CU(cudaMemcpyAsync(cidx, sys->nbr_index, (size_t)nc * sizeof(int),
                               cudaMemcpyHostToDevice, s), "upload neighbour indices");
    }
    if (builtin && ng > 0)
        CU(cudaMemcpyAsync(BUF(int, B_GOWN), sys->ghost_owner, (size_t)ng * sizeof(int),
                           cudaMemcpyHostToDevice, s), "upload ghost owners");
    if (n_send > 0)
        CU(cudaMemcpyAsync(BUF(int, B_GOWN), ex->send_rows, (size_t)n_send * sizeof(int),
                           cudaMemcpyHostToDevice, s), "upload send rows");
    /* the caller's wire plan (et->wire): its send entries and received rows, concatenated in
       plan order, on the device at B_WIRE [ns | nr | ...] (sorted in compute_body) */
    et->wire_ns = et->wire_nr = 0;
    if (use_wire(et, builtin, ex)) {
        const ds4sci_wire_plan *pl = ex->plan;
        size_t ns = 0, nr = 0;
        for (int32_t p = 0; p < pl->n_peers; p++) {
            ns += (size_t)pl->peers[p].n_send;
            nr += (size_t)pl->peers[p].n_recv;
        }
        if (ns + nr > INT32_MAX / 4)
            return fail(err, err_len, DS4SCI_ERR_UNSUPPORTED, "wire plan: %zu + %zu rows", ns,
                        nr);
        if (et->h_wire_cap < ns + nr + 1) {
            int *h = (int *)realloc(et->h_wire, (ns + nr + 1) * sizeof(int));
            if (!h)
                return fail(err, err_len, DS4SCI_ERR_NOMEM, "wire plan: %zu rows", ns + nr);
            et->h_wire = h;
            et->h_wire_cap = ns + nr + 1;
        }
        size_t k = 0;
        for (int32_t p = 0; p < pl->n_peers; p++)
            for (int32_t r = 0; r < pl->peers[p].n_send; r++)
                et->h_wire[k++] = pl->peers[p].send_rows[r];
        for (int32_t p = 0; p < pl->n_peers; p++)
            for (int32_t r = 0; r < pl->peers[p].n_recv; r++)
                et->h_wire[k++] = pl->peers[p].recv_rows[r];
        et->wire_ns = (int)ns;
        et->wire_nr = (int)nr;
        /* [send | recv | key in | key out | entry in | entry out | cub scratch] (wire_layout) */
        size_t lists;
        sort_pairs_layout sl;
        CU(wire_layout(et->wire_ns, et->wire_nr, nl, s, &lists, &sl), "cub sort size");
        ST(ensure(et, B_WIRE, lists + sort_pairs_bytes(&sl), err, err_len));
        if (ns + nr > 0)
            CU(cudaMemcpyAsync(et->buf[B_WIRE].p, et->h_wire, (ns + nr) * sizeof(int),
                               cudaMemcpyHostToDevice, s), "upload wire plan");
    }
    /* partial owners: the owners and the remote ghost rows (owner -1) on the device */
    et->n_remote = 0;
    if (!builtin && sys->ghost_owner && ng > 0) {
        if (et->h_remote_cap < (size_t)ng) {
            int32_t *r = (int32_t *)realloc(et->h_remote, (size_t)ng * sizeof(int32_t));
            if (!r)
                return fail(err, err_len, DS4SCI_ERR_NOMEM, "remote ghost list: %d ghosts", ng);
            et->h_remote = r;
            et->h_remote_cap = ng;
        }
        for (int g = 0; g < ng; g++)
            if (sys->ghost_owner[g] < 0)
                et->h_remote[et->n_remote++] = nl + g;
        ST(ensure(et, B_GPART, ((size_t)ng + et->n_remote) * sizeof(int), err, err_len));
        CU(cudaMemcpyAsync(BUF(int, B_GPART), sys->ghost_owner, (size_t)ng * sizeof(int),
                           cudaMemcpyHostToDevice, s), "upload partial ghost owners");
        if (et->n_remote > 0)
            CU(cudaMemcpyAsync(BUF(int, B_GPART) + ng, et->h_remote,
                               (size_t)et->n_remote * sizeof(int), cudaMemcpyHostToDevice, s),
               "upload remote ghost rows");
    }
    return DS4SCI_OK;
}

/* Candidate rows past the last edge (graph mode: the edge buffers hold nl + candidates slots)
   get sender n, which sorts after every atom; e_src [cap] */
static __global__ void k_pad_senders(const int *__restrict__ row_off, int nl, int cap, int n,
                                     int *e_src)
{
    for (long long e = row_off[nl] + (long long)blockIdx.x * blockDim.x + threadIdx.x; e < cap;
         e += (long long)gridDim.x * blockDim.x)
        e_src[e] = n;
}

/* Sender counts of the edges (graph mode: only the row_off[nl] real ones of cap slots);
   key [cap], cnt [n + 1] += */
static __global__ void k_count_edges(const int *__restrict__ row_off, int nl, int cap,
                                     const int *__restrict__ key, int *cnt)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < cap && e < row_off[nl])
        atomicAdd(&cnt[key[e]], 1); /* integer counts: the result is order-independent */
}

/* The device input check found a bad candidate of owned atom i (the lowest such): DS4SCI_ERR_INPUT
   with an empty message and i in et->bad_receiver; backend_cuda.c writes api.c's message
   (ds4sci_check_receiver on the host, one row). */
static ds4sci_status bad_input(ds4sci_cuda_et *et, int i, char *err, size_t err_len)
{
    et->bad_receiver = i;
    if (err_len > 0)
        err[0] = '\0';
    return DS4SCI_ERR_INPUT;
}

/*
 * The device work of a step from the uploaded inputs to the totals in B_PART: edge list,
 * embedding, layers forward, head, layers backward, forces. In graph mode (graph_call: built-in
 * exchange) it neither waits for nor reads back anything (a graph capture records it).
 */
/* The side stream (et->side: compute_body) made at its first use, never during a capture: its
   stream, events and cuBLAS handle (the main handle's math mode and, as the main handle has
   outside graph mode, cuBLAS's default workspace: the same GEMM kernels). Returns 1 when
   ready; 0 when it could not be made (what was made is freed and et->side is cleared: one
   stream from then on, the same results). */
static int side_init(ds4sci_cuda_et *et)
{
    if (et->blas2)
        return 1;
    cudaError_t e = cudaStreamCreateWithFlags(&et->stream2, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&et->ev_fork, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&et->ev_join, cudaEventDisableTiming);
    cublasStatus_t b = CUBLAS_STATUS_NOT_INITIALIZED;
    if (e == cudaSuccess)
        b = cublasCreate(&et->blas2);
    if (b == CUBLAS_STATUS_SUCCESS)
        b = cublasSetStream(et->blas2, et->stream2);
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
    if (b == CUBLAS_STATUS_SUCCESS)
        b = cublasGetMathMode(et->blas, &math);
    if (b == CUBLAS_STATUS_SUCCESS)
        b = cublasSetMathMode(et->blas2, math);
    if (b == CUBLAS_STATUS_SUCCESS)
        return 1;
    cudaGetLastError();
    side_free(et);
    et->side = 0;
    return 0;
}

static ds4sci_status compute_body(ds4sci_cuda_et *et, const ds4sci_system *sys,
                                  const ds4sci_exchange *ex, int builtin, ds4sci_result *res,
                                  char *err, size_t err_len)
{
    const et_dmodel *m = &et->m;
    const int F = m->F, L = m->L, K = m->K, CPL = m->CPL;
    /* nt: every atom the caller gave (the graph build's positions and candidates); n: the
       rows of the step (with folded images only the owned ones, ng = 0) */
    const int fold = images_folded(et, sys, builtin);
    const int nl = sys->n_local, ng = fold ? 0 : sys->n_ghost, n = nl + ng,
              nt = nl + sys->n_ghost;
    const int64_t nc = nl > 0 ? sys->nbr_offset[nl] : 0;
    cudaStream_t s = et->stream;
    cublasHandle_t h = et->blas;
    const size_t n1 = n > 0 ? n : 1, nl1 = nl > 0 ? nl : 1;
    int *cidx = cand_ptr(et, nl, nc); /* the candidates (compute_input) */
    const int n_send = !builtin && ex && ex->send_rows ? ex->n_send_rows : 0;
    /* graph mode: edge buffers of nl + nc slots (every row's self-loop and candidates bound its
       edges), no read-back; the padded slots never reach a kernel's edge loop (CSR offsets
       end at the real count) */
    const int bound = graph_call(et, sys, builtin);

    /* the edge passes' item counters (DS4SCI_CUDA_DYN), one per launch of the step (a step
       with more launches than slots runs the rest round-robin) */
    int work_i = 0;
    if (et->dyn)
        CU(cudaMemsetAsync(et->d_work, 0, ET_WORK_SLOTS(L) * sizeof(int), s), "memset");
    auto work_of = [&](int split) -> int * {
        return et->dyn && (split > 1 || et->dyn == 2) && work_i < ET_WORK_SLOTS(L)
                   ? et->d_work + work_i++
                   : NULL;
    };

    /* edge list: count, scan, fill */
    const double cl2 = (double)m->cl * m->cl, cu2 = (double)m->cu * m->cu;
    ST(ensure(et, B_ROWCNT, (nl1 + 1) * sizeof(int), err, err_len));
    ST(ensure(et, B_ROWOFF, (nl1 + 1) * sizeof(int), err, err_len));
    ST(ensure(et, B_TRKEY, (n1 + 1) * sizeof(int), err, err_len));
    ST(ensure(et, B_TROFF, (n1 + 1) * sizeof(int), err, err_len));
    CU(cudaMemsetAsync(BUF(int, B_ROWCNT), 0, (nl1 + 1) * sizeof(int), s), "memset");
    /* the input checks on the device (et->device_checks): d_check = the lowest receiver with a
       bad candidate, 0x7f7f7f7f (above any n_local) when none */
    const double min2 = (double)DS4SCI_MIN_PAIR_DIST * DS4SCI_MIN_PAIR_DIST;
    if (et->device_checks)
        CU(cudaMemsetAsync(et->d_check, 0x7f, sizeof(int), s), "memset");
    CU(et_graph_count(s, nl, BUF(double, B_POS), BUF(int64_t, B_COFF), cidx, cl2, cu2,
                      BUF(int, B_ROWCNT), nt, min2, et->device_checks ? et->d_check : NULL),
       "graph count");
    size_t scan_bytes = 0, scan2_bytes = 0;
    CU(cub::DeviceScan::ExclusiveSum(NULL, scan_bytes, BUF(int, B_ROWCNT), BUF(int, B_ROWOFF),
                                     nl + 1, s), "cub scan size");
    CU(cub::DeviceScan::ExclusiveSum(NULL, scan2_bytes, BUF(int, B_TRKEY), BUF(int, B_TROFF),
                                     n + 1, s), "cub scan size");
    if (scan2_bytes > scan_bytes)
        scan_bytes = scan2_bytes;
    ST(ensure(et, B_CUB, scan_bytes, err, err_len));
    CU(cub::DeviceScan::ExclusiveSum(et->buf[B_CUB].p, scan_bytes, BUF(int, B_ROWCNT),
                                     BUF(int, B_ROWOFF), nl + 1, s), "cub scan");
    if (!bound) {
        CU(cudaMemcpyAsync(et->h_scalars, BUF(int, B_ROWOFF) + nl, sizeof(int),
                           cudaMemcpyDeviceToHost, s), "edge count");
        if (et->device_checks)
            CU(cudaMemcpyAsync(et->h_scalars + 1, et->d_check, sizeof(int),
                               cudaMemcpyDeviceToHost, s), "input check");
        CU(cudaStreamSynchronize(s), "edge count");
        if (et->device_checks && et->h_scalars[1] < nl)
            return bad_input(et, et->h_scalars[1], err, err_len);
    }
    const int ne = bound ? nl + (int)nc : et->h_scalars[0];
    et->step_ne = ne;
    const size_t ne1 = ne > 0 ? ne : 1;
    /* lean edges (the merged path with the built-in exchange, the default): the receivers
       (e_dst) and the transpose index (tr_edge) are needed only to build the reverse map and
       the uncovered edges (with their receivers in tr_dst2), and the forces walk the reverses
       instead: both live in dE/dqkv's buffer until the backward first writes it, -8 B per
       edge. Otherwise (a caller exchange, DS4SCI_CUDA_MERGED=0, the unfused path) in their
       own buffers for the whole step, as the sender pass reads them. */
    et_edge_common cm;
    memset(&cm, 0, sizeof(cm));
    cm.F = F;
    cm.K = K;
    const int lean = builtin && et->merged && !et->edge_unfused && ne > 0 &&
                     et_edge_merged_ok(CPL, &cm);
    /* dE/dqkv's buffer: [e_dst | tr_edge (lean) | the transpose sort's edge ids (values in) |
       its scratch], each part 256-aligned (cub) */
    size_t sort_bytes = 0;
    int *sorted_keys = (int *)NULL;
    CU(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, (const int *)NULL, sorted_keys,
                                       (const int *)NULL, (int *)NULL, ne, 0, bits_for(n), s),
       "cub sort size");
    const size_t arr_bytes = (ne1 * sizeof(int) + 255) / 256 * 256;
    const size_t pre_bytes = lean ? 2 * arr_bytes : 0;
    const size_t gqkv_bytes = 5 * n1 * (size_t)F * sizeof(float);
    const size_t build_bytes = pre_bytes + arr_bytes + sort_bytes;
    {
        void *old = NULL;
        ST(ensure_keep(et, B_GQKV, build_bytes > gqkv_bytes ? build_bytes : gqkv_bytes, &old, err,
                       err_len));
        if (old) { /* grown (a build larger than dE/dqkv: small F): the candidates come along */
            if (!et->res_now && nc > 0)
                CU(cudaMemcpyAsync(cand_ptr(et, nl, nc), (char *)old + cand_offset(nl, nc),
                                   (size_t)nc * sizeof(int), cudaMemcpyDeviceToDevice, s),
                   "candidates");
            CU(cudaStreamSynchronize(s), "candidates");
            cudaFree(old);
            cidx = cand_ptr(et, nl, nc);
        }
    }
    ST(ensure(et, B_ESRC, ne1 * sizeof(int), err, err_len));
    ST(ensure(et, B_EGEO, ne1 * sizeof(float4), err, err_len));
    ST(ensure(et, B_GW, ne1 * 3 * sizeof(float), err, err_len));
    if (lean && !et->capturing) {
        if (et->buf[B_EDST].cap > 0)
            release(et, B_EDST);
        if (et->buf[B_TREDGE].cap > 0)
            release(et, B_TREDGE);
    }
    if (!lean) {
        ST(ensure(et, B_EDST, ne1 * sizeof(int), err, err_len));
        ST(ensure(et, B_TREDGE, ne1 * sizeof(int), err, err_len));
    }
    int *const e_dst = lean ? BUF(int, B_GQKV) : BUF(int, B_EDST);
    int *const tr_edge = lean ? (int *)((char *)et->buf[B_GQKV].p + arr_bytes)
                              : BUF(int, B_TREDGE);
    CU(et_graph_fill(s, nl, BUF(double, B_POS), BUF(int64_t, B_COFF), cidx, cl2, cu2,
                     BUF(int, B_ROWOFF), builtin && nt > nl ? BUF(int, B_GOWN) : NULL,
                     BUF(int, B_ESRC), e_dst, BUF(float4, B_EGEO), nt, min2,
                     et->device_checks, fold, et->rsort),
       "graph fill");
    if (bound && ne > 0) {
        k_pad_senders<<<(ne + 255) / 256 < 2 * et->num_sms ? (ne + 255) / 256 : 2 * et->num_sms,
                        256, 0, s>>>(BUF(int, B_ROWOFF), nl, ne, n, BUF(int, B_ESRC));
        CU(cudaGetLastError(), "pad senders");
    }

    /* transpose index: edges grouped by sender (stable radix sort: deterministic). The edge
       ids (values in) and the sort's scratch live in dE/dqkv's buffer (first written in the
       backward; see lean above); the sorted keys are not needed: B_GW holds them until it is
       zeroed. */
    int *keys_out = BUF(int, B_TRKEY);
    sorted_keys = (int *)et->buf[B_GW].p;
    int *eiota = (int *)((char *)et->buf[B_GQKV].p + pre_bytes);
    void *sort_tmp = (char *)et->buf[B_GQKV].p + pre_bytes + arr_bytes;
    CU(et_iota(s, ne, eiota), "iota");
    if (ne > 0)
        CU(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, BUF(int, B_ESRC), sorted_keys,
                                           eiota, tr_edge, ne, 0, bits_for(n), s),
           "cub sort");
    CU(cudaMemsetAsync(keys_out, 0, (n1 + 1) * sizeof(int), s), "memset");
    if (bound) {
        if (ne > 0)
            k_count_edges<<<(ne + 255) / 256, 256, 0, s>>>(BUF(int, B_ROWOFF), nl, ne,
                                                           BUF(int, B_ESRC), keys_out);
        CU(cudaGetLastError(), "transpose counts");
    } else {
        CU(et_count_by(s, ne, BUF(int, B_ESRC), keys_out), "transpose counts");
    }
    CU(cub::DeviceScan::ExclusiveSum(et->buf[B_CUB].p, scan_bytes, keys_out, BUF(int, B_TROFF),
                                     n + 1, s), "cub scan");

    /* feature buffers */
    const size_t nF = n1 * F, nlF = nl1 * F;
    /* Layer inputs (x_k, vec_k), k = 0..L (k = L: the head's input; vec_0 = 0 is not stored).
       With the built-in exchange (ghost rows re-gathered on the GPU exactly as in the forward)
       and L >= 3, only the inputs k even and k = L - 1 are kept; each odd k < L - 1 and k = L
       use one scratch slot, and the backward recomputes an odd input by running layer k - 1
       forward again from the kept input k - 1 (DS4SCI_CUDA_CHECKPOINT=0: keep all). With a
       caller exchange the ghost rows of each input computed again are kept from the forward's
       exchange (the stash, below), so that the re-runs make no exchange call: backend.h's
       sequence stays, and each rank may take its own level (auto: level 1 only where keeping
       every input would not fit, checkpoint_level). */
    /* Deep checkpointing (level 2, for the largest systems): no layer input is kept; the
       backward of layer 0 < l < L - 1 first runs the embedding and layers 0 .. l - 1 forward
       again (O(L^2): (L - 1)(L - 2) / 2 layer passes again, level 1 about L / 2; 10 against 2
       at L = 6), the inputs in two ping-pong slots of x (x_k in slot k mod 2) and two of vec.
       The vec slots and the two dE/dvec buffers are three [n][3F] buffers in rotation: the
       incoming dE/dvec survives the re-run in the third, and in the layer's backward the slot
       of input l - 1 (dead by then) takes the outgoing one.
       X: one slot. The forward keeps X of layer L - 1; before layer l < L - 1's backward its
       node work and edge pass run once more for X alone (after the re-run, from input l),
       which also leaves its q/k/v for the backward: L - 1 more edge passes for 5.1 GB at 10M
       atoms (two slots by parity before, X of layer l - 1 from the re-run). */
    /* auto (et->checkpoint < 0): level 1 when the workspace with all inputs kept, roughly
       (L + 1) x, L vec, L X, h, q/k/v, dE/dqkv, 3 dE/dx|vec rows of floats per atom and ~60
       bytes per edge, would exceed half of the memory free at context creation; level 2 when
       level 1's would not fit in 96% of it; decided from the sizes alone, so a CUDA graph's
       key (the sizes) fixes it too */
    double keep_all_bytes = 0.0;
    const int ck = checkpoint_level(et, builtin, nl, n, ne1, &keep_all_bytes);
    auto kept1 = [&](int k) -> bool { return k < L && (k == L - 1 || k % 2 == 0); };
    int nkx1 = 0, nkv1 = 0;
    for (int k = 0; k <= L; k++)
        if (kept1(k)) {
            nkx1++;
            if (k > 0)
                nkv1++;
        }
    /* Keep levels (never with checkpointing: that is for memory, this spends it for time): 1
       keeps each layer's q/k/v [n][5F] from the forward, so the backward skips LayerNorm, the
       q/k/v SGEMM and bias per layer; 2 also vec_proj's P [nl][9F] (layers >= 1) and o
       [nl][3F] from the forward (written there in full instead of one chunk at a time), so the
       backward skips both SGEMMs, and X needs no store (o is its only use). Auto: the highest
       level whose bytes, added to keep_all_bytes, stay under half of mem_at_create (the
       checkpoint rule's bound; level 2's X saving not counted). The same values in the same
       order: the results do not change. */
    const double keep1_bytes = 4.0 * 5 * L * (double)nF,
                 keep2_bytes = keep1_bytes + 4.0 * (9.0 * (L - 1) + 3.0 * L) * (double)nlF;
    int keep = 0;
    if (!ck && et->keep != 0) {
        /* 85%: 1M atoms of the reference model keep level 2 (74 GB: -2.8% time, docs/gpu.md
           v24; half, the bound before, took level 1). Where the memory is shared (ranks on
           one GPU deciding at once) and a call then runs out, body_or_again lowers keep_cap
           and runs the call again. */
        const double lim = 0.85 * (double)et->mem_at_create;
        keep = et->keep > 0                                                  ? et->keep
               : et->keep_cap >= 2 && keep_all_bytes + keep2_bytes <= lim ? 2
               : et->keep_cap >= 1 && keep_all_bytes + keep1_bytes <= lim ? 1
                                                                             : 0;
    }
    et->last_ck = ck;
    et->last_keep = keep;
    et->call_keep = keep;
    /* level 1: the kept inputs (nkx of x, nkv of vec) */
    auto kept = [&](int k) -> bool { return !ck || (ck == 1 && kept1(k)); };
    const int nkx = nkx1, nkv = nkv1;
    /* level 2: the slot now holding x_k, vec_k (set as the inputs are written; x_0: slot 0) */
    std::vector<int> dslot_x(L + 1, 0), dslot_v(L + 1, 0);
    /* slot of x_k (0 <= k <= L) and of vec_k (1 <= k <= L): kept ones in order, then scratch */
    auto slot_x = [&](int k) -> int {
        if (ck == 2)
            return dslot_x[k];
        if (!kept(k))
            return nkx;
        int i = 0;
        for (int j = 0; j < k; j++)
            i += kept(j) ? 1 : 0;
        return i;
    };
    auto slot_v = [&](int k) -> int {
        if (ck == 2)
            return dslot_v[k];
        if (!kept(k))
            return nkv;
        int i = 0;
        for (int j = 1; j < k; j++)
            i += kept(j) ? 1 : 0;
        return i;
    };
    /* X of layer l (owned rows; the backward's o = W_o X): with checkpointing, the layers r
       whose forward the backward runs again (r = l - 1 for each input l < L not kept) take
       their X from that run, into the slot of layer r + 2 (that layer's backward is done by
       then: the run comes right before layer r + 1's), so they keep none from the forward;
       the others keep theirs (L = 6: X slots 6 -> 4) */
    auto x_again = [&](int r) -> bool { return ck == 1 && r + 1 < L && !kept(r + 1); };
    int nxst = 0;
    for (int l = 0; l < L && keep < 2; l++) /* keep 2: o kept, no X stored */
        nxst += x_again(l) ? 0 : 1;
    if (ck == 2)
        nxst = 1; /* level 2: X of layer L - 1 from the forward, the others from the re-runs */
    auto slot_X = [&](int l) -> int {
        if (ck == 2)
            return 0;
        while (x_again(l))
            l += 2;
        int i = 0;
        for (int j = 0; j < l; j++)
            i += x_again(j) ? 0 : 1;
        return i;
    };
    const int slots_x = ck == 2 ? 2 : ck ? nkx + 1 : L + 1,
              slots_v = ck == 2 ? 3 : ck ? nkv + 1 : L;
    if (ck == 2 && !et->capturing) { /* level 2: dE/dvec in the vec slots; give them back */
        if (et->buf[B_GV0].cap > 0)
            release(et, B_GV0);
        if (et->buf[B_GV1].cap > 0)
            release(et, B_GV1);
    }
    ST(ensure(et, B_XS, (size_t)slots_x * nF * sizeof(float), err, err_len));
    ST(ensure(et, B_VECS, (size_t)slots_v * 3 * nF * sizeof(float), err, err_len));
    ST(ensure(et, B_XST, (nxst > 0 ? (size_t)nxst * nlF : 1) * sizeof(float), err, err_len));
    /* kept node work: q/k/v of layer l at KQ + 5 l nF; level 2: P of layer l >= 1 at KP +
       9 (l - 1) nlF, o of layer l at KO + 3 l nlF (owned rows) */
    if (keep > 0)
        ST(ensure(et, B_KEEP, (size_t)(keep == 2 ? keep2_bytes : keep1_bytes),
                  err, err_len));
    else if (et->buf[B_KEEP].cap > 0 && !et->capturing)
        release(et, B_KEEP); /* a larger system without keeping: give the memory back */
    ST(ensure(et, B_H, nF * sizeof(float), err, err_len));
    ST(ensure(et, B_QKV, 5 * nF * sizeof(float), err, err_len));
    /* P and o: one chunk of owned rows (P's buffer, 10 chunk F, also holds the head's scratch;
       vdot is recomputed from P where it is needed) */
    /* (level 2, the largest systems: at most 65,536 rows, 0.5 GB of chunk buffers at F = 128
       instead of 2.1) */
    const int CH = ck == 2 && node_chunk_rows(et, nl) > 65536 ? 65536 : node_chunk_rows(et, nl);
    const size_t chF = (size_t)CH * F;
    /* (level 2: 3 chunk F more for the head's scratch, which other levels put in the second
       dE/dvec buffer) */
    ST(ensure(et, B_P, (ck == 2 ? 13 : 10) * chF * sizeof(float), err, err_len));
    ST(ensure(et, B_O, 3 * chF * sizeof(float), err, err_len));
    ST(ensure(et, B_GX0, nF * sizeof(float), err, err_len));
    if (ck != 2) {
        ST(ensure(et, B_GV0, 3 * nF * sizeof(float), err, err_len));
        ST(ensure(et, B_GV1, 3 * nF * sizeof(float), err, err_len));
    }
    ST(ensure(et, B_GQKV, 5 * nF * sizeof(float), err, err_len)); /* >= 2 nlF (cat), 3 nlF (V) */
    ST(ensure(et, B_EA, nl1 * sizeof(double), err, err_len));
    ST(ensure(et, B_F, n1 * 3 * sizeof(double), err, err_len));
    if (res->atom_virial) /* only when asked for (48 B per atom) */
        ST(ensure(et, B_AV, n1 * 6 * sizeof(double), err, err_len));
    const int n_part = 2 * et->num_sms;
    ST(ensure(et, B_PART, ((size_t)7 * n_part + 8) * sizeof(double), err, err_len));

    et_edge_common c;
    memset(&c, 0, sizeof(c));
    /* an edge pass launched by pass() with its split factor's counter in c.work */
    auto with_work = [&](int split, auto pass) -> cudaError_t {
        c.work = work_of(split);
        const cudaError_t e = pass();
        c.work = NULL;
        return e;
    };
    c.n_local = nl;
    c.n_total = n;
    c.row_off = BUF(int, B_ROWOFF);
    c.e_src = BUF(int, B_ESRC);
    c.e_dst = e_dst; /* lean: NULL past the reverse map (below) */
    c.e_geo = BUF(float4, B_EGEO);
    c.tr_off = BUF(int, B_TROFF);
    c.tr_edge = tr_edge;
    c.K = K;
    c.rbf = m->rbf;
    c.cl = m->cl;
    c.cu = m->cu;
    c.alpha = m->alpha;
    c.rbf_a = m->rbf_a;
    c.rbf_b = m->rbf_b;
    c.rbf_coeff = m->rbf_coeff;
    c.act = m->act;
    c.attn_act = m->attn_act;
    c.use_dk = m->use_dk;
    c.use_dv = m->use_dv;
    c.vc = m->vc;
    c.H = m->H;
    c.D = m->D;
    c.F = F;
    c.fastexp = et->fastexp;
    c.pair = et->pair;
    c.kwin = et->kwin;
    c.rbf_flush = et->rbf_flush;
    c.tc = et->tc;
    /* the receiver passes' row order: owned rows sorted by the Morton code of their cell
       (side cutoff / 2; stable), recomputed each call (one radix sort of 30-bit keys) */
    if (nl > 1 && !et->edge_unfused &&
        (et->order == 1 || (et->order < 0 && nl >= ET_ORDER_MIN && !bound && ck < 2))) {
        sort_pairs_layout so;
        CU(sort_pairs_plan(nl, 30, s, &so), "cub sort size (order)");
        ST(ensure(et, B_ORDER, sort_pairs_bytes(&so), err, err_len));
        void *ob = et->buf[B_ORDER].p;
        CU(et_order_keys(s, nl, BUF(double, B_POS), 0.5 * m->cu, sort_pairs_array(&so, ob, 0),
                         sort_pairs_array(&so, ob, 2)),
           "order keys");
        CU(sort_pairs_run(&so, ob, s), "cub sort (order)");
        c.order = sort_pairs_array(&so, ob, 3);
    }
    const int grid_l = (nl + ET_EDGE_WARPS - 1) / ET_EDGE_WARPS,
              grid_n = (n + ET_EDGE_WARPS - 1) / ET_EDGE_WARPS;
    /* row split of the fused layer edge passes (few rows: S warps per row, partial sums) */
    et_edge_split sp = {1, 1, 1, 0};
    if (!et->edge_unfused)
        CU(et_edge_split_plan(CPL, &c, et->split_force, &sp), "edge split plan");
    if (sp.part_floats > 0)
        ST(ensure(et, B_SPLIT, sp.part_floats * sizeof(float), err, err_len));
    float *SPLIT = sp.part_floats > 0 ? BUF(float, B_SPLIT) : NULL;
    /* merged backward (default; DS4SCI_CUDA_MERGED=0 off): the reverse-edge map and the sender
       edges it leaves to the sender pass, from this step's edge list. The merged pass runs
       with the receivers' row split, the rest of the sender pass unsplit: so with a split
       only where the rest is small, i.e. with the built-in exchange, whose periodic images
       are paired too (a caller exchange leaves every ghost sender's edge to the rest) */
    if (et->merged && !et->edge_unfused && ne > 0 && (builtin || (sp.recv == 1 && sp.send == 1)) &&
        et_edge_merged_ok(CPL, &c)) {
        ST(ensure(et, B_REV, ne1 * sizeof(int), err, err_len));
        ST(ensure(et, B_TROFF2, (n1 + 1) * sizeof(int), err, err_len));
        /* the candidates in dE/dw's space (free until the head zeroes it), the counts in the
           transpose keys' (free since the transpose scan); the uncovered edges compact, so
           sized by their count (read back, as the edge count is) except in graph mode, where
           nothing is read back and ne bounds them */
        CU(et_edge_rev(s, nl, n, ne, c.row_off, c.e_src, c.e_dst, c.e_geo,
                       builtin && ng > 0 ? BUF(int, B_GOWN) : NULL, c.tr_off, c.tr_edge,
                       BUF(int, B_GW), BUF(int, B_REV), BUF(int, B_TRKEY)),
           "reverse edges");
        CU(cub::DeviceScan::ExclusiveSum(et->buf[B_CUB].p, scan_bytes, BUF(int, B_TRKEY),
                                         BUF(int, B_TROFF2), n + 1, s),
           "cub scan (uncovered edges)");
        size_t n_rest = ne1;
        if (!bound) {
            CU(cudaMemcpyAsync(et->h_scalars, BUF(int, B_TROFF2) + n, sizeof(int),
                               cudaMemcpyDeviceToHost, s),
               "uncovered edge count");
            CU(cudaStreamSynchronize(s), "uncovered edge count");
            n_rest = et->h_scalars[0] > 0 ? (size_t)et->h_scalars[0] : 1;
        }
        ST(ensure(et, B_TREDGE2, n_rest * sizeof(int), err, err_len));
        ST(ensure(et, B_TRDST2, n_rest * sizeof(int), err, err_len));
        CU(et_edge_rest(s, n, c.tr_off, c.tr_edge, BUF(int, B_REV), c.e_dst, BUF(int, B_TROFF2),
                        BUF(int, B_TREDGE2), BUF(int, B_TRDST2)),
           "uncovered edges");
        c.rev = BUF(int, B_REV);
        c.tr_off2 = BUF(int, B_TROFF2);
        c.tr_edge2 = BUF(int, B_TREDGE2);
        c.tr_dst2 = BUF(int, B_TRDST2);
    }
    if (lean) { /* their space is dE/dqkv's from here on */
        c.e_dst = NULL;
        c.tr_edge = NULL;
    }

    const int partial = !builtin && sys->ghost_owner && ng > 0;
    xch_ctx xc = {ex, builtin ? BUF(int, B_GOWN) : NULL, nl, ng, F,
                  n_send > 0 ? BUF(int, B_GOWN) : NULL,
                  partial ? BUF(int, B_GPART) : NULL, partial ? BUF(int, B_GPART) + ng : NULL,
                  et->h_remote, et->n_remote, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0};
    /* the fold's order: the ghosts sorted by owner, stable (ghosts ascending within an owner,
       as the CPU path adds them): [key in | key out | ghost in | ghost out | cub scratch] */
    if ((builtin || partial) && ng > 0) {
        const int *own = builtin ? BUF(int, B_GOWN) : BUF(int, B_GPART);
        sort_pairs_layout sf;
        CU(sort_pairs_plan(ng, bits_for(nl), s, &sf), "cub sort size (fold)");
        ST(ensure(et, B_FOLD, sort_pairs_bytes(&sf), err, err_len));
        void *fb = et->buf[B_FOLD].p;
        CU(et_fold_keys(s, nl, ng, own, sort_pairs_array(&sf, fb, 0),
                        sort_pairs_array(&sf, fb, 2)),
           "fold keys");
        CU(sort_pairs_run(&sf, fb, s), "cub sort (fold)");
        xc.fold_key = sort_pairs_array(&sf, fb, 1);
        xc.fold_ghost = sort_pairs_array(&sf, fb, 3);
    }
    /* the wire plan (et->wire): its send entries sorted by row (stable: plan order within a
       row) for the reverse's fixed-order adds */
    if (use_wire(et, builtin, ex)) {
        const int ns = et->wire_ns, nr = et->wire_nr;
        size_t lists; /* compute_input sized B_WIRE and uploaded the lists */
        sort_pairs_layout sw;
        CU(wire_layout(ns, nr, nl, s, &lists, &sw), "cub sort size");
        int *send = (int *)et->buf[B_WIRE].p;
        void *sb = (char *)et->buf[B_WIRE].p + lists;
        if (ns > 0) {
            CU(cudaMemcpyAsync(sort_pairs_array(&sw, sb, 0), send, (size_t)ns * sizeof(int),
                               cudaMemcpyDeviceToDevice, s),
               "wire plan keys");
            CU(et_iota(s, ns, sort_pairs_array(&sw, sb, 2)), "wire plan entries");
            CU(sort_pairs_run(&sw, sb, s), "cub sort (wire plan)");
        }
        xc.plan = ex->plan;
        xc.wire_send = send;
        xc.wire_recv = send + ns;
        xc.wire_key = sort_pairs_array(&sw, sb, 1);
        xc.wire_entry = sort_pairs_array(&sw, sb, 3);
        xc.wire_ns = ns;
        xc.wire_nr = nr;
    }
    float *XS = BUF(float, B_XS), *VECS = BUF(float, B_VECS), *XST = BUF(float, B_XST);
    /* input of layer l: x_l, and vec_l for l >= 1 (layer 0's vectors are zero: NULL) */
    auto xs = [&](int l) -> float * { return XS + (size_t)slot_x(l) * nF; };
    auto vecs = [&](int l) -> float * { return l > 0 ? VECS + (size_t)slot_v(l) * 3 * nF : NULL; };
    float *Hb = BUF(float, B_H), *QKV = BUF(float, B_QKV), *P = BUF(float, B_P);
    float *Ob = BUF(float, B_O), *GQKV = BUF(float, B_GQKV);
    float *KQ = keep > 0 ? BUF(float, B_KEEP) : NULL;
    float *KP = keep == 2 ? KQ + (size_t)5 * L * nF : NULL;
    float *KO = keep == 2 ? KP + (size_t)9 * (L - 1) * nlF : NULL;
    /* q/k/v of layer l; P and o of layer l for the chunk at owned row a */
    auto qkv_of = [&](int l) -> float * { return keep > 0 ? KQ + (size_t)5 * l * nF : QKV; };
    auto p_of = [&](int l, size_t aF) -> float * {
        return keep == 2 ? KP + (size_t)9 * (l - 1) * nlF + 9 * aF : P;
    };
    auto o_of = [&](int l, size_t aF) -> float * {
        return keep == 2 ? KO + (size_t)3 * l * nlF + 3 * aF : Ob;
    };
    /* shared allocations (lifetimes do not overlap, one stream):
       - Hb: LayerNorm output (node_fwd, read by the q/k/v GEMM only), then in the backward
         dE/dX (o_proj backward -> edge passes) and dE/dh (q/k/v backward -> LayerNorm backward);
       - GQKV: the embedding concat (embedding), V (each forward layer: edge pass -> update),
         dE/dqkv (backward); the graph build's sort scratch before all of these */
    float *Vb = GQKV, *GXb = Hb, *GH = Hb;
    /* dE/dx is updated in place (only the update backward reads the incoming gradient, before
       the LayerNorm backward adds into it); dE/dvec is double-buffered (the edge passes read
       the incoming dE/dV while the sender pass adds into the outgoing one) */
    float *GX[2] = {BUF(float, B_GX0), BUF(float, B_GX0)};
    float *GV[2] = {ck == 2 ? NULL : BUF(float, B_GV0), ck == 2 ? NULL : BUF(float, B_GV1)};
    /* level 2: the vec slot of the dE/dvec the next layer backward reads (the forward's inputs
       take slots 0 and 1, so the head's gradient goes to 2), and [n][3F] slot j */
    int dgv = 2;
    auto vslot = [&](int j) -> float * { return VECS + (size_t)j * 3 * nF; };
    if (ck == 2) {
        for (int k = 1; k <= L; k++) {
            dslot_x[k] = k & 1;
            dslot_v[k] = (k - 1) & 1;
        }
        GV[0] = vslot(dgv);
    }
    float *GW = BUF(float, B_GW); /* [ne][3] */

    /* The stash (a caller exchange with checkpointing and ghost rows): the ghost rows of each
       input that the backward computes again (level 1: those not kept; level 2: inputs 0 ..
       L - 2), copied after the forward's exchange; slot j: x's [ng][F], then vec's [ng][3F].
       The re-runs take them from here instead of exchanging again: the same values, since the
       owners' rows computed again are the forward's bits (deterministic kernels, the same
       inputs) on every rank. 16 F bytes per ghost and slot (L = 6: 2 slots at level 1, 5 at
       level 2). */
    const bool stash = !builtin && ck > 0 && ng > 0;
    auto stash_slot = [&](int k) -> int {
        if (k < 0 || k >= L - 1 || (ck == 1 && kept(k)))
            return -1;
        if (ck == 2)
            return k;
        int j = 0;
        for (int i = 0; i < k; i++)
            j += kept(i) ? 0 : 1;
        return j;
    };
    const size_t ngF = (size_t)ng * F;
    if (stash)
        ST(ensure(et, B_STASH, (size_t)(ck == 1 ? L - nkx : L - 1) * 4 * ngF * sizeof(float),
                  err, err_len));
    else if (et->buf[B_STASH].cap > 0 && !et->capturing)
        release(et, B_STASH);
    /* ghost rows of input k (x_k, and vec_k for k >= 1): the forward's exchange (and into the
       stash where the backward computes input k again); again = a re-run in the backward:
       with the built-in exchange the same gather, with a caller's the stash (no call) */
    auto ghosts_of = [&](int k, bool again) -> ds4sci_status {
        float *x = xs(k), *v = vecs(k);
        const int j = stash ? stash_slot(k) : -1; /* -1 with the built-in exchange */
        const bool restore = again && !builtin;
        if (restore && ng == 0)
            return DS4SCI_OK;
        if (restore && j < 0) /* a broken invariant: no re-run without them */
            return fail(err, err_len, DS4SCI_ERR_DEVICE,
                        "checkpointing: layer input %d computed again without its ghost rows",
                        k);
        if (!restore)
            ST(exchange(et, &xc, 0, x, v, err, err_len));
        if (j < 0)
            return DS4SCI_OK;
        /* the forward: ghost rows -> slot j; a re-run: slot j -> ghost rows */
        float *st = BUF(float, B_STASH) + (size_t)j * 4 * ngF;
        float *gx = x + (size_t)nl * F, *gv = v ? v + (size_t)nl * 3 * F : NULL;
        CU(cudaMemcpyAsync(restore ? gx : st, restore ? st : gx, ngF * sizeof(float),
                           cudaMemcpyDeviceToDevice, s), "stash");
        if (v)
            CU(cudaMemcpyAsync(restore ? gv : st + ngF, restore ? st + ngF : gv,
                               3 * ngF * sizeof(float), cudaMemcpyDeviceToDevice, s), "stash");
        return DS4SCI_OK;
    };

    /* embedding (+ neighbour embedding) of owned atoms into x_0, then ghosts from their owners
       (level 2: again at the start of each re-run; GQKV, the concat's place, is free then) */
    auto embed = [&](bool again) -> ds4sci_status {
        mark(et, ST_EMBED);
        CU(cudaMemsetAsync(xs(0), 0, nF * sizeof(float), s), "memset");
        if (m->ne) {
            float *CAT = GQKV; /* [nl][2F] */
            CU(et_embed_cat(s, nl, F, BUF(int, B_Z), m->emb, CAT), "embedding");
            if (et->ne_S > 0) { /* by species: Y [nl][J] past the concat, m = Y B^T */
                const int J = et->ne_S * (K + 1);
                float *Y = CAT + (size_t)nl * 2 * F; /* 2F + J <= 5F per row */
                CU(et_ne_species_forward(s, &c, m->ne_sp, BUF(int, B_Z), J, Y),
                   "neighbour embedding (species)");
                const float one = 1.f, zero = 0.f;
                BL(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, F, nl, J, &one, m->ne_spB, J, Y, J,
                               &zero, CAT + F, 2 * F),
                   "neighbour embedding GEMM");
            } else {
                CU(et_ne_forward(s, CPL, grid_l, &c, m->ne_wt, m->ne_b, m->ne_emb,
                                 BUF(int, B_Z), CAT),
                   "neighbour embedding");
            }
            BL(gemm_awt(h, nl, F, 2 * F, CAT, m->ne_comb_w, 0.f, xs(0)), "combine");
            CU(et_add_bias(s, nl, F, xs(0), m->ne_comb_b), "combine bias");
        } else {
            CU(et_embed_plain(s, nl, F, BUF(int, B_Z), m->emb, xs(0)), "embedding");
        }
        mark(et, ST_XCH);
        ST(ghosts_of(0, again));
        return DS4SCI_OK;
    };
    ST(embed(false));

    /* node work of layer l from its stored input: h, q/k/v (+bias) of all rows */
    auto node_fwd = [&](int l) -> ds4sci_status {
        const et_dlayer *dl = &m->layers[l];
        float *x = xs(l);
        CU(et_layernorm(s, n, F, x, dl->ln_w, dl->ln_b, Hb), "layernorm");
        /* the bias in gemm_x3's epilogue where it takes the GEMM (the same sums: fl(acc + b)
           either way), else by et_node_pre */
        const uint16_t *w3 = x3w(et, dl->qkv_w3, n);
        const int in_gemm = w3 && et_gemm_x3_ok(n, 5 * F, F, Hb, qkv_of(l));
        BL(gemm_awt(h, n, 5 * F, F, Hb, dl->qkv_w, 0.f, qkv_of(l), w3,
                    in_gemm ? dl->qkv_b : NULL),
           "q/k/v");
        if (!in_gemm)
            CU(et_node_pre(s, n, F, qkv_of(l), dl->qkv_b), "q/k/v bias");
        return DS4SCI_OK;
    };
    /* chunks of owned rows [a, a + c), a = 0, CH, 2 CH, ...; the last one also takes the
       ghost rows (zeroed or copied by the update kernels, which never read o or P there) */
    auto chunk_rows = [&](int a) -> int { return nl - a < CH ? nl - a : CH; };
    /* The side stream (et->side; node work in one chunk, not in graph mode): vec_proj's GEMM
       beside the layer's LayerNorm, q/k/v and edge pass, and its backward beside the o_proj
       backward, on stream2 with blas2: a branch opened after the work it needs (stream2 waits
       for everything issued on s) and closed before the work that needs it (s waits for
       stream2), or on an early return when the guard goes out of scope. The same GEMMs on the
       same data: the same bits (test_side_stream_same_bits). It hides launch latency: in graph
       mode, where there is none to hide, the branches gained nothing (docs/gpu.md v34) */
    const bool side = et->side && nl <= CH && !bound && side_init(et);
    struct side_branch {
        ds4sci_cuda_et *et;
        bool open;
        cudaError_t start()
        {
            cudaError_t e = cudaEventRecord(et->ev_fork, et->stream);
            if (e == cudaSuccess)
                e = cudaStreamWaitEvent(et->stream2, et->ev_fork, 0);
            open = e == cudaSuccess;
            return e;
        }
        cudaError_t close()
        {
            if (!open)
                return cudaSuccess;
            open = false;
            cudaError_t e = cudaEventRecord(et->ev_join, et->stream2);
            if (e == cudaSuccess)
                e = cudaStreamWaitEvent(et->stream, et->ev_join, 0);
            return e;
        }
        ~side_branch() { close(); }
    };

    /* layer l's node work and edge pass from its input (ghost rows filled): q/k/v, X into
       Xout, V into Vb */
    auto fwd_x = [&](int l, float *Xout) -> ds4sci_status {
        const et_dlayer *dl = &m->layers[l];
        mark(et, ST_NODE_FWD);
        ST(node_fwd(l));
        mark(et, ST_EDGE_FWD);
        et_edge_layer el;
        memset(&el, 0, sizeof(el));
        el.filt_wt = dl->filt_wt;
        el.filt_b = dl->filt_b;
        el.qkv = qkv_of(l);
        el.vec = vecs(l); /* NULL for layer 0 */
        el.X = Xout;
        el.V = Vb;
        if (et->edge_unfused)
            CU(et_edge_forward_unfused(s, &c, &el), "edge forward (unfused)");
        else
            CU(with_work(sp.fwd,
                         [&] { return et_edge_forward(s, CPL, grid_l, sp.fwd, SPLIT, &c, &el); }),
               "edge forward");
        return DS4SCI_OK;
    };
    /* layer l forward: fwd_x, then o_proj and the update into input l + 1 (its ghost rows
       zeroed) */
    auto fwd_layer = [&](int l, float *Xout) -> ds4sci_status {
        const et_dlayer *dl = &m->layers[l];
        float *x = xs(l), *vec = vecs(l);
        /* side stream: P = vec_proj(vec) beside fwd_x and o_proj (vec's ghost rows, which it
           does not read, are refreshed before this) */
        const bool sv = side && l > 0;
        side_branch sb = {et, false};
        if (sv) {
            CU(sb.start(), "side stream");
            BL(gemm_awt(et->blas2, 3 * nl, 3 * F, F, vec, dl->vec_w, 0.f, p_of(l, 0),
                        x3w(et, dl->vec_w3, 3 * nl)),
               "vec_proj");
        }
        ST(fwd_x(l, Xout));
        mark(et, ST_NODE_FWD);
        float *xn = xs(l + 1), *vn = vecs(l + 1);
        for (int a = 0; a < nl || (a == 0 && n > 0); a += CH) {
            const int cr = chunk_rows(a), last = a + CH >= nl;
            const size_t aF = (size_t)a * F;
            float *Pc = l > 0 ? p_of(l, aF) : NULL, *Oc = o_of(l, aF);
            if (l > 0 && !sv)
                BL(gemm_awt(h, 3 * cr, 3 * F, F, vec + 3 * aF, dl->vec_w, 0.f, Pc,
                            x3w(et, dl->vec_w3, 3 * cr)),
                   "vec_proj");
            BL(gemm_awt(h, cr, 3 * F, F, Xout + aF, dl->o_w, 0.f, Oc, x3w(et, dl->o_w3, cr)),
               "o_proj");
            CU(sb.close(), "side stream");
            /* ghost rows of the next input come from the exchange; the update zeroes them */
            CU(et_node_update(s, last ? n - a : cr, cr, F, x + aF, l > 0 ? vec + 3 * aF : NULL,
                              Oc, dl->o_b, Pc, Vb + 3 * aF, xn + aF, vn + 3 * aF),
               "update");
        }
        return DS4SCI_OK;
    };

    for (int l = 0; l < L; l++) {
        if (l > 0) {
            mark(et, ST_XCH);
            ST(ghosts_of(l, false));
        }
        /* X kept for the backward (o = W_o X recomputed there; level 2: layers L - 2, L - 1) */
        const bool no_x = ck == 2 ? l < L - 1 : x_again(l) || keep == 2;
        ST(fwd_layer(l, no_x ? Hb : XST + (size_t)slot_X(l) * nlF));
    }

    /* head: energies and dE/d(x_L, vec_L) of owned atoms */
    mark(et, ST_HEAD);
    int cur = 0;
    CU(cudaMemsetAsync(GX[cur], 0, nF * sizeof(float), s), "memset");
    CU(cudaMemsetAsync(GV[cur], 0, 3 * nF * sizeof(float), s), "memset");
    CU(cudaMemsetAsync(GW, 0, ne1 * 3 * sizeof(float), s), "memset");
    for (int a = 0; a < nl; a += CH) {
        /* scratch, cF = c F for a chunk of c rows: P's buffer (10 CH F) and buffers of the
           layers that are dead until the backward writes them again (q/k/v, dE/dqkv,
           dE/dvec [1], o, the LayerNorm output) */
        const size_t cF = (size_t)chunk_rows(a) * F, aF = (size_t)a * F;
        head_ws hw;
        hw.u0 = P;                        /* P: 10 cF = 3 + 3 + 2 + 1 + 1 cF */
        hw.gu0 = P + 3 * cF;
        hw.cat0 = P + 6 * cF;
        hw.y1p0 = P + 8 * cF;
        hw.gy10 = P + 9 * cF;
        hw.w0 = QKV;                      /* q/k/v: 5 nF >= 1.5 x 3 + 0.5 cF */
        hw.v1 = QKV + 3 * cF / 2;
        hw.gw0 = QKV + 3 * cF;
        hw.y1p1 = QKV + 9 * cF / 2;
        hw.u1 = GQKV;                     /* dE/dqkv: 5 nF >= 1.5 x 3 + 0.5 cF */
        hw.gu1 = GQKV + 3 * cF / 2;
        hw.gv1 = GQKV + 3 * cF;
        hw.g1 = GQKV + 9 * cF / 2;
        hw.gcat0 = ck == 2 ? P + 10 * cF : GV[1 - cur]; /* dE/dvec [1]: 3 nF >= 2 + 1 cF */
        hw.y1a0 = hw.gcat0 + 2 * cF;
        hw.y20 = Ob;                      /* o: 3 cF */
        hw.cat1 = Ob + cF;
        hw.gcat1 = Ob + 2 * cF;
        hw.gy20 = Hb;                     /* LayerNorm output: nF >= cF */
        ST(head(et, chunk_rows(a), BUF(int, B_Z) + a, xs(L) + aF, vecs(L) + 3 * aF, &hw,
                BUF(double, B_EA) + a, GX[cur] + aF, GV[cur] + 3 * aF, err, err_len));
    }

    /* backward through the layers */
    for (int l = L - 1; l >= 0; l--) {
        const et_dlayer *dl = &m->layers[l];
        if (ck == 2 && l > 0 && l < L - 1) {
            /* level 2: inputs 0 .. l again, the embedding and layers 0 .. l - 1 forward, vec
               into the two [n][3F] slots that do not hold the incoming dE/dvec, x_k into slot
               k mod 2, each input's ghost rows gathered before its layer runs; their X thrown
               away (Hb: layer l's own comes below). For l = 1 this leaves x_0 in place for
               layer 0's backward. */
            int pv[2], j = 0;
            for (int i = 0; i < 3; i++)
                if (i != dgv)
                    pv[j++] = i;
            ST(embed(true));
            for (int k = 0; k < l; k++) {
                dslot_x[k + 1] = (k + 1) & 1;
                dslot_v[k + 1] = pv[k & 1];
                if (k > 0) {
                    mark(et, ST_XCH);
                    ST(ghosts_of(k, true));
                }
                ST(fwd_layer(k, Hb));
            }
            mark(et, ST_XCH);
            ST(ghosts_of(l, true));
        }
        /* level 2: the outgoing dE/dvec into the [n][3F] slot holding neither the incoming
           one nor input l's vec (it held input l - 1's, or the head's input) */
        int dgv_out = 0;
        if (ck == 2) {
            while (dgv_out == dgv || (l > 0 && dgv_out == dslot_v[l]))
                dgv_out++;
            GV[cur] = vslot(dgv);
            GV[1 - cur] = vslot(dgv_out);
        }
        if (ck == 1 && !kept(l)) {
            /* input l (odd, l < L - 1) again: layer l - 1 forward from the kept input l - 1 (its
               ghost rows are still those of the forward), its X into slot_X(l - 1), kept for
               layer l - 1's backward (the same bits as the forward's: deterministic kernels,
               the same input), then the ghost rows of input l by the built-in gather, as in the
               forward, or from the stash */
            ST(fwd_layer(l - 1, XST + (size_t)slot_X(l - 1) * nlF));
            mark(et, ST_XCH);
            ST(ghosts_of(l, true));
        }
        bool qkv_fresh = false;
        if (ck == 2 && l < L - 1) {
            /* level 2: X of layer l by its node work and edge pass again (one X slot: the
               re-run's layers before it throw theirs away), which leaves its q/k/v in place
               for the backward below */
            ST(fwd_x(l, XST + (size_t)slot_X(l) * nlF));
            qkv_fresh = true;
        }
        float *x = xs(l), *vec = vecs(l);
        float *gxo = GX[cur], *gvo = GV[cur], *gxi = GX[1 - cur], *gvi = GV[1 - cur];
        mark(et, ST_NODE_BWD);
        if (keep == 0 && !qkv_fresh)
            ST(node_fwd(l));
        /* side stream: the vec_proj backward (into gvi) beside the o_proj backward, up to the
           edge passes */
        const bool sv = side && l > 0;
        side_branch sb = {et, false};
        for (int a = 0; a < nl || (a == 0 && n > 0); a += CH) {
            const int cr = chunk_rows(a), last = a + CH >= nl;
            const size_t aF = (size_t)a * F;
            float *Pc = l > 0 ? p_of(l, aF) : NULL, *Oc = o_of(l, aF);
            /* P and o = W_o X from the stored input and X (the forward's GEMMs), unless kept */
            if (keep < 2) {
                if (l > 0)
                    BL(gemm_awt(h, 3 * cr, 3 * F, F, vec + 3 * aF, dl->vec_w, 0.f, Pc,
                                x3w(et, dl->vec_w3, 3 * cr)),
                       "vec_proj (again)");
                BL(gemm_awt(h, cr, 3 * F, F, XST + (size_t)slot_X(l) * nlF + aF, dl->o_w, 0.f,
                            Oc, x3w(et, dl->o_w3, cr)),
                   "o_proj (again)");
            }
            /* dE/do over o, dE/dP over P; also gvi = gvo (the chunk's rows, the last chunk
               also the ghost rows) */
            CU(et_node_bwd(s, last ? n - a : cr, cr, F, gxo + aF, gvo + 3 * aF, gvi + 3 * aF, Oc,
                           dl->o_b, Pc), "update backward");
            if (sv) {
                CU(sb.start(), "side stream");
                BL(gemm_ab(et->blas2, 3 * cr, F, 3 * F, Pc, dl->vec_w, F, 1.f, gvi + 3 * aF,
                           x3w(et, dl->vec_w3t, 3 * cr)),
                   "vec_proj backward");
            }
            BL(gemm_ab(h, cr, F, 3 * F, Oc, dl->o_w, F, 0.f, GXb + aF, x3w(et, dl->o_w3t, cr)),
               "o_proj backward");
            if (l > 0 && !sv)
                BL(gemm_ab(h, 3 * cr, F, 3 * F, Pc, dl->vec_w, F, 1.f, gvi + 3 * aF,
                           x3w(et, dl->vec_w3t, 3 * cr)),
                   "vec_proj backward");
        }
        if (gxi != gxo)
            CU(cudaMemcpyAsync(gxi, gxo, nF * sizeof(float), cudaMemcpyDeviceToDevice, s), "copy");
        /* the merged pass with periodic images paired (built-in exchange) reads dE/dX and dE/dV
           of a ghost sender's owner at the ghost's row, as it reads its q: gathered here (the
           ghost rows of both are free: dE/dX's are LayerNorm output until the q/k/v backward
           writes dE/dh there, dE/dV's were zeroed by the fold and already copied into gvi) */
        if (c.rev && xc.owner && ng > 0)
            CU(et_ghost_gather(s, nl, ng, F, xc.owner, GXb, gvo), "ghost gather (dE/dX, dE/dV)");
        et_edge_layer el;
        memset(&el, 0, sizeof(el));
        el.filt_wt = dl->filt_wt;
        el.filt_b = dl->filt_b;
        el.qkv = qkv_of(l);
        el.vec = l > 0 ? vec : NULL;
        el.gX = GXb;
        el.gV = gvo;
        el.gqkv = GQKV;
        el.gvec = gvi;
        el.gw = GW;
        CU(sb.close(), "side stream");
        mark(et, ST_EDGE_RECV);
        if (et->edge_unfused) {
            CU(et_edge_backward_unfused(s, &c, &el), "edge backward (unfused)");
        } else {
            CU(with_work(sp.recv,
                         [&] {
                             return et_edge_backward_recv(s, CPL, grid_l, sp.recv, SPLIT, &c, &el);
                         }),
               "edge backward (receivers)");
            mark(et, ST_EDGE_SEND);
            /* (after the merged pass the sender pass takes the uncovered edges at S = 1) */
            CU(with_work(c.rev ? 1 : sp.send,
                         [&] {
                             return et_edge_backward_send(s, CPL, grid_n, sp.send, SPLIT, &c, &el);
                         }),
               "edge backward (senders)");
        }
        mark(et, ST_NODE_BWD);
        BL(gemm_ab(h, n, F, 5 * F, GQKV, dl->qkv_w, F, 0.f, GH, x3w(et, dl->qkv_w3t, n)),
           "q/k/v backward");
        CU(et_layernorm_bwd(s, n, F, x, dl->ln_w, GH, gxi), "layernorm backward");
        cur = 1 - cur;
        dgv = dgv_out;
        mark(et, ST_XCH);
        if (l > 0)
            ST(exchange(et, &xc, 1, GX[cur], GV[cur], err, err_len));
        else if (m->ne)
            ST(exchange(et, &xc, 1, GX[cur], NULL, err, err_len));
    }

    /* neighbour embedding backward: g_m = g_x0 C[:, F:2F] */
    mark(et, ST_FORCES);
    if (m->ne) {
        BL(gemm_ab(h, nl, F, F, GX[cur], m->ne_comb_w + F, 2 * F, 0.f, GH), "combine backward");
        if (et->ne_S > 0) { /* by species: H = dE/dm B [nl][J] in dE/dqkv's place (free) */
            const int J = et->ne_S * (K + 1);
            BL(gemm_ab(h, nl, J, F, GH, m->ne_spB, J, 0.f, GQKV),
               "neighbour embedding backward GEMM");
            CU(et_ne_species_backward(s, &c, m->ne_sp, BUF(int, B_Z), J, GQKV, GW),
               "neighbour embedding backward (species)");
        } else {
            CU(et_ne_backward(s, CPL, grid_l, &c, m->ne_wt, m->ne_b, m->ne_emb, BUF(int, B_Z),
                              GH, GW),
               "neighbour embedding backward");
        }
    }
    double *part = BUF(double, B_PART);
    CU(et_forces(s, nl, n, c.row_off, c.tr_off, c.tr_edge, c.rev, c.tr_off2, c.tr_edge2,
                 c.e_geo, GW, BUF(double, B_F),
                 res->atom_virial ? BUF(double, B_AV) : NULL, n_part, part), "forces");
    CU(et_sum_energy(s, nl, BUF(double, B_EA), n_part, part), "energy");
    CU(et_reduce_parts(s, n_part, part, part + 7 * n_part), "totals");
    return DS4SCI_OK;
}

/* Results to the host (pageable caller arrays: never captured), wait, profile (stage times
   only of calls not in graph mode, gcall = 0: those record events). */
static ds4sci_status compute_output(ds4sci_cuda_et *et, const ds4sci_system *sys,
                                    ds4sci_result *res, int gcall, int fold, char *err,
                                    size_t err_len)
{
    /* n: the device's rows (folded images: owned only; the ghost rows are zeroed here) */
    const int nl = sys->n_local, n = nl + (fold ? 0 : sys->n_ghost), nt = nl + sys->n_ghost;
    const long long ne = et->step_ne;
    cudaStream_t s = et->stream;
    const int n_part = 2 * et->num_sms;
    double *part = BUF(double, B_PART);
    mark(et, ST_OUTPUT);
    CU(cudaMemcpyAsync(et->h_red, part + 7 * n_part, 7 * sizeof(double), cudaMemcpyDeviceToHost, s),
       "download totals");
    if (res->forces && n > 0)
        CU(cudaMemcpyAsync(res->forces, BUF(double, B_F), (size_t)n * 3 * sizeof(double),
                           cudaMemcpyDeviceToHost, s), "download forces");
    if (res->atom_virial && n > 0)
        CU(cudaMemcpyAsync(res->atom_virial, BUF(double, B_AV), (size_t)n * 6 * sizeof(double),
                           cudaMemcpyDeviceToHost, s), "download atom virials");
    if (res->atom_energy && nl > 0)
        CU(cudaMemcpyAsync(res->atom_energy, BUF(double, B_EA), (size_t)nl * sizeof(double),
                           cudaMemcpyDeviceToHost, s), "download atom energies");
    if (et->device_checks && gcall)
        CU(cudaMemcpyAsync(et->h_scalars + 1, et->d_check, sizeof(int), cudaMemcpyDeviceToHost, s),
           "input check");
    mark(et, ST_OUTPUT);
    CU(cudaStreamSynchronize(s), "compute");
    if (res->forces && nt > n)
        memset(res->forces + (size_t)n * 3, 0, (size_t)(nt - n) * 3 * sizeof(double));
    if (res->atom_virial && nt > n)
        memset(res->atom_virial + (size_t)n * 6, 0, (size_t)(nt - n) * 6 * sizeof(double));
    /* graph mode read nothing back before: the input check's verdict comes with the results
       (which are then not used); the normal launches stopped after the edge count */
    if (et->device_checks && gcall && et->h_scalars[1] < nl)
        return bad_input(et, et->h_scalars[1], err, err_len);
    res->energy = et->h_red[0];
    for (int k = 0; k < 6; k++)
        res->virial[k] = et->h_red[1 + k];

    if (et->profile_path) {
        if (!gcall) {
            for (int i = 1; i < et->n_ev; i++) {
                float ms = 0.f;
                cudaEventElapsedTime(&ms, et->ev[i - 1], et->ev[i]);
                et->stage_ms[et->ev_stage[i - 1]] += ms;
            }
            et->profile_calls++;
        }
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot - fr > et->peak_used)
            et->peak_used = tot - fr;
        et->last_n = n;
        et->last_nt = nt;
        et->last_ne = ne;
    }
    return DS4SCI_OK;
}

/* ---- CUDA graph of a step (docs/gpu.md "CUDA graph of a step") --------------------------- */
/* What a captured step bakes in besides the model and the options fixed at create: the sizes
   (n_local, n_ghost, candidates: every launch size and, in graph mode, the edge bound), whether
   atom virials are requested (the forces kernel's argument), and every buffer's address and
   capacity (ensure() may move them). Positions, numbers, candidates and owners are not in it:
   compute_input() copies them into the same buffers before each replay. */
static void graph_key(const ds4sci_cuda_et *et, const ds4sci_system *sys, const ds4sci_result *res,
                      long long *k)
{
    k[0] = sys->n_local;
    k[1] = sys->n_ghost;
    k[2] = sys->n_local > 0 ? (long long)sys->nbr_offset[sys->n_local] : 0;
    k[3] = res->atom_virial != NULL;
    k[4] = et->ne_S; /* the GEMMs' and kernels' width; B's values are read at replay */
    for (int i = 0; i < B_COUNT; i++) {
        k[5 + 2 * i] = (long long)(uintptr_t)et->buf[i].p;
        k[6 + 2 * i] = (long long)et->buf[i].cap;
    }
}

static void graph_drop(ds4sci_cuda_et *et)
{
    if (et->gexec)
        cudaGraphExecDestroy(et->gexec);
    et->gexec = NULL;
}

/*
 * Capture compute_body() on the stream into et->gexec: an existing gexec (the previous key's
 * step) is updated in place when cudaGraphExecUpdate takes the new capture (the same kernels
 * and copies with other sizes and arguments: LAMMPS's list rebuilds), else the capture is
 * instantiated anew. The body launches nothing while captured (the work is recorded, not run).
 * Returns 0 on success; 1 when a buffer would have grown (gexec dropped; the caller runs the
 * normal launches, which size it); -1 on any other failure (gexec dropped; the caller falls
 * back to the normal launches). The capture is ended and the error state cleared either way.
 */
static int graph_capture(ds4sci_cuda_et *et, const ds4sci_system *sys, const ds4sci_exchange *ex,
                         ds4sci_result *res, char *err, size_t err_len)
{
    cudaStream_t s = et->stream;
    /* relaxed: the split plan's occupancy queries and kernel attribute calls are not stream
       work and may run while this thread captures */
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        cudaGetLastError();
        graph_drop(et);
        return -1;
    }
    et->capturing = 1;
    et->capture_grew = 0;
    ds4sci_status st = compute_body(et, sys, ex, 1, res, err, err_len);
    et->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(s, &g);
    int updated = 0;
    if (st == DS4SCI_OK && e == cudaSuccess && g) {
        if (et->gexec) {
            cudaGraphExecUpdateResultInfo info;
            if (cudaGraphExecUpdate(et->gexec, g, &info) == cudaSuccess) {
                updated = 1;
            } else { /* another shape (e.g. other SGEMM kernels): instantiate */
                cudaGetLastError();
                graph_drop(et);
            }
        }
        if (!updated && (e = cudaGraphInstantiate(&et->gexec, g, 0)) != cudaSuccess)
            et->gexec = NULL; /* (nothing to destroy) */
    }
    const int captured = g != NULL;
    if (g)
        cudaGraphDestroy(g);
    if (st != DS4SCI_OK || e != cudaSuccess || !captured || !et->gexec) {
        const int grew = st != DS4SCI_OK && et->capture_grew;
        graph_drop(et); /* the previous key's step, if the capture stopped before replacing it */
        cudaGetLastError();
        if (grew && err && err_len)
            err[0] = '\0'; /* not this call's error: it runs the normal launches */
        return grew ? 1 : -1;
    }
    et->graph_captures++;
    et->graph_updates += updated;
    return 0;
}

/* Graph mode's fixed cuBLAS workspace (recommended size: 32 MiB from Hopper on, 4 MiB before),
   set on the handle before the first graph-mode call (after cublasSetStream, which resets it):
   the captured SGEMMs allocate nothing, and that call's normal launches use the same workspace
   as the replays. Kept for the context's life. Returns 0, or -1 (graph mode stays off). */
static int graph_workspace(ds4sci_cuda_et *et)
{
    if (et->blas_ws)
        return 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, et->device) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    const size_t ws = prop.major >= 9 ? ((size_t)32 << 20) : ((size_t)4 << 20);
    if (cudaMalloc(&et->blas_ws, ws) != cudaSuccess ||
        cublasSetWorkspace(et->blas, et->blas_ws, ws) != CUBLAS_STATUS_SUCCESS) {
        cudaGetLastError();
        cudaFree(et->blas_ws);
        et->blas_ws = NULL;
        return -1;
    }
    et->dev_bytes += ws;
    return 0;
}

/* compute_body; out of memory with an auto keep level above 0 before the first exchange (the
   caller's is collective: other ranks wait in it): the level down for good, its buffer given
   back, and the call again from its input (nothing the caller sees has changed). Ranks
   sharing a GPU that chose a level at the same time end here. */
static ds4sci_status body_or_again(ds4sci_cuda_et *et, const ds4sci_system *sys,
                                   const ds4sci_exchange *ex, int builtin, ds4sci_result *res,
                                   int gcall, char *err, size_t err_len)
{
    ds4sci_status st = compute_body(et, sys, ex, builtin, res, err, err_len);
    while (st == DS4SCI_ERR_DEVICE_NOMEM && et->keep < 0 && et->call_keep > 0 &&
           et->call_xch == 0 && !et->capturing) {
        et->keep_cap = et->call_keep - 1;
        release(et, B_KEEP);
        cudaStreamSynchronize(et->stream);
        cudaGetLastError();
        et->call_keep = -1;
        et->n_ev = gcall ? ET_MAX_EVENTS : 0;
        st = compute_input(et, sys, ex, builtin, err, err_len);
        if (st == DS4SCI_OK)
            st = compute_body(et, sys, ex, builtin, res, err, err_len);
    }
    return st;
}

/*
 * One step. Graph mode (graph_call: built-in exchange; by default only for small systems): the
 * first call with a new key runs the normal launches (it sizes every buffer), the next call
 * with the same key captures the body and launches the graph, later calls only launch it;
 * except that a new key after one that served ET_GRAPH_UPDATE_MIN_CALLS calls is captured at
 * once, the graph updated in place (graph_capture), unless a buffer must grow. Either way the
 * same kernels run with the same arguments in the same order on one stream, so the results are
 * bitwise those of the launches. A capture or instantiate failure turns graph
 * mode off for the context and runs the normal launches. A call not in graph mode leaves the
 * graph and its key alone: the key holds every buffer's address and capacity, so a graph
 * captured before buffers grew is never launched again.
 */
static ds4sci_status compute(ds4sci_cuda_et *et, const ds4sci_system *sys,
                             const ds4sci_exchange *ex, int builtin, ds4sci_result *res, char *err,
                             size_t err_len)
{
    if (graph_call(et, sys, builtin) && graph_workspace(et) != 0)
        et->graph = 0; /* no fixed cuBLAS workspace: the normal launches */
    const int gcall = graph_call(et, sys, builtin);
    et->n_ev = gcall ? ET_MAX_EVENTS : 0; /* graph mode: no profile events (mark) */
    et->call_keep = -1;
    et->call_xch = 0;
    ds4sci_status st = compute_input(et, sys, ex, builtin, err, err_len);
    if (st == DS4SCI_OK) {
        if (gcall) {
            long long key[5 + 2 * B_COUNT];
            graph_key(et, sys, res, key);
            const int same = et->gkey_valid && memcmp(key, et->gkey, sizeof(key)) == 0;
            const long served = et->key_calls; /* calls of the key before this one */
            et->key_calls = same ? served + 1 : 1;
            if (!same && et->gkey_valid && et->graph_update &&
                served >= ET_GRAPH_UPDATE_MIN_CALLS) {
                /* a new key after a successful call (LAMMPS: each list rebuild changes the
                   candidate and ghost counts): captured at once, the graph updated in place
                   where it keeps its shape; a buffer that must grow leaves this call to the
                   normal launches (the next call with these sizes captures) */
                if (graph_capture(et, sys, ex, res, err, err_len) < 0)
                    et->graph = 0; /* fall back for good; the body runs below, bound-sized */
            } else if (!same) {
                graph_drop(et);
            } else if (!et->gexec && graph_capture(et, sys, ex, res, err, err_len) != 0) {
                et->graph = 0; /* fall back for good; the body runs below, bound-sized */
            }
            if (et->gexec) {
                cudaError_t e = cudaGraphLaunch(et->gexec, et->stream);
                if (e != cudaSuccess)
                    st = cu_fail(e, "cudaGraphLaunch", err, err_len);
                else
                    et->graph_replays++;
            } else {
                st = body_or_again(et, sys, ex, builtin, res, gcall, err, err_len);
            }
            /* the key after the call: the buffers as the next call with these sizes finds them */
            graph_key(et, sys, res, et->gkey);
            et->gkey_valid = 1;
        } else {
            st = body_or_again(et, sys, ex, builtin, res, gcall, err, err_len);
        }
    }
    if (st == DS4SCI_OK)
        st = compute_output(et, sys, res, gcall, images_folded(et, sys, builtin), err, err_len);
    if (st == DS4SCI_OK && et->ne_S > 0)
        et->ne_sp_calls++;
    if (st != DS4SCI_OK) {
        /* a failed call may have freed or moved buffers: capture again from scratch */
        graph_drop(et);
        et->gkey_valid = 0;
    }
    return st;
}

extern "C" ds4sci_status ds4sci_cuda_et_compute(ds4sci_cuda_et *et, const ds4sci_system *sys,
                                                const ds4sci_exchange *ex, int builtin,
                                                ds4sci_result *res, char *err, size_t err_len)
{
    if (!et || !sys || !res)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_compute: NULL argument");
    if (sys->n_local < 0 || sys->n_ghost < 0)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_compute: negative atom count");
    if (builtin && sys->n_ghost > 0 && !sys->ghost_owner)
        return fail(err, err_len, DS4SCI_ERR_ARG,
                    "ds4sci_cuda_et_compute: built-in ghosts need system->ghost_owner");
    if (!builtin && (!ex || !ex->forward || !ex->reverse))
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_compute: exchange is NULL");
    cudaError_t e = cudaSetDevice(et->device);
    if (e != cudaSuccess)
        return cu_fail(e, "cudaSetDevice", err, err_len);
    et->bad_receiver = -1;
    ds4sci_status st = compute(et, sys, ex, builtin, res, err, err_len);
    et->same_nbr = 0; /* a promise covers one call */
    if (st == DS4SCI_OK)
        et->cand_valid = et->res_now; /* B_COFF and B_CAND hold this call's list */
    if (st != DS4SCI_OK) {
        /* leave the stream idle and the error state clear for the next call */
        cudaStreamSynchronize(et->stream);
        cudaGetLastError();
    }
    return st;
}

/* gnn/backend.h checks_pairs; and the receiver the last failed call's device check named
   (-1: none) */
extern "C" int ds4sci_cuda_et_checks_pairs(const ds4sci_cuda_et *et)
{
    return et && et->device_checks;
}

extern "C" long long ds4sci_cuda_et_bad_receiver(const ds4sci_cuda_et *et)
{
    return et ? et->bad_receiver : -1;
}

/* ds4sci_ctx_same_neighbors for the next compute (gnn/backend.h same_neighbors) */
extern "C" void ds4sci_cuda_et_same_neighbors(ds4sci_cuda_et *et, int same)
{
    if (et) {
        et->same_nbr = same != 0;
        et->promised |= same != 0;
    }
}

/* ---- device memory for a wire plan's move (ds4sci_ipc_export ...) ------------------------- */
/* gnn/backend.h: these may run inside move() during compute(), on the same thread: they use
   et's device, handle and stream only (compute has waited for the stream before move()), and
   touch neither the workspace nor the profile marks. */

static_assert(sizeof(cudaIpcMemHandle_t) == DS4SCI_IPC_HANDLE_BYTES,
              "ds4sci_ipc_handle.bytes holds a cudaIpcMemHandle_t");

/* A failed IPC or copy call: DS4SCI_ERR_DEVICE with CUDA's reason (also out of memory:
   nothing of the workspace was asked for), the last-error state cleared so that a later call
   does not report it again (a sticky error, e.g. an illegal address, stays regardless). */
static ds4sci_status ipc_fail(cudaError_t e, const char *what, char *err, size_t len)
{
    cudaGetLastError();
    return fail(err, len, DS4SCI_ERR_DEVICE, "cuda: %s: %s (%s)", what, cudaGetErrorString(e),
                cudaGetErrorName(e));
}

extern "C" ds4sci_status ds4sci_cuda_et_ipc_export(ds4sci_cuda_et *et, const void *ptr,
                                                   ds4sci_ipc_handle *handle, char *err,
                                                   size_t err_len)
{
    if (!et || !ptr || !handle)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_ipc_export: NULL argument");
    /* each workspace buffer is its own cudaMalloc (ensure()), the allocation IPC shares */
    const uintptr_t a = (uintptr_t)ptr;
    for (int i = 0; i < B_COUNT; i++) {
        const et_buf *b = &et->buf[i];
        const uintptr_t p = (uintptr_t)b->p;
        if (!b->p || a < p || a - p >= b->cap)
            continue;
        cudaIpcMemHandle_t h;
        cudaError_t e = cudaSetDevice(et->device);
        if (e == cudaSuccess)
            e = cudaIpcGetMemHandle(&h, b->p);
        if (e != cudaSuccess)
            return ipc_fail(e, "cudaIpcGetMemHandle", err, err_len);
        memcpy(handle->bytes, &h, sizeof(h));
        handle->offset = (uint64_t)(a - p);
        return DS4SCI_OK;
    }
    return fail(err, err_len, DS4SCI_ERR_ARG,
                "pointer %p is not device memory of this context (in none of its workspace "
                "buffers)", ptr);
}

extern "C" ds4sci_status ds4sci_cuda_et_ipc_open(ds4sci_cuda_et *et,
                                                 const ds4sci_ipc_handle *handle, void **base,
                                                 char *err, size_t err_len)
{
    if (!et || !handle || !base)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_ipc_open: NULL argument");
    *base = NULL;
    cudaIpcMemHandle_t h;
    memcpy(&h, handle->bytes, sizeof(h));
    cudaError_t e = cudaSetDevice(et->device);
    /* peer access to the exporting GPU enabled as needed, as cudaDeviceEnablePeerAccess
       would (copies over NVLink); an error where the two GPUs cannot access each other */
    if (e == cudaSuccess)
        e = cudaIpcOpenMemHandle(base, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
        *base = NULL;
        return ipc_fail(e, "cudaIpcOpenMemHandle", err, err_len);
    }
    return DS4SCI_OK;
}

extern "C" ds4sci_status ds4sci_cuda_et_ipc_close(ds4sci_cuda_et *et, void *base, char *err,
                                                  size_t err_len)
{
    if (!et || !base)
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_ipc_close: NULL argument");
    cudaError_t e = cudaSetDevice(et->device);
    if (e == cudaSuccess)
        e = cudaIpcCloseMemHandle(base);
    if (e != cudaSuccess)
        return ipc_fail(e, "cudaIpcCloseMemHandle", err, err_len);
    return DS4SCI_OK;
}

extern "C" ds4sci_status ds4sci_cuda_et_copy(ds4sci_cuda_et *et, const ds4sci_copy *copies,
                                             int32_t n, char *err, size_t err_len)
{
    if (!et || n < 0 || (n > 0 && !copies))
        return fail(err, err_len, DS4SCI_ERR_ARG, "ds4sci_cuda_et_copy: bad arguments");
    /* never during a capture (a plan's exchange is never captured, exchange_wire): the copies
       would be recorded, not run */
    if (et->capturing)
        return fail(err, err_len, DS4SCI_ERR_DEVICE,
                    "ds4sci_cuda_et_copy: called during a CUDA graph capture");
    cudaStream_t s = et->stream;
    cudaError_t e = cudaSetDevice(et->device);
    if (e != cudaSuccess)
        return ipc_fail(e, "cudaSetDevice", err, err_len);
    /* on et's stream, idle here (compute waits for it before move(); outside compute nothing
       is queued): in order, and waited for below, so nothing outlives the call */
    for (int32_t k = 0; k < n; k++) {
        if (copies[k].bytes == 0)
            continue;
        e = cudaMemcpyAsync(copies[k].dst, copies[k].src, copies[k].bytes, cudaMemcpyDefault, s);
        if (e != cudaSuccess) {
            char what[96];
            snprintf(what, sizeof(what), "cudaMemcpyAsync of copies[%d] (%zu bytes)", (int)k,
                     copies[k].bytes);
            cudaStreamSynchronize(s); /* the copies queued before it: leave the stream idle */
            return ipc_fail(e, what, err, err_len);
        }
    }
    e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        return ipc_fail(e, "cudaStreamSynchronize (device copies)", err, err_len);
    return DS4SCI_OK;
}
