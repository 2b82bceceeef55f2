"""Why GN with 8 groups collapses here: its last norm layer normalizes pairs of numbers.

The last norm layer of normlab's network follows global average pooling, so each of its 16
channels holds one number per image. GroupNorm(g, 16) normalizes groups of 16/g numbers; with
g = 8 that is two numbers, and (x - mean)/std of two numbers is +-1 (up to eps). This script
measures, for each committed gn-groups model (seed 1), the share of that layer's normalized values
within 0.01 of +-1, on the first 2,000 MNIST test images.

    python benchmarks/last_norm_saturation.py [results/gn-groups] [results/last-norm-saturation.json]

It prints a table and writes the same figures as JSON (the second argument).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import normlab
from normlab.data import load


def saturation(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, float]:
    """(values per group, share of normalized values within 0.01 of +-1) at the last GroupNorm."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)][-1]
    seen = {}

    def hook(module, inputs, output):
        v = inputs[0].reshape(inputs[0].shape[0], module.num_groups, -1)
        z = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + module.eps)
        seen["per_group"], seen["share"] = v.shape[-1], ((z.abs() - 1).abs() < 0.01).float().mean().item()

    handle = last.register_forward_hook(hook)
    with torch.no_grad():
        model(images)
    handle.remove()
    return seen["per_group"], seen["share"]


def main(study: Path, out: Path) -> None:
    images, _ = load("mnist", "test")
    rows = []
    print("| groups | values per group at the last norm | normalized values within 0.01 of ±1 |")
    print("|---:|---:|---:|")
    for groups in (1, 2, 4, 8):
        model = normlab.load_model(study / f"gn-g{groups}-seed1" / "model.pt")
        per_group, share = saturation(model, images[:2000])
        print(f"| {groups} | {per_group} | {share:.1%} |")
        rows.append({"groups": groups, "values_per_group": per_group, "share_within_0.01_of_1": round(share, 4),
                     "model": f"{study.name}/gn-g{groups}-seed1"})
    out.write_text(json.dumps({"script": "benchmarks/last_norm_saturation.py", "test_images": 2000,
                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/gn-groups"),
         Path(sys.argv[2] if len(sys.argv) > 2 else "results/last-norm-saturation.json"))
