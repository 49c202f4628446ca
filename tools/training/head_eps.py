"""The smoothed head norm of ds4sci's model-file key `head_vector_norm_eps`, for TorchMD-Net 3.1.

TorchMD-Net's EquivariantScalar head has two GatedEquivariantBlocks; each feeds the plain norm
|u_c| of u = vec1_proj(v) (per atom and channel c, over the 3 Cartesian components) into its MLP.
|u| has a cone at u = 0 (docs/si_model.md, "Why the energy wanders"). With eps > 0 both blocks
use sqrt(|u_c|^2 + eps^2) instead, forward and backward (autograd), smooth at u = 0. With
eps = 0 (or absent) the block runs TorchMD-Net's own forward, unchanged, so nothing differs.

This is the one implementation used by the tools (train.py, evaluate.py, nve_diagnose.py,
export_torchmdnet.py, make_golden.py); tests: tools/training/test_head_eps.py.

    import head_eps
    head_eps.install()              # patch GatedEquivariantBlock and create_model (idempotent)
    model = head_eps.load_model(ckpt, derivative=True)   # eps from the checkpoint's hparams
    head_eps.apply(model, 3e-3)     # or set it on a model by hand (both head blocks)

install() also wraps TorchMD-Net's create_model so that a model made from hyperparameters
holding `head_vector_norm_eps` (as train.py records them in its checkpoints) gets that eps; a
checkpoint without the key loads as before (eps 0). The eps is a plain attribute of each block,
not a parameter or buffer: the state_dict, and so the exported tensors, do not change.
"""
import math

import torch

KEY = "head_vector_norm_eps"
ATTR = "head_vector_norm_eps"

_installed = {}


def check_eps(eps):
    """A valid eps (finite float >= 0) or ValueError."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{KEY} must be a finite number >= 0, got {eps!r}")
    return eps


def smoothed_norm(u, eps):
    """sqrt(|u|^2 + eps^2) over dim -2 (the 3 Cartesian components of [N, 3, C])."""
    return torch.sqrt((u * u).sum(dim=-2) + eps * eps)


def _forward(self, x, v):
    eps = getattr(self, ATTR, 0.0)
    if not eps:
        return _installed["forward"](self, x, v)          # TorchMD-Net's own, unchanged
    u = self.vec1_proj(v)
    vec1 = smoothed_norm(u, eps)                           # no zero mask needed: smooth at 0
    vec2 = self.vec2_proj(v)
    x = torch.cat([x, vec1], dim=-1)
    x, v = torch.split(self.update_net(x), self.out_channels, dim=-1)
    v = v.unsqueeze(1) * vec2
    if self.act is not None:
        x = self.act(x)
    return x, v


def eps_from_args(args):
    """head_vector_norm_eps of a hyperparameter dict / Namespace / AttributeDict (0 if absent)."""
    if args is None:
        return 0.0
    if hasattr(args, "get"):
        eps = args.get(KEY, None)
    else:
        eps = getattr(args, KEY, None)
    return check_eps(eps) if eps is not None else 0.0


def install():
    """Patch TorchMD-Net (idempotent): GatedEquivariantBlock.forward honours the block's eps, and
    create_model (wherever TorchMD-Net imported it) applies the hyperparameters' eps."""
    if _installed:
        return
    import torchmdnet.models.model as tmd_model
    import torchmdnet.models.utils as tmd_utils

    _installed["forward"] = tmd_utils.GatedEquivariantBlock.forward
    tmd_utils.GatedEquivariantBlock.forward = _forward
    orig_create = tmd_model.create_model
    _installed["create_model"] = orig_create

    def create_model(args, *a, **kw):
        model = orig_create(args, *a, **kw)
        eps = eps_from_args(args)
        if eps:
            apply(model, eps)
        return model

    tmd_model.create_model = create_model
    try:
        import torchmdnet.module as tmd_module            # LNNP (training) imported it by name
        if tmd_module.create_model is orig_create:
            tmd_module.create_model = create_model
    except ImportError:
        pass


def head_blocks(model):
    """The GatedEquivariantBlocks of a TorchMD_Net model's EquivariantScalar head."""
    from torchmdnet.models.utils import GatedEquivariantBlock
    net = getattr(model.output_model, "output_network", None)
    blocks = [b for b in (net if net is not None else []) if isinstance(b, GatedEquivariantBlock)]
    if not blocks:
        raise ValueError(f"{type(model.output_model).__name__} has no GatedEquivariantBlock head")
    return blocks


def apply(model, eps, blocks=None):
    """Set eps on the head's gated blocks (all of them, or the indices in blocks). Returns model."""
    eps = check_eps(eps)
    install()
    hb = head_blocks(model)
    for i, b in enumerate(hb):
        if blocks is None or i in blocks:
            setattr(b, ATTR, eps)
    return model


def model_eps(model):
    """The eps set on the head's blocks (0 if none; ValueError if they differ)."""
    vals = {float(getattr(b, ATTR, 0.0)) for b in head_blocks(model)}
    if len(vals) != 1:
        raise ValueError(f"head blocks have different eps {sorted(vals)}")
    return vals.pop()


def checkpoint_eps(ckpt):
    """head_vector_norm_eps recorded in a checkpoint's hyper_parameters (0 if absent)."""
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    return eps_from_args(data.get("hyper_parameters"))


def load_model(ckpt, eps=None, **kwargs):
    """torchmdnet load_model with the head eps: from the checkpoint's hparams (eps=None), or
    the given eps (overrides)."""
    install()
    from torchmdnet.models.model import load_model as tmd_load
    model = tmd_load(ckpt, **kwargs)
    if eps is not None:
        apply(model, eps)
    return model
