"""CPU training-step options normlab measured and did not adopt, against the step it ships.

One torch thread per process (as in a study), the mission's BN + L1 model with augmentation,
images per second of the whole step (batch, augmentation, forward, backward, SGD). Each
variant runs in its own fresh process, the variants interleaved, median of the repeats:

- `shipped`: `TrainState.train_step` at batch 128 (channels_last, normlab's Dropout);
- `batch-512`: the same step at batch 512 (fewer, larger steps);
- `bf16-autocast`: the forward pass under `torch.autocast("cpu", torch.bfloat16)`;
- `torch-compile`: `torch.compile(model)` (inductor, with `nn.Dropout`, which inductor fuses);
  compilation happens in the warm-up and is not timed.

    python benchmarks/cpu_step_options.py --json-out results/cpu-step-options.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _output import emit_json

VARIANTS = ("shipped", "batch-512", "bf16-autocast", "torch-compile")


def measure(variant: str, seconds: float) -> float:
    """Images per second of one variant's training step, in this process."""
    import torch
    import torch.nn.functional as F

    from normlab import model as model_module
    from normlab.config import ExperimentConfig
    from normlab.training.state import TrainState, l1_penalty

    torch.set_num_threads(1)
    if variant == "torch-compile":
        model_module.Dropout.forward = torch.nn.Dropout.forward
    batch = 512 if variant == "batch-512" else 128
    cfg = ExperimentConfig(name="bn-l1", norm="bn", l1=1e-4, batch_size=batch, train_limit=25_600,
                           test_limit=256)
    exp = TrainState(cfg)
    if variant == "torch-compile":
        exp.model = torch.compile(exp.model)
    autocast = variant == "bf16-autocast"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if variant in ("shipped", "batch-512"):
            exp.train_step(x, y)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = exp.model(x)
        loss = F.nll_loss(out.float(), y) + cfg.l1 * l1_penalty(exp.model)
        exp.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        exp.optimizer.step()

    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(exp.data.train_y), generator=gen)
    slices = exp.slices
    for i, j in slices[:3]:  # warm-up (and compilation)
        step(*exp.batch(perm[i:j], gen))
    images, start, k = 0, time.perf_counter(), 3
    while time.perf_counter() - start < seconds:
        i, j = slices[k % len(slices)]
        step(*exp.batch(perm[i:j], gen))
        images += j - i
        k += 1
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", type=Path)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps({"images_per_second": measure(args.child, args.seconds)}))
        return
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--seconds", str(args.seconds)],
                                 capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"])
    from normlab.summary import machine_description

    base = statistics.median(runs["shipped"])
    result = {
        "threads_per_process": 1,
        "seconds_per_measurement": args.seconds,
        "repeats": args.repeats,
        "images_per_second": {v: round(statistics.median(r)) for v, r in runs.items()},
        "ratio_to_shipped": {v: round(statistics.median(r) / base, 3) for v, r in runs.items()},
        "all_runs": {v: [round(x) for x in r] for v, r in runs.items()},
        "machine": machine_description("cpu"),
    }
    emit_json(result, args.json_out)


if __name__ == "__main__":
    main()
