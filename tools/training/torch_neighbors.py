"""A plain-torch stand-in for TorchMD-Net's neighbour-list op (for machines without warp-lang).

TorchMD-Net 3.x builds its neighbour list with NVIDIA Warp kernels. Where warp-lang cannot be
installed (the GPU training machine here: nothing can be fetched there and the Warp wheel is
too large to carry), `install()` puts a module in place of `torchmdnet.extensions.ops` whose
`get_neighbor_pairs_kernel` has the same semantics, written in torch (ET_SPEC.md section 1):

- pairs i != j of the same system with cutoff_lower^2 <= d^2 < cutoff_upper^2, both directions;
- minimum image by successive rounding along c, then b, then a (reduced triclinic box, one box
  per system or one for all);
- edge_vec = r[edge_index[0]] - r[edge_index[1]], edge_weight = |edge_vec|;
- one self loop per atom (loop=True) with vector 0 and distance 0, exempt from cutoff_lower;
- gradients flow to positions through edge_vec and edge_weight by autograd, and self loops
  get none (their distance is a constant 0, never a sqrt of 0, so double backward is safe).

Dense O(N^2) per batch: fine for training batches of a few thousand atoms, not for MD.
Must be installed before anything imports torchmdnet.models.
"""
import sys
import types
from typing import Tuple

import torch
from torch import Tensor


def get_neighbor_pairs_kernel(strategy: str, positions: Tensor, batch: Tensor, box_vectors: Tensor,
                              use_periodic: bool, cutoff_lower: float, cutoff_upper: float,
                              max_num_pairs: int, loop: bool, include_transpose: bool,
                              num_cells: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    assert include_transpose, "torch_neighbors: only include_transpose=True is implemented"
    n = positions.shape[0]
    dev = positions.device
    with torch.no_grad():
        same = batch[:, None] == batch[None, :]
        same.fill_diagonal_(False)
        src, dst = same.nonzero(as_tuple=True)
    vec = positions[src] - positions[dst]
    if use_periodic:
        box = box_vectors.to(positions.dtype)
        if box.dim() == 2:
            box = box.unsqueeze(0).expand(int(batch.max()) + 1, 3, 3)
        bx = box[batch[src]]  # [E, 3, 3], rows a, b, c
        with torch.no_grad():
            s2 = torch.round(vec[:, 2] / bx[:, 2, 2])
        vec = vec - s2[:, None] * bx[:, 2]
        with torch.no_grad():
            s1 = torch.round(vec[:, 1] / bx[:, 1, 1])
        vec = vec - s1[:, None] * bx[:, 1]
        with torch.no_grad():
            s0 = torch.round(vec[:, 0] / bx[:, 0, 0])
        vec = vec - s0[:, None] * bx[:, 0]
    d2 = (vec * vec).sum(-1)
    with torch.no_grad():
        keep = (d2 < cutoff_upper * cutoff_upper) & (d2 >= cutoff_lower * cutoff_lower)
    src, dst, vec, d2 = src[keep], dst[keep], vec[keep], d2[keep]
    dist = torch.sqrt(d2)
    if loop:
        idx = torch.arange(n, device=dev)
        src = torch.cat([src, idx])
        dst = torch.cat([dst, idx])
        vec = torch.cat([vec, torch.zeros(n, 3, dtype=vec.dtype, device=dev)])
        dist = torch.cat([dist, torch.zeros(n, dtype=dist.dtype, device=dev)])
    edge_index = torch.stack([src, dst]).to(torch.int32)
    num_pairs = torch.tensor([edge_index.shape[1]], dtype=torch.int32, device=dev)
    return edge_index, vec, dist, num_pairs


def install():
    """Replace torchmdnet.extensions.ops before torchmdnet's models import it."""
    mod = types.ModuleType("torchmdnet.extensions.ops")
    mod.get_neighbor_pairs_kernel = get_neighbor_pairs_kernel
    mod.__all__ = ["get_neighbor_pairs_kernel"]
    sys.modules["torchmdnet.extensions.ops"] = mod
