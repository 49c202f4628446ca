#!/opt/tvenv/bin/python
"""TorchMD-Net's own training entry point (torchmd-train) with the SiExtXYZ dataset registered.

torchmd-train picks datasets by name from torchmdnet.datasets; the stock ones carry no
per-frame periodic box with a variable atom count, so this wrapper adds SiExtXYZ
(si_dataset.py) to that registry and then runs torchmdnet.scripts.train.main() unchanged,
with the command line passed through (on a machine without warp-lang the neighbour-list op
is replaced by torch_neighbors.py, which has the same semantics):

    OMP_NUM_THREADS=1 nice -n 15 tools/training/train.py --conf tools/training/si_et.yaml \
        --dataset-root build-si/data --splits build-si/data/splits.npz --log-dir build-si/run
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import warp  # noqa: F401  (TorchMD-Net 3.x's neighbour list runs on Warp)
except ImportError:
    # e.g. the GPU machine, where warp-lang cannot be installed: same op in plain torch
    import torch_neighbors

    torch_neighbors.install()
    print("train.py: warp-lang not found, using torch_neighbors (plain-torch neighbour list)")
import si_dataset  # noqa: E402
import torchmdnet.datasets as tmd_datasets  # noqa: E402

tmd_datasets.SiExtXYZ = si_dataset.SiExtXYZ
if "SiExtXYZ" not in tmd_datasets.__all__:
    tmd_datasets.__all__.append("SiExtXYZ")

from torchmdnet.scripts.train import main  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
