/* ----------------------------------------------------------------------
   pair_style ds4sci: see pair_ds4sci.h. No model math here: the C core (gnn/include/ds4sci.h)
   computes; this file converts LAMMPS's data to and from the core's plain arrays.
------------------------------------------------------------------------- */

#include "pair_ds4sci.h"

#include "ds4sci_lammps_compat.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace LAMMPS_NS;

namespace {

// Energy units in eV (CODATA 2018 exact constants: e, N_A; thermochemical calorie).
double energy_unit_in_ev(const std::string &unit)
{
  const double ev_per_kj_mol = 1000.0 / (6.02214076e23 * 1.602176634e-19);
  if (unit == "eV") return 1.0;
  if (unit == "kJ/mol") return ev_per_kj_mol;
  if (unit == "kcal/mol") return 4.184 * ev_per_kj_mol;
  if (unit == "hartree") return 27.211386245988;
  return 0.0;
}

// Units of the LAMMPS unit styles the plugin accepts: {length, energy}.
bool lammps_units(const char *style, std::string &length, std::string &energy)
{
  if (strcmp(style, "metal") == 0) {
    length = "angstrom";
    energy = "eV";
    return true;
  }
  if (strcmp(style, "real") == 0) {
    length = "angstrom";
    energy = "kcal/mol";
    return true;
  }
  return false;
}

// "H C N O": the model's element symbols, for messages.
std::string element_list(const ds4sci_model_info *info)
{
  std::string list;
  for (int i = 0; i < info->n_elements; i++) list += std::string(i ? " " : "") + info->element_symbols[i];
  return list;
}

// Threads of the plugin's per-atom loops (types, neighbour CSR, ghost owners, results): the
// pair style's `threads`, else OpenMP's default (OMP_NUM_THREADS).
int loop_threads(int n_threads)
{
#if defined(_OPENMP)
  return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
  (void)n_threads;
  return 1;
#endif
}

// Non-null pointer for an empty array: the core rejects NULL for required arrays.
template <typename T> T *data_or_dummy(std::vector<T> &v)
{
  static T dummy[8];
  return v.empty() ? dummy : v.data();
}

// Ghost origins: owner rank * 2^32 + owner's local index, exact in a double for < 2^21 ranks.
const double ORIGIN_RANK_STRIDE = 4294967296.0;

// MPI tag of the halo plan's messages (LAMMPS's own pair communication uses tag 0).
const int HALO_TAG = 4711;

// Row copies of the halo plan are threaded above this many doubles (a thread team costs
// microseconds; a row is a few hundred doubles).
const size_t HALO_THREADED_DOUBLES = 1 << 16;

// dst row k = src row index[k], rows of w doubles (copied as bytes: they may be packed floats).
void gather_rows(double *dst, const double *src, const int32_t *index, int n, int w, int nt)
{
  (void)nt;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)n * w > HALO_THREADED_DOUBLES)
#endif
  for (int k = 0; k < n; k++)
    memcpy(dst + (size_t)k * w, src + (size_t)index[k] * w, w * sizeof(double));
}

// dst = src, n doubles, in nt slices above HALO_THREADED_DOUBLES (one thread's memcpy reaches
// ~10 GB/s; the wire plan's blocks are ~100 MB at 1M atoms per rank).
void copy_doubles(double *dst, const double *src, size_t n, int nt)
{
  (void)nt;
#if defined(_OPENMP)
  if (n > HALO_THREADED_DOUBLES && nt > 1) {
    const size_t slice = (n + (size_t)nt - 1) / (size_t)nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
      const size_t a = (size_t)t * slice, b = std::min(n, a + slice);
      if (a < b) memcpy(dst + a, src + a, (b - a) * sizeof(double));
    }
    return;
  }
#endif
  if (n > 0) memcpy(dst, src, n * sizeof(double));
}

}  // namespace

/* ---------------------------------------------------------------------- */

PairDS4SCI::PairDS4SCI(LAMMPS *lmp) :
    Pair(lmp), model(nullptr), ctx(nullptr), energy_scale(1.0), exchange_lammps(false),
    exchange_shared(true), n_threads(0), t_exchange(0.0), t_halo_mpi(0.0), input_valid(false),
    input_nlocal(-1), input_nghost(-1), input_exchange(EXCHANGE_LAMMPS), send_recording(false),
    send_valid(false), halo_send_buf_rows(0), halo_recv_buf_rows(0), node_comm(MPI_COMM_NULL),
    node_me(0), halo_win(MPI_WIN_NULL), halo_win_doubles(0), halo_shared(false),
    ipc_plan(false), ipc_used(false), ipc_failed(false), comm_data(nullptr), comm_width(0)
{
  single_enable = 0;
  restartinfo = 0;    // after read_restart, pair_style and pair_coeff are given again
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  // The global virial is the core's (result.virial), never LAMMPS's sum of f . r over owned
  // and ghost atoms (fdotr): the CUDA backend may put a pair with a periodic image on the
  // image's owned atom (one rank: the images are folded, ds4sci.h), which keeps every force
  // sum and the core's virial but not f . r.
  no_virial_fdotr_compute = 1;
  comm_forward = 0;
  comm_reverse = 0;
  // compute pair ds4sci: timers, see pair_ds4sci.h
  nextra = 6;
  pvector = new double[nextra]();
}

PairDS4SCI::~PairDS4SCI()
{
  release();
  delete[] pvector;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
  // Collective over the node: LAMMPS deletes the pair style on every rank, before
  // MPI_Finalize (checked anyway: a library caller may finalize first).
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    halo_window_free();
    if (node_comm != MPI_COMM_NULL) MPI_Comm_free(&node_comm);
  }
}

void PairDS4SCI::release()
{
  ipc_close_all();
  ds4sci_ctx_free(ctx);
  ctx = nullptr;
  ds4sci_model_free(model);
  model = nullptr;
}

/* ----------------------------------------------------------------------
   pair_style ds4sci <model> [device auto|cpu|cuda] [device_id N] [threads N]
                     [exchange auto|lammps]
------------------------------------------------------------------------- */

void PairDS4SCI::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR,
               "Illegal pair_style ds4sci command: expected "
               "pair_style ds4sci <model.safetensors> [device auto|cpu|cuda] [device_id N] "
               "[threads N] [exchange auto|lammps|mpi]");

  ds4sci_options options;
  ds4sci_options_init(&options);
  bool device_id_given = false;
  exchange_lammps = false;
  exchange_shared = true;
  // LAMMPS keeps this instance when pair_style ds4sci is given again: timers restart.
  for (int k = 0; k < nextra; k++) pvector[k] = 0.0;
  t_exchange = t_halo_mpi = 0.0;
  input_valid = false;
  send_recording = send_valid = false;
  for (int iarg = 1; iarg < narg; iarg += 2) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal pair_style ds4sci command: keyword '" + key + "' needs a value");
    const std::string value = arg[iarg + 1];
    if (key == "device") {
      if (value == "auto")
        options.device = DS4SCI_DEVICE_AUTO;
      else if (value == "cpu")
        options.device = DS4SCI_DEVICE_CPU;
      else if (value == "cuda")
        options.device = DS4SCI_DEVICE_CUDA;
      else
        error->all(FLERR, "Illegal pair_style ds4sci command: device '" + value +
                              "', expected auto, cpu or cuda");
    } else if (key == "device_id") {
      options.device_id = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (options.device_id < 0)
        error->all(FLERR, "Illegal pair_style ds4sci command: device_id must be >= 0");
      device_id_given = true;
    } else if (key == "threads") {
      options.n_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (options.n_threads < 0)
        error->all(FLERR, "Illegal pair_style ds4sci command: threads must be >= 0");
    } else if (key == "exchange") {
      exchange_lammps = value == "lammps";
      exchange_shared = value == "auto";
      if (value != "auto" && value != "lammps" && value != "mpi")
        error->all(FLERR, "Illegal pair_style ds4sci command: exchange '" + value +
                              "', expected auto (built-in on one rank, the plugin's halo plan on "
                              "several), lammps (LAMMPS's forward/reverse communication) or mpi "
                              "(as auto, without shared memory between ranks of a node)");
    } else {
      error->all(FLERR, "Illegal pair_style ds4sci command: unknown keyword '" + key +
                            "', expected device, device_id, threads or exchange");
    }
  }

  n_threads = options.n_threads;
  // A new plan may not need the window (exchange lammps, mpi): give its memory back. Every rank
  // runs pair_style, so the collective free matches.
  halo_window_free();

  // The ranks of this node (shared memory), once per instance: for the default GPU and the
  // halo plan's shared window. node_rank_of: world rank -> node rank, -1 on other nodes.
  if (node_comm == MPI_COMM_NULL) {
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node_comm);
    MPI_Comm_rank(node_comm, &node_me);
    MPI_Group world_group, node_group;
    MPI_Comm_group(world, &world_group);
    MPI_Comm_group(node_comm, &node_group);
    std::vector<int> ranks(comm->nprocs);
    for (int p = 0; p < comm->nprocs; p++) ranks[p] = p;
    node_rank_of.resize(comm->nprocs);
    MPI_Group_translate_ranks(world_group, comm->nprocs, ranks.data(), node_group,
                              node_rank_of.data());
    for (int &r : node_rank_of)
      if (r == MPI_UNDEFINED) r = -1;
    MPI_Group_free(&world_group);
    MPI_Group_free(&node_group);
  }

  // By default rank r of a node uses the node's GPU r modulo the GPUs it sees (one rank per GPU
  // is the intended layout; more ranks than GPUs share them round-robin).
  int n_gpus = 0;
  if (!device_id_given) {
    options.device_id = node_me;
    n_gpus = ds4sci_gpu_count();  // CUDA's own count (honours CUDA_VISIBLE_DEVICES)
    if (n_gpus > 0) options.device_id %= n_gpus;
  }

  if (options.device == DS4SCI_DEVICE_CUDA && !ds4sci_cuda_available())
    error->all(FLERR, "pair_style ds4sci: device cuda requested, but this build of the ds4sci "
                      "core has no CUDA backend or no usable GPU");

  // pair_style given again (e.g. after read_restart): start over, pair_coeff must follow.
  release();
  type_z.clear();
  if (allocated) {
    for (int i = 1; i <= atom->ntypes; i++)
      for (int j = i; j <= atom->ntypes; j++) setflag[i][j] = 0;
  }

  char err[1024] = "";
  if (ds4sci_model_load(arg[0], &model, err, sizeof(err)) != DS4SCI_OK)
    error->all(FLERR, std::string("pair_style ds4sci: cannot load model: ") + err);
  const ds4sci_model_info *info = ds4sci_model_get_info(model);

  std::string length, energy;
  if (!lammps_units(update->unit_style, length, energy))
    error->all(FLERR, std::string("pair_style ds4sci: units ") + update->unit_style +
                          " not supported; use units metal (angstrom, eV) or real "
                          "(angstrom, kcal/mol)");
  if (length != info->length_unit)
    error->all(FLERR, std::string("pair_style ds4sci: the model's length unit is ") +
                          info->length_unit + " but units " + update->unit_style + " uses " +
                          length + "; lengths are not converted");
  const double model_ev = energy_unit_in_ev(info->energy_unit);
  if (model_ev == 0.0)
    error->all(FLERR, std::string("pair_style ds4sci: unknown model energy unit '") +
                          info->energy_unit + "'");
  energy_scale = model_ev / energy_unit_in_ev(energy);

  // error->one: a GPU may be usable on some ranks and not others (error->all would wait for all).
  if (ds4sci_ctx_create(model, &options, &ctx, err, sizeof(err)) != DS4SCI_OK)
    error->one(FLERR, std::string("pair_style ds4sci: cannot create context: ") + err);

  // The exchange's widths and number of calls are the backend's (CUDA may pack floats): every
  // rank must run the same one, or messages mismatch and the node's barriers wait forever.
  int device_range[2] = {(int)ds4sci_ctx_device(ctx), -(int)ds4sci_ctx_device(ctx)};
  MPI_Allreduce(MPI_IN_PLACE, device_range, 2, MPI_INT, MPI_MAX, world);
  if (device_range[0] != -device_range[1])
    error->all(FLERR, "pair_style ds4sci: some ranks run the cpu backend and others cuda (device "
                      "auto finds no usable GPU on some); their ghost exchanges differ: give "
                      "device cpu or device cuda");

  // The core exchanges rows of at most 4 F doubles (scalar + vector features).
  comm_forward = comm_reverse = 4 * info->hidden_channels;

  if (comm->me == 0) {
    utils::logmesg(lmp,
                   "pair_style ds4sci: model {} ({})\n  elements {}, cutoff {} {}, F {}, layers {}, "
                   "backend {}\n",
                   info->path, info->name, element_list(info), info->cutoff_upper,
                   info->length_unit, info->hidden_channels, info->num_layers,
                   ds4sci_ctx_backend_name(ctx));
    if (ds4sci_ctx_device(ctx) == DS4SCI_DEVICE_CUDA)
      utils::logmesg(lmp, "  rank 0 on GPU {}{}\n", options.device_id,
                     device_id_given ? " (device_id)"
                                     : " (node rank modulo " + std::to_string(n_gpus) + " GPUs)");
    utils::logmesg(lmp, "  ghost exchange: {}\n",
                   exchange_lammps ? "LAMMPS's forward/reverse communication (exchange lammps)"
                   : comm->nprocs == 1
                       ? "built-in (one rank: every ghost a periodic image)"
                   : exchange_shared
                       ? "halo plan (exchange auto, several ranks: periodic images in the core, "
                         "other ranks' rows from their owners, through shared memory on a node "
                         "and by MPI messages between nodes)"
                       : "halo plan (exchange mpi, several ranks: periodic images in the core, "
                         "other ranks' rows from their owners by MPI messages only)");
    if (info->head_vector_norm_eps > 0.0)
      utils::logmesg(lmp,
                     "  head: smoothed vector norm sqrt(|u|^2 + eps^2), eps {} "
                     "(head_vector_norm_eps; TorchMD-Net with the same patch)\n",
                     info->head_vector_norm_eps);
    if (energy_scale != 1.0)
      utils::logmesg(lmp, "  energies converted from the model's {} to {} (x {:.10g})\n",
                     info->energy_unit, energy, energy_scale);
    if (info->warning) error->warning(FLERR, std::string("pair_style ds4sci: ") + info->warning);
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * <element or NULL per atom type>
------------------------------------------------------------------------- */

void PairDS4SCI::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_coeff before pair_style ds4sci loaded a model");
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR, "Incorrect args for pair coefficients: pair_coeff * * needs " +
                          std::to_string(ntypes) + " element symbols (or NULL), one per atom "
                          "type, got " + std::to_string(narg - 2));
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "Incorrect args for pair coefficients: pair_style ds4sci needs pair_coeff * *");

  if (!allocated) {
    allocated = 1;
    memory->create(setflag, ntypes + 1, ntypes + 1, "pair:setflag");
    memory->create(cutsq, ntypes + 1, ntypes + 1, "pair:cutsq");
  }

  const ds4sci_model_info *info = ds4sci_model_get_info(model);
  type_z.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    const char *symbol = arg[t + 1];
    if (strcmp(symbol, "NULL") == 0) continue;
    type_z[t] = ds4sci_model_element_z(model, symbol);
    if (type_z[t] < 0)
      error->all(FLERR, "pair_coeff: element " + std::string(symbol) + " (atom type " +
                            std::to_string(t) + ") is not in the model " + info->path +
                            ", which has " + element_list(info));
  }
  // Every type pair is "set": NULL types are checked against the atoms in init_style.
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

/* ---------------------------------------------------------------------- */

void PairDS4SCI::init_style()
{
  if (!ctx) error->all(FLERR, "pair_style ds4sci: no model loaded");
  if (type_z.empty()) error->all(FLERR, "pair_style ds4sci: pair_coeff * * <elements> missing");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style ds4sci requires newton pair on");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style ds4sci requires atom IDs");

  // Atoms of a type mapped to NULL: a clean stop on every rank now rather than in compute.
  bigint n_unmapped_local = 0, n_unmapped = 0;
  int first_type = 0;
  for (int i = 0; i < atom->nlocal; i++) {
    if (type_z[atom->type[i]] < 0) {
      n_unmapped_local++;
      if (!first_type) first_type = atom->type[i];
    }
  }
  MPI_Allreduce(&n_unmapped_local, &n_unmapped, 1, MPI_LMP_BIGINT, MPI_SUM, world);
  int type_max = 0;
  MPI_Allreduce(&first_type, &type_max, 1, MPI_INT, MPI_MAX, world);
  if (n_unmapped > 0)
    error->all(FLERR, "pair_style ds4sci: " + std::to_string(n_unmapped) + " atom(s) of type " +
                          std::to_string(type_max) +
                          " which pair_coeff maps to NULL; every atom needs an element");

  ds4sci_compat::request_full_list(neighbor, this, instance_me);
  input_valid = false;  // a new run: its setup builds the list again and may re-sort the atoms
}

double PairDS4SCI::init_one(int, int)
{
  return ds4sci_model_get_info(model)->cutoff_upper;
}

/* ---------------------------------------------------------------------- */

void PairDS4SCI::check_types_mapped(int nall)
{
  const int *type = atom->type;
  const int32_t *tz = type_z.data();
  int32_t *zout = z.data();
  const int nt = loop_threads(n_threads);
  int first_bad = nall;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : first_bad)
#endif
  for (int i = 0; i < nall; i++) {
    zout[i] = tz[type[i]];
    if (zout[i] < 0) first_bad = std::min(first_bad, i);
  }
  (void)nt;
  if (first_bad < nall)
    error->one(FLERR, "pair_style ds4sci: atom " + std::to_string(atom->tag[first_bad]) +
                          " has type " + std::to_string(type[first_bad]) +
                          ", which pair_coeff maps to NULL");
}

/* ----------------------------------------------------------------------
   ghost_owner for the core's built-in exchange: with one rank every ghost is a periodic image
   of an owned atom with the same ID. False if some ghost has no owned atom (then LAMMPS's
   communication is used).
------------------------------------------------------------------------- */

bool PairDS4SCI::build_ghost_owner(int nlocal, int nghost)
{
  ghost_owner.resize(nghost);
  if (nghost == 0) return true;
  const tagint *tag = atom->tag;
  tagint max_tag = 0;
  for (int i = 0; i < nlocal; i++) max_tag = std::max(max_tag, tag[i]);
  local_of_tag.assign((size_t)max_tag + 1, -1);
  for (int i = 0; i < nlocal; i++)
    if (tag[i] >= 0) local_of_tag[tag[i]] = i;
  const int32_t *local = local_of_tag.data();
  int32_t *owner = ghost_owner.data();
  const int nt = loop_threads(n_threads);
  int missing = 0;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : missing)
#endif
  for (int g = 0; g < nghost; g++) {
    const tagint t = tag[nlocal + g];
    owner[g] = (t >= 0 && t <= max_tag) ? local[t] : -1;
    if (owner[g] < 0) missing++;
  }
  (void)nt;
  return missing == 0;
}

/* ----------------------------------------------------------------------
   the halo plan (exchange auto, several ranks): every ghost's owner by one LAMMPS forward
   communication; periodic images of this rank's atoms get ghost_owner (the core refreshes and
   folds them), the others -1, and each rank tells each owner rank which of its rows it needs
------------------------------------------------------------------------- */

void PairDS4SCI::build_halo(int nlocal, int nghost)
{
  const int me = comm->me;
  const int nprocs = comm->nprocs;

  // Owned atom i holds me * 2^32 + i. A multi-hop swap packs the values its earlier swaps
  // received, so after one forward communication every ghost (edges, corners, periodic images)
  // holds its owner's rank and index.
  ghost_origin.resize((size_t)nlocal + nghost);
  for (int i = 0; i < nlocal; i++) ghost_origin[i] = me * ORIGIN_RANK_STRIDE + i;
  comm_data = data_or_dummy(ghost_origin);
  comm_width = 1;
  ds4sci_compat::forward_comm(comm, this);
  comm_data = nullptr;

  // Remote ghosts grouped by owner rank, in ghost order, with the owner's index to request.
  ghost_owner.resize(nghost);
  std::vector<int> ghost_rank(nghost);
  std::vector<int> recv_count(nprocs, 0), send_count(nprocs, 0);
  for (int g = 0; g < nghost; g++) {
    const double origin = ghost_origin[nlocal + g];
    const double rank = std::floor(origin / ORIGIN_RANK_STRIDE);
    const double index = origin - rank * ORIGIN_RANK_STRIDE;
    if (!(origin >= 0.0 && origin == std::floor(origin) && rank < nprocs &&
          index <= INT32_MAX && (rank != me || index < nlocal)))
      error->one(FLERR,
                 "pair_style ds4sci: ghost atom ID {} (local {}) has origin {:.17g} after LAMMPS's "
                 "forward communication, expected rank * 2^32 + index of an owned atom (ranks "
                 "{}; this rank {} owns {} atoms); use exchange lammps",
                 atom->tag[nlocal + g], nlocal + g, origin, nprocs, me, nlocal);
    ghost_rank[g] = (int)rank;
    ghost_owner[g] = ghost_rank[g] == me ? (int32_t)index : -1;
    if (ghost_rank[g] != me) recv_count[ghost_rank[g]]++;
  }
  halo_recv_offset.assign(nprocs + 1, 0);
  for (int p = 0; p < nprocs; p++) halo_recv_offset[p + 1] = halo_recv_offset[p] + recv_count[p];
  const int n_recv = halo_recv_offset[nprocs];
  halo_recv_index.resize(n_recv);
  halo_recv_peer.resize(n_recv);
  std::vector<int32_t> request(n_recv);
  std::vector<int> fill(halo_recv_offset.begin(), halo_recv_offset.end() - 1);
  for (int g = 0; g < nghost; g++) {
    if (ghost_owner[g] >= 0) continue;
    const int k = fill[ghost_rank[g]]++;
    halo_recv_index[k] = nlocal + g;
    halo_recv_peer[k] = ghost_rank[g];
    request[k] = (int32_t)(ghost_origin[nlocal + g] - ghost_rank[g] * ORIGIN_RANK_STRIDE);
  }

  // Each owner learns, per peer, how many of its rows to send and where the peer's ghost rows
  // of them start in the peer's buffer (the reverse reads them there through shared memory).
  std::vector<int> out_pair(2 * (size_t)nprocs), in_pair(2 * (size_t)nprocs);
  for (int p = 0; p < nprocs; p++) {
    out_pair[2 * p] = recv_count[p];
    out_pair[2 * p + 1] = halo_recv_offset[p];
  }
  MPI_Alltoall(out_pair.data(), 2, MPI_INT, in_pair.data(), 2, MPI_INT, world);
  halo_peer_recv_at.resize(nprocs);
  for (int p = 0; p < nprocs; p++) {
    send_count[p] = in_pair[2 * p];
    halo_peer_recv_at[p] = in_pair[2 * p + 1];
  }
  halo_send_offset.assign(nprocs + 1, 0);
  for (int p = 0; p < nprocs; p++) halo_send_offset[p + 1] = halo_send_offset[p] + send_count[p];
  const int n_send = halo_send_offset[nprocs];
  halo_send_index.resize(n_send);
  halo_send_peer.resize(n_send);
  MPI_Alltoallv(data_or_dummy(request), recv_count.data(), halo_recv_offset.data(), MPI_INT32_T,
                data_or_dummy(halo_send_index), send_count.data(), halo_send_offset.data(),
                MPI_INT32_T, world);
  for (int p = 0; p < nprocs; p++)
    for (int k = halo_send_offset[p]; k < halo_send_offset[p + 1]; k++) {
      halo_send_peer[k] = p;
      if (halo_send_index[k] < 0 || halo_send_index[k] >= nlocal)
        error->one(FLERR,
                   "pair_style ds4sci: rank {} asks rank {} for the row of its atom {}, but "
                   "rank {} owns {} atoms",
                   p, me, halo_send_index[k], me, nlocal);
    }
  // And, for the forward through shared memory, where each peer's rows for it start in the
  // peer's buffer. exchange_shared is the same on every rank: the collective matches.
  halo_peer_send_at.resize(nprocs);
  if (exchange_shared)
    MPI_Alltoall(halo_send_offset.data(), 1, MPI_INT, halo_peer_send_at.data(), 1, MPI_INT, world);

  halo_shared_setup(n_send, n_recv);

  // The send_rows hint (each owned row once) and, per row, its entries in ascending order:
  // the reverse sums then run in parallel over rows, in the same order for any thread count.
  std::vector<int64_t> key(n_send);
  for (int k = 0; k < n_send; k++) key[k] = ((int64_t)halo_send_index[k] << 32) | k;
  std::sort(key.begin(), key.end());
  send_rows.clear();
  halo_row_offset.clear();
  halo_row_entry.resize(n_send);
  for (int k = 0; k < n_send; k++) {
    const int32_t row = (int32_t)(key[k] >> 32);
    halo_row_entry[k] = (int32_t)(key[k] & 0xffffffff);
    if (send_rows.empty() || send_rows.back() != row) {
      send_rows.push_back(row);
      halo_row_offset.push_back(k);
    }
  }
  halo_row_offset.push_back(n_send);

  // The same lists as the core's wire plan (one peer per rank, in rank order).
  halo_wire_peers.resize(nprocs);
  for (int p = 0; p < nprocs; p++)
    halo_wire_peers[p] = {halo_send_offset[p + 1] - halo_send_offset[p],
                          halo_send_index.data() + halo_send_offset[p],
                          halo_recv_offset[p + 1] - halo_recv_offset[p],
                          halo_recv_index.data() + halo_recv_offset[p]};
  // Device buffers (CUDA IPC) when every rank's peers are on its node and share its window,
  // the backend is CUDA, and DS4SCI_IPC is not 0; the same answer on every rank (collective
  // moves). Other layouts keep the pinned host path (the core's wire plan with device 0).
  const char *ipc_env = getenv("DS4SCI_IPC");
  int ipc = ds4sci_ctx_device(ctx) == DS4SCI_DEVICE_CUDA && exchange_shared && halo_shared &&
      !ipc_failed && !(ipc_env && std::string(ipc_env) == "0");
  for (int p = 0; p < nprocs && ipc; p++)
    if (node_rank_of[p] < 0 && (halo_send_offset[p + 1] > halo_send_offset[p] ||
                                halo_recv_offset[p + 1] > halo_recv_offset[p]))
      ipc = 0;
  MPI_Allreduce(MPI_IN_PLACE, &ipc, 1, MPI_INT, MPI_MIN, world);
  if (ipc && !ipc_used && comm->me == 0)
    utils::logmesg(lmp, "pair_style ds4sci: halo plan: feature rows between the GPUs of a node "
                        "by CUDA IPC (device to device; DS4SCI_IPC=0: through host memory)\n");
  // A plan without device buffers after one with them: the peers' blocks may now grow and be
  // freed at any exchange, so unmap them and let the node wait for every rank's unmapping
  // (ipc_plan is the same on the node's ranks, ipc on all ranks).
  if (ipc_plan && !ipc) {
    for (char *&base : ipc_base)
      if (base) {
        ds4sci_ipc_close(ctx, base);
        base = nullptr;
      }
    MPI_Barrier(node_comm);
  }
  ipc_plan = ipc != 0;
  ipc_used = ipc_used || ipc_plan;
  halo_wire_plan = {nprocs, halo_wire_peers.data(), exchange_move, this, ipc_plan ? 1 : 0};
}

/* ----------------------------------------------------------------------
   the core's input from LAMMPS's neighbour list: candidate CSR (cutoff + skin, by receiver),
   ghost owners for the one-rank built-in exchange, the halo plan for several ranks
------------------------------------------------------------------------- */

void PairDS4SCI::build_input(int nlocal, int nghost)
{
  const int nt = loop_threads(n_threads);
  (void)nt;

  // Candidate neighbours (cutoff + skin) of each owned atom, CSR by receiver.
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  nbr_offset.assign(nlocal + 1, 0);
  for (int ii = 0; ii < inum; ii++) nbr_offset[ilist[ii] + 1] = numneigh[ilist[ii]];
  for (int i = 0; i < nlocal; i++) nbr_offset[i + 1] += nbr_offset[i];
  nbr_index.resize(nbr_offset[nlocal]);
  {
    const int64_t *offset = nbr_offset.data();
    int32_t *index = nbr_index.data();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
    for (int ii = 0; ii < inum; ii++) {
      const int i = ilist[ii];
      const int *jlist = firstneigh[i];
      int32_t *out = index + offset[i];
      for (int jj = 0; jj < numneigh[i]; jj++) out[jj] = jlist[jj] & NEIGHMASK;
    }
  }

  // One rank: the core's built-in exchange (ghost owners); several: the halo plan, which sets
  // send_rows. Else LAMMPS's communication, whose send lists the first call records.
  send_recording = false;  // the halo plan's forward communication of origins records nothing
  if (exchange_lammps)
    input_exchange = EXCHANGE_LAMMPS;
  else if (comm->nprocs == 1)
    input_exchange = build_ghost_owner(nlocal, nghost) ? EXCHANGE_BUILTIN : EXCHANGE_LAMMPS;
  else {
    build_halo(nlocal, nghost);
    input_exchange = EXCHANGE_HALO;
  }
  input_valid = true;
  input_nlocal = nlocal;
  input_nghost = nghost;
  send_valid = input_exchange == EXCHANGE_HALO;
  send_recording = input_exchange == EXCHANGE_LAMMPS;
  if (send_recording) send_mark.assign(nlocal, 0);
}

void PairDS4SCI::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const double t_start = MPI_Wtime();

  const int nlocal = atom->nlocal;
  const int nghost = atom->nghost;
  const int nall = nlocal + nghost;
  const int nt = loop_threads(n_threads);
  (void)nt;

  z.resize(nall);
  check_types_mapped(nall);    // every step: a fix may change types without a new list

  // Between neighbour-list builds atoms keep their order and neighbours: the CSR and ghost
  // owners of the last build are reused (positions are read from atom->x every step). A build
  // (every run's setup, a rerun frame, a rebuild during a run) sets neighbor->ago to 0 for that
  // step; neighbor->ncalls is no key: each run's setup resets it to 0 after re-sorting the
  // atoms, so two runs without rebuilds would look alike (tests/lammps case "runs").
  int fresh = !input_valid || neighbor->ago == 0 || nlocal != input_nlocal ||
      nghost != input_nghost;
  // The halo plan's build communicates: all ranks build when one does, or collectives mismatch.
  if (!exchange_lammps && comm->nprocs > 1)
    MPI_Allreduce(MPI_IN_PLACE, &fresh, 1, MPI_INT, MPI_LOR, world);
  if (fresh) build_input(nlocal, nghost);
  // CUDA IPC failed during an earlier call (ipc_move; the same on every rank): no device
  // buffers from now on, even before the next build
  if (ipc_failed && ipc_plan) {
    ipc_plan = false;
    halo_wire_plan.device_buffers = 0;
  }
  const bool builtin = input_exchange == EXCHANGE_BUILTIN;

  forces.resize(3 * (size_t)nall);

  ds4sci_system system;
  system.n_local = nlocal;
  system.n_ghost = atom->nghost;
  system.pos = nall > 0 ? &atom->x[0][0] : data_or_dummy(forces);
  system.z = data_or_dummy(z);
  system.nbr_offset = nbr_offset.data();
  system.nbr_index = data_or_dummy(nbr_index);
  // Built-in: every ghost's owner. Halo plan: the periodic images' owners, -1 for the others.
  system.ghost_owner = input_exchange != EXCHANGE_LAMMPS ? data_or_dummy(ghost_owner) : nullptr;

  ds4sci_exchange exchange;
  exchange.forward = exchange_forward;
  exchange.reverse = exchange_reverse;
  exchange.user = this;
  exchange.send_rows = send_valid ? data_or_dummy(send_rows) : nullptr;
  exchange.n_send_rows = send_valid ? (int32_t)send_rows.size() : 0;
  // The halo plan also takes float rows in reverse (the CUDA backend then moves half the
  // bytes); LAMMPS's communication adds doubles only.
  exchange.reverse_f32 = input_exchange == EXCHANGE_HALO ? exchange_reverse_f32 : nullptr;
  // The halo plan as a wire plan: the CPU backend packs the rows itself and only the packed
  // blocks travel (exchange_move); the CUDA backend keeps to the callbacks.
  exchange.plan = input_exchange == EXCHANGE_HALO ? &halo_wire_plan : nullptr;

  ds4sci_result result;
  memset(&result, 0, sizeof(result));
  result.forces = data_or_dummy(forces);
  if (eflag_atom) {
    atom_energy.resize(nlocal);
    result.atom_energy = data_or_dummy(atom_energy);
  }
  if (vflag_atom) {
    atom_virial.resize(6 * (size_t)nall);
    result.atom_virial = data_or_dummy(atom_virial);
  }

  const double t_input = MPI_Wtime();
  // Between builds the CSR is the last call's: the core may keep its copy (on the GPU).
  ds4sci_ctx_same_neighbors(ctx, fresh ? 0 : 1);
  const ds4sci_status status = ds4sci_compute(ctx, &system, builtin ? nullptr : &exchange, &result);
  const double t_core = MPI_Wtime();
  if (status != DS4SCI_OK) {
    // The core numbers atoms locally (owned, then ghosts); name the LAMMPS atom too.
    std::string where;
    for (int i = 0; i < nall && where.empty(); i++)
      if (!std::isfinite(atom->x[i][0]) || !std::isfinite(atom->x[i][1]) ||
          !std::isfinite(atom->x[i][2]))
        where = " (LAMMPS atom ID " + std::to_string(atom->tag[i]) + " has a non-finite position)";
    error->one(FLERR, std::string("pair_style ds4sci: ") + ds4sci_status_name(status) + ": " +
                          ds4sci_ctx_error(ctx) + where);
  }

  if (send_recording) {
    send_rows.clear();
    for (int i = 0; i < nlocal; i++)
      if (send_mark[i]) send_rows.push_back(i);
    send_recording = false;
    send_valid = true;
  }

  // Forces on owned atoms and ghosts; LAMMPS's reverse comm (newton on) folds the ghosts.
  const double s = energy_scale;
  {
    double **f = atom->f;
    const double *fc = forces.data();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
    for (int i = 0; i < nall; i++) {
      f[i][0] += s * fc[3 * i + 0];
      f[i][1] += s * fc[3 * i + 1];
      f[i][2] += s * fc[3 * i + 2];
    }
  }

  if (eflag_global) {
    eng_vdwl += s * result.energy;
    // TorchMD-Net's mean is per whole system: counted once, by rank 0.
    if (comm->me == 0) eng_vdwl += s * ds4sci_model_get_info(model)->energy_shift;
  }
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += s * atom_energy[i];
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += s * result.virial[k];
  if (vflag_atom) {
    const double *va = atom_virial.data();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
    for (int i = 0; i < nall; i++)
      for (int k = 0; k < 6; k++) vatom[i][k] += s * va[6 * i + k];
  }

  const double t_end = MPI_Wtime();
  pvector[0] += 1.0;
  pvector[1] += t_input - t_start;
  pvector[2] += t_core - t_input;
  pvector[3] = t_exchange;
  pvector[5] = t_halo_mpi;
  pvector[4] += t_end - t_core;
}

/* ----------------------------------------------------------------------
   ghost exchange of the core's feature rows: the halo plan, or LAMMPS's communication
------------------------------------------------------------------------- */

int PairDS4SCI::exchange_forward(void *self, double *data, int32_t width)
{
  auto *pair = static_cast<PairDS4SCI *>(self);
  if (width < 0 || width > pair->comm_forward) return 1;
  const double t0 = MPI_Wtime();
  if (pair->input_exchange == EXCHANGE_HALO)
    pair->halo_forward(data, width);
  else {
    pair->comm_data = data;
    pair->comm_width = width;
    ds4sci_compat::forward_comm(pair->comm, pair);
    pair->comm_data = nullptr;
  }
  pair->t_exchange += MPI_Wtime() - t0;
  return 0;
}

int PairDS4SCI::exchange_reverse(void *self, double *data, int32_t width)
{
  auto *pair = static_cast<PairDS4SCI *>(self);
  if (width < 0 || width > pair->comm_reverse) return 1;
  const double t0 = MPI_Wtime();
  if (pair->input_exchange == EXCHANGE_HALO)
    pair->halo_reverse(data, width, false);
  else {
    pair->comm_data = data;
    pair->comm_width = width;
    ds4sci_compat::reverse_comm(pair->comm, pair);
    pair->comm_data = nullptr;
  }
  pair->t_exchange += MPI_Wtime() - t0;
  return 0;
}

// Float rows of `width` floats (even: the core's widths are F and 4F, F even) move as rows of
// width / 2 doubles; only the sums read them as floats.
int PairDS4SCI::exchange_reverse_f32(void *self, float *data, int32_t width)
{
  auto *pair = static_cast<PairDS4SCI *>(self);
  if (width < 0 || width % 2 != 0 || width / 2 > pair->comm_reverse ||
      pair->input_exchange != EXCHANGE_HALO)
    return 1;
  const double t0 = MPI_Wtime();
  pair->halo_reverse(reinterpret_cast<double *>(data), width / 2, true);
  pair->t_exchange += MPI_Wtime() - t0;
  return 0;
}

// The wire plan's transport: the core's packed rows (grouped by peer as the halo plan's lists)
// out, the peers' rows for this rank in, grouped likewise (forward: by halo_recv_offset;
// reverse: by halo_send_offset). Bytes only: the core sets ghost rows or adds, in plan order.
int PairDS4SCI::exchange_move(void *self, const void *out, void *in, size_t row_bytes,
                              int reverse, int device)
{
  auto *pair = static_cast<PairDS4SCI *>(self);
  if (pair->input_exchange != EXCHANGE_HALO || row_bytes == 0) return 1;
  const double t0 = MPI_Wtime();
  int rc;
  if (device == 0)
    rc = pair->host_move(out, in, row_bytes, reverse == 0);
  else
    rc = pair->ipc_plan ? pair->ipc_move(out, in, row_bytes, reverse == 0) : 1;
  pair->t_exchange += MPI_Wtime() - t0;
  return rc;
}

// The packed blocks through host memory: this rank's out block to its peers through the
// window (same node) or MPI, the peers' rows for it into in, grouped as the plan's lists.
int PairDS4SCI::host_move(const void *out, void *in, size_t row_bytes, bool forward)
{
  const int cap = forward ? comm_forward : comm_reverse;
  if (row_bytes % sizeof(double) != 0 || row_bytes / sizeof(double) > (size_t)cap) return 1;
  const int width = (int)(row_bytes / sizeof(double));
  const size_t w = (size_t)width;
  halo_transfer(static_cast<const double *>(out), width, forward, true);
  const std::vector<int> &in_offset = forward ? halo_recv_offset : halo_send_offset;
  double *dst = static_cast<double *>(in);
  const int nt = loop_threads(n_threads);
  for (int p = 0; p < comm->nprocs; p++) {
    const int rows = in_offset[p + 1] - in_offset[p];
    if (rows > 0) copy_doubles(dst + (size_t)in_offset[p] * w, halo_src[p], rows * w, nt);
  }
  // No rank writes its part again (next call) while a peer still reads it.
  if (halo_shared) halo_node_barrier();
  return 0;
}

/* ----------------------------------------------------------------------
   the wire plan's move with device buffers (every peer on this node): out and in are the
   core's exchange buffer on this rank's GPU. Each rank exports the handle of its out block,
   the node gathers them (which also waits until every rank's out is complete: the core has
   synchronised its stream before move), each rank maps the peers' blocks whose handles are
   new (a block that grew is a new allocation), copies its rows from each peer's block into
   in (GPU to GPU: NVLink between GPUs, a device copy on one), and a last reduction waits
   until every rank has read its rows (out must not change before) and agrees on success.
   Same collectives on every rank whatever fails, so an error ends the run on all ranks
   instead of leaving some waiting.
------------------------------------------------------------------------- */

int PairDS4SCI::ipc_move(const void *out, void *in, size_t row_bytes, bool forward)
{
  if (ipc_failed) return ipc_host_fallback(out, in, row_bytes, forward);
  int node_size = 1;
  MPI_Comm_size(node_comm, &node_size);
  ipc_slots.resize(node_size);
  ipc_open_handle.resize(node_size);
  ipc_base.resize(node_size, nullptr);
  std::string failed;
  IpcSlot mine;
  memset(&mine, 0, sizeof(mine));
  mine.ok = ds4sci_ipc_export(ctx, out, &mine.handle) == DS4SCI_OK;
  if (!mine.ok) failed = std::string("export: ") + ds4sci_ctx_error(ctx);
  const double t0 = MPI_Wtime();
  MPI_Allgather(&mine, (int)sizeof(IpcSlot), MPI_BYTE, ipc_slots.data(), (int)sizeof(IpcSlot),
                MPI_BYTE, node_comm);
  t_halo_mpi += MPI_Wtime() - t0;
  int ok = 1;
  for (const IpcSlot &slot : ipc_slots) ok = ok && slot.ok;

  // A peer's block that moved: unmap the old one now, before this move returns (its owner
  // frees it after its own move returns, which waits for the reduction below).
  for (int r = 0; r < node_size; r++)
    if (ipc_base[r] && (!ipc_slots[r].ok ||
                        memcmp(ipc_open_handle[r].bytes, ipc_slots[r].handle.bytes,
                               DS4SCI_IPC_HANDLE_BYTES) != 0)) {
      if (ds4sci_ipc_close(ctx, ipc_base[r]) != DS4SCI_OK && failed.empty())
        failed = std::string("close: ") + ds4sci_ctx_error(ctx);
      ipc_base[r] = nullptr;
    }

  const std::vector<int> &in_offset = forward ? halo_recv_offset : halo_send_offset;
  const std::vector<int> &in_node_peers = forward ? halo_node_recv_peers : halo_node_send_peers;
  const std::vector<int> &peer_at = forward ? halo_peer_send_at : halo_peer_recv_at;
  ipc_copies.clear();
  for (int p : in_node_peers) {
    if (!ok) break;
    const int r = node_rank_of[p];
    if (!ipc_base[r]) {
      void *base = nullptr;
      // DS4SCI_IPC_FAULT=R (a test switch): rank R's opens fail, as where IPC cannot work
      const char *fault = getenv("DS4SCI_IPC_FAULT");
      if (fault && *fault && atoi(fault) == comm->me) {
        ok = 0;
        failed = "open rank " + std::to_string(p) + "'s block: DS4SCI_IPC_FAULT set";
        break;
      }
      if (ds4sci_ipc_open(ctx, &ipc_slots[r].handle, &base) != DS4SCI_OK) {
        ok = 0;
        failed = "open rank " + std::to_string(p) + "'s block: " + ds4sci_ctx_error(ctx);
        break;
      }
      ipc_base[r] = static_cast<char *>(base);
      ipc_open_handle[r] = ipc_slots[r].handle;
    }
    const size_t rows = (size_t)(in_offset[p + 1] - in_offset[p]);
    ipc_copies.push_back({static_cast<char *>(in) + (size_t)in_offset[p] * row_bytes,
                          ipc_base[r] + ipc_slots[r].handle.offset + (size_t)peer_at[p] * row_bytes,
                          rows * row_bytes});
  }
  if (ok && ds4sci_device_copy(ctx, ipc_copies.data(), (int32_t)ipc_copies.size()) != DS4SCI_OK) {
    ok = 0;
    failed = std::string("copy: ") + ds4sci_ctx_error(ctx);
  }
  if (!failed.empty()) ok = 0;
  // success on the whole node, and the lowest rank that failed (for the warning)
  int verdict[2] = {ok, failed.empty() ? INT_MAX : comm->me};
  const double t1 = MPI_Wtime();
  MPI_Allreduce(MPI_IN_PLACE, verdict, 2, MPI_INT, MPI_MIN, node_comm);
  t_halo_mpi += MPI_Wtime() - t1;
  if (verdict[0]) return 0;

  // IPC does not work here (e.g. GPUs hidden from each other by per-rank CUDA_VISIBLE_DEVICES,
  // or processes in separate containers): every rank of the node knows it from the reduction,
  // finishes this move through host memory, and stops trying (ipc_failed: the moves left in
  // this call go through host memory too, and no later plan offers device buffers). The rows
  // are the same bytes either way.
  // The failing ranks say why (on their screens); the node's first rank names the first of
  // them, so that rank 0's log file has it too.
  if (!failed.empty())
    error->warning(FLERR, "pair_style ds4sci: CUDA IPC between the ranks of this node failed "
                          "on rank {} ({}); feature rows go through host memory from now on "
                          "(DS4SCI_IPC=0 skips the attempt)", comm->me, failed);
  else if (node_me == 0)
    error->warning(FLERR, "pair_style ds4sci: CUDA IPC between the ranks of this node failed "
                          "on rank {} (its screen says why); feature rows go through host memory "
                          "from now on (DS4SCI_IPC=0 skips the attempt)", verdict[1]);
  ipc_failed = true;
  // Unmap what did open: owners free their blocks when they grow, and no rank reads them again.
  // (The fallback's first reduction orders these closes before any owner's next free.)
  for (char *&base : ipc_base)
    if (base) {
      ds4sci_ipc_close(ctx, base);
      base = nullptr;
    }
  return ipc_host_fallback(out, in, row_bytes, forward);
}

// A move with device buffers through host memory: out to the host, host_move, in back to the
// device (ds4sci_device_copy, which waits). Collective like host_move; the copies' outcome is
// agreed on first, so that no rank enters the exchange alone.
int PairDS4SCI::ipc_host_fallback(const void *out, void *in, size_t row_bytes, bool forward)
{
  if (row_bytes % sizeof(double) != 0) return 1;
  const size_t n_out = forward ? halo_send_index.size() : halo_recv_index.size();
  const size_t n_in = forward ? halo_recv_index.size() : halo_send_index.size();
  const size_t w = row_bytes / sizeof(double);
  ipc_host_out.resize(std::max<size_t>(n_out * w, 1));
  ipc_host_in.resize(std::max<size_t>(n_in * w, 1));
  const ds4sci_copy down = {ipc_host_out.data(), out, n_out * row_bytes};
  int ok = ds4sci_device_copy(ctx, &down, 1) == DS4SCI_OK;
  // over the node, as ipc_move's verdict: a plan with device buffers has every peer there
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, node_comm);
  if (!ok) return 1;
  if (host_move(ipc_host_out.data(), ipc_host_in.data(), row_bytes, forward) != 0) return 1;
  const ds4sci_copy up = {in, ipc_host_in.data(), n_in * row_bytes};
  return ds4sci_device_copy(ctx, &up, 1) == DS4SCI_OK ? 0 : 1;
}

// Every mapping of a peer's block closed, then the node waits, before any rank frees its
// context (its blocks): CUDA leaves freeing an allocation that another process still maps
// undefined. Collective over the node when a plan used device buffers (the same on all ranks).
void PairDS4SCI::ipc_close_all()
{
  for (char *&base : ipc_base)
    if (base) {
      ds4sci_ipc_close(ctx, base);
      base = nullptr;
    }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (ipc_used && node_comm != MPI_COMM_NULL && !finalized) MPI_Barrier(node_comm);
  ipc_used = ipc_plan = false;
}

/* ----------------------------------------------------------------------
   halo plan, the peers of this node (exchange auto): which peers exchange through the shared
   window, which by MPI messages, and the window itself, grown when a rank of the node needs a
   larger part. Collective over node_comm; every rank of the node builds its plan together.
------------------------------------------------------------------------- */

void PairDS4SCI::halo_shared_setup(int n_send, int n_recv)
{
  const int nprocs = comm->nprocs;
  int node_size = 1;
  if (exchange_shared) MPI_Comm_size(node_comm, &node_size);

  // The window only if some rank of the node exchanges rows with another one there. need:
  // this rank's part, [max(n_send, n_recv)][comm_forward] (forward widths are F or 4F, packed
  // floats halve them; the reverse's at most 4F).
  const size_t need = (size_t)std::max(n_send, n_recv) * comm_forward;
  int node_flags[2] = {0, 0};  // any same-node peer on the node, any part too small
  if (node_size > 1) {
    for (int p = 0; p < nprocs; p++)
      if (node_rank_of[p] >= 0 && p != comm->me &&
          (halo_send_offset[p + 1] > halo_send_offset[p] ||
           halo_recv_offset[p + 1] > halo_recv_offset[p]))
        node_flags[0] = 1;
    node_flags[1] = need > halo_win_doubles;
    MPI_Allreduce(MPI_IN_PLACE, node_flags, 2, MPI_INT, MPI_MAX, node_comm);
  }
  halo_shared = node_flags[0] != 0;

  if (halo_shared && node_flags[1]) {
    // Parts grow by 1.25x at least, so that slowly growing ghost counts reallocate rarely. All
    // ranks of the node free and allocate together (collective); the contents are per call.
    const size_t doubles =
        need > halo_win_doubles ? std::max(need, halo_win_doubles + halo_win_doubles / 4)
                                : halo_win_doubles;
    halo_window_free();
    // Each part page-aligned on its own: its first touch (the owner's writes) places it on the
    // owner's NUMA node, where the owner writes and a same-node peer reads it once.
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    double *mine = nullptr;
    MPI_Win_allocate_shared((MPI_Aint)(doubles * sizeof(double)), (int)sizeof(double), info,
                            node_comm, &mine, &halo_win);
    MPI_Info_free(&info);
    halo_win_doubles = doubles;
    // One passive-target epoch for the window's life: loads and stores go straight to memory,
    // ordered by MPI_Win_sync and the node's barriers (halo_node_barrier).
    MPI_Win_lock_all(MPI_MODE_NOCHECK, halo_win);
    halo_win_base.assign(node_size, nullptr);
    for (int r = 0; r < node_size; r++) {
      MPI_Aint size = 0;
      int disp_unit = 0;
      MPI_Win_shared_query(halo_win, r, &size, &disp_unit, &halo_win_base[r]);
    }
    // Rare (growth only): the memory it takes, and that same-node ranks use it.
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style ds4sci: halo plan: shared-memory window for the {} ranks of "
                     "rank 0's node, {:.1f} MB on rank 0\n",
                     node_size, doubles * sizeof(double) / 1048576.0);
  }

  // Message peers: all with rows, or with the window only those on other nodes.
  halo_send_peers.clear();
  halo_recv_peers.clear();
  halo_node_send_peers.clear();
  halo_node_recv_peers.clear();
  halo_send_buf_rows = halo_recv_buf_rows = 0;
  for (int p = 0; p < nprocs; p++) {
    const bool node = halo_shared && node_rank_of[p] >= 0;
    if (halo_send_offset[p + 1] > halo_send_offset[p]) {
      (node ? halo_node_send_peers : halo_send_peers).push_back(p);
      if (!node) halo_send_buf_rows = halo_send_offset[p + 1];
    }
    if (halo_recv_offset[p + 1] > halo_recv_offset[p]) {
      (node ? halo_node_recv_peers : halo_recv_peers).push_back(p);
      if (!node) halo_recv_buf_rows = halo_recv_offset[p + 1];
    }
  }
  // Without the window the buffers also stage this rank's outgoing rows, all of them.
  if (!halo_shared) {
    halo_send_buf_rows = n_send;
    halo_recv_buf_rows = n_recv;
  }
  halo_requests.resize(halo_send_peers.size() + halo_recv_peers.size());
  halo_src.resize(nprocs);
}

// Collective over node_comm: every rank of the node frees its part together.
void PairDS4SCI::halo_window_free()
{
  if (halo_win == MPI_WIN_NULL) return;
  MPI_Win_unlock_all(halo_win);
  MPI_Win_free(&halo_win);
  halo_win_doubles = 0;
  halo_win_base.clear();
}

// All ranks of the node between their writes into their parts and the peers' reads (and
// between those reads and the next writes). MPI_Win_sync on either side: the memory barrier
// that the unified shared-memory model asks for around a process synchronisation.
void PairDS4SCI::halo_node_barrier()
{
  const double t0 = MPI_Wtime();
  MPI_Win_sync(halo_win);
  MPI_Barrier(node_comm);
  MPI_Win_sync(halo_win);
  t_halo_mpi += MPI_Wtime() - t0;
}

// The rows are ready: the node's parts written (barrier) and the messages arrived.
void PairDS4SCI::halo_wait(int n_req)
{
  if (halo_shared) halo_node_barrier();
  const double t0 = MPI_Wtime();
  MPI_Waitall(n_req, halo_requests.data(), MPI_STATUSES_IGNORE);
  t_halo_mpi += MPI_Wtime() - t0;
}

/* ----------------------------------------------------------------------
   halo plan, one direction (forward: this rank's send rows out, the owners' rows of its
   remote ghosts in; reverse: its remote ghost rows out, the peers' ghost rows of its atoms
   in): gathers the outgoing rows of `data` into this rank's part of the window (or the
   message buffer), sends them to peers on other nodes, waits for the node (barrier) and the
   messages, and points halo_src[p] at peer p's rows for this rank: its part of the window,
   or the message. Counts in rows of a row type, so they stay small whatever the width.
------------------------------------------------------------------------- */

void PairDS4SCI::halo_transfer(const double *data, int width, bool forward, bool packed)
{
  const size_t w = width;
  const std::vector<int32_t> &out_index = forward ? halo_send_index : halo_recv_index;
  const std::vector<int> &out_offset = forward ? halo_send_offset : halo_recv_offset;
  const std::vector<int> &out_peers = forward ? halo_send_peers : halo_recv_peers;
  const std::vector<int> &in_offset = forward ? halo_recv_offset : halo_send_offset;
  const std::vector<int> &in_peers = forward ? halo_recv_peers : halo_send_peers;
  const std::vector<int> &in_node_peers = forward ? halo_node_recv_peers : halo_node_send_peers;
  const std::vector<int> &peer_at = forward ? halo_peer_send_at : halo_peer_recv_at;
  std::vector<double> &out_buf = forward ? halo_send_buf : halo_recv_buf;
  std::vector<double> &in_buf = forward ? halo_recv_buf : halo_send_buf;
  MPI_Datatype row;
  MPI_Type_contiguous(width, MPI_DOUBLE, &row);
  MPI_Type_commit(&row);
  // Sized for the widest rows: the same size at every call, so that a wider call after a
  // narrower one does not zero-fill the rest again.
  halo_send_buf.resize((size_t)halo_send_buf_rows * comm_forward);
  halo_recv_buf.resize((size_t)halo_recv_buf_rows * comm_forward);

  const double t0 = MPI_Wtime();
  int n_req = 0;
  for (int p : in_peers)
    MPI_Irecv(in_buf.data() + in_offset[p] * w, in_offset[p + 1] - in_offset[p], row, p,
              HALO_TAG, world, &halo_requests[n_req++]);
  t_halo_mpi += MPI_Wtime() - t0;

  // This rank's outgoing rows for every peer, grouped as out_offset (packed: already so).
  double *stage = halo_shared ? halo_win_base[node_me] : out_buf.data();
  const double *out = stage;
  if (!packed)
    gather_rows(stage, data, out_index.data(), (int)out_index.size(), width,
                loop_threads(n_threads));
  else if (halo_shared)
    copy_doubles(stage, data, out_index.size() * w, loop_threads(n_threads));
  else
    out = data; /* the messages leave from the core's packed block */
  const double t1 = MPI_Wtime();
  for (int p : out_peers)
    MPI_Isend(out + out_offset[p] * w, out_offset[p + 1] - out_offset[p], row, p, HALO_TAG,
              world, &halo_requests[n_req++]);
  t_halo_mpi += MPI_Wtime() - t1;
  halo_wait(n_req);
  MPI_Type_free(&row);

  for (int p : in_peers) halo_src[p] = in_buf.data() + in_offset[p] * w;
  for (int p : in_node_peers) halo_src[p] = halo_win_base[node_rank_of[p]] + peer_at[p] * w;
}

/* ----------------------------------------------------------------------
   halo plan, forward: remote ghost rows from their owners' rows (halo_transfer). The rows of
   periodic images are the core's (it overwrites them after this call).
------------------------------------------------------------------------- */

void PairDS4SCI::halo_forward(double *data, int width)
{
  const size_t w = width;
  const int n_recv = (int)halo_recv_index.size();
  const int nt = loop_threads(n_threads);
  halo_transfer(data, width, true);
  const double *const *src = halo_src.data();
  const int *offset = halo_recv_offset.data();
  const int32_t *peer = halo_recv_peer.data();
  const int32_t *index = halo_recv_index.data();
  const bool threaded = (size_t)n_recv * w > HALO_THREADED_DOUBLES;
  (void)nt, (void)threaded;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if (threaded)
#endif
  for (int k = 0; k < n_recv; k++)
    memcpy(data + (size_t)index[k] * w, src[peer[k]] + (size_t)(k - offset[peer[k]]) * w,
           w * sizeof(double));

  // No rank writes its part again (next call) while a peer still reads it.
  if (halo_shared) halo_node_barrier();
}

/* ----------------------------------------------------------------------
   halo plan, reverse: remote ghost rows back to their owners (same-node ones read straight
   from the window, the others by message), added into the owned rows in a fixed order (peer
   by peer, entry by entry: the same sums with or without the window, any thread count);
   periodic images are folded by the core
------------------------------------------------------------------------- */

void PairDS4SCI::halo_reverse(double *data, int width, bool floats)
{
  const size_t w = width;
  const int n_send = (int)halo_send_index.size();
  const int nt = loop_threads(n_threads);
  halo_transfer(data, width, false);

  // Threads over distinct owned rows; each row adds its entries (one per image of the atom on
  // each peer) in the plan's order.
  const int n_rows = (int)send_rows.size();
  const int32_t *rows = send_rows.data();
  const int32_t *row_offset = halo_row_offset.data();
  const int32_t *entry = halo_row_entry.data();
  const double *const *src = halo_src.data();
  const int *offset = halo_send_offset.data();
  const int32_t *peer = halo_send_peer.data();
  const bool threaded = (size_t)n_send * w > HALO_THREADED_DOUBLES;
  (void)nt, (void)threaded;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if (threaded)
#endif
  for (int r = 0; r < n_rows; r++) {
    double *sum = data + (size_t)rows[r] * w;
    for (int e = row_offset[r]; e < row_offset[r + 1]; e++) {
      const int k = entry[e];
      const double *in = src[peer[k]] + (size_t)(k - offset[peer[k]]) * w;
      if (floats) {
        // The rows hold floats (the core's pinned array; the window or the message buffer):
        // read through memcpy, since the message buffer is a vector of doubles.
        float *sum_f = reinterpret_cast<float *>(sum);
        float chunk[1024];
        for (size_t c0 = 0; c0 < 2 * w; c0 += 1024) {
          const size_t nc = std::min<size_t>(1024, 2 * w - c0);
          memcpy(chunk, reinterpret_cast<const char *>(in) + c0 * sizeof(float),
                 nc * sizeof(float));
          for (size_t c = 0; c < nc; c++) sum_f[c0 + c] += chunk[c];
        }
      } else {
        for (size_t c = 0; c < w; c++) sum[c] += in[c];
      }
    }
  }

  if (halo_shared) halo_node_barrier();
}

// Rows are independent within one swap (a swap sends each atom once): threaded copies.
int PairDS4SCI::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  const int w = comm_width;
  const double *data = comm_data;
  const int nt = loop_threads(n_threads);
  (void)nt;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 4096)
#endif
  for (int i = 0; i < n; i++)
    memcpy(buf + (size_t)i * w, data + (size_t)list[i] * w, w * sizeof(double));
  if (send_recording) {
    const int nlocal = (int)send_mark.size();
    for (int i = 0; i < n; i++)
      if (list[i] < nlocal) send_mark[list[i]] = 1;
  }
  return n * w;
}

void PairDS4SCI::unpack_forward_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  memcpy(comm_data + (size_t)first * w, buf, (size_t)n * w * sizeof(double));
}

int PairDS4SCI::pack_reverse_comm(int n, int first, double *buf)
{
  const int w = comm_width;
  memcpy(buf, comm_data + (size_t)first * w, (size_t)n * w * sizeof(double));
  return n * w;
}

void PairDS4SCI::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int w = comm_width;
  double *data = comm_data;
  const int nt = loop_threads(n_threads);
  (void)nt;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 4096)
#endif
  for (int i = 0; i < n; i++) {
    double *row = data + (size_t)list[i] * w;
    const double *in = buf + (size_t)i * w;
    for (int k = 0; k < w; k++) row[k] += in[k];
  }
}

/* ---------------------------------------------------------------------- */

double PairDS4SCI::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += z.capacity() * sizeof(int32_t) + nbr_offset.capacity() * sizeof(int64_t) +
      nbr_index.capacity() * sizeof(int32_t);
  bytes += (forces.capacity() + atom_energy.capacity() + atom_virial.capacity()) * sizeof(double);
  bytes += (ghost_origin.capacity() + halo_send_buf.capacity() + halo_recv_buf.capacity() +
            halo_win_doubles) *
      sizeof(double);
  bytes += (ghost_owner.capacity() + send_rows.capacity() + halo_send_index.capacity() +
            halo_recv_index.capacity() + halo_row_offset.capacity() + halo_row_entry.capacity() +
            halo_send_peer.capacity() + halo_recv_peer.capacity()) *
      sizeof(int32_t);
  return bytes;
}
