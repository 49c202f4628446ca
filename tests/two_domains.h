/*
 * two_domains.h - two "processes" (threads) with a caller exchange, for the API tests of the CPU
 * (check_api.c) and CUDA (check_cuda_backend.c) backends.
 */
#ifndef DS4SCI_TWO_DOMAINS_H
#define DS4SCI_TWO_DOMAINS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4sci.h"
#include "test_util.h"

/* ---- two "processes" with a user exchange ------------------------------------------------ */

/*
 * A periodic box split into two domains by the fractional x coordinate (or, with
 * all_to_first, everything in domain 0 and an empty domain 1). Each domain owns its atoms
 * and has as ghosts every neighbour of its owned atoms that it does not own (atoms of the
 * other domain and periodic images), built from the one-process graph. The two run in
 * two threads; the exchange callbacks meet at a barrier and copy rows between the
 * domains' buffers, as MPI forward/reverse communication would. A wire plan's move() does
 * the same with packed rows: memcpy for host buffers; for device buffers (device = 1, the
 * plan's device_buffers set) each domain publishes its out pointer, meets the other at the
 * barrier, copies the other's rows from its out (device memory of the same GPU in the same
 * process: a valid pointer here, where other processes would map it by CUDA IPC) into its own
 * in by ds4sci_device_copy on its own context, and meets it again before returning (the other
 * must not reuse its out while this one reads it). On device moves it also exports its out
 * pointer (ds4sci_ipc_export, from inside move as a plugin would) and checks the handle.
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
    int device;      /* published by move(): its device argument (0 or 1) */
    double *data;    /* published buffer of the current exchange */
    int32_t width;
    int n_fwd, n_rev;
    int n_move;      /* of those, through move() (a backend that used the wire plan) */
    int n_move_device; /* of those, with device = 1 (device buffers) */
    /* device moves: ds4sci_ipc_export of out from inside move() must give DS4SCI_OK, offset 0
       (out is its allocation's start), and the same handle bytes exactly when out is the same
       pointer as at the previous device move (a grown buffer is a new allocation, a new
       handle; the same one keeps its handle); n_ipc_bad counts the moves where not, ipc_msg
       says why (the first) */
    int n_ipc_bad;
    char ipc_msg[256];
    const void *ipc_out;        /* out at the last device move */
    ds4sci_ipc_handle ipc_last; /* its handle */
    ds4sci_ctx *ctx;
    tu_result res;
    ds4sci_status status;
} domain;

typedef struct world {
    domain dom[2];
    pthread_barrier_t bar;
    int32_t *proc_of, *local_of; /* [n global atoms] */
} world;

/* w zeroed, and its atoms split by the fractional x coordinate of the box [a | b | c] (rows):
   x < 1/2 to domain 0 (all_to_first: every atom); cnt gets the atoms per domain. */
void world_split(world *w, const ds4sci_system *g, const double box[9], int all_to_first,
                 int32_t cnt[2]);
/* Domain p of w from the one-process system g (w->proc_of, w->local_of set; d->partial chosen
   before). */
void domain_build(world *w, int p, const ds4sci_system *g);
/* world_split, then both domains built (partial: ghost owners for the periodic images). */
void world_build(world *w, const ds4sci_system *g, const double box[9], int all_to_first,
                 int partial, int32_t cnt[2]);
/* The exchange hint of both domains: the owned rows that a ghost of either domain copies. */
void world_send_rows(world *w, int hint);
/* Wire plans of both domains (partial owners), with device_buffers as given (0 or 1: move()
   then also takes device pointers); dom_run then passes them. */
void world_plans(world *w, int32_t device_buffers);
void domain_free(domain *d);
int world_run(world *w, ds4sci_ctx *(*make_ctx)(const et_desc *desc), const et_desc *desc);
/* Both domains' forces (ghost rows included) added into the global atoms, [n][3], calloc'd. */
double *world_forces(const world *w, int32_t n);
/* Both domains and the split. */
void world_free(world *w);

#endif
