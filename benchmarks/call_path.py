"""How far `normlab run`'s arguments travel before they train: the call stack at the first SGD step.

Runs a tiny `normlab run` in this process (one worker: the in-process executor, so the whole way
from `cli.main` to `TrainState.train_step` is one Python stack) and, at the first training step,
reads the stack: the steps are the normlab frames from `cli.main` down, the modules they pass
through, and how many steps come back to a module the path had already left.

    python benchmarks/call_path.py [--out results/call-path.json]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from pathlib import Path

from _output import emit_json

from normlab.cli import main as cli_main
from normlab.training.state import TrainState


def path_to_training() -> list[str]:
    """`module.function` of every normlab frame from cli.main to the first train_step, outermost first."""
    seen: list[str] = []
    real = TrainState.train_step

    def spy(self, *args, **kwargs):
        if not seen:
            for frame in reversed(inspect.stack()[1:]):
                module = frame.frame.f_globals.get("__name__", "")
                if module.startswith("normlab"):
                    seen.append(f"{module}.{frame.function}")
        return real(self, *args, **kwargs)

    TrainState.train_step = spy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cli_main(["run", "--norm", "bn", "--epochs", "1", "--train-limit", "64", "--test-limit", "32",
                      "--batch-size", "32", "--workers", "1", "--quiet", "--out", str(Path(tmp) / "s")])
    finally:
        TrainState.train_step = real
    return seen + ["normlab.training.state.train_step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    steps = path_to_training()
    modules = [s.rsplit(".", 1)[0] for s in steps]
    left, back = set(), 0
    for before, now in zip(modules, modules[1:]):
        if now != before:
            if now in left:
                back += 1
            left.add(before)
    emit_json({"steps": len(steps), "modules": len(set(modules)), "back_to_a_module_left": back, "path": steps},
              args.out)


if __name__ == "__main__":
    sys.exit(main())
