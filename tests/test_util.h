/*
 * test_util.h - helpers shared by the Check suites: random ET model descriptions for any
 * option set (no model file needed), random atom configurations, and result buffers.
 */
#ifndef DS4SCI_TEST_UTIL_H
#define DS4SCI_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "ds4sci.h"
#include "et_desc.h"

/* Deterministic PRNG (splitmix64). */
typedef struct tu_rng {
    uint64_t s;
} tu_rng;
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r); /* [0, 1) */
double tu_range(tu_rng *r, double lo, double hi);
double tu_normal(tu_rng *r);

/* Options of a random model; tu_opts_default gives a small model (F 16, H 4, K 8, L 2,
   max_z 10, silu, expnorm, both, neighbour embedding, vector_cutoff, cutoff 0 .. 4). */
typedef struct tu_opts {
    int F, H, K, L, max_z;
    et_act act, attn_act;
    et_rbf rbf;
    int dist_influence;
    int neighbor_embedding;
    int vector_cutoff;
    double cutoff_lower, cutoff_upper;
    int atomref;
    double std, mean;
    double head_eps;     /* head_vector_norm_eps (default 0: TorchMD-Net's plain norm) */
    double weight_scale; /* multiplies every random weight (default 1) */
    uint64_t seed;
} tu_opts;
void tu_opts_default(tu_opts *o);

/* One option combination from an index, on top of tu_opts_default: as idx runs over
   0 .. TU_N_COMBOS-1, every combination of rbf, neighbour embedding, distance_influence,
   vector_cutoff and cutoff_lower (0 or > 0), with all activation pairs, Atomref, std/mean,
   the smoothed head norm (head_eps 0.3) and a second model shape spread over them. */
#define TU_N_COMBOS 64
void tu_opts_combo(tu_opts *o, int idx);
const char *tu_opts_describe(const tu_opts *o, char *buf, size_t len);

/* A random description (all weights owned by it); free with tu_desc_free. */
et_desc *tu_desc_new(const tu_opts *o);
void tu_desc_free(et_desc *d);

/* n random positions in a cube of side `side` (origin at 0), no pair closer than min_dist
   (periodic in the cube if periodic != 0). z uniform in [1, max_z). */
void tu_random_atoms(tu_rng *r, int n, double side, double min_dist, int periodic, int max_z,
                     double *pos, int32_t *z);

/* Result buffers sized for a system. */
typedef struct tu_result {
    ds4sci_result r;
    int32_t n_local, n_total;
    int32_t *ghost_owner; /* copy of the system's ghost_owner ([n_total - n_local]), NULL if it
                             had none: ghost rows are copies whose sums into owners are the
                             physical forces and virials (ds4sci.h, ds4sci_result) */
} tu_result;
void tu_result_alloc(tu_result *t, const ds4sci_system *sys);
void tu_result_free(tu_result *t);

/* Context over a description (CPU backend, n_threads threads, 0 = default); aborts the
   test on failure. */
ds4sci_ctx *tu_ctx_cpu(const et_desc *d, int n_threads);

/* Energy only of a system (built-in exchange); aborts the test on failure. */
double tu_energy(ds4sci_ctx *ctx, const ds4sci_system *sys);

/* A system whose arrays the test may modify (a deep copy of a graph's system). */
typedef struct tu_system {
    ds4sci_system s;
    double *pos;
    int32_t *z;
    int64_t *nbr_offset;
    int32_t *nbr_index;
    int32_t *ghost_owner;
} tu_system;
void tu_system_copy(tu_system *dst, const ds4sci_system *src);
void tu_system_free(tu_system *t);
/* Move owned atom i and all its ghost copies by delta. */
void tu_system_displace(tu_system *t, int32_t i, int c, double delta);

/* Max |a - b| over n values, and the RMS of a. */
double tu_max_abs_diff(const double *a, const double *b, size_t n);
double tu_rms(const double *a, size_t n);

/* A random cluster (open boundaries) or periodic cube, graph built with a skin so the
   candidate list stays valid for finite-difference displacements. */
typedef struct tu_fixture {
    tu_opts o;
    et_desc *d;
    ds4sci_ctx *ctx;
    ds4sci_graph *g;
    tu_system sys;
    double box[9];
    int periodic;
} tu_fixture;

/* Random atoms (min distance 1, none within 1e-3 of a cutoff, pairs >= 0.9 apart in the
   tilted periodic box) with a random model of options o on a 1-thread CPU context; the
   graph has a 0.5 skin so finite-difference moves keep it valid. periodic: a triclinic
   box of edge `side`. */
void tu_fixture_init(tu_fixture *f, const tu_opts *o, int n_atoms, double side, int periodic,
                     uint64_t seed);
void tu_fixture_free(tu_fixture *f);
/* Compute into res (allocated here) and fold ghost forces into owners; returns the energy. */
double tu_fixture_compute(tu_fixture *f, tu_result *res);

#endif /* DS4SCI_TEST_UTIL_H */
