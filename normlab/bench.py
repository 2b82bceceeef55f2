"""`normlab bench`: normlab's training throughput against the seed-style pipeline, same machine, one run.

Both measure the mission's BN + L1 model at batch 128 with augmentation. Measurements are
interleaved (baseline, normlab, baseline, normlab, ...) after warm-up, so drifts in machine
speed hit both alike, and the median of the repeats is reported. Each side uses the whole
machine the way it would in a study: the baseline its DataLoader workers plus torch's default
threads; normlab one single-thread process per core (the local executor's layout), summed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics

import torch

from .config import ExperimentConfig
from .studies import build_study
from .summary import machine_description
from .training.data import resolve_device
from .training.loop import throughput
from .training.state import TrainState


def _mission_bn(seed: int = 1) -> ExperimentConfig:
    """The mission's BN + L1 experiment, as the mission trains it, with this seed."""
    return ExperimentConfig(name="bench", norm="bn", l1=build_study("mission").experiments[0].l1, seed=seed)


def normlab_step_throughput(seconds: float, threads: int = 1, device: str = "cpu") -> float:
    """Images/s of normlab's real training step (`training.single.SingleStep`) in this process."""
    from .training.single import SingleStep

    torch.set_num_threads(threads)
    state = TrainState(_mission_bn(), device)
    return throughput(SingleStep(state), 1, state.slices, seconds)


def grouped_step_throughput(seconds: float, members: int, threads: int = 1, device: str = "cpu") -> float:
    """Images/s (all members together) of `members` mission BN + L1 experiments trained as one
    vmapped model (`training.group.GroupStep`), in this process."""
    from .training.group import GroupStep

    torch.set_num_threads(threads)
    states = [TrainState(_mission_bn(seed), device) for seed in range(1, members + 1)]
    return throughput(GroupStep(states), 1, states[0].slices, seconds)


def _measure_normlab(seconds: float, processes: int, device: str) -> float:
    if device != "cpu" or processes == 1:
        return normlab_step_throughput(seconds, threads=1 if device == "cpu" else torch.get_num_threads(),
                                       device=device)
    with mp.get_context("spawn").Pool(processes) as pool:
        return sum(pool.starmap(normlab_step_throughput, [(seconds, 1, device)] * processes))


def _measure_grouped(seconds: float, processes: int, device: str, members: int) -> float:
    """The grouped step in the per-process layout: on CPU one group per core, summed."""
    if device != "cpu" or processes == 1:
        return grouped_step_throughput(seconds, members, 1 if device == "cpu" else torch.get_num_threads(), device)
    with mp.get_context("spawn").Pool(processes) as pool:
        return sum(pool.starmap(grouped_step_throughput, [(seconds, members, 1, device)] * processes))


def run_bench(seconds: float = 20.0, repeats: int = 3, as_json: bool = False, device: str = "cpu",
              grouped: int = 0) -> int:
    """With `grouped` = K > 0, also K experiments as one vmapped model, interleaved with the rest."""
    device = str(resolve_device(device))
    from . import baseline  # torchvision's per-sample pipeline: loaded only to be measured

    processes = os.cpu_count() or 1
    base_runs, ours_runs, grouped_runs = [], [], []
    for r in range(repeats):
        base_runs.append(baseline.measure(seconds))
        ours_runs.append(_measure_normlab(seconds, processes, device))
        if grouped:
            grouped_runs.append(_measure_grouped(seconds, processes, device, grouped))
        if not as_json:
            print(f"repeat {r + 1}/{repeats}: seed pipeline {base_runs[-1]:8,.0f} img/s   "
                  f"normlab {ours_runs[-1]:8,.0f} img/s"
                  + (f"   grouped x{grouped} {grouped_runs[-1]:8,.0f} img/s" if grouped else ""), flush=True)
    result = {
        "normlab_images_per_second": round(statistics.median(ours_runs), 1),
        "baseline_images_per_second": round(statistics.median(base_runs), 1),
        "ratio": round(statistics.median(ours_runs) / statistics.median(base_runs), 3),
        "normlab_runs": [round(v, 1) for v in ours_runs],
        "baseline_runs": [round(v, 1) for v in base_runs],
        "seconds_per_measurement": seconds,
        "repeats": repeats,
        "normlab_layout": f"{processes} processes x 1 thread" if device == "cpu" else f"1 process on {device}",
        "baseline_layout": f"DataLoader 2 workers + {torch.get_num_threads()} torch threads, cpu",
        "machine": machine_description(device),
    }
    if grouped:
        result.update(grouped_members=grouped, grouped_images_per_second=round(statistics.median(grouped_runs), 1),
                      grouped_runs=[round(v, 1) for v in grouped_runs],
                      grouped_ratio_to_normlab=round(statistics.median(grouped_runs) / statistics.median(ours_runs), 3))
    if as_json:
        print(json.dumps(result))
    else:
        print(f"\n{'pipeline':<16} {'images/s (median)':>18}  layout")
        print(f"{'seed-style':<16} {result['baseline_images_per_second']:>18,.0f}  {result['baseline_layout']}")
        print(f"{'normlab':<16} {result['normlab_images_per_second']:>18,.0f}  {result['normlab_layout']}")
        if grouped:
            print(f"{'grouped x' + str(grouped):<16} {result['grouped_images_per_second']:>18,.0f}  "
                  f"{grouped} experiments as one vmapped model, same layout")
        print(f"ratio normlab / seed-style: {result['ratio']:.2f}x  ({repeats} interleaved repeats of "
              f"{seconds:g} s, {result['machine']['cpu']})")
    return 0
