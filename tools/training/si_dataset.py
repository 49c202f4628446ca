"""Periodic extended-XYZ dataset for TorchMD-Net training (used by train.py).

TorchMD-Net's stock HDF5 and Custom datasets carry no periodic box, and WaterBox requires a
fixed atom count, so this small torch_geometric InMemoryDataset reads the extended XYZ that
gen_data.py writes (any atom count per frame, per-frame triclinic Lattice) and yields
Data(z, pos, y, neg_dy, box) exactly as WaterBox does: box has shape [1, 3, 3] (rows a, b, c,
lower-triangular reduced form), y has shape [1, 1] (total energy, eV), neg_dy the forces
(eV/A). TorchMD-Net's LNNP passes batch.box to the model, which applies the minimum image.

get_atomref() returns a per-element reference energy (eV/atom) so that the Atomref prior,
created by torchmd-train from the dataset, carries the cohesive-energy offset: the network
then learns E - N * e_ref, a number of order 0.1 eV/atom instead of -4.3 eV/atom.
"""
import os

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset


def read_extxyz(path):
    """Yield dicts (z, pos, forces, energy, cell, info) from gen_data.py's extended XYZ."""
    symbols = {"Si": 14}
    with open(path) as f:
        while True:
            line = f.readline()
            if not line:
                return
            n = int(line)
            head = f.readline()
            info = {}
            # key=value or key="v v v" tokens
            rest = head.strip()
            while rest:
                key, _, rest = rest.partition("=")
                if rest.startswith('"'):
                    val, _, rest = rest[1:].partition('"')
                else:
                    val, _, rest = rest.partition(" ")
                info[key.strip()] = val
                rest = rest.strip()
            rows = [f.readline().split() for _ in range(n)]
            z = np.array([symbols[r[0]] for r in rows], dtype=np.int64)
            arr = np.array([[float(v) for v in r[1:7]] for r in rows])
            cell = np.array([float(v) for v in info["Lattice"].split()]).reshape(3, 3)
            yield dict(z=z, pos=arr[:, :3], forces=arr[:, 3:6], energy=float(info["energy"]),
                       cell=cell, info=info)


class SiExtXYZ(InMemoryDataset):
    """root: the folder holding si_sw.extxyz (gen_data.py --out).

    energy_ref: reference energy per atom (eV) returned by get_atomref() for Z = 14.
    max_z: rows of the atomref table (must match the model's max_z for a clean export).
    """

    def __init__(self, root, energy_ref=-4.3366, max_z=100, transform=None, pre_transform=None):
        self.energy_ref = float(energy_ref)
        self.max_z = int(max_z)
        super().__init__(root, transform, pre_transform)
        self.load(self.processed_paths[0])

    @property
    def raw_dir(self):
        return self.root

    @property
    def raw_file_names(self):
        return ["si_sw.extxyz"]

    @property
    def processed_file_names(self):
        return ["si_sw.pt"]

    def download(self):
        raise FileNotFoundError(f"{self.raw_paths[0]} missing: run tools/training/gen_data.py")

    def process(self):
        data_list = []
        for fr in read_extxyz(self.raw_paths[0]):
            data_list.append(Data(
                z=torch.from_numpy(fr["z"]),
                pos=torch.tensor(fr["pos"], dtype=torch.float32),
                y=torch.tensor([[fr["energy"]]], dtype=torch.float32),
                neg_dy=torch.tensor(fr["forces"], dtype=torch.float32),
                box=torch.tensor(fr["cell"], dtype=torch.float32).view(1, 3, 3),
            ))
        self.save(data_list, self.processed_paths[0])

    def get_atomref(self):
        ref = torch.zeros(self.max_z, 1)
        ref[14] = self.energy_ref
        return ref


def frame_runs(path):
    """Run name and split of every frame, in file order."""
    return [(fr["info"]["run"], fr["info"]["split"]) for fr in read_extxyz(path)]


if __name__ == "__main__":
    import sys
    ds = SiExtXYZ(sys.argv[1])
    print(len(ds), ds[0])
    print(os.path.abspath(ds.processed_paths[0]))
