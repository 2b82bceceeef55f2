"""Reliability V: what counts as normlab's own record, links around a study, numbers a mask cannot
draw, nesting a parser cannot follow, damaged records, and the kinds of errors Python callers get."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.fileio import directory_lock

TINY = ["--epochs", "1", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32", "--quiet"]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def _one_sentence(err: str) -> None:
    assert "Traceback" not in err and err.strip().count("\n") == 0 and err.startswith("normlab: error: "), err


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A finished one-epoch study of two experiments, trained once for the module."""
    out = tmp_path_factory.mktemp("v") / "s"
    assert main(["run", "--norm", "bn", "ln", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(study, tmp_path) -> Path:
    shutil.copytree(study, tmp_path / "s", symlinks=True)
    return tmp_path / "s"


# --- 1, 9. a hand-made record or experiment folder makes nothing normlab's ---

@pytest.mark.parametrize("record", [{"study": "train"}, {"study": "train", "experiments": []},
                                    {"study": "x", "dirs": ["foo"]}])
@pytest.mark.parametrize("command", ["train", "report", "dry-run"])
def test_a_hand_made_study_record_makes_no_folder_a_study(tmp_path, capsys, record, command):
    folder = tmp_path / "a"
    (folder / "foo").mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(record))
    (folder / "report.md").write_text("mine\n")
    (folder / "test_accuracy.png").write_text("x\n")
    (folder / "foo" / "metrics.csv").write_text("my,data\n")
    (folder / "foo" / "status.json").write_text("{}")
    before = _snapshot(folder)
    argv = {"train": ["train", "--norm", "bn", *TINY, "--out", str(folder)],
            "dry-run": ["train", "--norm", "bn", *TINY, "--out", str(folder), "--dry-run"],
            "report": ["report", str(folder)]}[command]
    assert main(argv) == 2
    _one_sentence(capsys.readouterr().err)
    assert _snapshot(folder) == before


def test_a_hand_made_summary_record_makes_no_folder_a_study(tmp_path, capsys):
    folder = tmp_path / "a"
    (folder / "foo").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"study": "x", "experiments": [{"dir": "foo", "name": "foo",
                                                                                     "status": "pending"}]}))
    (folder / "foo" / "metrics.csv").write_text("my,data\n")
    before = _snapshot(folder)
    assert main(["report", str(folder)]) == 2
    _one_sentence(capsys.readouterr().err)
    assert _snapshot(folder) == before


def test_a_hand_made_experiment_folder_with_a_matching_config_is_not_overwritten(study, tmp_path, capsys):
    folder = tmp_path / "h2"
    (folder / "bn-seed1").mkdir(parents=True)
    shutil.copy(study / "bn-seed1" / "config.json", folder / "bn-seed1" / "config.json")
    (folder / "bn-seed1" / "metrics.csv").write_text("user data\n")
    (folder / "bn-seed1" / "status.json").write_text("{}")
    before = _snapshot(folder)
    assert main(["run", "--norm", "bn", *TINY, "--out", str(folder)]) == 2
    _one_sentence(capsys.readouterr().err)
    assert _snapshot(folder) == before


def test_inside_a_study_a_view_without_its_checkpoint_is_refused_not_removed(copy, capsys):
    (copy / "ln-seed1" / "model.pt").unlink()
    (copy / "ln-seed1" / "status.json").write_text("{}")
    (copy / "ln-seed1" / "metrics.csv").write_text("user data\n")
    for name in ("misclassified.json", "dynamics.csv"):
        (copy / "ln-seed1" / name).unlink(missing_ok=True)
    assert main(["report", str(copy)]) == 2
    assert "model.pt is not" in capsys.readouterr().err
    assert (copy / "ln-seed1" / "metrics.csv").read_text() == "user data\n"


def test_normlab_marks_its_records_and_still_reads_records_from_before_the_mark(copy, capsys):
    for name in ("study.json", "summary.json"):
        assert json.loads((copy / name).read_text())["normlab"] == {"format": 1}
    for name in ("study.json", "summary.json"):  # as the committed results/ studies were written
        record = json.loads((copy / name).read_text())
        del record["normlab"]
        (copy / name).write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 0
    capsys.readouterr()
    assert main(["run", "--norm", "bn", "ln", *TINY, "--out", str(copy), "--resume"]) == 0


def test_a_committed_study_is_still_a_study():
    from normlab.summary import has_study_record

    assert has_study_record(Path(__file__).parent.parent / "results" / "gn-groups")


# --- 2, 12. links around a study ---

def test_tensorboard_never_writes_through_a_link(copy, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (copy / "tensorboard").symlink_to(victim, target_is_directory=True)
    code = main(["run", "--norm", "bn", "ln", *TINY, "--out", str(copy), "--resume", "--tensorboard"])
    assert code == 2 and "symbolic link" in capsys.readouterr().err
    assert list(victim.iterdir()) == []


def test_tensorboard_never_writes_through_an_experiments_link(copy, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (copy / "tensorboard").mkdir()
    (copy / "tensorboard" / "bn-seed1").symlink_to(victim, target_is_directory=True)
    main(["run", "--norm", "bn", "ln", *TINY, "--out", str(copy), "--resume", "--tensorboard"])
    assert "symbolic link" in capsys.readouterr().err
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "report", "dry-run"])
def test_an_out_that_is_a_symbolic_link_is_refused(copy, tmp_path, capsys, command):
    link = tmp_path / "link"
    link.symlink_to(copy, target_is_directory=True)
    before = _snapshot(copy)
    argv = {"run": ["run", "--norm", "bn", "ln", *TINY, "--out", str(link), "--resume"],
            "dry-run": ["run", "--norm", "bn", "ln", *TINY, "--out", str(link), "--resume", "--dry-run"],
            "report": ["report", str(link)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "symbolic link" in err and _snapshot(copy) == before


# --- 10. --dry-run refuses what a run refuses ---

def test_dry_run_refuses_a_folder_inside_a_running_study(tmp_path, capsys):
    running = tmp_path / "conc" / "study"
    with directory_lock(running):
        assert main(["run", "--norm", "bn", *TINY, "--out", str(running / "x"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "another normlab process" in err
