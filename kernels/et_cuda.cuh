/*
 * et_cuda.cuh - shared, private definitions of the CUDA ET backend (kernels/ only): the
 * device copy of the weights, the workspace, the parameter structs of the kernels, and small
 * device helpers. The orchestration is in et_cuda.cu; each kernel family has its own .cu file
 * with one launcher per kernel declared here.
 *
 * Precision: every activation and weight is fp32; energies, virials and forces are summed in
 * fp64. Scalar physics (cutoff, radial basis, activations) comes from gnn/et_math.h.
 *
 * Layouts (row-major, one row per atom; n = n_total = n_local + n_ghost, nl = n_local; with
 * the built-in exchange's images folded (et->images) n = n_local past the graph build):
 *   x     [n][F]        scalar features
 *   vec   [n][3][F]     vector features, Cartesian axis in the middle
 *   qkv   [n][5F]       q (F) | k (F) | v (3F, head-interleaved as TorchMD-Net's v_proj)
 *   P     [n][3][3F]    vec_proj output: P1 | P2 | P3 per component
 * Edges (receiver-major CSR over owned receivers, self-loop first in every row):
 *   e_src [ne], e_geo [ne] float4 (w_x, w_y, w_z, r) with w = r_src - r_dst, r = |w|.
 */
#ifndef DS4SCI_ET_CUDA_CUH
#define DS4SCI_ET_CUDA_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#include "ds4sci.h"
#include "et_desc.h"
#include "et_math.h"

#define ET_WARPS 4                 /* warps per block of the warp-per-atom kernels */
#define ET_EDGE_WARPS 8            /* warps per block of the fused edge kernels (one copy of the
                                      filters in shared memory per block) */
#define ET_EDGE_CHUNK 4            /* edges whose filters are evaluated together */
#define ET_MAX_K 64                /* largest num_rbf the edge kernels take */
#define ET_NE_SP_MAX 16            /* species present at most for the neighbour embedding by
                                      species (ne_species.cu) */

/* Channels per lane of hidden width F (CPL): lane l holds channels l CPL .. l CPL + CPL - 1
   (F = 16: half a warp, one each). */
static inline __host__ __device__ int edge_cpl(int F) { return F >= 32 ? F / 32 : 1; }

/* ---- device weights of one attention layer (fp32) ----------------------------------------- */
typedef struct et_dlayer {
    float *ln_w, *ln_b;   /* [F], [F] */
    float *qkv_w;         /* [5F][F]: q_proj | k_proj | v_proj rows */
    float *qkv_b;         /* [5F] */
    float *o_w, *o_b;     /* [3F][F], [3F] */
    float *vec_w;         /* [3F][F] */
    float *filt_wt;       /* [K][4][32][CPL] filters, transposed and lane-major: part 0 dk,
                             parts 1..3 dv (value, gate 1, gate 2); see filter_channel() */
    float *filt_b;        /* [4][32][CPL] */
    /* the node GEMMs' weights as gemm_x3.cu's three bf16 pieces [3][N][K] (NULL: the cuBLAS
       path only): for C = A W^T (q/k/v, o_proj, vec_proj) and, t, for C = A W (their
       backward) */
    uint16_t *qkv_w3, *o_w3, *vec_w3, *qkv_w3t, *o_w3t, *vec_w3t;
} et_dlayer;

/* ---- device weights of the whole model -------------------------------------------------- */
typedef struct et_dmodel {
    int F, H, D, K, L, CPL, max_z;
    int act, attn_act, rbf, use_dk, use_dv, ne, vc;
    float cl, cu, alpha, std_scale;
    float head_eps2; /* head_vector_norm_eps^2 (0: TorchMD-Net's plain norm) */
    float *rbf_a, *rbf_b;   /* [K]: expnorm means, betas; gauss offsets, (unused) */
    float rbf_coeff;
    float *emb;             /* [max_z][F] */
    float *ne_emb;          /* [max_z][F] */
    float *ne_wt, *ne_b;    /* distance_proj transposed [K][F], bias [F] */
    float *ne_comb_w, *ne_comb_b; /* combine [F][2F], [F] */
    /* the neighbour embedding by species (ne_species.cu): ne_sp [max_z] the slot of each z
       (0 where absent), then [ET_NE_SP_MAX] the z of each slot; ne_spB [F][S (K + 1)] for the
       S slots in use (room for ET_NE_SP_MAX) */
    int *ne_sp;
    float *ne_spB;
    et_dlayer *layers;      /* host array [L] of device pointers */
    float *on_w, *on_b;     /* out_norm [F], [F] */
    /* head: for each matrix M [out][in], M (original) and Mt [in][out] */
    float *h0_w1, *h0_w1t, *h0_w2, *h0_w2t, *h0_l1, *h0_l1t, *h0_l1b, *h0_l2, *h0_l2t, *h0_l2b;
    float *h1_w1, *h1_w1t, *h1_l1, *h1_l1t, *h1_l1b, *h1_l2, *h1_l2t, *h1_l2b;
    double *atomref;        /* [max_z] (zeros when disabled) */
} et_dmodel;

/* ---- kernel parameter blocks ------------------------------------------------------------- */

/* item counters of the edge passes per step (ds4sci_cuda_et.d_work): one per edge pass launch
   of a step with L layers at most (L forward, L (L - 1) / 2 re-run at checkpoint level 2, 2 L
   backward: receiver or merged, and sender), plus a margin */
#define ET_WORK_SLOTS(L) (3 * (L) + (L) * ((L) - 1) / 2 + 8)
/* owned rows from which the receiver passes run their rows in a Morton order by default */
#define ET_ORDER_MIN 16384
/* Basis values whose exponent is below -ET_RBF_FLUSH (e^-20 = 2^-28.9 of the basis's peak; their
   derivatives below 2^-25 of the largest) are 0 in the GPU edge passes, under fp32's unit
   round-off 2^-24 (et_edge_common.rbf_flush; docs/gpu.md v32, v33: e^-36.04 before) */
#define ET_RBF_FLUSH 20.0f

/* Common edge-kernel inputs. */
typedef struct et_edge_common {
    int n_local, n_total;
    const int *row_off;      /* [nl + 1] CSR offsets (self-loop first in each row) */
    const int *e_src;        /* [ne] sender of each edge */
    const int *e_dst;        /* [ne] receiver of each edge */
    const float4 *e_geo;     /* [ne] (w, r) */
    const int *tr_off;       /* [n + 1] transpose offsets: edges whose sender is atom a */
    const int *tr_edge;      /* [ne] edge ids grouped by sender */
    int K, rbf;              /* num_rbf, et_rbf */
    float cl, cu, alpha;
    const float *rbf_a, *rbf_b; /* [K] */
    float rbf_coeff;
    int act, attn_act, use_dk, use_dv, vc, H, D;
    int F;                   /* hidden channels */
    int fastexp;             /* SiLU's exponential by ex2.approx (DS4SCI_CUDA_FASTEXP=0: expf) */
    int pair;                /* merged backward: one filter backward per pair of reverse edges
                                (DS4SCI_CUDA_PAIR=0: one per edge); see bwd_recv_row */
    int kwin;                /* the FFMA filters' k loops over each chunk's nonzero basis
                                window (stage_rbf_of; default, the same bits; KWIN=0: all K) */
    float rbf_flush;         /* basis values whose exponent (beta (u - mu)^2, expnorm;
                                -coeff (r - offset)^2, gauss) is above this are 0 (et_cuda.cu
                                ET_RBF_FLUSH; DS4SCI_CUDA_RBF_FLUSH=0: INFINITY, none) */
    int tc;                  /* the forward's filters on the float64 tensor cores where
                                edge_fwd_tc.cu takes the layer (default; DS4SCI_CUDA_TC=0 off) */
    int *work;               /* the edge passes (the forward, the merged or receiver and
                                sender backward) take their items (rows; (part, row) when split)
                                from this counter (zero at the launch) instead of round-robin;
                                NULL (DS4SCI_CUDA_DYN=0; =1 and S = 1): round-robin */
    const int *order;        /* [n_local] the receiver passes (forward, merged or receiver
                                backward) run row order[t] as their t-th row (a Morton order of
                                the rows' cells: the rows in flight, a window of consecutive
                                items, are then a compact region whose senders share L2); NULL:
                                row t */
    /* merged backward (default; NULL with DS4SCI_CUDA_MERGED=0, the unfused path, or when its
       shared memory does not fit): see edge_bwd.cu */
    const int *rev;          /* [ne] rev[e] = the edge (t' -> so) of e = (s -> t) in row so,
                                s's owned atom (s, or the owner of a periodic image s),
                                t' = t or an image of t; -1 if none; the self-loop maps to
                                itself (et_edge_rev) */
    const int *tr_off2;      /* [n + 1] offsets of sender a's edges with rev < 0 (not done by
                                the merged pass) in tr_edge2 */
    const int *tr_edge2;     /* [tr_off2[n]] those edges, a by a, each in transpose order */
    const int *tr_dst2;      /* [tr_off2[n]] their receivers (e_dst of each) */
} et_edge_common;

/* One attention layer's edge pass. */
typedef struct et_edge_layer {
    const float *filt_wt, *filt_b; /* see et_dlayer */
    const float *qkv;        /* [n][5F] */
    const float *vec;        /* [n][3][F] layer input vectors (NULL in layer 0: zeros) */
    float *X;                /* [nl][F] out (forward) */
    float *V;                /* [nl][3][F] out (forward) */
    const float *gX;         /* [nl][F] dE/dX (backward) */
    const float *gV;         /* [nl][3][F] dE/dV (backward) = dE/dvec_out */
    float *gqkv;             /* [n][5F] out (backward): g_q (receiver pass), g_k, g_v (sender) */
    float *gvec;             /* [n][3][F] in/out (backward, sender pass): += vec gradient */
    float *gw;               /* [ne][3] in/out (backward, receiver pass): += dE/dw_e */
} et_edge_layer;

/* ---- workspace --------------------------------------------------------------------------- */
typedef struct et_buf {
    void *p;
    size_t cap;     /* bytes */
} et_buf;

/* Buffers whose lifetimes do not overlap share one allocation (et_cuda.cu, compute()):
 * B_P also holds the caller's candidate indices (graph build only); B_GQKV also holds the
 * sort's edge ids and cub scratch (graph build), the embedding concat (embedding) and V
 * (forward); B_H also holds dE/dX and dE/dh (backward). */
enum {
    B_POS, B_Z, B_COFF, B_GOWN, B_ROWCNT, B_ROWOFF, B_ESRC, B_EDST, B_EGEO,
    B_TROFF, B_TREDGE, B_TRKEY, B_CUB,
    B_XS, B_VECS, B_XST, B_H, B_QKV, B_P, B_O,
    B_GX0, B_GV0, B_GV1, B_GQKV, B_GW, B_EA, B_F, B_AV, B_PART,
    B_SPLIT, B_XCH, B_REV, B_TROFF2, B_TREDGE2, B_GPART, B_FOLD, B_KEEP, B_WIRE, B_CAND,
    B_TRDST2, B_STASH, B_ORDER, B_COUNT
};

/* Profile stages (DS4SCI_CUDA_PROFILE). */
enum {
    ST_INPUT, ST_EMBED, ST_NODE_FWD, ST_EDGE_FWD, ST_XCH, ST_HEAD, ST_NODE_BWD, ST_EDGE_RECV,
    ST_EDGE_SEND, ST_FORCES, ST_OUTPUT, ET_NSTAGES
};
#define ET_MAX_EVENTS 256

typedef struct ds4sci_cuda_et {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    et_dmodel m;
    et_buf buf[B_COUNT];
    int *h_scalars;          /* pinned: edge count read-back */
    double *h_red;           /* pinned [8] energy + virial */
    double *h_xch;           /* pinned [n][4F] host exchange staging */
    size_t h_xch_cap;        /* doubles */
    int32_t *h_remote;       /* partial owners: [n_remote] the ghost rows (nl + g) with owner -1 */
    size_t h_remote_cap;
    int n_remote;
    size_t dev_bytes;        /* bytes held in buf[] */
    int num_sms;
    /* optional profile (DS4SCI_CUDA_PROFILE=<file>): per-stage event times */
    char *profile_path;
    cudaEvent_t ev[ET_MAX_EVENTS];
    int ev_stage[ET_MAX_EVENTS];
    int n_ev;
    double stage_ms[ET_NSTAGES];
    double xch_ms[4];        /* caller exchange, host wall time (profile only): device -> host
                                (pack, copy, wait), host loops, the callback, host -> device */
    long xch_calls;
    long profile_calls;
    size_t peak_used;        /* max of (total - free) device memory after a call */
    int edge_unfused;        /* DS4SCI_CUDA_EDGE=unfused: the unfused baseline edge path
                                (edge_unfused.cu) instead of the fused kernels */
    int xch_f32;             /* caller forward exchange of float rows packed two per double
                                (widths F/2, 2F); DS4SCI_CUDA_XCH_F32=0: doubles */
    int fastexp;             /* SiLU in the edge kernels with __expf (default; FASTEXP=0: expf) */
    int pair;                /* merged backward: the filter backward once per pair of reverse
                                edges (default; DS4SCI_CUDA_PAIR=0: once per edge) */
    int kwin;                /* et_edge_common.kwin (DS4SCI_CUDA_KWIN=0: off) */
    int rsort;               /* each row's groups sorted by r (et_graph_fill; default;
                                DS4SCI_CUDA_RSORT=0: the candidates' order) */
    float rbf_flush;         /* et_edge_common.rbf_flush */
    int gemm_x3;             /* node GEMMs by gemm_x3.cu (three-piece bf16 tensor cores, fp32
                                round-off): 1 from x3_min rows (default), 2 always
                                (DS4SCI_CUDA_GEMM=x3), 0 never (=sgemm, or DS4SCI_CUDA_TF32=1) */
    int x3_min;              /* rows (M) from which gemm_x3 = 1 takes a GEMM */
    int tc;                  /* edge forward on the float64 tensor cores (DS4SCI_CUDA_TC=0 off) */
    int dyn;                 /* dynamic items, et_edge_common.work: 2 every edge pass (default),
                                1 the row-split passes (DS4SCI_CUDA_DYN=1), 0 none (=0) */
    int *d_work;             /* [ET_WORK_SLOTS(L)] the item counters, zeroed at each step's
                                start */
    int order;               /* et_edge_common.order: -1 auto (default: from ET_ORDER_MIN owned
                                rows, not in graph mode, checkpoint level < 2), 0 never
                                (DS4SCI_CUDA_ORDER=0), 1 always (=1) */
    int split_force;         /* DS4SCI_CUDA_SPLIT=1|2|4|8: row split factor of the fused
                                layer edge kernels forced (0: chosen per pass, et_edge_split) */
    int images;              /* built-in exchange: periodic images folded into their owned
                                atoms past the graph build (default 1; DS4SCI_CUDA_IMAGES=rows:
                                0, ghost rows refreshed between layers) */
    int merged;              /* DS4SCI_CUDA_MERGED=1: merged receiver + sender backward pass
                                (edge_bwd.cu, filters once per unordered pair; default off) */
    int checkpoint;          /* layer inputs recomputed in the backward instead of kept
                                (built-in exchange only): 1 every other one, 2 all but the
                                first (deep: O(L^2) layer passes); -1 auto (default: 1 where
                                keeping all would take more than half of mem_at_create, 2
                                where level 1 would not fit in it), DS4SCI_CUDA_CHECKPOINT=0|1|2
                                forces a level */
    int keep;                /* node work the backward would repeat, kept from the forward
                                instead (never with checkpointing): -1 auto (default: the
                                most that keeps the workspace under 85% of mem_at_create, at
                                most keep_cap), 0 none, 1 q/k/v, 2 q/k/v, vec_proj's P and o
                                (DS4SCI_CUDA_KEEP=0|1|2 forces a level) */
    int keep_cap;            /* highest auto keep level (2; lowered for good when a call ran
                                out of memory with a higher one and was run again, compute()) */
    int call_keep;           /* this call's keep level once chosen (-1 before) */
    int call_xch;            /* exchanges this call has made (a call is run again only before
                                its first: the caller's exchange is collective) */
    size_t mem_cap;          /* DS4SCI_CUDA_MEM_CAP=<bytes>: the workspace may not hold more
                                (tests: memory taken by another process after the context was
                                made); 0: no cap */
    int resident_nbr;        /* the caller's candidate list kept in B_CAND between calls and
                                uploaded only when the caller does not promise the previous
                                one (ds4sci_ctx_same_neighbors): -1 auto (default: once the
                                caller has made a promise, as the LAMMPS plugin does between
                                its neighbour builds; callers that never promise keep the list
                                in B_P's space and pay no memory for it), 1 always, 0 never
                                (DS4SCI_CUDA_RESIDENT_NBR=1|0) */
    int promised;            /* the caller has promised the same list at least once */
    int res_now;             /* this call keeps the list in B_CAND (compute_input) */
    int same_nbr;            /* the promise for the current call (backend same_neighbors) */
    int device_checks;       /* candidate indices and overlapping atoms checked by the graph
                                kernels instead of api.c's host loop (the first bad receiver
                                in d_check, read back with the results): 1 (default), 0 with
                                DS4SCI_CUDA_DEVICE_CHECKS=0 (api.c checks) */
    int *d_check;            /* [1] device: lowest bad receiver, INT_MAX-ish when none */
    long long bad_receiver;  /* of the last call's failed device check, -1: none */
    int cand_valid;          /* B_CAND and B_COFF hold the list of the last successful call
                                (only where that call kept it there: res_now) */
    int wire;                /* the caller's wire plan (ds4sci.h) for the other processes'
                                rows, packed on the GPU, one block per direction: -1 (default)
                                where the plan takes device buffers (CUDA IPC), else the
                                callbacks; DS4SCI_CUDA_WIRE=1 always (pinned host buffers
                                where the plan has no device buffers), 0 never */
    int *h_wire;             /* host staging of the plan's concatenated lists */
    size_t h_wire_cap;       /* ints */
    int wire_ns, wire_nr;    /* this call's plan: send entries, received rows */
    size_t mem_at_create;    /* free device memory after the context's weights were uploaded */
    int node_chunk;          /* owned rows per chunk of the node work that needs o and P
                                (update, its backward, the head): their buffers hold one
                                chunk (DS4SCI_CUDA_NODE_CHUNK, default 262144) */
    long long last_n, last_nt, last_ne; /* rows on the device, atoms given, edges */
    int last_ck, last_keep;  /* the last call's checkpoint and keep levels (profile) */
    long long step_ne;       /* edge count (or its bound) of the current call */
    /* CUDA graph of the step (built-in exchange only; by default for <= ET_GRAPH_AUTO_ATOMS
       owned atoms; docs/gpu.md "CUDA graph of a step"): in graph mode the edge buffers are
       sized by the candidate bound nl + candidates, so no edge count is read back, and the
       device work from the edge list to the totals is captured once and replayed while the
       key below is unchanged */
    int graph;               /* 0 off (DS4SCI_CUDA_GRAPH=0, or after any capture or
                                instantiate failure), 1 every size (=1), 2 automatic: small
                                systems only (default) */
    int capturing;           /* a capture is in progress: ensure() must not reallocate */
    int capture_grew;        /* ensure() refused to grow a buffer during this capture */
    int graph_update;        /* on a key change, capture at once and update gexec in place
                                (cudaGraphExecUpdate); DS4SCI_CUDA_GRAPH_UPDATE=0: a normal
                                call first, the next call with the key captures anew */
    long key_calls;          /* calls with the current key (this one included) */
    cudaGraphExec_t gexec;   /* the captured step (NULL: none) */
    int gkey_valid;          /* gkey holds the key of the last successful call */
    long long gkey[5 + 2 * B_COUNT]; /* n_local, n_ghost, candidates, virial requested,
                                        species of the neighbour embedding (ne_S), then
                                        pointer and capacity of every buffer */
    void *blas_ws;           /* cuBLAS workspace set on the handle before the first graph-mode
                                call (no allocation by cuBLAS during a capture) */
    long graph_captures, graph_replays, graph_updates;
    /* the side stream (DS4SCI_CUDA_SIDE, default on; docs/gpu.md v34): outside graph mode,
       with the node work in one chunk, vec_proj's GEMM runs beside the layer's LayerNorm,
       q/k/v and edge pass, and its backward beside the o_proj backward, on stream2 with a
       cuBLAS handle of its own (blas2), forked from and joined to stream by the events
       ev_fork, ev_join */
    int side;
    /* the neighbour embedding by species (ne_species.cu; DS4SCI_CUDA_NE_SPECIES=0: the
       per-edge filter kernels k_ne_fwd, k_ne_bwd): ne_S the species of this call (0: the
       per-edge kernels), ne_S_built and ne_sp_z [ET_NE_SP_MAX] those m.ne_sp and m.ne_spB
       hold; host scratch h_seen [max_z] and h_map [max_z + ET_NE_SP_MAX] (m.ne_sp's image) */
    int ne_species, ne_S, ne_S_built;
    int ne_sp_z[ET_NE_SP_MAX];
    long ne_sp_calls, ne_sp_builds; /* successful calls by species, B made (profile) */
    unsigned char *h_seen;
    int *h_map;
    cudaStream_t stream2;
    cublasHandle_t blas2;
    cudaEvent_t ev_fork, ev_join;
} ds4sci_cuda_et;

/* ---- error helpers ----------------------------------------------------------------------- */
#define ET_LAUNCH_CHECK() cudaGetLastError()

/* ---- device helpers ---------------------------------------------------------------------- */
#ifdef __CUDACC__
static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the `width` consecutive lanes that share a head (width a power of two). */
static __device__ __forceinline__ float group_sum(float v, int width)
{
    /* width = 32 / H lanes per head: 4 for 8 heads (TorchMD-Net's default) unrolled
       (as a loop over the run-time width each step cost ~8 instructions with a divergence check:
       ncu of the merged pass, 4 group sums per edge); the same butterfly order either way */
    if (width == 4) {
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        return v + __shfl_xor_sync(0xffffffffu, v, 1);
    }
    for (int o = width >> 1; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float act_f(int a, float x, float *d)
{
    return et_activate_grad_f((et_act)a, x, d);
}

/*
 * Radial basis function k of an edge of length r: expnorm with the cosine envelope of lower
 * cutoff 0, or gauss. df (non-NULL) gets its derivative in r.
 */
static __device__ __forceinline__ float rbf_k(const et_edge_common &c, float r, float ak, float bk,
                                              float *df)
{
    if (c.rbf == ET_RBF_EXPNORM) {
        float dphi;
        float phi = et_cutoff_f(r, 0.0f, c.cu, &dphi);
        float u = expf(c.alpha * (c.cl - r));
        return et_expnorm_k_f(u, phi, dphi, c.alpha, ak, bk, df);
    }
    float x = r - ak;
    float v = expf(c.rbf_coeff * (x * x));
    if (df)
        *df = v * 2.0f * c.rbf_coeff * x;
    return v;
}
#endif

/*
 * Flat index into a [3F]-wide, head-interleaved value row of the channel that lane `lane`
 * holds as its j-th scalar channel f = lane * CPL + j, for part p (0 value, 1 gate 1, 2 gate 2).
 */
#define ET_VIDX(f, p, D) (((f) / (D)) * 3 * (D) + (p) * (D) + ((f) % (D)))

/* ---- launchers (each returns cudaGetLastError after its launches) --------------------------- */
#ifdef __cplusplus
extern "C" {
#endif
/* graph.cu */
/* bad != NULL (the input checks on the device): candidates j outside [0, n) or == i, or
   closer than sqrt(min2), are not counted and the lowest such receiver goes into *bad by
   atomicMin (*bad set above n_local before) */
cudaError_t et_graph_count(cudaStream_t s, int nl, const double *pos, const int64_t *coff,
                           const int *cidx, double cl2, double cu2, int *row_cnt, int n,
                           double min2, int *bad);
/* gown: the built-in exchange's ghost owners [n - nl] (orders each row by the senders' owned
   atoms), NULL with a caller exchange; guard (the input checks on the device): candidates
   outside [0, n) or == i are skipped (as et_graph_count skipped them); fold (with gown): each
   periodic image's sender index is its owned atom's (e_src < nl: the images' rows are not
   needed past the graph build; the geometry is the image's, r = 0 still only the self-loop);
   rsort: each row's two groups sorted by r (narrower basis windows per chunk) */
cudaError_t et_graph_fill(cudaStream_t s, int nl, const double *pos, const int64_t *coff,
                          const int *cidx, double cl2, double cu2, const int *row_off,
                          const int *gown, int *e_src, int *e_dst, float4 *e_geo, int n,
                          double min2, int guard, int fold, int rsort);
cudaError_t et_iota(cudaStream_t s, int n, int *out);
cudaError_t et_count_by(cudaStream_t s, int ne, const int *key, int *cnt);

/* gemm_x3.cu: C[M][N] = A[M][K] W'^T (+ C: beta 1; 0 or 1 only; + bias[N] on every row where
   bias is not NULL, beta 0 only), W' [3][N][K] bf16 pieces
   made by et_gemm_x3_split (trans 0: from W [N][K] with row stride ld; 1: from B [K][N], W' =
   B^T); et_gemm_x3_ok: the shapes and alignments it takes; et_gemm_x3_init once per device */
cudaError_t et_gemm_x3_init(void);
/* the split of one value on the host, by the kernels' code (bf16 bits x0, x1, x2) */
void et_gemm_x3_split_value(float x, uint16_t out[3]);
cudaError_t et_gemm_x3_split(cudaStream_t s, int N, int K, const float *W, int ld, int trans,
                             uint16_t *out);
int et_gemm_x3_ok(int M, int N, int K, const float *A, const float *C);
/* the kernel et_gemm_x3 runs: v 0 the mma.sync one, 1 the wgmma one (sm_90 with sm_90a code),
   else unchanged; returns the one now in use, -1 for 1 where it cannot run */
int et_gemm_x3_variant(int v);
cudaError_t et_gemm_x3(cudaStream_t s, int M, int N, int K, const float *A, const uint16_t *W3,
                       float beta, const float *bias, float *C);

/* node.cu */
cudaError_t et_layernorm(cudaStream_t s, int n, int F, const float *x, const float *w,
                         const float *b, float *y);
cudaError_t et_layernorm_bwd(cudaStream_t s, int n, int F, const float *x, const float *w,
                             const float *gy, float *gx);
cudaError_t et_node_pre(cudaStream_t s, int n, int F, float *qkv, const float *qkv_b);
cudaError_t et_node_update(cudaStream_t s, int n, int nl, int F, const float *x,
                           const float *vec, const float *o, const float *o_b, const float *P,
                           const float *V, float *x_next, float *vec_next);
cudaError_t et_node_bwd(cudaStream_t s, int n, int nl, int F, const float *gx, const float *gvec,
                        float *gvec_out, float *o, const float *o_b, float *P);
cudaError_t et_add_bias(cudaStream_t s, int n, int w, float *y, const float *b);
cudaError_t et_embed_cat(cudaStream_t s, int nl, int F, const int *z, const float *emb,
                         float *cat);
cudaError_t et_embed_plain(cudaStream_t s, int nl, int F, const int *z, const float *emb,
                           float *x);
/* built-in exchange of x [n][F] and (vec non-NULL) vec [n][3F] in one launch */
cudaError_t et_ghost_gather(cudaStream_t s, int nl, int ng, int F, const int *owner, float *x,
                            float *vec);
/* the adjoint, in a fixed order: key / ghost = the ghosts sorted by owner (stable; et_fold_keys
   makes the sort's input: key nl for owner -1, which the fold leaves alone) */
cudaError_t et_ghost_fold(cudaStream_t s, int nl, int ng, int F, const int *key, const int *ghost,
                          float *x, float *vec);
cudaError_t et_fold_keys(cudaStream_t s, int nl, int ng, const int *owner, int *key, int *ghost);
cudaError_t et_pack(cudaStream_t s, int row0, int rows, int F, const float *x, const float *vec,
                    double *out);
cudaError_t et_unpack(cudaStream_t s, int row0, int rows, int F, const double *in, float *x,
                      float *vec, int add);
cudaError_t et_zero_rows(cudaStream_t s, int row0, int rows, int w, float *a);
/* the same rows as floats: the packed forward exchange (DS4SCI_CUDA_XCH_F32) */
cudaError_t et_pack_f32(cudaStream_t s, int row0, int rows, int F, const float *x,
                        const float *vec, float *out);
cudaError_t et_unpack_f32(cudaStream_t s, int row0, int rows, int F, const float *in, float *x,
                          float *vec);

/* exchange.cu: listed rows (the caller's send_rows hint, the partial owners' remote ghosts)
   packed for a host exchange */
cudaError_t et_pack_rows(cudaStream_t s, const int *rows, int n, int F, const float *x,
                         const float *vec, double *out);
cudaError_t et_unpack_rows_add(cudaStream_t s, const int *rows, int n, int F, const double *in,
                               float *x, float *vec);
cudaError_t et_pack_rows_f32(cudaStream_t s, const int *rows, int n, int F, const float *x,
                             const float *vec, float *out);
cudaError_t et_unpack_rows(cudaStream_t s, const int *rows, int n, int F, const double *in,
                           float *x, float *vec);
cudaError_t et_unpack_rows_f32(cudaStream_t s, const int *rows, int n, int F, const float *in,
                               float *x, float *vec);
cudaError_t et_unpack_rows_add_f32(cudaStream_t s, const int *rows, int n, int F,
                                   const float *in, float *x, float *vec);
/* the wire plan's reverse: in[q] added into row key[p] for the sorted entries (exchange.cu) */
cudaError_t et_add_sorted(cudaStream_t s, int n, int F, const int *key, const int *entry,
                          const float *in, float *x, float *vec);

/*
 * Row split of the fused layer edge kernels (edge_split.cu; docs/gpu.md "Row split for small
 * systems"). With split S > 1 a pass runs S work items per row (receiver t, or sender s in the
 * sender pass): item (p, t) walks the chunks e0 + p E, e0 + (p + S) E, ... of the row and
 * writes its per-row sums to part[p][row][W] (W = 4F forward: X | V; F receivers: g_q; 7F
 * senders: g_k | g_v in gqkv's layout | g_vec) instead of the outputs; then et_split_sum adds
 * the S partials in the order p = 0 .. S-1 and stores ('=') or adds ('+=', g_vec) them where
 * S = 1 writes. Deterministic; per-edge outputs (dE/dw) are unchanged. S = 1 runs the same code
 * and order as without the split.
 */
typedef struct et_edge_split {
    int fwd, recv, send;     /* split factors, each 1, 2, 4 or 8 */
    size_t part_floats;      /* floats of part the largest of them needs (0 when all are 1) */
} et_edge_split;
/* Split factors for this model and system: force (1, 2, 4, 8) for every pass, or (0) per pass
   the smallest S with rows x S >= 4 x the kernel's resident warps, at most 8 (1 from there up). */
cudaError_t et_edge_split_plan(int CPL, const et_edge_common *c, int force, et_edge_split *sp);
/* part [S][rows][w0 + w1] summed over p in order; column j < w0 goes to d0[row * ld0 + j],
   column w0 + j to d1[row * ld1 + j]; add0 / add1: += instead of =. */
cudaError_t et_split_sum(cudaStream_t s, int S, int rows, const float *part, float *d0, int ld0,
                         int w0, int add0, float *d1, int ld1, int w1, int add1);

/* graph.cu: keys of the receivers' Morton order (et_edge_common.order): key[i] = the Morton
   code of owned atom i's cell (cells of side h, 10 bits a dimension, wrapping), val[i] = i */
cudaError_t et_order_keys(cudaStream_t s, int nl, const double *pos, double h, int *key,
                          int *val);
/* edge_fwd.cu (split, part: see et_edge_split; part unused when split is 1) */
/* edge_fwd_tc.cu: the forward with the filters on the float64 tensor cores (c->tc) */
int et_edge_forward_tc_ok(int CPL, int split, const et_edge_common *c);
cudaError_t et_edge_forward_tc(cudaStream_t s, int CPL, const et_edge_common *c,
                               const et_edge_layer *l);
cudaError_t et_edge_forward(cudaStream_t s, int CPL, int grid, int split, float *part,
                            const et_edge_common *c, const et_edge_layer *l);
/* resident warps of the forward kernel on this device (the row split's measure) */
cudaError_t et_edge_forward_slots(int CPL, const et_edge_common *c, int *slots);
cudaError_t et_ne_forward(cudaStream_t s, int CPL, int grid, const et_edge_common *c,
                          const float *ne_wt, const float *ne_b, const float *ne_emb,
                          const int *z, float *cat);
/* bytes of dynamic shared memory of a layer edge kernel with part_count filter parts (with_back:
   the backward's per-warp scratch too): edge_common.cuh's edge_smem_bytes */
size_t et_edge_smem(int F, int K, int part_count, int with_back);

/* edge_bwd.cu (split, part: see et_edge_split) */
cudaError_t et_edge_backward_recv(cudaStream_t s, int CPL, int grid, int split, float *part,
                                  const et_edge_common *c, const et_edge_layer *l);
cudaError_t et_edge_backward_send(cudaStream_t s, int CPL, int grid, int split, float *part,
                                  const et_edge_common *c, const et_edge_layer *l);
/* Merged backward (c->rev set): et_edge_backward_recv runs the merged pass (receiver work of
   each owned row and sender work of the reverse edges; with split S > 1 partial rows of 8F,
   gqkv's 5F | g_vec 3F), et_edge_backward_send only the edges not covered (tr_off2 / tr_edge2,
   S = 1 whatever its split), adding into owned rows. et_edge_merged_ok: 1 when the
   merged kernel fits this model (shared memory), else 0 (then leave c->rev NULL). */
int et_edge_merged_ok(int CPL, const et_edge_common *c);
/* graph.cu: rev of et_edge_common from the edge list and transpose index (cand: [ne] ints of
   scratch), and rest_cnt [n + 1] (the last 0) the count of each sender's edges with rev < 0,
   whose exclusive scan is tr_off2; gown (the built-in exchange's ghost owners, else NULL)
   pairs edges with periodic images */
cudaError_t et_edge_rev(cudaStream_t s, int nl, int n, int ne, const int *row_off,
                        const int *e_src, const int *e_dst, const float4 *e_geo, const int *gown,
                        const int *tr_off, const int *tr_edge, int *cand, int *rev,
                        int *rest_cnt);
/* tr_edge2 and tr_dst2 (their receivers) from rev and tr_off2 (the exclusive scan of
   et_edge_rev's rest_cnt) */
cudaError_t et_edge_rest(cudaStream_t s, int n, const int *tr_off, const int *tr_edge,
                         const int *rev, const int *e_dst, const int *tr_off2, int *tr_edge2,
                         int *tr_dst2);
cudaError_t et_edge_backward_slots(int CPL, const et_edge_common *c, int *recv_slots,
                                   int *send_slots);
cudaError_t et_ne_backward(cudaStream_t s, int CPL, int grid, const et_edge_common *c,
                           const float *ne_wt, const float *ne_b, const float *ne_emb,
                           const int *z, const float *gm, float *gw);
/* ne_species.cu: the neighbour embedding by species (S species present, J = S (K + 1)):
   et_ne_species_ok whether it takes (F, K, S); et_ne_species_b its matrix B [F][J] from the
   weights and the slots' z (sp_z [S], device); et_ne_species_forward Y [nl][J], the caller's
   GEMM m = Y B^T; the caller's GEMM H = dE/dm B, et_ne_species_backward adds dE/dw to gw.
   map: [max_z] slot of each z */
int et_ne_species_ok(int F, int K, int S);
cudaError_t et_ne_species_b(cudaStream_t s, int F, int K, int S, const int *sp_z,
                            const float *ne_wt, const float *ne_b, const float *ne_emb,
                            float *B);
cudaError_t et_ne_species_forward(cudaStream_t s, const et_edge_common *c, const int *map,
                                  const int *z, int J, float *Y);
cudaError_t et_ne_species_backward(cudaStream_t s, const et_edge_common *c, const int *map,
                                   const int *z, int J, const float *H, float *gw);

/* edge_unfused.cu: the unfused baseline (benchmark only; DS4SCI_CUDA_EDGE=unfused). Same
 * inputs and outputs as the fused launchers above; per-edge tensors are materialised in
 * global memory (scratch owned by edge_unfused.cu) and aggregated with cuSPARSE.
 * et_edge_backward_unfused does the work of both fused backward passes (receivers and
 * senders). et_unfused_release frees its scratch. */
cudaError_t et_edge_forward_unfused(cudaStream_t s, const et_edge_common *c,
                                    const et_edge_layer *l);
cudaError_t et_edge_backward_unfused(cudaStream_t s, const et_edge_common *c,
                                     const et_edge_layer *l);
void et_unfused_release(void);

/* head.cu: the head's elementwise and per-atom kernels; its SGEMMs are in et_cuda.cu */
cudaError_t et_head_norm_in(cudaStream_t s, int nl, int F, const float *x, const float *w,
                            const float *b, float *cat0);
cudaError_t et_head_bias_act(cudaStream_t s, int rows, int w, int act, float *y, const float *b,
                             float *a);
cudaError_t et_head_vnorm(cudaStream_t s, int nl, int w, const float *u, float *nrm, int ldn,
                          float eps2);
cudaError_t et_head_gate0(cudaStream_t s, int nl, int Fh, int act, float *y20, const float *b,
                          const float *w0, float *cat1, float *v1);
cudaError_t et_head_energy(cudaStream_t s, int nl, int Fh, int act, const float *y1p1,
                           const float *b1, const float *l2, const float *b2, float std_scale,
                           const double *atomref, const int *z, double *atom_e, float *g1);
cudaError_t et_head_vnorm_bwd(cudaStream_t s, int nl, int w, const float *u, const float *nrm,
                              int ldn, const float *gn, int ldg, float *gu);
cudaError_t et_head_gate0_bwd(cudaStream_t s, int nl, int Fh, int act, const float *y20,
                              const float *gcat1, const float *gv1, const float *w0, float *gy20,
                              float *gw0);
cudaError_t et_head_dact(cudaStream_t s, int rows, int w, int act, const float *y, float *g);
cudaError_t et_head_norm_out(cudaStream_t s, int nl, int F, const float *x, const float *w,
                             const float *gcat0, float *gx);

/* forces.cu */
/* The sender ends' terms: from the transpose index (tr_off, tr_edge), or with rev (the merged
   path, which keeps no transpose index past the graph build: tr_edge NULL) from the reverses of
   each row's edges and the uncovered edges (tr_off2, tr_edge2). */
cudaError_t et_forces(cudaStream_t s, int nl, int n, const int *row_off, const int *tr_off,
                      const int *tr_edge, const int *rev, const int *tr_off2,
                      const int *tr_edge2, const float4 *e_geo, const float *gw,
                      double *forces, double *atom_virial, int n_part, double *part);
cudaError_t et_sum_energy(cudaStream_t s, int nl, const double *atom_e, int n_part,
                          double *part);
cudaError_t et_reduce_parts(cudaStream_t s, int n_part, const double *part, double *out7);
#ifdef __cplusplus
}
#endif

#endif /* DS4SCI_ET_CUDA_CUH */
