#!/opt/tvenv/bin/python
"""TorchMD-Net's own training entry point (torchmd-train) with the SiExtXYZ dataset registered.

torchmd-train picks datasets by name from torchmdnet.datasets; the stock ones carry no
per-frame periodic box with a variable atom count, so this wrapper adds SiExtXYZ
(si_dataset.py) to that registry and then runs torchmdnet.scripts.train.main() unchanged,
with the command line passed through (on a machine without warp-lang the neighbour-list op
is replaced by torch_neighbors.py, which has the same semantics):

    OMP_NUM_THREADS=1 nice -n 15 tools/training/train.py --conf tools/training/si_et.yaml \
        --dataset-root build-si/data --splits build-si/data/splits.npz --log-dir build-si/run

One option is added to torchmd-train's: --head-vector-norm-eps EPS (default 0; also a yaml key
head_vector_norm_eps): the head's gated blocks use sqrt(|u|^2 + EPS^2) instead of |u|
(head_eps.py, ds4sci's model-file key of the same name). It is stored in the run's input.yaml and
in every checkpoint's hyper_parameters, so head_eps.load_model, evaluate.py and
export_torchmdnet.py pick it up from the checkpoint; TorchMD-Net's own load_model ignores it.
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
import head_eps  # noqa: E402
import si_dataset  # noqa: E402
import torchmdnet.datasets as tmd_datasets  # noqa: E402

tmd_datasets.SiExtXYZ = si_dataset.SiExtXYZ
if "SiExtXYZ" not in tmd_datasets.__all__:
    tmd_datasets.__all__.append("SiExtXYZ")

import torchmdnet.scripts.train as tmd_train  # noqa: E402

_get_argparse = tmd_train.get_argparse


def get_argparse():
    parser = _get_argparse()
    parser.add_argument("--head-vector-norm-eps", default=0.0, type=head_eps.check_eps,
                        help="smoothed head norm sqrt(|u|^2 + eps^2) in both gated blocks of the "
                             "EquivariantScalar head (0: TorchMD-Net's |u|)")
    return parser


tmd_train.get_argparse = get_argparse
head_eps.install()      # create_model applies args.head_vector_norm_eps (LNNP, load_model)
main = tmd_train.main

if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
