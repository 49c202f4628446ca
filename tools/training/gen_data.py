#!/opt/tvenv/bin/python
"""Generate Stillinger-Weber silicon training data for the shipped ET potential.

Runs LAMMPS (Debian's `lmp` is enough: pair_style sw is in its MANYBODY package) with the
Stillinger-Weber potential (Si.sw shipped with LAMMPS, units metal: Angstrom, eV, ps) over
crystal (cold, hot, strained), point defects, liquid, amorphous and surface configurations.
Every run is a separate MD trajectory; snapshots are taken every `every` steps after an
equilibration. Labels are exact SW energies (sum of compute pe/atom, checked against the
thermo pe) and forces, dumped with 17 significant digits.

Output (in --out):
  si_sw.extxyz     all frames, extended XYZ: Lattice (rows a, b, c, LAMMPS's lower-triangular
                   reduced form), energy (eV, total), forces (eV/A), run name and split
  runs.json        the run table (name, kind, atoms, T, strain, frames, split) and metadata

Splits are by trajectory, never by frame: runs marked "test" are whole MD runs at state
points not used for training (interpolating temperatures and strains, other seeds); the
train/validation split inside the training runs is done later by make_splits.py.

Usage: gen_data.py [--lmp lmp] [--potential /usr/share/lammps/potentials/Si.sw] [--out DIR]
Cost: about 1.5 minutes on one core (1256 frames).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

A0 = 5.431  # SW diamond lattice constant, Angstrom (the SW minimum is 5.4310)

# name, kind, cells (n x n x n conventional cubic cells), T (K), extra, frames, split
# kind: crystal (NPT, P=0), strain (NVT at fixed strained cell), vacancy / interstitial (NVT),
#       liquid (melt at 3500 K, then NPT at T), amorphous (melt, NPT quench to T, anneal),
#       surface ((001) slab, vacuum along z, NVT)
RUNS = [
    # cold and hot crystal at zero pressure
    ("crystal_50K", "crystal", 2, 50, {}, 30, "train"),
    ("crystal_300K", "crystal", 2, 300, {}, 60, "train"),
    ("crystal_600K", "crystal", 2, 600, {}, 60, "train"),
    ("crystal_900K", "crystal", 2, 900, {}, 60, "train"),
    ("crystal_1200K", "crystal", 2, 1200, {}, 60, "train"),
    ("crystal_1500K", "crystal", 2, 1500, {}, 60, "train"),
    ("crystal_216_1000K", "crystal", 3, 1000, {}, 15, "train"),
    ("crystal_750K_test", "crystal", 2, 750, {}, 25, "test"),
    ("crystal_1350K_test", "crystal", 2, 1350, {}, 25, "test"),
    # volumetric strain (volume factor) and shear strain (tilt / length), fixed cell, NVT
    ("vol0.95_300K", "strain", 2, 300, {"vol": 0.95}, 20, "train"),
    ("vol0.97_900K", "strain", 2, 900, {"vol": 0.97}, 20, "train"),
    ("vol1.03_300K", "strain", 2, 300, {"vol": 1.03}, 20, "train"),
    ("vol1.05_900K", "strain", 2, 900, {"vol": 1.05}, 20, "train"),
    ("vol0.95_900K", "strain", 2, 900, {"vol": 0.95}, 20, "train"),
    ("vol1.05_300K", "strain", 2, 300, {"vol": 1.05}, 20, "train"),
    ("xy+0.05_300K", "strain", 2, 300, {"xy": 0.05}, 20, "train"),
    ("xy-0.05_900K", "strain", 2, 900, {"xy": -0.05}, 20, "train"),
    ("xz+0.05_900K", "strain", 2, 900, {"xz": 0.05}, 20, "train"),
    ("yz-0.05_300K", "strain", 2, 300, {"yz": -0.05}, 20, "train"),
    ("mixed_300K", "strain", 2, 300, {"vol": 1.02, "xy": 0.03, "xz": -0.02, "yz": 0.04}, 20, "train"),
    ("mixed_900K", "strain", 2, 900, {"vol": 0.98, "xy": -0.04, "xz": 0.03, "yz": -0.02}, 20, "train"),
    ("vol0.96_600K_test", "strain", 2, 600, {"vol": 0.96}, 15, "test"),
    ("vol1.04_600K_test", "strain", 2, 600, {"vol": 1.04}, 15, "test"),
    ("yz+0.03_xy-0.02_600K_test", "strain", 2, 600, {"yz": 0.03, "xy": -0.02}, 15, "test"),
    # point defects in 216-atom cells
    ("vacancy_600K", "vacancy", 3, 600, {}, 20, "train"),
    ("vacancy_1200K", "vacancy", 3, 1200, {}, 20, "train"),
    ("interstitial_600K", "interstitial", 3, 600, {}, 20, "train"),
    ("interstitial_1200K", "interstitial", 3, 1200, {}, 20, "train"),
    ("vacancy_900K_test", "vacancy", 3, 900, {}, 8, "test"),
    ("interstitial_900K_test", "interstitial", 3, 900, {}, 8, "test"),
    # liquid at zero pressure
    ("liquid_2000K", "liquid", 2, 2000, {}, 40, "train"),
    ("liquid_2250K", "liquid", 2, 2250, {}, 40, "train"),
    ("liquid_2500K", "liquid", 2, 2500, {}, 40, "train"),
    ("liquid_2750K", "liquid", 2, 2750, {}, 40, "train"),
    ("liquid_3000K", "liquid", 2, 3000, {}, 40, "train"),
    ("liquid_2400K_test", "liquid", 2, 2400, {}, 20, "test"),
    ("liquid_2900K_test", "liquid", 2, 2900, {}, 20, "test"),
    # amorphous: melt, quench to T over ~25 ps (frames taken during the quench and the anneal)
    ("amorphous_300K", "amorphous", 2, 300, {}, 50, "train"),
    ("amorphous_900K", "amorphous", 2, 900, {}, 50, "train"),
    ("amorphous_216_300K", "amorphous", 3, 300, {}, 15, "train"),
    ("amorphous_600K_test", "amorphous", 2, 600, {}, 20, "test"),
    # (001) surface slab, 8 atomic layers, vacuum along z
    ("surface_300K", "surface", 2, 300, {}, 30, "train"),
    ("surface_900K", "surface", 2, 900, {}, 30, "train"),
    ("surface_1200K", "surface", 2, 1200, {}, 30, "train"),
    ("surface_600K_test", "surface", 2, 600, {}, 15, "test"),
]

EVERY = 100      # steps between snapshots (0.1 ps)
EQUIL = 3000     # equilibration steps before the first snapshot


def lammps_input(name, kind, n, T, extra, frames, seed, pot):
    """Return the LAMMPS input text for one run."""
    lines = [
        "units metal",
        "atom_style atomic",
        "boundary p p p",
        f"lattice diamond {A0}",
    ]
    if kind == "surface":
        lines.append(f"region box block 0 {n} 0 {n} 0 {2 * n + 1}")
        lines.append(f"region slab block 0 {n} 0 {n} 0 {n}")
    else:
        lines.append(f"region box block 0 {n} 0 {n} 0 {n}")
    lines.append("create_box 1 box")
    lines.append("create_atoms 1 region slab" if kind == "surface" else "create_atoms 1 box")
    lines += [
        "mass 1 28.0855",
        "pair_style sw",
        f"pair_coeff * * {pot} Si",
        "neighbor 1.0 bin",
        "timestep 0.001",
        "compute pea all pe/atom",
        "thermo_style custom step temp pe press vol",
        "thermo_modify format float %.17g",
        "thermo 1000",
    ]
    if kind == "vacancy":
        lines.append("group victim id 100")
        lines.append("delete_atoms group victim")
    if kind == "interstitial":
        # tetrahedral interstitial site of the conventional cell at (0.5, 0.5, 0.5) + (0.25 ...)
        lines.append(f"create_atoms 1 single {n // 2 + 0.5} {n // 2 + 0.5} {n // 2 + 0.5}")
    if kind == "strain":
        vol = extra.get("vol", 1.0)
        f = vol ** (1.0 / 3.0)
        lines.append(f"change_box all x scale {f} y scale {f} z scale {f} remap")
        if any(k in extra for k in ("xy", "xz", "yz")):
            L = n * A0 * f
            lines.append("change_box all triclinic")
            for k in ("xy", "xz", "yz"):
                if k in extra:
                    lines.append(f"change_box all {k} final {extra[k] * L} remap units box")
    lines.append(f"velocity all create {max(2 * T, 20)} {seed} dist gaussian mom yes rot no")

    def dump_block(nframes):
        return [
            f"dump d all custom {EVERY} {name}.dump id type x y z fx fy fz c_pea",
            "dump_modify d sort id format float %.17g",
            f"fix pr all print {EVERY} \"$(step) $(pe:%.17g)\" file {name}.pe screen no",
            f"run {EVERY * (nframes - 1)}",
            "undump d",
            "unfix pr",
        ]

    if kind in ("crystal",):
        lines += [f"fix md all npt temp {T} {T} 0.1 iso 0.0 0.0 1.0",
                  f"run {EQUIL}"] + dump_block(frames)
    elif kind in ("strain", "vacancy", "interstitial", "surface"):
        lines += [f"fix md all nvt temp {T} {T} 0.1", f"run {EQUIL}"] + dump_block(frames)
    elif kind == "liquid":
        lines += ["fix md all nvt temp 3500 3500 0.1", "run 5000", "unfix md",
                  f"fix md all npt temp {T} {T} 0.1 iso 0.0 0.0 1.0", f"run {EQUIL}"]
        lines += dump_block(frames)
    elif kind == "amorphous":
        # melt, quench to T over 0.8 ps per frame at zero pressure; frames: 60% during the quench,
        # 40% during an anneal at T
        nq = int(frames * 0.6)
        lines += ["fix md all nvt temp 3500 3500 0.1", "run 5000", "unfix md",
                  "fix md all npt temp 2500 2500 0.1 iso 0.0 0.0 1.0", "run 5000", "unfix md",
                  f"fix md all npt temp 2500 {T} 0.1 iso 0.0 0.0 1.0",
                  f"dump d all custom 800 {name}.dump id type x y z fx fy fz c_pea",
                  "dump_modify d sort id format float %.17g",
                  f"fix pr all print 800 \"$(step) $(pe:%.17g)\" file {name}.pe screen no",
                  f"run {800 * nq}",
                  "unfix md",
                  f"fix md all npt temp {T} {T} 0.1 iso 0.0 0.0 1.0",
                  "dump_modify d every 200",
                  f"run {200 * (frames - nq - 1)}",
                  "undump d", "unfix pr"]
    else:
        raise ValueError(kind)
    return "\n".join(lines) + "\n"


def read_dump(path):
    """Yield (step, cell[3,3], pos[N,3], forces[N,3], pe_atom[N]) from a LAMMPS custom dump."""
    with open(path) as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        assert lines[i] == "ITEM: TIMESTEP", lines[i]
        step = int(lines[i + 1])
        nat = int(lines[i + 3])
        hdr = lines[i + 4]
        b = [list(map(float, lines[i + 5 + k].split())) for k in range(3)]
        if "xy" in hdr:
            xlo_b, xhi_b, xy = b[0]
            ylo_b, yhi_b, xz = b[1]
            zlo, zhi, yz = b[2]
            xlo = xlo_b - min(0.0, xy, xz, xy + xz)
            xhi = xhi_b - max(0.0, xy, xz, xy + xz)
            ylo = ylo_b - min(0.0, yz)
            yhi = yhi_b - max(0.0, yz)
        else:
            (xlo, xhi), (ylo, yhi), (zlo, zhi) = b
            xy = xz = yz = 0.0
        cell = np.array([[xhi - xlo, 0, 0], [xy, yhi - ylo, 0], [xz, yz, zhi - zlo]])
        cols = lines[i + 8].split()[2:]
        data = np.array([list(map(float, l.split())) for l in lines[i + 9:i + 9 + nat]])
        c = {k: j for j, k in enumerate(cols)}
        pos = data[:, [c["x"], c["y"], c["z"]]]
        pos = pos - np.array([xlo, ylo, zlo])
        frc = data[:, [c["fx"], c["fy"], c["fz"]]]
        pea = data[:, c["c_pea"]]
        yield step, cell, pos, frc, pea
        i += 9 + nat


def write_frame(f, run, split, cell, pos, frc, energy):
    f.write(f"{len(pos)}\n")
    lat = " ".join(f"{v:.10f}" for v in cell.reshape(-1))
    f.write(f'Lattice="{lat}" Properties=species:S:1:pos:R:3:forces:R:3 '
            f'energy={energy:.12f} pbc="T T T" run={run} split={split}\n')
    for p, fr in zip(pos, frc):
        f.write("Si %.12f %.12f %.12f %.12e %.12e %.12e\n" % (*p, *fr))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lmp", default="lmp")
    ap.add_argument("--potential", default="/usr/share/lammps/potentials/Si.sw")
    ap.add_argument("--out", default="build-si/data")
    ap.add_argument("--only", default=None, help="comma-separated run names (debugging)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "lammps")
    os.makedirs(work, exist_ok=True)
    pot = os.path.abspath(args.potential)
    if not os.path.exists(pot):
        sys.exit(f"gen_data: potential file {pot} not found")

    table = []
    xyz = open(os.path.join(args.out, "si_sw.extxyz"), "w")
    for seed, (name, kind, n, T, extra, frames, split) in enumerate(RUNS, start=4711):
        if args.only and name not in args.only.split(","):
            continue
        inp = lammps_input(name, kind, n, T, extra, frames, seed, pot)
        with open(os.path.join(work, name + ".in"), "w") as f:
            f.write(inp)
        r = subprocess.run([args.lmp, "-in", name + ".in", "-log", name + ".log", "-screen", "none"],
                           cwd=work)
        if r.returncode:
            sys.exit(f"gen_data: lmp failed on run {name} (see {work}/{name}.log)")
        pe = {}
        with open(os.path.join(work, name + ".pe")) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                s, e = line.split()
                pe[int(s)] = float(e)
        nf = 0
        for step, cell, pos, frc, pea in read_dump(os.path.join(work, name + ".dump")):
            energy = float(np.sum(pea))
            if step in pe and abs(pe[step] - energy) > 1e-8 * max(1.0, abs(energy)):
                sys.exit(f"gen_data: {name} step {step}: sum pe/atom {energy} != pe {pe[step]}")
            write_frame(xyz, name, split, cell, pos, frc, energy)
            nf += 1
        table.append(dict(name=name, kind=kind, atoms=int(len(pos)), T=T, strain=extra, frames=nf,
                          split=split, seed=seed))
        print(f"{name:28s} {kind:12s} N={len(pos):4d} T={T:5d} frames={nf:3d} {split}"
              f"  E/N(last)={energy / len(pos):.4f} eV", flush=True)
    xyz.close()
    meta = dict(teacher="Stillinger-Weber Si (LAMMPS pair_style sw, " + os.path.basename(pot) + ")",
                units="metal: Angstrom, eV, eV/Angstrom", every_steps=EVERY, equil_steps=EQUIL,
                timestep_fs=1.0, runs=table)
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.copy(pot, os.path.join(args.out, "Si.sw"))


if __name__ == "__main__":
    main()
