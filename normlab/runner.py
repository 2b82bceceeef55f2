"""Running a study: plan it once under the lock, hand its epochs to an executor, keep the record.

The unit of work is one epoch of one experiment (`normlab.execution`). Before anything trains,
every experiment directory is checked once against its checkpoint and the command (views rebuilt,
damage reported), under the directory's lock; then one executor runs the pending epochs — worker
processes on this machine (default), step-sharing groups as one vmapped model (`--grouped`), or a
Ray cluster — and summary.json is written from what landed, whatever happened.

With several seeds the local executor runs them as rounds, seed after seed: each round is the
whole study for one seed, so an interrupted study leaves complete seeds behind (not every
experiment a third done), and each round's wall time is recorded per seed next to the total.

Ctrl-C, SIGTERM and SIGHUP (what a terminal, `timeout`, systemd or a batch scheduler send) end the
study within seconds: workers are stopped, every finished epoch stays, summary.json is written,
the lock is released; a second signal during that cleanup is ignored, not a traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from . import data as datasets
from .analysis import declare as declare_analysis
from .config import ExperimentConfig
from .errors import ArgumentError, NormlabError, notice
from .execution import EpochResult, Pending, Progress, Status
from .execution.registry import EXECUTORS, SWITCHES, ExecutionRequest, choose_executor
from .execution.schedule import Ledger, seed_rounds
from .fileio import TEMP_NAME, directory_lock, kind_of, remove_temp_files
from .interrupts import interrupts_raise_keyboard_interrupt
from .recovery import FINISHING, ExperimentState, inspect_experiment, repair_views
from .results import CHECKPOINT, CONFIG, DIVERGED, DONE, RUNNING, STUDY, read_json_file
from .studies import Study
from .summary import (
    check_no_running_study_around,
    has_study_record,
    load_study_meta,
    machine_description,
    machines_of,
    save_study_meta,
    write_summary,
)


@dataclass
class StudyOutcome:
    """The study's state after a run, and what failed in this run (with its sentence)."""

    summary: dict
    failed: list[str] = field(default_factory=list)


def plan_study(study: Study, out: Path, resume: bool) -> dict[str, ExperimentState]:
    """Every experiment's state, and the dataset fetched and verified once: the checks a run makes
    before it trains. Writes nothing in `out` (a dataset may be fetched into its cache).

    A directory of another config, or results without `resume`, fail the whole study (the
    command is wrong); a damaged experiment is returned as such, and the others still run.
    """
    names = [e.dirname for e in study.experiments]
    if len(set(names)) != len(names):
        raise NormlabError("the study has two experiments with the same name and seed.")
    check_study_folder(Path(out))
    held = load_study_meta(Path(out), notify=lambda message: None).get("study")  # reads, never writes
    if held is not None and held != study.name:
        raise NormlabError(f"{out} holds the study '{held}', not '{study.name}'; use another --out.")
    states = {cfg.dirname: inspect_experiment(Path(out) / cfg.dirname, cfg.to_dict(), resume)
              for cfg in study.experiments}
    for dataset in dict.fromkeys(cfg.dataset for cfg in study.experiments):
        for split in datasets.SPLITS:  # fetched and verified once here, not in every worker
            datasets.load(dataset, split)
    return states


def _experiment_folder(path: Path) -> bool:
    """Whether `path` is an experiment folder normlab made: a checkpoint, or a config.json whose
    experiment this folder is named after."""
    if kind_of(path) != "directory":
        return False
    if kind_of(path / CHECKPOINT) == "file":
        return True
    # without a checkpoint, normlab has written only config.json there (a start that trained nothing)
    if any(entry.name != CONFIG and not TEMP_NAME.fullmatch(entry.name) for entry in path.iterdir()):
        return False
    config = read_json_file(path / CONFIG)
    try:
        return config.ok and ExperimentConfig.from_dict(config.value).dirname == path.name
    except (NormlabError, TypeError, ValueError):
        return False


def check_study_folder(out: Path) -> None:
    """`out` is new, empty, a study normlab made (its study.json or summary.json), or holds only
    experiment folders normlab made: anything else is refused before a file is written there."""
    kind = kind_of(out)
    if kind is None:
        return
    if kind == "symbolic link":
        raise NormlabError(f"--out {out} is a symbolic link; normlab never writes through a link, so pass the "
                           f"folder it points to ({os.path.realpath(out)}) or a new folder.")
    if kind != "directory":
        raise NormlabError(f"--out {out} is a {kind}, not a folder; choose a new or empty folder.")
    if has_study_record(out):
        return
    for entry in sorted(out.iterdir()):
        if entry.name == ".lock" or TEMP_NAME.fullmatch(entry.name) or _experiment_folder(entry):
            continue
        raise NormlabError(f"{out} holds {entry.name}, which normlab did not make, and no study record "
                           f"({STUDY}); normlab changes only folders it made, so choose a new or empty --out.")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cap_workers(workers: int | None, experiments: int, notify: Callable[[str], None]) -> int:
    """Workers = the request (default: one per core), capped at the cores and the experiments to run."""
    cores = available_cores()
    n = max(1, min(workers or cores, cores, max(experiments, 1)))
    if workers is not None and workers > n and experiments > 0:
        notify(f"--workers {workers} capped at {n} ({experiments} experiment(s) to run on {cores} core(s)).")
    return n


def check_run_arguments(*, workers, executor, grouped, graph, device, address=None, flags=None,
                        callbacks=None) -> None:
    """run_study's own arguments, checked before anything is locked or read: a ValueError worded for Python.
    `flags` and `callbacks`: name -> value of the arguments that must be True/False, or callables (or None)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ArgumentError(f"workers={workers!r} must be a positive integer (or None: one per core).")
    for key, value in (flags or {}).items():
        if not isinstance(value, bool):
            raise ArgumentError(f"{key}={value!r:.60} must be True or False.")
    for key, value in (callbacks or {}).items():
        if value is not None and not callable(value):
            raise ArgumentError(f"{key}={value!r:.60} must be a function (or None).")
    if address is not None and (not isinstance(address, str) or not address):
        raise ArgumentError(f"address={address!r:.60} must be a Ray address such as 'ray://host:10001' (or None).")
    if not isinstance(executor, str) or executor not in EXECUTORS:
        raise ArgumentError(f"executor={executor!r} is not an executor; choose one of: {', '.join(EXECUTORS)}.")
    for key, value in (("grouped", grouped), ("graph", graph)):
        if not isinstance(value, str) or value not in SWITCHES:
            raise ArgumentError(f"{key}={value!r} must be one of: {', '.join(SWITCHES)}.")
    if not isinstance(device, str) or not device:
        raise ArgumentError(f"device={device!r} must be a device name such as 'cpu' or 'cuda'.")
    from .checkpoint import check_device

    check_device(device)


def record_plan(study: Study, out: Path, resume: bool, notify: Callable[[str], None]
                ) -> tuple[dict, dict[str, ExperimentState]]:
    """The planning half of a run, under the lock: every experiment's state checked (views repaired,
    damage found), the study's record (study.json) brought up to date — its experiments, families and,
    once, its declared analysis — and saved. Returns (the record, each experiment's state)."""
    states = plan_study(study, out, resume)
    meta = load_study_meta(out, notify)
    # the directory's earlier experiments stay in the study (a second grid adds to the first)
    ours = {cfg.dirname for cfg in study.experiments}
    earlier = [c for c in meta.get("experiments", [])
               if (d := ExperimentConfig.from_dict(c).dirname) not in ours and (out / d).is_dir()]
    meta.update(study=study.name, description=study.description,
                experiments=earlier + [cfg.to_dict() for cfg in study.experiments])
    if study.families:
        meta["families"] = study.families
    elif meta.get("families"):  # an earlier grid's questions: kept while the experiments they name are
        from .studies import families_problem

        names = [ExperimentConfig.from_dict(c).name for c in meta["experiments"]]
        if families_problem(meta["families"], STUDY, names):
            notify(f"the {STUDY} families name experiments this study no longer holds; they are dropped.")
            del meta["families"]
    if not isinstance(meta.get("analysis"), dict):  # declared once; a plan on record is never replaced
        before_data = not earlier and all(state.epoch == 0 for state in states.values())
        meta["analysis"] = declare_analysis(study.analysis, before_data)
    for name, state in states.items():
        repair_views(state, notify)
        if state.kind == FINISHING:
            notify(f"{name}: every epoch is on disk; its misclassified pass runs again to write "
                   "misclassified.json.")
        elif state.outdated:
            notify(f"{name}: {state.outdated}; its misclassified pass runs again to add it.")
    save_study_meta(out, meta)
    return meta, states


def run_study(study: Study, out: Path, *, resume: bool = False, workers: int | None = None,
              device: str = "cpu", executor: str = "local", address: str | None = None,
              quiet: bool = False, on_epoch: Callable[[str], None] | None = None,
              notify: Callable[[str], None] = notice, tensorboard: bool = False,
              grouped: str = "auto", graph: str = "auto") -> StudyOutcome:
    """Run every unfinished experiment of `study` into `out`, then write summary.json.

    Progress: tqdm bars on a terminal and one line per epoch; with quiet=True neither, each
    epoch's line passed to `on_epoch` if given. With `tensorboard`, each landed epoch is also
    written as TensorBoard events (`normlab.tensorboard`).
    """
    from .tensorboard import TensorBoardExport

    if not isinstance(study, Study):
        raise ArgumentError(f"study={study!r:.60} must be a Study, e.g. normlab.studies.build_study('mission').")
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise ArgumentError(f"out={out!r:.60} must be the path of a study folder.")
    check_run_arguments(workers=workers, executor=executor, grouped=grouped, graph=graph, device=device,
                        address=address, flags={"resume": resume, "quiet": quiet, "tensorboard": tensorboard},
                        callbacks={"on_epoch": on_epoch, "notify": notify})
    out = Path(out)
    check_no_running_study_around(out)
    check_study_folder(out)  # before the lock file is made: a folder normlab did not make stays untouched
    with interrupts_raise_keyboard_interrupt(), directory_lock(out):
        for d in (out, *(out / cfg.dirname for cfg in study.experiments)):
            remove_temp_files(d)  # left by a process killed mid-write; nothing else writes here now
        meta, states = record_plan(study, out, resume, notify)
        pending = {cfg.dirname: Pending(cfg, states[cfg.dirname].epoch) for cfg in study.experiments
                   if states[cfg.dirname].to_train}
        trains = any(p.done < p.config.epochs for p in pending.values())
        workers = cap_workers(workers, len(pending), notify)
        runner = choose_executor(ExecutionRequest(executor, grouped, graph, device, workers, address,
                                                  tuple(study.experiments)))
        export = TensorBoardExport(out) if tensorboard else None  # a missing package fails before training
        latest: dict[str, EpochResult] = {}  # each experiment's last result in this run
        start = time.perf_counter()
        interrupted = False
        results: list[EpochResult] = []
        try:
            train_rounds(runner, study, pending, out, workers, Progress(quiet, on_epoch), export,
                         meta if trains else None, latest, results)
        except KeyboardInterrupt:
            interrupted = True
        finally:  # whatever happened, the time spent and every finished epoch reach summary.json
            if export:
                if not interrupted:
                    export.catch_up([cfg.dirname for cfg in study.experiments])
                export.close()
            if trains:  # a resume that only writes files keeps the record of the machine that trained
                _record_wall(meta, start)
                meta["machines"] = machines_of(meta)  # the machines before this one, then this one
                meta.update(machine=machine_description(device), workers=workers)
                meta["machines"] = machines_of(meta)
            save_study_meta(out, meta)
            # what the planning read and the tasks reported; an interrupted or failed experiment is read again
            known = {} if interrupted else after_run(out, states, latest)
            summary = write_summary(out, meta, known=known)
        if interrupted:
            raise KeyboardInterrupt
    return StudyOutcome(summary, [f"{r.name}: {r.message}" for r in results if r.status is Status.FAILED])


def train_rounds(runner, study: Study, pending: dict[str, Pending], out: Path, workers: int, progress: Progress,
                 export, meta: dict | None, latest: dict[str, EpochResult], results: list[EpochResult]) -> None:
    """The running half: the executor's results, round after round (one round, or one per seed for the
    local executor), each taken into a `Ledger` and shown; `latest` and `results` collect each
    experiment's last result and the final ones, even when a round is interrupted. With `meta`
    (a run that trains), each seed round's wall time is recorded in it."""
    rounds = seed_rounds(study.experiments, pending, workers) if runner.seed_rounds else [(None, pending)]
    for seed, round_pending in rounds:
        round_start = time.perf_counter()
        progress.start(study.name if seed is None else f"{study.name} seed {seed}", round_pending)
        ledger = Ledger(round_pending)
        try:
            with closing(runner.run(round_pending, out)) as landed:
                for result in landed:
                    progress.show(result, ledger.take(result))
                    if export and (result.metrics is not None or result.status is Status.DIVERGED):
                        export.epoch(result.name, result.epoch)
        finally:
            progress.close()
            latest.update(ledger.latest)
            results += ledger.final
            if seed is not None and meta is not None:  # as the total: only time spent training counts
                _record_wall(meta, round_start, key=f"seed {seed}")


def after_run(out: Path, planned: dict[str, ExperimentState], latest: dict[str, EpochResult]
              ) -> dict[str, ExperimentState]:
    """Each experiment's state after a run without reading its checkpoint again: as planned if
    nothing ran, else from its last task's record. One whose last task failed is left out (read again)."""
    known = {}
    for name, state in planned.items():
        if not state.to_train:
            known[name] = state
        elif name in latest and latest[name].record is not None and latest[name].status in STATE_OF:
            r = latest[name]
            known[name] = ExperimentState(out / name, STATE_OF[r.status], config=r.record["experiment"],
                                          checkpoint=r.record)
    return known


STATE_OF = {Status.DONE: DONE, Status.RUNNING: RUNNING, Status.DIVERGED: DIVERGED}


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
