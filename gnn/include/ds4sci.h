/*
 * ds4sci.h - public C API of the ds4sci core: TorchMD-Net's Equivariant Transformer (ET)
 * force field, energies, forces and virials, on the CPU (float64 reference) or on a GPU.
 *
 * Ownership. Every handle is created by a ds4sci_*_create/_load call and released by the
 * matching ds4sci_*_free; *_free(NULL) is a no-op. A context keeps a pointer to its model:
 * free all contexts of a model before the model. Arrays passed in are borrowed for the
 * duration of the call only; arrays passed out (result fields) are owned by the caller and
 * must have the documented size. Nothing here keeps a pointer to caller memory after the
 * call returns. No function aborts or prints on bad input: each fallible call returns a
 * status and leaves a message (what, where, what was expected) in the handle's error
 * buffer (ds4sci_ctx_error) or in the caller's err buffer for calls that create a handle.
 *
 * Units. Positions and cutoffs are in the model's length unit, energies in its energy unit
 * (ds4sci_model_info.length_unit / energy_unit, e.g. "angstrom" and "eV"). Forces are
 * energy/length; virials are energy (sum of r (x) f, LAMMPS convention, not divided by volume).
 *
 * Threading. A context is used by one thread at a time; distinct contexts are independent.
 * The CPU backend parallelises over atoms with OpenMP inside a call.
 *
 * The public API has no CUDA, MPI or LAMMPS types.
 */
#ifndef DS4SCI_H
#define DS4SCI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS4SCI_VERSION_MAJOR 0
#define DS4SCI_VERSION_MINOR 1
#define DS4SCI_VERSION_PATCH 0

/* Status codes. DS4SCI_OK is 0; every other value is an error. */
typedef enum ds4sci_status {
    DS4SCI_OK = 0,
    DS4SCI_ERR_ARG = 1,          /* bad argument: NULL where required, negative count, bad index */
    DS4SCI_ERR_IO = 2,           /* model file cannot be opened or read */
    DS4SCI_ERR_FORMAT = 3,       /* model file malformed: header, JSON, tensor missing/dtype/shape */
    DS4SCI_ERR_UNSUPPORTED = 4,  /* well-formed but an option this build does not implement */
    DS4SCI_ERR_NOMEM = 5,        /* host allocation failed */
    DS4SCI_ERR_INPUT = 6,        /* bad atoms: non-finite position, overlapping atoms, unknown z */
    DS4SCI_ERR_EXCHANGE = 7,     /* the caller's ghost exchange callback returned non-zero */
    DS4SCI_ERR_DEVICE = 8,       /* no usable GPU, or a CUDA error */
    DS4SCI_ERR_DEVICE_NOMEM = 9  /* GPU out of memory (message names the size asked for) */
} ds4sci_status;

/* Static name of a status ("DS4SCI_ERR_FORMAT", ...). Never NULL. */
const char *ds4sci_status_name(ds4sci_status status);

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct ds4sci_model ds4sci_model;

/* What a loaded model is. All pointers stay valid until ds4sci_model_free. */
typedef struct ds4sci_model_info {
    const char *path;            /* file it was loaded from ("<memory>" for _load_memory) */
    const char *name;            /* metadata "name", or "" */
    const char *description;     /* metadata "description", or "" */
    const char *length_unit;     /* "angstrom", "nm", "bohr" */
    const char *energy_unit;     /* "eV", "kcal/mol", "kJ/mol", "hartree" */
    double cutoff_lower;         /* length unit; pairs need cutoff_lower <= r < cutoff_upper */
    double cutoff_upper;         /* length unit; the ghost shell a caller must provide */
    double energy_shift;         /* TorchMD-Net "mean": added once per whole system, NOT per atom
                                    and NOT included in ds4sci_result.energy */
    int32_t n_elements;          /* entries in element_symbols / element_z */
    const char *const *element_symbols; /* [n_elements] "H", "O", ... (as trained) */
    const int32_t *element_z;    /* [n_elements] embedding row (atomic number) of each symbol */
    int32_t max_z;               /* embedding rows; valid z are those in element_z */
    int32_t hidden_channels;     /* F */
    int32_t num_layers;          /* L */
    int32_t num_rbf;             /* K */
    int32_t num_heads;           /* H */
    int32_t vector_cutoff;       /* 1: energy is C1 at cutoff_upper; 0: it jumps (see warning) */
    const char *warning;         /* non-NULL when the model loads but has a known defect,
                                    e.g. vector_cutoff off: energy not continuous at the cutoff */
    double head_vector_norm_eps; /* 0: TorchMD-Net's head; > 0: its gated blocks use the smoothed
                                    norm sqrt(|u|^2 + eps^2) (docs/model_format.md) */
} ds4sci_model_info;

/*
 * Load a model file: safetensors whose header "__metadata__" holds "ds4sci.config" (a JSON
 * object with every hyperparameter, the elements and the units) and whose tensors carry
 * TorchMD-Net's state-dict names (F32 or F64). Every tensor's presence, dtype and shape is
 * checked against the hyperparameters. On failure *model is NULL and err (if non-NULL)
 * holds a NUL-terminated message naming the file, the tensor or key, and what was expected.
 */
ds4sci_status ds4sci_model_load(const char *path, ds4sci_model **model, char *err, size_t err_len);

/* Same, from a buffer of `size` bytes (borrowed). `name` is used in messages. */
ds4sci_status ds4sci_model_load_memory(const void *data, size_t size, const char *name,
                                       ds4sci_model **model, char *err, size_t err_len);

void ds4sci_model_free(ds4sci_model *model);

/* Never NULL for a non-NULL model. */
const ds4sci_model_info *ds4sci_model_get_info(const ds4sci_model *model);

/* Embedding row (atomic number) for an element symbol, or -1 if the model has no such element. */
int32_t ds4sci_model_element_z(const ds4sci_model *model, const char *symbol);

/* ------------------------------------------------------------------------------------------ */
/* Atoms, neighbours and ghosts                                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * One process's view of the atoms. Atoms [0, n_local) are owned; atoms [n_local, n_total),
 * n_total = n_local + n_ghost, are ghosts: periodic images and atoms of other processes, each
 * a copy of an owned atom somewhere. Ghosts must cover every atom within cutoff_upper of an
 * owned atom (one cutoff: never num_layers x cutoff). Features of ghosts are refreshed
 * through ds4sci_exchange between layers.
 *
 * Neighbours: a candidate list per owned atom (receiver), CSR. It may contain atoms beyond
 * the cutoff (a Verlet skin); the core keeps pairs with cutoff_lower^2 <= d^2 < cutoff_upper^2
 * and adds the self-loop itself. It must contain every atom (owned or ghost, never i itself)
 * within cutoff_upper of i. Nothing is truncated: the caller's list is used whole.
 */
typedef struct ds4sci_system {
    int32_t n_local;             /* owned atoms, >= 0 (0 is valid: an empty domain) */
    int32_t n_ghost;             /* ghost atoms, >= 0 */
    const double *pos;           /* [n_total][3] positions, length unit */
    const int32_t *z;            /* [n_total] atomic numbers (embedding rows), each in element_z */
    const int64_t *nbr_offset;   /* [n_local + 1] nbr_offset[0] = 0, non-decreasing */
    const int32_t *nbr_index;    /* [nbr_offset[n_local]] neighbours of owned atom i are
                                    nbr_index[nbr_offset[i] .. nbr_offset[i+1]), each in
                                    [0, n_total) and != i */
    const int32_t *ghost_owner;  /* [n_ghost] owned atom each ghost is a copy of. Without an
                                    exchange (the built-in single-process exchange): required,
                                    every entry in [0, n_local). With an exchange: optional
                                    ("partial owners"): an entry in [0, n_local) marks a copy
                                    of this process's own atom (a periodic image), which the
                                    core refreshes and folds itself (the CUDA backend on the
                                    GPU, without the host); -1 a copy of another process's
                                    atom, the only rows the exchange handles (see
                                    ds4sci_exchange). NULL: the exchange handles every ghost */
} ds4sci_system;

/*
 * Wire plan (optional, with partial owners): the rows this process exchanges with each other
 * process, in an order both sides agree on ("wire order"), and a transport for packed rows.
 * The core packs the rows itself and calls move(), so the caller only moves bytes between
 * processes (shared memory, MPI, or device-to-device copies: docs/exchange_plan.md).
 *   move(user, out, in, row_bytes, reverse, device):
 *     forward (reverse 0): out holds, peer after peer in plan order, the rows send_rows of that
 *       peer (n_send rows each); move fills in, peer after peer, with the rows the peer sends
 *       for recv_rows (n_recv rows each).
 *     reverse (1): out holds, peer by peer, the rows recv_rows (gradients of the ghosts); move
 *       fills in, peer by peer, with the rows the peer returns for send_rows; the core adds
 *       them into its rows, peer by peer in plan order and row by row in wire order.
 *     row_bytes: bytes of one row (the backend's row type: doubles for the CPU backend,
 *     floats for the CUDA backend); move copies bytes and never interprets them.
 *     device: 0: out and in are host memory (pinned for the CUDA backend). 1 (only when the
 *     plan sets device_buffers and the backend's rows live on a GPU): out and in are device
 *     memory of the context's GPU; out stays valid and unchanged until move returns, so
 *     peers may read it in place (CUDA IPC: ds4sci_ipc_export / ds4sci_ipc_open), and move
 *     may fill in by ds4sci_device_copy. The backend has finished writing out (its stream is
 *     synchronised) before it calls move, and reads in only after move returns.
 *     Return 0 on success. Called the same number of times with the same row_bytes on every
 *     process, as the callbacks are.
 * A plan must cover exactly the ghosts with ghost_owner -1: each appears once in the recv_rows
 * of all peers together; send_rows are owned rows (repeats allowed). A backend uses the plan
 * or the callbacks of ds4sci_exchange (both must be given): the CPU backend uses the plan, the
 * CUDA backend the callbacks unless DS4SCI_CUDA_WIRE=1 (docs/gpu.md).
 */
typedef struct ds4sci_wire_peer {
    int32_t n_send;            /* rows sent to this peer */
    const int32_t *send_rows;  /* [n_send] each in [0, n_local); repeats allowed */
    int32_t n_recv;            /* rows received from this peer */
    const int32_t *recv_rows;  /* [n_recv] each in [n_local, n_total) with ghost_owner -1 */
} ds4sci_wire_peer;

typedef struct ds4sci_wire_plan {
    int32_t n_peers;
    const ds4sci_wire_peer *peers; /* [n_peers] */
    int (*move)(void *user, const void *out, void *in, size_t row_bytes, int reverse,
                int device);
    void *user;
    int32_t device_buffers; /* 1: move() accepts device pointers (device = 1) where the
                               backend's rows are on a GPU; 0: host pointers only */
} ds4sci_wire_plan;

/*
 * Ghost exchange supplied by the caller (LAMMPS uses its forward/reverse communication).
 * `data` is a host array [n_total][width] of doubles, row-major, one row per atom.
 *   forward: overwrite each ghost row with its owner's row, as bytes (a backend may pack two
 *            float values into one double: copy rows, do not interpret or convert them).
 *   reverse: add each ghost row into its owner's row (ghost rows may be left as they are).
 * Return 0 on success. The core calls forward and reverse the same number of times, with the
 * same widths, whatever n_local and n_ghost are (0 included), so collective communication
 * stays matched across processes.
 * With partial owners (system->ghost_owner set together with an exchange) the callbacks deal
 * only with the ghosts whose ghost_owner is -1: forward must fill those rows (it may write the
 * others too: the core overwrites them), reverse must add only those rows into their owners;
 * the rows of ghosts with an owner on this process hold unspecified values during both calls.
 */
typedef struct ds4sci_exchange {
    int (*forward)(void *user, double *data, int32_t width);
    int (*reverse)(void *user, double *data, int32_t width);
    void *user;
    /* Optional hint (NULL / 0: none): the owned rows forward() reads (the atoms other
     * processes or periodic images need: LAMMPS's send lists; with partial owners only those
     * other processes need), each in [0, n_local), any order, each at most once. With a hint,
     * the other owned rows of `data` hold unspecified values during forward(), and reverse()
     * must add only into these rows. A GPU backend then copies only these rows between
     * device and host. Without a hint: {forward, reverse, user, NULL, 0, NULL, NULL}. */
    const int32_t *send_rows;
    int32_t n_send_rows;
    /* Optional (NULL: none), used with partial owners and a send_rows hint only: reverse on
     * rows of floats, data [n_total][width] floats (the caller adds them as floats, into
     * floats). A GPU backend whose rows are floats then moves half the bytes of reverse(); a
     * float64 backend keeps calling reverse(). Same call sequence and widths (in floats) as
     * reverse(). */
    int (*reverse_f32)(void *user, float *data, int32_t width);
    /* Optional (NULL: none), with partial owners only: the wire plan (ds4sci_wire_plan). The
     * callbacks above stay required. Initialisers: {f, r, u, rows, n, NULL, NULL}. */
    const ds4sci_wire_plan *plan;
} ds4sci_exchange;

/* Outputs. Set a pointer to NULL when not requested. Arrays are overwritten, not added to. */
typedef struct ds4sci_result {
    double energy;        /* out: sum of atom_energy over owned atoms (energy_shift excluded) */
    double virial[6];     /* out: xx, yy, zz, xy, xz, yz of sum over pairs of w (x) f, where
                             w = r_sender - r_receiver and f the pair force on the sender;
                             this process's share: sums to the global virial over processes */
    double *atom_energy;  /* [n_local] or NULL */
    double *forces;       /* [n_total][3] or NULL; ghost rows hold forces on the ghost copies,
                             which the caller adds into their owners (LAMMPS reverse comm),
                             or see ds4sci_fold_ghosts. Only those sums are defined: a pair
                             between an atom and a periodic image may be put on either of its
                             two copies (the CUDA backend does so with ghost_owner; with the
                             built-in exchange it puts every image's forces on its owned
                             atom), which changes ghost rows, never the sums or `virial`, but
                             does change sum_i r_i . f_i: take the virial from `virial` (or
                             atom_virial), not from forces times positions (LAMMPS's fdotr) */
    double *atom_virial;  /* [n_total][6] or NULL, same order as virial; each pair's term is
                             split half to each of its two atoms; ghost rows as for forces */
} ds4sci_result;

/* ------------------------------------------------------------------------------------------ */
/* Contexts: a model bound to a backend, with its workspace                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum ds4sci_device {
    DS4SCI_DEVICE_AUTO = 0,  /* the GPU when one is usable, else the CPU */
    DS4SCI_DEVICE_CPU = 1,   /* float64 reference backend (OpenMP) */
    DS4SCI_DEVICE_CUDA = 2   /* fused CUDA kernels, fp32 with fp64 energy/virial sums */
} ds4sci_device;

typedef struct ds4sci_options {
    ds4sci_device device;    /* default DS4SCI_DEVICE_AUTO */
    int32_t device_id;       /* CUDA device ordinal, default 0 */
    int32_t n_threads;       /* CPU threads, 0 = OpenMP default */
} ds4sci_options;

void ds4sci_options_init(ds4sci_options *options);

typedef struct ds4sci_ctx ds4sci_ctx;

/* options NULL means defaults. On failure *ctx is NULL and err holds the reason. */
ds4sci_status ds4sci_ctx_create(const ds4sci_model *model, const ds4sci_options *options,
                                ds4sci_ctx **ctx, char *err, size_t err_len);
void ds4sci_ctx_free(ds4sci_ctx *ctx);

/* The backend the context runs on (never AUTO), and its name ("cpu", "cuda"). */
ds4sci_device ds4sci_ctx_device(const ds4sci_ctx *ctx);
const char *ds4sci_ctx_backend_name(const ds4sci_ctx *ctx);

/* Message of the last failed call on ctx ("" if none). Valid until the next call on ctx. */
const char *ds4sci_ctx_error(const ds4sci_ctx *ctx);

/* 1 if this build has the CUDA backend and a device is usable, else 0. */
int ds4sci_cuda_available(void);

/* Number of CUDA devices this process can use (honours CUDA_VISIBLE_DEVICES); 0 when the
 * build has no CUDA backend or no device is usable. Valid device_id values are 0..count-1. */
int ds4sci_gpu_count(void);

/*
 * Energy, forces and virials of the owned atoms. exchange NULL: the built-in exchange driven
 * by system->ghost_owner (required then). Checks the input first: non-finite positions, z not
 * in the model, neighbour indices out of range, a pair closer than 1e-4 length units
 * (overlapping atoms) each give DS4SCI_ERR_INPUT with the atom indices in the message.
 */
ds4sci_status ds4sci_compute(ds4sci_ctx *ctx, const ds4sci_system *system,
                             const ds4sci_exchange *exchange, ds4sci_result *result);

/*
 * A hint for the next ds4sci_compute on ctx, which consumes it: same = 1 promises that that
 * call's system has the same n_local, n_ghost, nbr_offset and nbr_index as the previous call
 * on ctx (positions, z and the exchange may differ), as between two neighbour-list builds of
 * an MD engine. A backend may then keep its own copy of the candidate list (the CUDA backend
 * keeps it on the GPU, by default from a context's first promise on) instead of reading it
 * again. The counts are
 * checked (a call whose counts differ fails with DS4SCI_ERR_ARG); the lists are not, so a
 * broken promise gives wrong forces. same = 0 (the default) promises nothing. The
 * checks of the input (indices in range, overlapping atoms) run either way.
 */
ds4sci_status ds4sci_ctx_same_neighbors(ds4sci_ctx *ctx, int32_t same);

/*
 * Convenience for single-process callers: add ghost rows of `data` ([n_local+n_ghost][width])
 * into their owners (ghost_owner: [n_ghost]) and zero the ghost rows.
 */
void ds4sci_fold_ghosts(double *data, int32_t width, int32_t n_local, int32_t n_ghost,
                        const int32_t *ghost_owner);

/* ------------------------------------------------------------------------------------------ */
/* Device memory for a wire plan's move with device buffers (CUDA backend; no CUDA types)       */
/* ------------------------------------------------------------------------------------------ */

/*
 * A device buffer of one process, opened by other processes of the node (CUDA IPC). bytes: the
 * handle of the allocation holding the pointer (cudaIpcMemHandle_t; a new allocation, even at
 * the same address, has a different handle, so comparing bytes tells a moved buffer apart);
 * offset: of the pointer in that allocation.
 */
#define DS4SCI_IPC_HANDLE_BYTES 64
typedef struct ds4sci_ipc_handle {
    unsigned char bytes[DS4SCI_IPC_HANDLE_BYTES];
    uint64_t offset;
} ds4sci_ipc_handle;

/*
 * ds4sci_ipc_export: the handle of device memory of ctx's GPU that ctx's backend handed out
 * (the out pointer of a move with device = 1). ds4sci_ipc_open: maps another process's
 * allocation (handle->bytes; offset not applied) into ctx's GPU: *base is the allocation's
 * start. ds4sci_ipc_close: unmaps it. Each may be called from inside move(). The CPU backend,
 * or a build without CUDA, gives DS4SCI_ERR_UNSUPPORTED; a CUDA failure DS4SCI_ERR_DEVICE
 * (e.g. IPC between these two GPUs is not possible), with the reason in ds4sci_ctx_error.
 * Lifetime of out (device = 1): its allocation does not change during a move; between moves
 * the backend may replace it by a larger one (a new pointer and a new handle: compare either
 * at every move), and frees the old one when the first move that hands out the new one has
 * returned. CUDA leaves freeing memory that another process still maps undefined, so a process
 * that maps a peer's out closes that mapping within the move where it sees the peer's new
 * handle, before the move returns; and at the end it closes all its mappings and waits for
 * every peer to have done so before any of them frees its context.
 */
ds4sci_status ds4sci_ipc_export(ds4sci_ctx *ctx, const void *device_ptr,
                                ds4sci_ipc_handle *handle);
ds4sci_status ds4sci_ipc_open(ds4sci_ctx *ctx, const ds4sci_ipc_handle *handle, void **base);
ds4sci_status ds4sci_ipc_close(ds4sci_ctx *ctx, void *base);

/*
 * Copies n blocks (device or host memory, any mix, each pointer valid in this process: its
 * own or opened by ds4sci_ipc_open) in order on ctx's GPU and waits until they are done. For
 * move() with device = 1. Same errors as ds4sci_ipc_export.
 */
typedef struct ds4sci_copy {
    void *dst;
    const void *src;
    size_t bytes;
} ds4sci_copy;
ds4sci_status ds4sci_device_copy(ds4sci_ctx *ctx, const ds4sci_copy *copies, int32_t n);

/* ------------------------------------------------------------------------------------------ */
/* Neighbour lists with periodic ghosts, for callers without an MD engine (tests, benchmarks) */
/* ------------------------------------------------------------------------------------------ */

typedef struct ds4sci_graph ds4sci_graph;

/*
 * Build owned atoms, periodic ghost images within `cutoff` of the box, and a full candidate
 * neighbour list (all pairs with d < cutoff) by a cell list. box: NULL for open boundaries,
 * else [3][3] rows a, b, c in LAMMPS/TorchMD-Net reduced form (a_y = a_z = b_z = 0), with
 * periodicity in all three directions. Positions may lie outside the box (they are wrapped
 * for the ghost search; owned atoms keep the given positions). Fills *system (whose arrays
 * belong to the graph and live until ds4sci_graph_free) with ghost_owner set.
 */
ds4sci_status ds4sci_graph_build(const double *pos, const int32_t *z, int32_t n_atoms,
                                 const double *box, double cutoff, ds4sci_graph **graph,
                                 ds4sci_system *system, char *err, size_t err_len);
void ds4sci_graph_free(ds4sci_graph *graph);

#ifdef __cplusplus
}
#endif

#endif /* DS4SCI_H */
