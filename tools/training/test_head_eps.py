#!/opt/tvenv/bin/python
"""Tests of head_eps.py (the smoothed head norm, model-file key head_vector_norm_eps).

Run: /opt/tvenv/bin/python tools/training/test_head_eps.py   (CPU, float64, ~20 s; exit 1 on failure)

Independent expectations: TorchMD-Net's own GatedEquivariantBlock.forward (eps -> 0 limit),
the formula sqrt(|u|^2 + eps^2) evaluated in numpy from the block's own weights, central finite
differences of the energy (forces), the energy along a path through u = 0 (kink without eps,
none with), and the checkpoint round trip through train.py's hparams key.
"""
import copy
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import head_eps  # noqa: E402

from torchmdnet.models.model import create_model  # noqa: E402  (before install: the original)
import torchmdnet.models.utils as tmd_utils  # noqa: E402

ORIG_FORWARD = tmd_utils.GatedEquivariantBlock.forward

ARGS = dict(
    model="equivariant-transformer", embedding_dimension=16, num_layers=2, num_rbf=8,
    rbf_type="expnorm", trainable_rbf=False, activation="silu", attn_activation="silu",
    neighbor_embedding=True, num_heads=2, distance_influence="both", cutoff_lower=0.0,
    cutoff_upper=4.0, max_z=20, max_num_neighbors=64, vector_cutoff=True,
    output_model="Scalar", reduce_op="add", prior_model=None, prior_args=None, derivative=True,
    precision=64, atom_filter=-1, standardize=False, box_vecs=None, static_shapes=False,
    equivariance_invariance_group="O(3)", remove_ref_energy=False,
)

FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)


def model64(seed=3):
    torch.manual_seed(seed)
    m = create_model(copy.deepcopy(ARGS))
    with torch.no_grad():                     # non-trivial head weights
        for name, p in m.named_parameters():
            if name.startswith("output_model"):
                p.add_(0.2 * torch.randn_like(p))
    return m.double().eval()


def system(seed=5, n=12):
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.choice([1, 6, 8], n), dtype=torch.long)
    pos = rng.uniform(-2.0, 2.0, (n, 3))
    return z, pos


def energy_forces(m, z, pos):
    p = torch.tensor(pos, dtype=torch.float64)
    e, f = m(z, p)
    return float(e.sum().detach()), f.detach().numpy()


def head_inputs(m, z, pos):
    """(x, v) entering head block 0, and u = vec1_proj(v) of both blocks (numpy)."""
    got = {}
    blocks = head_eps.head_blocks(m)

    def pre(i):
        def hook(mod, inp):
            got[i] = (inp[0].detach().clone(), inp[1].detach().clone())
        return hook
    hs = [b.register_forward_pre_hook(pre(i)) for i, b in enumerate(blocks)]
    energy_forces(m, z, pos)
    for h in hs:
        h.remove()
    return got


def main():
    torch.set_num_threads(1)
    m = model64()
    z, pos = system()
    ref_e, ref_f = energy_forces(m, z, pos)               # TorchMD-Net, before install()
    head_eps.install()
    head_eps.install()                                      # idempotent
    check(head_eps._installed["forward"] is ORIG_FORWARD, "install keeps TorchMD-Net's forward")

    # eps = 0: TorchMD-Net exactly (bit for bit)
    head_eps.apply(m, 0.0)
    e0, f0 = energy_forces(m, z, pos)
    check(e0 == ref_e and np.array_equal(f0, ref_f), "eps = 0: energy and forces bit-identical")

    # the re-implemented block body equals TorchMD-Net's as eps -> 0
    head_eps.apply(m, 1e-9)
    e9, f9 = energy_forces(m, z, pos)
    check(abs(e9 - ref_e) < 1e-10 * max(1, abs(ref_e)) and np.abs(f9 - ref_f).max() < 1e-8,
          f"eps = 1e-9 -> TorchMD-Net (dE {e9 - ref_e:.2e}, dF {np.abs(f9 - ref_f).max():.2e})")

    # eps > 0: each block's norm feature is sqrt(|u|^2 + eps^2), from the block's own weights
    eps = 0.05
    head_eps.apply(m, eps)
    check(head_eps.model_eps(m) == eps, "model_eps reads back the eps of both blocks")
    got = head_inputs(m, z, pos)
    blocks = head_eps.head_blocks(m)
    for i, b in enumerate(blocks):
        x, v = got[i]
        W1 = b.vec1_proj.weight.detach().numpy()
        W2 = b.vec2_proj.weight.detach().numpy()
        u = np.einsum("nkc,dc->nkd", v.numpy(), W1)                 # [N, 3, C]
        n_s = np.sqrt((u * u).sum(axis=1) + eps * eps)
        h = np.concatenate([x.numpy(), n_s], axis=1)
        lay = b.update_net.layers
        a = h @ lay[0].weight.detach().numpy().T + lay[0].bias.detach().numpy()
        a = a / (1.0 + np.exp(-a))                                   # silu
        o = a @ lay[2].weight.detach().numpy().T + lay[2].bias.detach().numpy()
        xo, go = o[:, :b.out_channels], o[:, b.out_channels:]
        vo = go[:, None, :] * np.einsum("nkc,dc->nkd", v.numpy(), W2)
        if b.act is not None:
            xo = xo / (1.0 + np.exp(-xo))
        tx, tv = b(x, v)
        check(np.abs(tx.detach().numpy() - xo).max() < 1e-12 and
              np.abs(tv.detach().numpy() - vo).max() < 1e-12,
              f"block {i}: output = MLP([x, sqrt(|u|^2+eps^2)]) gating W2 v (numpy)")
    e5, f5 = energy_forces(m, z, pos)
    check(abs(e5 - ref_e) > 1e-6, f"eps = {eps}: the energy changes ({e5 - ref_e:.3e} eV)")

    # forces are -dE/dx (central differences, float64)
    h = 1e-5
    worst = 0.0
    for i in range(len(z)):
        for k in range(3):
            pp, pm = pos.copy(), pos.copy()
            pp[i, k] += h
            pm[i, k] -= h
            fd = -(energy_forces(m, z, pp)[0] - energy_forces(m, z, pm)[0]) / (2 * h)
            worst = max(worst, abs(fd - f5[i, k]))
    check(worst < 1e-7, f"eps = {eps}: forces = -dE/dx by central differences (max err {worst:.1e})")

    # an isolated atom (u = 0 exactly): finite energy and gradient, vec1 = eps
    zi = torch.tensor([6, 8], dtype=torch.long)
    pi = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    ei, fi = energy_forces(m, zi, pi)
    check(np.isfinite(ei) and np.all(np.isfinite(fi)) and np.abs(fi).max() == 0.0,
          "isolated atoms (u = 0): finite energy, zero forces")

    # smoothness at u = 0: in a symmetric 3-atom chain the middle atom's vector features
    # vanish (mirror symmetry) and change sign along the asymmetric shift s of the outer two:
    # its u passes through 0 at s = 0, a kink in E(s) with |u|, none with the smoothed norm.
    zc = torch.tensor([6, 1, 6], dtype=torch.long)

    def chain(s):
        return np.array([[-1.5 + s, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5 + s, 0.0, 0.0]])

    def d2(mm):
        ss = np.linspace(-2e-3, 2e-3, 41)
        es = np.array([energy_forces(mm, zc, chain(s))[0] for s in ss])
        return np.diff(es, 2) / (ss[1] - ss[0]) ** 2
    head_eps.apply(m, 0.0)
    k0 = d2(m)
    head_eps.apply(m, eps)
    k1 = d2(m)
    spike0 = np.abs(k0 - np.median(k0)).max()
    spike1 = np.abs(k1 - np.median(k1)).max()
    check(spike0 > 20 * spike1, f"through u = 0: |u| gives a kink (d2E spike {spike0:.2e}), "
          f"sqrt(|u|^2+eps^2) none ({spike1:.2e})")

    # state_dict unchanged by apply (the model file's tensors do not change)
    sd = m.state_dict()
    check(not any("eps" in k for k in sd), "apply adds nothing to the state_dict")

    # checkpoint round trip: train.py records the key in hyper_parameters
    with tempfile.TemporaryDirectory() as tmp:
        for val in (None, 0.0, 3e-3):
            args = dict(ARGS, precision=32)
            if val is not None:
                args[head_eps.KEY] = val
            path = os.path.join(tmp, "m.ckpt")
            mm = create_model(copy.deepcopy(dict(ARGS, precision=32)))
            torch.save({"hyper_parameters": args,
                        "state_dict": {"model." + k: v for k, v in mm.state_dict().items()}}, path)
            want = val or 0.0
            lm = head_eps.load_model(path, derivative=True)
            check(head_eps.checkpoint_eps(path) == want and head_eps.model_eps(lm) == want,
                  f"checkpoint hparams {head_eps.KEY}={val}: load_model gives eps {want}")
            lm = head_eps.load_model(path, eps=1e-2, derivative=True)
            check(head_eps.model_eps(lm) == 1e-2, "load_model(eps=...) overrides the checkpoint")

    for bad in (-1e-3, float("nan"), float("inf")):
        try:
            head_eps.check_eps(bad)
            ok = False
        except ValueError:
            ok = True
        check(ok, f"eps {bad} refused")

    print(f"{len(FAILS)} failed" if FAILS else "all passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
