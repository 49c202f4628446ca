/*
 * et_math_impl.h - body of et_math.h, instantiated twice (double, float). Do not include this
 * file directly: include et_math.h. It expects ET_T (the scalar type), ET_FN(name) (the
 * instantiated name), ET_K(c) (a constant in ET_T) and the math functions ET_EXP, ET_LOG1P,
 * ET_COS, ET_SIN, ET_TANH, ET_FABS to be defined. No include guard on purpose.
 */

/* ---- activations ------------------------------------------------------------------------- */

/* sigma(x) = 1 / (1 + e^-x), without overflow for either sign. */
static inline DS4SCI_HD ET_T ET_FN(et_sigmoid)(ET_T x) {
    if (x >= ET_K(0))
        return ET_K(1) / (ET_K(1) + ET_EXP(-x));
    ET_T e = ET_EXP(x);
    return e / (ET_K(1) + e);
}

/* log(1 + e^x) without overflow (no threshold: nn.Mish uses it this way). */
static inline DS4SCI_HD ET_T ET_FN(et_softplus_raw)(ET_T x) {
    return (x > ET_K(0) ? x : ET_K(0)) + ET_LOG1P(ET_EXP(-ET_FABS(x)));
}

/* PyTorch F.softplus (beta 1, threshold 20): x above the threshold. */
static inline DS4SCI_HD ET_T ET_FN(et_softplus)(ET_T x) {
    if (x > ET_K(ET_SOFTPLUS_THRESHOLD))
        return x;
    return ET_FN(et_softplus_raw)(x);
}

/* Each activation at x, with its derivative in *dy (never NULL). */
static inline DS4SCI_HD ET_T ET_FN(et_ssp_grad)(ET_T x, ET_T *dy) {
    /* softplus(x) - float32(ln 2); derivative sigma(x), 1 above the threshold */
    *dy = x > ET_K(ET_SOFTPLUS_THRESHOLD) ? ET_K(1) : ET_FN(et_sigmoid)(x);
    return ET_FN(et_softplus)(x) - ET_K(ET_SSP_SHIFT);
}

static inline DS4SCI_HD ET_T ET_FN(et_silu_grad)(ET_T x, ET_T *dy) {
    /* x sigma(x); derivative sigma (1 + x (1 - sigma)) */
    ET_T s = ET_FN(et_sigmoid)(x);
    *dy = s * (ET_K(1) + x * (ET_K(1) - s));
    return x * s;
}

static inline DS4SCI_HD ET_T ET_FN(et_tanh_grad)(ET_T x, ET_T *dy) {
    ET_T y = ET_TANH(x);
    *dy = ET_K(1) - y * y;
    return y;
}

static inline DS4SCI_HD ET_T ET_FN(et_sigmoid_grad)(ET_T x, ET_T *dy) {
    ET_T y = ET_FN(et_sigmoid)(x);
    *dy = y * (ET_K(1) - y);
    return y;
}

static inline DS4SCI_HD ET_T ET_FN(et_mish_grad)(ET_T x, ET_T *dy) {
    /* x tanh(sp(x)); derivative tanh(sp) + x sigma (1 - tanh(sp)^2) */
    ET_T t = ET_TANH(ET_FN(et_softplus_raw)(x));
    ET_T s = ET_FN(et_sigmoid)(x);
    *dy = t + x * s * (ET_K(1) - t * t);
    return x * t;
}

/* Activation `a` at x; its derivative in *dy when dy is non-NULL. */
static inline DS4SCI_HD ET_T ET_FN(et_activate_grad)(et_act a, ET_T x, ET_T *dy) {
    ET_T y, d;
    switch (a) {
    case ET_ACT_SSP:
        y = ET_FN(et_ssp_grad)(x, &d);
        break;
    case ET_ACT_TANH:
        y = ET_FN(et_tanh_grad)(x, &d);
        break;
    case ET_ACT_SIGMOID:
        y = ET_FN(et_sigmoid_grad)(x, &d);
        break;
    case ET_ACT_MISH:
        y = ET_FN(et_mish_grad)(x, &d);
        break;
    case ET_ACT_SILU:
    default:
        y = ET_FN(et_silu_grad)(x, &d);
        break;
    }
    if (dy)
        *dy = d;
    return y;
}

/* Activation `a` at x. */
static inline DS4SCI_HD ET_T ET_FN(et_activate)(et_act a, ET_T x) {
    return ET_FN(et_activate_grad)(a, x, (ET_T *)0);
}

/* ---- cosine cutoff ----------------------------------------------------------------------- */

/*
 * TorchMD-Net CosineCutoff(cl, cu) at distance r; dc/dr in *dc when dc is non-NULL.
 *   cl > 0: 0.5 (cos(pi (2 (r - cl) / (cu - cl) + 1)) + 1) for cl < r < cu, else 0 (a bump:
 *           0 at both ends, so c(0) = 0 for self-loops);
 *   cl = 0: 0.5 (cos(r pi / cu) + 1) for r < cu, else 0 (c(0) = 1).
 * Operation order as in TorchMD-Net.
 */
static inline DS4SCI_HD ET_T ET_FN(et_cutoff)(ET_T r, ET_T cl, ET_T cu, ET_T *dc) {
    const ET_T pi = ET_K(ET_PI);
    if (cl > ET_K(0)) {
        if (r > cl && r < cu) {
            ET_T arg = pi * (ET_K(2) * (r - cl) / (cu - cl) + ET_K(1));
            if (dc)
                *dc = ET_K(-0.5) * ET_SIN(arg) * (ET_K(2) * pi / (cu - cl));
            return ET_K(0.5) * (ET_COS(arg) + ET_K(1));
        }
    } else if (r < cu) {
        ET_T arg = r * pi / cu;
        if (dc)
            *dc = ET_K(-0.5) * (pi / cu) * ET_SIN(arg);
        return ET_K(0.5) * (ET_COS(arg) + ET_K(1));
    }
    if (dc)
        *dc = ET_K(0);
    return ET_K(0);
}

/* ---- radial basis -------------------------------------------------------------------------- */

/*
 * One ExpNormal basis function, for kernels that spread k over threads. Inputs: u =
 * exp(alpha (cl - r)), phi = CosineCutoff(0, cu)(r) and dphi its derivative, alpha, mean mu
 * and width beta of function k. Returns f_k(r) = phi exp(-beta (u - mu)^2); *df (if non-NULL)
 * gets f'_k(r) = G (phi' + phi 2 beta alpha u (u - mu)), G = exp(-beta (u - mu)^2).
 */
static inline DS4SCI_HD ET_T ET_FN(et_expnorm_k)(ET_T u, ET_T phi, ET_T dphi, ET_T alpha, ET_T mu,
                                                 ET_T beta, ET_T *df) {
    ET_T du = u - mu;
    ET_T g = ET_EXP(-beta * (du * du));
    if (df)
        *df = g * (dphi + phi * ET_K(2) * beta * alpha * u * du);
    return phi * g;
}

/*
 * ExpNormalSmearing: f[k] = CosineCutoff(0, cu)(r) exp(-betas[k] (exp(alpha (cl - r)) -
 * means[k])^2), k < K; df[k] = f'_k(r) when df is non-NULL. The envelope's lower cutoff is 0
 * even when cl > 0; alpha = 5 / (cu - cl) comes from the model description.
 */
static inline DS4SCI_HD void ET_FN(et_rbf_expnorm)(ET_T r, ET_T cl, ET_T cu, ET_T alpha,
                                                   const ET_T *means, const ET_T *betas, int K,
                                                   ET_T *f, ET_T *df) {
    ET_T dphi;
    ET_T phi = ET_FN(et_cutoff)(r, ET_K(0), cu, &dphi);
    ET_T u = ET_EXP(alpha * (cl - r));
    for (int k = 0; k < K; k++) {
        ET_T d;
        f[k] = ET_FN(et_expnorm_k)(u, phi, dphi, alpha, means[k], betas[k], &d);
        if (df)
            df[k] = d;
    }
}

/*
 * GaussianSmearing: f[k] = exp(coeff (r - offset[k])^2), no envelope; df[k] = f[k] 2 coeff
 * (r - offset[k]) when df is non-NULL.
 */
static inline DS4SCI_HD void ET_FN(et_rbf_gauss)(ET_T r, const ET_T *offset, ET_T coeff, int K,
                                                 ET_T *f, ET_T *df) {
    for (int k = 0; k < K; k++) {
        ET_T x = r - offset[k];
        ET_T v = ET_EXP(coeff * (x * x));
        f[k] = v;
        if (df)
            df[k] = v * ET_K(2) * coeff * x;
    }
}
