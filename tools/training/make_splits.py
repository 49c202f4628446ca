#!/opt/tvenv/bin/python
"""Write splits.npz (idx_train, idx_val, idx_test) for torchmd-train's --splits.

Test: every frame of the runs gen_data.py marked "test" (whole MD trajectories at held-out
state points, never seen in training). Validation: the last `--val-fraction` of the frames of
each training trajectory (a contiguous block, so it is less correlated with the training
frames than interleaved frames would be). Training: the rest.

--oversample PREFIX:K repeats the training frames of runs whose name starts with PREFIX K
times in idx_train (torchmd-train's Subset accepts repeated indices): the disordered phases
(liquid, amorphous) are the hardest to fit and the fewest frames.

Usage: make_splits.py build-si/data [--val-fraction 0.1] [--oversample liquid:3 ...]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from si_dataset import frame_runs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--name", default="splits.npz", help="output file name inside DATA")
    ap.add_argument("--oversample", action="append", default=[], metavar="PREFIX:K")
    args = ap.parse_args()
    runs = frame_runs(os.path.join(args.data, "si_sw.extxyz"))
    by_run = {}
    for i, (run, split) in enumerate(runs):
        by_run.setdefault((run, split), []).append(i)
    tr, va, te = [], [], []
    for (run, split), idx in by_run.items():
        if split == "test":
            te += idx
        else:
            nv = max(1, int(round(len(idx) * args.val_fraction)))
            k = 1
            for o in args.oversample:
                prefix, times = o.split(":")
                if run.startswith(prefix):
                    k = int(times)
            tr += idx[:-nv] * k
            va += idx[-nv:]
    out = os.path.join(args.data, args.name)
    np.savez(out, idx_train=np.array(tr), idx_val=np.array(va),
             idx_test=np.array(te))
    print(f"train {len(tr)}  val {len(va)}  test {len(te)} frames "
          f"({sum(1 for k in by_run if k[1] == 'test')} held-out runs)")


if __name__ == "__main__":
    main()
