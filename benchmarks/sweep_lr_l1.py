"""The measurement behind the mission's learning rate and L1 factor (README, "Choosing LR and L1").

Runs BN/GN/LN at several peak learning rates and BN at several L1 factors, 20 epochs each,
as one normlab study, so the choice is made from result files, not from memory.

    python benchmarks/sweep_lr_l1.py --out runs/sweep-lr-l1 [--device cuda] [--workers N]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from normlab.config import ExperimentConfig
from normlab.report import final_table, generate_report
from normlab.runner import run_study
from normlab.studies import Study

LRS = (0.02, 0.05, 0.1, 0.2)
L1S = (3e-5, 1e-4, 3e-4, 1e-3)


def sweep(base: ExperimentConfig) -> Study:
    exps = [replace(base, name=f"{norm}-lr{lr:g}", norm=norm, lr=lr)
            for lr in LRS for norm in ("bn", "gn", "ln")]
    exps += [replace(base, name=f"bn-l1_{l1:g}-lr{lr:g}", norm="bn", l1=l1, lr=lr)
             for lr in (0.05, 0.1) for l1 in L1S]
    return Study("sweep-lr-l1", exps, "peak LR x norm, and BN x L1, 20 epochs, seed 1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/sweep-lr-l1"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    study = sweep(ExperimentConfig(epochs=args.epochs))
    outcome = run_study(study, args.out, resume=args.resume, workers=args.workers, device=args.device,
                        quiet=True)
    generate_report(args.out)
    print(final_table(outcome.summary))


if __name__ == "__main__":
    main()
