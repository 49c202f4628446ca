/*
 * et_cpu.c - the float64 CPU reference of the ET model: forward and analytic backward
 * (ET_SPEC.md sections 1-6), OpenMP over atoms, with ghost exchange between layers
 * (docs/design.md, backend.h). It is the oracle for every other path, so it favours the
 * plain transcription of the spec over speed; the only liberty is where sums are formed
 * (per receiver, per sender), never what is summed.
 *
 * This file: workspace, edges, exchange, forces and virial, the driver; the model math is
 * in et_cpu_layers.c. Global sums run serially over per-atom partials, so results do not
 * depend on the thread count. Speed comes only from changes that keep every sum in the
 * same order (transposed weight copies, fused axpy's, a bounded cache of the per-edge
 * filters instead of recomputing them): the numbers do not depend on them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "et_cpu.h"
#include "et_cpu_internal.h"
#include "et_math.h"

/* ---- workspace ------------------------------------------------------------------------------ */

static ds4sci_status grow_atoms(cpu_state *st, size_t n, char *err, size_t err_len) {
    if (n <= st->cap_atoms && st->xv)
        return DS4SCI_OK;
    const et_desc *d = st->d;
    const int F = d->F, L = d->L;
    size_t cap = st->cap_atoms + st->cap_atoms / 2;
    if (cap < n)
        cap = n;
    if (cap < 16)
        cap = 16;
#define FREE_ARR(name, type, per) free(st->name), st->name = NULL;
#define ALLOC_ARR(name, type, per)                                                                 \
    st->name = (type *)malloc(sizeof(type) * (per) * (cap + 1));                                   \
    if (!st->name) {                                                                               \
        snprintf(err, err_len, "cannot allocate %zu bytes for " #name " (%zu atoms)", \
                 sizeof(type) * (per) * (cap + 1), cap);                                           \
        st->cap_atoms = 0;                                                                         \
        return DS4SCI_ERR_NOMEM;                                                                   \
    }
    CPU_ATOM_ARRAYS(FREE_ARR)
    CPU_ATOM_ARRAYS(ALLOC_ARR)
#undef ALLOC_ARR
#undef FREE_ARR
    st->cap_atoms = cap;
    st->n_allocs++;
    return DS4SCI_OK;
}

static ds4sci_status grow_edges(cpu_state *st, size_t n, char *err, size_t err_len) {
    if (n <= st->cap_edges && st->e_src)
        return DS4SCI_OK;
    const et_desc *d = st->d;
    const int K = d->K, H = d->H;
    size_t cap = st->cap_edges + st->cap_edges / 2;
    if (cap < n)
        cap = n;
    if (cap < 64)
        cap = 64;
#define FREE_ARR(name, type, per) free(st->name), st->name = NULL;
#define ALLOC_ARR(name, type, per)                                                                 \
    st->name = (type *)malloc(sizeof(type) * (per)*cap);                                           \
    if (!st->name) {                                                                               \
        snprintf(err, err_len, "cannot allocate %zu bytes for " #name " (%zu edges)", \
                 sizeof(type) * (per)*cap, cap);                                                   \
        st->cap_edges = 0;                                                                         \
        return DS4SCI_ERR_NOMEM;                                                                   \
    }
    CPU_EDGE_ARRAYS(FREE_ARR)
    CPU_EDGE_ARRAYS(ALLOC_ARR)
#undef ALLOC_ARR
#undef FREE_ARR
    st->cap_edges = cap;
    st->n_allocs++;
    return DS4SCI_OK;
}

static void cpu_destroy(void *state) {
    cpu_state *st = (cpu_state *)state;
    if (!st)
        return;
#define FREE_ARR(name, type, per) free(st->name);
    CPU_ATOM_ARRAYS(FREE_ARR)
    CPU_EDGE_ARRAYS(FREE_ARR)
#undef FREE_ARR
    free(st->scratch);
    free(st->e_filt);
    free(st->wt);
    free(st->wpool);
    free(st);
}

size_t ds4sci_cpu_workspace_bytes(const void *state) {
    const cpu_state *st = (const cpu_state *)state;
    if (!st)
        return 0;
    const int F = st->d->F, L = st->d->L, K = st->d->K, H = st->d->H;
    size_t per_atom = 0, per_edge = 0;
#define ADD_ATOM(name, type, per) per_atom += sizeof(type) * (per);
#define ADD_EDGE(name, type, per) per_edge += sizeof(type) * (per);
    CPU_ATOM_ARRAYS(ADD_ATOM)
    CPU_EDGE_ARRAYS(ADD_EDGE)
#undef ADD_ATOM
#undef ADD_EDGE
    size_t atoms = st->xv ? st->cap_atoms + 1 : 0;
    size_t edges = st->e_src ? st->cap_edges : 0;
    return per_atom * atoms + per_edge * edges + sizeof(double) * (st->e_filt ? st->cap_filt : 0) +
           sizeof(double) * st->scratch_per_thread * (size_t)st->n_threads;
}

int64_t ds4sci_cpu_workspace_allocs(const void *state) {
    return state ? ((const cpu_state *)state)->n_allocs : 0;
}

void ds4sci_cpu_set_filter_cache(void *state, int level) {
    if (state)
        ((cpu_state *)state)->filt_max = level < 0 ? 0 : level > 2 ? 2 : level;
}

int ds4sci_cpu_threads(const void *state) {
    return state ? ((const cpu_state *)state)->n_threads : 0;
}

/* Wt[i][o] = W[o][i]; returns the next free slot of the pool. */
static double *transpose(double *Wt, const double *W, int n_out, int n_in) {
    for (int o = 0; o < n_out; o++)
        for (int i = 0; i < n_in; i++)
            Wt[(size_t)i * n_out + o] = W[(size_t)o * n_in + i];
    return Wt + (size_t)n_out * n_in;
}

static int make_transposed(cpu_state *st) {
    const et_desc *d = st->d;
    const size_t F = (size_t)d->F, K = (size_t)d->K, L = (size_t)d->L;
    const size_t per_layer = 11 * F * F + 4 * F * K;
    st->wt = (struct cpu_wt *)calloc(L ? L : 1, sizeof(struct cpu_wt));
    st->wpool = (double *)malloc(sizeof(double) * (L * per_layer + F * K + 2 * F * F + 1));
    if (!st->wt || !st->wpool)
        return 0;
    double *p = st->wpool;
    const int f = d->F, k = d->K;
    for (size_t l = 0; l < L; l++) {
        const et_layer *ly = &d->layers[l];
        struct cpu_wt *w = &st->wt[l];
        w->q = p, p = transpose(p, ly->q_w, f, f);
        w->k = p, p = transpose(p, ly->k_w, f, f);
        w->v = p, p = transpose(p, ly->v_w, 3 * f, f);
        w->o = p, p = transpose(p, ly->o_w, 3 * f, f);
        w->vec = p, p = transpose(p, ly->vec_w, 3 * f, f);
        if (d->dist_influence & ET_DI_KEYS)
            w->dk = p, p = transpose(p, ly->dk_w, f, k);
        if (d->dist_influence & ET_DI_VALUES)
            w->dv = p, p = transpose(p, ly->dv_w, 3 * f, k);
    }
    if (d->neighbor_embedding) {
        st->ne_dp_t = p, p = transpose(p, d->ne_dp_w, f, k);
        st->ne_comb_t = p, p = transpose(p, d->ne_comb_w, f, 2 * f);
    }
    return 1;
}

static ds4sci_status cpu_create(const et_desc *d, const ds4sci_options *options, void **state,
                                char *err, size_t err_len) {
    *state = NULL;
    cpu_state *st = (cpu_state *)calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, err_len, "cannot allocate its state");
        return DS4SCI_ERR_NOMEM;
    }
    st->d = d;
    st->filt_max = 2;
#ifdef _OPENMP
    st->n_threads = options && options->n_threads > 0 ? options->n_threads : omp_get_max_threads();
#else
    (void)options;
    st->n_threads = 1;
#endif
    if (st->n_threads < 1)
        st->n_threads = 1;
    /* Largest per-thread need: the edge passes (~40F + K + 8H) and the head (~24F). */
    st->scratch_per_thread = (size_t)64 * d->F + 4 * (size_t)d->K + 16 * (size_t)d->H + 64;
    st->scratch = (double *)malloc(sizeof(double) * st->scratch_per_thread * st->n_threads);
    if (!st->scratch) {
        snprintf(err, err_len, "cannot allocate scratch for %d threads",
                 st->n_threads);
        free(st);
        return DS4SCI_ERR_NOMEM;
    }
    if (!make_transposed(st)) {
        snprintf(err, err_len, "cannot allocate transposed weights");
        cpu_destroy(st);
        return DS4SCI_ERR_NOMEM;
    }
    *state = st;
    return DS4SCI_OK;
}

/* ---- edges --------------------------------------------------------------------------------- */

/* w = r_s - r_t and its squared norm. */
static double pair_vec(const double *pos, int32_t s, int32_t t, double w[3]) {
    const double *ps = pos + 3 * (size_t)s, *pt = pos + 3 * (size_t)t;
    w[0] = ps[0] - pt[0];
    w[1] = ps[1] - pt[1];
    w[2] = ps[2] - pt[2];
    return w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
}

static void edge_rbf(const et_desc *d, double r, double *f, double *df) {
    if (d->rbf == ET_RBF_GAUSS)
        et_rbf_gauss(r, d->rbf_offset, d->rbf_coeff, d->K, f, df);
    else
        et_rbf_expnorm(r, d->cutoff_lower, d->cutoff_upper, d->alpha, d->rbf_means, d->rbf_betas,
                       d->K, f, df);
}

/*
 * Edges of the owned receivers (ET_SPEC section 1): for each owned t, the self-loop first
 * (w = 0, r = 0, d = 0), then every candidate s with cl^2 <= d^2 < cu^2, in CSR order.
 * Then the transpose index: for each atom a, the edges whose sender is a, in edge order.
 */
static ds4sci_status build_edges(cpu_state *st, const ds4sci_system *sys, int64_t *n_edges,
                                 char *err, size_t err_len) {
    const et_desc *d = st->d;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    const double cl = d->cutoff_lower, cu = d->cutoff_upper;
    const double cl2 = cl * cl, cu2 = cu * cu;
    const int K = d->K;
    int64_t *off = st->recv_off;

#pragma omp parallel for schedule(static) num_threads(st->n_threads)
    for (int32_t t = 0; t < nl; t++) {
        int64_t cnt = 1;
        for (int64_t j = sys->nbr_offset[t]; j < sys->nbr_offset[t + 1]; j++) {
            double w[3];
            double d2 = pair_vec(sys->pos, sys->nbr_index[j], t, w);
            if (d2 >= cl2 && d2 < cu2)
                cnt++;
        }
        off[t + 1] = cnt;
    }
    off[0] = 0;
    for (int32_t t = 0; t < nl; t++)
        off[t + 1] += off[t];
    const int64_t E = off[nl];
    ds4sci_status s = grow_edges(st, (size_t)E, err, err_len);
    if (s != DS4SCI_OK)
        return s;

#pragma omp parallel for schedule(static) num_threads(st->n_threads)
    for (int32_t t = 0; t < nl; t++) {
        int64_t e = off[t];
        double *geo = st->e_geo + (size_t)e * GEO_N;
        st->e_src[e] = t;
        st->e_dst[e] = t;
        memset(geo, 0, sizeof(double) * GEO_N);
        geo[GEO_C] = et_cutoff(0.0, cl, cu, NULL);
        edge_rbf(d, 0.0, st->e_f + (size_t)e * K, NULL);
        memset(st->e_df + (size_t)e * K, 0, sizeof(double) * K);
        e++;
        for (int64_t j = sys->nbr_offset[t]; j < sys->nbr_offset[t + 1]; j++) {
            const int32_t src = sys->nbr_index[j];
            double w[3];
            double d2 = pair_vec(sys->pos, src, t, w);
            if (!(d2 >= cl2 && d2 < cu2))
                continue;
            double r = sqrt(d2);
            geo = st->e_geo + (size_t)e * GEO_N;
            st->e_src[e] = src;
            st->e_dst[e] = t;
            for (int c = 0; c < 3; c++) {
                geo[GEO_W + c] = w[c];
                geo[GEO_D + c] = w[c] / r;
            }
            geo[GEO_R] = r;
            geo[GEO_C] = et_cutoff(r, cl, cu, &geo[GEO_DC]);
            edge_rbf(d, r, st->e_f + (size_t)e * K, st->e_df + (size_t)e * K);
            e++;
        }
    }

    memset(st->send_off, 0, sizeof(int64_t) * ((size_t)n + 1));
    for (int64_t e = 0; e < E; e++)
        st->send_off[st->e_src[e] + 1]++;
    for (int32_t a = 0; a < n; a++) {
        st->send_off[a + 1] += st->send_off[a];
        st->send_cur[a] = st->send_off[a];
    }
    for (int64_t e = 0; e < E; e++)
        st->send_edge[st->send_cur[st->e_src[e]]++] = e;

    memset(st->e_gf, 0, sizeof(double) * (size_t)E * K);
    memset(st->e_gg, 0, sizeof(double) * (size_t)E * GG_N);
    *n_edges = E;
    return DS4SCI_OK;
}

/* ---- exchange ------------------------------------------------------------------------------ */

static ds4sci_status xch(const ds4sci_exchange *ex, int reverse, double *data, int32_t width,
                         char *err, size_t err_len) {
    int rc = reverse ? ex->reverse(ex->user, data, width) : ex->forward(ex->user, data, width);
    if (rc != 0) {
        snprintf(err, err_len, "ghost exchange %s (width %d) returned %d",
                 reverse ? "reverse" : "forward", (int)width, rc);
        return DS4SCI_ERR_EXCHANGE;
    }
    return DS4SCI_OK;
}

/* Edge gradients dE/dw, forces, virials and energies into the result. */
static void outputs(cpu_state *st, const ds4sci_system *sys, ds4sci_result *res) {
    const et_desc *d = st->d;
    const int K = d->K;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    double *vpart = st->gagg; /* [nl][6] per-receiver virial partials (gagg is free now) */

#pragma omp parallel num_threads(st->n_threads)
    {
#pragma omp for schedule(dynamic, 16)
        for (int32_t t = 0; t < nl; t++) {
            double vp[6] = {0, 0, 0, 0, 0, 0};
            st->e_gw[(size_t)st->recv_off[t] * 3 + 0] = 0.0; /* self-loop: no gradient */
            st->e_gw[(size_t)st->recv_off[t] * 3 + 1] = 0.0;
            st->e_gw[(size_t)st->recv_off[t] * 3 + 2] = 0.0;
            for (int64_t e = st->recv_off[t] + 1; e < st->recv_off[t + 1]; e++) {
                const double *geo = st->e_geo + (size_t)e * GEO_N;
                const double *gf = st->e_gf + (size_t)e * K, *df = st->e_df + (size_t)e * K;
                const double *gg = st->e_gg + (size_t)e * GG_N, *dir = geo + GEO_D;
                const double *w = geo + GEO_W;
                double gr = gg[GG_C] * geo[GEO_DC];
                for (int k = 0; k < K; k++)
                    gr += gf[k] * df[k];
                const double dd = dir[0] * gg[GG_D] + dir[1] * gg[GG_D + 1] + dir[2] * gg[GG_D + 2];
                double *gw = st->e_gw + (size_t)e * 3;
                for (int c = 0; c < 3; c++)
                    gw[c] = (gg[GG_D + c] - dir[c] * dd) / geo[GEO_R] + gr * dir[c];
                vp[0] -= w[0] * gw[0];
                vp[1] -= w[1] * gw[1];
                vp[2] -= w[2] * gw[2];
                vp[3] -= w[0] * gw[1];
                vp[4] -= w[0] * gw[2];
                vp[5] -= w[1] * gw[2];
            }
            memcpy(vpart + (size_t)t * 6, vp, sizeof(vp));
        }

#pragma omp for schedule(dynamic, 16)
        for (int32_t a = 0; a < n; a++) {
            double f[3] = {0, 0, 0}, v[6] = {0, 0, 0, 0, 0, 0};
            for (int pass = 0; pass < 2; pass++) {
                int64_t lo, hi;
                if (pass == 0) { /* edges received by a: F_t += g_w */
                    if (a >= nl)
                        continue;
                    lo = st->recv_off[a], hi = st->recv_off[a + 1];
                } else { /* edges sent by a: F_s -= g_w */
                    lo = st->send_off[a], hi = st->send_off[a + 1];
                }
                const double sign = pass == 0 ? 1.0 : -1.0;
                for (int64_t i = lo; i < hi; i++) {
                    const int64_t e = pass == 0 ? i : st->send_edge[i];
                    const double *gw = st->e_gw + (size_t)e * 3;
                    const double *w = st->e_geo + (size_t)e * GEO_N + GEO_W;
                    for (int c = 0; c < 3; c++)
                        f[c] += sign * gw[c];
                    v[0] -= 0.5 * w[0] * gw[0];
                    v[1] -= 0.5 * w[1] * gw[1];
                    v[2] -= 0.5 * w[2] * gw[2];
                    v[3] -= 0.5 * w[0] * gw[1];
                    v[4] -= 0.5 * w[0] * gw[2];
                    v[5] -= 0.5 * w[1] * gw[2];
                }
            }
            if (res->forces)
                memcpy(res->forces + (size_t)a * 3, f, sizeof(f));
            if (res->atom_virial)
                memcpy(res->atom_virial + (size_t)a * 6, v, sizeof(v));
        }
    }

    double energy = 0.0, vir[6] = {0, 0, 0, 0, 0, 0};
    for (int32_t i = 0; i < nl; i++) {
        double e = d->std * st->eatom[i];
        if (d->atomref_enable && d->atomref)
            e += d->atomref[sys->z[i]];
        if (res->atom_energy)
            res->atom_energy[i] = e;
        energy += e;
        for (int c = 0; c < 6; c++)
            vir[c] += vpart[(size_t)i * 6 + c];
    }
    res->energy = energy;
    memcpy(res->virial, vir, sizeof(vir));
}

/* ---- driver -------------------------------------------------------------------------------- */

/* Pick the filter cache mode for E edges (see cpu_state.e_filt) and size it; never an
   error (without memory the passes recompute the filters). Mode 2 keeps records of 8F
   doubles (values and derivatives) for every layer, mode 1 records of 4F (values). */
static void reserve_filter_cache(cpu_state *st, size_t E) {
    const size_t F = (size_t)st->d->F, L = (size_t)st->d->L;
    const size_t max_doubles = ET_CPU_FILTER_CACHE_BYTES / sizeof(double);
    st->filt_mode = 0;
    int mode = st->filt_max >= 2 && E * L * 8 * F <= max_doubles ? 2
               : st->filt_max >= 1 && E * 4 * F <= max_doubles   ? 1
                                                                 : 0;
    if (mode == 0)
        return;
    const size_t need = mode == 2 ? E * L * 8 * F : E * 4 * F;
    if (need > st->cap_filt || !st->e_filt) {
        size_t cap = st->cap_filt + st->cap_filt / 2;
        cap = cap < need ? need : cap;
        cap = cap > max_doubles ? max_doubles : cap;
        free(st->e_filt);
        st->e_filt = (double *)malloc(sizeof(double) * cap);
        st->cap_filt = st->e_filt ? cap : 0;
        st->n_allocs++;
        if (!st->e_filt)
            return;
    }
    st->filt_mode = mode;
}

static ds4sci_status cpu_compute(void *state, const ds4sci_system *sys, const ds4sci_exchange *ex,
                                 ds4sci_result *res, char *err, size_t err_len) {
    cpu_state *st = (cpu_state *)state;
    const et_desc *d = st->d;
    const int F = d->F, L = d->L;
    const int32_t nl = sys->n_local, n = sys->n_local + sys->n_ghost;
    const size_t F4 = 4 * (size_t)F;
    int64_t E = 0;
    ds4sci_status s;

    if ((s = grow_atoms(st, (size_t)n, err, err_len)) != DS4SCI_OK)
        return s;
    if ((s = build_edges(st, sys, &E, err, err_len)) != DS4SCI_OK)
        return s;
    st->n_edges = E;
    reserve_filter_cache(st, (size_t)E);

    /* forward */
    et_cpu_embed_forward(st, sys);
    if ((s = xch(ex, 0, st->tmpf, F, err, err_len)) != DS4SCI_OK)
        return s;
    for (int32_t i = 0; i < n; i++) {
        double *row = st->xv + (size_t)i * F4;
        memcpy(row, st->tmpf + (size_t)i * F, sizeof(double) * F);
        memset(row + F, 0, sizeof(double) * 3 * F);
    }
    for (int l = 0; l < L; l++) {
        et_cpu_layer_forward(st, sys, l);
        if (l + 1 < L && (s = xch(ex, 0, st->xv + (size_t)(l + 1) * n * F4, 4 * F, err, err_len)))
            return s;
    }
    et_cpu_head(st, sys);

    /* backward */
    for (int l = L - 1; l >= 0; l--) {
        et_cpu_layer_backward(st, sys, l);
        if (l > 0) {
            if ((s = xch(ex, 1, st->g2, 4 * F, err, err_len)) != DS4SCI_OK)
                return s;
            memset(st->g2 + (size_t)nl * F4, 0, sizeof(double) * F4 * (size_t)(n - nl));
            double *tmp = st->g;
            st->g = st->g2;
            st->g2 = tmp;
        } else if (d->neighbor_embedding) {
            for (int32_t i = 0; i < n; i++)
                memcpy(st->tmpf + (size_t)i * F, st->g2 + (size_t)i * F4, sizeof(double) * F);
            if ((s = xch(ex, 1, st->tmpf, F, err, err_len)) != DS4SCI_OK)
                return s;
            et_cpu_embed_backward(st, sys, st->tmpf);
        }
    }
    outputs(st, sys, res);
    return DS4SCI_OK;
}

const ds4sci_backend_i ds4sci_backend_cpu = {
    "cpu", DS4SCI_DEVICE_CPU, cpu_create, cpu_compute, cpu_destroy,
    NULL, NULL, NULL, NULL, /* no device memory: no IPC, no device copies */
    NULL,                   /* api.c checks the candidates */
    NULL,                   /* reads the neighbour list at every call */
};
