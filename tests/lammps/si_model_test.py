#!/usr/bin/env python3
"""CI tests of the shipped silicon potential potentials/si-sw-et.safetensors (see its model card,
potentials/si-sw-et.md) run by LAMMPS + pair_style ds4sci.

Cases:
  teacher  On held-out configurations (tests/lammps/si_data/heldout_*.data: frames of MD runs
           that were never trained on), the teacher, Stillinger-Weber, is evaluated here by an
           lmp with pair_style sw (Debian's `lmp`, package lammps) and the shipped model by the
           plugin. Each configuration's force RMSE and energy-per-atom error must lie within
           the acceptance bounds the model card states for its kind of configuration.
  nve      200 NVE steps of 1 fs from a 600 K thermalised 64-atom crystal
           (si_data/nve_start_64.data): the least-squares drift of the total energy and its
           largest excursion must stay below the bounds the model card states.

Standard library only. Usage:
  si_model_test.py --lmp LMP --plugin PLUGIN.so --model MODEL --data DIR --workdir DIR
                   [--teacher-lmp lmp] [--sw-file Si.sw] [--mpiexec MPIRUN] CASE
"""
import argparse
import glob
import math
import os
import shutil
import subprocess
import sys

# Acceptance bounds per configuration, from potentials/si-sw-et.md ("CI acceptance bounds"):
# kind -> (force RMSE eV/A, |E_model - E_teacher| / N in meV/atom), each twice the card's
# held-out RMSE of that kind (tools/training/evaluate.py, 186 test frames), rounded up, to allow
# for single-frame scatter.
BOUNDS = {
    "crystal": (0.20, 3.6),
    "vol": (0.13, 2.0),
    "yz": (0.13, 2.0),
    "vacancy": (0.24, 1.7),
    "interstitial": (0.33, 3.0),
    "surface": (0.37, 38.0),
    "liquid": (1.3, 42.0),
    "amorphous": (1.1, 36.0),
}
# NVE bounds (model card, "Energy conservation"): drift in eV/atom/ps, excursion in eV/atom.
NVE_DRIFT_BOUND = 1.0e-4
NVE_EXCURSION_BOUND = 1.0e-4


class Failure(Exception):
    pass


def find_sw_file(args):
    cands = [args.sw_file] if args.sw_file else []
    cands += ["/usr/share/lammps/potentials/Si.sw"]
    src = os.environ.get("LAMMPS_SOURCE_DIR")
    if src:
        cands.append(os.path.join(src, "..", "potentials", "Si.sw"))
    for c in cands:
        if c and os.path.exists(c):
            return os.path.abspath(c)
    raise Failure("Stillinger-Weber parameter file Si.sw not found (install Debian's lammps "
                  "package, or pass --sw-file)")


def run(cmd, workdir, name, text):
    path = os.path.join(workdir, name + ".in")
    with open(path, "w") as f:
        f.write(text)
    log = os.path.join(workdir, name + ".log")
    r = subprocess.run(cmd + ["-in", path, "-log", log, "-screen", "none"], cwd=workdir)
    if r.returncode:
        tail = open(log).read().splitlines()[-15:] if os.path.exists(log) else []
        raise Failure(f"{' '.join(cmd)} failed on {name}.in:\n" + "\n".join(tail))
    return log


def energy_forces(cmd, workdir, name, data, pair_lines):
    text = "\n".join(["units metal", "atom_style atomic", "boundary p p p", "box tilt large",
                      f"read_data {data}", *pair_lines,
                      "thermo_style custom step pe", "thermo_modify format float %.17g norm no",
                      f"dump f all custom 1 {name}.dump id fx fy fz",
                      "dump_modify f sort id format float %.17g", "run 0", ""])
    log = run(cmd, workdir, name, text)
    lines = open(log).read().splitlines()
    k = max(i for i, l in enumerate(lines) if l.split()[:2] == ["Step", "PotEng"])
    energy = float(lines[k + 1].split()[1])
    dump = open(os.path.join(workdir, name + ".dump")).read().splitlines()
    n = int(dump[3])
    forces = [[float(v) for v in l.split()[1:4]] for l in dump[9:9 + n]]
    return energy, forces


def lmp_cmd(args, lmp):
    cmd = []
    if args.mpiexec:
        cmd = [args.mpiexec, "-np", "1"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    return cmd + [lmp]


def case_teacher(args, wd):
    sw = find_sw_file(args)
    found = shutil.which(args.teacher_lmp)
    if not found:
        raise Failure(f"teacher lmp '{args.teacher_lmp}' not found (Debian: apt-get install "
                      "lammps; or pass --teacher-lmp an lmp with pair_style sw)")
    teacher = [found]
    model_lmp = lmp_cmd(args, os.path.abspath(args.lmp))
    plugin_lines = [f"plugin load {os.path.abspath(args.plugin)}",
                    f"pair_style ds4sci {os.path.abspath(args.model)} device cpu",
                    "pair_coeff * * Si"]
    files = sorted(glob.glob(os.path.join(args.data, "heldout_*.data")))
    if len(files) < 4:
        raise Failure(f"expected the held-out configurations in {args.data}, found {len(files)}")
    bad = []
    print(f"{'configuration':34s} {'N':>4s} {'F RMSE':>8s} {'bound':>6s} {'dE/N meV':>9s} "
          f"{'bound':>6s}  (teacher: {teacher[0]} pair_style sw)")
    for path in files:
        name = os.path.basename(path)[len("heldout_"):-len(".data")]
        kind = name.split("_")[0].split("+")[0].split("-")[0]
        kind = kind.rstrip("0123456789.")
        if kind not in BOUNDS:
            raise Failure(f"{name}: no acceptance bound for kind '{kind}'")
        fbound, ebound = BOUNDS[kind]
        data = os.path.abspath(path)
        et, ft = energy_forces(teacher, wd, "sw_" + name, data,
                               ["pair_style sw", f"pair_coeff * * {sw} Si"])
        em, fm = energy_forces(model_lmp, wd, "et_" + name, data, plugin_lines)
        n = len(ft)
        if len(fm) != n:
            raise Failure(f"{name}: {len(fm)} model forces, {n} teacher forces")
        sq = sum((a - b) ** 2 for fa, fb in zip(fm, ft) for a, b in zip(fa, fb))
        rmse = math.sqrt(sq / (3 * n))
        de = (em - et) / n * 1e3
        ok = rmse <= fbound and abs(de) <= ebound and math.isfinite(rmse) and math.isfinite(de)
        print(f"{name:34s} {n:4d} {rmse:8.4f} {fbound:6.2f} {de:9.2f} {ebound:6.1f}"
              f"{'' if ok else '   FAIL'}")
        if not ok:
            bad.append(name)
    if bad:
        raise Failure("outside the model card's acceptance bounds: " + ", ".join(bad))


def case_nve(args, wd):
    data = os.path.abspath(os.path.join(args.data, "nve_start_64.data"))
    steps, every = 200, 10
    text = "\n".join([
        "units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
        f"plugin load {os.path.abspath(args.plugin)}",
        f"pair_style ds4sci {os.path.abspath(args.model)} device cpu", "pair_coeff * * Si",
        "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes", "timestep 0.001",
        "fix i all nve", "thermo_style custom step time temp pe etotal",
        "thermo_modify format float %.15g norm yes", f"thermo {every}", f"run {steps}", ""])
    log = run(lmp_cmd(args, os.path.abspath(args.lmp)), wd, "nve", text)
    t, e, cols = [], [], None
    for line in open(log):
        s = line.split()
        if s[:1] == ["Step"]:
            cols = s
            continue
        if cols and len(s) == len(cols):
            try:
                vals = [float(v) for v in s]
            except ValueError:
                cols = None
                continue
            t.append(vals[cols.index("Time")])
            e.append(vals[cols.index("TotEng")])
    if len(t) != steps // every + 1:
        raise Failure(f"read {len(t)} thermo rows, expected {steps // every + 1}")
    n = len(t)
    tm, em = sum(t) / n, sum(e) / n
    slope = (sum((a - tm) * (b - em) for a, b in zip(t, e)) /
             sum((a - tm) ** 2 for a in t))  # eV/atom/ps
    exc = max(abs(x - e[0]) for x in e)
    temp = [float(l.split()[2]) for l in open(log) if l.split()[:1] == [str(steps)]]
    print(f"NVE {steps} x 1 fs, 64 atoms: drift {slope:.3e} eV/atom/ps (bound "
          f"{NVE_DRIFT_BOUND:.0e}), largest excursion {exc:.3e} eV/atom (bound "
          f"{NVE_EXCURSION_BOUND:.0e}), final T {temp[-1] if temp else float('nan'):.0f} K")
    if not (abs(slope) < NVE_DRIFT_BOUND and exc < NVE_EXCURSION_BOUND):
        raise Failure("NVE energy conservation outside the model card's bounds")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmp", required=True, help="lmp with the PLUGIN package")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="tests/lammps/si_data")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--teacher-lmp", default="lmp",
                    help="lmp with pair_style sw (MANYBODY), e.g. Debian's /usr/bin/lmp")
    ap.add_argument("--sw-file", default=None)
    ap.add_argument("--mpiexec", default=None)
    ap.add_argument("case", choices=["teacher", "nve"])
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    try:
        {"teacher": case_teacher, "nve": case_nve}[args.case](args, os.path.abspath(args.workdir))
    except Failure as e:
        print(f"FAIL ({args.case}): {e}", file=sys.stderr)
        return 1
    print(f"PASS ({args.case})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
