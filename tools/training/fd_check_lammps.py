#!/opt/tvenv/bin/python
"""Are the plugin's forces the gradient of its energy? Central finite differences through LAMMPS.

Takes one frame of si_sw.extxyz (by run name and index), evaluates energy and forces with
LAMMPS + pair_style ds4sci (run 0, CPU float64 path), then for random Cartesian components
compares -dE/dx by central differences (step h) with the force. Prints each pair and the worst
difference. Used for docs/si_model.md (energy-conservation section).

    fd_check_lammps.py --lmp $LAMMPS_BINARY --plugin $PWD/build-h1/plugin/ds4sciplugin.so \
        --model $PWD/potentials/si-sw-et.safetensors --data build-si/data
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_lammps import run_lammps, write_data  # noqa: E402
from si_dataset import read_extxyz  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmp", required=True)
    ap.add_argument("--plugin", required=True, help="absolute path")
    ap.add_argument("--model", required=True, help="absolute path")
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", default="crystal_600K")
    ap.add_argument("--index", type=int, default=5)
    ap.add_argument("--h", type=float, default=1e-4)
    ap.add_argument("--n", type=int, default=8)
    a = ap.parse_args()
    frames = [f for f in read_extxyz(os.path.join(a.data, "si_sw.extxyz"))
              if f["info"]["run"] == a.run]
    fr = frames[a.index]
    pair = [f"plugin load {a.plugin}", f"pair_style ds4sci {a.model} device cpu",
            "pair_coeff * * Si"]
    wd = tempfile.mkdtemp()

    def ef(pos):
        write_data(os.path.join(wd, "frame.data"), fr["cell"], pos)
        return run_lammps(a.lmp.split(), wd, "frame.data", pair, ["neighbor 1.0 bin"])

    pos = fr["pos"].copy()
    energy, forces = ef(pos)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(a.n):
        i, k = int(rng.integers(len(pos))), int(rng.integers(3))
        p = pos.copy()
        p[i, k] += a.h
        ep, _ = ef(p)
        p[i, k] -= 2 * a.h
        em, _ = ef(p)
        fd = -(ep - em) / (2 * a.h)
        worst = max(worst, abs(forces[i, k] - fd))
        print(f"atom {i} dim {k}: F {forces[i, k]:+.8f} -dE/dx {fd:+.8f} diff {forces[i, k] - fd:+.2e}")
    print(f"{a.run}[{a.index}] ({len(pos)} atoms): E {energy:.10f} eV, worst |F + dE/dx| {worst:.2e} eV/A "
          f"(h = {a.h} A)")


if __name__ == "__main__":
    main()
