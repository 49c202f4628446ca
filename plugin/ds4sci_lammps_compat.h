/*
 * ds4sci_lammps_compat.h - the LAMMPS API differences pair_style ds4sci meets, in one place.
 *
 * LAMMPS_VERSION_NUMBER (YYYYMMDD) is derived by plugin/CMakeLists.txt from the LAMMPS_VERSION
 * string of the tree's src/version.h ("29 Sep 2021", "4 Feb 2025"); version.h has no numeric
 * macro in either release.
 *
 * 24 Mar 2022 (first feature release after lammps/lammps PR #3148 and the neighbor-request
 * refactor):
 *   - Comm::forward_comm_pair(Pair *) / reverse_comm_pair(Pair *) became
 *     Comm::forward_comm(Pair *) / reverse_comm(Pair *).
 *   - neighbor->request(this, instance_me) returning an index into neighbor->requests[] with
 *     ->half / ->full flags became neighbor->add_request(this, NeighConst::REQ_FULL).
 * Development snapshots between 29 Sep 2021 and 24 Mar 2022 are not supported.
 */
#ifndef DS4SCI_LAMMPS_COMPAT_H
#define DS4SCI_LAMMPS_COMPAT_H

#include "comm.h"
#include "neigh_request.h"
#include "neighbor.h"
#include "pair.h"

#ifndef LAMMPS_VERSION_NUMBER
#error "LAMMPS_VERSION_NUMBER is not defined: build the plugin with plugin/CMakeLists.txt"
#endif

namespace ds4sci_compat {

/* A full neighbour list of owned atoms (ghost neighbours included) for a pair style. */
inline void request_full_list(LAMMPS_NS::Neighbor *neighbor, LAMMPS_NS::Pair *pair,
                              int instance_me)
{
#if LAMMPS_VERSION_NUMBER >= 20220324
    (void)instance_me;
    neighbor->add_request(pair, LAMMPS_NS::NeighConst::REQ_FULL);
#else
    int request = neighbor->request(pair, instance_me);
    neighbor->requests[request]->half = 0;
    neighbor->requests[request]->full = 1;
#endif
}

/* Pair::pack/unpack_forward_comm over all swaps: ghosts get their owners' rows. */
inline void forward_comm(LAMMPS_NS::Comm *comm, LAMMPS_NS::Pair *pair)
{
#if LAMMPS_VERSION_NUMBER >= 20220324
    comm->forward_comm(pair);
#else
    comm->forward_comm_pair(pair);
#endif
}

/* Pair::pack/unpack_reverse_comm over all swaps: ghost rows are added into their owners. */
inline void reverse_comm(LAMMPS_NS::Comm *comm, LAMMPS_NS::Pair *pair)
{
#if LAMMPS_VERSION_NUMBER >= 20220324
    comm->reverse_comm(pair);
#else
    comm->reverse_comm_pair(pair);
#endif
}

}  // namespace ds4sci_compat

#endif  // DS4SCI_LAMMPS_COMPAT_H
