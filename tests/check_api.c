/*
 * check_api.c - the public API around the backends (gnn/api.c) on the CPU backend: a
 * caller-supplied ghost exchange across two "processes" (threads) against one process,
 * an empty domain, exchange failures, input validation, the context calls, and the device
 * memory calls (which the CPU backend does not support).
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
#include "two_domains.h"

static ds4sci_ctx *cpu_ctx(const et_desc *desc) { return tu_ctx_cpu(desc, 1); }

/* plan: 0 the callbacks, 1 a wire plan, 2 a wire plan with device_buffers set (move() then
   takes device pointers where the backend's rows are on a GPU: never on the CPU backend) */
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
    int32_t cnt[2];
    world_build(&w, g, f.box, all_to_first, partial, cnt);
    ck_assert(all_to_first ? cnt[1] == 0 : cnt[0] > 0 && cnt[1] > 0);
    if (partial) { /* both kinds of ghosts are there to be handled */
        int32_t own = 0;
        for (int32_t q = 0; q < w.dom[0].s.n_ghost; q++)
            own += w.dom[0].lowner[q] >= 0;
        ck_assert(own > 0 && (all_to_first || own < w.dom[0].s.n_ghost));
    }
    world_send_rows(&w, hint);
    if (plan)
        world_plans(&w, plan == 2);
    if (hint && !all_to_first)
        ck_assert(w.dom[0].n_send > 0 && w.dom[0].n_send <= w.dom[0].s.n_local);
    ck_assert_msg(world_run(&w, cpu_ctx, f.d), "domains: %s / %s",
                  ds4sci_ctx_error(w.dom[0].ctx), ds4sci_ctx_error(w.dom[1].ctx));
    ck_assert_int_eq(w.dom[0].n_fwd, w.dom[1].n_fwd);
    ck_assert_int_eq(w.dom[0].n_rev, w.dom[1].n_rev);
    ck_assert_int_eq(w.dom[0].n_fwd, o.L);
    ck_assert_int_eq(w.dom[0].n_rev, o.L - 1 + o.neighbor_embedding);
    for (int p = 0; p < 2; p++) { /* the CPU backend: every move through the plan, on the host */
        ck_assert_int_eq(w.dom[p].n_move, plan ? w.dom[p].n_fwd + w.dom[p].n_rev : 0);
        ck_assert_int_eq(w.dom[p].n_move_device, 0);
    }

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
    double *fsum = world_forces(&w, n);
    ck_assert(fsum);
    for (int p = 0; p < 2; p++) {
        const domain *d = &w.dom[p];
        for (int32_t a = 0; a < d->s.n_local; a++)
            ck_assert(fabs(d->res.r.atom_energy[a] - ref.r.atom_energy[d->global[a]]) <=
                      1e-12 * fmax(fabs(ref.r.atom_energy[d->global[a]]), 1e-3));
    }
    const double frms = tu_rms(ref.r.forces, 3 * (size_t)n);
    const double ferr = tu_max_abs_diff(fsum, ref.r.forces, 3 * (size_t)n);
    ck_assert_msg(ferr <= 1e-12 * frms, "2 domains: max force difference %g, rms %g", ferr, frms);

    free(fsum);
    world_free(&w);
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

/* A plan that allows device pointers: the CPU backend's rows are host memory, so its move()
   still gets device = 0 (two_domains.c's move fails on device = 1 without the flag, and
   n_move_device counts it), with the same results. */
START_TEST(wire_plan_device_buffers_on_cpu_moves_host_rows) {
    check_two_domains(_i * 5 + 4, _i == 2, _i % 2, 1, 2);
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

/* A small periodic fixture whose ghost 0 is another process's atom (ghost_owner -1): *s is its
   system with those owners, returned (the caller frees it). */
static int32_t *remote_ghost_fixture(tu_fixture *f, uint64_t seed, ds4sci_system *s) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture_init(f, &o, 8, 6.0, 1, seed);
    *s = f->sys.s;
    ck_assert(s->n_ghost >= 2);
    int32_t *own = malloc(sizeof(int32_t) * s->n_ghost);
    ck_assert(own);
    memcpy(own, s->ghost_owner, sizeof(int32_t) * s->n_ghost);
    own[0] = -1;
    s->ghost_owner = own;
    return own;
}

/* A wire plan must cover exactly the ghosts with owner -1, send owned rows, and have a move. */
START_TEST(bad_wire_plan_is_refused) {
    tu_fixture f;
    ds4sci_system s;
    int32_t *own = remote_ghost_fixture(&f, 79, &s);
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    const int32_t nl = s.n_local;
    int32_t send[1] = {0}, recv[2] = {nl, nl};
    ds4sci_wire_peer peer = {1, send, 1, recv};
    ds4sci_wire_plan plan = {0, &peer, noop_move, NULL, 0};
    ds4sci_exchange ex = {noop_exchange, noop_exchange, NULL, NULL, 0, NULL, &plan};
    const struct {
        int32_t n_peers, n_recv, recv1, send0;
        int null_move, null_owner;
        int32_t device_buffers;
        ds4sci_status want;
        const char *needle;
    } bad[] = {
        {0, 1, nl, 0, 0, 0, 0, DS4SCI_ERR_INPUT, "no peer sends it"},
        {1, 2, nl, 0, 0, 0, 0, DS4SCI_ERR_INPUT, "recv_rows[1]"},     /* ghost 0 twice */
        {1, 2, nl + 1, 0, 0, 0, 0, DS4SCI_ERR_INPUT, "recv_rows[1]"}, /* an image, not remote */
        {1, 1, nl, nl, 0, 0, 0, DS4SCI_ERR_INPUT, "send_rows[0]"},
        {1, 1, nl, 0, 1, 0, 0, DS4SCI_ERR_ARG, "move is NULL"},
        {1, 1, nl, 0, 0, 1, 0, DS4SCI_ERR_ARG, "partial owners"},
        {1, 1, nl, 0, 0, 0, 2, DS4SCI_ERR_ARG, "device_buffers = 2"}, /* a flag: 0 or 1 */
        {1, 1, nl, 0, 0, 0, -1, DS4SCI_ERR_ARG, "device_buffers = -1"},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        plan.n_peers = bad[k].n_peers;
        plan.device_buffers = bad[k].device_buffers;
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
    /* and the valid plan, with either flag, runs */
    plan.n_peers = 1;
    peer.n_recv = 1;
    recv[1] = nl;
    send[0] = 0;
    plan.move = noop_move;
    s.ghost_owner = own;
    for (int32_t db = 0; db <= 1; db++) {
        plan.device_buffers = db;
        ck_assert_msg(ds4sci_compute(f.ctx, &s, &ex, &r) == DS4SCI_OK, "device_buffers %d: %s",
                      (int)db, ds4sci_ctx_error(f.ctx));
    }
    free(own);
    tu_fixture_free(&f);
}
END_TEST

/* ---- device memory calls (ds4sci_ipc_*, ds4sci_device_copy) -------------------------------- */

/* The status of a call on ctx (evaluated as the argument: ctx holds its message now) and a
   part of that message. */
static void expect_call(const ds4sci_ctx *ctx, ds4sci_status got, ds4sci_status want,
                        const char *needle) {
    ck_assert_msg(got == want && strstr(ds4sci_ctx_error(ctx), needle),
                  "%s \"%s\", expected %s and \"%s\"", ds4sci_status_name(got),
                  ds4sci_ctx_error(ctx), ds4sci_status_name(want), needle);
}

/* The CPU backend has no device memory: every call with valid arguments is unsupported, with
   a message naming the call and the backend, and changes nothing; bad arguments are refused
   first, naming the argument. */
START_TEST(device_memory_calls_on_cpu_are_unsupported) {
    tu_opts o;
    tu_opts_default(&o);
    et_desc *d = tu_desc_new(&o);
    ds4sci_ctx *ctx = tu_ctx_cpu(d, 1);
    double host[4] = {1, 2, 3, 4}, dst[4] = {0};
    ds4sci_ipc_handle h;
    memset(&h, 0, sizeof(h));
    void *base = host;
    const ds4sci_copy c[2] = {{dst, host, sizeof(host)}, {NULL, NULL, 0}};
    expect_call(ctx, ds4sci_ipc_export(ctx, host, &h), DS4SCI_ERR_UNSUPPORTED,
                "ds4sci_ipc_export: the cpu backend has no device memory");
    expect_call(ctx, ds4sci_ipc_open(ctx, &h, &base), DS4SCI_ERR_UNSUPPORTED,
                "ds4sci_ipc_open: the cpu backend has no device memory");
    ck_assert_ptr_null(base); /* NULL after a failed open */
    expect_call(ctx, ds4sci_ipc_close(ctx, host), DS4SCI_ERR_UNSUPPORTED,
                "ds4sci_ipc_close: the cpu backend has no device memory");
    expect_call(ctx, ds4sci_device_copy(ctx, c, 2), DS4SCI_ERR_UNSUPPORTED,
                "ds4sci_device_copy: the cpu backend has no device memory");
    ck_assert(dst[0] == 0.0 && dst[3] == 0.0);
    /* no copies: valid arguments, and still not supported */
    expect_call(ctx, ds4sci_device_copy(ctx, NULL, 0), DS4SCI_ERR_UNSUPPORTED, "cpu backend");
    /* the context works as before, and a successful call clears the message */
    int64_t off0 = 0;
    ds4sci_system s = {0, 0, NULL, NULL, &off0, NULL, NULL};
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(ds4sci_compute(ctx, &s, NULL, &r), DS4SCI_OK);
    ck_assert_str_eq(ds4sci_ctx_error(ctx), "");

    /* bad arguments are refused before the backend is asked, naming the argument */
    /* no context: no message to leave, the status alone */
    ck_assert_int_eq(ds4sci_ipc_export(NULL, host, &h), DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_ipc_open(NULL, &h, &base), DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_ipc_close(NULL, host), DS4SCI_ERR_ARG);
    ck_assert_int_eq(ds4sci_device_copy(NULL, NULL, 0), DS4SCI_ERR_ARG);

    expect_call(ctx, ds4sci_ipc_export(ctx, NULL, &h), DS4SCI_ERR_ARG,
                "ds4sci_ipc_export: device_ptr is NULL");
    expect_call(ctx, ds4sci_ipc_export(ctx, host, NULL), DS4SCI_ERR_ARG,
                "ds4sci_ipc_export: handle is NULL");
    expect_call(ctx, ds4sci_ipc_open(ctx, NULL, &base), DS4SCI_ERR_ARG,
                "ds4sci_ipc_open: handle is NULL");
    ck_assert_ptr_null(base);
    expect_call(ctx, ds4sci_ipc_open(ctx, &h, NULL), DS4SCI_ERR_ARG,
                "ds4sci_ipc_open: base is NULL");
    expect_call(ctx, ds4sci_ipc_close(ctx, NULL), DS4SCI_ERR_ARG, "ds4sci_ipc_close: base is NULL");
    const ds4sci_copy no_dst[2] = {{dst, host, 8}, {NULL, host, 8}};
    const ds4sci_copy no_src[1] = {{dst, NULL, 8}};
    expect_call(ctx, ds4sci_device_copy(ctx, no_dst, -1), DS4SCI_ERR_ARG, "n = -1");
    expect_call(ctx, ds4sci_device_copy(ctx, NULL, 2), DS4SCI_ERR_ARG, "copies NULL");
    expect_call(ctx, ds4sci_device_copy(ctx, no_dst, 2), DS4SCI_ERR_ARG,
                "ds4sci_device_copy: copies[1].dst is NULL for 8 bytes");
    expect_call(ctx, ds4sci_device_copy(ctx, no_src, 1), DS4SCI_ERR_ARG,
                "ds4sci_device_copy: copies[0].src is NULL for 8 bytes");
    /* a copy of 0 bytes needs no pointers: past the checks (to the backend's answer) */
    const ds4sci_copy empty[1] = {{NULL, NULL, 0}};
    expect_call(ctx, ds4sci_device_copy(ctx, empty, 1), DS4SCI_ERR_UNSUPPORTED, "cpu backend");
    ck_assert(dst[0] == 0.0);
    ds4sci_ctx_free(ctx);
    tu_desc_free(d);
}
END_TEST


/* move() may call the device memory functions on its own context during ds4sci_compute
   (ds4sci.h); when such a call fails and move() then fails, compute's message keeps the
   inner call's reason. */
static int move_fails_after_export(void *user, const void *out, void *in, size_t row_bytes,
                                   int reverse, int device) {
    (void)in, (void)row_bytes, (void)reverse, (void)device;
    ds4sci_ipc_handle h;
    return ds4sci_ipc_export((ds4sci_ctx *)user, out, &h) == DS4SCI_OK ? 0 : 5;
}

START_TEST(error_inside_move_is_reported) {
    tu_fixture f;
    ds4sci_system s;
    int32_t *own = remote_ghost_fixture(&f, 80, &s);
    ds4sci_result r;
    memset(&r, 0, sizeof(r));
    const int32_t nl = s.n_local;
    int32_t send[1] = {0}, recv[1] = {nl};
    ds4sci_wire_peer peer = {1, send, 1, recv};
    ds4sci_wire_plan plan = {1, &peer, move_fails_after_export, f.ctx, 1};
    ds4sci_exchange ex = {noop_exchange, noop_exchange, NULL, NULL, 0, NULL, &plan};
    expect_call(f.ctx, ds4sci_compute(f.ctx, &s, &ex, &r), DS4SCI_ERR_EXCHANGE,
                "(inside the exchange: ds4sci_ipc_export: the cpu backend has no device memory)");
    free(own);
    tu_fixture_free(&f);
}
END_TEST

/* ds4sci_ctx_same_neighbors: a promise covers one call, needs the previous call's counts
   (else DS4SCI_ERR_ARG naming them), changes nothing on the CPU backend (same bits), and is
   refused after a call that failed (bad input: nothing of that call to keep). */
START_TEST(same_neighbors_promise) {
    tu_opts o;
    tu_opts_default(&o);
    tu_fixture f;
    tu_fixture_init(&f, &o, 12, 7.0, 1, 81);
    const ds4sci_system *s = &f.sys.s;
    ck_assert_int_eq(ds4sci_ctx_same_neighbors(NULL, 1), DS4SCI_ERR_ARG);
    expect_call(f.ctx, ds4sci_ctx_same_neighbors(f.ctx, 2), DS4SCI_ERR_ARG,
                "same = 2, expected 0 or 1");
    tu_result a, b;
    tu_result_alloc(&a, s);
    tu_result_alloc(&b, s);
    /* no previous call to keep */
    ck_assert_int_eq(ds4sci_ctx_same_neighbors(f.ctx, 1), DS4SCI_OK);
    expect_call(f.ctx, ds4sci_compute(f.ctx, s, NULL, &a.r), DS4SCI_ERR_ARG, "no previous call");
    /* the failed call consumed it: plain calls work, then a kept promise gives the same bits */
    ck_assert_int_eq(ds4sci_compute(f.ctx, s, NULL, &a.r), DS4SCI_OK);
    ck_assert_int_eq(ds4sci_ctx_same_neighbors(f.ctx, 1), DS4SCI_OK);
    ck_assert_msg(ds4sci_compute(f.ctx, s, NULL, &b.r) == DS4SCI_OK, "%s", ds4sci_ctx_error(f.ctx));
    ck_assert(a.r.energy == b.r.energy);
    ck_assert(memcmp(a.r.forces, b.r.forces, sizeof(double) * 3 * (size_t)a.n_total) == 0);
    /* a promise with other counts (one candidate fewer for the last atom) is refused */
    ds4sci_system t = *s;
    int64_t *off = malloc(sizeof(int64_t) * ((size_t)t.n_local + 1));
    ck_assert(off);
    memcpy(off, t.nbr_offset, sizeof(int64_t) * ((size_t)t.n_local + 1));
    ck_assert(off[t.n_local] > off[t.n_local - 1]);
    off[t.n_local]--;
    t.nbr_offset = off;
    ck_assert_int_eq(ds4sci_ctx_same_neighbors(f.ctx, 1), DS4SCI_OK);
    expect_call(f.ctx, ds4sci_compute(f.ctx, &t, NULL, &b.r), DS4SCI_ERR_ARG,
                "candidates differ from it");
    /* and a promise lasts one call: the next one (other list, no promise) runs */
    ck_assert_msg(ds4sci_compute(f.ctx, &t, NULL, &b.r) == DS4SCI_OK, "%s",
                  ds4sci_ctx_error(f.ctx));
    /* a call with the same counts but a bad index fails its input check; a promise after
       it is then refused (nothing of that call was kept), not served with the last good list */
    ds4sci_system u = t;
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)off[t.n_local]);
    ck_assert(idx);
    memcpy(idx, t.nbr_index, sizeof(int32_t) * (size_t)off[t.n_local]);
    idx[0] = t.n_local + t.n_ghost; /* out of range */
    u.nbr_index = idx;
    ck_assert_int_eq(ds4sci_compute(f.ctx, &u, NULL, &b.r), DS4SCI_ERR_INPUT);
    ck_assert_int_eq(ds4sci_ctx_same_neighbors(f.ctx, 1), DS4SCI_OK);
    expect_call(f.ctx, ds4sci_compute(f.ctx, &t, NULL, &b.r), DS4SCI_ERR_ARG, "no previous call");
    free(idx);
    free(off);
    tu_result_free(&a);
    tu_result_free(&b);
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
    /* a copy of another element than its owner's (with or without an exchange) */
    f.sys.ghost_owner[1] = 0;
    const int32_t nl = f.sys.s.n_local, z0 = f.sys.z[nl + 1];
    f.sys.z[nl + 1] = f.sys.z[0] == 1 ? 2 : 1; /* elements 1 .. max_z - 1 are the model's */
    expect_status(&f, &f.sys.s, DS4SCI_ERR_INPUT, "ghost 1 (atom");
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "copy of owned atom 0"));
    tu_result_alloc(&r, &f.sys.s);
    ck_assert_int_eq(ds4sci_compute(f.ctx, &f.sys.s, &ex, &r.r), DS4SCI_ERR_INPUT);
    ck_assert_ptr_nonnull(strstr(ds4sci_ctx_error(f.ctx), "copy of owned atom 0"));
    tu_result_free(&r);
    f.sys.z[nl + 1] = f.sys.z[0];
    expect_status(&f, &f.sys.s, DS4SCI_OK, NULL);
    f.sys.z[nl + 1] = z0;
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
    tcase_add_loop_test(tx, wire_plan_device_buffers_on_cpu_moves_host_rows, 0, 3);
    tcase_add_test(tx, error_inside_move_is_reported);
    tcase_add_test(tx, same_neighbors_promise);
    suite_add_tcase(s, tx);

    TCase *td = tcase_create("device_memory");
    tcase_add_test(td, device_memory_calls_on_cpu_are_unsupported);
    suite_add_tcase(s, td);

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
