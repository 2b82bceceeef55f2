"""Local executor vs sequential: the mission study's wall time both ways, same machine, one run.

Sequential = `--workers 1`: one process, torch's default threads, one experiment after another.
Local executor = `--workers N` (default: one per core), one single-thread process each, scheduled
epoch by epoch. Writes a JSON object to --json-out and prints it.

    python benchmarks/executor_speedup.py --epochs 2 --json-out results/executor-speedup.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _output import emit_json

from normlab.config import ExperimentConfig
from normlab.runner import run_study
from normlab.studies import build_study
from normlab.summary import machine_description


def timed_study(epochs: int, workers: int, out: Path) -> float:
    study = build_study("mission", ExperimentConfig(epochs=epochs), seeds=[1])
    start = time.perf_counter()
    run_study(study, out, workers=workers, quiet=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = timed_study(args.epochs, 1, Path(tmp) / "sequential")
        parallel = timed_study(args.epochs, args.workers, Path(tmp) / "parallel")
    result = {
        "study": "mission", "epochs": args.epochs, "experiments": 3,
        "sequential_seconds": round(sequential, 1),
        "sequential_layout": f"1 process x {torch.get_num_threads()} torch threads",
        "local_executor_seconds": round(parallel, 1),
        "local_executor_layout": f"{args.workers} processes x 1 thread, epoch-by-epoch scheduling",
        "speedup": round(sequential / parallel, 3),
        "machine": machine_description("cpu"),
    }
    emit_json(result, args.json_out)


if __name__ == "__main__":
    main()
