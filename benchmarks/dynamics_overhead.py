"""What recording training dynamics costs: epoch 1 (its densest recording) with and without it.

Trains epoch 1 of the same experiment (mission settings, one torch thread, as a study's worker)
with `dynamics` off and on, alternating, `--repeats` times each, on the same machine in one run,
and reports the ratio of the median epoch times. Epoch 1 records 8 of its 79 steps (1, 2, 4, … and its last); later epochs
record one, so this is the upper bound of the overhead.

    python benchmarks/dynamics_overhead.py [--norms bn frn] [--repeats 3] [--train-limit N] [--json-out F]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _output import emit_json

from normlab.config import ExperimentConfig
from normlab.experiment import Experiment


def epoch_seconds(norm: str, dynamics: bool, train_limit: int | None, root: Path, tag: str) -> float:
    cfg = ExperimentConfig(name=f"{norm}-{tag}", norm=norm, dynamics=dynamics, train_limit=train_limit)
    exp = Experiment(cfg, root / cfg.dirname)
    start = time.perf_counter()
    exp.run_epoch()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--norms", nargs="+", default=["bn", "frn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"benchmark": "dynamics_overhead", "machine": platform.processor() or platform.machine(),
              "torch_threads": 1, "train_limit": args.train_limit, "repeats": args.repeats, "norms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for norm in args.norms:
            times = {False: [], True: []}
            for i in range(args.repeats):
                for dynamics in (False, True):
                    times[dynamics].append(epoch_seconds(norm, dynamics, args.train_limit, Path(tmp), f"{i}{dynamics}"))
            off, on = statistics.median(times[False]), statistics.median(times[True])
            result["norms"][norm] = {"seconds_off": [round(t, 3) for t in times[False]],
                                     "seconds_on": [round(t, 3) for t in times[True]],
                                     "ratio_on_over_off": round(on / off, 4)}
    emit_json(result, args.json_out)


if __name__ == "__main__":
    main()
