#!/opt/tvenv/bin/python
"""Write the small inputs of the shipped-model CI tests (tests/lammps/si_data/).

- heldout_<run>.data: one frame from each of several held-out (test-split) trajectories of
  gen_data.py, as LAMMPS data files (positions only). The CI test evaluates the teacher (SW, by
  lmp) and the shipped model (by the plugin) on them; the labels are not stored.
- nve_start_64.data: 64 Si atoms with velocities, thermalised at 600 K with the teacher
  (Langevin, 3 ps, by lmp), the starting point of the short NVE drift test.

Usage: make_si_test_data.py build-si/data tests/lammps/si_data [--lmp lmp]
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_lammps import write_data  # noqa: E402
from si_dataset import read_extxyz  # noqa: E402

# (run, index of the frame inside the run)
PICK = [("crystal_1350K_test", 12), ("vol1.04_600K_test", 7), ("yz+0.03_xy-0.02_600K_test", 9),
        ("vacancy_900K_test", 4), ("interstitial_900K_test", 4), ("surface_600K_test", 8),
        ("liquid_2400K_test", 10), ("amorphous_600K_test", 15)]

NVE_START = """units metal
atom_style atomic
boundary p p p
lattice diamond 5.431
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass 1 28.0855
pair_style sw
pair_coeff * * {pot} Si
velocity all create 1200 8765 mom yes rot yes dist gaussian
fix l all langevin 600 600 0.1 5678 zero yes
fix i all nve
timestep 0.001
run 3000
write_data {out}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--lmp", default="lmp")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    want = dict(PICK)
    count = {}
    for fr in read_extxyz(os.path.join(args.data, "si_sw.extxyz")):
        run = fr["info"]["run"]
        k = count.get(run, 0)
        count[run] = k + 1
        if want.get(run) == k:
            assert fr["info"]["split"] == "test", run
            write_data(os.path.join(args.out, f"heldout_{run}.data"), fr["cell"], fr["pos"])
            print("wrote", run, len(fr["pos"]), "atoms")
    pot = os.path.abspath(os.path.join(args.data, "Si.sw"))
    out = os.path.abspath(os.path.join(args.out, "nve_start_64.data"))
    with tempfile.TemporaryDirectory() as wd:
        with open(os.path.join(wd, "in.lmp"), "w") as f:
            f.write(NVE_START.format(pot=pot, out=out))
        subprocess.run([args.lmp, "-in", "in.lmp", "-log", "none", "-screen", "none"], cwd=wd,
                       check=True)
    print("wrote", out)


if __name__ == "__main__":
    main()
