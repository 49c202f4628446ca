#!/usr/bin/env python3
"""LAMMPS-level tests of pair_style ds4sci: a real lmp (PLUGIN package) loads ds4sciplugin.so.

Each case writes LAMMPS inputs and data files into its work folder, runs lmp under mpirun, and
checks what LAMMPS reports against independent expectations: TorchMD-Net's float64 golden data
(tests/golden/*.json), finite differences of LAMMPS's own potential energy, the same numbers on
other MPI rank counts and processor grids, and LAMMPS's error messages for bad input.

Standard library only. Usage:
  lammps_test.py --lmp LMP --plugin PLUGIN.so --golden DIR --workdir DIR [--mpiexec MPIRUN] CASE
Cases: golden:<name> (one golden JSON), ranks, fd, nve, units, restart, errors, runs, hybrid;
GPU cases (exit 77 = skipped when no GPU is usable): gpu_golden:<name>, gpu_box, gpu_hybrid,
gpu_oom.
--device-under-test cpu runs the gpu_golden/gpu_box comparisons with device cpu (exchange auto)
against the reference (device cpu, exchange lammps), to check the cases themselves without a GPU.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

SYMBOLS = ["X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P",
           "S", "Cl", "Ar", "K", "Ca"]
MASSES = [0.0, 1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180,
          22.990, 24.305, 26.982, 28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078]
# LAMMPS's own constant for units metal (force->nktv2p, update.cpp): pressure*volume -> eV.
NKTV2P_METAL = 1.6021765e6


class Failure(Exception):
    pass


class Lammps:
    """Runs lmp (under mpirun) on generated inputs in a work folder."""

    def __init__(self, args):
        self.lmp = os.path.abspath(args.lmp)
        self.plugin = os.path.abspath(args.plugin)
        self.mpiexec = args.mpiexec
        self.workdir = os.path.abspath(args.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.makedirs(self.workdir)

    def path(self, name):
        return os.path.join(self.workdir, name)

    def run(self, name, script, nprocs=1, expect_ok=True, timeout=240):
        """Run one input; return (returncode, screen output). Fails unless expect_ok matches."""
        with open(self.path(name + ".in"), "w") as f:
            f.write(script)
        cmd = [self.lmp, "-in", name + ".in", "-log", name + ".log", "-var", "plugin", self.plugin]
        if self.mpiexec:
            mpi = [self.mpiexec, "-np", str(nprocs), "--oversubscribe"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                mpi.append("--allow-run-as-root")
            cmd = mpi + cmd
        elif nprocs != 1:
            raise Failure("%s: %d ranks need --mpiexec" % (name, nprocs))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            proc = subprocess.run(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("%s: lmp did not finish within %d s (hang?)" % (name, timeout))
        out = proc.stdout
        with open(self.path(name + ".out"), "w") as f:
            f.write(out)
        if expect_ok and proc.returncode != 0:
            raise Failure("%s (%d ranks): lmp failed with status %d:\n%s"
                          % (name, nprocs, proc.returncode, tail(out)))
        if expect_ok and "ERROR" in out:
            raise Failure("%s: LAMMPS reported an error:\n%s" % (name, tail(out)))
        return proc.returncode, out


def tail(text, n=25):
    return "\n".join(text.splitlines()[-n:])


def results(out):
    """Values printed by the inputs as 'RESULT key value...' lines."""
    res = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            words = line.split()
            res[words[1]] = [float(w) for w in words[2:]]
    return res


def read_dump(path):
    """Last frame of a 'dump custom ... id <cols>' file sorted by id: {id: [values]}."""
    with open(path) as f:
        lines = f.read().splitlines()
    start = max(i for i, l in enumerate(lines) if l.startswith("ITEM: ATOMS"))
    rows = {}
    for line in lines[start + 1:]:
        words = line.split()
        rows[int(words[0])] = [float(w) for w in words[1:]]
    return rows


def rel_err(a, b, scale=None):
    scale = max(abs(b), 1e-300) if scale is None else scale
    return abs(a - b) / scale


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def write_data(path, z, pos, box, types=None):
    """LAMMPS data file (atom_style atomic). box: 3x3 rows a, b, c (a_y = a_z = b_z = 0).
    Atom types: one per element present, in increasing atomic number (or `types`, a list of
    atomic numbers). Returns the element symbol of each type, for pair_coeff."""
    types = types or sorted(set(z))
    (ax, _, _), (bx, by, _), (cx, cy, cz) = box
    with open(path, "w") as f:
        f.write("ds4sci test system\n\n%d atoms\n%d atom types\n\n" % (len(z), len(types)))
        f.write("0 %.17g xlo xhi\n0 %.17g ylo yhi\n0 %.17g zlo zhi\n" % (ax, by, cz))
        if bx or cx or cy:
            f.write("%.17g %.17g %.17g xy xz yz\n" % (bx, cx, cy))
        f.write("\nMasses\n\n")
        for t, zt in enumerate(types, 1):
            f.write("%d %.6f\n" % (t, MASSES[zt]))
        f.write("\nAtoms # atomic\n\n")
        for i, (zi, r) in enumerate(zip(z, pos), 1):
            f.write("%d %d %.17g %.17g %.17g\n" % (i, types.index(zi) + 1, r[0], r[1], r[2]))
    return [SYMBOLS[zt] for zt in types]


def open_box(pos, cutoff):
    """A periodic box for an open-boundary system: images stay beyond the cutoff."""
    lo = [min(r[k] for r in pos) for k in range(3)]
    hi = [max(r[k] for r in pos) for k in range(3)]
    shifted = [[r[k] - lo[k] + cutoff for k in range(3)] for r in pos]
    size = [hi[k] - lo[k] + 2.0 * cutoff + 1.0 for k in range(3)]
    return shifted, [[size[0], 0, 0], [0, size[1], 0], [0, 0, size[2]]]


def header(data, model, elements, extra="", device="cpu", pair_extra="", pair=None):
    """extra: commands before read_data (processors); pair_extra: pair_style keywords; pair:
    pair_style and pair_coeff lines instead of ds4sci's alone."""
    pair = pair or ("pair_style ds4sci %s device %s %s\npair_coeff * * %s\n"
                    % (model, device, pair_extra, " ".join(elements)))
    return """units metal
atom_style atomic
atom_modify map array
boundary p p p
%s
read_data %s
plugin load ${plugin}
%sneighbor 1.0 bin
""" % (extra, data, pair)


# Thermo that keeps the global and per-atom sums current at every output step, and prints them.
EVAL = """compute vir all pressure NULL virial
compute peatom all pe/atom
compute satom all stress/atom NULL virial
compute sums all reduce sum c_peatom c_satom[1] c_satom[2] c_satom[3] c_satom[4] c_satom[5] c_satom[6]
thermo_style custom step pe vol c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6] c_sums[1] c_sums[2] c_sums[3] c_sums[4] c_sums[5] c_sums[6] c_sums[7]
thermo_modify format float %.17g
"""
PRINT = ('print "RESULT pe $(pe:%.17g)"\n'
         'print "RESULT vol $(vol:%.17g)"\n'
         'print "RESULT vir $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) $(c_vir[3]:%.17g) '
         '$(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g)"\n'
         'print "RESULT sums $(c_sums[1]:%.17g) $(c_sums[2]:%.17g) $(c_sums[3]:%.17g) '
         '$(c_sums[4]:%.17g) $(c_sums[5]:%.17g) $(c_sums[6]:%.17g) $(c_sums[7]:%.17g)"\n')


def eval_script(data, model, elements, dump, extra_setup="", extra="", pair_extra="", pair=None):
    return (header(data, model, elements, extra, pair_extra=pair_extra, pair=pair) + extra_setup +
            EVAL +
            "dump f all custom 1 %s id fx fy fz c_peatom %s\n"
            % (dump, " ".join("c_satom[%d]" % k for k in range(1, 7))) +
            "dump_modify f sort id format float %.17g\n" +
            "run 0\n" + PRINT)


def evaluate(lmp, name, data, model, elements, nprocs=1, extra_setup="", extra="", pair_extra="",
             pair=None):
    """run 0: energy, virial (energy units), per-atom sums, forces {id: [fx, fy, fz]}, per-atom
    energy and virial {id: [pe, s1..s6]} and LAMMPS's screen output. pair: other pair_style and
    pair_coeff lines (header())."""
    _, out = lmp.run(name, eval_script(data, model, elements, name + ".dump", extra_setup, extra,
                                       pair_extra, pair), nprocs)
    res = results(out)
    vol = res["vol"][0]
    virial = [p * vol / NKTV2P_METAL for p in res["vir"]]
    atoms = read_dump(lmp.path(name + ".dump"))
    return {"pe": res["pe"][0], "virial": virial, "vir_p": res["vir"], "sums": res["sums"],
            "vol": vol, "forces": {i: a[0:3] for i, a in atoms.items()},
            "per_atom": {i: a[3:10] for i, a in atoms.items()}, "out": out}


def check_per_atom_sums(name, r, tol=1e-10):
    """sum of stress/atom (virial part, pressure*volume) = -V * global virial pressure."""
    for k in range(6):
        want = -r["vir_p"][k] * r["vol"]
        scale = max(max(abs(v) for v in r["vir_p"]) * r["vol"], 1e-12)
        check(rel_err(r["sums"][1 + k], want, scale) < tol,
              "%s: sum of stress/atom[%d] = %.17g, expected -V*virial = %.17g"
              % (name, k + 1, r["sums"][1 + k], want))


def max_force_err(forces, ref):
    """max |F - F_ref| over atoms and components, relative to max |F_ref|."""
    scale = max(max(abs(c) for c in f) for f in ref.values()) or 1.0
    worst = 0.0
    for i, fr in ref.items():
        for a, b in zip(forces[i], fr):
            worst = max(worst, abs(a - b) / scale)
    return worst


# ----------------------------------------------------------------------------------------------
# golden: run 0 energy, forces, virial equal TorchMD-Net float64, by default and with pair_modify
# nofdotr (the style never uses fdotr since 2026-11-30: the CUDA backend folds periodic images)
# ----------------------------------------------------------------------------------------------

def golden_systems(lmp, args, which):
    """The model file of golden set `which` and, per system, (system, data file, elements):
    each system written as a LAMMPS data file (open boxes padded by the cutoff)."""
    golden = json.load(open(os.path.join(args.golden, which + ".json")))
    model = os.path.join(args.golden, golden["model"])
    cutoff = golden["config"]["cutoff_upper"]
    systems = []
    for system in golden["systems"]:
        pos, box = system["pos"], system["box"]
        if box is None:
            pos, box = open_box(pos, cutoff)
        data = lmp.path(system["name"] + ".data")
        systems.append((system, data, write_data(data, system["z"], pos, box)))
    return model, systems


def case_golden(lmp, args, which):
    model, systems = golden_systems(lmp, args, which)
    tol = 1e-10
    for system, data, elements in systems:
        name = system["name"]
        ref_f = {i + 1: f for i, f in enumerate(system["forces_f64"])}
        for path in ("fdotr", "nofdotr"):
            extra = "pair_modify nofdotr\n" if path == "nofdotr" else ""
            r = evaluate(lmp, "%s_%s" % (name, path), data, model, elements, extra_setup=extra)
            e_ref = system["energy_f64"]
            check(rel_err(r["pe"], e_ref) < tol,
                  "%s/%s (%s): pe %.17g vs golden %.17g (rel %.2e > %g)"
                  % (which, name, path, r["pe"], e_ref, rel_err(r["pe"], e_ref), tol))
            ferr = max_force_err(r["forces"], ref_f)
            check(ferr < tol, "%s/%s (%s): forces differ from golden by %.2e (relative to max "
                  "|F|) > %g" % (which, name, path, ferr, tol))
            vscale = max(max(abs(v) for v in system["virial_f64"]), 1e-3 * abs(e_ref), 1e-12)
            for k in range(6):
                check(rel_err(r["virial"][k], system["virial_f64"][k], vscale) < tol,
                      "%s/%s (%s): virial[%d] %.17g vs golden %.17g"
                      % (which, name, path, k, r["virial"][k], system["virial_f64"][k]))
            check_per_atom_sums("%s/%s" % (which, name), r)
        print("ok golden %s/%s: pe %.12g, forces rel err %.1e" % (which, name, r["pe"], ferr))


# ----------------------------------------------------------------------------------------------
# ranks: 1, 2, 4 ranks and processor grids, each with every ghost exchange of several ranks;
# empty domains; a box smaller than the cutoff; 100-step NVE trajectories
# ----------------------------------------------------------------------------------------------

GRIDS = [(1, "1 1 1"), (2, "2 1 1"), (2, "1 1 2"), (4, "2 2 1"), (4, "1 4 1")]
# The ghost exchanges of several ranks: (name suffix, pair_style keywords, what the log names).
# auto: the plugin's halo plan (periodic images in the core, other ranks' rows from their
# owners; here all ranks share a node, so through the shared-memory window); mpi: the same plan
# by MPI messages only (the path of ranks on other nodes); lammps: LAMMPS's forward/reverse
# communication for every ghost row.
EXCHANGES = [("", "", "ghost exchange: halo plan (exchange auto"),
             ("_mpi", "exchange mpi", "ghost exchange: halo plan (exchange mpi"),
             ("_lammps", "exchange lammps", "ghost exchange: LAMMPS's forward/reverse")]
SKIN = 1.0   # header()'s neighbor skin: LAMMPS's ghost cutoff is cutoff + SKIN


def small_golden(args, name):
    golden = json.load(open(os.path.join(args.golden, "small.json")))
    system = next(s for s in golden["systems"] if s["name"] == name)
    return os.path.join(args.golden, golden["model"]), golden["config"]["cutoff_upper"], system


def cell_widths(box):
    """Distances between opposite faces of the cell (rows a, b, c): V / |b x c|, ... LAMMPS
    splits a triclinic box in fractional coordinates, so a grid of p along a gives slabs of
    width widths[0] / p."""
    def cross(u, v):
        return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
    a, b, c = box
    vol = abs(sum(x * y for x, y in zip(a, cross(b, c))))
    return [vol / math.sqrt(sum(x * x for x in cross(u, v))) for u, v in ((b, c), (c, a), (a, b))]


def check_exchange_logged(name, r, nprocs, logged):
    want = logged if nprocs > 1 else "ghost exchange: built-in"
    check(want in r["out"], "%s: the log does not name the ghost exchange ('%s')" % (name, want))
    # One node here: exchange auto reads same-node peers' rows from the shared window (logged
    # when allocated), exchange mpi never allocates it.
    window = "halo plan: shared-memory window" in r["out"]
    if nprocs > 1 and "(exchange auto" in logged:
        check(window, "%s: the halo plan allocated no shared-memory window" % name)
    if "(exchange mpi" in logged:
        check(not window, "%s: exchange mpi allocated a shared-memory window" % name)


def check_same_as(name, r, base, what="1 rank", tol=1e-10):
    """r equals base (float64 round-off, 1e-10, unless told): pe, the energy shift counted once,
    forces, virial, per-atom energies and per-atom virials (ghost contributions reach their
    owners)."""
    check(rel_err(r["pe"], base["pe"]) < tol,
          "%s: pe %.17g vs %s %.17g" % (name, r["pe"], what, base["pe"]))
    # The energy shift is counted once whatever the rank count: pe - sum(pe/atom) agrees.
    check(abs((r["pe"] - r["sums"][0]) - (base["pe"] - base["sums"][0])) < tol * abs(base["pe"]),
          "%s: pe - sum(pe/atom) differs from %s" % (name, what))
    ferr = max_force_err(r["forces"], base["forces"])
    check(ferr < tol, "%s: forces differ from %s by %.2e" % (name, what, ferr))
    for k in range(6):
        check(rel_err(r["virial"][k], base["virial"][k], max(map(abs, base["virial"]))) < tol,
              "%s: virial[%d] differs from %s" % (name, k, what))
    check(sorted(r["per_atom"]) == sorted(base["per_atom"]), "%s: atom IDs differ" % name)
    for label, cols in (("pe/atom", range(0, 1)), ("stress/atom", range(1, 7))):
        scale = max(abs(base["per_atom"][i][k]) for i in base["per_atom"] for k in cols) or 1.0
        worst = max(abs(r["per_atom"][i][k] - base["per_atom"][i][k])
                    for i in base["per_atom"] for k in cols) / scale
        check(worst < tol, "%s: %s differs from %s by %.2e (relative to its max)"
              % (name, label, what, worst))
    return ferr


def grid_runs(lmp, stem, data, model, elements, grids):
    """run 0 on every grid (several ranks: with each exchange) against the first grid's run."""
    base = None
    for n, grid in grids:
        for suffix, pair_extra, logged in EXCHANGES if n > 1 else EXCHANGES[:1]:
            name = "%s_np%d_%s%s" % (stem, n, grid.replace(" ", ""), suffix)
            r = evaluate(lmp, name, data, model, elements, n, extra="processors %s\n" % grid,
                         pair_extra=pair_extra)
            check_exchange_logged(name, r, n, logged)
            check_per_atom_sums(name, r)
            if base is None:
                base = r
                continue
            ferr = check_same_as(name, r, base)
            print("ok %s: pe %.15g, forces max rel diff %.1e" % (name, r["pe"], ferr))


def case_ranks(lmp, args):
    model, cutoff, tri = small_golden(args, "box_triclinic")
    tri_data = lmp.path("tri.data")
    tri_elements = write_data(tri_data, tri["z"], tri["pos"], tri["box"])
    # Two slabs across a narrower than the ghost cutoff: each rank's peer holds every atom of
    # it at least twice (an image on each side), so the halo plan sends rows several times per
    # peer; the grids also have multi-hop edges and corners and periodic images of own atoms.
    check(cell_widths(tri["box"])[0] / 2 < cutoff + SKIN,
          "ranks setup: 2 slabs along a are wider than the ghost cutoff %g" % (cutoff + SKIN))
    grid_runs(lmp, "tri", tri_data, model, tri_elements, GRIDS)

    # A cell narrower than the cutoff in every direction: each atom's own periodic images are
    # its neighbours, and every rank holds many images of its own and its peers' atoms
    # (several hops per direction); with 4 ranks some may own no atom.
    tiny_box = [[4.3, 0.0, 0.0], [0.6, 4.1, 0.0], [-0.4, 0.5, 4.4]]
    tiny_pos = [[0.4, 0.3, 0.5], [2.3, 1.1, 1.6], [1.2, 2.9, 3.0], [3.5, 3.4, 2.6]]
    check(max(cell_widths(tiny_box)) < cutoff, "ranks setup: the tiny cell is not below the cutoff")
    tiny_data = lmp.path("tiny.data")
    tiny_elements = write_data(tiny_data, [6, 8, 7, 1], tiny_pos, tiny_box)
    grid_runs(lmp, "tiny", tiny_data, model, tiny_elements,
              [(1, "1 1 1"), (2, "2 1 1"), (4, "1 2 2")])

    # Empty domains: an open molecule in a large box on 4 slabs along x; most own no atom.
    _, _, mol = small_golden(args, "molecule_20")
    pos, box = open_box(mol["pos"], cutoff)
    box[0][0] *= 2.0
    data = lmp.path("mol.data")
    elements = write_data(data, mol["z"], pos, box)
    owned = [sum(1 for p in pos if k * box[0][0] / 4 <= p[0] < (k + 1) * box[0][0] / 4)
             for k in range(4)]
    check(0 in owned, "empty-domain setup: every slab owns atoms %s" % owned)
    ref_f = {i + 1: f for i, f in enumerate(mol["forces_f64"])}
    for suffix, pair_extra, logged in EXCHANGES:
        name = "mol_np4_empty" + suffix
        r = evaluate(lmp, name, data, model, elements, 4, extra="processors 4 1 1\n",
                     pair_extra=pair_extra)
        check_exchange_logged(name, r, 4, logged)
        check(rel_err(r["pe"], mol["energy_f64"]) < 1e-10,
              "%s: pe %.17g vs golden %.17g" % (name, r["pe"], mol["energy_f64"]))
        ferr = max_force_err(r["forces"], ref_f)
        check(ferr < 1e-10, "%s: forces differ from golden by %.2e" % (name, ferr))
        print("ok %s (atoms per slab %s): pe %.15g" % (name, owned, r["pe"]))

    # 100-step NVE: the same trajectory on every grid and exchange, within float64 round-off
    # growth; the halo plan is rebuilt with LAMMPS's neighbour lists during the run.
    traj = None
    for n, grid in GRIDS:
        for suffix, pair_extra, _ in EXCHANGES if n > 1 else EXCHANGES[:1]:
            name = "nve_np%d_%s%s" % (n, grid.replace(" ", ""), suffix)
            script = (header(tri_data, model, tri_elements, "processors %s\n" % grid,
                             pair_extra=pair_extra) +
                      "velocity all create 600 4928459 loop geom\n"
                      "timestep 0.0005\nfix 1 all nve\nthermo 100\n"
                      "thermo_modify format float %.17g\nrun 100\n"
                      "print \"RESULT etotal $(etotal:%.17g) $(pe:%.17g)\"\n"
                      "write_dump all custom " + name + ".dump id x y z vx vy vz "
                      "modify sort id format float %.17g\n")
            _, out = lmp.run(name, script, n)
            builds = [int(l.split("=")[1]) for l in out.splitlines()
                      if l.startswith("Neighbor list builds")]
            check(builds and builds[0] > 0, "%s: no neighbour-list build during the run (%s): "
                  "the case needs one" % (name, builds))
            pos_vel = read_dump(lmp.path(name + ".dump"))
            e = results(out)["etotal"]
            if traj is None:
                traj, e0 = pos_vel, e
                continue
            dx = max(abs(a - b) for i in traj for a, b in zip(pos_vel[i][:3], traj[i][:3]))
            check(dx < 1e-8, "%s: positions after 100 steps differ from 1 rank by %.2e A"
                  % (name, dx))
            check(rel_err(e[0], e0[0]) < 1e-10,
                  "%s: etotal %.17g vs 1 rank %.17g" % (name, e[0], e0[0]))
            print("ok %s: 100-step trajectory, max |dx| %.1e A vs 1 rank" % (name, dx))


# ----------------------------------------------------------------------------------------------
# fd: forces = -dE/dx (displace_atoms), virial = -dE/dstrain (change_box), per component
# ----------------------------------------------------------------------------------------------

def case_fd(lmp, args):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    h = 1e-4      # A; central differences: O(h^2 E''') ~ 1e-8 relative, round-off ~ 1e-12 E / h
    atoms = [1, 7, 13, 22, 31, 40]
    lines = [header(data, model, elements), EVAL, "thermo 1\n",
             "dump f all custom 1 fd.dump id fx fy fz\n",
             "dump_modify f sort id format float %.17g\n", "run 0\n", PRINT, "undump f\n"]
    for i in atoms:
        lines.append("group g%d id %d\n" % (i, i))
        for k, axis in enumerate("xyz"):
            d = ["0", "0", "0"]
            for sign, tag in ((1, "p"), (-2, "m")):
                d[k] = "%.17g" % (sign * h)
                lines.append("displace_atoms g%d move %s units box\nrun 0\n" % (i, " ".join(d)))
                lines.append('print "RESULT e_%d%s%s $(pe:%%.17g)"\n' % (i, axis, tag))
            d[k] = "%.17g" % h
            lines.append("displace_atoms g%d move %s units box\n" % (i, " ".join(d)))
    # Strains: diagonal by scaling about the box centre (x' = x + eps (x - c)), shear by tilting
    # an orthogonal box (x' = x + delta (y - ylo) / ly): dE/deps_ab = -W_ab.
    eps = 1e-5
    lines.append("change_box all triclinic\n")
    L = [system["box"][0][0], system["box"][1][1], system["box"][2][2]]
    strains = [("xx", "x scale %.17g remap", "x scale %.17g remap", 1.0),
               ("yy", "y scale %.17g remap", "y scale %.17g remap", 1.0),
               ("zz", "z scale %.17g remap", "z scale %.17g remap", 1.0),
               ("xy", "xy final %.17g remap", None, L[1]),
               ("xz", "xz final %.17g remap", None, L[2]),
               ("yz", "yz final %.17g remap", None, L[2])]
    for comp, fmt, _, length in strains:
        for sign, tag in ((1, "p"), (-1, "m")):
            if comp in ("xx", "yy", "zz"):
                lines.append("change_box all " + fmt % (1.0 + sign * eps) + " units box\n")
            else:
                lines.append("change_box all " + fmt % (sign * eps * length) + " units box\n")
            lines.append('run 0\nprint "RESULT s_%s%s $(pe:%%.17g)"\n' % (comp, tag))
            if comp in ("xx", "yy", "zz"):
                lines.append("change_box all " + fmt % (1.0 / (1.0 + sign * eps)) + " units box\n")
            else:
                lines.append("change_box all " + fmt % 0.0 + " units box\n")
    for sign, tag in ((1, "p"), (-1, "m")):
        f = 1.0 + sign * eps
        lines.append("change_box all x scale %.17g y scale %.17g z scale %.17g remap units box\n"
                     % (f, f, f))
        lines.append('run 0\nprint "RESULT s_iso%s $(pe:%%.17g)"\n' % tag)
        lines.append("change_box all x scale %.17g y scale %.17g z scale %.17g remap units box\n"
                     % (1 / f, 1 / f, 1 / f))
    _, out = lmp.run("fd", "".join(lines))
    res = results(out)
    forces = read_dump(lmp.path("fd.dump"))
    fmax = max(max(abs(c) for c in f) for f in forces.values())
    worst = 0.0
    for i in atoms:
        for k, axis in enumerate("xyz"):
            fd = -(res["e_%d%sp" % (i, axis)][0] - res["e_%d%sm" % (i, axis)][0]) / (2 * h)
            err = abs(fd - forces[i][k]) / fmax
            worst = max(worst, err)
            check(err < 1e-6, "atom %d %s: force %.12g, -dE/dx %.12g (rel %.1e > 1e-6)"
                  % (i, axis, forces[i][k], fd, err))
    print("ok forces = -dE/dx for %d atoms, max rel err %.1e (max |F| %.3g eV/A)"
          % (len(atoms), worst, fmax))
    vol = res["vol"][0]
    virial = [p * vol / NKTV2P_METAL for p in res["vir"]]
    vscale = max(abs(v) for v in virial)
    for k, (comp, _, _, _) in enumerate(strains):
        # Diagonal: eps is the strain. Shear: the tilt was delta = eps * length.
        fd = -(res["s_%sp" % comp][0] - res["s_%sm" % comp][0]) / (2 * eps)
        err = abs(fd - virial[k]) / vscale
        check(err < 1e-6, "virial %s: %.12g, -dE/deps %.12g (rel %.1e > 1e-6)"
              % (comp, virial[k], fd, err))
        print("ok virial %s = -dE/deps_%s: %.10g vs %.10g" % (comp, comp, virial[k], fd))
    # Pressure = -dE/dV: isotropic scaling V -> V (1 +- eps)^3 against LAMMPS's virial pressure.
    v_p, v_m = vol * (1 + eps) ** 3, vol * (1 - eps) ** 3
    dEdV = (res["s_isop"][0] - res["s_isom"][0]) / (v_p - v_m)
    p_vir = sum(res["vir"][:3]) / 3.0 / NKTV2P_METAL       # eV/A^3
    check(abs(p_vir + dEdV) < 1e-6 * vscale / vol,
          "pressure (virial part) %.12g eV/A^3 vs -dE/dV %.12g" % (p_vir, -dEdV))
    print("ok pressure (virial part) = -dE/dV: %.10g vs %.10g eV/A^3" % (p_vir, -dEdV))


# ----------------------------------------------------------------------------------------------
# nve: energy conservation with a vector_cutoff (C1 at the cutoff) model
# ----------------------------------------------------------------------------------------------

NVE_STEPS = 2000
NVE_DT = 0.0005  # ps
# Bound on max |Etot(t) - Etot(0)| per atom over the run (eV/atom). Velocity Verlet with a smooth
# (C1 at the cutoff) energy conserves a shadow Hamiltonian: Etot fluctuates by O(dt^2 |F|^2 / m)
# without secular drift. At dt = 0.5 fs, 600 K and the random-weight model's forces (a few eV/A)
# the fluctuation is ~1e-5 eV/atom; a force or virial bug (missing ghost force, wrong layer
# exchange, a non-conservative term) shows up as drift of 1e-3 eV/atom or more within 1 ps.
NVE_BOUND = 2e-4


def case_nve(lmp, args):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    script = (header(data, model, elements) +
              "velocity all create 600 87287 loop geom\n"
              "timestep %g\nfix 1 all nve\n"
              "thermo_style custom step temp pe etotal\nthermo_modify format float %%.17g\n"
              "thermo 20\nrun %d\n" % (NVE_DT, NVE_STEPS))
    _, out = lmp.run("nve", script, 1, timeout=500)
    etot = []
    for line in out.splitlines():
        words = line.split()
        if len(words) == 4 and words[0].isdigit():
            etot.append((int(words[0]), float(words[3])))
    check(len(etot) == NVE_STEPS // 20 + 1, "nve: expected %d thermo lines, got %d"
          % (NVE_STEPS // 20 + 1, len(etot)))
    n = len(system["z"])
    dev = max(abs(e - etot[0][1]) for _, e in etot) / n
    drift = (etot[-1][1] - etot[0][1]) / n
    check(dev < NVE_BOUND, "nve: max |Etot - Etot(0)| = %.3e eV/atom > bound %g over %d steps"
          % (dev, NVE_BOUND, NVE_STEPS))
    print("ok nve %d steps at %g fs: max |dEtot| %.2e eV/atom, end-to-end %.2e eV/atom "
          "(bound %g)" % (NVE_STEPS, NVE_DT * 1000, dev, drift, NVE_BOUND))


# ----------------------------------------------------------------------------------------------
# units: a model in eV under LAMMPS units real (kcal/mol): energies and forces converted
# ----------------------------------------------------------------------------------------------

# 1 eV in kcal/mol from the exact SI constants (e, N_A) and the thermochemical calorie.
KCAL_MOL_PER_EV = 1.602176634e-19 * 6.02214076e23 / 4184.0


def case_units(lmp, args):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    script = (header(data, model, elements).replace("units metal", "units real") +
              "thermo_modify format float %.17g\n"
              "dump f all custom 1 real.dump id fx fy fz\n"
              "dump_modify f sort id format float %.17g\nrun 0\n"
              'print "RESULT pe $(pe:%.17g)"\n')
    _, out = lmp.run("units_real", script)
    check("energies converted from the model's eV to kcal/mol" in out,
          "units real: the log does not say that energies are converted")
    pe = results(out)["pe"][0]
    want = system["energy_f64"] * KCAL_MOL_PER_EV
    check(rel_err(pe, want) < 1e-10, "units real: pe %.17g kcal/mol, expected %.17g" % (pe, want))
    ref_f = {i + 1: [c * KCAL_MOL_PER_EV for c in f] for i, f in enumerate(system["forces_f64"])}
    ferr = max_force_err(read_dump(lmp.path("real.dump")), ref_f)
    check(ferr < 1e-10, "units real: forces differ from golden x %.6f by %.2e" % (KCAL_MOL_PER_EV, ferr))
    print("ok units real: pe %.12g kcal/mol = golden %.12g eV x %.8f" % (pe, system["energy_f64"], KCAL_MOL_PER_EV))


# ----------------------------------------------------------------------------------------------
# restart: write_restart / read_restart + pair_style again continues the same trajectory
# ----------------------------------------------------------------------------------------------

def case_restart(lmp, args):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    common = "timestep 0.0005\nthermo 25\nthermo_modify format float %.17g\n"
    dump = ("write_dump all custom %s id x y z vx vy vz modify sort id format float %%.17g\n")
    first = (header(data, model, elements) + "velocity all create 600 5512 loop geom\n" +
             "fix 1 all nve\n" + common + "run 50\nwrite_restart ds4sci.restart\nrun 50\n" +
             dump % "straight.dump")
    lmp.run("restart_write", first, 2)
    second = ("read_restart ds4sci.restart\nplugin load ${plugin}\n"
              "pair_style ds4sci %s device cpu\npair_coeff * * %s\nneighbor 1.0 bin\n"
              % (model, " ".join(elements)) + "fix 1 all nve\n" + common + "run 50\n" +
              dump % "restarted.dump")
    lmp.run("restart_read", second, 2)
    a = read_dump(lmp.path("straight.dump"))
    b = read_dump(lmp.path("restarted.dump"))
    dx = max(abs(u - v) for i in a for u, v in zip(a[i], b[i]))
    check(dx < 1e-9, "restart: positions/velocities differ by %.2e after 50 steps" % dx)
    print("ok restart: continued trajectory matches, max |diff| %.1e" % dx)


# ----------------------------------------------------------------------------------------------
# runs: consecutive runs in one input. Each run's setup re-sorts the atoms and resets LAMMPS's
# neighbour-build counter, also when the previous run never rebuilt its list: the plugin must not
# reuse the neighbour CSR of the previous run (it did before this test: a stale CSR with
# permuted atoms). A translation by a lattice vector relabels the same crystal, so the energy
# must not change.
# ----------------------------------------------------------------------------------------------

SI_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "potentials",
                        "si-sw-et.safetensors")


def case_runs(lmp, args):
    model = os.path.abspath(args.si_model or SI_MODEL)
    script = """units metal
atom_style atomic
atom_modify map array sort 1 0.5
boundary p p p
lattice diamond 5.431
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass 1 28.0855
displace_atoms all random 0.1 0.1 0.1 4821 units box
plugin load ${plugin}
pair_style ds4sci %s device cpu
pair_coeff * * Si
neighbor 1.0 bin
thermo_style custom step pe
thermo_modify format float %%.17g
run 0
print "RESULT pe0 $(pe:%%.17g)"
velocity all create 300 7177 loop geom
fix 1 all nve
timestep 0.0005
run 20
print "RESULT pe1 $(pe:%%.17g)"
displace_atoms all move 5.431 0 0 units box
run 0
print "RESULT pe2 $(pe:%%.17g)"
run 0
print "RESULT pe3 $(pe:%%.17g)"
""" % model
    for nprocs in (1, 2):
        _, out = lmp.run("runs_np%d" % nprocs, script, nprocs)
        res = results(out)
        check(all("pe%d" % i in res for i in range(4)), "runs: expected 4 energies")
        pe = [res["pe%d" % i][0] for i in range(4)]
        builds = [int(w.split("=")[1]) for w in out.splitlines() if w.startswith("Neighbor list builds")]
        check(builds and builds[1] == 0, "runs: the 20-step run rebuilt its list (%s): the case "
              "needs a run without a rebuild" % builds)
        # after the 20 steps: pe[1]; translated by a lattice vector (same crystal, atoms
        # relabelled by the re-sort at setup): pe[2]; once more: pe[3]
        for k in (2, 3):
            check(rel_err(pe[k], pe[1]) < 1e-10,
                  "runs (%d ranks): energy %.12g after a new run's setup, expected %.12g (the "
                  "same configuration translated by a lattice vector)" % (nprocs, pe[k], pe[1]))
        print("ok runs (%d ranks): %.12g eV before, %.12g and %.12g eV after translation by a "
              "lattice vector and new run setups" % (nprocs, pe[1], pe[2], pe[3]))


# ----------------------------------------------------------------------------------------------
# hybrid: pair_style hybrid/overlay ds4sci + zbl (a short-range repulsion, as users add to ML
# potentials) gives the sum of the two styles run alone: hybrid minus zbl alone equals ds4sci
# alone in energy, forces, global virial (hybrid computes F.r itself over the summed forces, or
# asks each style with nofdotr), per-atom energy and virial; 1 and 2 ranks. gpu_hybrid: the
# same with device cuda (label gpu).
# ----------------------------------------------------------------------------------------------

def case_hybrid(lmp, args, device="cpu"):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    zs = sorted(set(system["z"]))
    zbl = "zbl 1.2 2.4"

    def zbl_coeff(sub):   # every type pair with its atomic numbers (sub: "zbl " under hybrid)
        return "".join("pair_coeff %d %d %s%d %d\n" % (i + 1, j + 1, sub, zs[i], zs[j])
                       for i in range(len(zs)) for j in range(i, len(zs)))
    styles = {
        "ds4sci": ("pair_style ds4sci %s device %s\npair_coeff * * %s\n"
                   % (model, device, " ".join(elements))),
        "zbl": "pair_style %s\n" % zbl + zbl_coeff(""),
        "hybrid": ("pair_style hybrid/overlay ds4sci %s device %s %s\n" % (model, device, zbl) +
                   "pair_coeff * * ds4sci %s\n" % " ".join(elements) + zbl_coeff("zbl ")),
    }
    for nprocs in (1, 2):
        for path in ("fdotr", "nofdotr"):
            extra = "pair_modify nofdotr\n" if path == "nofdotr" else ""
            r = {k: evaluate(lmp, "hybrid_%s_%s_np%d_%s" % (device, k, nprocs, path), data, model,
                             elements,
                             nprocs, extra_setup=extra, pair=v) for k, v in styles.items()}
            a, b, h = r["ds4sci"], r["zbl"], r["hybrid"]
            check(abs(b["pe"]) > 1e-3 * abs(a["pe"]), "hybrid: zbl adds nothing here (%.3g eV): "
                  "the case needs atoms inside its outer cutoff" % b["pe"])
            # hybrid minus zbl alone against ds4sci alone, on ds4sci's own scale (zbl's forces
            # are ~100x the model's here: against the sum, a model error would hide in them)
            got = {"pe": h["pe"] - b["pe"], "sums": [u - v for u, v in zip(h["sums"], b["sums"])],
                   "virial": [u - v for u, v in zip(h["virial"], b["virial"])],
                   "forces": {i: [u - v for u, v in zip(h["forces"][i], b["forces"][i])]
                              for i in h["forces"]},
                   "per_atom": {i: [u - v for u, v in zip(h["per_atom"][i], b["per_atom"][i])]
                                for i in h["per_atom"]}}
            # the GPU runs gave the same bits alone and as a sub-style (measured); 1e-6 leaves
            # room for fp32 sums in another order should LAMMPS hand the sub-style its
            # neighbours in another order. Its per-atom virials are fp32 sums: their total
            # meets LAMMPS's F.r global virial at fp32 round-off (the gpu cases' sum rule).
            what = "hybrid/overlay (device %s, %d ranks, %s)" % (device, nprocs, path)
            ferr = check_same_as(what + " minus zbl", got, a, "ds4sci alone",
                                 1e-10 if device == "cpu" else 1e-6)
            check_per_atom_sums(what, h, 1e-10 if device == "cpu" else GPU_V_TOL)
            print("ok hybrid/overlay ds4sci (device %s) + zbl (%d ranks, %s): pe %.12g = %.12g + "
                  "%.12g, forces (hybrid - zbl vs ds4sci) max rel diff %.1e"
                  % (device, nprocs, path, h["pe"], a["pe"], b["pe"], ferr))


def case_gpu_hybrid(lmp, args):
    gpu_usable(lmp, args)
    case_hybrid(lmp, args, device_under_test(args))


# ----------------------------------------------------------------------------------------------
# errors: every bad input stops with its message
# ----------------------------------------------------------------------------------------------

def case_errors(lmp, args):
    model, _, system = small_golden(args, "box_orthorhombic")
    data = lmp.path("orth.data")
    elements = write_data(data, system["z"], system["pos"], system["box"])
    data_extra = lmp.path("orth_4types.data")   # a 5th type (Si) that the model lacks
    write_data(data_extra, system["z"], system["pos"], system["box"], types=[1, 6, 7, 8, 14])
    corrupt = lmp.path("corrupt.safetensors")
    with open(model, "rb") as f:
        blob = f.read()
    with open(corrupt, "wb") as f:
        f.write(blob[:len(blob) // 2])
    els = " ".join(elements)

    def script(pair_style="%s device cpu" % model, pair_coeff="* * " + els, data=data,
               pre="", post="run 0\n"):
        return ("units metal\natom_style atomic\nboundary p p p\n" + pre +
                "read_data %s\nplugin load ${plugin}\npair_style ds4sci %s\n"
                "pair_coeff %s\n" % (data, pair_style, pair_coeff) + post)

    cases = [
        ("missing_model", script(pair_style="no/such/model.safetensors"),
         "pair_style ds4sci: cannot load model"),
        ("corrupt_model", script(pair_style=corrupt), "pair_style ds4sci: cannot load model"),
        ("unknown_element", script(pair_coeff="* * H C N Xx"), "element Xx (atom type 4) is not in the model"),
        ("unmapped_type", script(pair_coeff="* * H C N NULL"), "maps to NULL"),
        ("wrong_word_count", script(pair_coeff="* * H C N"), "needs 4 element symbols"),
        # LAMMPS's own check (one_coeff); its wording changed between versions.
        ("not_star_star", script(pair_coeff="1 1 H C N O"),
         ("Incorrect args for pair coefficients", "Pair_coeff must start with * *")),
        ("unknown_keyword", script(pair_style=model + " precision fp16"),
         "unknown keyword 'precision'"),
        ("bad_device", script(pair_style=model + " device tpu"), "device 'tpu', expected auto, cpu or cuda"),
        ("newton_off", script(pre="newton off\n"), "requires newton pair on"),
        ("units_lj", script(pre="units lj\n"), "units lj not supported"),
        # A NaN position arising mid-run (no reneighboring, so LAMMPS's own binning check does
        # not see it first): the core's input check reports it.
        ("nan_position", script(post="neigh_modify every 1000 delay 0 check no\n"
                                "variable bad atom 1e308*10-1e308*10\n"
                                "set atom 1 vx v_bad\ntimestep 0.001\nfix 1 all nve\nrun 2\n"),
         "LAMMPS atom ID 1 has a non-finite position"),
    ]
    if not shutil.which("nvidia-smi") or subprocess.run(
            ["nvidia-smi", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        cases.append(("cuda_unavailable", script(pair_style=model + " device cuda"),
                      "device cuda requested"))
    # An element the model lacks, on a type that no atom has, is still an error at pair_coeff.
    cases.append(("element_not_in_model", script(data=data_extra, pair_coeff="* * H C N O Si"),
                  "element Si (atom type 5) is not in the model"))
    on_two_ranks = ("missing_model", "unmapped_type", "newton_off", "nan_position")
    for name, text, message in cases:
        for nprocs in (1, 2) if name in on_two_ranks else (1,):
            rc, out = lmp.run("err_%s_np%d" % (name, nprocs), text, nprocs, expect_ok=False,
                              timeout=60)
            check(rc != 0, "%s: lmp exited with status 0; expected an error" % name)
            check(rc < 128 and rc > 0, "%s: lmp died by signal (status %d):\n%s" % (name, rc, tail(out)))
            messages = message if isinstance(message, tuple) else (message,)
            check("ERROR" in out and any(m in out for m in messages),
                  "%s: expected an ERROR with '%s', got:\n%s" % (name, "' or '".join(messages), tail(out)))
            check("Segmentation" not in out and "Backtrace" not in out,
                  "%s: crashed instead of a clean stop:\n%s" % (name, tail(out)))
        line = next(l for l in out.splitlines() if "ERROR" in l)
        print("ok %s: %s" % (name, line.strip()))


# ----------------------------------------------------------------------------------------------
# gpu_*: device cuda against device cpu (float64) in the same LAMMPS input: energy, forces,
# virial (pressure), per-atom energy (pe/atom) and per-atom virial (stress/atom). Bounds (BRIEF):
# energy 1e-5 relative, forces 1e-4 relative RMS; virials and per-atom virials 1e-4 relative RMS
# (against the larger of the total's norm and the per-atom virials' norm: a total can be much
# smaller than its terms); per-atom energies 1e-5 relative RMS.
# ----------------------------------------------------------------------------------------------

SKIP = 77
GPU_E_TOL = 1e-5
GPU_F_TOL = 1e-4
GPU_V_TOL = 1e-4


class Skip(Exception):
    pass


def gpu_usable(lmp, args):
    """Skip (exit 77) without a GPU or without the CUDA backend in this plugin."""
    if args.device_under_test != "cuda":
        return
    if not shutil.which("nvidia-smi") or subprocess.run(
            ["nvidia-smi", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        raise Skip("no GPU (nvidia-smi -L fails)")


# Per-atom columns dumped by the gpu cases: forces, pe/atom, stress/atom (virial part).
PER_ATOM = "fx fy fz c_peatom " + " ".join("c_satom[%d]" % k for k in range(1, 7))


def section(tag, model, elements, device, style_extra="", steps=0):
    """(Re)define the pair style and evaluate: RESULT <tag>_... lines and <tag>.dump. steps > 0:
    evaluate after that many NVE steps without a neighbour-list build (the halo plan of several
    ranks passes the exchange's send_rows hint from the first call on; with exchange lammps the
    first call records it and the later ones pass it)."""
    md = ("velocity all create 600 4711 loop geom\nfix md all nve\n"
          "neigh_modify every 1000 delay 0 check no\n") if steps else ""
    return ("pair_style ds4sci %s device %s %s\npair_coeff * * %s\n"
            % (model, device, style_extra, " ".join(elements)) + md +
            "dump d all custom %d %s.dump id %s\n" % (max(steps, 1), tag, PER_ATOM) +
            "dump_modify d sort id format float %%.17g\nrun %d\nundump d\n" % steps +
            ("unfix md\n" if steps else "") +
            PRINT.replace("RESULT ", "RESULT %s_" % tag))


def section_results(lmp, res, tag):
    vol = res[tag + "_vol"][0]
    return {"pe": res[tag + "_pe"][0], "vol": vol, "vir_p": res[tag + "_vir"],
            "virial": [p * vol / NKTV2P_METAL for p in res[tag + "_vir"]],
            "sums": res[tag + "_sums"], "atoms": read_dump(lmp.path(tag + ".dump"))}


def rms(values):
    return math.sqrt(sum(v * v for v in values) / max(len(values), 1))


def compare(name, got, ref, f_tol=GPU_F_TOL):
    """got vs ref (section_results): the bounds above; returns the measured errors. f_tol, the
    force bound, also bounds the virials when it is the larger: they are sums of the same pair
    gradients (r (x) dE/dr), so a pair whose float32 gradient is ill-conditioned (the cutoff_lower
    bump) moves them as much."""
    ids = sorted(ref["atoms"])
    check(sorted(got["atoms"]) == ids, "%s: atom IDs differ" % name)
    n = len(ids)
    # per-atom energies and |pe| (a near-zero total is judged against its terms)
    e_ref = [ref["atoms"][i][3] for i in ids]
    e_got = [got["atoms"][i][3] for i in ids]
    e_scale = max(abs(ref["pe"]), 1e-12)
    if abs(ref["pe"]) < 1e-3 * sum(abs(e) for e in e_ref):
        e_scale = sum(abs(e) for e in e_ref)
    err = {"energy": abs(got["pe"] - ref["pe"]) / e_scale}
    f_ref = [c for i in ids for c in ref["atoms"][i][0:3]]
    f_got = [c for i in ids for c in got["atoms"][i][0:3]]
    err["forces"] = rms([a - b for a, b in zip(f_got, f_ref)]) / max(rms(f_ref), 1e-300)
    err["atom_energy"] = rms([a - b for a, b in zip(e_got, e_ref)]) / max(rms(e_ref), 1e-300)
    s_ref = [c for i in ids for c in ref["atoms"][i][4:10]]
    s_got = [c for i in ids for c in got["atoms"][i][4:10]]
    s_norm = math.sqrt(sum(v * v for v in s_ref))
    err["atom_virial"] = (math.sqrt(sum((a - b) ** 2 for a, b in zip(s_got, s_ref))) /
                          max(s_norm, 1e-300))
    # global virial in pressure*volume units, same scale as stress/atom
    w_ref = [p * ref["vol"] for p in ref["vir_p"]]
    w_got = [p * got["vol"] for p in got["vir_p"]]
    w_scale = max(math.sqrt(sum(v * v for v in w_ref)), s_norm, 1e-300)
    err["virial"] = math.sqrt(sum((a - b) ** 2 for a, b in zip(w_got, w_ref))) / w_scale
    # the device's own consistency: sum of stress/atom = -V * virial pressure
    err["sum_rule"] = max(abs(got["sums"][1 + k] + got["vir_p"][k] * got["vol"])
                          for k in range(6)) / w_scale
    v_tol = max(GPU_V_TOL, f_tol)
    bounds = {"energy": GPU_E_TOL, "forces": f_tol, "atom_energy": GPU_E_TOL,
              "atom_virial": v_tol, "virial": v_tol, "sum_rule": GPU_V_TOL}
    for key, bound in bounds.items():
        check(err[key] < bound, "%s: %s error %.2e > bound %.1e (pe %.12g vs %.12g; %s)"
              % (name, key, err[key], bound, got["pe"], ref["pe"], describe(err)))
    return err


def describe(err):
    return ", ".join("%s %.1e" % (k, v) for k, v in err.items())


def device_under_test(args):
    # with cpu: the built-in exchange (auto) against LAMMPS's (the reference's exchange lammps)
    return args.device_under_test


def case_gpu_golden(lmp, args, which):
    gpu_usable(lmp, args)
    model, systems = golden_systems(lmp, args, which)
    dev = device_under_test(args)
    for system, data, elements in systems:
        name = system["name"]
        # TorchMD-Net's own float32 force error on this system: a pair on the cutoff bump of
        # cutoff_lower can exceed 1e-4 in any float32 code (docs/gpu.md); the bound is then
        # twice TorchMD-Net's.
        ref64 = [c for f in system["forces_f64"] for c in f]
        ref32 = [c for f in system["forces_f32"] for c in f]
        tm32 = rms([a - b for a, b in zip(ref32, ref64)]) / max(rms(ref64), 1e-300)
        f_tol = max(GPU_F_TOL, 2.0 * tm32)
        script = (header(data, model, elements).split("plugin load")[0] +
                  "plugin load ${plugin}\nneighbor 1.0 bin\n" + EVAL +
                  section(name + "_cpu", model, elements, "cpu", "exchange lammps") +
                  section(name + "_dev", model, elements, dev) +
                  "pair_modify nofdotr\n" +
                  section(name + "_devnf", model, elements, dev))
        _, out = lmp.run(name, script)
        res = results(out)
        ref = section_results(lmp, res, name + "_cpu")
        check(rel_err(ref["pe"], system["energy_f64"]) < 1e-10,
              "%s: the cpu reference is not TorchMD-Net's float64 energy" % name)
        for tag in ("_dev", "_devnf"):
            err = compare(name + tag, section_results(lmp, res, name + tag), ref, f_tol)
            print("ok %s %s/%s%s vs cpu: %s%s" % (dev, which, name, tag, describe(err),
                  " (force bound %.1e: TorchMD-Net float32 %.1e)" % (f_tol, tm32)
                  if f_tol > GPU_F_TOL else ""))


def si_box_data(path, n, seed=4711):
    """Diamond silicon data file, n^3 cells (8 n^3 atoms), each position jittered by up to
    0.1 A per component (Python's random with a fixed seed: the same file for any rank count)."""
    import random
    rng = random.Random(seed)
    a = 5.431
    basis = [(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0),
             (.25, .25, .25), (.25, .75, .75), (.75, .25, .75), (.75, .75, .25)]
    pos = [[(c + b[k]) * a + rng.uniform(-0.1, 0.1) for k, c in enumerate((ix, iy, iz))]
           for ix in range(n) for iy in range(n) for iz in range(n) for b in basis]
    box = [[n * a, 0, 0], [0, n * a, 0], [0, 0, n * a]]
    return write_data(path, [14] * len(pos), pos, box)


def case_gpu_box(lmp, args):
    """~10k atoms (Si potential, 11^3 diamond cells = 10,648 atoms, jittered): device vs cpu on
    1 rank, device on 2 ranks (one GPU each where there are two, else shared; the halo plan, and
    exchange lammps), on 4 ranks (processors 2 2 1: each rank's halo plan has three peers, one
    of them across a corner, and periodic images along z; ranks share GPUs) and device with
    exchange lammps on 1 rank; 5 NVE steps on 2 and 4 ranks against the cpu."""
    gpu_usable(lmp, args)
    model = os.path.abspath(args.si_model)
    n = args.box_cells
    dev = device_under_test(args)
    threads = "threads %d" % args.cpu_threads if args.cpu_threads else ""
    runs = [("box_cpu", 1, "cpu", "exchange lammps " + threads),
            ("box_dev_np1", 1, dev, ""),
            ("box_dev_np1_lammps", 1, dev, "exchange lammps"),
            ("box_dev_np2", 2, dev, ""),
            ("box_dev_np2_lammps", 2, dev, "exchange lammps"),
            ("box_dev_np4", 4, dev, "")]
    data = lmp.path("si_box.data")
    si_box_data(data, n)
    # 5 NVE steps from the same velocities on 2 and 4 ranks (the halo plan): the send_rows
    # exchange hint in every call (only the rows the peers need move between device and host)
    md_runs = [("md_cpu", 1, "cpu", "exchange lammps " + threads),
               ("md_dev_np2", 2, dev, ""),
               ("md_dev_np4", 4, dev, "")]
    res = {}
    for tag, nprocs, device, extra in runs + md_runs:
        grid = {2: "processors 2 1 1\n", 4: "processors 2 2 1\n"}.get(nprocs, "")
        steps = 5 if tag.startswith("md_") else 0
        script = (header(data, model, ["Si"], grid).split("plugin load")[0] +
                  "plugin load ${plugin}\nneighbor 1.0 bin\n" + EVAL +
                  section(tag, model, ["Si"], device, extra, steps))
        _, out = lmp.run(tag, script, nprocs, timeout=600)
        res[tag] = section_results(lmp, results(out), tag)
    for ref_tag, group in (("box_cpu", runs[1:]), ("md_cpu", md_runs[1:])):
        ref = res[ref_tag]
        print("%s: %d atoms, pe %.12g eV (cpu)" % (ref_tag, len(ref["atoms"]), ref["pe"]))
        for tag, nprocs, _, extra in group:
            err = compare(tag, res[tag], ref)
            print("ok %s %s (%d rank%s%s) vs cpu: %s" % (dev, tag, nprocs,
                  "s" if nprocs > 1 else "", ", " + extra if extra else "", describe(err)))


def case_gpu_oom(lmp, args):
    """More atoms than the GPU holds (the reference-size model, 0.1 atoms/A^3): a clean LAMMPS
    error naming DS4SCI_ERR_DEVICE_NOMEM, not a crash."""
    gpu_usable(lmp, args)
    if args.device_under_test != "cuda":
        raise Skip("gpu_oom needs device cuda")
    golden = json.load(open(os.path.join(args.golden, "typical.json")))
    model = os.path.join(args.golden, golden["model"])
    n = args.oom_cells
    script = ("units metal\natom_style atomic\nboundary p p p\n"
              "lattice sc 2.1544346900318838\nregion box block 0 %d 0 %d 0 %d\n"
              "create_box 1 box\ncreate_atoms 1 box\nmass 1 15.999\n"
              "displace_atoms all random 0.3 0.3 0.3 12345 units box\n"
              "plugin load ${plugin}\npair_style ds4sci %s device cuda\npair_coeff * * O\n"
              "neighbor 1.0 bin\nrun 0\n" % (n, n, n, model))
    rc, out = lmp.run("oom", script, 1, expect_ok=False, timeout=600)
    check(rc != 0 and rc < 128, "oom: %d^3 atoms: lmp status %d, expected a clean error:\n%s"
          % (n, rc, tail(out)))
    check("ERROR" in out and "DS4SCI_ERR_DEVICE_NOMEM" in out,
          "oom: expected an ERROR naming DS4SCI_ERR_DEVICE_NOMEM, got:\n%s" % tail(out))
    line = next(l for l in out.splitlines() if "ERROR" in l)
    print("ok oom (%d atoms): %s" % (n ** 3, line.strip()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lmp", required=True)
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--device-under-test", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--si-model", default="", help="Si potential for gpu_box")
    ap.add_argument("--box-cells", type=int, default=11, help="gpu_box: diamond cells per side")
    ap.add_argument("--cpu-threads", type=int, default=0, help="gpu_box: threads of the cpu run")
    ap.add_argument("--oom-cells", type=int, default=230,
                    help="gpu_oom: sc cells per side (230: 12.2M atoms; one H200 holds 10.08M "
                    "of this model since docs/gpu.md v23, so 220^3 = 10.6M would be too close)")
    ap.add_argument("case")
    args = ap.parse_args()
    args.golden = os.path.abspath(args.golden)
    lmp = Lammps(args)
    try:
        if args.case.startswith("golden:"):
            case_golden(lmp, args, args.case.split(":", 1)[1])
        elif args.case.startswith("gpu_golden:"):
            case_gpu_golden(lmp, args, args.case.split(":", 1)[1])
        else:
            {"ranks": case_ranks, "fd": case_fd, "nve": case_nve, "restart": case_restart,
             "units": case_units, "errors": case_errors, "runs": case_runs, "hybrid": case_hybrid,
             "gpu_hybrid": case_gpu_hybrid, "gpu_box": case_gpu_box,
             "gpu_oom": case_gpu_oom}[args.case](lmp, args)
    except Skip as e:
        print("SKIP %s: %s" % (args.case, e))
        return SKIP
    except Failure as e:
        print("FAIL %s: %s" % (args.case, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
