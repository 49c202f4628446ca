/*
 * et_cpu_internal.h - shared by the two halves of the CPU reference backend: et_cpu.c
 * (workspace, edges, exchange, forces and virial, driver) and et_cpu_layers.c (the model
 * math: embedding, attention layers, head, forward and backward). gnn/ only.
 */
#ifndef DS4SCI_ET_CPU_INTERNAL_H
#define DS4SCI_ET_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ds4sci.h"
#include "et_desc.h"

/* Per-edge geometry record: w (3), r, unit vector d (3), cutoff c, c'(r). */
enum { GEO_W = 0, GEO_R = 3, GEO_D = 4, GEO_C = 7, GEO_DC = 8, GEO_N = 9 };
/* Per-edge geometric gradient accumulators: dE/dc, dE/dd (3). */
enum { GG_C = 0, GG_D = 1, GG_N = 4 };

/* Upper bound of the optional per-edge filter cache (see cpu_state.e_filt). */
#define ET_CPU_FILTER_CACHE_BYTES ((size_t)256 << 20)

typedef struct cpu_state {
    const et_desc *d;
    int n_threads;
    size_t scratch_per_thread; /* doubles */
    int64_t n_allocs;

    size_t cap_atoms, cap_edges; /* capacities of the atom- and edge-sized arrays */

    /* atom arrays, n = n_local + n_ghost rows */
    double *xv;        /* [L+1][n][4F] layer-l input: x (F) then vec (3 x F, c-major) */
    double *qkv;       /* [L][n][5F] q (F), k (F), v (3F, head-interleaved) */
    double *lns;       /* [L][n][2] LayerNorm mean and 1/sqrt(var + eps) */
    double *o12;       /* [L][n][2F] o1, o2 of owned atoms (o3 is not needed backward) */
    double *g;         /* [n][4F] dE / d(layer output) (x, vec) */
    double *g2;        /* [n][4F] dE / d(layer input) (x, vec) */
    double *gagg;      /* [n][4F] dE / d(X, V) of owned receivers */
    double *gqkv;      /* [n][5F] dE / d(q, k, v) */
    double *tmpf;      /* [n][F] width-F exchange buffer */
    double *eatom;     /* [n] per-atom model output e_i (before std, atomref) */
    double *eg;        /* [n] per-atom scratch for serial sums */
    int64_t *recv_off; /* [n+1] edges of owned receiver t: [recv_off[t], recv_off[t+1]) */
    int64_t *send_off; /* [n+1] transpose: edges with sender a: send_edge[send_off[a] ..] */
    int64_t *send_cur; /* [n] fill cursor */

    /* edge arrays, self-loops included (first edge of each receiver) */
    int32_t *e_src, *e_dst; /* [E] sender s, receiver t */
    int64_t *send_edge;     /* [E] */
    double *e_geo;          /* [E][GEO_N] */
    double *e_f, *e_df;     /* [E][K] RBF and its r-derivative */
    double *e_gf;           /* [E][K] dE/df */
    double *e_gg;           /* [E][GG_N] dE/dc, dE/dd */
    double *e_gw;           /* [E][3] dE/dw */
    double *e_a, *e_gap;    /* [E][H] attention weight A and dE/da_pre of the current layer */

    double *scratch; /* [n_threads][scratch_per_thread] */

    /* Edge filter cache. filt_mode 2: every layer's filters, [L][E] records of 8F doubles:
       dk (F), dv (3F), act'(dk pre) (F), act'(dv pre) (3F), computed once in the forward;
       1: the current layer's values, [E] records of 4F (dk, dv), from the backward's
       receiver pass to its sender pass; 0: none, each pass recomputes them. The largest mode that
       fits in ET_CPU_FILTER_CACHE_BYTES and filt_max is used; all give the same numbers. */
    double *e_filt;
    size_t cap_filt; /* doubles */
    int filt_mode, filt_max;
    int64_t n_edges; /* E of the current call */

    /* Transposed copies ([in][out]) of the weights applied per atom and per edge, so the
       forward products run as contiguous axpy's (same summation order as the dot form). */
    struct cpu_wt {
        double *q, *k, *v, *o, *vec, *dk, *dv;
    } * wt;                      /* [L] */
    double *ne_dp_t, *ne_comb_t; /* neighbour embedding distance_proj, combine */
    double *wpool;
} cpu_state;

#define CPU_ATOM_ARRAYS(X)                                                                         \
    X(xv, double, (size_t)(L + 1) * 4 * F)                                                         \
    X(qkv, double, (size_t)L * 5 * F)                                                              \
    X(lns, double, (size_t)L * 2)                                                                  \
    X(o12, double, (size_t)L * 2 * F)                                                              \
    X(g, double, (size_t)4 * F)                                                                    \
    X(g2, double, (size_t)4 * F)                                                                   \
    X(gagg, double, (size_t)4 * F)                                                                 \
    X(gqkv, double, (size_t)5 * F)                                                                 \
    X(tmpf, double, (size_t)F)                                                                     \
    X(eatom, double, 1)                                                                            \
    X(eg, double, 1)                                                                               \
    X(recv_off, int64_t, 1)                                                                        \
    X(send_off, int64_t, 1)                                                                        \
    X(send_cur, int64_t, 1)

#define CPU_EDGE_ARRAYS(X)                                                                         \
    X(e_src, int32_t, 1)                                                                           \
    X(e_dst, int32_t, 1)                                                                           \
    X(send_edge, int64_t, 1)                                                                       \
    X(e_geo, double, GEO_N)                                                                        \
    X(e_f, double, (size_t)K)                                                                      \
    X(e_df, double, (size_t)K)                                                                     \
    X(e_gf, double, (size_t)K)                                                                     \
    X(e_gg, double, GG_N)                                                                          \
    X(e_gw, double, 3)                                                                             \
    X(e_a, double, (size_t)H)                                                                      \
    X(e_gap, double, (size_t)H)

static inline int et_cpu_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* et_cpu_layers.c. Each runs its own OpenMP parallel region over atoms. */

/* Layer-0 x into st->tmpf: E[z] (+ NeighborEmbedding for owned atoms, ET_SPEC section 3). */
void et_cpu_embed_forward(cpu_state *st, const ds4sci_system *sys);
/* Attention layer l forward: node work for all atoms, messages into owned atoms, residual
   update of the owned rows of layer l+1's input. */
void et_cpu_layer_forward(cpu_state *st, const ds4sci_system *sys, int l);
/* out_norm and head for owned atoms: st->eatom and st->g (dE/d last layer output). */
void et_cpu_head(cpu_state *st, const ds4sci_system *sys);
/* Attention layer l backward: st->g (dE/d output) -> st->g2 (dE/d input, ghost rows to be
   folded) and the per-edge gradient accumulators. */
void et_cpu_layer_backward(cpu_state *st, const ds4sci_system *sys, int l);
/* NeighborEmbedding backward from gx0 = dE/d layer-0 x (owned rows folded). */
void et_cpu_embed_backward(cpu_state *st, const ds4sci_system *sys, const double *gx0);

#endif /* DS4SCI_ET_CPU_INTERNAL_H */
