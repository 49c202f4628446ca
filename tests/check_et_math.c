/*
 * check_et_math.c - the scalar physics shared by the CPU reference and the CUDA kernels
 * (et_math.h): derivatives against finite differences, the float instantiation against the
 * double one, and the PyTorch / TorchMD-Net conventions (float32 ln 2 shift, softplus
 * threshold, cutoff values at its ends).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "et_math.h"

static const et_act all_acts[5] = {ET_ACT_SSP, ET_ACT_SILU, ET_ACT_TANH, ET_ACT_SIGMOID,
                                   ET_ACT_MISH};

/* Central difference with step h (error ~ h^2 f''' / 6 + eps f / h). */
#define FD(f, x, h) (((f)((x) + (h)) - (f)((x) - (h))) / (2.0 * (h)))

static et_act cur_act;
static double act_value(double x) {
    return et_activate(cur_act, x);
}

START_TEST(activation_derivatives_match_finite_differences) {
    cur_act = all_acts[_i];
    for (double x = -12.0; x <= 12.0; x += 0.37) {
        double d;
        const double y = et_activate_grad(cur_act, x, &d);
        ck_assert(y == et_activate(cur_act, x));
        const double fd = FD(act_value, x, 1e-5);
        ck_assert_msg(fabs(d - fd) <= 1e-8 * fmax(1.0, fabs(d)), "act %d at %g: d %.17g, fd %.17g",
                      (int)cur_act, x, d, fd);
    }
}
END_TEST

START_TEST(activation_values_match_definitions) {
    /* independent textbook formulas (valid in the tested range without overflow) */
    for (double x = -10.0; x <= 10.0; x += 0.25) {
        const double sig = 1.0 / (1.0 + exp(-x)), sp = log(1.0 + exp(x));
        ck_assert(fabs(et_activate(ET_ACT_SILU, x) - x * sig) <= 1e-15 * fmax(1.0, fabs(x)));
        ck_assert(fabs(et_activate(ET_ACT_SIGMOID, x) - sig) <= 1e-15);
        ck_assert(fabs(et_activate(ET_ACT_TANH, x) - tanh(x)) <= 1e-15);
        ck_assert(fabs(et_activate(ET_ACT_SSP, x) - (sp - 0.6931471824645996)) <= 1e-14 * (1 + sp));
        ck_assert(fabs(et_activate(ET_ACT_MISH, x) - x * tanh(sp)) <= 1e-14 * fmax(1.0, fabs(x)));
    }
    /* TorchMD-Net's shift is float32(ln 2), not ln 2 */
    ck_assert(ET_SSP_SHIFT == (double)(float)log(2.0));
    ck_assert(et_activate(ET_ACT_SSP, 0.0) == log(2.0) - (double)(float)log(2.0));
    /* PyTorch softplus threshold 20: the identity above it, derivative 1 */
    double d;
    ck_assert(et_activate_grad(ET_ACT_SSP, 25.0, &d) == 25.0 - ET_SSP_SHIFT);
    ck_assert(d == 1.0);
    /* no overflow far out */
    for (int k = 0; k < 5; k++) {
        ck_assert(isfinite(et_activate_grad(all_acts[k], 800.0, &d)) && isfinite(d));
        ck_assert(isfinite(et_activate_grad(all_acts[k], -800.0, &d)) && isfinite(d));
    }
}
END_TEST

START_TEST(float_instantiation_agrees_with_double) {
    for (int k = 0; k < 5; k++)
        for (double x = -15.0; x <= 15.0; x += 0.173) {
            double d;
            float df;
            const double y = et_activate_grad(all_acts[k], x, &d);
            const float yf = et_activate_grad_f(all_acts[k], (float)x, &df);
            ck_assert_msg(fabs(yf - y) <= 2e-6 * fmax(1.0, fabs(y)) &&
                              fabs(df - d) <= 2e-6 * fmax(1.0, fabs(d)),
                          "act %d at %g: float %g/%g, double %g/%g", k, x, yf, df, y, d);
        }
    for (double r = 0.0; r < 5.5; r += 0.0917) {
        double dc;
        float dcf;
        const double c = et_cutoff(r, 0.8, 5.0, &dc);
        const float cf = et_cutoff_f((float)r, 0.8f, 5.0f, &dcf);
        ck_assert(fabs(cf - c) <= 1e-6 && fabs(dcf - dc) <= 1e-5);
    }
}
END_TEST

static double cut_cl, cut_cu;
static double cutoff_value(double r) {
    return et_cutoff(r, cut_cl, cut_cu, NULL);
}

START_TEST(cosine_cutoff_values_and_derivative) {
    const double cls[2] = {0.0, 0.8};
    cut_cl = cls[_i];
    cut_cu = 5.0;
    double dc;
    /* ends and middle */
    ck_assert(et_cutoff(cut_cu, cut_cl, cut_cu, &dc) == 0.0 && dc == 0.0);
    ck_assert(et_cutoff(cut_cu + 1.0, cut_cl, cut_cu, &dc) == 0.0 && dc == 0.0);
    if (cut_cl > 0.0) {
        ck_assert(et_cutoff(cut_cl, cut_cl, cut_cu, &dc) == 0.0);
        ck_assert(et_cutoff(0.0, cut_cl, cut_cu, &dc) == 0.0); /* self-loops get c(0) = 0 */
        ck_assert(fabs(et_cutoff(0.5 * (cut_cl + cut_cu), cut_cl, cut_cu, &dc) - 1.0) < 1e-15);
    } else {
        ck_assert(et_cutoff(0.0, 0.0, cut_cu, &dc) == 1.0 && dc == 0.0);
        ck_assert(fabs(et_cutoff(2.5, 0.0, 5.0, NULL) - 0.5) < 1e-15);
    }
    for (double r = cut_cl + 0.01; r < cut_cu - 0.01; r += 0.0731) {
        et_cutoff(r, cut_cl, cut_cu, &dc);
        const double fd = FD(cutoff_value, r, 1e-6);
        ck_assert_msg(fabs(dc - fd) <= 1e-8, "c'(%g) = %g, fd %g", r, dc, fd);
    }
}
END_TEST

START_TEST(radial_basis_derivatives_match_finite_differences) {
    enum { K = 6 };
    const double cl = _i ? 0.7 : 0.0, cu = 4.5, alpha = 5.0 / (cu - cl);
    const double start = exp(cl - cu);
    double means[K], betas[K], offs[K];
    for (int k = 0; k < K; k++) {
        means[k] = start + (1.0 - start) * k / (K - 1);
        betas[k] = pow(2.0 / K * (1.0 - start), -2.0);
        offs[k] = cl + (cu - cl) * k / (K - 1);
    }
    const double coeff = -0.5 / ((offs[1] - offs[0]) * (offs[1] - offs[0]));
    for (double r = 0.05; r < cu + 0.3; r += 0.0613) {
        double f[K], df[K], fp[K], fm[K];
        const double h = 1e-6;
        et_rbf_expnorm(r, cl, cu, alpha, means, betas, K, f, df);
        et_rbf_expnorm(r + h, cl, cu, alpha, means, betas, K, fp, NULL);
        et_rbf_expnorm(r - h, cl, cu, alpha, means, betas, K, fm, NULL);
        for (int k = 0; k < K; k++) {
            /* definition: cosine envelope with lower cutoff 0, exponent with cl */
            const double env = r < cu ? 0.5 * (cos(r * 3.14159265358979323846 / cu) + 1.0) : 0.0;
            const double u = exp(alpha * (cl - r));
            ck_assert(fabs(f[k] - env * exp(-betas[k] * (u - means[k]) * (u - means[k]))) <= 1e-15);
            if (fabs(r - cu) > 2 * h)
                ck_assert_msg(fabs(df[k] - (fp[k] - fm[k]) / (2 * h)) <= 1e-7, "expnorm f'_%d(%g)",
                              k, r);
        }
        et_rbf_gauss(r, offs, coeff, K, f, df);
        et_rbf_gauss(r + h, offs, coeff, K, fp, NULL);
        et_rbf_gauss(r - h, offs, coeff, K, fm, NULL);
        for (int k = 0; k < K; k++) {
            ck_assert(fabs(f[k] - exp(coeff * (r - offs[k]) * (r - offs[k]))) <= 1e-15);
            ck_assert_msg(fabs(df[k] - (fp[k] - fm[k]) / (2 * h)) <= 1e-7, "gauss f'_%d(%g)", k, r);
        }
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("et_math");
    TCase *tc = tcase_create("scalar");
    tcase_add_loop_test(tc, activation_derivatives_match_finite_differences, 0, 5);
    tcase_add_test(tc, activation_values_match_definitions);
    tcase_add_test(tc, float_instantiation_agrees_with_double);
    tcase_add_loop_test(tc, cosine_cutoff_values_and_derivative, 0, 2);
    tcase_add_loop_test(tc, radial_basis_derivatives_match_finite_differences, 0, 2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
