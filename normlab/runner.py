"""Running a study: experiments scheduled epoch by epoch over worker processes, files first.

The unit of work is one epoch of one experiment. A worker loads that experiment's last
checkpoint, trains one epoch and writes metrics and checkpoint atomically; the scheduler
always hands out the least advanced experiment that is not in flight. So 3 experiments on
2 cores finish together instead of leaving one core idle for the last third, and every
epoch that finished is on disk whatever happens next. Each worker runs one torch thread:
two one-thread processes train 1.45x faster than one two-thread process (DESIGN.md).

With several seeds the local executor runs them as rounds, seed after seed: each round is
the whole study for one seed, so an interrupted study leaves complete seeds behind (not
every experiment a third done), and each round's wall time is the time of one full study
on this machine, recorded per seed next to the total.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ExperimentConfig
from .errors import DivergedError, NormlabError
from .fileio import atomic_write_json, directory_lock, read_json
from .studies import Study
from .summary import machine_description, write_summary
from .train import Experiment, check_experiment_dir


@dataclass
class StudyOutcome:
    summary: dict
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def check_directories(study: Study, out: Path, resume: bool) -> None:
    """Fail before any training if a directory holds other or unfinished-but-unresumed results."""
    names = [e.dirname for e in study.experiments]
    if len(set(names)) != len(names):
        raise NormlabError("the study has two experiments with the same name and seed.")
    for cfg in study.experiments:
        check_experiment_dir(out / cfg.dirname, cfg, resume)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates the pool


def train_epoch_task(cfg_dict: dict, exp_dir: str, device: str) -> dict:
    """One epoch of one experiment, from its files to its files. Runs in a worker process."""
    cfg = ExperimentConfig.from_dict(cfg_dict)
    exp = Experiment(cfg, Path(exp_dir), device=device, resume=True)
    try:
        metrics = exp.run_epoch()
    except DivergedError as e:
        exp.diverged(e)
        return {"dir": cfg.dirname, "status": "diverged", "message": str(e), "epoch": e.epoch}
    if exp.epoch >= cfg.epochs:
        exp.finish()
    return {"dir": cfg.dirname, "status": "done" if exp.epoch >= cfg.epochs else "running",
            "metrics": metrics.__dict__, "epoch": exp.epoch}


def _safe_task(cfg_dict: dict, exp_dir: str, device: str) -> dict:
    """train_epoch_task that reports a failure as a result, so the rest of the study goes on."""
    name = Path(exp_dir).name
    try:
        return train_epoch_task(cfg_dict, exp_dir, device)
    except NormlabError as e:
        return {"dir": name, "status": "failed", "message": str(e)}
    except Exception as e:  # a bug: report it with its traceback
        return {"dir": name, "status": "failed", "message": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def epoch_line(name: str, m: dict, epochs: int) -> str:
    return (f"{name:<22} epoch {m['epoch']:>3}/{epochs:<3} train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:6.2f}%  test loss {m['test_loss']:.4f} "
            f"acc {m['test_accuracy']:6.2f}%  {m['images_per_second']:7,.0f} img/s  {m['seconds']:6.1f}s")


class _Terminate(Exception):
    pass


def _raise_terminate(signum, frame):
    raise _Terminate()


def run_study(study: Study, out: Path, *, resume: bool = False, workers: int | None = None,
              device: str = "cpu", executor: str = "local", address: str | None = None,
              quiet: bool = False, on_epoch: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run every unfinished experiment of `study` into `out`, then write summary.json.

    Progress: tqdm bars and one line per epoch, or with quiet=True no bars and each epoch's
    line passed to `on_epoch` (e.g. `print` in a notebook), if given.
    """
    out = Path(out)
    with directory_lock(out):
        check_directories(study, out, resume)
        meta_path = out / "study.json"
        meta = read_json(meta_path) if meta_path.exists() else {"wall_seconds": 0.0}
        atomic_write_json(meta_path, {**meta, "study": study.name, "description": study.description})
        start = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, _raise_terminate)
        interrupted = False
        results: list[dict] = []
        try:
            if executor == "ray":
                from .ray_executor import run_with_ray
                results = run_with_ray(study, out, device=device, address=address, quiet=quiet,
                                       on_epoch=on_epoch)
            else:
                with LocalExecutor(workers, device, quiet, on_epoch) as local:
                    for seed, todo in seed_rounds(study, out, local.workers):
                        round_start = time.perf_counter()
                        try:
                            results += local.run(todo, out, study.name if seed is None else f"{study.name} seed {seed}")
                        finally:
                            if seed is not None:
                                _record_wall(out, round_start, key=f"seed {seed}")
        except (KeyboardInterrupt, _Terminate):
            interrupted = True
        finally:  # whatever happened, the time spent and every finished epoch reach summary.json
            signal.signal(signal.SIGTERM, previous)
            _record_wall(out, start)
            summary = finish_summary(study, out, device, workers)
        if interrupted:
            raise KeyboardInterrupt
    outcome = StudyOutcome(summary)
    for r in results:
        if r["status"] == "diverged":
            outcome.diverged.append(r["dir"])
        elif r["status"] == "failed":
            outcome.failed.append(f"{r['dir']}: {r['message']}")
    return outcome


def _record_wall(out: Path, start: float, key: str | None = None) -> None:
    """Add wall time since `start` to the study's total, or with `key` to one seed round's.

    Sums over invocations, so a resumed study reports all the time it took.
    """
    meta = read_json(out / "study.json")
    elapsed = time.perf_counter() - start
    if key is None:
        meta["wall_seconds"] = round(meta.get("wall_seconds", 0.0) + elapsed, 2)
    else:
        rounds = meta.setdefault("round_wall_seconds", {})
        rounds[key] = round(rounds.get(key, 0.0) + elapsed, 2)
    atomic_write_json(out / "study.json", meta)


def finish_summary(study: Study, out: Path, device: str, workers: int | None) -> dict:
    meta = read_json(out / "study.json")
    extra = {"description": study.description, "wall_seconds": meta["wall_seconds"],
             "machine": machine_description(device), "workers": workers}
    if meta.get("round_wall_seconds"):
        extra["seed_rounds"] = [{"seed": int(k.split()[1]), "wall_seconds": v}
                                for k, v in meta["round_wall_seconds"].items()]
    return write_summary(out, study.name, [out / e.dirname for e in study.experiments], extra)


def seed_rounds(study: Study, out: Path, workers: int):
    """(seed, unfinished experiments of that seed) in the order the seeds were given.

    One round (seed None) when there is one seed, or when a seed has fewer experiments than
    there are workers: rounds would leave cores idle.
    """
    seeds = list(dict.fromkeys(cfg.seed for cfg in study.experiments))
    if len(seeds) == 1 or len(study.experiments) < workers * len(seeds):
        todo = _pending(study.experiments, out)
        if todo:
            yield None, todo
        return
    for seed in seeds:
        todo = _pending([c for c in study.experiments if c.seed == seed], out)
        if todo:
            yield seed, todo


def _pending(experiments: list[ExperimentConfig], out: Path) -> dict[str, tuple[ExperimentConfig, int]]:
    """dirname -> (config, epochs already on disk) for experiments not yet done or diverged."""
    todo = {}
    for cfg in experiments:
        status_path = out / cfg.dirname / "status.json"
        status = read_json(status_path) if status_path.exists() else {"status": "pending", "epochs_run": 0}
        if status["status"] in ("done", "diverged"):
            continue
        todo[cfg.dirname] = (cfg, int(status.get("epochs_run", 0)))
    return todo


def _echo(quiet: bool, on_epoch: Callable[[str], None] | None, line: str) -> None:
    if not quiet:
        tqdm.write(line)
    elif on_epoch:
        on_epoch(line)


class LocalExecutor:
    """Epoch tasks over a pool of one-thread worker processes, kept across seed rounds."""

    def __init__(self, workers: int | None, device: str, quiet: bool,
                 on_epoch: Callable[[str], None] | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.device, self.quiet, self.on_epoch = device, quiet, on_epoch
        self.pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def run(self, todo: dict, out: Path, label: str) -> list[dict]:
        if min(self.workers, len(todo)) == 1:
            return _run_in_process(todo, out, self.device, self.quiet, self.on_epoch)
        if self.pool is None:
            self.pool = mp.get_context("spawn").Pool(self.workers, initializer=_worker_init, initargs=(1,))
        return _run_pool(self.pool, min(self.workers, len(todo)), todo, out, label, self.device,
                         self.quiet, self.on_epoch)


def take_epoch_result(r: dict, name: str, todo: dict, bar: tqdm, quiet: bool,
                      on_epoch: Callable[[str], None] | None) -> bool:
    """Show one epoch task's result and advance `todo`; True when the experiment has finished.

    Shared by the local pool and Ray, so both report epochs, failures and progress alike.
    """
    cfg, done = todo[name]
    if "metrics" in r:
        bar.update(1)
        _echo(quiet, on_epoch, epoch_line(name, r["metrics"], cfg.epochs))
        todo[name] = (cfg, r["epoch"])
    if r["status"] == "running":
        return False
    if r["status"] != "done":
        bar.total -= cfg.epochs - done  # epochs that will never run
        tqdm.write(f"{name}: {r['status']}: {r['message']}")
        if r.get("traceback"):
            tqdm.write(r["traceback"])
    return True


def _run_pool(pool, workers: int, todo: dict, out: Path, label: str, device: str, quiet: bool,
              on_epoch: Callable[[str], None] | None = None) -> list[dict]:
    """Hand out epochs of `todo`, least advanced experiment first, `workers` at a time."""
    total_epochs = sum(cfg.epochs - done for cfg, done in todo.values())
    bar = tqdm(total=total_epochs, unit="epoch", desc=f"{label} ({workers} workers)",
               disable=quiet, dynamic_ncols=True)
    results: list[dict] = []
    done_q: queue.Queue = queue.Queue()
    in_flight: set[str] = set()
    try:
        def submit_next() -> bool:
            free = [(done, i, name) for i, (name, (cfg, done)) in enumerate(todo.items())
                    if name not in in_flight]
            if not free:
                return False
            _, _, name = min(free)
            cfg, _ = todo[name]
            in_flight.add(name)
            pool.apply_async(_safe_task, (cfg.to_dict(), str(out / name), device),
                             callback=done_q.put,
                             error_callback=lambda e, n=name: done_q.put(
                                 {"dir": n, "status": "failed", "message": repr(e)}))
            return True

        while len(in_flight) < workers and submit_next():
            pass
        while in_flight:
            try:
                r = done_q.get(timeout=0.5)
            except queue.Empty:
                continue
            name = r["dir"]
            in_flight.discard(name)
            if take_epoch_result(r, name, todo, bar, quiet, on_epoch):
                del todo[name]
                results.append(r)
            while len(in_flight) < workers and submit_next():
                pass
    finally:
        bar.close()
    return results


def _run_in_process(todo: dict, out: Path, device: str, quiet: bool,
                    on_epoch: Callable[[str], None] | None = None) -> list[dict]:
    """One experiment at a time in this process, with a progress bar inside each epoch."""
    results = []
    for name, (cfg, _) in todo.items():
        exp = Experiment(cfg, out / name, device=device, resume=True)
        status = {"dir": name, "status": "done"}
        while exp.epoch < cfg.epochs:
            bar = tqdm(total=len(exp.data.train_y), unit="img", unit_scale=True, leave=False,
                       desc=f"{name} epoch {exp.epoch + 1}/{cfg.epochs}", disable=quiet,
                       dynamic_ncols=True)

            def progress(seen, total, loss, acc, bar=bar):
                bar.update(seen - bar.n)
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}%")

            try:
                m = exp.run_epoch(progress)
            except DivergedError as e:
                exp.diverged(e)
                status = {"dir": name, "status": "diverged", "message": str(e), "epoch": e.epoch}
                tqdm.write(f"{name}: diverged: {e}")
                break
            finally:
                bar.close()
            _echo(quiet, on_epoch, epoch_line(name, m.__dict__, cfg.epochs))
        else:
            exp.finish()
        results.append(status)
    return results
