"""`--executor ray`: the same epoch tasks as Ray tasks, for studies larger than one machine.

Each experiment has one epoch in flight at a time and the next is submitted when it returns, so
epoch lines and the progress bar stream as they finish and a lost node costs at most one epoch
per experiment. The output directory must be reachable by every node (a shared filesystem): Ray
moves the task, not the files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import NormlabError
from .task import EpochResult, EpochTask, Pending, result_from_exception, run_epoch_task


def _ray():
    try:
        import ray
    except ImportError:
        raise NormlabError("--executor ray needs Ray; install it with: pip install 'normlab[ray]'.") from None
    return ray


def _remote_epoch(task: EpochTask) -> EpochResult:
    import torch

    torch.set_num_threads(1)
    return run_epoch_task(task)


class RayExecutor:
    """Each experiment's next epoch as a Ray task, one in flight per experiment."""

    name = "ray"
    seed_rounds = False

    def __init__(self, device: str, address: str | None = None):
        self.device, self.address = device, address

    @classmethod
    def from_request(cls, request) -> RayExecutor:
        return cls(request.device, request.address)

    def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
            except Exception as e:
                raise NormlabError(f"could not connect to Ray at {self.address or 'a new local instance'} ({e}); "
                                   "check --address.") from None
        in_flight: dict = {}
        try:
            task = ray.remote(num_cpus=1, num_gpus=1 if self.device.startswith("cuda") else 0)(_remote_epoch)

            def submit(name: str) -> None:
                p = pending[name]
                in_flight[task.remote(EpochTask(name, p.config.to_dict(), str(out.resolve() / name),
                                                self.device, executor=self.name, processes=0))] = name

            for name in list(pending):
                submit(name)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                name = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as e:  # the task or its node was lost: that epoch failed, resumable
                    result = result_from_exception(name, e, pending[name].done)
                yield result
                if not result.finished:
                    submit(name)
        finally:
            for ref in in_flight:  # interrupted: no task goes on writing after this study stops
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            if started_here:
                ray.shutdown()
