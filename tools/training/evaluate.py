#!/opt/tvenv/bin/python
"""Held-out errors of a trained checkpoint against the teacher, evaluated by TorchMD-Net itself.

Loads the checkpoint with torchmdnet.models.model.load_model (derivative=True), runs every frame
of the chosen split of si_sw.extxyz one at a time (periodic box per frame) and reports, per run
kind and overall:
  energy per atom: MAE and RMSE of (E_model - E_teacher) / N (meV/atom)
  forces: MAE and RMSE over all Cartesian components (eV/A), and the RMS teacher force
Writes the table as JSON (--json) for the model card. The head's smoothed norm (head_eps.py,
model-file key head_vector_norm_eps) is applied as the checkpoint's hparams record it
(train.py --head-vector-norm-eps), or as --head-vector-norm-eps gives it (overrides).

Usage: evaluate.py CKPT build-si/data [--split test] [--json out.json] [--head-vector-norm-eps E]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import warp  # noqa: F401
except ImportError:
    import torch_neighbors

    torch_neighbors.install()
import head_eps  # noqa: E402
from si_dataset import read_extxyz  # noqa: E402


def summarize(rows):
    de = np.array([r[0] for r in rows])
    df = np.concatenate([r[1] for r in rows])
    ft = np.concatenate([r[2] for r in rows])
    return dict(frames=len(rows), atoms=int(df.size // 3),
                energy_mae_meV_per_atom=float(np.abs(de).mean() * 1e3),
                energy_rmse_meV_per_atom=float(np.sqrt((de ** 2).mean()) * 1e3),
                force_mae_eV_per_A=float(np.abs(df).mean()),
                force_rmse_eV_per_A=float(np.sqrt((df ** 2).mean())),
                force_rms_teacher_eV_per_A=float(np.sqrt((ft ** 2).mean())),
                force_max_abs_error_eV_per_A=float(np.abs(df).max()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--splits", default=None, help="splits.npz (default DATA/splits.npz)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--head-vector-norm-eps", type=head_eps.check_eps, default=None,
                    help="smoothed head norm eps (default: the checkpoint's, else 0)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = head_eps.load_model(args.checkpoint, eps=args.head_vector_norm_eps, derivative=True)
    model.eval()
    eps = head_eps.model_eps(model)
    print(f"head_vector_norm_eps = {eps:g}")
    splits = np.load(args.splits or os.path.join(args.data, "splits.npz"))
    wanted = set(int(i) for i in splits["idx_" + args.split])
    runs = {r["name"]: r for r in json.load(open(os.path.join(args.data, "runs.json")))["runs"]}
    by_kind = {}
    for i, fr in enumerate(read_extxyz(os.path.join(args.data, "si_sw.extxyz"))):
        if i not in wanted:
            continue
        z = torch.from_numpy(fr["z"])
        pos = torch.tensor(fr["pos"], dtype=torch.float32, requires_grad=True)
        box = torch.tensor(fr["cell"], dtype=torch.float32).view(1, 3, 3)
        y, f = model(z, pos, batch=torch.zeros_like(z), box=box)
        n = len(z)
        row = ((float(y.detach()) - fr["energy"]) / n,
               (f.detach().double().numpy() - fr["forces"]).ravel(), fr["forces"].ravel())
        kind = runs[fr["info"]["run"]]["kind"]
        by_kind.setdefault(kind, []).append(row)
    table = {k: summarize(v) for k, v in by_kind.items()}
    table["all"] = summarize([r for v in by_kind.values() for r in v])
    print(f"{'kind':14s} {'frames':>6s} {'E MAE':>8s} {'E RMSE':>8s}  {'F MAE':>7s} {'F RMSE':>7s} "
          f"{'F rms':>6s}  (meV/atom, eV/A; split {args.split})")
    for k, s in table.items():
        print(f"{k:14s} {s['frames']:6d} {s['energy_mae_meV_per_atom']:8.2f} "
              f"{s['energy_rmse_meV_per_atom']:8.2f}  {s['force_mae_eV_per_A']:7.3f} "
              f"{s['force_rmse_eV_per_A']:7.3f} {s['force_rms_teacher_eV_per_A']:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(checkpoint=os.path.basename(args.checkpoint), split=args.split,
                           head_vector_norm_eps=eps, errors=table), f, indent=1)


if __name__ == "__main__":
    main()
