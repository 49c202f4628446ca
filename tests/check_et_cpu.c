/*
 * check_et_cpu.c - the CPU reference backend against independent expectations: finite
 * differences of its own energy (forces, virial), symmetries (translation, rotation,
 * permutation), additivity for isolated atoms, the cutoff boundaries, thread-count and
 * cache independence. Models are random (test_util.c), so every option of ET_SPEC is
 * exercised without a model file. The API level (exchange, validation) is check_api.c.
 */
#include <check.h>
#include <math.h>
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

/* dE/dx of owned atom i (and its ghost copies) along c, five-point stencil. */
static double fd_derivative(tu_fixture *f, int32_t i, int c) {
    const double h = FD_STEP, at[4] = {1, -1, 2, -2};
    double e[4];
    for (int k = 0; k < 4; k++) {
        tu_system_displace(&f->sys, i, c, at[k] * h);
        e[k] = tu_energy(f->ctx, &f->sys.s);
        tu_system_displace(&f->sys, i, c, -at[k] * h);
    }
    return (8.0 * (e[0] - e[1]) - (e[2] - e[3])) / (12.0 * h);
}

static void check_fd_forces(tu_fixture *f, const char *what) {
    char desc[256];
    tu_result res;
    tu_fixture_compute(f, &res);
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
    tu_fixture f;
    tu_fixture_init(&f, &o, 10, 4.5, 0, 77 + _i);
    check_fd_forces(&f, "cluster");
    tu_fixture_free(&f);
}
END_TEST

START_TEST(forces_are_minus_energy_gradient_periodic) {
    tu_opts o;
    tu_opts_combo(&o, _i);
    tu_fixture f;
    tu_fixture_init(&f, &o, 12, 5.0, 1, 99 + _i);
    check_fd_forces(&f, "periodic");
    tu_fixture_free(&f);
}
END_TEST

/* ---- virial ------------------------------------------------------------------------------ */

/* Positions of every row (owned and ghost) of f->sys set to base (I + eps). */
static void apply_strain(tu_fixture *f, const double *base, const double eps[9]) {
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
    tu_fixture f;
    tu_fixture_init(&f, &o, 14, 6.0, 1, 300 + _i);
    tu_result res;
    tu_fixture_compute(&f, &res);
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
    tu_fixture_free(&f);
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

START_TEST(vector_cutoff_energy_is_continuous_at_both_cutoffs) {
    /* ET_SPEC section 10: with vector_cutoff every message carries c(r), which vanishes
       with its derivative at cl and cu, so a pair entering or leaving the list changes the
       energy by O(delta^2) only (here delta = 1e-6: at most ~1e-10 in these units). */
    tu_opts o;
    tu_opts_combo(&o, 16 + 32 + 3 * _i); /* vector_cutoff on, cutoff_lower 0.7 */
    ck_assert(o.vector_cutoff && o.cutoff_lower > 0.0);
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    int32_t z[2] = {1, 2};
    double p1[3] = {0, 0, 0};
    const double e_iso = cluster_ef(ctx, p1, &z[0], 1, 5.0, NULL, NULL) +
                         cluster_ef(ctx, p1, &z[1], 1, 5.0, NULL, NULL);
    const double at[2] = {o.cutoff_upper - 1e-6, o.cutoff_lower + 1e-6};
    for (int k = 0; k < 2; k++) {
        double pos[6] = {0, 0, 0, at[k], 0, 0};
        const double e = cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL);
        ck_assert_msg(fabs(e - e_iso) <= 1e-10 * fmax(1.0, fabs(e_iso)),
                      "pair at %.7f: E %.17g, isolated atoms %.17g", at[k], e, e_iso);
    }
    /* and a pair well inside does interact (the test is not vacuous) */
    double pos[6] = {0, 0, 0, 0.5 * (o.cutoff_lower + o.cutoff_upper), 0, 0};
    ck_assert(fabs(cluster_ef(ctx, pos, z, 2, 5.0, NULL, NULL) - e_iso) > 1e-6);
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
}
END_TEST

/* Largest change of the dimer force F(r) between neighbouring points of a uniform scan of r
   (n points); E at the middle of the range into *e_mid. */
static double dimer_max_force_step(ds4sci_ctx *ctx, double r0, double r1, int n, double *e_mid) {
    int32_t z[2] = {1, 2};
    double f[6], prev = 0.0, jmax = 0.0;
    for (int k = 0; k < n; k++) {
        const double r = r0 + (r1 - r0) * k / (n - 1);
        double pos[6] = {0, 0, 0, r, 0, 0};
        const double e = cluster_ef(ctx, pos, z, 2, 5.0, f, NULL);
        if (k == n / 2)
            *e_mid = e;
        if (k > 0)
            jmax = fmax(jmax, fabs(f[3] - prev));
        prev = f[3];
    }
    return jmax;
}

/* The same scan at step h and h/4: a smooth F changes by <= max|F'| h per step, so the ratio
   of the two largest steps tends to 4; a jump of F is the largest step at any h: ratio ~1. */
static double dimer_step_ratio(const tu_opts *o, double *e_mid) {
    et_desc *d = tu_desc_new(o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    const double r0 = o->cutoff_lower + 0.6, r1 = o->cutoff_upper - 0.2;
    const double j1 = dimer_max_force_step(ctx, r0, r1, 1001, e_mid);
    const double j4 = dimer_max_force_step(ctx, r0, r1, 4001, e_mid);
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
    return j1 / j4;
}

START_TEST(head_norm_eps_removes_the_force_jump) {
    /* The head's gated blocks take |u|, u = W1 vec (ET_SPEC 5). In a dimer every vector
       feature is parallel to the bond, so each channel's u is a scalar function of r times
       the bond direction and |u| has a kink wherever that function changes sign: the force
       jumps there (TorchMD-Net's model, head_eps = 0). sqrt(|u|^2 + eps^2) is smooth: with
       head_vector_norm_eps the force is continuous; and the energy is continuous in eps
       (eps = 1e-7 is TorchMD-Net's model to ~eps^2 / |u|). */
    tu_opts o;
    tu_opts_default(&o);
    o.cutoff_upper = 5.0;
    double e0, e_small, e_eps;
    const double r_plain = dimer_step_ratio(&o, &e0);
    o.head_eps = 1e-7;
    const double r_small = dimer_step_ratio(&o, &e_small);
    o.head_eps = 0.3;
    const double r_eps = dimer_step_ratio(&o, &e_eps);
    ck_assert_msg(r_plain < 1.5, "no force jump with the plain norm (largest-step ratio %g at "
                  "h / (h/4)): the scan does not cross u = 0, the test is vacuous", r_plain);
    ck_assert_msg(r_small < 1.5, "head_eps 1e-7 should keep the jump (ratio %g)", r_small);
    ck_assert_msg(r_eps > 3.0, "force still jumps with head_eps 0.3 (ratio %g)", r_eps);
    ck_assert_msg(fabs(e_small - e0) <= 1e-9 * fabs(e0), "eps 1e-7: E %.17g vs %.17g", e_small,
                  e0);
    ck_assert_msg(fabs(e_eps - e0) > 1e-6 * fabs(e0), "eps 0.3 does not change E (%.17g)", e0);
}
END_TEST

START_TEST(results_independent_of_thread_count) {
    tu_opts o;
    tu_opts_combo(&o, 3);
    tu_fixture f;
    tu_fixture_init(&f, &o, 20, 7.0, 1, 901);
    tu_result a;
    tu_fixture_compute(&f, &a);
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
    tu_fixture_free(&f);
}
END_TEST

START_TEST(filter_cache_does_not_change_results) {
    /* levels 2 (all layers, default here), 1 (current layer), 0 (recompute): same bits */
    tu_opts o;
    tu_opts_combo(&o, _i * 9 + 4);
    tu_fixture f;
    tu_fixture_init(&f, &o, 16, 6.0, 1, 950 + _i);
    tu_result a;
    tu_fixture_compute(&f, &a);
    for (int level = 1; level >= 0; level--) {
        tu_result b;
        ds4sci_cpu_set_filter_cache(ds4sci_ctx_backend_state(f.ctx), level);
        tu_fixture_compute(&f, &b);
        ck_assert_msg(a.r.energy == b.r.energy, "level %d: energy differs", level);
        ck_assert(memcmp(a.r.forces, b.r.forces, sizeof(double) * 3 * f.sys.s.n_local) == 0);
        ck_assert(memcmp(a.r.virial, b.r.virial, sizeof(a.r.virial)) == 0);
        tu_result_free(&b);
    }
    tu_result_free(&a);
    tu_fixture_free(&f);
}
END_TEST

START_TEST(workspace_is_not_reallocated_per_call) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture f;
    tu_fixture_init(&f, &o, 20, 7.0, 1, 902);
    void *st = ds4sci_ctx_backend_state(f.ctx);
    tu_result res;
    tu_fixture_compute(&f, &res);
    const int64_t allocs = ds4sci_cpu_workspace_allocs(st);
    ck_assert(allocs > 0 && ds4sci_cpu_workspace_bytes(st) > 0);
    for (int k = 0; k < 3; k++)
        tu_energy(f.ctx, &f.sys.s);
    ck_assert_int_eq(ds4sci_cpu_workspace_allocs(st), allocs);
    tu_result_free(&res);
    tu_fixture_free(&f);
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
    tcase_add_loop_test(ts, vector_cutoff_energy_is_continuous_at_both_cutoffs, 0, 5);
    tcase_add_test(ts, head_norm_eps_removes_the_force_jump);
    suite_add_tcase(s, ts);

    TCase *tw = tcase_create("workspace");
    tcase_set_timeout(tw, 120);
    tcase_add_test(tw, results_independent_of_thread_count);
    tcase_add_test(tw, workspace_is_not_reallocated_per_call);
    tcase_add_loop_test(tw, filter_cache_does_not_change_results, 0, 7);
    suite_add_tcase(s, tw);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(et_cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
