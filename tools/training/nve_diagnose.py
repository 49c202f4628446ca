#!/usr/bin/env python3
"""Diagnose the Si ET model's NVE energy wander (docs/si_model.md, "Why the energy wanders").

Tests the hypothesis that the EquivariantScalar head's gated blocks, which feed the plain norm
n_c = |u_c|, u_c = (W1 vec)_c (a 3-vector per atom and channel, ET_SPEC.md 5 and 10.5), into
their MLP, make the energy surface non-smooth where the atoms spend their time: |u| has a cone
at u = 0 whose curvature grows as 1/|u|.

Everything here is TorchMD-Net 3.1 itself (the checkpoint), in float64 on the CPU, with forward
hooks on the head's vec1_proj layers; it never calls our own C code, so it is an independent
check of what the model is.

Subcommands (run with /opt/tvenv/bin/python, from the repository root):

  traj  DUMP [--every K] [--first F] [--last L] [--dt-fs DT] --out X.npz
        Evaluates every K-th frame (of frames F..L-1) of a LAMMPS 'custom id type x y z' dump (positions every
        DT fs): per frame, atom, head block and channel the norm |u_c| and the energy's slope
        a_c = dE/d|u_c| (= |dE/du_c|, autograd); prints the distribution of |u_c| relative to
        its channel's RMS, and the near misses: how often, per ps, a channel comes within a given
        number of its own per-femtosecond motion |du_c/dt|*1fs of zero (the integrator cannot
        resolve a cone it crosses within a step or two).
  path  DUMP --frame F [--amp A] [--points P] [--target]
        E(s) along x(s) = x0 + s d through frame F: d random (unit RMS per coordinate, scaled by A
        in Angstrom), or with --target the direction that drives the smallest head channel of
        that frame through u = 0 (least-norm solution of J d = -u0, J = du/dx by autograd),
        scaled so that s = 0.5 is the zero. Prints E, the first and second differences and where
        |u| of the tracked channel is smallest; a kink shows as a spike in the second difference
        of size ~ the jump in dE/ds times ds.
  md    DATA --steps S [--dt-fs DT] [--eps EPS] [--eps-blocks 0,1] [--thermo K] --log X.txt
        Velocity Verlet in float64 with TorchMD-Net itself, from a LAMMPS write_data file
        (positions and velocities, metal units, one type of mass 28.0855): the counterfactual.
        With --eps the head's norm |u| (in the blocks of --eps-blocks) is replaced by
        sqrt(|u|^2 + EPS^2), smooth at u = 0 and the same elsewhere to O(EPS^2/|u|); EPS = 0 is TorchMD-Net unchanged and must reproduce the
        LAMMPS run of the same data file step for step (a check of this integrator).
  logs  LOG [LOG ...]
        NVE logs of nve_diagnose.in (thermo: step time temp pe ke etotal v_de) or of `md`
        (thermo 1): RMS of v_de about its mean, end-to-end change, least-squares slope, for the
        dt-scaling test; and the wander measures of docs/si_model.md: the 50-fs running mean of
        v_de, its change from first to last window, its range, its RMS change over 0.5 ps.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import head_eps  # noqa: E402

CKPT = "build-si/v2_A_best.ckpt"     # version 2 (was /work/.device/1/A_best.ckpt, since replaced)


def load(ckpt):
    model = head_eps.load_model(ckpt, derivative=False)     # with the checkpoint's eps, if any
    model = model.double().eval()
    return model


def read_dump(path):
    """Frames of a LAMMPS custom dump (id type x y z, sorted by id): list of (step, box, pos)."""
    frames = []
    with open(path) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("ITEM: TIMESTEP"):
            step = int(lines[i + 1])
            n = int(lines[i + 3])
            lo_hi = [list(map(float, lines[i + 5 + k].split()[:2])) for k in range(3)]
            box = np.diag([hi - lo for lo, hi in lo_hi])
            cols = lines[i + 8].split()[2:]
            data = np.array([list(map(float, lines[i + 9 + k].split())) for k in range(n)])
            ix = cols.index("x")
            pos = data[:, ix:ix + 3]
            frames.append((step, box, pos))
            i += 9 + n
        else:
            i += 1
    return frames


class HeadProbe:
    """Forward hooks on the head's vec1_proj layers: keep u = W1 vec with its gradient."""

    def __init__(self, model):
        self.u = []
        self.blocks = list(model.output_model.output_network)
        for blk in self.blocks:
            blk.vec1_proj.register_forward_hook(self._hook)

    def _hook(self, mod, inp, out):
        out.retain_grad()
        self.u.append(out)

    def run(self, model, z, pos, box, need_pos_grad=False):
        self.u = []
        p = torch.tensor(pos, dtype=torch.float64, requires_grad=need_pos_grad)
        b = torch.tensor(box, dtype=torch.float64)
        e, _ = model(z, p, box=b)
        e = e.sum()
        e.backward()
        norms = [u.detach().norm(dim=1).numpy() for u in self.u]          # [N, C]
        slopes = [u.grad.norm(dim=1).numpy() for u in self.u]             # |dE/du| = |dE/dn|
        us = [u.detach().numpy().copy() for u in self.u]                  # [N, 3, C]
        return float(e.detach()), norms, slopes, us, (p.grad.numpy() if need_pos_grad else None)


def cmd_traj(a):
    model = load(a.ckpt)
    probe = HeadProbe(model)
    frames = read_dump(a.dump)[a.first:a.last:a.every]
    n = frames[0][2].shape[0]
    z = torch.full((n,), 14, dtype=torch.long)
    E, N, S, U = [], [[] for _ in probe.blocks], [[] for _ in probe.blocks], [[] for _ in probe.blocks]
    for step, box, pos in frames:
        e, norms, slopes, us, _ = probe.run(model, z, pos, box)
        E.append(e)
        for b in range(len(probe.blocks)):
            N[b].append(norms[b])
            S[b].append(slopes[b])
            U[b].append(us[b])
    E = np.array(E)
    dt = a.dt_fs * a.every                     # fs between analysed frames
    T_ps = (len(frames) - 1) * dt / 1000.0
    out = {"E": E, "steps": np.array([f[0] for f in frames])}
    print(f"{len(frames)} frames, {dt} fs apart, {T_ps:.3f} ps, {n} atoms; "
          f"E first {E[0]:.6f} eV ({E[0] / n:.6f}/atom)")
    for b in range(len(probe.blocks)):
        nb = np.array(N[b])                    # [T, N, C]
        sb = np.array(S[b])
        ub = np.array(U[b])                    # [T, N, 3, C]
        C = nb.shape[2]
        rms = np.sqrt((nb ** 2).mean(axis=(0, 1)))                    # per channel
        rel = nb / rms                                                # [T, N, C]
        # per-fs motion of u (finite difference between analysed frames)
        du = np.linalg.norm(np.diff(ub, axis=0), axis=2) / dt        # [T-1, N, C], per fs
        speed = np.median(du, axis=(0, 1))                            # typical |du/dt| per channel
        live = np.mean(sb, axis=(0, 1))                               # mean |dE/dn| per channel
        wt = live * rms                                               # energy scale per channel
        order = np.argsort(-wt)
        pct = np.percentile(rel, [0, 0.01, 0.1, 1, 5, 50])
        print(f"head block {b}: {C} channels; |u|/rms(channel) over all atoms, channels, frames: "
              f"min {pct[0]:.3g}, 0.01% {pct[1]:.3g}, 0.1% {pct[2]:.3g}, 1% {pct[3]:.3g}, "
              f"5% {pct[4]:.3g}, median {pct[5]:.3g}")
        print(f"  |dE/d|u|| per channel (mean over atoms, frames): median {np.median(live):.3g}, "
              f"max {live.max():.3g} eV/unit; |u| rms per channel: median {np.median(rms):.3g}")
        # near misses: frames where |u| < k * (its own per-fs motion); count local minima only
        ratio = nb[1:-1] / np.maximum(du[1:], 1e-300)                 # |u| / |du| per fs
        is_min = (nb[1:-1] < nb[:-2]) & (nb[1:-1] <= nb[2:])
        for k in (1.0, 3.0, 10.0):
            hits = is_min & (ratio < k)
            cnt = int(hits.sum())
            # weight by the cone's energy scale: a_c * |du| per fs (eV per fs of crossing)
            wsum = float((sb[1:-1] * du[1:])[hits].sum())
            print(f"  local minima of |u| with |u| < {k:g} x |du/dt|*1fs: {cnt} "
                  f"({cnt / T_ps / n:.3g} per atom per ps, {cnt / T_ps / n / C:.3g} per channel); "
                  f"sum of a*|du/dt| over them {wsum:.3g} eV/fs")
        top = order[:5]
        print("  top channels by a*rms (eV): " + ", ".join(
            f"c{c}: a={live[c]:.3g} rms={rms[c]:.3g} min|u|/rms={rel[:, :, c].min():.3g}" for c in top))
        out[f"norm{b}"] = nb.astype(np.float32)
        out[f"slope{b}"] = sb.astype(np.float32)
        out[f"du{b}"] = du.astype(np.float32)
    if a.out:
        np.savez_compressed(a.out, **out)
        print("wrote", a.out)


def cmd_path(a):
    model = load(a.ckpt)
    probe = HeadProbe(model)
    frames = read_dump(a.dump)
    step, box, pos0 = frames[a.frame]
    n = pos0.shape[0]
    z = torch.full((n,), 14, dtype=torch.long)
    e0, norms, slopes, us, _ = probe.run(model, z, pos0, box)
    rng = np.random.default_rng(a.seed)
    blk, atom, ch = None, None, None
    if a.target:
        # the channel with the smallest |u| relative to its channel rms, weighted by its slope
        best = None
        for b, nb in enumerate(norms):
            rel = nb / np.sqrt((nb ** 2).mean(axis=0))
            i, c = np.unravel_index(np.argmin(rel), rel.shape)
            if best is None or rel[i, c] < best[0]:
                best = (rel[i, c], b, i, c)
        _, blk, atom, ch = best
        u0 = us[blk][atom, :, ch]
        a0 = slopes[blk][atom, ch]
        # Jacobian du/dx (3 x 3n) by autograd, one row at a time
        J = np.zeros((3, 3 * n))
        for k in range(3):
            probe.u = []
            p = torch.tensor(pos0, dtype=torch.float64, requires_grad=True)
            model(z, p, box=torch.tensor(box, dtype=torch.float64))
            g, = torch.autograd.grad(probe.u[blk][atom, k, ch], p)
            J[k] = g.numpy().ravel()
        d = -np.linalg.lstsq(J, u0, rcond=None)[0]          # J d = -u0: s = 1 hits u = 0
        d = (2.0 * d).reshape(n, 3)                          # s = 0.5 hits u = 0
        print(f"target: block {blk}, atom {atom}, channel {ch}, |u0| = {np.linalg.norm(u0):.3g}, "
              f"slope a = {slopes[blk][atom, ch]:.3g}, |d| max {np.abs(d).max():.3g} A")
    else:
        d = rng.standard_normal((n, 3)) * a.amp
    s = np.linspace(0.0, 1.0, a.points)
    E, track = [], []
    for si in s:
        e, norms, slopes, us, _ = probe.run(model, z, pos0 + si * d, box)
        E.append(e)
        if blk is not None:
            track.append(norms[blk][atom, ch])
        else:
            track.append(min(float((nb / np.sqrt((nb ** 2).mean(axis=0))).min()) for nb in norms))
    E = np.array(E)
    h = s[1] - s[0]
    d1 = np.diff(E) / h
    d2 = np.diff(E, 2) / h ** 2
    print(f"path through frame {a.frame} (step {step}), {a.points} points, ds = {h:.3g}, "
          f"max |d| {np.abs(d).max():.3g} A; E(0) {E[0]:.9f} eV, E range {E.max() - E.min():.3g} eV")
    print(f"  dE/ds: range {d1.min():.6g} .. {d1.max():.6g} eV; "
          f"d2E/ds2: median {np.median(d2):.6g}, min {d2.min():.6g}, max {d2.max():.6g} eV")
    j = int(np.argmax(np.abs(d2 - np.median(d2))))
    k = int(np.argmin(track))
    print(f"  largest |d2 - median| at s = {s[j + 1]:.4f} ({d2[j]:.6g}); "
          f"tracked |u| smallest at s = {s[k]:.4f} ({track[k]:.3g})")
    # jump in dE/ds across the tracked minimum, from straight-line fits on each side
    if blk is not None:
        w = max(3, a.points // 20)
        lo = slice(max(0, k - w), max(1, k - 1))
        hi = slice(k + 2, min(len(s), k + w + 1))
        if k - 1 - max(0, k - w) >= 2 and len(s[hi]) >= 2:
            pl = np.polyfit(s[lo], E[lo], 2)
            ph = np.polyfit(s[hi], E[hi], 2)
            gl = np.polyval(np.polyder(pl), s[k])
            gh = np.polyval(np.polyder(ph), s[k])
            print(f"  dE/ds just before {gl:.6g}, just after {gh:.6g}: jump {gh - gl:.6g} eV "
                  f"(a cone a|u|, u(s) = u0 (1 - 2s), gives 4 a |u0| = {4 * a0 * np.linalg.norm(u0):.6g})")
    if a.save:
        np.savetxt(a.save, np.column_stack([s, E, np.array(track)]), header="s E track")


MVV2E = 1.0364269e-4          # LAMMPS metal: amu (A/ps)^2 -> eV
FTM2V = 1.0 / 1.0364269e-4     # eV/A / amu -> A/ps^2
MASS = 28.0855


def smooth_norm(model, eps, blocks=(0, 1)):
    """Replace GatedEquivariantBlock's |u| by sqrt(|u|^2 + eps^2) in the given head blocks
    (head_eps.py, the model-file key head_vector_norm_eps; eps = 0 or a block not listed:
    TorchMD-Net's own forward, unchanged)."""
    head_eps.apply(model, eps, blocks=set(blocks))


def read_data(path):
    lines = open(path).read().split("\n")
    box = np.zeros((3, 3))
    for k, ax in enumerate("xyz"):
        for ln in lines:
            w = ln.split()
            if len(w) == 4 and w[2:] == [ax + "lo", ax + "hi"]:
                box[k, k] = float(w[1]) - float(w[0])
    def block(name):
        i = next(j for j, ln in enumerate(lines) if ln.startswith(name))
        rows = []
        for ln in lines[i + 2:]:
            if not ln.strip():
                break
            rows.append([float(x) for x in ln.split()])
        r = np.array(rows)
        return r[np.argsort(r[:, 0])]
    at = block("Atoms")
    ve = block("Velocities")
    pos = at[:, 2:5] + at[:, 5:8] @ box        # unwrap image flags
    return box, pos, ve[:, 1:4]


def cmd_md(a):
    model = load(a.ckpt)
    if a.eps is not None:
        smooth_norm(model, a.eps, [int(b) for b in a.eps_blocks.split(",")])
    print(f"head eps per block: {[getattr(b, head_eps.ATTR, 0.0) for b in head_eps.head_blocks(model)]}")
    box, x, v = read_data(a.data)
    n = len(x)
    z = torch.full((n,), 14, dtype=torch.long)
    b = torch.tensor(box, dtype=torch.float64)
    dt = a.dt_fs / 1000.0

    def force(x):
        p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        e = model(z, p, box=b)[0].sum()
        g, = torch.autograd.grad(e, p)
        return float(e.detach()), -g.numpy()

    e, f = force(x)
    out = open(a.log, "w")
    out.write("# step time_ps pe ke etotal de_per_atom\n")
    e0 = None
    for step in range(a.steps + 1):
        ke = 0.5 * MASS * (v * v).sum() * MVV2E
        if e0 is None:
            e0 = e + ke
        if step % a.thermo == 0:
            out.write(f"{step} {step * dt:.6f} {e:.12f} {ke:.12f} {e + ke:.12f} {(e + ke - e0) / n:.6e}\n")
            out.flush()
        if step == a.steps:
            break
        v = v + 0.5 * dt * f / MASS * FTM2V
        x = x + dt * v
        e, f = force(x)
        v = v + 0.5 * dt * f / MASS * FTM2V
    out.close()


def read_log(path):
    """(t in ps from the first row, v_de per atom) of a LAMMPS log or an `md` log."""
    with open(path) as f:
        first = f.readline()
    if first.startswith("# step time_ps"):
        r = np.loadtxt(path)
        return r[:, 1] - r[0, 1], r[:, 5]
    rows, hdr = [], None
    with open(path) as f:
        for line in f:
            w = line.split()
            if w[:2] == ["Step", "Time"]:
                hdr, rows = w, []
                continue
            if hdr is not None:
                try:
                    rows.append([float(x) for x in w])
                    if len(w) != len(hdr):
                        rows.pop()
                except ValueError:
                    if rows:
                        hdr = None
    r = np.array(rows)
    return r[:, 1] - r[0, 1], r[:, 6]


def cmd_logs(a):
    for path in a.logs:
        t, de = read_log(path)
        p = np.polyfit(t, de, 1)
        print(f"{path}: {len(t)} rows, {t[-1]:.3f} ps; v_de RMS about mean {de.std():.3g}, "
              f"end {de[-1]:.3g}, max |.| {np.abs(de).max():.3g} eV/atom; slope {p[0] * 1000:.3g} "
              f"eV/atom/ns")
        dt = t[1] - t[0]
        k = max(1, int(round(0.050 / dt)))                 # 50 fs window
        m = np.convolve(de, np.ones(k) / k, mode="valid")
        lag = int(round(0.5 / dt))
        inc = m[lag:] - m[:-lag] if len(m) > lag else np.array([np.nan])
        print(f"  50-fs mean: change {m[-1] - m[0]:.3g} (from {(k - 1) / 2 * dt * 1000:.0f} to "
              f"{t[-1] * 1000 - (k - 1) / 2 * dt * 1000:.0f} fs), range {m.max() - m.min():.3g}, "
              f"RMS change over 0.5 ps {np.sqrt(np.mean(inc ** 2)):.3g} eV/atom")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=CKPT)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traj")
    t.add_argument("dump")
    t.add_argument("--every", type=int, default=1)
    t.add_argument("--first", type=int, default=0)
    t.add_argument("--last", type=int, default=None)
    t.add_argument("--dt-fs", type=float, default=1.0)
    t.add_argument("--out")
    p = sub.add_parser("path")
    p.add_argument("dump")
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--amp", type=float, default=0.02)
    p.add_argument("--points", type=int, default=201)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", action="store_true")
    p.add_argument("--save")
    m = sub.add_parser("md")
    m.add_argument("data")
    m.add_argument("--steps", type=int, default=2000)
    m.add_argument("--dt-fs", type=float, default=1.0)
    m.add_argument("--eps", type=float, default=None,
                   help="head norm eps (default: the checkpoint's head_vector_norm_eps, else 0)")
    m.add_argument("--eps-blocks", default="0,1", help="head blocks to smooth, e.g. 1")
    m.add_argument("--thermo", type=int, default=1)
    m.add_argument("--log", required=True)
    g = sub.add_parser("logs")
    g.add_argument("logs", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(1)
    {"traj": cmd_traj, "path": cmd_path, "md": cmd_md, "logs": cmd_logs}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
