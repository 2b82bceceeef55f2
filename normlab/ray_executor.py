"""`--executor ray`: the same experiments as Ray tasks, for studies larger than one machine.

Each experiment is one Ray task that runs its remaining epochs with the same code and files as
the local executor (one torch thread per task, resumable from its last checkpoint), so results
land in the same layout. The output directory must be reachable by every node (a shared
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


def _train_all_epochs(cfg_dict: dict, exp_dir: str, device: str) -> list[dict]:
    import torch

    from .runner import _safe_task

    torch.set_num_threads(1)
    results = []
    while True:
        r = _safe_task(cfg_dict, exp_dir, device)
        results.append(r)
        if r["status"] != "running":
            return results


def run_with_ray(study: Study, out: Path, *, device: str = "cpu", address: str | None = None,
                 quiet: bool = False, on_epoch: Callable[[str], None] | None = None) -> list[dict]:
    from .runner import _pending, epoch_line

    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        except Exception as e:
            raise NormlabError(f"could not connect to Ray at {address or 'a new local instance'} ({e}); "
                               "check --address.") from None
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0)(_train_all_epochs)
        todo = _pending(study.experiments, out)
        refs = {task.remote(cfg.to_dict(), str(out.resolve() / name), device): (name, cfg)
                for name, (cfg, _) in todo.items()}
        final = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name, cfg = refs[ready[0]]
            for r in ray.get(ready[0]):
                if "metrics" in r:
                    line = epoch_line(name, r["metrics"], cfg.epochs)
                    if not quiet:
                        print(line)
                    elif on_epoch:
                        on_epoch(line)
            final.append(r)
        return final
    finally:
        if started_here:
            ray.shutdown()
