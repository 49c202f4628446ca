/* -*- c++ -*- ----------------------------------------------------------
   pair_style ds4sci: TorchMD-Net's Equivariant Transformer through the ds4sci C core.

   pair_style ds4sci <model.safetensors> [device auto|cpu|cuda] [device_id N] [threads N]
                     [exchange auto|lammps|mpi]
   pair_coeff * * <element or NULL per atom type>

   The plugin is the only code here that knows LAMMPS: it hands the core the owned atoms, the
   ghosts and a full neighbour list, exchanges ghost feature rows between layers when the core
   asks, and tallies forces, energy and virials. Ghost feature rows (`exchange`):
   - auto, one MPI rank: every ghost is a periodic image of an owned atom; the plugin passes
     each ghost's owner and the core refreshes ghosts itself (on the GPU with device cuda,
     without copying feature rows through host memory).
   - auto, several ranks: at each neighbour-list build one LAMMPS forward communication gives
     every ghost its owner (rank, index). Images of this rank's own atoms are refreshed by the
     core as with one rank; the rows of other ranks' atoms travel by the plugin's halo plan,
     straight from the owner: a rank on the same node reads them from the owner's part of an
     MPI-3 shared-memory window (one copy instead of an MPI message's two), a rank on another
     node gets one MPI message per peer rank and direction.
   - mpi: as auto, but MPI messages between ranks of one node too (no shared memory).
   - lammps: LAMMPS's forward/reverse communication for every ghost row (all its swaps).
   Forces and per-atom virials of ghosts always go through LAMMPS's reverse communication.

   compute pair ds4sci gives cumulative timers of this rank's plugin (summed over ranks):
   [1] compute calls, [2] s building the core's input (types, CSR, ghost owners, halo plan),
   [3] s in ds4sci_compute, [4] s of [3] inside the exchange of feature rows (halo plan or
   LAMMPS's communication), [5] s adding results into LAMMPS's arrays, [6] s of [4] waiting for
   other ranks in the halo plan: MPI messages and the node's barriers around the shared window
   (the rest of [4]: its row copies, from and to the window included).
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_DS4SCI_H
#define LMP_PAIR_DS4SCI_H

#include "pair.h"

#include "ds4sci.h"

#include <cstdint>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairDS4SCI : public Pair {
 public:
  PairDS4SCI(class LAMMPS *);
  ~PairDS4SCI() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  double memory_usage() override;

 private:
  ds4sci_model *model;
  ds4sci_ctx *ctx;
  double energy_scale;          // model energy unit -> LAMMPS energy unit
  std::vector<int32_t> type_z;  // [ntypes + 1] atomic number per LAMMPS type, -1 = NULL

  // Per-step scratch, kept to avoid reallocating every step.
  std::vector<int32_t> z;            // [nall]
  std::vector<int64_t> nbr_offset;   // [nlocal + 1]
  std::vector<int32_t> nbr_index;    // [sum numneigh]
  std::vector<double> forces;        // [nall][3]
  std::vector<double> atom_energy;   // [nlocal]
  std::vector<double> atom_virial;   // [nall][6]
  // [nghost] owned atom of each ghost: with the built-in exchange every ghost's, with the halo
  // plan the periodic images' (-1: a ghost of another rank's atom)
  std::vector<int32_t> ghost_owner;
  std::vector<int32_t> local_of_tag; // [max tag + 1] owned index of each atom ID (1 rank)
  bool exchange_lammps;              // exchange lammps: always LAMMPS's communication
  bool exchange_shared;              // exchange auto: same-node peers through shared memory
  int n_threads;                     // OpenMP threads of the plugin's loops (0: default)
  double t_exchange;                 // seconds in the exchange callbacks (pvector[3])
  double t_halo_mpi;                 // of which waiting in the halo plan: MPI messages and
                                     // the node's barriers (pvector[5])
  // The core's input (z, CSR, ghost owners, halo plan) depends only on the neighbour list and
  // the atoms' order, which change together at a LAMMPS neighbour-list build: kept between
  // builds.
  enum Exchange { EXCHANGE_BUILTIN, EXCHANGE_HALO, EXCHANGE_LAMMPS };
  bool input_valid;                  // made since the last run's init / pair_style
  int input_nlocal, input_nghost;
  Exchange input_exchange;           // how the core's ghost feature rows are exchanged
  // The exchange's send_rows hint. Halo plan: the owned rows peers need, set at the build.
  // LAMMPS's communication: the owned rows its send lists read, recorded by pack_forward_comm
  // during the first call after a neighbour-list build and passed from the next call on (same
  // lists until a rebuild).
  std::vector<unsigned char> send_mark;  // [nlocal] while recording
  std::vector<int32_t> send_rows;        // ascending, each once
  bool send_recording, send_valid;

  // The halo plan (exchange auto, several ranks), made at each neighbour-list build. Forward,
  // per peer rank p: the owned rows halo_send_index[halo_send_offset[p] .. [p + 1]) go to p, in
  // the order of p's ghosts, and the ghost rows halo_recv_index[halo_recv_offset[p] .. [p + 1])
  // come from p; reverse the other way round, added into the owned rows. The same owned row may
  // be listed several times for one peer (several periodic images there).
  std::vector<double> ghost_origin;       // [nall] owner rank * 2^32 + owner's index
  std::vector<int> halo_send_offset;      // [nprocs + 1] into halo_send_index
  std::vector<int32_t> halo_send_index;   // owned rows, grouped by peer
  std::vector<int> halo_recv_offset;      // [nprocs + 1] into halo_recv_index
  std::vector<int32_t> halo_recv_index;   // ghost rows (nlocal + g), grouped by owner rank
  std::vector<int32_t> halo_send_peer;    // [halo_send_index.size()] the peer of each entry
  std::vector<int32_t> halo_recv_peer;    // [halo_recv_index.size()] the owner of each entry
  // Ranks with a non-empty list, ascending: by MPI messages, and through the shared window.
  std::vector<int> halo_send_peers, halo_recv_peers;
  std::vector<int> halo_node_send_peers, halo_node_recv_peers;
  // Reverse sums per owned row: send_rows[r] adds the received rows halo_row_entry[
  // halo_row_offset[r] .. [r + 1]) (positions in halo_send_index; each read from its peer's
  // message or part of the window), ascending: peer by peer, entry by entry, whatever the
  // thread count or the path.
  std::vector<int32_t> halo_row_offset;   // [send_rows.size() + 1]
  std::vector<int32_t> halo_row_entry;    // [halo_send_index.size()]
  // Message buffers, grouped by peer as halo_send_offset / halo_recv_offset, rows of the
  // call's width. With the shared window they hold only the rows of other nodes (up to the
  // last such peer's segment).
  std::vector<double> halo_send_buf;      // [halo_send_buf_rows * comm_forward]
  std::vector<double> halo_recv_buf;      // [halo_recv_buf_rows * comm_forward]
  int halo_send_buf_rows, halo_recv_buf_rows;
  std::vector<MPI_Request> halo_requests; // one per message peer and direction
  std::vector<const double *> halo_src;   // [nprocs] per call: the first received row of peer p

  // Same-node peers of the halo plan (exchange auto). Each rank of a node owns a part of one
  // shared window, [max(sends, receives)][comm_forward] doubles: forward writes its rows for
  // all peers there (grouped as halo_send_offset; the messages to other nodes leave from
  // there too) and the same-node peers copy theirs straight into their ghost rows; reverse
  // writes its ghost rows grouped by owner (as halo_recv_offset) and the owners add them
  // straight from there. Barriers over node_comm order the writes and the reads.
  MPI_Comm node_comm;                     // ranks of this node, made once (settings)
  int node_me;                            // this rank in node_comm
  std::vector<int> node_rank_of;          // [nprocs] world rank -> node_comm rank, -1 elsewhere
  MPI_Win halo_win;                       // MPI_WIN_NULL until a plan needs it; locked (lock_all)
  size_t halo_win_doubles;                // this rank's part of halo_win
  std::vector<double *> halo_win_base;    // [node ranks] each rank's part, as mapped here
  bool halo_shared;                       // this plan uses the window (same on the whole node)
  std::vector<int> halo_peer_send_at;     // [nprocs] p's halo_send_offset[me]: my rows in p's part
  std::vector<int> halo_peer_recv_at;     // [nprocs] p's halo_recv_offset[me]: p's ghosts of mine

  // The halo plan as the core's wire plan (ds4sci.h): one peer per rank, the lists above. The
  // core packs the rows (the CPU backend; the CUDA backend with DS4SCI_CUDA_WIRE=1, else it
  // calls the callbacks) and exchange_move moves the packed blocks (halo_transfer with packed
  // rows, or ipc_move).
  std::vector<ds4sci_wire_peer> halo_wire_peers;  // [nprocs]
  ds4sci_wire_plan halo_wire_plan;

  // The plan with device buffers (CUDA backend, every peer on this node, not DS4SCI_IPC=0):
  // the core's packed rows stay on the GPUs, and each rank copies its peers' rows for it
  // straight out of their exchange buffers, mapped by CUDA IPC (ipc_move). Same on all ranks.
  bool ipc_plan;                          // this plan's device_buffers
  bool ipc_used;                          // some plan of this context had them (teardown)
  bool ipc_failed;                        // IPC did not work on this node: host memory from
                                          // then on (same on the node's ranks)
  std::vector<double> ipc_host_out, ipc_host_in;  // the host path of a device-buffer move
  struct IpcSlot {                        // one rank's part of the per-move allgather
    ds4sci_ipc_handle handle;             // its out block (the core's exchange buffer)
    int32_t ok, pad;                      // 0: its export failed
  };
  std::vector<IpcSlot> ipc_slots;         // [node ranks] gathered at each move
  std::vector<ds4sci_ipc_handle> ipc_open_handle;  // [node ranks] what ipc_base maps
  std::vector<char *> ipc_base;           // [node ranks] mapped allocations, nullptr: none
  std::vector<ds4sci_copy> ipc_copies;

  // The array being exchanged by the core's current forward/reverse call.
  double *comm_data;   // [nall][comm_width]
  int comm_width;

  void release();
  void check_types_mapped(int nall);
  bool build_ghost_owner(int nlocal, int nghost);
  void build_halo(int nlocal, int nghost);
  void build_input(int nlocal, int nghost);
  static int exchange_forward(void *self, double *data, int32_t width);
  static int exchange_reverse(void *self, double *data, int32_t width);
  static int exchange_reverse_f32(void *self, float *data, int32_t width);
  static int exchange_move(void *self, const void *out, void *in, size_t row_bytes, int reverse,
                           int device);
  int host_move(const void *out, void *in, size_t row_bytes, bool forward);
  int ipc_move(const void *out, void *in, size_t row_bytes, bool forward);
  int ipc_host_fallback(const void *out, void *in, size_t row_bytes, bool forward);
  void ipc_close_all();
  void halo_shared_setup(int n_send, int n_recv);
  void halo_window_free();
  void halo_node_barrier();
  void halo_wait(int n_req);
  // packed: data holds the outgoing rows already grouped by peer (the wire plan's out block)
  void halo_transfer(const double *data, int width, bool forward, bool packed = false);
  void halo_forward(double *data, int width);
  // floats: the rows hold 2 * width floats (reverse_f32), summed as floats
  void halo_reverse(double *data, int width, bool floats);
};

}  // namespace LAMMPS_NS

#endif
