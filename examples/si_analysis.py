#!/usr/bin/env python3
"""Compare the shipped ET silicon potential with its teacher (Stillinger-Weber) from the runs of
examples/si_npt.in and examples/si_nve.in, print the numbers and draw the plots.

Inputs (prefixes as given to the examples with -var out / -log):
  --npt-et PREFIX --npt-sw PREFIX   PREFIX.avg (lattice constant, density, T, P) and PREFIX.rdf
  --nve-et LOG [--nve-sw LOG]       LAMMPS logs of si_nve.in (thermo column v_de)
  --nve-logs LOG [LOG ...]          drift numbers only, no plots, no matplotlib (e.g. the logs of
                                    tools/gpu_si_nve.sh, also when a run was stopped early): per log
                                    the whole-run fit, max |dE|, and fits over WINDOW-ps blocks
Outputs: --plot-rdf docs/si_model_rdf.png, --plot-nve docs/si_model_nve.png, and the numbers on
stdout (also as JSON with --json).

NVE drift: least-squares slope of the total energy per atom against time over the NVE run,
in eV/atom/ns, plus the largest excursion from the starting energy.
Needs numpy (and matplotlib for the plots).
"""
import argparse
import json

import numpy as np


def read_avg(prefix):
    rows = [l.split() for l in open(prefix + ".avg") if not l.startswith("#")]
    a, rho, t, p = (float(v) for v in rows[-1][1:5])
    return dict(lattice_constant_A=a, density_g_cm3=rho, temperature_K=t, pressure_bar=p)


def read_rdf(prefix):
    lines = [l.split() for l in open(prefix + ".rdf") if not l.startswith("#")]
    n = int(lines[0][1])  # "TimeStep Number-of-rows" header of the (single) average
    block = lines[-n:]  # last (only) average
    r = np.array([float(b[1]) for b in block])
    g = np.array([float(b[2]) for b in block])
    return r, g


def read_nve(log):
    """(time ps, de eV/atom, atoms) of the thermo block holding v_de."""
    t, de, cols, atoms = [], [], None, 0
    for line in open(log):
        s = line.split()
        if s[:2] == ["Loop", "time"] and "atoms" in s:
            atoms = int(s[s.index("atoms") - 1])
        if s and s[0] == "Step":
            cols = s if "v_de" in s else None
            continue
        if cols and len(s) == len(cols):
            try:
                vals = [float(v) for v in s]
            except ValueError:
                cols = None
                continue
            t.append(vals[cols.index("Time")])
            de.append(vals[cols.index("v_de")])
        elif cols and s[:1] == ["Loop"]:
            cols = None
    t = np.array(t) - t[0]
    return t, np.array(de), atoms


def drift(t, de):
    """Least-squares slope; its standard error assumes independent residuals (they are not
    quite: read it as the resolution of a run this long, not as a confidence interval)."""
    (slope, icpt), cov = np.polyfit(t, de, 1, cov=True)  # eV/atom/ps
    return dict(duration_ps=float(t[-1]), drift_eV_per_atom_per_ns=float(slope * 1e3),
                drift_stderr_eV_per_atom_per_ns=float(np.sqrt(cov[0, 0]) * 1e3),
                max_excursion_eV_per_atom=float(np.abs(de).max()),
                final_change_eV_per_atom=float(de[-1]))


def windows(t, de, width):
    """Fits over consecutive blocks of `width` ps (the last one only if at least half full)."""
    out = []
    start = 0.0
    while start < t[-1]:
        m = (t >= start) & (t < start + width)
        if m.sum() >= 3 and t[m][-1] - t[m][0] >= width / 2:
            slope = np.polyfit(t[m], de[m], 1)[0]
            out.append(dict(t0_ps=start, mean_eV_per_atom=float(de[m].mean()),
                            drift_eV_per_atom_per_ns=float(slope * 1e3)))
        start += width
    return out


def nve_logs(logs, width):
    out = {}
    for log in logs:
        t, de, atoms = read_nve(log)
        if len(t) < 3:
            out[log] = dict(error="fewer than 3 thermo lines of the NVE run")
            print(f"{log}: {out[log]['error']}")
            continue
        d = drift(t, de)
        d["atoms"] = atoms
        d["thermo_lines"] = int(len(t))
        d["windows"] = windows(t, de, width)
        out[log] = d
        w = d["windows"]
        print(f"{log}: {atoms} atoms, {d['duration_ps']:.2f} ps of NVE; drift "
              f"{d['drift_eV_per_atom_per_ns']:+.3e} +- {d['drift_stderr_eV_per_atom_per_ns']:.1e} "
              f"eV/atom/ns, max |dE| {d['max_excursion_eV_per_atom']:.2e} eV/atom, final "
              f"{d['final_change_eV_per_atom']:+.2e}; {width:g}-ps block means (eV/atom): "
              + " ".join(f"{x['mean_eV_per_atom']:+.1e}" for x in w))
    return out


def first_peak(r, g):
    i = int(np.argmax(g))
    # parabola through the three bins around the maximum
    if 0 < i < len(g) - 1:
        y0, y1, y2 = g[i - 1:i + 2]
        h = r[1] - r[0]
        den = y0 - 2 * y1 + y2
        return float(r[i] + (0.5 * h * (y0 - y2) / den if den else 0.0)), float(g[i])
    return float(r[i]), float(g[i])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npt-et")
    ap.add_argument("--npt-sw")
    ap.add_argument("--nve-et")
    ap.add_argument("--nve-sw")
    ap.add_argument("--plot-rdf")
    ap.add_argument("--plot-nve")
    ap.add_argument("--nve-logs", nargs="+")
    ap.add_argument("--window", type=float, default=10.0, help="block length (ps) for --nve-logs")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.nve_logs:
        out = nve_logs(args.nve_logs, args.window)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if args.npt_et and args.npt_sw:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, prefix, style in (("sw", args.npt_sw, "k-"), ("et", args.npt_et, "r--")):
            s = read_avg(prefix)
            r, g = read_rdf(prefix)
            s["rdf_first_peak_A"], s["rdf_first_peak_height"] = first_peak(r, g)
            out["npt_" + key] = s
            label = ("Stillinger-Weber (teacher)" if key == "sw" else "ET si-sw-et (ds4sci)")
            ax.plot(r, g, style, label=f"{label}: a = {s['lattice_constant_A']:.4f} A")
        d = out["npt_et"]["lattice_constant_A"] / out["npt_sw"]["lattice_constant_A"] - 1
        out["lattice_constant_rel_diff"] = d
        r, g_sw = read_rdf(args.npt_sw)
        _, g_et = read_rdf(args.npt_et)
        out["rdf_l1_diff"] = float(np.sum(np.abs(g_et - g_sw)) * (r[1] - r[0]))
        ax.set_xlabel("r (A)")
        ax.set_ylabel("g(r)")
        ax.set_title(f"Si diamond, NPT 0 bar, {out['npt_sw']['temperature_K']:.0f} K")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if args.plot_rdf:
            fig.savefig(args.plot_rdf, dpi=120)
    if args.nve_et:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, log, style in (("et", args.nve_et, "r-"), ("sw", args.nve_sw, "k-")):
            if not log:
                continue
            t, de, atoms = read_nve(log)
            out["nve_" + key] = drift(t, de)
            out["nve_" + key]["atoms"] = atoms
            label = "ET si-sw-et (ds4sci)" if key == "et" else "Stillinger-Weber (teacher)"
            ax.plot(t, de * 1e3, style, lw=0.8,
                    label=f"{label}: {out['nve_' + key]['drift_eV_per_atom_per_ns']:.2e} eV/atom/ns")
        ax.set_xlabel("t (ps)")
        ax.set_ylabel("E_tot(t) - E_tot(0) (meV/atom)")
        ax.set_title(f"Si, {out['nve_et']['atoms']} atoms, NVE, 1 fs, after 2 ps at 600 K")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if args.plot_nve:
            fig.savefig(args.plot_nve, dpi=120)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
