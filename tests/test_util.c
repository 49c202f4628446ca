/*
 * test_util.c - shared helpers of the Check suites (see test_util.h).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "test_util.h"

uint64_t tu_next(tu_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r) {
    return (double)(tu_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double tu_range(tu_rng *r, double lo, double hi) {
    return lo + (hi - lo) * tu_uniform(r);
}

double tu_normal(tu_rng *r) {
    double u1 = tu_uniform(r), u2 = tu_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

void tu_opts_default(tu_opts *o) {
    memset(o, 0, sizeof(*o));
    o->F = 16;
    o->H = 4;
    o->K = 8;
    o->L = 2;
    o->max_z = 10;
    o->act = ET_ACT_SILU;
    o->attn_act = ET_ACT_SILU;
    o->rbf = ET_RBF_EXPNORM;
    o->dist_influence = ET_DI_KEYS | ET_DI_VALUES;
    o->neighbor_embedding = 1;
    o->vector_cutoff = 1;
    o->cutoff_lower = 0.0;
    o->cutoff_upper = 4.0;
    o->atomref = 0;
    o->std = 1.0;
    o->mean = 0.0;
    o->weight_scale = 1.0;
    o->seed = 1234;
}

void tu_opts_combo(tu_opts *o, int idx) {
    /* bits of idx: every combination of rbf x neighbour embedding x distance_influence x
       vector_cutoff x (cutoff_lower = 0 or > 0); activations: all 25 (act, attn_act) pairs
       appear for idx < 25, each value about 13 times in each role overall. */
    tu_opts_default(o);
    o->seed = 1000 + (uint64_t)idx;
    o->rbf = (idx & 1) ? ET_RBF_GAUSS : ET_RBF_EXPNORM;
    o->neighbor_embedding = (idx >> 1) & 1;
    o->dist_influence = (idx >> 2) & 3; /* 0 none, 1 keys, 2 values, 3 both */
    o->vector_cutoff = (idx >> 4) & 1;
    o->cutoff_lower = ((idx >> 5) & 1) ? 0.7 : 0.0;
    o->act = (et_act)(idx % 5);
    o->attn_act = (et_act)((idx / 5) % 5);
    o->atomref = idx % 3 == 0;
    if (idx % 7 == 3) {
        o->std = 1.7;
        o->mean = -3.25;
    }
    if ((idx % 11) % 3 == 1) /* idx % 11 in {1, 4, 7, 10}: about a third of the combos */
        o->head_eps = 0.3;
    if (idx % 9 == 4) {
        o->F = 24;
        o->H = 3;
        o->L = 3;
        o->K = 5;
    }
}

const char *tu_opts_describe(const tu_opts *o, char *buf, size_t len) {
    static const char *acts[] = {"ssp", "silu", "tanh", "sigmoid", "mish"};
    static const char *dis[] = {"none", "keys", "values", "both"};
    snprintf(buf, len,
             "F%d H%d K%d L%d rbf=%s nbr_emb=%d di=%s act=%s attn=%s vc=%d cl=%g cu=%g "
             "atomref=%d std=%g mean=%g head_eps=%g",
             o->F, o->H, o->K, o->L, o->rbf == ET_RBF_GAUSS ? "gauss" : "expnorm",
             o->neighbor_embedding, dis[o->dist_influence & 3], acts[o->act], acts[o->attn_act],
             o->vector_cutoff, o->cutoff_lower, o->cutoff_upper, o->atomref, o->std, o->mean,
             o->head_eps);
    return buf;
}

/* ---- random descriptions ------------------------------------------------------------------ */

typedef struct tu_desc_owner {
    et_desc d; /* first: tu_desc_free casts back */
    et_layer *layers;
    double *pool;
    size_t used, cap;
    tu_rng rng;
    double scale;
} tu_desc_owner;

static double *carve(tu_desc_owner *w, size_t n) {
    ck_assert_msg(w->used + n <= w->cap, "test_util: description pool too small");
    double *p = w->pool + w->used;
    w->used += n;
    return p;
}

/* Linear(in -> out) weight, variance ~ scale^2 / in. */
static const double *rand_w(tu_desc_owner *w, int out, int in) {
    double *p = carve(w, (size_t)out * in);
    double s = w->scale * sqrt(3.0 / in);
    for (size_t i = 0; i < (size_t)out * in; i++)
        p[i] = tu_range(&w->rng, -s, s);
    return p;
}

static const double *rand_b(tu_desc_owner *w, int n, double amp) {
    double *p = carve(w, (size_t)n);
    for (int i = 0; i < n; i++)
        p[i] = tu_range(&w->rng, -amp, amp) * w->scale;
    return p;
}

static const double *rand_gamma(tu_desc_owner *w, int n) {
    double *p = carve(w, (size_t)n);
    for (int i = 0; i < n; i++)
        p[i] = 1.0 + tu_range(&w->rng, -0.3, 0.3);
    return p;
}

et_desc *tu_desc_new(const tu_opts *o) {
    const int F = o->F, K = o->K, L = o->L, Z = o->max_z, F2 = o->F / 2;
    tu_desc_owner *w = (tu_desc_owner *)calloc(1, sizeof(*w));
    ck_assert_ptr_nonnull(w);
    w->layers = (et_layer *)calloc((size_t)L, sizeof(et_layer));
    w->cap = 2 * (size_t)Z * F + (size_t)L * (12 * (size_t)F * F + 4 * (size_t)F * K + 20 * F) +
             6 * (size_t)F * F + (size_t)F * K + 64 * (size_t)F + 4 * (size_t)K + Z + 1024;
    w->pool = (double *)calloc(w->cap, sizeof(double));
    ck_assert(w->layers && w->pool);
    w->rng.s = o->seed;
    w->scale = o->weight_scale;
    et_desc *d = &w->d;

    d->F = F;
    d->H = o->H;
    d->D = F / o->H;
    d->K = K;
    d->L = L;
    d->max_z = Z;
    d->act = o->act;
    d->attn_act = o->attn_act;
    d->rbf = o->rbf;
    d->dist_influence = o->dist_influence;
    d->neighbor_embedding = o->neighbor_embedding;
    d->vector_cutoff = o->vector_cutoff;
    d->cutoff_lower = o->cutoff_lower;
    d->cutoff_upper = o->cutoff_upper;
    d->alpha = 5.0 / (o->cutoff_upper - o->cutoff_lower);

    if (o->rbf == ET_RBF_EXPNORM) {
        double start = exp(o->cutoff_lower - o->cutoff_upper);
        double *means = carve(w, (size_t)K), *betas = carve(w, (size_t)K);
        for (int k = 0; k < K; k++) {
            means[k] =
                start + (1.0 - start) * k / (K > 1 ? K - 1 : 1) + tu_range(&w->rng, -0.02, 0.02);
            betas[k] = pow(2.0 / K * (1.0 - start), -2.0) * (1.0 + tu_range(&w->rng, -0.1, 0.1));
        }
        d->rbf_means = means;
        d->rbf_betas = betas;
    } else {
        double *off = carve(w, (size_t)K);
        for (int k = 0; k < K; k++)
            off[k] =
                o->cutoff_lower + (o->cutoff_upper - o->cutoff_lower) * k / (K > 1 ? K - 1 : 1);
        d->rbf_offset = off;
        double delta = K > 1 ? off[1] - off[0] : 1.0;
        d->rbf_coeff = -0.5 / (delta * delta);
    }

    double *emb = carve(w, (size_t)Z * F);
    for (size_t i = 0; i < (size_t)Z * F; i++)
        emb[i] = tu_normal(&w->rng);
    d->emb = emb;
    if (o->neighbor_embedding) {
        double *ne = carve(w, (size_t)Z * F);
        for (size_t i = 0; i < (size_t)Z * F; i++)
            ne[i] = tu_normal(&w->rng);
        d->ne_emb = ne;
        d->ne_dp_w = rand_w(w, F, K);
        d->ne_dp_b = rand_b(w, F, 0.3);
        d->ne_comb_w = rand_w(w, F, 2 * F);
        d->ne_comb_b = rand_b(w, F, 0.3);
    }

    for (int l = 0; l < L; l++) {
        et_layer *ly = &w->layers[l];
        ly->ln_w = rand_gamma(w, F);
        ly->ln_b = rand_b(w, F, 0.2);
        ly->q_w = rand_w(w, F, F);
        ly->q_b = rand_b(w, F, 0.2);
        ly->k_w = rand_w(w, F, F);
        ly->k_b = rand_b(w, F, 0.2);
        ly->v_w = rand_w(w, 3 * F, F);
        ly->v_b = rand_b(w, 3 * F, 0.2);
        ly->o_w = rand_w(w, 3 * F, F);
        ly->o_b = rand_b(w, 3 * F, 0.2);
        ly->vec_w = rand_w(w, 3 * F, F);
        if (o->dist_influence & ET_DI_KEYS) {
            ly->dk_w = rand_w(w, F, K);
            ly->dk_b = rand_b(w, F, 0.3);
        }
        if (o->dist_influence & ET_DI_VALUES) {
            ly->dv_w = rand_w(w, 3 * F, K);
            ly->dv_b = rand_b(w, 3 * F, 0.3);
        }
    }
    d->layers = w->layers;
    d->out_norm_w = rand_gamma(w, F);
    d->out_norm_b = rand_b(w, F, 0.2);

    const int ins[2] = {F, F2}, outs[2] = {F2, 1};
    for (int b = 0; b < 2; b++) {
        et_geb *g = &d->head[b];
        g->in = ins[b];
        g->out = outs[b];
        g->vec1_w = rand_w(w, ins[b], ins[b]);
        g->vec2_w = rand_w(w, outs[b], ins[b]);
        g->up0_w = rand_w(w, ins[b], 2 * ins[b]);
        g->up0_b = rand_b(w, ins[b], 0.2);
        g->up2_w = rand_w(w, 2 * outs[b], ins[b]);
        g->up2_b = rand_b(w, 2 * outs[b], 0.2);
        g->scalar_activation = b == 0;
    }
    d->std = o->std;
    d->mean = o->mean;
    d->head_eps = o->head_eps;
    d->atomref_enable = o->atomref;
    if (o->atomref)
        d->atomref = rand_b(w, Z, 5.0);
    return d;
}

void tu_desc_free(et_desc *d) {
    if (!d)
        return;
    tu_desc_owner *w = (tu_desc_owner *)d;
    free(w->layers);
    free(w->pool);
    free(w);
}

/* ---- atoms, systems, results ------------------------------------------------------------- */

void tu_random_atoms(tu_rng *r, int n, double side, double min_dist, int periodic, int max_z,
                     double *pos, int32_t *z) {
    for (int i = 0; i < n; i++) {
        int tries = 0;
        for (;;) {
            ck_assert_msg(++tries < 100000, "tu_random_atoms: cannot place atom %d", i);
            for (int c = 0; c < 3; c++)
                pos[3 * i + c] = tu_range(r, 0.0, side);
            int ok = 1;
            for (int j = 0; j < i && ok; j++) {
                double d2 = 0.0;
                for (int c = 0; c < 3; c++) {
                    double dx = pos[3 * i + c] - pos[3 * j + c];
                    if (periodic)
                        dx -= side * round(dx / side);
                    d2 += dx * dx;
                }
                ok = d2 >= min_dist * min_dist;
            }
            if (ok)
                break;
        }
        z[i] = 1 + (int32_t)(tu_next(r) % (uint64_t)(max_z - 1));
    }
}

void tu_result_alloc(tu_result *t, const ds4sci_system *sys) {
    memset(t, 0, sizeof(*t));
    t->n_local = sys->n_local;
    t->n_total = sys->n_local + sys->n_ghost;
    t->r.atom_energy = (double *)calloc((size_t)t->n_local + 1, sizeof(double));
    t->r.forces = (double *)calloc(3 * ((size_t)t->n_total + 1), sizeof(double));
    t->r.atom_virial = (double *)calloc(6 * ((size_t)t->n_total + 1), sizeof(double));
    ck_assert(t->r.atom_energy && t->r.forces && t->r.atom_virial);
    if (sys->n_ghost > 0 && sys->ghost_owner) {
        t->ghost_owner = (int32_t *)malloc(sizeof(int32_t) * (size_t)sys->n_ghost);
        ck_assert(t->ghost_owner);
        memcpy(t->ghost_owner, sys->ghost_owner, sizeof(int32_t) * (size_t)sys->n_ghost);
    }
}

void tu_result_free(tu_result *t) {
    free(t->r.atom_energy);
    free(t->r.forces);
    free(t->r.atom_virial);
    free(t->ghost_owner);
    memset(t, 0, sizeof(*t));
}

ds4sci_ctx *tu_ctx_cpu(const et_desc *d, int n_threads) {
    ds4sci_options opt;
    ds4sci_options_init(&opt);
    opt.device = DS4SCI_DEVICE_CPU;
    opt.n_threads = n_threads;
    ds4sci_ctx *ctx = NULL;
    char err[512];
    ds4sci_status s = ds4sci_ctx_create_desc(d, &opt, &ctx, err, sizeof(err));
    ck_assert_msg(s == DS4SCI_OK, "ds4sci_ctx_create_desc: %s: %s", ds4sci_status_name(s), err);
    return ctx;
}

double tu_energy(ds4sci_ctx *ctx, const ds4sci_system *sys) {
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ds4sci_status s = ds4sci_compute(ctx, sys, NULL, &r);
    ck_assert_msg(s == DS4SCI_OK, "ds4sci_compute: %s: %s", ds4sci_status_name(s),
                  ds4sci_ctx_error(ctx));
    return r.energy;
}

void tu_system_copy(tu_system *t, const ds4sci_system *src) {
    const size_t nl = (size_t)src->n_local, n = nl + (size_t)src->n_ghost;
    const size_t np = (size_t)src->nbr_offset[nl];
    memset(t, 0, sizeof(*t));
    t->pos = (double *)malloc(sizeof(double) * 3 * (n + 1));
    t->z = (int32_t *)malloc(sizeof(int32_t) * (n + 1));
    t->nbr_offset = (int64_t *)malloc(sizeof(int64_t) * (nl + 1));
    t->nbr_index = (int32_t *)malloc(sizeof(int32_t) * (np + 1));
    t->ghost_owner = (int32_t *)malloc(sizeof(int32_t) * ((size_t)src->n_ghost + 1));
    ck_assert(t->pos && t->z && t->nbr_offset && t->nbr_index && t->ghost_owner);
    memcpy(t->pos, src->pos, sizeof(double) * 3 * n);
    memcpy(t->z, src->z, sizeof(int32_t) * n);
    memcpy(t->nbr_offset, src->nbr_offset, sizeof(int64_t) * (nl + 1));
    if (np)
        memcpy(t->nbr_index, src->nbr_index, sizeof(int32_t) * np);
    if (src->n_ghost)
        memcpy(t->ghost_owner, src->ghost_owner, sizeof(int32_t) * (size_t)src->n_ghost);
    t->s = *src;
    t->s.pos = t->pos;
    t->s.z = t->z;
    t->s.nbr_offset = t->nbr_offset;
    t->s.nbr_index = t->nbr_index;
    t->s.ghost_owner = t->ghost_owner;
}

void tu_system_free(tu_system *t) {
    free(t->pos);
    free(t->z);
    free(t->nbr_offset);
    free(t->nbr_index);
    free(t->ghost_owner);
    memset(t, 0, sizeof(*t));
}

void tu_system_displace(tu_system *t, int32_t i, int c, double delta) {
    t->pos[3 * (size_t)i + c] += delta;
    for (int32_t g = 0; g < t->s.n_ghost; g++)
        if (t->ghost_owner[g] == i)
            t->pos[3 * ((size_t)t->s.n_local + g) + c] += delta;
}

double tu_max_abs_diff(const double *a, const double *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN propagates */
    }
    return m;
}

double tu_rms(const double *a, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * a[i];
    return n ? sqrt(s / n) : 0.0;
}

/* ---- fixtures -------------------------------------------------------------------------- */

void tu_fixture_init(tu_fixture *f, const tu_opts *o, int n_atoms, double side, int periodic,
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
        ck_assert_msg(attempt < 100, "tu_fixture: cannot place %d atoms", n_atoms);
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

void tu_fixture_free(tu_fixture *f) {
    tu_system_free(&f->sys);
    ds4sci_graph_free(f->g);
    ds4sci_ctx_free(f->ctx);
    tu_desc_free(f->d);
}

/* Forces and energies of the tu_fixture, ghosts folded into owners. */
double tu_fixture_compute(tu_fixture *f, tu_result *res) {
    tu_result_alloc(res, &f->sys.s);
    ds4sci_status s = ds4sci_compute(f->ctx, &f->sys.s, NULL, &res->r);
    ck_assert_msg(s == DS4SCI_OK, "compute: %s", ds4sci_ctx_error(f->ctx));
    ds4sci_fold_ghosts(res->r.forces, 3, f->sys.s.n_local, f->sys.s.n_ghost, f->sys.ghost_owner);
    return res->r.energy;
}
