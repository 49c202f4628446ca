#!/usr/bin/env python3
"""Convert a TorchMD-Net Equivariant Transformer checkpoint (.ckpt) to a ds4sci model file.

The checkpoint is loaded through TorchMD-Net's own ``torchmdnet.models.model.load_model``, so old
key names and missing buffers are handled exactly as TorchMD-Net handles them; the tensors written
are ``model.state_dict()`` (keys without the Lightning ``model.`` prefix). The hyperparameters are
read back from the instantiated modules (not only from the checkpoint's dict), so what is written
is what TorchMD-Net would run. The format is described in docs/model_format.md; the C loader
(gnn/model_file.c) is the judge of a file, not this script.

The optional key head_vector_norm_eps (the head's smoothed vector norm sqrt(|u|^2 + eps^2),
tools/training/head_eps.py) is written only when eps > 0: from --head-vector-norm-eps, else from
the checkpoint's hyper_parameters (tools/training/train.py records it there), else 0 (absent:
TorchMD-Net's plain |u|, and the file is exactly what it was before the key existed).

Example:
    python tools/export_torchmdnet.py epoch=99.ckpt water.safetensors \\
        --elements H:1,O:8 --units angstrom,eV --name water-et
"""
import argparse
import json
import math
import re
import struct
import sys

FORMAT_VERSION = "1"
HEAD_EPS_KEY = "head_vector_norm_eps"
LENGTH_UNITS = ("angstrom", "nm", "bohr")
ENERGY_UNITS = ("eV", "kcal/mol", "kJ/mol", "hartree")
SUPPORTED_ACTIVATIONS = ("ssp", "silu", "tanh", "sigmoid", "swish", "mish")


class ExportError(Exception):
    pass


def parse_elements(text):
    """'H:1,O:8' -> {'H': 1, 'O': 8} (insertion order kept)."""
    elements = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        sym, sep, z = item.partition(":")
        if not sep or not sym.strip() or not z.strip().isdigit():
            raise ExportError(f"--elements: '{item}' is not SYMBOL:Z (e.g. H:1)")
        sym = sym.strip()
        if not re.fullmatch(r"[A-Za-z0-9_+-]{1,15}", sym):
            raise ExportError(f"--elements: symbol '{sym}' must be 1-15 characters of "
                              "A-Z a-z 0-9 _ - +")
        if sym in elements:
            raise ExportError(f"--elements: {sym} given twice")
        elements[sym] = int(z)
    if not elements:
        raise ExportError("--elements: no elements given (e.g. --elements H:1,O:8)")
    return elements


def parse_units(text):
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ExportError(f"--units: '{text}' is not LENGTH,ENERGY (e.g. angstrom,eV)")
    length, energy = parts
    if length not in LENGTH_UNITS:
        raise ExportError(f"--units: length unit '{length}' not one of {', '.join(LENGTH_UNITS)}")
    if energy not in ENERGY_UNITS:
        raise ExportError(f"--units: energy unit '{energy}' not one of {', '.join(ENERGY_UNITS)}")
    return {"length": length, "energy": energy}


def parse_head_eps(value, where):
    """A head_vector_norm_eps value: a finite number >= 0."""
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: {HEAD_EPS_KEY} '{value}' is not a number") from None
    if not math.isfinite(eps) or eps < 0:
        raise ExportError(f"{where}: {HEAD_EPS_KEY} must be a finite number >= 0, got {value}")
    return eps


def checkpoint_head_eps(ckpt):
    """head_vector_norm_eps from a checkpoint's hyper_parameters (0 when absent)."""
    import torch
    try:
        hp = torch.load(ckpt, map_location="cpu", weights_only=False).get("hyper_parameters") or {}
    except Exception:  # unreadable checkpoints are reported by load_model with its reason
        return 0.0
    value = hp.get(HEAD_EPS_KEY) if hasattr(hp, "get") else getattr(hp, HEAD_EPS_KEY, None)
    return 0.0 if value is None else parse_head_eps(value, f"{ckpt} hyper_parameters")


def model_config(model, elements, units, name, description):
    """The ds4sci.config object for an instantiated TorchMD_Net model. Refuses what ds4sci
    does not run, with the reason."""
    import torchmdnet
    from torchmdnet.models.output_modules import EquivariantScalar
    from torchmdnet.models.torchmd_et import TorchMD_ET

    rep = model.representation_model
    if not isinstance(rep, TorchMD_ET):
        raise ExportError(
            f"representation model is {type(rep).__name__}, ds4sci runs only the Equivariant "
            "Transformer (model: equivariant-transformer; an AtomFilter wrapper is not supported)")
    if type(model.output_model) is not EquivariantScalar:
        raise ExportError(
            f"output model is {type(model.output_model).__name__}, ds4sci runs only "
            "EquivariantScalar (output_model: Scalar)")
    reduce_op = model.output_model.reduce_op
    if reduce_op not in ("add", "sum"):
        raise ExportError(f"reduce_op is '{reduce_op}', ds4sci supports only add/sum")

    prior_model, atomref_enable = None, False
    priors = list(model.prior_model) if model.prior_model is not None else []
    if priors:
        names = [type(p).__name__ for p in priors]
        if names != ["Atomref"]:
            raise ExportError(f"prior models {names}: ds4sci supports none or a single Atomref")
        prior_model, atomref_enable = "Atomref", bool(priors[0].enable)

    layer0 = rep.attention_layers[0]
    for act in (rep.activation, rep.attn_activation):
        if act not in SUPPORTED_ACTIVATIONS:
            raise ExportError(f"activation '{act}' is not supported by ds4sci")
    max_z = int(rep.max_z)
    for sym, z in elements.items():
        if not 0 <= z < max_z:
            raise ExportError(f"--elements: {sym}:{z} outside the embedding (max_z = {max_z})")

    return {
        "model": "equivariant-transformer",
        "output_model": "EquivariantScalar",
        "hidden_channels": int(rep.hidden_channels),
        "num_layers": int(rep.num_layers),
        "num_rbf": int(rep.num_rbf),
        "num_heads": int(rep.num_heads),
        "rbf_type": rep.rbf_type,
        "trainable_rbf": bool(rep.trainable_rbf),
        "activation": rep.activation,
        "attn_activation": rep.attn_activation,
        "neighbor_embedding": rep.neighbor_embedding is not None,
        "distance_influence": rep.distance_influence,
        "cutoff_lower": float(rep.cutoff_lower),
        "cutoff_upper": float(rep.cutoff_upper),
        "vector_cutoff": bool(layer0.vector_cutoff),
        "max_z": max_z,
        "max_num_neighbors": int(-rep.distance.max_num_pairs)
        if rep.distance.max_num_pairs < 0 else int(rep.distance.max_num_pairs),
        "reduce_op": "add",
        "prior_model": prior_model,
        "atomref_enable": atomref_enable,
        "elements": elements,
        "units": units,
        "name": name,
        "description": description,
        "torchmdnet_version": getattr(torchmdnet, "__version__", "unknown"),
    }


def write_safetensors(path, tensors, metadata):
    """tensors: {name: torch.Tensor (float32 or float64)}; metadata: {str: str}.
    Data is written little-endian, row-major, in name order, 8-byte aligned."""
    import numpy as np
    import torch

    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype == torch.float32:
            dtype, arr = "F32", t.numpy().astype("<f4", copy=False)
        elif t.dtype == torch.float64:
            dtype, arr = "F64", t.numpy().astype("<f8", copy=False)
        else:
            raise ExportError(f"tensor {name}: dtype {t.dtype}, expected float32 or float64")
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def export(ckpt, out, elements, units, name, description="", dtype=None, enable_atomref=False,
           head_vector_norm_eps=None):
    """Checkpoint -> model file. Returns the config written. dtype: None (keep), 'float32' or
    'float64'. head_vector_norm_eps: None (the checkpoint's hyper_parameters, else 0) or a
    number >= 0; written to the config only when > 0."""
    import torch
    from torchmdnet.models.model import load_model

    kwargs = {"remove_ref_energy": False} if enable_atomref else {}
    try:
        model = load_model(ckpt, device="cpu", **kwargs)
    except KeyError as e:
        raise ExportError(f"{ckpt}: checkpoint lacks hyperparameter {e} (not a TorchMD-Net "
                          "checkpoint?)") from e
    except RuntimeError as e:
        if re.search(r"vec[12]?_proj\.bias", str(e)):
            raise ExportError(f"{ckpt}: vector-feature biases (vec_proj.bias / vec1_proj.bias) "
                              "mark a TorchMD-Net model from before 0.2.1 (2022), whose ET math "
                              "ds4sci does not implement") from e
        raise ExportError(f"{ckpt}: TorchMD-Net could not load it: {e}") from e
    if not hasattr(model, "representation_model"):
        raise ExportError(f"{ckpt}: loaded a {type(model).__name__}, expected one TorchMD_Net "
                          "model (ensembles are not supported)")
    config = model_config(model, elements, units, name, description)
    if head_vector_norm_eps is None:
        eps = checkpoint_head_eps(ckpt)
    else:
        eps = parse_head_eps(head_vector_norm_eps, "--head-vector-norm-eps")
    if eps > 0:
        config[HEAD_EPS_KEY] = eps
    tensors = {}
    for key, value in model.state_dict().items():
        if not torch.is_floating_point(value):
            raise ExportError(f"tensor {key}: dtype {value.dtype}, expected floating point")
        if dtype == "float32":
            value = value.to(torch.float32)
        elif dtype == "float64":
            value = value.to(torch.float64)
        tensors[key] = value
    metadata = {"ds4sci.format": FORMAT_VERSION,
                "ds4sci.config": json.dumps(config, separators=(",", ":"))}
    write_safetensors(out, tensors, metadata)
    return config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="TorchMD-Net Lightning checkpoint (.ckpt)")
    p.add_argument("output", help="model file to write (.safetensors)")
    p.add_argument("--elements", required=True,
                   help="element symbol -> embedding row (atomic number), e.g. H:1,C:6,O:8; a "
                        "checkpoint does not know its element names")
    p.add_argument("--units", required=True,
                   help="LENGTH,ENERGY units of the training data, e.g. angstrom,eV or "
                        "angstrom,kcal/mol")
    p.add_argument("--name", default=None, help="model name (default: the output file's stem)")
    p.add_argument("--description", default="", help="one-line description")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="tensor dtype in the file (default: keep the checkpoint's)")
    p.add_argument("--enable-atomref", action="store_true",
                   help="load with remove_ref_energy=False, enabling an Atomref prior that was "
                        "disabled for training (delta learning), to predict total energies")
    p.add_argument("--head-vector-norm-eps", default=None, metavar="EPS",
                   help="smoothed head norm sqrt(|u|^2 + EPS^2) in both gated blocks of the head "
                        "(default: the checkpoint's hyper_parameters head_vector_norm_eps, else 0; "
                        "written only when > 0)")
    args = p.parse_args(argv)
    import os
    name = args.name if args.name is not None else os.path.splitext(os.path.basename(args.output))[0]
    try:
        config = export(args.checkpoint, args.output, parse_elements(args.elements),
                        parse_units(args.units), name, args.description, args.dtype,
                        args.enable_atomref, args.head_vector_norm_eps)
    except ExportError as e:
        print(f"export_torchmdnet: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: F={config['hidden_channels']} L={config['num_layers']} "
          f"K={config['num_rbf']} H={config['num_heads']} cutoff={config['cutoff_upper']} "
          f"elements={','.join(config['elements'])}"
          + (f" {HEAD_EPS_KEY}={config[HEAD_EPS_KEY]:g}" if HEAD_EPS_KEY in config else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
