/* ----------------------------------------------------------------------
   Registration of pair_style ds4sci with LAMMPS's PLUGIN package: `plugin load ds4sciplugin.so`.
------------------------------------------------------------------------- */

#include "lammpsplugin.h"
#include "version.h"

#include "pair_ds4sci.h"

using namespace LAMMPS_NS;

static Pair *ds4sci_creator(LAMMPS *lmp)
{
  return new PairDS4SCI(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;

  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "ds4sci";
  plugin.info = "ds4sci: TorchMD-Net Equivariant Transformer (CPU float64 / CUDA) v0.1";
  plugin.author = "ds4sci";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &ds4sci_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
