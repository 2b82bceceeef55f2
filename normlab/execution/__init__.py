"""Running a study's epochs: executors behind one interface.

The unit of work is one epoch of one experiment, from its files to its files
(`run_epoch_task`). An executor takes the pending experiments and runs their epochs until each
is done, diverged, damaged or failed, yielding one typed `EpochResult` per task as it comes:

    class Executor(Protocol):
        name: str
        seed_rounds: bool
        def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]

The runner takes each result into a `schedule.Ledger` (which updates `pending`, what the executor
schedules from) and shows it through `Progress`, which only displays. `local` (worker processes,
or this process), `grouped` (step-sharing experiments as one vmapped model) and `ray` (a cluster)
are the classes of `registry.EXECUTORS`; `schedule` holds the policy they share (least advanced
experiment first, seed rounds, groups). Imports go one way: runner -> execution -> the
experiment store and training.
"""

from .progress import Progress
from .task import (
           EpochResult,
           EpochTask,
           Executor,
           Pending,
           Status,
           result_from_exception,
           run_epoch_task,
)

__all__ = ["EpochResult", "EpochTask", "Executor", "Pending", "Progress", "Status", "result_from_exception",
           "run_epoch_task"]
