"""`--grouped`: experiments that can share a step train as one vmapped model, in this process.

The schedule is the local one — least advanced first, an epoch at a time — over groups instead of
experiments (`schedule.step_classes`); the step itself is `normlab.grouped.GroupedEpoch`. Each
member reports its epoch like a worker would, and every failure is one member's result: the
rest of the group and the study go on.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ExperimentConfig
from ..errors import DivergedError
from .schedule import step_classes
from .task import EpochResult, Pending, Status, result_from_exception


class GroupedExecutor:
    """Each class of step-sharing experiments of the study (same `config.step_key`, study order)
    is one group with a fixed line-up. An epoch trains the class's least advanced experiments;
    the others (ahead after an interrupt, damaged, diverged, finished) hold their slots as inert
    placeholders, so every member sees the same group whatever happened to its siblings."""

    seed_rounds = False

    def __init__(self, device: str, experiments: list[ExperimentConfig] | None = None):
        self.device = device
        self.experiments = experiments

    def run(self, pending: dict[str, Pending], out: Path, progress) -> list[EpochResult]:
        from ..train import Experiment

        final: list[EpochResult] = []
        line_ups = step_classes(self.experiments or [p.config for p in pending.values()])

        def take(result: EpochResult) -> None:
            if progress.take(result, pending):
                final.append(result)

        while pending:
            for line_up in line_ups:
                training = [name for name in line_up if name in pending]
                if not training:
                    continue
                epoch = min(pending[name].done for name in training)
                slots: list = [None] * len(line_up)
                for k, name in enumerate(line_up):
                    if name not in pending or pending[name].done != epoch:
                        continue
                    cfg = pending[name].config
                    try:
                        exp = Experiment(cfg, out / name, device=self.device, resume=True)
                    except Exception as e:
                        take(result_from_exception(name, e, pending[name].done))
                        continue
                    if exp.epoch >= cfg.epochs:  # every epoch on disk: only the misclassified pass is left
                        take(_finish(exp, EpochResult(name, Status.DONE, exp.epoch)))
                    else:
                        slots[k] = exp
                if any(slots):
                    for result in _train_group(slots):
                        take(result)
        return final


def _train_group(slots) -> list[EpochResult]:
    from ..grouped import GroupedEpoch

    members = [m for m in slots if m is not None]
    try:
        outcome = GroupedEpoch(slots).run()
    except Exception as e:  # a bug: every member reports it, with its traceback, and the study goes on
        return [result_from_exception(m.cfg.dirname, e, m.epoch) for m in members]
    results = []
    for m in members:
        name, landed = m.cfg.dirname, outcome[m.cfg.dirname]
        if isinstance(landed, DivergedError):
            results.append(result_from_exception(name, landed))
            continue
        result = EpochResult(name, Status.DONE if m.epoch >= m.cfg.epochs else Status.RUNNING, m.epoch,
                             landed.__dict__)
        results.append(_finish(m, result) if result.status is Status.DONE else result)
    return results


def _finish(exp, result: EpochResult) -> EpochResult:
    """The misclassified pass; its failure reported as any failed task is."""
    try:
        exp.finish()
    except Exception as e:
        failed = result_from_exception(result.name, e, result.epoch)
        failed.metrics = result.metrics
        return failed
    return result
