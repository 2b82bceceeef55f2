"""`--grouped`: experiments that can share a step train as one vmapped model, in this process.

The schedule is the local one — least advanced first, an epoch at a time — over groups instead of
experiments (`schedule.step_classes`); a group's epoch is `normlab.grouped.GroupedEpoch` (its step
`normlab.training.group.GroupStep`). Each member reports its epoch as a worker would, and every
failure is one member's result: the rest of the group and the study go on.
"""

from __future__ import annotations

from collections.abc import Iterator
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

    name = "grouped"
    seed_rounds = False

    def __init__(self, device: str, experiments: list[ExperimentConfig] | None = None, graph: bool = False):
        self.device = device
        self.experiments = experiments
        self.graph = graph  # each group's step captured as a CUDA graph (normlab.training.graphs)

    @classmethod
    def from_request(cls, request) -> GroupedExecutor:
        return cls(request.device, list(request.experiments), graph=request.cuda and request.graph != "off")

    def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        from ..grouped import run_together
        from ..training.loop import overflow_divergence

        line_ups = step_classes(self.experiments or [p.config for p in pending.values()])
        alive: dict[tuple, object] = {}  # a line-up's GroupedEpoch, kept while the same members train
        while pending:
            turn = []  # the groups that train one epoch now, together
            for line_up in line_ups:
                group = yield from self._group_for(line_up, pending, alive, out)
                if group is not None:
                    turn.append((tuple(line_up), group))
            members = [list(group.members) for _, group in turn]
            starts = [group.members[0].epoch for _, group in turn]
            for (key, _), before, start, outcome in zip(turn, members, starts, run_together([g for _, g in turn])):
                if isinstance(outcome, Exception):
                    alive.pop(key, None)  # its state is half an epoch on: rebuilt from the files
                    if len(before) > 1:  # whose failure? each member alone, in its slot: siblings go on
                        yield from self._alone(list(key), before, start, out)
                        continue
                    diverged = overflow_divergence(outcome, start + 1)
                    if diverged is not None:
                        outcome = {before[0].cfg.dirname: diverged}
                        before[0].diverged(diverged)
                yield from _results(before, outcome)

    def _group_for(self, line_up: list[str], pending: dict[str, Pending], alive: dict, out: Path):
        """The line-up's group for its least advanced members' next epoch — the one kept from the
        last epoch when the same members train on, else built from their files — or None; members
        that cannot train (damaged, or with only the misclassified pass left) are yielded as results."""
        from ..experiment import Experiment, summary_record
        from ..grouped import GroupedEpoch

        training = [name for name in line_up if name in pending]
        if not training:
            return None
        epoch = min(pending[name].done for name in training)
        now = tuple(name if name in pending and pending[name].done == epoch else None for name in line_up)
        group = alive.get(tuple(line_up))
        if group is not None and tuple(m.cfg.dirname if m else None for m in group.slots) == now \
                and all(m.epoch == epoch for m in group.members):
            return group  # the same members, one epoch on: no reload, no recapture
        alive.pop(tuple(line_up), None)
        slots: list = [None] * len(line_up)
        for k, name in enumerate(now):
            if name is None:
                continue
            cfg = pending[name].config
            try:
                exp = Experiment(cfg, out / name, device=self.device, resume=True, checked=True,
                                 executor=self.name)
            except Exception as e:
                yield result_from_exception(name, e, pending[name].done)
                continue
            if exp.epoch >= cfg.epochs:  # every epoch on disk: only the misclassified pass is left
                yield _finish(exp, EpochResult(name, Status.DONE, exp.epoch, record=summary_record(exp)))
            else:
                slots[k] = exp
        if not any(slots):
            return None
        try:
            group = GroupedEpoch(slots, graph=self.graph)
        except Exception as e:  # a bug: every member reports it, and the study goes on
            for m in slots:
                if m is not None:
                    yield result_from_exception(m.cfg.dirname, e, m.epoch)
            return None
        alive[tuple(line_up)] = group
        return group

    def _alone(self, line_up: list[str], before: list, start: int, out: Path) -> Iterator[EpochResult]:
        """The epoch of a group that raised, again for each member alone (read back from its files, in
        its own slot of the same line-up, so its numbers are those it would have had in the group):
        the member whose failure it was reports it; its siblings land their epoch."""
        from ..experiment import Experiment, summary_record
        from ..grouped import GroupedEpoch, run_together
        from ..training.loop import overflow_divergence

        for m in before:
            name = m.cfg.dirname
            if m.diverged_at is not None:  # it diverged in the group before the failure, and saved so
                yield EpochResult(name, Status.DIVERGED, m.diverged_at["epoch"], message=m.diverged_at["message"],
                                  record=summary_record(m))
                continue
            try:
                exp = Experiment(m.cfg, out / name, device=self.device, resume=True, checked=True,
                                 executor=self.name)
                if exp.epoch > start:  # it landed before the group failed
                    status = Status.DONE if exp.epoch >= exp.cfg.epochs else Status.RUNNING
                    result = EpochResult(name, status, exp.epoch, record=summary_record(exp))
                    yield _finish(exp, result) if status is Status.DONE else result
                    continue
                slots = [None] * len(line_up)
                slots[line_up.index(name)] = exp
                outcome = run_together([GroupedEpoch(slots, graph=self.graph)])[0]
            except Exception as e:
                yield result_from_exception(name, e, start)
                continue
            if isinstance(outcome, Exception):
                diverged = overflow_divergence(outcome, start + 1)
                if diverged is None:
                    yield result_from_exception(name, outcome, start)
                    continue
                exp.diverged(diverged)
                outcome = {name: diverged}
            yield from _results([exp], outcome)


def _results(members, outcome) -> list[EpochResult]:
    """Each member's result of a group's epoch (the misclassified pass after its last one)."""
    from ..experiment import summary_record

    if isinstance(outcome, Exception):  # a bug: every member reports it, with its traceback
        return [result_from_exception(m.cfg.dirname, outcome, m.epoch) for m in members]
    results = []
    for m in members:
        name, landed = m.cfg.dirname, outcome[m.cfg.dirname]
        if isinstance(landed, DivergedError):
            result = result_from_exception(name, landed)
            result.record = summary_record(m)
            results.append(result)
            continue
        result = EpochResult(name, Status.DONE if m.epoch >= m.cfg.epochs else Status.RUNNING, m.epoch,
                             landed.__dict__, record=summary_record(m))
        results.append(_finish(m, result) if result.status is Status.DONE else result)
    return results


def _finish(exp, result: EpochResult) -> EpochResult:
    """The misclassified pass; its failure reported as any failed task is."""
    try:
        exp.finish()
    except Exception as e:
        failed = result_from_exception(result.name, e, result.epoch)
        failed.metrics = result.metrics  # the epoch did land; the record is read again for the summary
        return failed
    return result
