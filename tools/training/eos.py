#!/opt/tvenv/bin/python
"""Equation of state of the perfect diamond lattice at 0 K: a trained checkpoint (TorchMD-Net)
next to its teacher (Stillinger-Weber, `lmp` with pair_style sw).

Scales a 2x2x2-cell (64-atom) diamond lattice isotropically over --amin..--amax, fits a cubic
polynomial E(V) per atom and reports the equilibrium lattice constant a0, the energy E0 and
the bulk modulus B = V d2E/dV2 for both.

Usage: eos.py CKPT [--lmp lmp] [--potential /usr/share/lammps/potentials/Si.sw]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import warp  # noqa: F401
except ImportError:
    import torch_neighbors

    torch_neighbors.install()

EV_PER_A3_IN_GPA = 160.21766
BASIS = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                  [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])


def sw_energy(lmp, pot, a, n, wd):
    inp = (f"units metal\natom_style atomic\nboundary p p p\nlattice diamond {a}\n"
           f"region b block 0 {n} 0 {n} 0 {n}\ncreate_box 1 b\ncreate_atoms 1 box\n"
           f"mass 1 28.0855\npair_style sw\npair_coeff * * {pot} Si\n"
           "thermo_style custom pe\nthermo_modify format float %.15g norm yes\nrun 0\n")
    with open(os.path.join(wd, "in.eos"), "w") as f:
        f.write(inp)
    out = subprocess.run([lmp, "-in", "in.eos", "-log", "none"], cwd=wd, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    k = [i for i, l in enumerate(out) if l.split()[:1] == ["PotEng"]][0]
    return float(out[k + 1])


def fit(a, e):
    v = a ** 3 / 8.0
    c = np.polyfit(v, e, 3)
    vs = np.linspace(v.min(), v.max(), 4001)
    es = np.polyval(c, vs)
    i = int(np.argmin(es))
    b = vs[i] * np.polyval(np.polyder(c, 2), vs[i]) * EV_PER_A3_IN_GPA
    return (8 * vs[i]) ** (1 / 3), es[i], b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--lmp", default="lmp")
    ap.add_argument("--potential", default="/usr/share/lammps/potentials/Si.sw")
    ap.add_argument("--amin", type=float, default=5.28)
    ap.add_argument("--amax", type=float, default=5.58)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import head_eps  # the checkpoint's head_vector_norm_eps, if train.py recorded one

    model = head_eps.load_model(args.checkpoint, derivative=False)
    model.eval()
    n = 2
    frac = np.array([(b + [i, j, k]) / n for i in range(n) for j in range(n) for k in range(n)
                     for b in BASIS])
    grid = np.linspace(args.amin, args.amax, 16)
    e_et, e_sw = [], []
    with tempfile.TemporaryDirectory() as wd:
        for a in grid:
            cell = a * n
            pos = torch.tensor(frac * cell, dtype=torch.float32)
            z = torch.full((len(pos),), 14)
            with torch.no_grad():
                y, _ = model(z, pos, batch=torch.zeros_like(z),
                             box=torch.eye(3).view(1, 3, 3) * cell)
            e_et.append(float(y) / len(pos))
            e_sw.append(sw_energy(args.lmp, args.potential, a, n, wd))
    for name, e in (("ET", np.array(e_et)), ("SW", np.array(e_sw))):
        a0, e0, b = fit(grid, e)
        print(f"{name}: a0 = {a0:.4f} A, E0 = {e0:.4f} eV/atom, B = {b:.1f} GPa")
    print("   a (A)   E_ET (eV/atom)  E_SW (eV/atom)  diff (meV/atom)")
    for a, e, s in zip(grid, e_et, e_sw):
        print(f"  {a:.3f}   {e:.5f}        {s:.5f}        {1000 * (e - s):7.2f}")


if __name__ == "__main__":
    main()
