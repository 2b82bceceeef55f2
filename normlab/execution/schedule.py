"""The scheduling policy every executor shares.

Least advanced first: the experiment with the fewest epochs on disk and not in flight goes next
(ties: study order), so all advance together and an interrupted study leaves its experiments
equally far along. Seed rounds: with several seeds the local executor runs the whole study seed
after seed, so an interruption leaves complete seeds behind and each round's wall time is one
study's. Groups: experiments that can share a step (the grouped executor) differ only in FREE.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..config import ExperimentConfig, step_key
from .task import EpochResult, Pending


def next_experiment(pending: dict[str, Pending], in_flight: set[str]) -> str | None:
    """The least advanced experiment not in flight (ties: study order)."""
    free = [(p.done, i, name) for i, (name, p) in enumerate(pending.items()) if name not in in_flight]
    return min(free)[2] if free else None


def seed_rounds(configs: list[ExperimentConfig], pending: dict[str, Pending],
                workers: int) -> Iterator[tuple[int | None, dict[str, Pending]]]:
    """(seed, the pending experiments of that seed) in the order the seeds were given.

    One round (seed None) when there is one seed, or when a seed has fewer experiments than
    there are workers: rounds would leave cores idle.
    """
    seeds = list(dict.fromkeys(cfg.seed for cfg in configs))
    if len(seeds) == 1 or len(configs) < workers * len(seeds):
        if pending:
            yield None, dict(pending)
        return
    for seed in seeds:
        round_pending = {k: v for k, v in pending.items() if v.config.seed == seed}
        if round_pending:
            yield seed, round_pending


def step_classes(configs: list[ExperimentConfig]) -> list[list[str]]:
    """Directory names of `configs` by step-sharing key, in study order: the grouped executor's
    fixed line-ups (a member's slot does not change with its siblings' progress)."""
    classes: dict[tuple, list[str]] = {}
    for cfg in configs:
        classes.setdefault(step_key(cfg), []).append(cfg.dirname)
    return list(classes.values())


class Ledger:
    """Where each experiment of a run stands as its results come in: the scheduling state.

    `take` advances the experiment's epochs on disk and removes it from `pending` when it has
    finished, so an executor that schedules from `pending` sees the study as it is; `latest` keeps
    each experiment's last result (the summary reads records from it) and `final` the last result
    of each experiment that finished."""

    def __init__(self, pending: dict[str, Pending]):
        self.pending = pending
        self.latest: dict[str, EpochResult] = {}
        self.final: list[EpochResult] = []

    def take(self, result: EpochResult) -> Pending:
        """Record one task's result; the experiment's entry, as it stands after it."""
        item = self.pending[result.name]
        self.latest[result.name] = result
        if result.metrics is not None:
            item.done = result.epoch
        if result.finished:
            del self.pending[result.name]
            self.final.append(result)
        return item
