"""How long `generate_report` takes as a study grows: 100, 500 and 2,000 synthetic experiments.

Nothing is trained: each experiment's result files (config.json, metrics.csv, status.json,
misclassified.json) and the study's study.json and summary.json are written with the store's own
writers (`normlab.results`, `normlab.summary`), shaped like a real grid — 4 norms x N/20 learning
rates x 5 seeds, one epoch each. The first report draws every figure; the second finds the
misclassified figures up to date. Time per experiment should stay flat (linear growth).

    python benchmarks/report_scale.py [--sizes 100 500 2000] [--json-out results/report-scale.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from normlab.config import ExperimentConfig
from normlab.fileio import atomic_write_json
from normlab.recovery import ExperimentState, status_view
from normlab.report import generate_report
from normlab.results import CONFIG, DONE, STATUS, write_metrics
from normlab.summary import save_study_meta, write_summary

NORMS = ("bn", "gn", "ln", "in")
SEEDS = 5
TEST = 1000


def synthesize(study_dir: Path, n: int) -> dict:
    """A finished one-epoch study of `n` experiments (n a multiple of 20), written without training."""
    rng = np.random.default_rng(0)
    lrs = [round(0.001 * (k + 1), 4) for k in range(n // (len(NORMS) * SEEDS))]
    configs, states = [], []
    for seed in range(1, SEEDS + 1):
        for norm in NORMS:
            for lr in lrs:
                cfg = ExperimentConfig(name=f"{norm}-lr{lr:g}", norm=norm, lr=lr, seed=seed, epochs=1,
                                       train_limit=2000, test_limit=TEST, batch_size=64)
                d = study_dir / cfg.dirname
                accuracy = float(np.clip(97 + rng.normal(0, 0.6), 90, 99.9))
                row = {"epoch": 1, "train_loss": 0.2, "train_accuracy": accuracy - 1, "test_loss": 0.1,
                       "test_accuracy": round(accuracy, 4), "lr": lr, "seconds": 3.0}
                wrong = sorted(rng.choice(TEST, size=round(TEST * (1 - accuracy / 100)), replace=False).tolist())
                checkpoint = {"experiment": cfg.to_dict(), "epoch": 1, "history": [row], "device": "cpu",
                              "params": 7704, "diverged": None, "conv_weight_l1": 100.0, "provenance": []}
                atomic_write_json(d / CONFIG, cfg.to_dict())
                write_metrics(d / "metrics.csv", [row])
                atomic_write_json(d / STATUS, status_view(checkpoint, DONE))
                atomic_write_json(d / "misclassified.json", {
                    "dataset": "mnist", "rule": "most confident mistakes on the test set", "wrong_total": len(wrong),
                    "wrong_indices": wrong,
                    "images": [{"index": i, "true": i % 10, "predicted": (i + 1) % 10, "true_name": str(i % 10),
                                "predicted_name": str((i + 1) % 10), "confidence": 0.9,
                                "pixels": rng.integers(0, 256, (28, 28)).tolist()} for i in wrong[:10]]})
                configs.append(cfg.to_dict())
                states.append(ExperimentState(d, DONE, config=cfg.to_dict(), checkpoint=checkpoint))
    meta = {"study": "report-scale", "description": f"{n} synthetic one-epoch experiments",
            "experiments": configs, "wall_seconds": 3.0 * n}
    save_study_meta(study_dir, meta)
    return write_summary(study_dir, meta, states)


def measure(n: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"report-scale-{n}-"))
    try:
        start = time.perf_counter()
        summary = synthesize(folder, n)
        written = time.perf_counter() - start
        start = time.perf_counter()
        generate_report(folder, summary)
        first = time.perf_counter() - start
        start = time.perf_counter()
        generate_report(folder, summary)
        again = time.perf_counter() - start
        widest = max(_png_size(p) for p in folder.rglob("*.png"))
        return {"experiments": n, "synthesize_seconds": round(written, 2), "report_seconds": round(first, 2),
                "report_seconds_per_experiment": round(first / n, 4), "report_again_seconds": round(again, 2),
                "largest_figure_px": list(widest)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def main() -> None:
    from _output import emit_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(measure(n))
        print(rows[-1], flush=True)
    emit_json({"what": "generate_report on synthetic finished studies (nothing trained), first and second report",
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
               "results": rows}, args.json_out)


if __name__ == "__main__":
    main()
