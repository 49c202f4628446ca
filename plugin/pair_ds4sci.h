/* -*- c++ -*- ----------------------------------------------------------
   pair_style ds4sci: TorchMD-Net's Equivariant Transformer through the ds4sci C core.

   pair_style ds4sci <model.safetensors> [device auto|cpu|cuda] [device_id N] [threads N]
                     [exchange auto|lammps]
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
     one MPI message per peer rank and direction, straight from the owner.
   - lammps: LAMMPS's forward/reverse communication for every ghost row (all its swaps).
   Forces and per-atom virials of ghosts always go through LAMMPS's reverse communication.

   compute pair ds4sci gives cumulative timers of this rank's plugin (summed over ranks):
   [1] compute calls, [2] s building the core's input (types, CSR, ghost owners, halo plan),
   [3] s in ds4sci_compute, [4] s of [3] inside the exchange of feature rows (halo plan or
   LAMMPS's communication), [5] s adding results into LAMMPS's arrays, [6] s of [4] in the halo
   plan's MPI messages (the rest of [4]: its row copies).
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
  int n_threads;                     // OpenMP threads of the plugin's loops (0: default)
  double t_exchange;                 // seconds in the exchange callbacks (pvector[3])
  double t_halo_mpi;                 // of which in the halo plan's MPI messages (pvector[5])
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
  std::vector<int> halo_send_peers, halo_recv_peers;  // ranks with a non-empty list, ascending
  // Reverse sums per owned row: send_rows[r] adds the rows halo_row_entry[halo_row_offset[r]
  // .. [r + 1]) of the received buffer (positions in halo_send_index), ascending: peer by
  // peer, entry by entry, whatever the thread count.
  std::vector<int32_t> halo_row_offset;   // [send_rows.size() + 1]
  std::vector<int32_t> halo_row_entry;    // [halo_send_index.size()]
  std::vector<double> halo_send_buf;      // [halo_send_index.size()][width]
  std::vector<double> halo_recv_buf;      // [halo_recv_index.size()][width]
  std::vector<MPI_Request> halo_requests; // one per peer and direction

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
  void halo_messages(const double *out, const std::vector<int> &out_offset,
                     const std::vector<int> &out_peers, double *in,
                     const std::vector<int> &in_offset, const std::vector<int> &in_peers,
                     int width);
  void halo_forward(double *data, int width);
  void halo_reverse(double *data, int width);
};

}  // namespace LAMMPS_NS

#endif
