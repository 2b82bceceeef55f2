"""`--executor ray`: the same experiments as Ray tasks, for studies larger than one machine.

The unit of work is the local executor's: one epoch of one experiment, from its files to its
files (one torch thread per task, resumable from the last checkpoint), so results land in the
same layout. Each experiment has one epoch in flight at a time and the next is submitted when
it returns, so epoch lines and the progress bar stream as they finish and a lost node costs at
most one epoch per experiment. The output directory must be reachable by every node (a shared
filesystem) — Ray moves the task, not the files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import NormlabError
from .studies import Study


def _ray():
    try:
        import ray
    except ImportError:
        raise NormlabError("--executor ray needs Ray; install it with: pip install 'normlab[ray]'.") from None
    return ray


def _epoch_task(cfg_dict: dict, exp_dir: str, device: str) -> dict:
    import torch

    from .runner import _safe_task

    torch.set_num_threads(1)
    return _safe_task(cfg_dict, exp_dir, device)


def run_with_ray(study: Study, out: Path, todo: dict, *, device: str = "cpu", address: str | None = None,
                 quiet: bool = False, on_epoch: Callable[[str], None] | None = None,
                 after_epoch: Callable[[str, int], None] | None = None) -> list[dict]:
    """Run `todo` (dir name -> (config, epochs on disk)) as Ray tasks; the results of finished experiments."""
    from .runner import _epoch_bar, take_epoch_result

    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        except Exception as e:
            raise NormlabError(f"could not connect to Ray at {address or 'a new local instance'} ({e}); "
                               "check --address.") from None
    bar = _epoch_bar(todo, f"{study.name} (ray)", quiet)
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0)(_epoch_task)
        in_flight = {}

        def submit(name: str) -> None:
            cfg, _ = todo[name]
            in_flight[task.remote(cfg.to_dict(), str(out.resolve() / name), device)] = name

        for name in todo:
            submit(name)
        final = []
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            name = in_flight.pop(ready[0])
            r = ray.get(ready[0])
            if take_epoch_result(r, name, todo, bar, quiet, on_epoch, after_epoch):
                final.append(r)
            else:
                submit(name)
        return final
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
