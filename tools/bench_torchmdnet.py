#!/usr/bin/env python3
"""TorchMD-Net's own Equivariant Transformer, timed on the boxes of examples/bench_gpu.c with the
weights of a ds4sci model file: the TorchMD-Net column of tools/gpu_bench.sh.

    bench_torchmdnet.py MODEL.safetensors STEPS N [N ...]

Model: the ds4sci file's config (hyperparameters) and tensors (TorchMD-Net state-dict names, as
tools/export_torchmdnet.py writes them) go into torchmdnet.models.model.create_model and
load_state_dict(strict=True): the same weights, mean and std, no re-initialisation, fp32.

Boxes: exactly the systems of examples/bench_gpu.c for the same size list, in the same order
(simple-cubic lattice at 0.1 atoms/A^3 with +-0.3 A noise, periodic, elements drawn from the
model's list, its splitmix64 stream replayed), so the energies printed here and by bench_gpu for a
size are the same system's and must agree to fp32 round-off. Sizes are generated in list order
(the stream continues from one size to the next, as in bench_gpu) whether or not they run.

Neighbours: all directed pairs within cutoff_upper plus self-loops, from scipy's cKDTree with
the periodic box, handed to TorchMD-Net through a stand-in for torchmdnet.extensions.ops (the
real one needs NVIDIA Warp, absent on the GPU machine), as ../shared/baselines/ does: the
timing is the model's own cost (energy + forces by autograd), not the neighbour search.

Per size: two warm-up calls, then STEPS timed calls (median; each call returns the energy to
the host). Memory: peak_bytes from PyTorch's allocator (torch.cuda.max_memory_allocated: tensors
only), and device_used_bytes = the most (total - free) device memory seen after a call (CUDA
context and allocator cache included), which is what bench_gpu reports for ds4sci. Stops after
the first size that runs out of memory. energy is TorchMD-Net's; energy_without_shift subtracts
the model's `mean` (ds4sci_result.energy excludes it), so it compares with bench_gpu's energy.
One JSON line per size on stdout; $OUT/torchmdnet_bench.json.
Environment: DEV (default cuda), OUT (default .).
"""
import json
import math
import os
import struct
import sys
import time
import types

import numpy as np


def read_safetensors(path):
    """(config dict, {name: numpy array}) of a ds4sci model file, without the safetensors
    package."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    config = json.loads(meta["ds4sci.config"])
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    tensors = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype=dtypes[h["dtype"]]).reshape(h["shape"])
    return config, tensors


def torchmdnet_args(cfg):
    """TorchMD-Net hyperparameters for a ds4sci config (tools/export_torchmdnet.py's inverse)."""
    prior = None
    prior_args = None
    if cfg.get("atomref_enable"):
        prior = "Atomref"
        prior_args = {"max_z": cfg["max_z"], "enable": True}
    return dict(
        model="equivariant-transformer", embedding_dimension=cfg["hidden_channels"],
        num_layers=cfg["num_layers"], num_rbf=cfg["num_rbf"], rbf_type=cfg["rbf_type"],
        trainable_rbf=cfg["trainable_rbf"], activation=cfg["activation"],
        attn_activation=cfg["attn_activation"], neighbor_embedding=cfg["neighbor_embedding"],
        num_heads=cfg["num_heads"], distance_influence=cfg["distance_influence"],
        cutoff_lower=cfg["cutoff_lower"], cutoff_upper=cfg["cutoff_upper"],
        max_z=cfg["max_z"], max_num_neighbors=cfg["max_num_neighbors"],
        vector_cutoff=cfg["vector_cutoff"], output_model="Scalar",
        reduce_op=cfg["reduce_op"], prior_model=prior, prior_args=prior_args,
        derivative=True, precision=32, atom_filter=-1, standardize=False, box_vecs=None,
        static_shapes=False, check_errors=False, equivariance_invariance_group="O(3)",
        remove_ref_energy=False)


# ---- examples/bench_gpu.c's systems -------------------------------------------------------------
GOLDEN = 0x9E3779B97F4A7C15
SEED = 0x9E3779B97F4A7C15  # bench_gpu.c: static uint64_t rng_state = 0x9e3779b97f4a7c15ull


def splitmix_uniform(state, count):
    """The next `count` values of bench_gpu.c's urand() from `state`, and the state after."""
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state) + k * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return u, (state + count * GOLDEN) % (1 << 64)


def bench_gpu_system(want, state, element_z):
    """Positions, z, box side and the next RNG state for one size of bench_gpu."""
    a = float(np.cbrt(1.0 / 0.1))
    m = int(math.floor(np.cbrt(float(want)) + 0.5))  # lround(cbrt(want))
    n = m ** 3
    u, state = splitmix_uniform(state, 4 * n)
    u = u.reshape(n, 4)
    idx = np.arange(m, dtype=np.float64)
    g = np.stack(np.meshgrid(idx, idx, idx, indexing="ij"), -1).reshape(-1, 3)  # ix, iy, iz
    pos = (g + 0.5) * a + 0.6 * (u[:, :3] - 0.5)
    ne = len(element_z)
    z = np.asarray(element_z)[(u[:, 3] * ne).astype(np.int64) % ne]
    return pos, z, m * a, state


def edges(pos, side, rc):
    from scipy.spatial import cKDTree
    t = cKDTree(pos, boxsize=side)
    p = t.query_pairs(rc, output_type="ndarray")
    i, j = p[:, 0], p[:, 1]
    d = pos[i] - pos[j]
    sh = -np.round(d / side) * side
    n = len(pos)
    src = np.concatenate([i, j, np.arange(n)])
    dst = np.concatenate([j, i, np.arange(n)])
    shift = np.concatenate([sh, -sh, np.zeros((n, 3))])
    return src, dst, shift


def install_pair_stub():
    """torchmdnet.extensions.ops replaced by a module returning the precomputed pairs (the
    semantics of ../shared/baselines/precomputed_pairs_ops.py): edge_index = (src, dst),
    edge_vec = pos[src] - pos[dst] + shift (differentiable in the positions), distance 0 on
    self-loops."""
    import torch
    import torchmdnet.extensions as ext
    ops = types.ModuleType("torchmdnet.extensions.ops")
    ops.CACHE = {}

    def get_neighbor_pairs_kernel(strategy, positions, batch, box_vectors, use_periodic,
                                  cutoff_lower, cutoff_upper, max_num_pairs, loop,
                                  include_transpose, num_cells=0):
        src, dst, shift = ops.CACHE["edges"]
        delta = positions[src] - positions[dst] + shift
        selfm = src == dst
        r2 = (delta * delta).sum(-1)
        dist = torch.where(selfm, torch.zeros_like(r2),
                           torch.sqrt(torch.where(selfm, torch.ones_like(r2), r2)))
        ei = torch.stack([src, dst])
        num = torch.tensor([ei.shape[1]], dtype=torch.int32, device=positions.device)
        return ei, delta, dist, num

    ops.get_neighbor_pairs_kernel = get_neighbor_pairs_kernel
    ops.__all__ = ["get_neighbor_pairs_kernel"]
    sys.modules["torchmdnet.extensions.ops"] = ops
    ext.ops = ops
    return ops


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    path, steps, sizes = sys.argv[1], max(1, int(sys.argv[2])), [int(s) for s in sys.argv[3:]]
    dev = os.environ.get("DEV", "cuda")
    out_dir = os.environ.get("OUT", ".")
    import torch
    ops = install_pair_stub()
    import torchmdnet
    from torchmdnet.models.model import create_model

    cfg, tensors = read_safetensors(path)
    args = torchmdnet_args(cfg)
    model = create_model(args)
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    model = model.to(dev).eval()
    element_z = list(cfg["elements"].values())
    # TorchMD-Net adds `mean` once per system; ds4sci's energy excludes it (energy_shift)
    e_shift = float(np.asarray(tensors["mean"]).reshape(-1)[0]) if "mean" in tensors else 0.0
    print(json.dumps(dict(torchmdnet=torchmdnet.__version__, torch=torch.__version__,
                          model=cfg.get("name"), F=cfg["hidden_channels"], L=cfg["num_layers"],
                          K=cfg["num_rbf"], H=cfg["num_heads"], cutoff=cfg["cutoff_upper"],
                          weights=path, device=dev)), flush=True)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rng = SEED
    records = []
    stopped = False
    for want in sizes:
        pos, z, side, rng = bench_gpu_system(want, rng, element_z)
        n = len(pos)
        if stopped:
            continue
        src, dst, shift = edges(pos, side, cfg["cutoff_upper"])
        T = lambda a, dt: torch.tensor(a, dtype=dt, device=dev)  # noqa: E731
        ops.CACHE["edges"] = (T(src, torch.long), T(dst, torch.long), T(shift, torch.float32))
        zt = T(z, torch.long)
        x = T(pos, torch.float32)
        b = torch.zeros(n, dtype=torch.long, device=dev)
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rec = dict(atoms=n, edges=int(len(src)), edges_per_atom=len(src) / n)
        y = f = None
        try:
            times = []
            energy = None
            used = 0
            for k in range(steps + 2):
                sync()
                t0 = time.perf_counter()
                y, f = model(zt, x, b)
                e = float(y.detach().sum())  # the energy on the host, as bench_gpu's are
                sync()
                if k == 0:
                    energy = e
                if k >= 2:
                    times.append(time.perf_counter() - t0)
                if dev == "cuda":
                    free, total = torch.cuda.mem_get_info()
                    used = max(used, total - free)
            times.sort()
            dt = times[len(times) // 2]
            peak = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
            rec.update(steps=steps, s_per_step=dt, atom_steps_per_s=n / dt, peak_bytes=peak,
                       bytes_per_atom=peak / n, device_used_bytes=used,
                       energy=energy, energy_without_shift=energy - e_shift,
                       force_rms=float(f.detach().pow(2).mean().sqrt()))
        except torch.OutOfMemoryError as e:
            rec.update(oom=True, message=str(e).split("\n")[0][:200])
            stopped = True
        except RuntimeError as e:
            if "out of memory" not in str(e):
                raise
            rec.update(oom=True, message=str(e).split("\n")[0][:200])
            stopped = True
        print(json.dumps(rec), flush=True)
        records.append(rec)
        ops.CACHE.clear()
        y = f = zt = x = b = None  # noqa: F841 (free the device tensors before the next size)
        if dev == "cuda":
            torch.cuda.empty_cache()
    with open(os.path.join(out_dir, "torchmdnet_bench.json"), "w") as fo:
        json.dump(records, fo, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
