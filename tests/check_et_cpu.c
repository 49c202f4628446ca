/*
 * check_et_cpu.c - the CPU reference backend against independent expectations: finite
 * differences of its own energy (forces, virial), symmetries (translation, rotation,
 * permutation), additivity for isolated atoms, the 2-process ghost exchange against one
 * process, and input validation. Models are random (test_util.c), so every option of
 * ET_SPEC is exercised without a model file.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ds4sci.h"
#include "et_cpu.h"
#include "test_util.h"

/* Finite differences: the five-point stencil (error h^4 E^(5) / 30) with h = 1e-5, whose
   rounding error is ~ eps |E| / h ~ 1e-11 |E|. Random models in boxes smaller than two
   cutoffs have large third derivatives (the three-point stencil's h^2 E'''/6 reached 1e-5
   relative), which the five-point stencil removes. 1e-6 relative to the RMS force is then
   a margin of several orders over the stencil error while catching any wrong gradient term. */
#define FD_STEP 1e-5
#define FD_TOL 1e-6

/* A random cluster (open boundaries) or periodic cube, graph built with a skin so the
   candidate list stays valid for finite-difference displacements. */
typedef struct fixture {
    tu_opts o;
    et_desc *d;
    ds4sci_ctx *ctx;
    ds4sci_graph *g;
    tu_system sys;
    double box[9];
    int periodic;
} fixture;

static void fixture_init(fixture *f, const tu_opts *o, int n_atoms, double side, int periodic,
                         uint64_t seed) {
    memset(f, 0, sizeof(*f));
    f->o = *o;
    f->d = tu_desc_new(o);
    f->ctx = tu_ctx_cpu(f->d, 1); /* the machine is shared: threads only in the thread test */
    f->periodic = periodic;
    tu_rng r = {seed};
    double *pos = malloc(sizeof(double) * 3 * n_atoms);
    int32_t *z = malloc(sizeof(int32_t) * n_atoms);
    memset(f->box, 0, sizeof(f->box));
    f->box[0] = f->box[4] = f->box[8] = side;
    if (periodic) { /* a triclinic tilt, still in reduced form */
        f->box[3] = 0.3 * side * 0.5;
        f->box[6] = -0.2 * side * 0.5;
        f->box[7] = 0.1 * side * 0.5;
    }
    ds4sci_system s;
    char err[256];
    for (int attempt = 0;; attempt++) {
        /* placed with a cubic minimum distance; the tilted box's images can come closer, so
           retry until every pair of the graph is at least 0.9 apart, and none is within 1e-3
           of a cutoff (without vector_cutoff the energy jumps there: finite differences
           across a jump say nothing about the gradient) */
        ck_assert_msg(attempt < 100, "fixture: cannot place %d atoms", n_atoms);
        tu_random_atoms(&r, n_atoms, side, 1.0, periodic, o->max_z, pos, z);
        ds4sci_status st = ds4sci_graph_build(pos, z, n_atoms, periodic ? f->box : NULL,
                                              o->cutoff_upper + 0.5, &f->g, &s, err, sizeof(err));
        ck_assert_msg(st == DS4SCI_OK, "graph: %s", err);
        double min2 = INFINITY, min_gap = INFINITY;
        for (int32_t i = 0; i < s.n_local; i++)
            for (int64_t k = s.nbr_offset[i]; k < s.nbr_offset[i + 1]; k++) {
                const double *a = s.pos + 3 * (size_t)i, *b = s.pos + 3 * (size_t)s.nbr_index[k];
                double d2 = 0.0;
                for (int c = 0; c < 3; c++)
                    d2 += (a[c] - b[c]) * (a[c] - b[c]);
                min2 = fmin(min2, d2);
                min_gap = fmin(min_gap, fabs(sqrt(d2) - o->cutoff_upper));
                if (o->cutoff_lower > 0.0)
                    min_gap = fmin(min_gap, fabs(sqrt(d2) - o->cutoff_lower));
            }
        if (min2 >= 0.81 && min_gap > 1e-3)
            break;
        ds4sci_graph_free(f->g);
        f->g = NULL;
    }
    tu_system_copy(&f->sys, &s);
    free(pos);
    free(z);
}

static void fixture_free(fixture *f) {
    tu_system_free(&f->sys);
    ds4sci_graph_free(f->g);
    ds4sci_ctx_free(f->ctx);
    tu_desc_free(f->d);
}

/* Forces and energies of the fixture, ghosts folded into owners. */
static double compute_folded(fixture *f, tu_result *res) {
    tu_result_alloc(res, &f->sys.s);
    ds4sci_status s = ds4sci_compute(f->ctx, &f->sys.s, NULL, &res->r);
    ck_assert_msg(s == DS4SCI_OK, "compute: %s", ds4sci_ctx_error(f->ctx));
    ds4sci_fold_ghosts(res->r.forces, 3, f->sys.s.n_local, f->sys.s.n_ghost, f->sys.ghost_owner);
    return res->r.energy;
}

/* dE/dx of owned atom i (and its ghost copies) along c, five-point stencil. */
static double fd_derivative(fixture *f, int32_t i, int c) {
    const double h = FD_STEP, at[4] = {1, -1, 2, -2};
    double e[4];
    for (int k = 0; k < 4; k++) {
        tu_system_displace(&f->sys, i, c, at[k] * h);
        e[k] = tu_energy(f->ctx, &f->sys.s);
        tu_system_displace(&f->sys, i, c, -at[k] * h);
    }
    return (8.0 * (e[0] - e[1]) - (e[2] - e[3])) / (12.0 * h);
}

static void check_fd_forces(fixture *f, const char *what) {
    char desc[256];
    tu_result res;
    compute_folded(f, &res);
    const int32_t n = f->sys.s.n_local;
    double *fd = malloc(sizeof(double) * 3 * n);
    for (int32_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            fd[3 * i + c] = -fd_derivative(f, i, c);
        }
    double rms = tu_rms(fd, 3 * (size_t)n);
    for (int c = 0; c < 3; c++) { /* folded forces sum to zero (translation invariance) */
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += res.r.forces[3 * i + c];
        ck_assert_msg(fabs(sum) <= 1e-12 * n * rms, "%s: sum of forces[%d] = %g", what, c, sum);
    }
    double err = tu_max_abs_diff(fd, res.r.forces, 3 * (size_t)n);
    ck_assert_msg(rms > 1e-6, "%s: forces vanish (rms %g) - test would be vacuous", what, rms);
    ck_assert_msg(err <= FD_TOL * rms, "%s [%s]: max |F - F_fd| = %g, rms force %g", what,
                  tu_opts_describe(&f->o, desc, sizeof(desc)), err, rms);
    free(fd);
    tu_result_free(&res);
}

START_TEST(forces_are_minus_energy_gradient_cluster) {
    tu_opts o;
    tu_opts_combo(&o, _i);
    fixture f;
    fixture_init(&f, &o, 10, 4.5, 0, 77 + _i);
    check_fd_forces(&f, "cluster");
    fixture_free(&f);
}
END_TEST

START_TEST(forces_are_minus_energy_gradient_periodic) {
    tu_opts o;
    tu_opts_combo(&o, _i);
    fixture f;
    fixture_init(&f, &o, 12, 5.0, 1, 99 + _i);
    check_fd_forces(&f, "periodic");
    fixture_free(&f);
}
END_TEST

/* ---- virial ------------------------------------------------------------------------------ */

/* Positions of every row (owned and ghost) of f->sys set to base (I + eps). */
static void apply_strain(fixture *f, const double *base, const double eps[9]) {
    const int32_t n = f->sys.s.n_local + f->sys.s.n_ghost;
    for (int32_t i = 0; i < n; i++)
        for (int b = 0; b < 3; b++) {
            double v = base[3 * i + b];
            for (int a = 0; a < 3; a++)
                v += base[3 * i + a] * eps[3 * a + b];
            f->sys.pos[3 * i + b] = v;
        }
}

START_TEST(virial_is_strain_derivative) {
    /* W_ab = sum_e w_a f_b = -dE/d eps_ab for r_b -> r_b + r_a eps_ab (all atoms, box too). */
    tu_opts o;
    tu_opts_combo(&o, _i * 13);
    fixture f;
    fixture_init(&f, &o, 14, 6.0, 1, 300 + _i);
    tu_result res;
    compute_folded(&f, &res);
    const int32_t n = f.sys.s.n_local + f.sys.s.n_ghost;
    double *base = malloc(sizeof(double) * 3 * n);
    memcpy(base, f.sys.pos, sizeof(double) * 3 * n);
    static const int comp[6][2] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {0, 2}, {1, 2}};
    double w_fd[6], norm = 0.0, err = 0.0;
    for (int k = 0; k < 6; k++) {
        const double h = FD_STEP, at[4] = {1, -1, 2, -2};
        double e[4];
        for (int q = 0; q < 4; q++) {
            double eps[9] = {0};
            eps[3 * comp[k][0] + comp[k][1]] = at[q] * h;
            apply_strain(&f, base, eps);
            e[q] = tu_energy(f.ctx, &f.sys.s);
        }
        w_fd[k] = -(8.0 * (e[0] - e[1]) - (e[2] - e[3])) / (12.0 * h);
        norm += w_fd[k] * w_fd[k];
        err = fmax(err, fabs(w_fd[k] - res.r.virial[k]));
    }
    memcpy(f.sys.pos, base, sizeof(double) * 3 * n);
    norm = sqrt(norm);
    ck_assert_msg(norm > 1e-6, "virial vanishes - vacuous");
    ck_assert_msg(err <= FD_TOL * norm, "virial: max error %g vs strain derivative, norm %g", err,
                  norm);
    /* per-atom virials (ghost rows included) sum to the virial */
    for (int k = 0; k < 6; k++) {
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += res.r.atom_virial[6 * i + k];
        ck_assert_msg(fabs(sum - res.r.virial[k]) <= 1e-12 * norm,
                      "per-atom virial %d sums to %.17g, virial %.17g", k, sum, res.r.virial[k]);
    }
    free(base);
    tu_result_free(&res);
    fixture_free(&f);
}
END_TEST

/* ---- symmetries and sums ----------------------------------------------------------------- */

/* Energy and folded forces of n atoms in open boundaries. */
static double cluster_ef(ds4sci_ctx *ctx, const double *pos, const int32_t *z, int n, double cutoff,
                         double *forces, double *atom_energy) {
    ds4sci_graph *g = NULL;
    ds4sci_system s;
    char err[256];
    ck_assert(ds4sci_graph_build(pos, z, n, NULL, cutoff, &g, &s, err, sizeof(err)) == DS4SCI_OK);
    tu_result res;
    tu_result_alloc(&res, &s);
    ds4sci_status st = ds4sci_compute(ctx, &s, NULL, &res.r);
    ck_assert_msg(st == DS4SCI_OK, "compute: %s", ds4sci_ctx_error(ctx));
    if (forces)
        memcpy(forces, res.r.forces, sizeof(double) * 3 * n);
    if (atom_energy)
        memcpy(atom_energy, res.r.atom_energy, sizeof(double) * n);
    double e = res.r.energy, sum = 0.0, scale = 0.0;
    for (int i = 0; i < n; i++) {
        sum += res.r.atom_energy[i];
        scale += fabs(res.r.atom_energy[i]);
    }
    ck_assert_msg(fabs(sum - e) <= 1e-13 * fmax(scale, 1e-300),
                  "atom energies sum to %.17g, energy %.17g", sum, e);
    tu_result_free(&res);
    ds4sci_graph_free(g);
    return e;
}

START_TEST(invariant_to_translation_rotation_permutation) {
    tu_opts o;
    tu_opts_combo(&o, _i * 11 + 1);
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    const int n = 16;
    tu_rng r = {500 + (uint64_t)_i};
    double pos[3 * 16], p2[3 * 16], f0[3 * 16], f1[3 * 16];
    int32_t z[16], z2[16];
    tu_random_atoms(&r, n, 5.0, 1.0, 0, o.max_z, pos, z);
    const double cu = o.cutoff_upper;
    const double e0 = cluster_ef(ctx, pos, z, n, cu, f0, NULL);
    const double frms = tu_rms(f0, 3 * n);
    ck_assert(frms > 1e-6);
    const double tol_e = 1e-12 * fmax(fabs(e0), 1.0), tol_f = 1e-11 * frms;

    /* forces sum to zero */
    for (int c = 0; c < 3; c++) {
        double s = 0.0;
        for (int i = 0; i < n; i++)
            s += f0[3 * i + c];
        ck_assert_msg(fabs(s) <= 1e-12 * frms * n, "sum of forces[%d] = %g", c, s);
    }
    /* translation */
    for (int i = 0; i < n; i++) {
        p2[3 * i] = pos[3 * i] + 13.1;
        p2[3 * i + 1] = pos[3 * i + 1] - 2.7;
        p2[3 * i + 2] = pos[3 * i + 2] + 0.35;
    }
    double e1 = cluster_ef(ctx, p2, z, n, cu, f1, NULL);
    ck_assert_msg(fabs(e1 - e0) <= tol_e, "translation: E %.17g vs %.17g", e1, e0);
    ck_assert_msg(tu_max_abs_diff(f0, f1, 3 * n) <= tol_f, "translation changes forces");
    /* rotation (random unit quaternion) */
    double q[4], nq = 0.0;
    for (int k = 0; k < 4; k++) {
        q[k] = tu_normal(&r);
        nq += q[k] * q[k];
    }
    for (int k = 0; k < 4; k++)
        q[k] /= sqrt(nq);
    const double R[9] = {1 - 2 * (q[2] * q[2] + q[3] * q[3]), 2 * (q[1] * q[2] - q[0] * q[3]),
                         2 * (q[1] * q[3] + q[0] * q[2]),     2 * (q[1] * q[2] + q[0] * q[3]),
                         1 - 2 * (q[1] * q[1] + q[3] * q[3]), 2 * (q[2] * q[3] - q[0] * q[1]),
                         2 * (q[1] * q[3] - q[0] * q[2]),     2 * (q[2] * q[3] + q[0] * q[1]),
                         1 - 2 * (q[1] * q[1] + q[2] * q[2])};
    for (int i = 0; i < n; i++)
        for (int a = 0; a < 3; a++)
            p2[3 * i + a] = R[3 * a] * pos[3 * i] + R[3 * a + 1] * pos[3 * i + 1] +
                            R[3 * a + 2] * pos[3 * i + 2];
    e1 = cluster_ef(ctx, p2, z, n, cu, f1, NULL);
    ck_assert_msg(fabs(e1 - e0) <= tol_e, "rotation: E %.17g vs %.17g", e1, e0);
    for (int i = 0; i < n; i++)
        for (int a = 0; a < 3; a++) {
            double rf =
                R[3 * a] * f0[3 * i] + R[3 * a + 1] * f0[3 * i + 1] + R[3 * a + 2] * f0[3 * i + 2];
            ck_assert_msg(fabs(rf - f1[3 * i + a]) <= tol_f, "rotation: force %d.%d %g vs %g", i, a,
                          f1[3 * i + a], rf);
        }
    /* permutation */
    int perm[16];
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(tu_next(&r) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < n; i++) {
        memcpy(p2 + 3 * i, pos + 3 * perm[i], sizeof(double) * 3);
        z2[i] = z[perm[i]];
    }
    e1 = cluster_ef(ctx, p2, z2, n, cu, f1, NULL);
    ck_assert_msg(fabs(e1 - e0) <= tol_e, "permutation: E %.17g vs %.17g", e1, e0);
    for (int i = 0; i < n; i++)
        for (int a = 0; a < 3; a++)
            ck_assert(fabs(f1[3 * i + a] - f0[3 * perm[i] + a]) <= tol_f);
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
}
END_TEST

START_TEST(isolated_atom_and_atom_without_neighbours) {
    /* An atom beyond the cutoff of everything contributes exactly its isolated-atom energy
       and feels no force; the rest is unchanged (its vec features are 0: the head's
       zero-norm convention must not produce NaN). */
    tu_opts o;
    tu_opts_combo(&o, _i);
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    const int n = 9;
    tu_rng r = {800 + (uint64_t)_i};
    double pos[3 * 10], f[3 * 10], ea[10];
    int32_t z[10];
    tu_random_atoms(&r, n, 4.0, 1.0, 0, o.max_z, pos, z);
    const double cu = o.cutoff_upper;
    const double e_cluster = cluster_ef(ctx, pos, z, n, cu, NULL, NULL);
    double lone[3] = {40.0, -3.0, 7.0};
    int32_t zl = 1 + _i % (o.max_z - 1);
    const double e_lone = cluster_ef(ctx, lone, &zl, 1, cu, f, ea);
    ck_assert(isfinite(e_lone));
    ck_assert(f[0] == 0.0 && f[1] == 0.0 && f[2] == 0.0);
    memcpy(pos + 3 * n, lone, sizeof(lone));
    z[n] = zl;
    const double e_all = cluster_ef(ctx, pos, z, n + 1, cu, f, ea);
    ck_assert_msg(fabs(e_all - (e_cluster + e_lone)) <= 1e-12 * (fabs(e_cluster) + fabs(e_lone)),
                  "E(all) %.17g != E(cluster) + E(atom) %.17g", e_all, e_cluster + e_lone);
    ck_assert_msg(ea[n] == e_lone, "atom energy of the lone atom %.17g, alone %.17g", ea[n],
                  e_lone);
    ck_assert(f[3 * n] == 0.0 && f[3 * n + 1] == 0.0 && f[3 * n + 2] == 0.0);
    for (int i = 0; i < 3 * (n + 1); i++)
        ck_assert(isfinite(f[i]));
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
}
END_TEST

START_TEST(pair_at_exactly_the_cutoffs) {
    /* TorchMD-Net keeps pairs with cl^2 <= d^2 < cu^2: a pair at exactly cu does not
       interact (E = sum of isolated atoms), one just inside does; a pair at exactly cl > 0 is
       kept (with c(cl) = 0 its scalar message vanishes but, without vector_cutoff, its
       vector message does not, so the energy differs from two isolated atoms). */
    tu_opts o;
    tu_opts_default(&o);
    o.vector_cutoff = 0;
    o.cutoff_lower = 1.5;
    o.cutoff_upper = 4.0;
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    int32_t z[2] = {1, 2};
    double p1[3] = {0, 0, 0};
    const double e_iso = cluster_ef(ctx, p1, &z[0], 1, 5.0, NULL, NULL) +
                         cluster_ef(ctx, p1, &z[1], 1, 5.0, NULL, NULL);
    double pos[6] = {0, 0, 0, 4.0, 0, 0};
    double e = cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL);
    ck_assert_msg(e == e_iso, "pair at exactly cu interacts: %.17g vs %.17g", e, e_iso);
    pos[3] = nextafter(4.0, 0.0);
    e = cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL);
    ck_assert_msg(fabs(e - e_iso) > 1e-6, "pair just inside cu does not interact");
    pos[3] = 1.5;
    e = cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL);
    ck_assert_msg(fabs(e - e_iso) > 1e-6, "pair at exactly cl is dropped");
    pos[3] = nextafter(1.5, 0.0);
    e = cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL);
    ck_assert_msg(e == e_iso, "pair just below cl interacts: %.17g vs %.17g", e, e_iso);
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
}
END_TEST

START_TEST(results_independent_of_thread_count) {
    tu_opts o;
    tu_opts_combo(&o, 3);
    fixture f;
    fixture_init(&f, &o, 20, 7.0, 1, 901);
    tu_result a;
    compute_folded(&f, &a);
    for (int t = 2; t <= 3; t++) {
        ds4sci_ctx *ctx = tu_ctx_cpu(f.d, t);
        tu_result b;
        tu_result_alloc(&b, &f.sys.s);
        ck_assert(ds4sci_compute(ctx, &f.sys.s, NULL, &b.r) == DS4SCI_OK);
        ds4sci_fold_ghosts(b.r.forces, 3, f.sys.s.n_local, f.sys.s.n_ghost, f.sys.ghost_owner);
        ck_assert_msg(a.r.energy == b.r.energy, "%d threads: energy differs", t);
        ck_assert(memcmp(a.r.forces, b.r.forces, sizeof(double) * 3 * f.sys.s.n_local) == 0);
        ck_assert(memcmp(a.r.virial, b.r.virial, sizeof(a.r.virial)) == 0);
        tu_result_free(&b);
        ds4sci_ctx_free(ctx);
    }
    tu_result_free(&a);
    fixture_free(&f);
}
END_TEST

START_TEST(filter_cache_does_not_change_results)
{
    /* levels 2 (all layers, default here), 1 (current layer), 0 (recompute): same bits */
    tu_opts o;
    tu_opts_combo(&o, _i * 9 + 4);
    fixture f;
    fixture_init(&f, &o, 16, 6.0, 1, 950 + _i);
    tu_result a;
    compute_folded(&f, &a);
    for (int level = 1; level >= 0; level--) {
        tu_result b;
        ds4sci_cpu_set_filter_cache(ds4sci_ctx_backend_state(f.ctx), level);
        compute_folded(&f, &b);
        ck_assert_msg(a.r.energy == b.r.energy, "level %d: energy differs", level);
        ck_assert(memcmp(a.r.forces, b.r.forces, sizeof(double) * 3 * f.sys.s.n_local) == 0);
        ck_assert(memcmp(a.r.virial, b.r.virial, sizeof(a.r.virial)) == 0);
        tu_result_free(&b);
    }
    tu_result_free(&a);
    fixture_free(&f);
}
END_TEST

START_TEST(workspace_is_not_reallocated_per_call) {
    tu_opts o;
    tu_opts_default(&o);
    fixture f;
    fixture_init(&f, &o, 20, 7.0, 1, 902);
    void *st = ds4sci_ctx_backend_state(f.ctx);
    tu_result res;
    compute_folded(&f, &res);
    const int64_t allocs = ds4sci_cpu_workspace_allocs(st);
    ck_assert(allocs > 0 && ds4sci_cpu_workspace_bytes(st) > 0);
    for (int k = 0; k < 3; k++)
        tu_energy(f.ctx, &f.sys.s);
    ck_assert_int_eq(ds4sci_cpu_workspace_allocs(st), allocs);
    tu_result_free(&res);
    fixture_free(&f);
}
END_TEST

/* ---- two "processes" with a user exchange ------------------------------------------------ */

/*
 * A periodic box split into two domains by the fractional x coordinate (or, with
 * all_to_first, everything in domain 0 and an empty domain 1). Each domain owns its atoms
 * and has as ghosts every neighbour of its owned atoms that it does not own (atoms of the
 * other domain and periodic images), built from the one-process graph. The two run in
 * two threads; the exchange callbacks meet at a barrier and copy rows between the
 * domains' buffers, as MPI forward/reverse communication would.
 */
typedef struct domain {
    struct world *w;
    int p;
    ds4sci_system s;
    double *pos;
    int32_t *z, *nbr_index, *gowner; /* gowner: global atom each ghost copies */
    int64_t *nbr_offset;
    int32_t *global; /* [n_local] global atom of each owned atom */
    double *data;    /* published buffer of the current exchange */
    int32_t width;
    int n_fwd, n_rev;
    ds4sci_ctx *ctx;
    tu_result res;
    ds4sci_status status;
} domain;

typedef struct world {
    domain dom[2];
    pthread_barrier_t bar;
    int32_t *proc_of, *local_of; /* [n global atoms] */
} world;

static int dom_forward(void *user, double *data, int32_t width) {
    domain *d = user;
    world *w = d->w;
    d->data = data;
    d->width = width;
    d->n_fwd++;
    pthread_barrier_wait(&w->bar);
    int rc = w->dom[0].width == w->dom[1].width ? 0 : -1;
    for (int32_t g = 0; g < d->s.n_ghost && rc == 0; g++) {
        const int32_t j = d->gowner[g];
        const domain *o = &w->dom[w->proc_of[j]];
        memcpy(data + (size_t)(d->s.n_local + g) * width, o->data + (size_t)w->local_of[j] * width,
               sizeof(double) * width);
    }
    pthread_barrier_wait(&w->bar);
    return rc;
}

static int dom_reverse(void *user, double *data, int32_t width) {
    domain *d = user;
    world *w = d->w;
    d->data = data;
    d->width = width;
    d->n_rev++;
    pthread_barrier_wait(&w->bar);
    int rc = w->dom[0].width == w->dom[1].width ? 0 : -1;
    for (int q = 0; q < 2 && rc == 0; q++) {
        const domain *o = &w->dom[q];
        for (int32_t g = 0; g < o->s.n_ghost; g++) {
            const int32_t j = o->gowner[g];
            if (w->proc_of[j] != d->p)
                continue;
            double *dst = data + (size_t)w->local_of[j] * width;
            const double *src = o->data + (size_t)(o->s.n_local + g) * width;
            for (int32_t k = 0; k < width; k++)
                dst[k] += src[k];
        }
    }
    pthread_barrier_wait(&w->bar);
    return rc;
}

static void *dom_run(void *arg) {
    domain *d = arg;
    ds4sci_exchange ex = {dom_forward, dom_reverse, d};
    d->status = ds4sci_compute(d->ctx, &d->s, &ex, &d->res.r);
    return NULL;
}

/* Build domain p from the one-process system g (n global atoms). */
static void domain_build(world *w, int p, const ds4sci_system *g) {
    domain *d = &w->dom[p];
    const int32_t n = g->n_local, nt = g->n_local + g->n_ghost;
    d->w = w;
    d->p = p;
    int32_t nl = 0;
    d->global = malloc(sizeof(int32_t) * (n + 1));
    for (int32_t i = 0; i < n; i++)
        if (w->proc_of[i] == p)
            d->global[nl++] = i;
    int32_t *ghost_of = malloc(sizeof(int32_t) * (nt + 1)); /* global entity -> local ghost */
    for (int32_t a = 0; a < nt; a++)
        ghost_of[a] = -1;
    int32_t *entity = malloc(sizeof(int32_t) * (nt + 1));
    int32_t ng = 0;
    d->nbr_offset = malloc(sizeof(int64_t) * (nl + 1));
    d->nbr_index = malloc(sizeof(int32_t) * (g->nbr_offset[n] + 1));
    int64_t k = 0;
    d->nbr_offset[0] = 0;
    for (int32_t li = 0; li < nl; li++) {
        const int32_t i = d->global[li];
        for (int64_t q = g->nbr_offset[i]; q < g->nbr_offset[i + 1]; q++) {
            const int32_t a = g->nbr_index[q];
            int32_t loc;
            if (a < n && w->proc_of[a] == p) {
                loc = w->local_of[a];
            } else {
                if (ghost_of[a] < 0) {
                    ghost_of[a] = ng;
                    entity[ng++] = a;
                }
                loc = nl + ghost_of[a];
            }
            d->nbr_index[k++] = loc;
        }
        d->nbr_offset[li + 1] = k;
    }
    d->pos = malloc(sizeof(double) * 3 * (nl + ng + 1));
    d->z = malloc(sizeof(int32_t) * (nl + ng + 1));
    d->gowner = malloc(sizeof(int32_t) * (ng + 1));
    for (int32_t li = 0; li < nl; li++) {
        memcpy(d->pos + 3 * li, g->pos + 3 * (size_t)d->global[li], sizeof(double) * 3);
        d->z[li] = g->z[d->global[li]];
    }
    for (int32_t q = 0; q < ng; q++) {
        const int32_t a = entity[q];
        memcpy(d->pos + 3 * (nl + q), g->pos + 3 * (size_t)a, sizeof(double) * 3);
        d->z[nl + q] = g->z[a];
        d->gowner[q] = a < n ? a : g->ghost_owner[a - n];
    }
    d->s.n_local = nl;
    d->s.n_ghost = ng;
    d->s.pos = d->pos;
    d->s.z = d->z;
    d->s.nbr_offset = d->nbr_offset;
    d->s.nbr_index = d->nbr_index;
    d->s.ghost_owner = NULL;
    free(ghost_of);
    free(entity);
}

static void domain_free(domain *d) {
    free(d->global);
    free(d->nbr_offset);
    free(d->nbr_index);
    free(d->pos);
    free(d->z);
    free(d->gowner);
    tu_result_free(&d->res);
    ds4sci_ctx_free(d->ctx);
}

/* Runs the two domains; returns 1 if both succeeded. */
static int world_run(world *w, const et_desc *desc) {
    pthread_t th[2];
    pthread_barrier_init(&w->bar, NULL, 2);
    for (int p = 0; p < 2; p++) {
        w->dom[p].ctx = tu_ctx_cpu(desc, 1);
        tu_result_alloc(&w->dom[p].res, &w->dom[p].s);
        pthread_create(&th[p], NULL, dom_run, &w->dom[p]);
    }
    for (int p = 0; p < 2; p++)
        pthread_join(th[p], NULL);
    pthread_barrier_destroy(&w->bar);
    return w->dom[0].status == DS4SCI_OK && w->dom[1].status == DS4SCI_OK;
}

static void check_two_domains(int combo, int all_to_first) {
    tu_opts o;
    tu_opts_combo(&o, combo);
    fixture f;
    fixture_init(&f, &o, 40, 9.0, 1, 1200 + combo);
    tu_result ref;
    compute_folded(&f, &ref);
    const ds4sci_system *g = &f.sys.s;
    const int32_t n = g->n_local;

    world w;
    memset(&w, 0, sizeof(w));
    w.proc_of = malloc(sizeof(int32_t) * n);
    w.local_of = malloc(sizeof(int32_t) * n);
    int32_t cnt[2] = {0, 0};
    for (int32_t i = 0; i < n; i++) {
        /* fractional x of the reduced box (b_x, c_x tilts folded in) */
        const double *p = g->pos + 3 * (size_t)i;
        double fz = p[2] / f.box[8], fy = (p[1] - fz * f.box[7]) / f.box[4];
        double fx = (p[0] - fy * f.box[3] - fz * f.box[6]) / f.box[0];
        fx -= floor(fx);
        w.proc_of[i] = all_to_first ? 0 : fx >= 0.5;
        w.local_of[i] = cnt[w.proc_of[i]]++;
    }
    ck_assert(all_to_first ? cnt[1] == 0 : cnt[0] > 0 && cnt[1] > 0);
    domain_build(&w, 0, g);
    domain_build(&w, 1, g);
    ck_assert_msg(world_run(&w, f.d), "domains: %s / %s", ds4sci_ctx_error(w.dom[0].ctx),
                  ds4sci_ctx_error(w.dom[1].ctx));
    ck_assert_int_eq(w.dom[0].n_fwd, w.dom[1].n_fwd);
    ck_assert_int_eq(w.dom[0].n_rev, w.dom[1].n_rev);
    ck_assert_int_eq(w.dom[0].n_fwd, o.L);
    ck_assert_int_eq(w.dom[0].n_rev, o.L - 1 + o.neighbor_embedding);

    /* energies, virial, per-atom energies and forces folded to global atoms */
    const double e = w.dom[0].res.r.energy + w.dom[1].res.r.energy;
    ck_assert_msg(fabs(e - ref.r.energy) <= 1e-12 * fabs(ref.r.energy),
                  "2 domains: E %.17g, one process %.17g", e, ref.r.energy);
    double vnorm = 0.0;
    for (int k = 0; k < 6; k++)
        vnorm = fmax(vnorm, fabs(ref.r.virial[k]));
    for (int k = 0; k < 6; k++)
        ck_assert(fabs(w.dom[0].res.r.virial[k] + w.dom[1].res.r.virial[k] - ref.r.virial[k]) <=
                  1e-12 * vnorm);
    double *fsum = calloc(3 * (size_t)n, sizeof(double));
    for (int p = 0; p < 2; p++) {
        const domain *d = &w.dom[p];
        for (int32_t a = 0; a < d->s.n_local + d->s.n_ghost; a++) {
            const int32_t j = a < d->s.n_local ? d->global[a] : d->gowner[a - d->s.n_local];
            for (int c = 0; c < 3; c++)
                fsum[3 * j + c] += d->res.r.forces[3 * (size_t)a + c];
        }
        for (int32_t a = 0; a < d->s.n_local; a++)
            ck_assert(fabs(d->res.r.atom_energy[a] - ref.r.atom_energy[d->global[a]]) <=
                      1e-12 * fmax(fabs(ref.r.atom_energy[d->global[a]]), 1e-3));
    }
    const double frms = tu_rms(ref.r.forces, 3 * (size_t)n);
    const double ferr = tu_max_abs_diff(fsum, ref.r.forces, 3 * (size_t)n);
    ck_assert_msg(ferr <= 1e-12 * frms, "2 domains: max force difference %g, rms %g", ferr, frms);

    free(fsum);
    domain_free(&w.dom[0]);
    domain_free(&w.dom[1]);
    free(w.proc_of);
    free(w.local_of);
    tu_result_free(&ref);
    fixture_free(&f);
}

START_TEST(user_exchange_two_domains_match_one_process) {
    check_two_domains(_i * 7 + 1, 0);
}
END_TEST

START_TEST(empty_domain_makes_matching_exchange_calls) {
    check_two_domains(_i * 17 + 2, 1);
}
END_TEST

static int fail_forward(void *user, double *data, int32_t width) {
    (void)user, (void)data, (void)width;
    return 7;
}

static int noop_exchange(void *user, double *data, int32_t width) {
    (void)user, (void)data, (void)width;
    return 0;
}

START_TEST(exchange_failure_is_reported) {
    tu_opts o;
    tu_opts_default(&o);
    fixture f;
    fixture_init(&f, &o, 8, 6.0, 1, 77);
    ds4sci_exchange ex = {fail_forward, noop_exchange, NULL};
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_EXCHANGE);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "forward"));
    fixture_free(&f);
}
END_TEST

/* ---- input validation -------------------------------------------------------------------- */

static void expect_status(fixture *f, const ds4sci_system *s, ds4sci_status want,
                          const char *needle) {
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ds4sci_status got = ds4sci_compute(f->ctx, s, NULL, &r);
    ck_assert_msg(got == want, "status %s, expected %s (%s)", ds4sci_status_name(got),
                  ds4sci_status_name(want), ds4sci_ctx_error(f->ctx));
    if (needle)
        ck_assert_msg(strstr(ds4sci_ctx_error(f->ctx), needle), "message \"%s\" lacks \"%s\"",
                      ds4sci_ctx_error(f->ctx), needle);
}

START_TEST(bad_input_is_refused_with_a_message) {
    tu_opts o;
    tu_opts_default(&o);
    fixture f;
    fixture_init(&f, &o, 10, 5.0, 0, 4321);
    tu_system *t = &f.sys;
    ds4sci_system s;

    /* sanity: the unmodified system works */
    expect_status(&f, &t->s, DS4SCI_OK, NULL);

    double keep = t->pos[3 * 3 + 1];
    t->pos[3 * 3 + 1] = NAN;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "atom 3");
    t->pos[3 * 3 + 1] = INFINITY;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "non-finite");
    t->pos[3 * 3 + 1] = keep;

    int32_t zk = t->z[4];
    t->z[4] = o.max_z;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "atom 4: z = 10");
    t->z[4] = -1;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "atom 4");
    t->z[4] = zk;

    /* atom 0 on top of its first neighbour */
    const int32_t j = t->nbr_index[t->nbr_offset[0]];
    double p0[3];
    memcpy(p0, t->pos, sizeof(p0));
    for (int c = 0; c < 3; c++)
        t->pos[c] = t->pos[3 * (size_t)j + c] + (c == 0 ? 5e-5 : 0.0);
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "overlap");
    memcpy(t->pos, p0, sizeof(p0));

    const int32_t nk = t->nbr_index[0];
    t->nbr_index[0] = t->s.n_local + t->s.n_ghost;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "atom 0");
    t->nbr_index[0] = -2;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "atom 0");
    t->nbr_index[0] = 0; /* itself */
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "other than itself");
    t->nbr_index[0] = nk;

    int64_t ok = t->nbr_offset[2];
    t->nbr_offset[2] = t->nbr_offset[1] - 1;
    expect_status(&f, &t->s, DS4SCI_ERR_INPUT, "nbr_offset");
    t->nbr_offset[2] = ok;

    s = t->s;
    s.n_local = -1;
    expect_status(&f, &s, DS4SCI_ERR_ARG, "n_local");
    s = t->s;
    s.pos = NULL;
    expect_status(&f, &s, DS4SCI_ERR_ARG, "pos");
    ck_assert_int_eq(ds4sci_compute(f.ctx, NULL, NULL, NULL), DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_compute(NULL, &t->s, NULL, NULL), DS4SCI_ERR_ARG);

    /* and it still works afterwards */
    expect_status(&f, &t->s, DS4SCI_OK, NULL);
    ck_assert_str_eq(ds4sci_ctx_error(f.ctx), "");
    fixture_free(&f);
}
END_TEST

START_TEST(bad_ghost_owner_is_refused) {
    tu_opts o;
    tu_opts_default(&o);
    fixture f;
    fixture_init(&f, &o, 10, 6.0, 1, 4322);
    ck_assert(f.sys.s.n_ghost > 0);
    f.sys.ghost_owner[1] = f.sys.s.n_local;
    expect_status(&f, &f.sys.s, DS4SCI_ERR_INPUT, "ghost 1");
    ds4sci_system s = f.sys.s;
    s.ghost_owner = NULL;
    expect_status(&f, &s, DS4SCI_ERR_ARG, "ghost_owner");
    fixture_free(&f);
}
END_TEST

START_TEST(empty_system_and_context_api) {
    tu_opts o;
    tu_opts_default(&o);
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    ck_assert_str_eq(ds4sci_ctx_backend_name(ctx), "cpu");
    ck_assert_int_eq(ds4sci_ctx_device(ctx), DS4SCI_DEVICE_CPU);
    int64_t off0 = 0;
    ds4sci_system s = {0, 0, NULL, NULL, &off0, NULL, NULL};
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    r.energy = 123.0;
    ck_assert_int_eq(ds4sci_compute(ctx, &s, NULL, &r), DS4SCI_OK);
    ck_assert(r.energy == 0.0);
    ds4sci_ctx_free(ctx);
    ds4sci_ctx_free(NULL);

    ds4sci_options opt;
    ds4sci_options_init(&opt);
    ck_assert_int_eq(opt.device, DS4SCI_DEVICE_AUTO);
    opt.device = DS4SCI_DEVICE_CUDA;
    char err[256];
    ctx = NULL;
    ds4sci_status st = ds4sci_ctx_create_desc(d, &opt, &ctx, err, sizeof(err));
    if (!ds4sci_cuda_available()) {
        ck_assert_int_eq(st, DS4SCI_ERR_DEVICE);
        ck_assert_ptr_null(ctx);
        ck_assert_ptr_nonnull(strstr(err, "CUDA"));
    } else {
        ds4sci_ctx_free(ctx);
    }
    ck_assert_str_eq(ds4sci_status_name(DS4SCI_ERR_INPUT), "DS4SCI_ERR_INPUT");
    ck_assert_str_eq(ds4sci_status_name((ds4sci_status)99), "DS4SCI_ERR_UNKNOWN");
    tu_desc_free(d);
}
END_TEST

static Suite *et_cpu_suite(void) {
    Suite *s = suite_create("et_cpu");
    TCase *tc = tcase_create("gradients");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, forces_are_minus_energy_gradient_cluster, 0, TU_N_COMBOS);
    tcase_add_loop_test(tc, forces_are_minus_energy_gradient_periodic, 0, TU_N_COMBOS);
    tcase_add_loop_test(tc, virial_is_strain_derivative, 0, 5);
    suite_add_tcase(s, tc);

    TCase *ts = tcase_create("symmetry");
    tcase_set_timeout(ts, 120);
    tcase_add_loop_test(ts, invariant_to_translation_rotation_permutation, 0, 6);
    tcase_add_loop_test(ts, isolated_atom_and_atom_without_neighbours, 0, TU_N_COMBOS);
    tcase_add_test(ts, pair_at_exactly_the_cutoffs);
    suite_add_tcase(s, ts);

    TCase *tw = tcase_create("workspace");
    tcase_set_timeout(tw, 120);
    tcase_add_test(tw, results_independent_of_thread_count);
    tcase_add_test(tw, workspace_is_not_reallocated_per_call);
    tcase_add_loop_test(tw, filter_cache_does_not_change_results, 0, 7);
    suite_add_tcase(s, tw);

    TCase *tx = tcase_create("exchange");
    tcase_set_timeout(tx, 120);
    tcase_add_loop_test(tx, user_exchange_two_domains_match_one_process, 0, 8);
    tcase_add_loop_test(tx, empty_domain_makes_matching_exchange_calls, 0, 2);
    tcase_add_test(tx, exchange_failure_is_reported);
    suite_add_tcase(s, tx);

    TCase *tv = tcase_create("validation");
    tcase_add_test(tv, bad_input_is_refused_with_a_message);
    tcase_add_test(tv, bad_ghost_owner_is_refused);
    tcase_add_test(tv, empty_system_and_context_api);
    suite_add_tcase(s, tv);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(et_cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
