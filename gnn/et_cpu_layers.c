/*
 * et_cpu_layers.c - the model math of the float64 CPU reference (ET_SPEC.md sections 3-6):
 * neighbour embedding, attention layers and output head, forward and analytic backward,
 * OpenMP over atoms. et_cpu.c owns the workspace, the edges and the exchange.
 *
 * Determinism: every per-atom and per-edge quantity is written by exactly one thread, in a
 * fixed order (receiver pass over each receiver's edges, sender pass over the transpose
 * index), so results do not depend on the thread count and no atomics are needed.
 */
#include <math.h>
#include <string.h>

#include "et_cpu_internal.h"
#include "et_math.h"

/* ---- small dense helpers ----------------------------------------------------------------- */

/* y[o] = b[o] + sum_i W[o][i] x[i]; W is [n_out][n_in] (b may be NULL). Eight rows at a
   time for independent accumulation chains; each row is still summed in order of i. */
static void lin(double *y, const double *W, const double *b, const double *x, int n_out, int n_in) {
    int o = 0;
    for (; o + 8 <= n_out; o += 8) {
        const double *w = W + (size_t)o * n_in;
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < n_in; i++) {
            const double xi = x[i];
            for (int r = 0; r < 8; r++)
                s[r] += w[(size_t)r * n_in + i] * xi;
        }
        for (int r = 0; r < 8; r++)
            y[o + r] = b ? s[r] + b[o + r] : s[r];
    }
    for (; o < n_out; o++) {
        const double *w = W + (size_t)o * n_in;
        double s = 0.0;
        for (int i = 0; i < n_in; i++)
            s += w[i] * x[i];
        y[o] = b ? s + b[o] : s;
    }
}

/* y = b + W x with W given transposed (Wt is [n_in][n_out]); per output the same sum as
   lin(), in order of i, then the bias. Four inputs per sweep over y (same order of
   additions), vectorised over outputs. */
static void lin_t(double *restrict y, const double *restrict Wt, const double *restrict b,
                  const double *restrict x, int n_out, int n_in) {
    memset(y, 0, sizeof(double) * (size_t)n_out);
    int i = 0;
    for (; i + 4 <= n_in; i += 4) {
        const double *w0 = Wt + (size_t)i * n_out, *w1 = w0 + n_out, *w2 = w1 + n_out,
                     *w3 = w2 + n_out;
        const double x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
#pragma omp simd
        for (int o = 0; o < n_out; o++)
            y[o] = (((y[o] + w0[o] * x0) + w1[o] * x1) + w2[o] * x2) + w3[o] * x3;
    }
    for (; i < n_in; i++) {
        const double *w = Wt + (size_t)i * n_out;
        const double xi = x[i];
#pragma omp simd
        for (int o = 0; o < n_out; o++)
            y[o] += w[o] * xi;
    }
    if (b)
        for (int o = 0; o < n_out; o++)
            y[o] += b[o];
}

/* gx[i] += sum_o gy[o] W[o][i] (input gradient of lin), in order of o. */
static void lin_t_acc(double *restrict gx, const double *restrict W, const double *restrict gy,
                      int n_out, int n_in) {
    int o = 0;
    for (; o + 4 <= n_out; o += 4) {
        const double *w0 = W + (size_t)o * n_in, *w1 = w0 + n_in, *w2 = w1 + n_in, *w3 = w2 + n_in;
        const double g0 = gy[o], g1 = gy[o + 1], g2 = gy[o + 2], g3 = gy[o + 3];
#pragma omp simd
        for (int i = 0; i < n_in; i++)
            gx[i] = (((gx[i] + g0 * w0[i]) + g1 * w1[i]) + g2 * w2[i]) + g3 * w3[i];
    }
    for (; o < n_out; o++) {
        const double *w = W + (size_t)o * n_in;
        const double go = gy[o];
#pragma omp simd
        for (int i = 0; i < n_in; i++)
            gx[i] += go * w[i];
    }
}

/* PyTorch LayerNorm (eps 1e-5, biased variance): y = gamma (x - mu) rs + beta. */
static void layernorm(double *y, const double *x, const double *gamma, const double *beta, int n,
                      double *mu_out, double *rs_out) {
    double mu = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mu += x[i];
    mu /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mu) * (x[i] - mu);
    var /= n;
    double rs = 1.0 / sqrt(var + 1e-5);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - mu) * rs * gamma[i] + beta[i];
    *mu_out = mu;
    *rs_out = rs;
}

/* gx += LayerNorm input gradient: rs (gh - mean(gh) - xh mean(gh xh)), gh = gamma gy. */
static void layernorm_bwd_acc(double *gx, const double *x, double mu, double rs,
                              const double *gamma, const double *gy, int n) {
    double m1 = 0.0, m2 = 0.0;
    for (int i = 0; i < n; i++) {
        double gh = gamma[i] * gy[i];
        m1 += gh;
        m2 += gh * (x[i] - mu) * rs;
    }
    m1 /= n;
    m2 /= n;
    for (int i = 0; i < n; i++)
        gx[i] += rs * (gamma[i] * gy[i] - m1 - (x[i] - mu) * rs * m2);
}

/* x[i] <- act(x[i]) for i < n, with act'(x[i]) in dy[i] when dy is non-NULL; one loop per
   activation so the scalar function inlines. */
static void activate_vec(et_act a, double *x, double *dy, int n) {
    double d;
#define ACT_LOOP(fn)                                                                               \
    for (int i = 0; i < n; i++) {                                                                  \
        x[i] = fn(x[i], &d);                                                                       \
        if (dy)                                                                                    \
            dy[i] = d;                                                                             \
    }                                                                                              \
    break;
    switch (a) {
    case ET_ACT_SSP:
        ACT_LOOP(et_ssp_grad)
    case ET_ACT_TANH:
        ACT_LOOP(et_tanh_grad)
    case ET_ACT_SIGMOID:
        ACT_LOOP(et_sigmoid_grad)
    case ET_ACT_MISH:
        ACT_LOOP(et_mish_grad)
    case ET_ACT_SILU:
    default:
        ACT_LOOP(et_silu_grad)
    }
#undef ACT_LOOP
}

/* Edge filters of one layer: dk = act(W_dk f + b) [F], dv = act(W_dv f + b) [3F], with their
   activation derivatives at the pre-activation when dkg / dvg are non-NULL. */
static void edge_filters(const et_desc *d, const et_layer *ly, const struct cpu_wt *wt,
                         const double *f, double *dk, double *dkg, double *dv, double *dvg) {
    const int F = d->F, K = d->K;
    if (d->dist_influence & ET_DI_KEYS) {
        lin_t(dk, wt->dk, ly->dk_b, f, F, K);
        activate_vec(d->act, dk, dkg, F);
    }
    if (d->dist_influence & ET_DI_VALUES) {
        lin_t(dv, wt->dv, ly->dv_b, f, 3 * F, K);
        activate_vec(d->act, dv, dvg, 3 * F);
    }
}

/* Cache record of edge e in layer l: dk [F], dv [3F] (then, in mode 2, dk' [F], dv' [3F]). */
static double *filt_rec(const cpu_state *st, int l, int64_t e) {
    const size_t F = (size_t)st->d->F;
    if (st->filt_mode == 2)
        return st->e_filt + ((size_t)l * (size_t)st->n_edges + (size_t)e) * 8 * F;
    return st->e_filt + (size_t)e * 4 * F;
}

/* vec_proj of one atom: P[c][0:3F] = W_vp vec[c], c = 0..2; vdot = sum_c P1[c] P2[c]. */
static void vec_proj(const et_desc *d, const struct cpu_wt *wt, const double *vec, double *P,
                     double *vdot) {
    const int F = d->F;
    for (int c = 0; c < 3; c++)
        lin_t(P + (size_t)c * 3 * F, wt->vec, NULL, vec + (size_t)c * F, 3 * F, F);
    for (int f = 0; f < F; f++) {
        double s = 0.0;
        for (int c = 0; c < 3; c++)
            s += P[c * 3 * F + f] * P[c * 3 * F + F + f];
        vdot[f] = s;
    }
}

/* ---- forward --------------------------------------------------------------------------------- */

/* Layer-0 x into tmpf: E[z] (+ NeighborEmbedding for owned atoms, ET_SPEC section 3). */
void et_cpu_embed_forward(cpu_state *st, const ds4sci_system *sys) {
    const et_desc *d = st->d;
    const int F = d->F, K = d->K;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;

#pragma omp parallel num_threads(st->n_threads)
    {
        double *sc = st->scratch + st->scratch_per_thread * (size_t)et_cpu_thread_id();
        double *cat = sc;        /* [2F] (x0, m) */
        double *wf = sc + 2 * F; /* [F] distance_proj(f) */
#pragma omp for schedule(dynamic, 16)
        for (int32_t t = 0; t < n; t++) {
            const double *x0 = d->emb + (size_t)sys->z[t] * F;
            double *xt = st->tmpf + (size_t)t * F;
            if (!d->neighbor_embedding || t >= nl) {
                memcpy(xt, x0, sizeof(double) * F);
                continue;
            }
            memcpy(cat, x0, sizeof(double) * F);
            double *m = cat + F;
            memset(m, 0, sizeof(double) * F);
            for (int64_t e = st->recv_off[t] + 1; e < st->recv_off[t + 1]; e++) {
                const double c = st->e_geo[(size_t)e * GEO_N + GEO_C];
                const double *enb = d->ne_emb + (size_t)sys->z[st->e_src[e]] * F;
                lin_t(wf, st->ne_dp_t, d->ne_dp_b, st->e_f + (size_t)e * K, F, K);
                for (int f = 0; f < F; f++)
                    m[f] += wf[f] * c * enb[f];
            }
            lin_t(xt, st->ne_comb_t, d->ne_comb_b, cat, F, 2 * F);
        }
    }
}

/* Attention layer l (ET_SPEC section 4): node work for all atoms, messages into owned atoms,
   residual update of owned rows of layer l+1's input. */
void et_cpu_layer_forward(cpu_state *st, const ds4sci_system *sys, int l) {
    const et_desc *d = st->d;
    const et_layer *ly = &d->layers[l];
    const struct cpu_wt *wt = &st->wt[l];
    const int F = d->F, H = d->H, D = d->D, K = d->K;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    const size_t F4 = 4 * (size_t)F, F5 = 5 * (size_t)F;
    const double *xv = st->xv + (size_t)l * n * F4;
    double *xvn = st->xv + (size_t)(l + 1) * n * F4;
    double *qkv = st->qkv + (size_t)l * n * F5;
    double *lns = st->lns + (size_t)l * n * 2;
    double *o12 = st->o12 + (size_t)l * n * 2 * F;
    const int has_dk = d->dist_influence & ET_DI_KEYS, has_dv = d->dist_influence & ET_DI_VALUES;

#pragma omp parallel num_threads(st->n_threads)
    {
        double *sc = st->scratch + st->scratch_per_thread * (size_t)et_cpu_thread_id();
#pragma omp for schedule(static)
        for (int32_t i = 0; i < n; i++) {
            /* ghosts that send on no kept edge (beyond the cutoff: the caller's skin) are
               never read; their rows stay unset here and are skipped in the backward */
            if (i >= nl && st->send_off[i + 1] == st->send_off[i])
                continue;
            double *h = sc;
            double *qi = qkv + (size_t)i * F5;
            layernorm(h, xv + (size_t)i * F4, ly->ln_w, ly->ln_b, F, &lns[2 * i], &lns[2 * i + 1]);
            lin_t(qi, wt->q, ly->q_b, h, F, F);
            lin_t(qi + F, wt->k, ly->k_b, h, F, F);
            lin_t(qi + 2 * F, wt->v, ly->v_b, h, 3 * F, F);
        }

        double *dk_buf = sc, *dv_buf = dk_buf + F, *vt = dv_buf + 3 * F, *X = vt + 3 * F,
               *V = X + F;
        double *P = V + 3 * F, *vdot = P + 9 * F, *o = vdot + F, *A = o + 3 * F;
#pragma omp for schedule(dynamic, 8)
        for (int32_t t = 0; t < nl; t++) {
            const double *qt = qkv + (size_t)t * F5;
            memset(X, 0, sizeof(double) * F);
            memset(V, 0, sizeof(double) * 3 * F);
            for (int64_t e = st->recv_off[t]; e < st->recv_off[t + 1]; e++) {
                const int32_t s = st->e_src[e];
                const double *geo = st->e_geo + (size_t)e * GEO_N;
                const double *ks = qkv + (size_t)s * F5 + F, *vs = ks + F;
                const double *vecs = xv + (size_t)s * F4 + F;
                const double c = geo[GEO_C];
                const double *dk = dk_buf, *dv = dv_buf;
                if (st->filt_mode == 2) { /* computed once here, reused by the backward */
                    double *r = filt_rec(st, l, e);
                    edge_filters(d, ly, wt, st->e_f + (size_t)e * K, r, r + 4 * F, r + F,
                                 r + 5 * F);
                    dk = r;
                    dv = r + F;
                } else {
                    edge_filters(d, ly, wt, st->e_f + (size_t)e * K, dk_buf, NULL, dv_buf, NULL);
                }
                for (int hh = 0; hh < H; hh++) {
                    double ap = 0.0;
                    for (int dd = 0; dd < D; dd++) {
                        const int f = hh * D + dd;
                        ap += has_dk ? qt[f] * ks[f] * dk[f] : qt[f] * ks[f];
                    }
                    double a = et_activate(d->attn_act, ap);
                    A[hh] = d->vector_cutoff ? a : a * c;
                }
                for (int j = 0; j < 3 * F; j++) {
                    double v = d->vector_cutoff ? vs[j] * c : vs[j];
                    vt[j] = has_dv ? v * dv[j] : v;
                }
                for (int hh = 0; hh < H; hh++) {
                    for (int dd = 0; dd < D; dd++) {
                        const int f = hh * D + dd;
                        const double xs = vt[hh * 3 * D + dd], g1 = vt[hh * 3 * D + D + dd],
                                     g2 = vt[hh * 3 * D + 2 * D + dd];
                        X[f] += xs * A[hh];
                        for (int cc = 0; cc < 3; cc++)
                            V[cc * F + f] += vecs[cc * F + f] * g1 + g2 * geo[GEO_D + cc];
                    }
                }
            }
            const double *xt = xv + (size_t)t * F4, *vect = xt + F;
            double *xo = xvn + (size_t)t * F4, *veco = xo + F;
            vec_proj(d, wt, vect, P, vdot);
            lin_t(o, wt->o, ly->o_b, X, 3 * F, F);
            memcpy(o12 + (size_t)t * 2 * F, o, sizeof(double) * 2 * F);
            for (int f = 0; f < F; f++)
                xo[f] = xt[f] + (vdot[f] * o[F + f] + o[2 * F + f]);
            for (int cc = 0; cc < 3; cc++)
                for (int f = 0; f < F; f++)
                    veco[cc * F + f] =
                        vect[cc * F + f] + (P[cc * 3 * F + 2 * F + f] * o[f] + V[cc * F + f]);
        }
    }
    /* Ghost rows of the next input come from the exchange; clear them so a missing ghost
       shows up as a deterministic wrong answer rather than stale data. */
    memset(xvn + (size_t)nl * F4, 0, sizeof(double) * F4 * (size_t)(n - nl));
}

/* ---- output head: forward and backward per atom (ET_SPEC section 5 and 6) ----------------- */

typedef struct geb_tape {
    double *u;   /* [3][in]  vec1_proj(v) */
    double *nrm; /* [in]     |u| over c */
    double *w;   /* [3][out] vec2_proj(v) */
    double *cat; /* [2 in]   (x, |u|) */
    double *ya;  /* [in]     pre-activation of update_net.layers.0 */
    double *yg;  /* [in]     act'(ya) */
    double *y;   /* [2 out]  update_net output (s, gate) */
} geb_tape;

static double *geb_tape_init(geb_tape *t, int in, int out, double *sp) {
    t->u = sp, sp += 3 * in;
    t->nrm = sp, sp += in;
    t->w = sp, sp += 3 * out;
    t->cat = sp, sp += 2 * in;
    t->ya = sp, sp += in;
    t->yg = sp, sp += in;
    t->y = sp, sp += 2 * out;
    return sp;
}

/* GatedEquivariantBlock forward: x' (out, act applied if scalar_activation) and v' (3 x out,
   NULL if not needed). */
static void geb_forward(const et_geb *g, et_act act, double eps, const double *x, const double *v,
                        geb_tape *t, double *xo, double *vo) {
    const int in = g->in, out = g->out;
    for (int c = 0; c < 3; c++) {
        lin(t->u + c * in, g->vec1_w, NULL, v + c * in, in, in);
        lin(t->w + c * out, g->vec2_w, NULL, v + c * in, out, in);
    }
    /* Zero-norm convention: |u| = 0 with zero gradient (TorchMD-Net masks all-zero blocks;
       PyTorch's norm gradient is 0 at 0 elsewhere). With head_vector_norm_eps the norm is
       sqrt(|u|^2 + eps^2): smooth at u = 0, always > 0 (docs/model_format.md). */
    for (int j = 0; j < in; j++) {
        double s = 0.0;
        for (int c = 0; c < 3; c++)
            s += t->u[c * in + j] * t->u[c * in + j];
        t->nrm[j] = sqrt(s + eps * eps);
    }
    memcpy(t->cat, x, sizeof(double) * in);
    memcpy(t->cat + in, t->nrm, sizeof(double) * in);
    lin(t->ya, g->up0_w, g->up0_b, t->cat, in, 2 * in);
    double *ha = t->cat; /* reuse: activated hidden, [in] */
    for (int j = 0; j < in; j++)
        ha[j] = et_activate_grad(act, t->ya[j], &t->yg[j]);
    lin(t->y, g->up2_w, g->up2_b, ha, 2 * out, in);
    for (int o = 0; o < out; o++)
        xo[o] = g->scalar_activation ? et_activate(act, t->y[o]) : t->y[o];
    if (vo)
        for (int c = 0; c < 3; c++)
            for (int o = 0; o < out; o++)
                vo[c * out + o] = t->y[out + o] * t->w[c * out + o];
}

/* GatedEquivariantBlock backward: from g_xo [out] and g_vo [3][out] (NULL: zero) to
   g_x [in] and g_v [3][in] (overwritten). gy is scratch [2 out + in]. */
static void geb_backward(const et_geb *g, et_act act, const geb_tape *t, const double *g_xo,
                         const double *g_vo, double *g_x, double *g_v, double *gy) {
    const int in = g->in, out = g->out;
    double *gya = gy + 2 * out;
    for (int o = 0; o < out; o++) {
        double dg = 1.0;
        if (g->scalar_activation)
            et_activate_grad(act, t->y[o], &dg);
        gy[o] = g_xo[o] * dg;
        double gg = 0.0;
        if (g_vo)
            for (int c = 0; c < 3; c++)
                gg += g_vo[c * out + o] * t->w[c * out + o];
        gy[out + o] = gg;
    }
    memset(gya, 0, sizeof(double) * in);
    lin_t_acc(gya, g->up2_w, gy, 2 * out, in);
    for (int j = 0; j < in; j++)
        gya[j] *= t->yg[j];
    /* g_cat = gya W_up0: g_x is its first half; its second half g_n goes through the norm. */
    memset(g_x, 0, sizeof(double) * in);
    for (int j = 0; j < in; j++) {
        const double *w = g->up0_w + (size_t)j * 2 * in;
        for (int i = 0; i < in; i++)
            g_x[i] += gya[j] * w[i];
    }
    memset(g_v, 0, sizeof(double) * 3 * in);
    for (int jj = 0; jj < in; jj++) {
        /* g_n[jj] = sum_j gya[j] W_up0[j][in + jj] */
        double gnj = 0.0;
        for (int j = 0; j < in; j++)
            gnj += gya[j] * g->up0_w[(size_t)j * 2 * in + in + jj];
        if (t->nrm[jj] > 0.0)
            for (int c = 0; c < 3; c++) {
                double gu = gnj * t->u[c * in + jj] / t->nrm[jj];
                if (gu != 0.0)
                    for (int i = 0; i < in; i++)
                        g_v[c * in + i] += gu * g->vec1_w[(size_t)jj * in + i];
            }
    }
    if (g_vo)
        for (int c = 0; c < 3; c++)
            for (int o = 0; o < out; o++) {
                double gw = t->y[out + o] * g_vo[c * out + o];
                if (gw != 0.0)
                    for (int i = 0; i < in; i++)
                        g_v[c * in + i] += gw * g->vec2_w[(size_t)o * in + i];
            }
}

/* out_norm, head, per-atom output e_i and dE/d(x, vec) of the last layer's output (seeded with
   std, the factor on e_i), for owned atoms. */
void et_cpu_head(cpu_state *st, const ds4sci_system *sys) {
    const et_desc *d = st->d;
    const int F = d->F, F2 = d->head[0].out, L = d->L;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    const size_t F4 = 4 * (size_t)F;
    const double *xv = st->xv + (size_t)L * n * F4;

#pragma omp parallel num_threads(st->n_threads)
    {
        double *sc = st->scratch + st->scratch_per_thread * (size_t)et_cpu_thread_id();
        geb_tape t0, t1;
        double *sp = geb_tape_init(&t0, F, F2, sc);
        sp = geb_tape_init(&t1, F2, 1, sp);
        double *xn = sp, *x1 = xn + F, *v1 = x1 + F2, *gx1 = v1 + 3 * F2, *gv1 = gx1 + F2;
        double *gxn = gv1 + 3 * F2, *gy = gxn + F;
        double e1, g_e;
#pragma omp for schedule(dynamic, 16)
        for (int32_t i = 0; i < nl; i++) {
            const double *x = xv + (size_t)i * F4, *vec = x + F;
            double mu, rs;
            layernorm(xn, x, d->out_norm_w, d->out_norm_b, F, &mu, &rs);
            geb_forward(&d->head[0], d->act, d->head_eps, xn, vec, &t0, x1, v1);
            geb_forward(&d->head[1], d->act, d->head_eps, x1, v1, &t1, &e1, NULL);
            st->eatom[i] = e1;
            g_e = d->std;
            double *g = st->g + (size_t)i * F4;
            geb_backward(&d->head[1], d->act, &t1, &g_e, NULL, gx1, gv1, gy);
            geb_backward(&d->head[0], d->act, &t0, gx1, gv1, gxn, g + F, gy);
            memset(g, 0, sizeof(double) * F);
            layernorm_bwd_acc(g, x, mu, rs, d->out_norm_w, gxn, F);
        }
    }
    memset(st->g + (size_t)nl * F4, 0, sizeof(double) * F4 * (size_t)(n - nl));
}

/* ---- backward ---------------------------------------------------------------------------- */

/*
 * Attention layer l backward (ET_SPEC section 6). In: st->g = dE/d(layer-l output), zero on
 * ghost rows. Out: st->g2 = dE/d(layer-l input) for every row (ghost rows hold what the
 * ghost copies contributed as senders; the caller folds them into their owners), and the
 * per-edge accumulators e_gf, e_gg.
 */
void et_cpu_layer_backward(cpu_state *st, const ds4sci_system *sys, int l) {
    const et_desc *d = st->d;
    const et_layer *ly = &d->layers[l];
    const struct cpu_wt *wt = &st->wt[l];
    const int F = d->F, H = d->H, D = d->D, K = d->K;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    const size_t F4 = 4 * (size_t)F, F5 = 5 * (size_t)F;
    const double *xv = st->xv + (size_t)l * n * F4;
    const double *qkv = st->qkv + (size_t)l * n * F5;
    const double *lns = st->lns + (size_t)l * n * 2;
    const double *o12 = st->o12 + (size_t)l * n * 2 * F;
    const int has_dk = d->dist_influence & ET_DI_KEYS, has_dv = d->dist_influence & ET_DI_VALUES;
    const int vc = d->vector_cutoff;

    memset(st->g2 + (size_t)nl * F4, 0, sizeof(double) * F4 * (size_t)(n - nl));

#pragma omp parallel num_threads(st->n_threads)
    {
        double *sc = st->scratch + st->scratch_per_thread * (size_t)et_cpu_thread_id();

        /* A. updates and output projection, owned atoms: dE/d(X, V) and the residual and
           vec_proj parts of dE/d(x_in, vec_in). */
        {
            double *P = sc, *vdot = P + 9 * F, *go = vdot + F, *gP = go + 3 * F;
#pragma omp for schedule(static)
            for (int32_t t = 0; t < nl; t++) {
                const double *vec = xv + (size_t)t * F4 + F;
                const double *gx = st->g + (size_t)t * F4, *gvec = gx + F;
                const double *o1 = o12 + (size_t)t * 2 * F, *o2 = o1 + F;
                double *gagg = st->gagg + (size_t)t * F4;
                double *g2 = st->g2 + (size_t)t * F4;
                vec_proj(d, wt, vec, P, vdot);
                for (int f = 0; f < F; f++) {
                    double s = 0.0;
                    for (int c = 0; c < 3; c++)
                        s += gvec[c * F + f] * P[c * 3 * F + 2 * F + f];
                    go[f] = s;
                    go[F + f] = gx[f] * vdot[f];
                    go[2 * F + f] = gx[f];
                }
                memset(gagg, 0, sizeof(double) * F);
                lin_t_acc(gagg, ly->o_w, go, 3 * F, F);
                memcpy(gagg + F, gvec, sizeof(double) * 3 * F);
                memcpy(g2, gx, sizeof(double) * F4);
                for (int c = 0; c < 3; c++) {
                    const double *Pc = P + c * 3 * F;
                    for (int f = 0; f < F; f++) {
                        const double gvd = gx[f] * o2[f];
                        gP[f] = gvd * Pc[F + f];
                        gP[F + f] = gvd * Pc[f];
                        gP[2 * F + f] = gvec[c * F + f] * o1[f];
                    }
                    lin_t_acc(g2 + F + c * F, ly->vec_w, gP, 3 * F, F);
                }
            }
        }

        /* B. receiver pass, owned atoms: dE/dq and the per-edge geometry gradients; keeps
           A and dE/da_pre per edge for the sender pass. */
        {
            double *dk_buf = sc, *dkg_buf = dk_buf + F, *dv_buf = dkg_buf + F;
            double *dvg_buf = dv_buf + 3 * F;
            double *vt = dvg_buf + 3 * F, *gvt = vt + 3 * F, *gdk = gvt + 3 * F, *gdv = gdk + F;
            double *gq = gdv + 3 * F, *ap = gq + F, *a = ap + H, *ag = a + H, *gA = ag + H;
#pragma omp for schedule(dynamic, 8)
            for (int32_t t = 0; t < nl; t++) {
                const double *qt = qkv + (size_t)t * F5;
                const double *gX = st->gagg + (size_t)t * F4, *gV = gX + F;
                memset(gq, 0, sizeof(double) * F);
                for (int64_t e = st->recv_off[t]; e < st->recv_off[t + 1]; e++) {
                    const int32_t s = st->e_src[e];
                    const double *geo = st->e_geo + (size_t)e * GEO_N;
                    const double *ks = qkv + (size_t)s * F5 + F, *vs = ks + F;
                    const double *vecs = xv + (size_t)s * F4 + F;
                    const double c = geo[GEO_C], *dir = geo + GEO_D;
                    double *eA = st->e_a + (size_t)e * H, *egap = st->e_gap + (size_t)e * H;
                    const double *dk = dk_buf, *dkg = dkg_buf, *dv = dv_buf, *dvg = dvg_buf;
                    if (st->filt_mode == 2) {
                        const double *r = filt_rec(st, l, e);
                        dk = r, dv = r + F, dkg = r + 4 * F, dvg = r + 5 * F;
                    } else {
                        edge_filters(d, ly, wt, st->e_f + (size_t)e * K, dk_buf, dkg_buf, dv_buf,
                                     dvg_buf);
                        if (st->filt_mode == 1) { /* for the sender pass */
                            double *r = filt_rec(st, l, e);
                            if (has_dk)
                                memcpy(r, dk_buf, sizeof(double) * F);
                            if (has_dv)
                                memcpy(r + F, dv_buf, sizeof(double) * 3 * F);
                        }
                    }
                    for (int hh = 0; hh < H; hh++) {
                        double s_ = 0.0;
                        for (int dd = 0; dd < D; dd++) {
                            const int f = hh * D + dd;
                            s_ += has_dk ? qt[f] * ks[f] * dk[f] : qt[f] * ks[f];
                        }
                        ap[hh] = s_;
                        a[hh] = et_activate_grad(d->attn_act, s_, &ag[hh]);
                        eA[hh] = vc ? a[hh] : a[hh] * c;
                        gA[hh] = 0.0;
                    }
                    for (int j = 0; j < 3 * F; j++) {
                        double v = vc ? vs[j] * c : vs[j];
                        vt[j] = has_dv ? v * dv[j] : v;
                    }
                    double gdir[3] = {0.0, 0.0, 0.0};
                    for (int hh = 0; hh < H; hh++) {
                        for (int dd = 0; dd < D; dd++) {
                            const int f = hh * D + dd, jx = hh * 3 * D + dd;
                            const int j1 = jx + D, j2 = jx + 2 * D;
                            gvt[jx] = gX[f] * eA[hh];
                            gA[hh] += gX[f] * vt[jx];
                            double g1 = 0.0, g2 = 0.0;
                            for (int cc = 0; cc < 3; cc++) {
                                g1 += gV[cc * F + f] * vecs[cc * F + f];
                                g2 += gV[cc * F + f] * dir[cc];
                                gdir[cc] += gV[cc * F + f] * vt[j2];
                            }
                            gvt[j1] = g1;
                            gvt[j2] = g2;
                        }
                    }
                    double gc = 0.0;
                    if (!vc) {
                        for (int hh = 0; hh < H; hh++) {
                            gc += gA[hh] * a[hh];
                            gA[hh] *= c;
                        }
                    } else {
                        for (int j = 0; j < 3 * F; j++)
                            gc += gvt[j] * (has_dv ? vs[j] * dv[j] : vs[j]);
                    }
                    for (int hh = 0; hh < H; hh++) {
                        const double gap = gA[hh] * ag[hh];
                        egap[hh] = gap;
                        for (int dd = 0; dd < D; dd++) {
                            const int f = hh * D + dd;
                            gq[f] += has_dk ? gap * ks[f] * dk[f] : gap * ks[f];
                            if (has_dk)
                                gdk[f] = gap * qt[f] * ks[f] * dkg[f];
                        }
                    }
                    double *gf = st->e_gf + (size_t)e * K;
                    if (has_dk)
                        lin_t_acc(gf, ly->dk_w, gdk, F, K);
                    if (has_dv) {
                        for (int j = 0; j < 3 * F; j++)
                            gdv[j] = gvt[j] * (vc ? vs[j] * c : vs[j]) * dvg[j];
                        lin_t_acc(gf, ly->dv_w, gdv, 3 * F, K);
                    }
                    double *gg = st->e_gg + (size_t)e * GG_N;
                    gg[GG_C] += gc;
                    for (int cc = 0; cc < 3; cc++)
                        gg[GG_D + cc] += gdir[cc];
                }
                memcpy(st->gqkv + (size_t)t * F5, gq, sizeof(double) * F);
            }
        }

        /* C. sender pass and node backward, every atom (owned or ghost): dE/dk, dE/dv and
           the vec message part of dE/dvec_in over the edges this atom sends on, then
           q/k/v projections and LayerNorm back to dE/dx_in. */
        {
            double *dk_buf = sc, *dv_buf = dk_buf + F, *gk = dv_buf + 3 * F, *gv = gk + F;
            double *gvec = gv + 3 * F, *gh = gvec + 3 * F;
#pragma omp for schedule(dynamic, 8)
            for (int32_t as = 0; as < n; as++) {
                if (as >= nl && st->send_off[as + 1] == st->send_off[as])
                    continue; /* unused ghost: its g2 row stays zero */
                const double *vs = qkv + (size_t)as * F5 + 2 * F;
                const double *vecs = xv + (size_t)as * F4 + F;
                double *gqkv = st->gqkv + (size_t)as * F5;
                double *g2 = st->g2 + (size_t)as * F4;
                memset(gk, 0, sizeof(double) * 7 * F); /* gk, gv, gvec */
                for (int64_t ie = st->send_off[as]; ie < st->send_off[as + 1]; ie++) {
                    const int64_t e = st->send_edge[ie];
                    const int32_t t = st->e_dst[e];
                    const double *geo = st->e_geo + (size_t)e * GEO_N;
                    const double *qt = qkv + (size_t)t * F5;
                    const double *gX = st->gagg + (size_t)t * F4, *gV = gX + F;
                    const double c = geo[GEO_C], *dir = geo + GEO_D;
                    const double *eA = st->e_a + (size_t)e * H, *egap = st->e_gap + (size_t)e * H;
                    const double *dk = dk_buf, *dv = dv_buf;
                    if (st->filt_mode != 0) {
                        dk = filt_rec(st, l, e);
                        dv = dk + F;
                    } else {
                        edge_filters(d, ly, wt, st->e_f + (size_t)e * K, dk_buf, NULL, dv_buf,
                                     NULL);
                    }
                    for (int hh = 0; hh < H; hh++) {
                        for (int dd = 0; dd < D; dd++) {
                            const int f = hh * D + dd, jx = hh * 3 * D + dd;
                            const int j1 = jx + D, j2 = jx + 2 * D;
                            gk[f] += has_dk ? egap[hh] * qt[f] * dk[f] : egap[hh] * qt[f];
                            double g1 = 0.0, g2v = 0.0;
                            for (int cc = 0; cc < 3; cc++) {
                                g1 += gV[cc * F + f] * vecs[cc * F + f];
                                g2v += gV[cc * F + f] * dir[cc];
                            }
                            const double sx = (vc ? c : 1.0) * (has_dv ? dv[jx] : 1.0);
                            const double s1 = (vc ? c : 1.0) * (has_dv ? dv[j1] : 1.0);
                            const double s2 = (vc ? c : 1.0) * (has_dv ? dv[j2] : 1.0);
                            gv[jx] += gX[f] * eA[hh] * sx;
                            gv[j1] += g1 * s1;
                            gv[j2] += g2v * s2;
                            double v1 = vc ? vs[j1] * c : vs[j1];
                            if (has_dv)
                                v1 *= dv[j1];
                            for (int cc = 0; cc < 3; cc++)
                                gvec[cc * F + f] += gV[cc * F + f] * v1;
                        }
                    }
                }
                if (as >= nl)
                    memset(gqkv, 0, sizeof(double) * F);
                memcpy(gqkv + F, gk, sizeof(double) * 4 * F);
                for (int j = 0; j < 3 * F; j++)
                    g2[F + j] += gvec[j];
                memset(gh, 0, sizeof(double) * F);
                lin_t_acc(gh, ly->q_w, gqkv, F, F);
                lin_t_acc(gh, ly->k_w, gqkv + F, F, F);
                lin_t_acc(gh, ly->v_w, gqkv + 2 * F, 3 * F, F);
                layernorm_bwd_acc(g2, xv + (size_t)as * F4, lns[2 * as], lns[2 * as + 1], ly->ln_w,
                                  gh, F);
            }
        }
    }
}

/* NeighborEmbedding backward for owned receivers, from gx0 = dE/dx (layer-0 input, [n][F],
   owned rows folded): per-edge dE/df and dE/dc. */
void et_cpu_embed_backward(cpu_state *st, const ds4sci_system *sys, const double *gx0) {
    const et_desc *d = st->d;
    const int F = d->F, K = d->K;
    const int32_t nl = sys->n_local;

#pragma omp parallel num_threads(st->n_threads)
    {
        double *sc = st->scratch + st->scratch_per_thread * (size_t)et_cpu_thread_id();
        double *gm = sc, *wf = gm + F, *gw = wf + F;
#pragma omp for schedule(dynamic, 16)
        for (int32_t t = 0; t < nl; t++) {
            const double *gx = gx0 + (size_t)t * F;
            for (int f = 0; f < F; f++) {
                double s = 0.0;
                for (int o = 0; o < F; o++)
                    s += gx[o] * d->ne_comb_w[(size_t)o * 2 * F + F + f];
                gm[f] = s;
            }
            for (int64_t e = st->recv_off[t] + 1; e < st->recv_off[t + 1]; e++) {
                const double c = st->e_geo[(size_t)e * GEO_N + GEO_C];
                const double *enb = d->ne_emb + (size_t)sys->z[st->e_src[e]] * F;
                lin_t(wf, st->ne_dp_t, d->ne_dp_b, st->e_f + (size_t)e * K, F, K);
                double gc = 0.0;
                for (int f = 0; f < F; f++) {
                    const double gW = gm[f] * enb[f];
                    gc += gW * wf[f];
                    gw[f] = gW * c;
                }
                lin_t_acc(st->e_gf + (size_t)e * K, d->ne_dp_w, gw, F, K);
                st->e_gg[(size_t)e * GG_N + GG_C] += gc;
            }
        }
    }
}
