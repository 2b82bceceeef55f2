"""The `normlab` command. Every user-fixable problem ends as one sentence and a non-zero exit."""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import typing
from dataclasses import fields
from pathlib import Path

from . import __version__, interrupts
from .config import SETTINGS, ExperimentConfig
from .data import DATASETS
from .errors import ConfigError, NormlabError, notice, os_error_fix
from .execution.registry import EXECUTORS, SWITCHES
from .interrupts import interrupts_raise_keyboard_interrupt
from .results import DAMAGED, DIVERGED, REPORT
from .studies import presets
from .zoo import NORMS

EXIT_FAILED = 1
EXIT_USAGE = 2  # bad input, or a damaged result file: one sentence says which and how to fix it
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _bool(text: str) -> bool:
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
             "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "all") else int(text)


def _setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ExperimentConfig field, generated from the dataclass: its type, default and help.

    Each takes one or more values; several values make a grid (`normlab run`)."""
    hints = typing.get_type_hints(ExperimentConfig)
    choices = {"norm": NORMS, "dataset": DATASETS}
    for f in fields(ExperimentConfig):
        if f.name == "name":
            continue
        kind = {bool: _bool, int: int, float: float, str: str}.get(hints[f.name], _optional_int)
        default = "all" if f.default is None else f.default
        listed = f" ({' | '.join(choices[f.name])})" if f.name in choices else ""
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, nargs="+",
                       metavar=f.metadata["metavar"], help=f"{f.metadata['help']}{listed} (default: {default})")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="the same as --seed with several values")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=[False],
                   help="the same as --augment false")
    p.add_argument("--no-dynamics", dest="dynamics", action="store_const", const=[False],
                   help="the same as --dynamics false")


def _common(p: argparse.ArgumentParser) -> None:
    _setting_flags(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: runs/<study>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run; finished experiments are skipped")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes, one torch thread each (default: one per core)")
    p.add_argument("--executor", default="local", choices=tuple(EXECUTORS),
                   help="local: worker processes; grouped: as --grouped on; ray: a Ray cluster (default: local)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address for --executor ray (default: start a local Ray)")
    p.add_argument("--dry-run", action="store_true",
                   help="make every check a real run makes, list each experiment as new, resumable or done; train nothing")
    p.add_argument("--grouped", default="auto", choices=SWITCHES,
                   help="train experiments that share a step (differing only in seed, lr, momentum, l1, l2) as "
                        "one vmapped model in this process; auto: on CUDA only (default: auto)")
    p.add_argument("--graph", default="auto", choices=SWITCHES,
                   help="capture each group's training step as a CUDA graph and replay it; auto: on CUDA with the "
                        "grouped executor (default: auto)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each epoch's metrics, dynamics and layer histograms as TensorBoard events "
                        "under <out>/tensorboard (needs: pip install 'normlab[tensorboard]')")
    p.add_argument("--quiet", action="store_true",
                   help="no per-epoch lines (progress bars show only on a terminal anyway); notes, errors and the final table remain")


class Parser(argparse.ArgumentParser):
    """argparse, with a malformed command line reported as one sentence like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"normlab: error: {message}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="normlab", description="Compare BatchNorm, LayerNorm and GroupNorm (and L1/L2) on small "
        "image classifiers, with every number kept in result files.")
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("run", help="run a study, then draw its plots and report", description=(
        "Run a study: a preset, a .toml study file, or (with --norm and no STUDY) the grid of the "
        "settings given here. A setting given several values multiplies the study (a grid)."))
    p.add_argument("study", nargs="?", metavar="STUDY",
                   help=f"{' | '.join(presets())} | path/to/study.toml (default: mission, or with --norm "
                   "and no STUDY the grid of the settings given)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train one experiment")
    p.add_argument("--name", metavar="NAME", help="experiment name (default: the norm)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="redraw every plot and report.md from the result files in DIR")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--exploratory", nargs="+", metavar="KEY=VALUE",
                   help="also apply another analysis plan (e.g. test=student correction=none alpha=0.01), "
                        "shown beside the study's declared plan and labelled exploratory (default: none)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("explain", help="BN, LN and GN computed step by step, checked against torch.nn")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("data", help="fetch and verify a dataset, print where it lives")
    p.add_argument("--dataset", default="mnist", metavar="NAME", help=f"{' | '.join(DATASETS)} (default: mnist)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("bench", help="training throughput of normlab vs the seed-style pipeline")
    p.add_argument("--seconds", type=float, default=20.0, metavar="S", help="length of each measurement (default: 20)")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="measurements per pipeline, interleaved (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--grouped", type=int, default=0, metavar="K",
                   help="also measure K experiments trained as one vmapped model (default: 0, off)")
    p.set_defaults(func=cmd_bench)
    return parser


def _grid(args: argparse.Namespace) -> dict[str, list]:
    """The settings given on the command line: name -> values."""
    return {k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None}


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers <= 0:
        raise NormlabError(f"--workers must be a positive integer, got {args.workers}.")


def _warn(message: str) -> None:
    print(f"normlab: warning: {message}", file=sys.stderr)


def _warn_unused(args: argparse.Namespace, study) -> None:
    """Options that change nothing in this study: say so rather than let the user believe they acted."""
    def values(v: list) -> str:
        return " ".join(map(str, v))

    grouped_norms = [name for name, entry in NORMS.items() if entry.uses_groups]
    if args.groups is not None and not any(e.norm in grouped_norms for e in study.experiments):
        _warn(f"--groups {values(args.groups)} has no effect: no experiment of this study uses a norm with "
              f"groups ({', '.join(grouped_norms)}).")
    if args.seeds and args.seed is not None:
        _warn(f"--seed {values(args.seed)} has no effect beside --seeds {values(args.seeds)}.")
    for warning in study.warnings:
        _warn(warning)


def study_exit_code(summary: dict, failed: list[str]) -> int:
    """The exit code of a study's state, whatever this invocation did: damaged 2, failed 1, diverged 3."""
    entries = summary["experiments"]
    for e in entries:
        if e["status"] == DAMAGED:
            print(f"normlab: error: {e['message']}", file=sys.stderr)
    for f in failed:
        print(f"normlab: failed: {f}", file=sys.stderr)
    diverged = [e["dir"] for e in entries if e["status"] == DIVERGED]
    if diverged and not failed:
        others = "; the others finished" if len(diverged) < len(entries) else ""
        print(f"normlab: {len(diverged)} experiment(s) diverged: {', '.join(diverged)} "
              f"(recorded in summary.json{others}).", file=sys.stderr)
    if any(e["status"] == DAMAGED for e in entries):
        return EXIT_USAGE
    if failed:
        return EXIT_FAILED
    return EXIT_DIVERGED if diverged else 0


def _dry_run(study, args, out: Path, device: str) -> int:
    """Every check of a real run (config, data, directories, lock), then each experiment's state."""
    from .execution.registry import ExecutionRequest, chosen_name
    from .fileio import check_can_create, check_unlocked
    from .runner import cap_workers, plan_study
    from .summary import check_no_running_study_around

    chosen_name(ExecutionRequest(args.executor, args.grouped, args.graph, device, 1, args.address))
    check_no_running_study_around(out)  # as a real run: a folder inside a study being written is refused
    check_can_create(out)
    check_unlocked(out)
    states = plan_study(study, out, args.resume)
    todo = sum(s.to_train for s in states.values())
    workers = cap_workers(args.workers, todo, notice)
    print(f"study {study.name}: {len(study.experiments)} experiments -> {out} "
          f"({todo} to run, {workers} worker(s))")
    defaults = ExperimentConfig().to_dict()
    configs = [e.to_dict() for e in study.experiments]
    varying = {k for k in defaults if len({repr(c[k]) for c in configs}) > 1}
    for e, config in zip(study.experiments, configs):
        state = states[e.dirname]
        shown = " ".join(f"{k}={v}" for k, v in config.items() if k not in ("name", "seed") and (
            k in ("norm", "epochs") or k in varying or v != defaults[k]))
        print(f"  {e.dirname:<24} {shown}  [{state.describe()}]")
        for name, why in state.repairs:
            print(f"    would rebuild {name} ({why})")
    damaged = [s.problem for s in states.values() if s.kind == DAMAGED]
    for problem in damaged:
        print(f"normlab: error: {problem}", file=sys.stderr)
    if damaged:
        return EXIT_USAGE
    return EXIT_DIVERGED if any(s.kind == DIVERGED for s in states.values()) else 0


def _execute(study, args, out: Path) -> int:
    from .runner import run_study
    from .training.data import resolve_device

    device = str(resolve_device(args.device))
    _warn_unused(args, study)
    if args.dry_run:
        return _dry_run(study, args, out, device)
    outcome = run_study(study, out, resume=args.resume, workers=args.workers, device=device,
                        executor=args.executor, address=args.address, quiet=args.quiet,
                        tensorboard=args.tensorboard, grouped=args.grouped, graph=args.graph)
    # the report's scipy and matplotlib are imported after training, not before it
    from .report import final_table, generate_report

    summary = generate_report(out, outcome.summary)
    print(final_table(summary))
    print(f"results: {out}")
    return study_exit_code(summary, outcome.failed)


def cmd_run(args: argparse.Namespace) -> int:
    from .studies import build_study, grid_study

    _check_workers(args)
    grid = _grid(args)
    seeds = args.seeds
    if seeds and "seed" in grid:
        grid.pop("seed")
    if args.study is None and "norm" in grid:
        study = grid_study(grid, seeds)
    else:
        study = build_study(args.study or "mission", seeds=seeds, grid=grid)
    datasets = {e.dataset for e in study.experiments}
    suffix = f"-{datasets.pop()}" if len(datasets) == 1 and "mnist" not in datasets else ""
    out = args.out or Path("runs") / f"{study.name}{suffix}"
    return _execute(study, args, out)


def cmd_train(args: argparse.Namespace) -> int:
    from .model import check_norm
    from .studies import Study

    _check_workers(args)
    grid = _grid(args)
    if "norm" not in grid:
        raise NormlabError("normlab train needs --norm; choose one of: " + ", ".join(NORMS) + ".")
    several = [k for k, v in grid.items() if len(v) > 1]
    if several:
        raise NormlabError(f"normlab train runs one experiment, but --{several[0].replace('_', '-')} has "
                           f"{len(grid[several[0]])} values; use normlab run for a grid.")
    if args.seeds:
        raise NormlabError("normlab train runs one experiment; use --seed N, or normlab run --seeds for several.")
    settings = {k: v[0] for k, v in grid.items()}
    check_norm(settings["norm"], settings.get("groups", ExperimentConfig().groups))
    cfg = ExperimentConfig(**{**settings, "name": args.name or str(settings["norm"]).strip().lower()})
    study = Study(name="train", experiments=[cfg], description=f"one experiment: {cfg.name}")
    return _execute(study, args, args.out or Path("runs") / "train")


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis import parse_overrides
    from .report import final_table, generate_report
    from .summary import refresh_summary

    exploratory = parse_overrides(args.exploratory) if args.exploratory else None
    summary = generate_report(args.dir, refresh_summary(args.dir, notice), exploratory)
    print(final_table(summary))
    print(f"report: {args.dir / REPORT}")
    return study_exit_code(summary, [])


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_text

    print(explain_text(), end="")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from . import data

    folder = data.fetch(data.spec(args.dataset).name)
    for split in data.SPLITS:
        images, labels = data.load(args.dataset, split)
        print(f"{args.dataset} {split}: {len(labels)} images {tuple(images.shape[1:])}, verified by md5")
    print(folder)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    if not 0 < args.seconds < float("inf") or args.repeats < 1 or args.grouped < 0:
        raise NormlabError("--seconds must be a positive finite number, --repeats at least 1 and --grouped "
                           "zero or more.")
    return run_bench(seconds=args.seconds, repeats=args.repeats, as_json=args.json, device=args.device,
                     grouped=args.grouped)


INTERRUPTED = {
    "run": "every finished epoch is saved. Continue with the same command and --resume.",
    "train": "every finished epoch is saved. Continue with the same command and --resume.",
    "report": "each figure and report.md is whole, the previous version or the new one; run it again to finish.",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command line; the exit status. From a shell use `entry_point`, which also makes an
    interrupted command end with that status."""
    args = build_parser().parse_args(argv)
    try:
        try:
            with interrupts_raise_keyboard_interrupt(restore_after_interrupt=False):
                code = args.func(args)
            if interrupts.received():  # the interrupt was swallowed where Python cannot raise it
                raise KeyboardInterrupt
            return code
        except Exception as e:  # after a signal, whatever a library turned the interrupt into
            if interrupts.received():
                raise KeyboardInterrupt from e
            raise
    except ConfigError as e:  # worded for Python (groups=3); here the flag is named (--groups 3)
        print(f"normlab: error: {e.for_cli()}", file=sys.stderr)
        return EXIT_USAGE
    except NormlabError as e:
        print(f"normlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `normlab run --dry-run | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        return 1
    except OSError as e:  # a file or folder the system refused: one sentence, no traceback
        where = f" {e.filename}" if e.filename else " a file"
        print(f"normlab: error: cannot access{where} ({e.strerror or e}); {os_error_fix(e)}.", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return interrupted(args.command)


def interrupted(command: str) -> int:
    print(f"normlab: interrupted; {INTERRUPTED.get(command, 'nothing was left half-written.')}", file=sys.stderr)
    return EXIT_INTERRUPTED


def entry_point() -> None:
    """`normlab` and `python -m normlab`. An interrupt that lands while a library runs `exec` on a
    string (scipy does, as it imports) makes CPython 3.11 end the process by SIGINT at exit, even
    though normlab handled it and printed its sentence; so an interrupted command finishes its exit
    here, after the exit handlers, with the 130 that `main` returned."""
    code = main()
    for s in interrupts.SIGNALS:  # the work is over: a late signal no longer changes how it ended
        signal.signal(s, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
