"""The executors by name, and the one place a run's request picks one.

`--executor`'s choices are this registry's keys. On CUDA the default is the grouped executor (one
process keeps the GPU busy with whole groups) with each group's step captured as a CUDA graph; on
the CPU, one-thread worker processes. `--grouped on` is `--executor grouped`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ExperimentConfig
from ..errors import NormlabError
from .grouped import GroupedExecutor
from .local import LocalExecutor
from .ray import RayExecutor
from .task import Executor

EXECUTORS: dict[str, type] = {cls.name: cls for cls in (LocalExecutor, GroupedExecutor, RayExecutor)}
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class ExecutionRequest:
    """What a run asks of its executor: `--executor`, `--grouped`, `--graph`, the device, the workers
    (already capped) and a Ray address; `experiments` are the study's, in study order (the grouped
    executor's line-ups)."""

    executor: str = "local"
    grouped: str = "auto"
    graph: str = "auto"
    device: str = "cpu"
    workers: int = 1
    address: str | None = None
    experiments: tuple[ExperimentConfig, ...] = ()

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def chosen_name(request: ExecutionRequest) -> str:
    """The registry key the request picks; a contradiction is one sentence naming the flags."""
    if request.graph == "on" and not request.cuda:
        raise NormlabError("--graph on captures CUDA graphs and needs --device cuda; use --graph auto or off "
                           "on the CPU.")
    if request.executor == "ray":
        for flag, value in (("--grouped", request.grouped), ("--graph", request.graph)):
            if value == "on":
                raise NormlabError(f"{flag} on trains in this process and cannot be combined with --executor ray; "
                                   "drop one of them.")
        return "ray"
    if request.executor == "grouped" and request.grouped == "off":
        raise NormlabError("--executor grouped and --grouped off contradict each other; drop one of them.")
    grouped = request.executor == "grouped" or request.grouped == "on" or (request.grouped == "auto" and request.cuda)
    if request.graph == "on" and not grouped:
        raise NormlabError("--graph on captures the grouped step (an experiment is a group of one); drop "
                           "--grouped off, or use --graph off.")
    return "grouped" if grouped else "local"


def choose_executor(request: ExecutionRequest) -> Executor:
    """The executor the request picks, built from it."""
    return EXECUTORS[chosen_name(request)].from_request(request)
