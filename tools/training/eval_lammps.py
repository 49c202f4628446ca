#!/usr/bin/env python3
"""Held-out errors of the shipped model run by LAMMPS + pair_style ds4sci (the plugin).

For every frame of the chosen split (every --every-th frame), writes a LAMMPS data file, runs
`run 0` with pair_style ds4sci and the exported model, and compares energy and forces with the
teacher labels stored by gen_data.py (exact SW values from LAMMPS pair_style sw). With
--teacher-lmp, the teacher is also re-evaluated by that lmp on the same data file (a check that
the data files and the labels agree). With --ckpt, every frame is also run by TorchMD-Net itself
in float64 (that checkpoint, with its head_vector_norm_eps, tools/training/head_eps.py) and the
largest plugin - TorchMD-Net differences are printed (device cpu: expect ~1e-12).

Usage:
  eval_lammps.py --lmp LMP --plugin ds4sciplugin.so --model potentials/si-sw-et.safetensors \
      --data build-si/data [--split test] [--every 1] [--json out.json] [--device cpu] \
      [--ckpt CKPT]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from si_dataset import read_extxyz  # noqa: E402


def write_data(path, cell, pos):
    """LAMMPS data file (atom_style atomic, one type: Si) for a lower-triangular cell."""
    with open(path, "w") as f:
        f.write(f"held-out frame ({len(pos)} Si atoms)\n\n{len(pos)} atoms\n1 atom types\n\n")
        f.write(f"0 {cell[0, 0]:.15g} xlo xhi\n0 {cell[1, 1]:.15g} ylo yhi\n"
                f"0 {cell[2, 2]:.15g} zlo zhi\n")
        if np.any(cell[[1, 2, 2], [0, 0, 1]] != 0):
            f.write(f"{cell[1, 0]:.15g} {cell[2, 0]:.15g} {cell[2, 1]:.15g} xy xz yz\n")
        f.write("\nMasses\n\n1 28.0855\n\nAtoms # atomic\n\n")
        for i, p in enumerate(pos):
            f.write(f"{i + 1} 1 {p[0]:.15g} {p[1]:.15g} {p[2]:.15g}\n")


def run_lammps(lmp, workdir, data, pair_lines, pre_lines=()):
    """run 0 on a data file; returns (energy, forces[N,3] sorted by id)."""
    inp = ["units metal", "atom_style atomic", "boundary p p p", "box tilt large",
           f"read_data {data}", *pre_lines, *pair_lines,
           "thermo_style custom step pe", "thermo_modify format float %.17g norm no",
           "dump f all custom 1 forces.dump id fx fy fz",
           "dump_modify f sort id format float %.17g", "run 0"]
    with open(os.path.join(workdir, "in.lmp"), "w") as f:
        f.write("\n".join(inp) + "\n")
    r = subprocess.run(lmp + ["-in", "in.lmp", "-log", "log.lammps", "-screen", "none"],
                       cwd=workdir)
    log = open(os.path.join(workdir, "log.lammps")).read().splitlines()
    if r.returncode:
        raise RuntimeError("lmp failed:\n" + "\n".join(log[-15:]))
    k = max(i for i, l in enumerate(log) if l.split()[:2] == ["Step", "PotEng"])
    energy = float(log[k + 1].split()[1])
    lines = open(os.path.join(workdir, "forces.dump")).read().splitlines()[9:]
    forces = np.array([[float(v) for v in l.split()[1:4]] for l in lines])
    return energy, forces


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmp", required=True, help="lmp with the PLUGIN package (may be 'mpirun -np 1 lmp')")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teacher-lmp", default=None, help="lmp with pair_style sw (e.g. Debian's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ckpt", default=None,
                    help="also compare with TorchMD-Net float64 on this checkpoint (head eps applied)")
    args = ap.parse_args()
    ref = None
    if args.ckpt:
        import torch
        import evaluate  # noqa: F401  (installs the neighbour op where warp-lang is missing)
        import head_eps
        ref = head_eps.load_model(args.ckpt, derivative=True, precision=64).eval()
        print(f"TorchMD-Net float64 reference: {args.ckpt}, head_vector_norm_eps "
              f"{head_eps.model_eps(ref):g}")
    ref_dev = [0.0, 0.0]
    splits = np.load(os.path.join(args.data, "splits.npz"))
    wanted = sorted(int(i) for i in splits["idx_" + args.split])[::args.every]
    wanted = set(wanted)
    runs = {r["name"]: r for r in json.load(open(os.path.join(args.data, "runs.json")))["runs"]}
    pot = os.path.abspath(os.path.join(args.data, "Si.sw"))
    plugin = os.path.abspath(args.plugin)
    model = os.path.abspath(args.model)
    by_kind = {}
    teacher_dev = 0.0
    with tempfile.TemporaryDirectory() as wd:
        for i, fr in enumerate(read_extxyz(os.path.join(args.data, "si_sw.extxyz"))):
            if i not in wanted:
                continue
            write_data(os.path.join(wd, "frame.data"), fr["cell"], fr["pos"])
            e, f = run_lammps(args.lmp.split(), wd, "frame.data",
                              [f"plugin load {plugin}",
                               f"pair_style ds4sci {model} device {args.device}",
                               "pair_coeff * * Si"])
            n = len(f)
            if ref is not None:
                z = torch.from_numpy(fr["z"])
                y, fr64 = ref(z, torch.tensor(fr["pos"], dtype=torch.float64),
                              batch=torch.zeros_like(z),
                              box=torch.tensor(fr["cell"], dtype=torch.float64).view(1, 3, 3))
                ref_dev[0] = max(ref_dev[0], abs(e - float(y.detach())) / n)
                ref_dev[1] = max(ref_dev[1], float(np.abs(f - fr64.detach().numpy()).max()))
            if args.teacher_lmp:
                et, ft = run_lammps(args.teacher_lmp.split(), wd, "frame.data",
                                    ["pair_style sw", f"pair_coeff * * {pot} Si"])
                teacher_dev = max(teacher_dev, abs(et - fr["energy"]) / n,
                                  float(np.abs(ft - fr["forces"]).max()))
            kind = runs[fr["info"]["run"]]["kind"]
            by_kind.setdefault(kind, []).append(((e - fr["energy"]) / n,
                                                 (f - fr["forces"]).ravel(), fr["forces"].ravel()))
    from evaluate import summarize  # noqa: E402  (numpy only)
    table = {k: summarize(v) for k, v in by_kind.items()}
    table["all"] = summarize([r for v in by_kind.values() for r in v])
    print(f"{'kind':14s} {'frames':>6s} {'E MAE':>8s} {'E RMSE':>8s}  {'F MAE':>7s} {'F RMSE':>7s} "
          f"(meV/atom, eV/A; LAMMPS + ds4sci, device {args.device}, split {args.split})")
    for k, s in table.items():
        print(f"{k:14s} {s['frames']:6d} {s['energy_mae_meV_per_atom']:8.2f} "
              f"{s['energy_rmse_meV_per_atom']:8.2f}  {s['force_mae_eV_per_A']:7.3f} "
              f"{s['force_rmse_eV_per_A']:7.3f}")
    if args.teacher_lmp:
        print(f"teacher re-evaluated by {args.teacher_lmp}: max deviation from the labels "
              f"{teacher_dev:.2e} (eV/atom or eV/A)")
    if ref is not None:
        print(f"plugin vs TorchMD-Net float64: max |dE|/N {ref_dev[0]:.2e} eV/atom, "
              f"max |dF| {ref_dev[1]:.2e} eV/A")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=os.path.basename(args.model), split=args.split,
                           device=args.device, errors=table,
                           torchmdnet_f64_max_dev=ref_dev if ref is not None else None), f,
                      indent=1)


if __name__ == "__main__":
    main()
