"""Fault injection: a run directory whose files are missing, empty, truncated or garbage.

The matrix: every file of an experiment and of a study x {missing, empty, truncated, garbage}
x {unfinished, finished} x {`run --resume` with the worker pool, with one worker, `report`}.
Every cell must end in full recovery, equal to an uninterrupted run, or in exit 2 with one
sentence naming the damaged file and its fix; never a traceback, never exit 0 with a changed
history; the undamaged experiments always finish and are reported.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import science

from normlab import figures as figures_module
from normlab import report as report_module
from normlab.checkpoint import load_checkpoint
from normlab.cli import main
from normlab.experiment import Experiment
from normlab.results import read_metrics

ARGS = ["--epochs", "2", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32", "--seeds", "1", "--quiet"]
EXPERIMENTS = ("bn-l1-seed1", "gn-seed1", "ln-seed1")
DAMAGED_EXP = "bn-l1-seed1"
EXPERIMENT_FILES = ("config.json", "metrics.csv", "dynamics.csv", "model.pt", "status.json", "misclassified.json")
STUDY_FILES = ("study.json", "summary.json")
DAMAGES = ("missing", "empty", "truncated", "garbage")
MODES = {
    "pool": ["run", *ARGS, "--resume", "--workers", "2"],
    "one-worker": ["run", *ARGS, "--resume", "--workers", "1"],
    "report": ["report"],
}
UNRECOVERABLE = {"model.pt"}  # the source of truth itself: refused, never guessed
# when and how it ran, not what it computed: the pool records 2 processes where one worker recorded 1
TIMING = {"seconds", "train_seconds", "wall_seconds", "seed_rounds", "machine", "machines", "workers", "trained_by"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Worker processes train with one thread; the in-process runs here must do the same to be bit-equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


pytestmark = pytest.mark.usefixtures("no_drawing")  # the matrix is about files and recovery


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A finished study, and the same study interrupted (Ctrl-C) after every experiment's first epoch."""
    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures_module, "REGISTRY", [])  # no figure is drawn
        mp.setattr(report_module, "plot_misclassified", lambda *a, **k: None)
        assert main(["run", *ARGS, "--workers", "1", "--out", str(root / "finished")]) == 0
        real_run_epoch = Experiment.run_epoch

        def interrupt_at_epoch_2(self, *args, **kwargs):
            if self.epoch >= 1:
                raise KeyboardInterrupt
            return real_run_epoch(self, *args, **kwargs)

        mp.setattr(Experiment, "run_epoch", interrupt_at_epoch_2)
        assert main(["run", *ARGS, "--workers", "1", "--out", str(root / "unfinished")]) == 130
    for d in EXPERIMENTS:
        assert load_checkpoint(root / "unfinished" / d / "model.pt")["epoch"] == 1
    return {"finished": root / "finished", "unfinished": root / "unfinished"}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes() if path.exists() else b""
    if how == "missing":
        path.unlink(missing_ok=True)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(max(len(data), 64))))


def experiment_record(exp_dir: Path) -> dict:
    """What an experiment's results are, wall time aside: its views and its checkpoint."""
    ckpt = load_checkpoint(exp_dir / "model.pt")
    record = {
        "config": json.loads((exp_dir / "config.json").read_text()),
        "metrics": science(read_metrics(exp_dir / "metrics.csv")),
        "status": json.loads((exp_dir / "status.json").read_text()),
        "history": science(ckpt["history"]),
        "epoch": ckpt["epoch"],
        "weights": {k: v.tolist() for k, v in ckpt["model"].items()},
        "dynamics": ckpt["dynamics"],
        "dynamics_view": (exp_dir / "dynamics.csv").read_text(),
    }
    if (exp_dir / "misclassified.json").exists():
        record["misclassified"] = json.loads((exp_dir / "misclassified.json").read_text())
    return record


@functools.cache
def pristine_record(exp_dir: Path) -> dict:
    """experiment_record of an undamaged experiment of the module's pristine studies, which no test
    writes to: read once, not once per cell."""
    return experiment_record(exp_dir)


def summary_record(study_dir: Path) -> dict:
    summary = json.loads((study_dir / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if k not in TIMING}
    summary["experiments"] = [{k: v for k, v in e.items() if k not in TIMING} for e in summary["experiments"]]
    return summary


CELLS = [(f, d, s, m) for f in EXPERIMENT_FILES + STUDY_FILES for d in DAMAGES
         for s in ("unfinished", "finished") for m in MODES]


@pytest.mark.slow
@pytest.mark.parametrize("file, how, state, mode", CELLS, ids=["-".join(c) for c in CELLS])
def test_fault_matrix(pristine, tmp_path, capsys, file, how, state, mode):
    study = tmp_path / "study"
    shutil.copytree(pristine[state], study)
    target = study / (DAMAGED_EXP if file in EXPERIMENT_FILES else "") / file
    damage(target, how)
    code = main([*MODES[mode], str(study)] if mode == "report" else [*MODES[mode], "--out", str(study)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # what an undamaged copy of the same state becomes with the same command
    reference = pristine["finished"] if mode != "report" else pristine[state]
    refused = file in UNRECOVERABLE
    if refused:
        assert code == 2, err
        errors = [line for line in err.splitlines() if line.startswith("normlab: error:")]
        assert len(errors) == 1 and str(target) in errors[0] and "delete" in errors[0], err
        (entry,) = [e for e in json.loads((study / "summary.json").read_text())["experiments"]
                    if e["dir"] == DAMAGED_EXP]
        assert entry["status"] == "damaged"
        assert target.exists() or how == "missing"  # a damaged source of truth is left for the user
    else:
        assert code == 0, err
        experiment_rebuilt = file in EXPERIMENT_FILES and not (
            file == "misclassified.json" and state == "unfinished" and how == "missing")
        if experiment_rebuilt:
            assert file in err, f"the output must say that {file} was rebuilt: {err!r}"
    left_for_run = mode == "report" and file == "misclassified.json" and state == "finished"
    if left_for_run:  # a report trains nothing: the misclassified pass is left to `run --resume`, and said so
        assert "--resume" in err and not (target.exists() and how != "missing"), err
        (entry,) = [e for e in json.loads((study / "summary.json").read_text())["experiments"]
                    if e["dir"] == DAMAGED_EXP]
        assert entry["status"] == "running"
        assert main([*MODES["one-worker"], "--out", str(study)]) == 0
    if not refused:
        assert summary_record(study) == summary_record(pristine["finished"] if left_for_run else reference)
    for d in EXPERIMENTS:
        if refused and d == DAMAGED_EXP:
            continue
        expected = pristine["finished"] if left_for_run else reference
        assert experiment_record(study / d) == pristine_record(expected / d), d


@pytest.mark.slow
def test_two_experiments_killed_in_their_misclassified_pass_finish_in_the_pool(pristine, tmp_path, capsys):
    """Checkpointed at the last epoch but not yet marked done: the pool only redoes the misclassified pass."""
    study = tmp_path / "study"
    shutil.copytree(pristine["finished"], study)
    for d in ("bn-l1-seed1", "gn-seed1"):
        (study / d / "misclassified.json").unlink()
        status = json.loads((study / d / "status.json").read_text())
        (study / d / "status.json").write_text(json.dumps({**status, "status": "running"}))
    assert main(["run", *ARGS, "--resume", "--workers", "2", "--out", str(study)]) == 0, capsys.readouterr().err
    for d in EXPERIMENTS:
        assert experiment_record(study / d) == pristine_record(pristine["finished"] / d)


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _foreign_checkpoint(study: Path) -> None:
    shutil.copy(study / "gn-seed1" / "model.pt", study / DAMAGED_EXP / "model.pt")


def _study_json(content) -> callable:
    return lambda study: (study / "study.json").write_text(json.dumps(content))


# Faults beyond the four damage kinds: files of the right type with the wrong content, foreign
# files, directories where files belong, both study files at once. (case, fault, recovers)
CONTENT_FAULTS = [
    ("config-is-a-directory", lambda s: _replace_with_directory(s / DAMAGED_EXP / "config.json"), False),
    ("metrics-is-a-directory", lambda s: _replace_with_directory(s / DAMAGED_EXP / "metrics.csv"), False),
    ("foreign-checkpoint", _foreign_checkpoint, False),
    ("config-edited-lr", lambda s: (s / DAMAGED_EXP / "config.json").write_text(json.dumps(
        {**json.loads((s / DAMAGED_EXP / "config.json").read_text()), "lr": 0.5})), False),
    ("metrics-edited-number", lambda s: (s / DAMAGED_EXP / "metrics.csv").write_text(
        (s / DAMAGED_EXP / "metrics.csv").read_text().replace(",", ",9", 3)), True),
    ("metrics-crlf", lambda s: (s / DAMAGED_EXP / "metrics.csv").write_bytes(
        (s / DAMAGED_EXP / "metrics.csv").read_bytes().replace(b"\n", b"\r\n")), True),
    ("status-empty-object", lambda s: (s / DAMAGED_EXP / "status.json").write_text("{}"), True),
    ("misclassified-a-number", lambda s: (s / DAMAGED_EXP / "misclassified.json").write_text("5"), True),
    ("study-experiments-a-number", _study_json({"study": "mission", "experiments": 5}), True),
    ("study-wall-a-string", _study_json({"study": "mission", "wall_seconds": "x"}), True),
    ("study-rounds-malformed", _study_json({"study": "mission", "round_wall_seconds": {"x": 1}}), True),
    ("both-study-files", lambda s: ((s / "study.json").write_text("{"), (s / "summary.json").write_text("7")), True),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, fault, recovers", CONTENT_FAULTS, ids=[c[0] for c in CONTENT_FAULTS])
@pytest.mark.parametrize("mode", list(MODES))
def test_content_faults_recover_or_refuse_one_experiment(pristine, tmp_path, capsys, case, fault, recovers, mode):
    study = tmp_path / "study"
    shutil.copytree(pristine["finished"], study)
    fault(study)
    code = main([*MODES[mode], str(study)] if mode == "report" else [*MODES[mode], "--out", str(study)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    others = [d for d in EXPERIMENTS if d != DAMAGED_EXP]
    if recovers:
        assert code == 0, err
        if mode == "report" and case.startswith("misclassified"):  # a report trains nothing; run does
            assert "--resume" in err
            assert main([*MODES["one-worker"], "--out", str(study)]) == 0
        for d in EXPERIMENTS:
            assert experiment_record(study / d) == pristine_record(pristine["finished"] / d), d
    else:
        assert code == 2, err
        assert len([line for line in err.splitlines() if line.startswith("normlab: error:")]) == 1, err
        assert DAMAGED_EXP in err
        entries = {e["dir"]: e for e in json.loads((study / "summary.json").read_text())["experiments"]}
        assert entries[DAMAGED_EXP]["status"] == "damaged"
        assert all(entries[d]["status"] == "done" for d in others)
    for d in others:
        assert experiment_record(study / d) == pristine_record(pristine["finished"] / d), d
