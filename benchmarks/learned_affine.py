"""Are a norm's gamma and beta really learned? How far training moved them from their init (1, 0).

Reads the committed checkpoints of a study (default results/zoo) and, for every norm whose layers
have a per-channel scale (gamma) and shift (beta), reports per block the spread of gamma around
1 and of beta around 0 after training, averaged over seeds: mean |gamma - 1|, the range of gamma,
and mean |beta|. A gamma far from 1 (or near 0: a channel switched off) shows the network
re-scaling what the norm standardized, which is what the learned affine is for.

    python benchmarks/learned_affine.py [results/zoo] [--json-out F]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from _output import emit_json

from normlab.checkpoint import load_model


def affine_by_block(model) -> dict[str, tuple[list[float], list[float]]]:
    out = {}
    for layer, block in model.blocks():
        weight, bias = getattr(block.norm, "weight", None), getattr(block.norm, "bias", None)
        if weight is not None and bias is not None:
            out[layer] = (weight.detach().flatten().tolist(), bias.detach().flatten().tolist())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", nargs="?", type=Path, default=Path("results/zoo"))
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    per_norm: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for ckpt in sorted(args.study.glob("*/model.pt")):
        model = load_model(ckpt)
        for layer, (gamma, beta) in affine_by_block(model).items():
            per_norm[model.config.norm][layer].append((gamma, beta))
    result = {"study": str(args.study), "norms": {}}
    for norm, layers in per_norm.items():
        rows = {}
        for layer, runs in layers.items():
            gammas = [g for gamma, _ in runs for g in gamma]
            betas = [b for _, beta in runs for b in beta]
            rows[layer] = {"seeds": len(runs), "mean_abs_gamma_minus_1": round(statistics.fmean(abs(g - 1) for g in gammas), 4),
                           "gamma_min": round(min(gammas), 4), "gamma_max": round(max(gammas), 4),
                           "mean_abs_beta": round(statistics.fmean(abs(b) for b in betas), 4)}
        result["norms"][norm] = rows
    emit_json(result, args.json_out)


if __name__ == "__main__":
    main()
