"""Running a study's epochs: executors behind one interface.

The unit of work is one epoch of one experiment, from its files to its files
(`run_epoch_task`). An executor takes the pending experiments and runs their epochs until each
is done, diverged, damaged or failed; it reports every landed epoch through one `Progress` and
returns one typed `EpochResult` per experiment:

    class Executor(Protocol):
        def run(self, pending: dict[str, Pending], out: Path, progress: Progress) -> list[EpochResult]

`local` (worker processes, or this process), `grouped` (step-sharing experiments as one vmapped
model) and `ray` (a cluster) implement it; `schedule` holds the policy they share (least advanced
experiment first, seed rounds, groups). Imports go one way: runner -> execution -> training and
the experiment store.
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
