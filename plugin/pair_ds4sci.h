/* -*- c++ -*- ----------------------------------------------------------
   pair_style ds4sci: TorchMD-Net's Equivariant Transformer through the ds4sci C core.

   pair_style ds4sci <model.safetensors> [device auto|cpu|cuda] [device_id N] [threads N]
                     [exchange auto|lammps]
   pair_coeff * * <element or NULL per atom type>

   The plugin is the only code here that knows LAMMPS: it hands the core the owned atoms, the
   ghosts and a full neighbour list, runs LAMMPS's forward/reverse communication when the core
   exchanges ghost feature rows between layers, and tallies forces, energy and virials.
   With one MPI rank (every ghost a periodic image of an owned atom) and `exchange auto`, it
   passes each ghost's owner instead, and the core refreshes ghosts itself (on the GPU with
   device cuda, without copying feature rows through host memory).

   compute pair ds4sci gives cumulative timers of this rank's plugin (summed over ranks):
   [1] compute calls, [2] s building the core's input (types, CSR, ghost owners), [3] s in
   ds4sci_compute, [4] s of [3] inside LAMMPS's forward/reverse communication of feature rows,
   [5] s adding results into LAMMPS's arrays.
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
  std::vector<int32_t> ghost_owner;  // [nghost] with the built-in exchange
  std::vector<int32_t> local_of_tag; // [max tag + 1] owned index of each atom ID (1 rank)
  bool exchange_lammps;              // exchange lammps: always LAMMPS's communication
  int n_threads;                     // OpenMP threads of the plugin's loops (0: default)
  double t_exchange;                 // seconds in the exchange callbacks (pvector[3])
  // The core's input (z, CSR, ghost owners) depends only on the neighbour list and the atoms'
  // order, which change together at a LAMMPS neighbour-list build: kept between builds.
  bool input_valid;                  // made since the last run's init / pair_style
  int input_nlocal, input_nghost;
  bool input_builtin;                // ghost owners valid: the built-in exchange is used
  // Owned rows LAMMPS's forward communication reads (its send lists), recorded by
  // pack_forward_comm during the first call after a neighbour-list build and passed to the
  // core as the exchange's send_rows hint from the next call on (same lists until a rebuild).
  std::vector<unsigned char> send_mark;  // [nlocal] while recording
  std::vector<int32_t> send_rows;
  bool send_recording, send_valid;

  // The array being exchanged by the core's current forward/reverse call.
  double *comm_data;   // [nall][comm_width]
  int comm_width;

  void release();
  void check_types_mapped(int nall);
  bool build_ghost_owner(int nlocal, int nghost);
  void build_input(int nlocal, int nghost);
  static int exchange_forward(void *self, double *data, int32_t width);
  static int exchange_reverse(void *self, double *data, int32_t width);
};

}  // namespace LAMMPS_NS

#endif
