#!/usr/bin/env python3
"""Golden data for ds4sci, made by TorchMD-Net itself.

For each configuration: a random-weight ET model is made with TorchMD-Net's ``create_model``, every
parameter and buffer perturbed (non-zero biases, LayerNorm weights != 1, RBF parameters moved,
std/mean where standardize, atomref where the prior is on), rounded to float32, saved as a
Lightning-style checkpoint, loaded back with ``load_model`` and converted by
tools/export_torchmdnet.py (so the exporter is tested end to end). Then, for a set of systems,
TorchMD-Net's own forward (derivative=True) gives energies and forces in float64 (the float32
weights upcast) and float32, and autograd gives the float64 virial -dE/d(strain).

Neighbours come from TorchMD-Net's own op (NVIDIA Warp on the CPU). For the virial the edge vectors
the op returns are multiplied by (I + eps)^T before the model uses them: this is exactly straining
positions and box, r' = r (I + eps)^T (every minimum-image vector is a difference of strained
positions and box vectors), done on the edge vectors because the op gives no gradient with respect
to the box. The script checks each virial against central finite differences of the energy of
really strained positions and boxes, and each periodic box against an all-images neighbour search.

Regenerate (deterministic; about a minute on 2 cores):
    /opt/tvenv/bin/python tools/make_golden.py            # writes tests/golden/
    /opt/tvenv/bin/python tools/make_golden.py --cases head_norm_eps   # one case only
    /opt/tvenv/bin/python tools/make_golden.py --random-potential   # potentials/random-et-HO.*
    /opt/tvenv/bin/python tools/make_golden.py --fuzz-seeds         # tests/fuzz/corpus/
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "training"))
import export_torchmdnet  # noqa: E402
import head_eps  # noqa: E402  (the smoothed head norm, model-file key head_vector_norm_eps)

import torchmdnet  # noqa: E402
import torchmdnet.models.utils as tmd_utils  # noqa: E402
from torchmdnet.models.model import create_model, load_model  # noqa: E402

SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O"}

# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------
BASE = dict(
    model="equivariant-transformer", embedding_dimension=32, num_layers=2, num_rbf=8,
    rbf_type="expnorm", trainable_rbf=False, activation="silu", attn_activation="silu",
    neighbor_embedding=True, num_heads=4, distance_influence="both", cutoff_lower=0.0,
    cutoff_upper=5.0, max_z=100, max_num_neighbors=64, vector_cutoff=True,
    output_model="Scalar", reduce_op="add", prior_model=None, prior_args=None, derivative=True,
    precision=32, atom_filter=-1, standardize=False, box_vecs=None, static_shapes=False,
    equivariance_invariance_group="O(3)", remove_ref_energy=False,
)

CASES = {
    # the typical model: ET-MD17-like F128 L6 K32 H8, 5 A, vector_cutoff, neighbour embedding
    "typical": dict(embedding_dimension=128, num_layers=6, num_rbf=32, num_heads=8,
                    standardize=True),
    "small": dict(),
    "lower_atomref": dict(cutoff_lower=0.8, vector_cutoff=True, prior_model="Atomref",
                          prior_args={"max_z": 100, "enable": True}, standardize=True),
    "no_vector_cutoff": dict(vector_cutoff=False),
    "gauss_no_nbr": dict(rbf_type="gauss", neighbor_embedding=False, embedding_dimension=64,
                         num_heads=4, num_layers=3),
    "di_keys": dict(distance_influence="keys", embedding_dimension=16, num_heads=2),
    "di_values": dict(distance_influence="values", embedding_dimension=16, num_heads=2),
    "di_none": dict(distance_influence="none", embedding_dimension=16, num_heads=2),
    "act_ssp_tanh": dict(activation="ssp", attn_activation="tanh", embedding_dimension=16,
                         num_heads=2),
    "act_tanh_sigmoid": dict(activation="tanh", attn_activation="sigmoid",
                             embedding_dimension=16, num_heads=2, cutoff_upper=4.0),
    "act_mish_swish": dict(activation="mish", attn_activation="swish", embedding_dimension=16,
                           num_heads=2, trainable_rbf=True),
    "act_sigmoid_ssp": dict(activation="sigmoid", attn_activation="ssp", embedding_dimension=16,
                            num_heads=4, cutoff_lower=0.5, vector_cutoff=False),
    # the head's smoothed vector norm sqrt(|u|^2 + eps^2) in both gated blocks (head_eps.py);
    # eps 0.125 is of the order of this random model's |u| on these systems (median 0.20 in
    # block 0, 0.14 in block 1), so the smoothing changes energies and forces everywhere, and
    # isolated atoms (u = 0) get the norm eps. Recorded in the checkpoint's hyper_parameters,
    # from where the exporter writes it.
    "head_norm_eps": dict(head_vector_norm_eps=0.125),
}

RANDOM_POTENTIAL = dict(embedding_dimension=64, num_layers=3, num_rbf=16, num_heads=4,
                        cutoff_upper=4.0, vector_cutoff=True)


def case_args(overrides):
    args = copy.deepcopy(BASE)
    args.update(overrides)
    return args


# ---------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------
def perturb(model, gen, standardize, prior):
    """Move every parameter and buffer away from its initial value, deterministically."""
    def randn(t, scale):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) * scale

    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not torch.is_floating_point(t) or name.endswith("distance.box"):
                continue
            if name in ("std", "mean"):
                continue
            if "distance_expansion.means" in name:
                t.add_(randn(t, 0.02))
            elif "distance_expansion.betas" in name:
                t.mul_(1.0 + 0.3 * torch.rand(t.shape, generator=gen, dtype=torch.float64)
                       .to(t.dtype))
            elif "distance_expansion.offset" in name:
                t.add_(randn(t, 0.1))
            elif "distance_expansion.coeff" in name:
                t.mul_(1.25)
            elif "atomref" in name:
                t.copy_(randn(t, 1.5))
            elif name.endswith(".bias"):
                t.copy_(randn(t, 0.3))
            elif "layernorm" in name or "out_norm" in name:
                t.copy_(1.0 + randn(t, 0.3))
            else:
                t.add_(randn(t, 0.1 * float(t.std()) if t.numel() > 1 else 0.1))
        if standardize:
            model.std.fill_(1.7)
            model.mean.fill_(-3.25)


def make_checkpoint(args, seed, path):
    """A Lightning-style checkpoint of a random-weight model, weights in float32."""
    torch.manual_seed(seed)
    model = create_model(copy.deepcopy(args))
    gen = torch.Generator().manual_seed(seed)
    perturb(model, gen, args["standardize"], args["prior_model"])
    state = {"model." + k: v.detach().to(torch.float32).clone()
             for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": copy.deepcopy(args), "state_dict": state}, path)


# ---------------------------------------------------------------------------------------------
# Strain on the neighbour op's edge vectors (see the module docstring)
# ---------------------------------------------------------------------------------------------
STRAIN = {"eps": None}
_orig_pairs = tmd_utils.get_neighbor_pairs_kernel


def _strained_pairs(**kw):
    edge_index, vec, dist, num = _orig_pairs(**kw)
    eps = STRAIN["eps"]
    if eps is None:
        return edge_index, vec, dist, num
    n = int(num[0]) if vec.shape[0] > int(num[0]) else vec.shape[0]
    mat = torch.eye(3, dtype=vec.dtype) + eps.to(vec.dtype)
    vec = vec[:n] @ mat.T
    edge_index = edge_index[:, :n]
    self_loop = edge_index[0] == edge_index[1]
    r2 = (vec * vec).sum(-1)
    dist = torch.where(self_loop, torch.zeros_like(r2),
                       torch.sqrt(torch.where(self_loop, torch.ones_like(r2), r2)))
    return edge_index, vec, dist, num


tmd_utils.get_neighbor_pairs_kernel = _strained_pairs


def evaluate(model, z, pos, box, dtype):
    zt = torch.tensor(z, dtype=torch.long)
    p = torch.tensor(pos, dtype=dtype)
    b = torch.tensor(box, dtype=dtype) if box is not None else None
    e, f = model(zt, p, box=b)
    return float(e.detach().sum()), f.detach().to(torch.float64).numpy()


def energy_only(model, z, pos, box):
    zt = torch.tensor(z, dtype=torch.long)
    p = torch.tensor(pos, dtype=torch.float64)
    b = torch.tensor(box, dtype=torch.float64) if box is not None else None
    e, _ = model(zt, p, box=b)
    return float(e.detach().sum())


def virial(model, z, pos, box, fd_check=True):
    """6 numbers xx yy zz xy xz yz of W_ab = -dE/d eps_ab = sum_i F_i,a r_i,b. fd_check: also
    compare with central differences (not where a pair sits exactly on a cutoff of a model
    whose energy jumps there: the strain moves it across)."""
    eps = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    STRAIN["eps"] = eps
    model.derivative = False  # energy only: the strain gradient is taken here
    try:
        zt = torch.tensor(z, dtype=torch.long)
        p = torch.tensor(pos, dtype=torch.float64)
        b = torch.tensor(box, dtype=torch.float64) if box is not None else None
        e, _ = model(zt, p, box=b)
        (g,) = torch.autograd.grad(e.sum(), eps)
    finally:
        STRAIN["eps"] = None
        model.derivative = True
    w = -g.numpy()
    # check against finite differences of really strained positions and box
    h = 1e-6
    for a, c in () if not fd_check else ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        es = []
        for sgn in (1.0, -1.0):
            m = np.eye(3)
            m[a, c] += sgn * h
            es.append(energy_only(model, z, np.asarray(pos) @ m.T,
                                  None if box is None else np.asarray(box) @ m.T))
        fd = -(es[0] - es[1]) / (2 * h)
        scale = max(1.0, float(np.abs(w).max()))
        assert abs(fd - w[a, c]) < 1e-5 * scale, (a, c, fd, w[a, c])
    return [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------
def min_image(d, box):
    """TorchMD-Net's rounding minimum image (ET_SPEC section 1): c, then b, then a."""
    d = d.copy()
    for k in (2, 1, 0):
        d -= np.round(d[k] / box[k][k]) * np.asarray(box[k])
    return d


def check_box(pos, box, cutoff):
    """Every pair within the cutoff over all images is the single rounding-minimum image."""
    pos, box = np.asarray(pos), np.asarray(box)
    n = len(pos)
    diff = pos[:, None, :] - pos[None, :, :]                       # [n, n, 3]
    count = np.zeros((n, n), dtype=int)
    for shift in np.ndindex(5, 5, 5):
        d = diff + (np.asarray(shift) - 2) @ box
        count += (d * d).sum(-1) < cutoff * cutoff
    np.fill_diagonal(count, 0)
    assert count.max() <= 1, "more than one image of a pair within the cutoff"
    for i in range(n):
        for j in range(n):
            if i != j:
                mi = min_image(diff[i, j], box)
                assert (mi @ mi < cutoff * cutoff) == bool(count[i, j]), (i, j)


def random_positions(rng, n, lo, hi, dmin, box=None):
    pos = []
    while len(pos) < n:
        if box is None:
            p = rng.uniform(lo, hi, 3)
        else:
            p = rng.uniform(0.0, 1.0, 3) @ np.asarray(box)
        ok = True
        for q in pos:
            d = p - q if box is None else min_image(p - q, box)
            if d @ d < dmin * dmin:
                ok = False
                break
        if ok:
            pos.append(p)
    return [list(map(float, p)) for p in pos]


def systems_for(args, rng, elements):
    cu, cl = float(args["cutoff_upper"]), float(args["cutoff_lower"])
    zs = list(elements.values())
    out = []

    def add(name, z, pos, box=None):
        out.append({"name": name, "z": [int(v) for v in z], "pos": pos, "box": box})

    add("water", [8, 1, 1], [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    add("molecule_8", rng.choice(zs, 8), random_positions(rng, 8, -2.0, 2.0, 0.95))
    add("molecule_20", rng.choice(zs, 20), random_positions(rng, 20, -3.0, 3.0, 0.95))
    add("isolated_atom", [zs[-1]], [[0.25, -0.5, 1.0]])
    # a pair at exactly r = cutoff_upper (excluded: d^2 < cu^2 is false) and a third atom
    add("pair_at_cutoff", [zs[0], zs[-1], zs[1 % len(zs)]],
        [[0.0, 0.0, 0.0], [cu, 0.0, 0.0], [0.0, 1.125, 0.0]])
    add("pair_at_cutoff_only", [zs[0], zs[-1]], [[0.0, 0.0, 0.0], [0.0, 0.0, cu]])
    if cl > 0:
        # one pair below cutoff_lower (excluded) and one at exactly cutoff_lower (kept)
        add("below_lower", [zs[0], zs[1 % len(zs)], zs[-1]],
            [[0.0, 0.0, 0.0], [0.5 * cl, 0.0, 0.0], [0.0, cl, 0.0]])
    side = 2.0 * cu + 0.75
    box = [[side, 0.0, 0.0], [0.0, side + 0.5, 0.0], [0.0, 0.0, side + 1.0]]
    n = 40
    pos = random_positions(rng, n, 0, 0, 1.0, box)
    check_box(pos, box, cu)
    add("box_orthorhombic", rng.choice(zs, n), pos, box)
    tri = [[side + 0.5, 0.0, 0.0], [1.75, side, 0.0], [-1.5, 1.25, side + 0.25]]
    n = 48
    pos = random_positions(rng, n, 0, 0, 1.0, tri)
    check_box(pos, tri, cu)
    add("box_triclinic", rng.choice(zs, n), pos, tri)
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def build_case(name, overrides, seed, out_dir, elements, model_file=None, description=""):
    args = case_args(overrides)
    model_file = model_file or os.path.join(out_dir, name + ".safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, name + ".ckpt")
        make_checkpoint(args, seed, ckpt)
        config = export_torchmdnet.export(ckpt, model_file, elements,
                                          {"length": "angstrom", "energy": "eV"},
                                          os.path.splitext(os.path.basename(model_file))[0],
                                          description, dtype="float32")
        m32 = load_model(ckpt, device="cpu", derivative=True)
        args64 = dict(torch.load(ckpt, weights_only=False)["hyper_parameters"], precision=64,
                      derivative=True)
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        m64 = create_model(args64)
        m64.load_state_dict({k[len("model."):]: v.to(torch.float64) for k, v in state.items()})
    if args.get(head_eps.KEY):
        head_eps.apply(m32, args[head_eps.KEY])
        head_eps.apply(m64, args[head_eps.KEY])
        assert config[head_eps.KEY] == args[head_eps.KEY], "exporter lost head_vector_norm_eps"
    m32.eval()
    m64.eval()
    return args, config, m32, m64


def run_case(name, overrides, seed, out_dir):
    elements = {SYMBOLS[z]: z for z in (1, 6, 7, 8)}
    args, config, m32, m64 = build_case(name, overrides, seed, out_dir, elements,
                                        description=f"random weights: ds4sci golden case {name}")
    rng = np.random.default_rng(seed)
    systems = systems_for(args, rng, elements)
    for s in systems:
        e64, f64 = evaluate(m64, s["z"], s["pos"], s["box"], torch.float64)
        e32, f32 = evaluate(m32, s["z"], s["pos"], s["box"], torch.float32)
        s["energy_f64"] = e64
        s["forces_f64"] = f64.tolist()
        on_cutoff = s["name"] in ("pair_at_cutoff", "pair_at_cutoff_only", "below_lower")
        s["virial_f64"] = [float(v) for v in virial(m64, s["z"], s["pos"], s["box"],
                                                      args["vector_cutoff"] or not on_cutoff)]
        s["energy_f32"] = e32
        s["forces_f32"] = f32.tolist()
        if s["box"] is None:  # open boundaries: the virial is also sum_i F_i,a r_i,b
            w = np.asarray(f64).T @ np.asarray(s["pos"])
            ref = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
            assert np.allclose(ref, s["virial_f64"], rtol=1e-9, atol=1e-11), (name, s["name"])
    doc = {
        "model": name + ".safetensors",
        "config": config,
        "generator": {
            "torchmdnet": torchmdnet.__version__,
            "torch": torch.__version__,
            "script": "tools/make_golden.py",
            "seed": seed,
            "neighbours": "TorchMD-Net's own neighbour op (NVIDIA Warp, CPU); for the virial its "
                          "edge vectors are strained by (I + eps)^T (see the script)",
            "weights": "float32 in the model file; *_f64 are the float32 weights upcast to float64",
        },
        "systems": systems,
    }
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(systems)} systems, E(water) f64 {systems[0]['energy_f64']:.6f}")


def make_random_potential(root):
    elements = {"H": 1, "O": 8}
    out = os.path.join(root, "potentials", "random-et-HO.safetensors")
    _, _, _, m64 = build_case("random-et-HO", RANDOM_POTENTIAL, 20261129, None, elements, out,
                              "RANDOM WEIGHTS, not physics: for demonstrating and testing the "
                              "ds4sci plugin")
    water = [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]]
    e, f = evaluate(m64, [8, 1, 1], water, None, torch.float64)
    print(f"wrote {out}; TorchMD-Net float64 on the water of tests/golden: E = {e:.12f} eV, "
          f"F(O) = {f[0].tolist()}")


FUZZ_SEEDS = {
    "tiny_expnorm": (dict(), None),
    "tiny_gauss_keys": (dict(rbf_type="gauss", neighbor_embedding=False,
                             distance_influence="keys"), None),
    "tiny_atomref_std": (dict(cutoff_lower=0.5, prior_model="Atomref",
                              prior_args={"max_z": 10, "enable": True}, standardize=True), None),
    "tiny_f64_none": (dict(distance_influence="none", activation="ssp"), "float64"),
    "tiny_values_novc": (dict(distance_influence="values", vector_cutoff=False,
                              attn_activation="mish"), None),
}


def make_fuzz_seeds(root):
    """Tiny valid model files (F=2, L=1, K=2, max_z=10) as the fuzzer's seed corpus."""
    out_dir = os.path.join(root, "tests", "fuzz", "corpus")
    os.makedirs(out_dir, exist_ok=True)
    tiny = dict(embedding_dimension=2, num_heads=1, num_layers=1, num_rbf=2, max_z=10)
    for i, (name, (overrides, dtype)) in enumerate(FUZZ_SEEDS.items()):
        args = case_args(dict(tiny, **overrides))
        out = os.path.join(out_dir, name + ".safetensors")
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, name + ".ckpt")
            make_checkpoint(args, 500 + i, ckpt)
            export_torchmdnet.export(ckpt, out, {"H": 1, "O": 8},
                                     {"length": "angstrom", "energy": "eV"}, name, "", dtype)
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")


def main():
    p = argparse.ArgumentParser(description="TorchMD-Net golden data for ds4sci")
    p.add_argument("--out", default=os.path.join(HERE, "..", "tests", "golden"))
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    p.add_argument("--random-potential", action="store_true",
                   help="write potentials/random-et-HO.safetensors instead")
    p.add_argument("--fuzz-seeds", action="store_true",
                   help="write tiny model files to tests/fuzz/corpus/ instead")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.fuzz_seeds:
        make_fuzz_seeds(os.path.join(HERE, ".."))
        return
    if args.random_potential:
        make_random_potential(os.path.join(HERE, ".."))
        return
    os.makedirs(args.out, exist_ok=True)
    for i, name in enumerate(CASES):
        if name in args.cases.split(","):
            run_case(name, CASES[name], 1000 + i, args.out)


if __name__ == "__main__":
    main()
