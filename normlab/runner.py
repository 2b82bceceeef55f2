"""Running a study: experiments scheduled epoch by epoch over worker processes, files first.

The unit of work is one epoch of one experiment. A worker loads that experiment's last
checkpoint, trains one epoch and writes metrics and checkpoint atomically; the scheduler
always hands out the least advanced experiment that is not in flight. So 3 experiments on
2 cores finish together instead of leaving one core idle for the last third, and every
epoch that finished is on disk whatever happens next. Each worker runs one torch thread:
two one-thread processes train 1.45x faster than one two-thread process (docs/FACTS.md).

With several seeds the local executor runs them as rounds, seed after seed: each round is
the whole study for one seed, so an interrupted study leaves complete seeds behind (not
every experiment a third done), and each round's wall time is the time of one full study
on this machine, recorded per seed next to the total.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import data as datasets
from .config import ExperimentConfig
from .errors import DamagedError, DivergedError, NormlabError, notice
from .fileio import directory_lock
from .recovery import FINISHING, ExperimentState, inspect_experiment, repair_views
from .results import DAMAGED
from .studies import Study
from .summary import load_study_meta, machine_description, save_study_meta, write_summary
from .tensorboard import TensorBoardExport
from .train import Experiment

AfterEpoch = Callable[[str, int], None]  # (experiment directory name, epoch that landed)


@dataclass
class StudyOutcome:
    """The study's state after a run: what diverged, and what failed in this run (with its message);
    damaged experiments are in the summary, with their sentence."""

    summary: dict
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def plan_study(study: Study, out: Path, resume: bool) -> dict[str, ExperimentState]:
    """Every experiment's state, read without writing; the checks a run makes before it trains.

    A directory of another config, or results without `resume`, fail the whole study (the
    command is wrong); a damaged experiment is returned as such, and the others still run.
    """
    names = [e.dirname for e in study.experiments]
    if len(set(names)) != len(names):
        raise NormlabError("the study has two experiments with the same name and seed.")
    held = load_study_meta(Path(out), notify=lambda message: None).get("study")  # reads, never writes
    if held is not None and held != study.name:
        raise NormlabError(f"{out} holds the study '{held}', not '{study.name}'; use another --out.")
    states = {cfg.dirname: inspect_experiment(Path(out) / cfg.dirname, cfg.to_dict(), resume)
              for cfg in study.experiments}
    for dataset in dict.fromkeys(cfg.dataset for cfg in study.experiments):
        for split in datasets.SPLITS:  # fetched and verified once here, not in every worker
            datasets.load(dataset, split)
    return states


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cap_workers(workers: int | None, experiments: int, notify: Callable[[str], None]) -> int:
    """Workers = the request (default: one per core), capped at the cores and the experiments to run."""
    cores = available_cores()
    n = max(1, min(workers or cores, cores, max(experiments, 1)))
    if workers is not None and workers > n and experiments > 0:
        notify(f"--workers {workers} capped at {n} ({experiments} experiment(s) to run on {cores} core(s)).")
    return n


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates the pool


def train_epoch_task(cfg_dict: dict, exp_dir: str, device: str) -> dict:
    """One epoch of one experiment, from its files to its files. Runs in a worker process.

    An experiment whose epochs are all on disk gets only its misclassified pass.
    """
    cfg = ExperimentConfig.from_dict(cfg_dict)
    exp = Experiment(cfg, Path(exp_dir), device=device, resume=True)
    result = {"dir": cfg.dirname, "epoch": exp.epoch}
    if exp.epoch < cfg.epochs:
        try:
            result["metrics"] = exp.run_epoch().__dict__
        except DivergedError as e:
            exp.diverged(e)
            return {"dir": cfg.dirname, "status": "diverged", "message": str(e), "epoch": e.epoch}
        result["epoch"] = exp.epoch
    if exp.epoch >= cfg.epochs:
        exp.finish()
    return {**result, "status": "done" if exp.epoch >= cfg.epochs else "running"}


def _safe_task(cfg_dict: dict, exp_dir: str, device: str) -> dict:
    """train_epoch_task that reports a failure as a result, so the rest of the study goes on."""
    name = Path(exp_dir).name
    try:
        return train_epoch_task(cfg_dict, exp_dir, device)
    except DamagedError as e:
        return {"dir": name, "status": DAMAGED, "message": str(e)}
    except NormlabError as e:
        return {"dir": name, "status": "failed", "message": str(e)}
    except Exception as e:  # a bug: report it with its traceback
        return {"dir": name, "status": "failed", "message": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def epoch_line(name: str, m: dict, epochs: int) -> str:
    return (f"{name:<22} epoch {m['epoch']:>3}/{epochs:<3} train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:6.2f}%  test loss {m['test_loss']:.4f} "
            f"acc {m['test_accuracy']:6.2f}%  {m['images_per_second']:7,.0f} img/s  {m['seconds']:6.1f}s")


class _Terminate(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so no `except Exception` mistakes it for a failed epoch."""


def _raise_terminate(signum, frame):
    raise _Terminate()


def run_study(study: Study, out: Path, *, resume: bool = False, workers: int | None = None,
              device: str = "cpu", executor: str = "local", address: str | None = None,
              quiet: bool = False, on_epoch: Callable[[str], None] | None = None,
              notify: Callable[[str], None] = notice, tensorboard: bool = False,
              grouped: str = "auto") -> StudyOutcome:
    """Run every unfinished experiment of `study` into `out`, then write summary.json.

    Before training, every experiment directory is cross-checked against its checkpoint and its
    views are rebuilt where needed (each repair passed to `notify`); damaged experiments are left
    as they are and reported, the others run. Progress: tqdm bars on a terminal and one line per
    epoch; with quiet=True neither, each epoch's line passed to `on_epoch` if given. With
    `tensorboard`, each landed epoch is also written as TensorBoard events (`normlab.tensorboard`).
    `grouped` ("auto": on CUDA only, "on", "off") trains step-sharing experiments as one vmapped
    model in this process (`normlab.grouped`).
    """
    use_grouped = grouped == "on" or (grouped == "auto" and str(device).startswith("cuda"))
    if use_grouped and executor == "ray" and grouped == "on":
        raise NormlabError("--grouped on trains in this process and cannot be combined with --executor ray; "
                           "drop one of them.")
    use_grouped = use_grouped and executor != "ray"
    out = Path(out)
    with directory_lock(out):
        states = plan_study(study, out, resume)
        meta = load_study_meta(out, notify)
        # the directory's earlier experiments stay in the study (a second grid adds to the first)
        ours = {cfg.dirname for cfg in study.experiments}
        earlier = [c for c in meta.get("experiments", [])
                   if (d := ExperimentConfig.from_dict(c).dirname) not in ours and (out / d).is_dir()]
        meta.update(study=study.name, description=study.description,
                    experiments=earlier + [cfg.to_dict() for cfg in study.experiments])
        for name, state in states.items():
            repair_views(state, notify)
            if state.kind == FINISHING:
                notify(f"{name}: every epoch is on disk; its misclassified pass runs again to write "
                       "misclassified.json.")
        save_study_meta(out, meta)
        todo = {name: (cfg, states[name].epoch) for name, cfg in
                ((c.dirname, c) for c in study.experiments) if states[name].to_train}
        workers = cap_workers(workers, len(todo), notify)
        export = TensorBoardExport(out) if tensorboard else None  # a missing package fails before training
        after_epoch = export.epoch if export else None
        start = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, _raise_terminate)
        interrupted = False
        results: list[dict] = []
        try:
            if executor == "ray":
                from .ray_executor import run_with_ray
                results = run_with_ray(study, out, todo, device=device, address=address, quiet=quiet,
                                       on_epoch=on_epoch, after_epoch=after_epoch)
            elif use_grouped:
                from .grouped import run_grouped
                results = run_grouped(todo, out, device, quiet, on_epoch, after_epoch)
            else:
                with LocalExecutor(workers, device, quiet, on_epoch, after_epoch) as local:
                    for seed, round_todo in seed_rounds(study, todo, local.workers):
                        round_start = time.perf_counter()
                        label = study.name if seed is None else f"{study.name} seed {seed}"
                        try:
                            results += local.run(round_todo, out, label)
                        finally:
                            if seed is not None:
                                _record_wall(meta, round_start, key=f"seed {seed}")
        except (KeyboardInterrupt, _Terminate):
            interrupted = True
        finally:  # whatever happened, the time spent and every finished epoch reach summary.json
            signal.signal(signal.SIGTERM, previous)
            if export:
                if not interrupted:
                    export.catch_up([cfg.dirname for cfg in study.experiments])
                export.close()
            _record_wall(meta, start)
            meta.update(machine=machine_description(device), workers=workers)
            save_study_meta(out, meta)
            summary = write_summary(out, meta)
        if interrupted:
            raise KeyboardInterrupt
    outcome = StudyOutcome(summary)
    for r in results:
        if r["status"] == "failed":
            outcome.failed.append(f"{r['dir']}: {r['message']}")
    outcome.diverged = [e["dir"] for e in summary["experiments"] if e["status"] == "diverged"]
    return outcome


def _record_wall(meta: dict, start: float, key: str | None = None) -> None:
    """Add wall time since `start` to the study's total, or with `key` to one seed round's.

    Sums over invocations, so a resumed study reports all the time it took.
    """
    elapsed = time.perf_counter() - start
    if key is None:
        meta["wall_seconds"] = round((meta.get("wall_seconds") or 0.0) + elapsed, 2)
    else:
        rounds = meta.setdefault("round_wall_seconds", {})
        rounds[key] = round(rounds.get(key, 0.0) + elapsed, 2)


def seed_rounds(study: Study, todo: dict, workers: int):
    """(seed, the unfinished experiments of that seed) in the order the seeds were given.

    One round (seed None) when there is one seed, or when a seed has fewer experiments than
    there are workers: rounds would leave cores idle.
    """
    seeds = list(dict.fromkeys(cfg.seed for cfg in study.experiments))
    if len(seeds) == 1 or len(study.experiments) < workers * len(seeds):
        if todo:
            yield None, dict(todo)
        return
    for seed in seeds:
        round_todo = {k: v for k, v in todo.items() if v[0].seed == seed}
        if round_todo:
            yield seed, round_todo


def _echo(quiet: bool, on_epoch: Callable[[str], None] | None, line: str) -> None:
    if not quiet:
        tqdm.write(line)
    elif on_epoch:
        on_epoch(line)


def progress_bars(quiet: bool) -> bool:
    """Bars only on a terminal: piped output stays a clean log, one line per epoch."""
    return not quiet and sys.stderr.isatty()


_POOL: tuple[int, object] | None = None  # (workers, pool): kept for the next study of this process


def _worker_pool(workers: int):
    """A pool of `workers` one-thread processes, reused across studies in one process.

    Starting a worker (importing torch, loading the data) takes seconds; a notebook or a test
    suite that runs several studies pays it once. Workers hold no state between epoch tasks:
    each task rebuilds its experiment from its files.
    """
    global _POOL
    if _POOL is not None and _POOL[0] != workers:
        _discard_pool()
    if _POOL is None:
        _POOL = (workers, mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(1,)))
        atexit.register(_discard_pool)  # before interpreter teardown, so the pool exits quietly
    return _POOL[1]


def _discard_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL[1].terminate()
        _POOL[1].join()
        _POOL = None


class LocalExecutor:
    """Epoch tasks over a pool of one-thread worker processes, kept across seed rounds."""

    def __init__(self, workers: int | None, device: str, quiet: bool,
                 on_epoch: Callable[[str], None] | None = None, after_epoch: AfterEpoch | None = None):
        self.workers = max(1, workers or available_cores())
        self.device, self.quiet, self.on_epoch, self.after_epoch = device, quiet, on_epoch, after_epoch

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # interrupted or failed: stop the workers mid-epoch
            _discard_pool()

    def run(self, todo: dict, out: Path, label: str) -> list[dict]:
        if min(self.workers, len(todo)) == 1:
            return _run_in_process(todo, out, self.device, self.quiet, self.on_epoch, self.after_epoch)
        return _run_pool(_worker_pool(self.workers), min(self.workers, len(todo)), todo, out, label,
                         self.device, self.quiet, self.on_epoch, self.after_epoch)


def take_epoch_result(r: dict, name: str, todo: dict, bar: tqdm, quiet: bool,
                      on_epoch: Callable[[str], None] | None, after_epoch: AfterEpoch | None = None) -> bool:
    """Show one epoch task's result and advance `todo`; True when the experiment has finished.

    Shared by the local pool, the in-process loop and Ray, so all report epochs, failures and
    progress alike.
    """
    cfg, done = todo[name]
    if "metrics" in r:
        bar.update(1)
        _echo(quiet, on_epoch, epoch_line(name, r["metrics"], cfg.epochs))
        todo[name] = (cfg, r["epoch"])
    if after_epoch and ("metrics" in r or r["status"] == "diverged"):
        after_epoch(name, r["epoch"])
    if r["status"] == "running":
        return False
    if r["status"] != "done":
        bar.total -= cfg.epochs - todo[name][1]  # epochs that will never run
        tqdm.write(f"{name}: {r['status']}: {r['message']}", file=sys.stderr)
        if r.get("traceback"):
            tqdm.write(r["traceback"], file=sys.stderr)
    return True


def _next_experiment(todo: dict, in_flight: set[str]) -> str | None:
    """The least advanced experiment not in flight (ties: study order), so all advance together."""
    free = [(done, i, name) for i, (name, (cfg, done)) in enumerate(todo.items()) if name not in in_flight]
    return min(free)[2] if free else None


def _epoch_bar(todo: dict, label: str, quiet: bool) -> tqdm:
    return tqdm(total=sum(cfg.epochs - done for cfg, done in todo.values()), unit="epoch", desc=label,
                disable=not progress_bars(quiet), dynamic_ncols=True)


def _run_pool(pool, workers: int, todo: dict, out: Path, label: str, device: str, quiet: bool,
              on_epoch: Callable[[str], None] | None = None, after_epoch: AfterEpoch | None = None) -> list[dict]:
    """Hand out epochs of `todo`, least advanced experiment first, `workers` at a time."""
    bar = _epoch_bar(todo, f"{label} ({workers} workers)", quiet)
    results: list[dict] = []
    done_q: queue.Queue = queue.Queue()
    in_flight: set[str] = set()
    try:
        def submit_next() -> bool:
            name = _next_experiment(todo, in_flight)
            if name is None:
                return False
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
            if take_epoch_result(r, name, todo, bar, quiet, on_epoch, after_epoch):
                del todo[name]
                results.append(r)
            while len(in_flight) < workers and submit_next():
                pass
    finally:
        bar.close()
    return results


def _run_in_process(todo: dict, out: Path, device: str, quiet: bool,
                    on_epoch: Callable[[str], None] | None = None, after_epoch: AfterEpoch | None = None
                    ) -> list[dict]:
    """The pool's schedule in this process: one epoch at a time, least advanced experiment first,
    so an interrupted study leaves its experiments equally far along; one torch thread, as in the
    pool, so a study's numbers are the same whatever --workers is."""
    bar = _epoch_bar(todo, "epochs", quiet)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker: results must not depend on --workers (float sums)
    try:
        while (name := _next_experiment(todo, set())) is not None:
            cfg, _ = todo[name]
            r = _safe_task(cfg.to_dict(), str(out / name), device)
            if take_epoch_result(r, name, todo, bar, quiet, on_epoch, after_epoch):
                del todo[name]
                results.append(r)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return results
