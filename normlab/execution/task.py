"""One epoch of one experiment as a task, its typed result, and the one way an error becomes a result."""

from __future__ import annotations

import enum
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import ExperimentConfig
from ..errors import DamagedError, DivergedError, NormlabError, first_line, os_error_fix


class Status(str, enum.Enum):
    """Where an experiment stands after a task. RUNNING, DONE, DIVERGED and DAMAGED are spelled as
    status.json and summary.json spell them; FAILED is this run's alone (the files keep what was on
    disk, and summary.json shows that)."""

    RUNNING = "running"  # an epoch landed; more to train
    DONE = "done"  # every epoch and the misclassified pass on disk
    DIVERGED = "diverged"  # a non-finite loss stopped it; its last good epoch is kept
    DAMAGED = "damaged"  # a file that cannot be trusted or rebuilt
    FAILED = "failed"  # this run could not train it; what is on disk stays, --resume continues


@dataclass
class Pending:
    """An experiment still to train: its config and the epochs already on disk."""

    config: ExperimentConfig
    done: int = 0


@dataclass(frozen=True)
class EpochTask:
    """What a worker needs to train one epoch of one experiment: plain, picklable values."""

    name: str  # the experiment's directory name
    config: dict
    directory: str
    device: str
    executor: str = "local"  # the executor's name and the processes training side by side: provenance
    processes: int = 1


@dataclass
class EpochResult:
    name: str
    status: Status
    epoch: int = 0  # epochs on disk after the task
    metrics: dict | None = None  # the epoch that landed, if one did
    message: str = ""  # for DIVERGED, DAMAGED and FAILED: one sentence
    traceback: str | None = None  # for a bug: where it happened
    record: dict | None = None  # the experiment's record after the task (`experiment.summary_record`), for summary.json

    @property
    def finished(self) -> bool:
        """Nothing more to do for this experiment in this run."""
        return self.status is not Status.RUNNING


class Executor(Protocol):
    """What every executor is: one class in `registry.EXECUTORS`, built from the run's request."""

    name: str  # its registry key: what --executor spells and each epoch's provenance records
    seed_rounds: bool  # True: run a several-seed study seed after seed (the local executor)

    def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        """Train every pending experiment to its end (or failure), yielding each task's result as it
        comes; between two results the caller updates `pending` (`schedule.Ledger`), which is
        what the executor schedules from."""


def result_from_exception(name: str, error: BaseException, epoch: int = 0) -> EpochResult:
    """The one place an exception becomes a result: damage, the user's environment (a normlab
    sentence or an OS error: no traceback), or a bug (with its traceback). Never raises."""
    if isinstance(error, DamagedError):
        return EpochResult(name, Status.DAMAGED, epoch, message=str(error))
    if isinstance(error, DivergedError):
        return EpochResult(name, Status.DIVERGED, error.epoch, message=str(error))
    if isinstance(error, NormlabError):
        return EpochResult(name, Status.FAILED, epoch, message=str(error))
    if isinstance(error, OSError):
        where = f" {error.filename}" if getattr(error, "filename", None) else ""
        return EpochResult(name, Status.FAILED, epoch, message=f"cannot access{where} ({error.strerror or error}); "
                           f"{os_error_fix(error)}.")
    return EpochResult(name, Status.FAILED, epoch, message=f"{type(error).__name__}: {first_line(error, 300)}",
                       traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)))


def run_epoch_task(task: EpochTask) -> EpochResult:
    """One epoch of one experiment, from its files to its files; every failure becomes a result.

    An experiment whose epochs are all on disk gets only its misclassified pass.
    """
    from ..experiment import (  # the training stack is heavy; a worker imports it once
        Experiment,
        summary_record,
    )

    epoch = 0
    try:
        cfg = ExperimentConfig.from_dict(task.config)
        exp = Experiment(cfg, Path(task.directory), device=task.device, resume=True, checked=True,
                         executor=task.executor, processes=task.processes)
        epoch = exp.epoch
        metrics = None
        if exp.epoch < cfg.epochs:
            try:
                metrics = exp.run_epoch().__dict__
            except DivergedError as e:
                exp.diverged(e)
                result = result_from_exception(task.name, e)
                result.record = summary_record(exp)
                return result
        if exp.epoch >= cfg.epochs:
            exp.finish()
            return EpochResult(task.name, Status.DONE, exp.epoch, metrics, record=summary_record(exp))
        return EpochResult(task.name, Status.RUNNING, exp.epoch, metrics, record=summary_record(exp))
    except Exception as e:  # every failure of this one experiment: the study goes on
        return result_from_exception(task.name, e, epoch)
