/*
 * two_domains.c - two "processes" (threads) with a caller exchange (two_domains.h).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "two_domains.h"

/* Both callbacks start alike: publish this domain's array, wait for the other domain, and
   agree on the width (0, or -1 when the two calls differ). */
static int dom_meet(domain *d, double *data, int32_t width) {
    world *w = d->w;
    d->data = data;
    d->width = width;
    pthread_barrier_wait(&w->bar);
    return w->dom[0].width == w->dom[1].width ? 0 : -1;
}

static int dom_forward(void *user, double *data, int32_t width) {
    domain *d = user;
    world *w = d->w;
    d->n_fwd++;
    int rc = dom_meet(d, data, width);
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
    d->n_rev++;
    int rc = dom_meet(d, data, width);
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

/* Device moves: out exported as another process would map it (two_domains.h, n_ipc_bad). */
static void check_export(domain *d, const void *out) {
    ds4sci_ipc_handle h;
    const ds4sci_status st = ds4sci_ipc_export(d->ctx, out, &h);
    const char *bad = NULL;
    if (st != DS4SCI_OK)
        bad = ds4sci_status_name(st);
    else if (h.offset != 0)
        bad = "offset not 0";
    else if (d->ipc_out &&
             (d->ipc_out == out) != (memcmp(h.bytes, d->ipc_last.bytes, sizeof(h.bytes)) == 0))
        bad = d->ipc_out == out ? "the same out, another handle" : "another out, the same handle";
    if (bad && d->n_ipc_bad++ == 0)
        snprintf(d->ipc_msg, sizeof(d->ipc_msg), "move %d: ds4sci_ipc_export: %s (%s)", d->n_move,
                 bad, ds4sci_ctx_error(d->ctx));
    if (st == DS4SCI_OK) {
        d->ipc_out = out;
        d->ipc_last = h;
    }
}

/* The wire plan's transport between the two domains: one peer each, so the other domain's
   whole outgoing block is this domain's incoming one (forward: its send rows in this domain's
   ghost order; reverse: its remote ghosts' rows in its ghost order, which are this domain's
   send rows in wire order). Host buffers: memcpy; device buffers: ds4sci_device_copy on this
   domain's context, reading the other's out in place (two_domains.h). */
static int dom_move(void *user, const void *out, void *in, size_t row_bytes, int reverse,
                    int device) {
    domain *d = user;
    world *w = d->w;
    const domain *o = &w->dom[1 - d->p];
    d->out = out;
    d->row_bytes = row_bytes;
    d->device = device;
    d->n_move++;
    if (reverse)
        d->n_rev++;
    else
        d->n_fwd++;
    if (device) {
        d->n_move_device++;
        check_export(d, out);
    }
    pthread_barrier_wait(&w->bar);
    const int32_t rows = reverse ? d->peer.n_send : d->peer.n_recv;
    const int32_t o_rows = reverse ? o->peer.n_recv : o->peer.n_send;
    int rc = o->row_bytes == row_bytes && rows == o_rows && o->device == device ? 0 : -1;
    if (device && !d->plan.device_buffers)
        rc = -1; /* device pointers only where the plan said move() takes them */
    if (rc == 0 && rows > 0) {
        if (device) {
            const ds4sci_copy c = {in, o->out, row_bytes * (size_t)rows};
            rc = ds4sci_device_copy(d->ctx, &c, 1) == DS4SCI_OK ? 0 : -2;
        } else {
            memcpy(in, o->out, row_bytes * (size_t)rows);
        }
    }
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
void world_split(world *w, const ds4sci_system *g, const double box[9], int all_to_first,
                 int32_t cnt[2]) {
    const int32_t n = g->n_local;
    memset(w, 0, sizeof(*w));
    w->proc_of = malloc(sizeof(int32_t) * (n + 1));
    w->local_of = malloc(sizeof(int32_t) * (n + 1));
    cnt[0] = cnt[1] = 0;
    for (int32_t i = 0; i < n; i++) {
        /* fractional x of the reduced box (b_x, c_x tilts folded in) */
        const double *p = g->pos + 3 * (size_t)i;
        double fz = p[2] / box[8], fy = (p[1] - fz * box[7]) / box[4];
        double fx = (p[0] - fy * box[3] - fz * box[6]) / box[0];
        fx -= floor(fx);
        w->proc_of[i] = all_to_first ? 0 : fx >= 0.5;
        w->local_of[i] = cnt[w->proc_of[i]]++;
    }
}

void domain_build(world *w, int p, const ds4sci_system *g) {
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

void world_build(world *w, const ds4sci_system *g, const double box[9], int all_to_first,
                 int partial, int32_t cnt[2]) {
    world_split(w, g, box, all_to_first, cnt);
    w->dom[0].partial = w->dom[1].partial = partial;
    domain_build(w, 0, g);
    domain_build(w, 1, g);
}

/* The exchange hint of both domains: the owned rows that a ghost of either domain copies. */
void world_send_rows(world *w, int hint) {
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
void world_plans(world *w, int32_t device_buffers) {
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
        d->plan = (ds4sci_wire_plan){1, &d->peer, dom_move, d, device_buffers};
        d->use_plan = 1;
    }
}

void domain_free(domain *d) {
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

/* Runs the two domains, each with a context from make_ctx; returns 1 if both succeeded. */
int world_run(world *w, ds4sci_ctx *(*make_ctx)(const et_desc *desc), const et_desc *desc) {
    pthread_t th[2];
    pthread_barrier_init(&w->bar, NULL, 2);
    for (int p = 0; p < 2; p++) {
        w->dom[p].ctx = make_ctx(desc);
        tu_result_alloc(&w->dom[p].res, &w->dom[p].s);
        pthread_create(&th[p], NULL, dom_run, &w->dom[p]);
    }
    for (int p = 0; p < 2; p++)
        pthread_join(th[p], NULL);
    pthread_barrier_destroy(&w->bar);
    return w->dom[0].status == DS4SCI_OK && w->dom[1].status == DS4SCI_OK;
}

double *world_forces(const world *w, int32_t n) {
    double *fsum = calloc(3 * (size_t)n + 1, sizeof(double));
    for (int p = 0; p < 2 && fsum; p++) {
        const domain *d = &w->dom[p];
        for (int32_t a = 0; a < d->s.n_local + d->s.n_ghost; a++) {
            const int32_t j = a < d->s.n_local ? d->global[a] : d->gowner[a - d->s.n_local];
            for (int c = 0; c < 3; c++)
                fsum[3 * j + c] += d->res.r.forces[3 * (size_t)a + c];
        }
    }
    return fsum;
}

void world_free(world *w) {
    domain_free(&w->dom[0]);
    domain_free(&w->dom[1]);
    free(w->proc_of);
    free(w->local_of);
}
