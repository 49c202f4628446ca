/*
 * check_api.c - the public API around the backends (gnn/api.c) on the CPU backend: a
 * caller-supplied ghost exchange across two "processes" (threads) against one process,
 * an empty domain, exchange failures, input validation and the context calls.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ds4sci.h"
#include "test_util.h"

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
    int32_t *send_rows, n_send; /* owned rows that some ghost copies (the exchange hint) */
    int hint;                   /* pass send_rows to ds4sci_compute */
    int partial;     /* partial owners: periodic images of own atoms left to the core */
    int32_t *lowner; /* [n_ghost] with partial: owned row of an image of an own atom, else -1 */
    int use_plan;    /* with partial: a wire plan (one peer: the other domain) and move() */
    ds4sci_wire_plan plan;
    ds4sci_wire_peer peer;
    int32_t *plan_send, *plan_recv;
    const void *out; /* published by move() */
    size_t row_bytes;
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
        if (d->partial && d->lowner[g] >= 0)
            continue; /* the core's */
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
            if (w->proc_of[j] != d->p || (o->partial && o->lowner[g] >= 0))
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

/* The wire plan's transport between the two domains: one peer each, so the other domain's
   whole outgoing block is this domain's incoming one (forward: its send rows in this domain's
   ghost order; reverse: its remote ghosts' rows in its ghost order, which are this domain's
   send rows in wire order). */
static int dom_move(void *user, const void *out, void *in, size_t row_bytes, int reverse,
                    int device) {
    domain *d = user;
    world *w = d->w;
    const domain *o = &w->dom[1 - d->p];
    d->out = out;
    d->row_bytes = row_bytes;
    if (reverse)
        d->n_rev++;
    else
        d->n_fwd++;
    pthread_barrier_wait(&w->bar);
    const int32_t rows = reverse ? d->peer.n_send : d->peer.n_recv;
    const int32_t o_rows = reverse ? o->peer.n_recv : o->peer.n_send;
    int rc = o->row_bytes == row_bytes && rows == o_rows && device == 0 ? 0 : -1;
    if (rc == 0 && rows > 0)
        memcpy(in, o->out, row_bytes * (size_t)rows);
    pthread_barrier_wait(&w->bar);
    return rc;
}

static void *dom_run(void *arg) {
    domain *d = arg;
    ds4sci_exchange ex = {dom_forward, dom_reverse, d, NULL, 0, NULL, NULL};
    if (d->use_plan)
        ex.plan = &d->plan;
    if (d->hint) {
        ex.send_rows = d->send_rows;
        ex.n_send_rows = d->n_send;
    }
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
    d->lowner = malloc(sizeof(int32_t) * (ng + 1));
    for (int32_t li = 0; li < nl; li++) {
        memcpy(d->pos + 3 * li, g->pos + 3 * (size_t)d->global[li], sizeof(double) * 3);
        d->z[li] = g->z[d->global[li]];
    }
    for (int32_t q = 0; q < ng; q++) {
        const int32_t a = entity[q];
        memcpy(d->pos + 3 * (nl + q), g->pos + 3 * (size_t)a, sizeof(double) * 3);
        d->z[nl + q] = g->z[a];
        d->gowner[q] = a < n ? a : g->ghost_owner[a - n];
        d->lowner[q] = w->proc_of[d->gowner[q]] == p ? w->local_of[d->gowner[q]] : -1;
    }
    d->s.n_local = nl;
    d->s.n_ghost = ng;
    d->s.pos = d->pos;
    d->s.z = d->z;
    d->s.nbr_offset = d->nbr_offset;
    d->s.nbr_index = d->nbr_index;
    d->s.ghost_owner = d->partial ? d->lowner : NULL;
    free(ghost_of);
    free(entity);
}

/* The exchange hint of both domains: the owned rows that a ghost of either domain copies. */
static void world_send_rows(world *w, int hint) {
    for (int p = 0; p < 2; p++) {
        domain *d = &w->dom[p];
        d->hint = hint;
        d->n_send = 0;
        d->send_rows = malloc(sizeof(int32_t) * (d->s.n_local + 1));
        unsigned char *mark = calloc((size_t)d->s.n_local + 1, 1);
        for (int q = 0; q < 2; q++)
            for (int32_t g = 0; g < w->dom[q].s.n_ghost; g++) {
                const int32_t j = w->dom[q].gowner[g];
                if (w->proc_of[j] == p && !(w->dom[q].partial && w->dom[q].lowner[g] >= 0))
                    mark[w->local_of[j]] = 1;
            }
        for (int32_t i = 0; i < d->s.n_local; i++)
            if (mark[i])
                d->send_rows[d->n_send++] = i;
        free(mark);
    }
}

/* Wire plans of both domains (partial owners): domain p receives its remote ghosts in ghost
   order; it sends, in the other domain's ghost order, the owned row of each of that domain's
   remote ghosts (repeats where two ghosts there are images of one atom here). */
static void world_plans(world *w) {
    for (int p = 0; p < 2; p++) {
        domain *d = &w->dom[p];
        const domain *o = &w->dom[1 - p];
        d->plan_recv = malloc(sizeof(int32_t) * (d->s.n_ghost + 1));
        d->plan_send = malloc(sizeof(int32_t) * (o->s.n_ghost + 1));
        int32_t nr = 0, ns = 0;
        for (int32_t g = 0; g < d->s.n_ghost; g++)
            if (d->lowner[g] < 0)
                d->plan_recv[nr++] = d->s.n_local + g;
        for (int32_t g = 0; g < o->s.n_ghost; g++)
            if (o->lowner[g] < 0)
                d->plan_send[ns++] = w->local_of[o->gowner[g]];
        d->peer = (ds4sci_wire_peer){ns, d->plan_send, nr, d->plan_recv};
        d->plan = (ds4sci_wire_plan){1, &d->peer, dom_move, d};
        d->use_plan = 1;
    }
}

static void domain_free(domain *d) {
    free(d->plan_send);
    free(d->plan_recv);
    free(d->send_rows);
    free(d->global);
    free(d->nbr_offset);
    free(d->nbr_index);
    free(d->pos);
    free(d->z);
    free(d->gowner);
    free(d->lowner);
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

static void check_two_domains(int combo, int all_to_first, int hint, int partial, int plan) {
    tu_opts o;
    tu_opts_combo(&o, combo);
    tu_fixture f;
    tu_fixture_init(&f, &o, 40, 9.0, 1, 1200 + combo);
    tu_result ref;
    tu_fixture_compute(&f, &ref);
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
    w.dom[0].partial = w.dom[1].partial = partial;
    domain_build(&w, 0, g);
    domain_build(&w, 1, g);
    if (partial) { /* both kinds of ghosts are there to be handled */
        int32_t own = 0;
        for (int32_t q = 0; q < w.dom[0].s.n_ghost; q++)
            own += w.dom[0].lowner[q] >= 0;
        ck_assert(own > 0 && (all_to_first || own < w.dom[0].s.n_ghost));
    }
    world_send_rows(&w, hint);
    if (plan)
        world_plans(&w);
    if (hint && !all_to_first)
        ck_assert(w.dom[0].n_send > 0 && w.dom[0].n_send <= w.dom[0].s.n_local);
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
    tu_fixture_free(&f);
}

START_TEST(user_exchange_two_domains_match_one_process) {
    check_two_domains(_i * 7 + 1, 0, _i % 2, 0, 0); /* odd loop indices pass the send_rows hint */
}
END_TEST

/* Partial owners: the exchange moves only the other domain's atoms, the core copies and folds
   the periodic images of its own (the CPU path poisons their rows with NaN during the
   callbacks, so a callback that used them would show). */
START_TEST(partial_owners_two_domains_match_one_process) {
    check_two_domains(_i * 5 + 3, 0, _i % 2, 1, 0);
}
END_TEST

/* The wire plan (ds4sci.h): the core packs rows in the plan's order and the transport only
   copies bytes; the reverse adds in the plan's order. Same results as one process. */
START_TEST(wire_plan_two_domains_match_one_process) {
    check_two_domains(_i * 5 + 3, 0, _i % 2, 1, 1);
}
END_TEST

/* An empty domain still calls move() as often as the other (no ghosts: no partial owners to
   route by, the plan alone). */
START_TEST(wire_plan_empty_domain) {
    check_two_domains(_i * 11 + 4, 1, 1, 1, 1);
}
END_TEST

START_TEST(partial_owners_empty_domain) {
    check_two_domains(_i * 11 + 4, 1, 1, 1, 0);
}
END_TEST

START_TEST(empty_domain_makes_matching_exchange_calls) {
    check_two_domains(_i * 17 + 2, 1, 1, 0, 0);
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
    tu_fixture f;
    tu_fixture_init(&f, &o, 8, 6.0, 1, 77);
    ds4sci_exchange ex = {fail_forward, noop_exchange, NULL, NULL, 0, NULL, NULL};
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_EXCHANGE);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "forward"));
    tu_fixture_free(&f);
}
END_TEST

START_TEST(bad_send_rows_hint_is_refused) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture f;
    tu_fixture_init(&f, &o, 8, 6.0, 1, 78);
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    const int32_t nl = f.sys.s.n_local;
    int32_t out_of_range[2] = {0, nl};
    int32_t repeated[2] = {1, 1};
    ds4sci_exchange ex = {noop_exchange, noop_exchange, NULL, NULL, 0, NULL, NULL};
    ex.send_rows = out_of_range;
    ex.n_send_rows = 2;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "send_rows[1]"));
    ex.send_rows = repeated;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "not listed before"));
    ex.send_rows = NULL;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_ARG);
    ex.n_send_rows = -1;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r), DS4SCI_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "n_send_rows"));
    tu_fixture_free(&f);
}
END_TEST

static int noop_move(void *user, const void *out, void *in, size_t row_bytes, int reverse,
                     int device) {
    (void)user, (void)out, (void)in, (void)row_bytes, (void)reverse, (void)device;
    return 0;
}

/* A wire plan must cover exactly the ghosts with owner -1, send owned rows, and have a move. */
START_TEST(bad_wire_plan_is_refused) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture f;
    tu_fixture_init(&f, &o, 8, 6.0, 1, 79);
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ds4sci_system s = f.sys.s;
    const int32_t nl = s.n_local, ng = s.n_ghost;
    ck_assert(ng >= 2);
    int32_t *own = malloc(sizeof(int32_t) * ng);
    memcpy(own, s.ghost_owner, sizeof(int32_t) * ng);
    own[0] = -1; /* ghost 0: another process's atom */
    s.ghost_owner = own;
    int32_t send[1] = {0}, recv[2] = {nl, nl};
    ds4sci_wire_peer peer = {1, send, 1, recv};
    ds4sci_wire_plan plan = {0, &peer, noop_move, NULL};
    ds4sci_exchange ex = {noop_exchange, noop_exchange, NULL, NULL, 0, NULL, &plan};
    const struct {
        int32_t n_peers, n_recv, recv1, send0;
        int null_move, null_owner;
        ds4sci_status want;
        const char *needle;
    } bad[] = {
        {0, 1, nl, 0, 0, 0, DS4SCI_ERR_INPUT, "no peer sends it"},
        {1, 2, nl, 0, 0, 0, DS4SCI_ERR_INPUT, "recv_rows[1]"},      /* ghost 0 twice */
        {1, 2, nl + 1, 0, 0, 0, DS4SCI_ERR_INPUT, "recv_rows[1]"},  /* an image, not remote */
        {1, 1, nl, nl, 0, 0, DS4SCI_ERR_INPUT, "send_rows[0]"},
        {1, 1, nl, 0, 1, 0, DS4SCI_ERR_ARG, "move is NULL"},
        {1, 1, nl, 0, 0, 1, DS4SCI_ERR_ARG, "partial owners"},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        plan.n_peers = bad[k].n_peers;
        peer.n_recv = bad[k].n_recv;
        recv[1] = bad[k].recv1;
        send[0] = bad[k].send0;
        plan.move = bad[k].null_move ? NULL : noop_move;
        s.ghost_owner = bad[k].null_owner ? NULL : own;
        const ds4sci_status got = ds4sci_compute(f.ctx, &s, &ex, &r);
        ck_assert_msg(got == bad[k].want && strstr(ds4sci_ctx_error(f.ctx), bad[k].needle),
                      "case %zu: %s \"%s\", expected %s and \"%s\"", k,
                      ds4sci_status_name(got), ds4sci_ctx_error(f.ctx),
                      ds4sci_status_name(bad[k].want), bad[k].needle);
    }
    free(own);
    tu_fixture_free(&f);
}
END_TEST

/* ---- input validation -------------------------------------------------------------------- */

static void expect_status(tu_fixture *f, const ds4sci_system *s, ds4sci_status want,
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
    tu_fixture f;
    tu_fixture_init(&f, &o, 10, 5.0, 0, 4321);
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
    tu_fixture_free(&f);
}
END_TEST

START_TEST(bad_ghost_owner_is_refused) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture f;
    tu_fixture_init(&f, &o, 10, 6.0, 1, 4322);
    ck_assert(f.sys.s.n_ghost > 0);
    f.sys.ghost_owner[1] = f.sys.s.n_local;
    expect_status(&f, &f.sys.s, DS4SCI_ERR_INPUT, "ghost 1");
    f.sys.ghost_owner[1] = -1; /* another process's atom: only with an exchange */
    expect_status(&f, &f.sys.s, DS4SCI_ERR_INPUT, "ghost 1");
    ds4sci_exchange ex = {noop_exchange, noop_exchange, NULL, NULL, 0, NULL, NULL};
    tu_result r;
    tu_result_alloc(&r, &f.sys.s);
    f.sys.ghost_owner[1] = -2;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r.r), DS4SCI_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "ghost 1"));
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "or -1"));
    tu_result_free(&r);
    ds4sci_system s = f.sys.s;
    s.ghost_owner = NULL;
    expect_status(&f, &s, DS4SCI_ERR_ARG, "ghost_owner");
    tu_fixture_free(&f);
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
    /* the device count and availability agree; without CUDA both say none */
    ck_assert_int_eq(ds4sci_gpu_count() > 0, ds4sci_cuda_available());
    ck_assert_int_ge(ds4sci_gpu_count(), 0);
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

static Suite *api_suite(void) {
    Suite *s = suite_create("api");
    TCase *tx = tcase_create("exchange");
    tcase_set_timeout(tx, 120);
    tcase_add_loop_test(tx, user_exchange_two_domains_match_one_process, 0, 8);
    tcase_add_loop_test(tx, empty_domain_makes_matching_exchange_calls, 0, 2);
    tcase_add_loop_test(tx, partial_owners_two_domains_match_one_process, 0, 6);
    tcase_add_loop_test(tx, partial_owners_empty_domain, 0, 2);
    tcase_add_loop_test(tx, wire_plan_two_domains_match_one_process, 0, 4);
    tcase_add_loop_test(tx, wire_plan_empty_domain, 0, 2);
    tcase_add_test(tx, bad_wire_plan_is_refused);
    tcase_add_test(tx, exchange_failure_is_reported);
    tcase_add_test(tx, bad_send_rows_hint_is_refused);
    suite_add_tcase(s, tx);

    TCase *tv = tcase_create("validation");
    tcase_add_test(tv, bad_input_is_refused_with_a_message);
    tcase_add_test(tv, bad_ghost_owner_is_refused);
    tcase_add_test(tv, empty_system_and_context_api);
    suite_add_tcase(s, tv);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(api_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
