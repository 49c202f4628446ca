#!/opt/tvenv/bin/python
"""Make a --load-weights checkpoint for a new cutoff from a trained one (warm start).

torchmd-train's --load-weights loads a state dict strictly, and the ExpNormal RBF's means and
betas are (non-trainable) buffers in it that depend on cutoff_lower/cutoff_upper. This copies
every learned weight of SRC and replaces only those buffers with the values TorchMD-Net's
ExpNormalSmearing computes for the new cutoffs, so that the warm-started model is exactly the
architecture the config describes (the cosine cutoff itself holds no state):

    tools/training/warm_start.py build-si/stage2/best.ckpt warm.ckpt --cutoff-upper 5.0
"""
import argparse

import torch
from torchmdnet.models.utils import ExpNormalSmearing


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--cutoff-upper", type=float, required=True)
    ap.add_argument("--cutoff-lower", type=float, default=0.0)
    a = ap.parse_args()
    ck = torch.load(a.src, map_location="cpu", weights_only=False)
    hp = ck["hyper_parameters"]
    assert hp["rbf_type"] == "expnorm" and not hp["trainable_rbf"], "only fixed expnorm RBFs"
    rbf = ExpNormalSmearing(a.cutoff_lower, a.cutoff_upper, hp["num_rbf"], trainable=False)
    sd = ck["state_dict"]
    changed = []
    for k in list(sd):
        for name in ("means", "betas"):
            if k.endswith("distance_expansion." + name):
                new = getattr(rbf, name).to(sd[k].dtype)
                assert new.shape == sd[k].shape, (k, new.shape, sd[k].shape)
                sd[k] = new
                changed.append(k)
    assert changed, "no distance_expansion buffers found"
    old = (hp.get("cutoff_lower"), hp.get("cutoff_upper"))
    hp["cutoff_lower"], hp["cutoff_upper"] = a.cutoff_lower, a.cutoff_upper
    torch.save({"state_dict": sd, "hyper_parameters": hp}, a.dst)
    print(f"{a.src} -> {a.dst}: {len(sd)} tensors, replaced {changed} for cutoff "
          f"[{a.cutoff_lower}, {a.cutoff_upper}] (was [{old[0]}, {old[1]}] in the source)")


if __name__ == "__main__":
    main()
