"""Reliability V: what counts as normlab's own record, links around a study, numbers a mask cannot
draw, nesting a parser cannot follow, damaged records, and the kinds of errors Python callers get."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import RELIABILITY_TINY, snapshot

from normlab.cli import main
from normlab.fileio import directory_lock
from normlab.view import StudyView

pytestmark = pytest.mark.usefixtures("no_drawing")  # files, records and errors: test_plots draws the figures

TINY = RELIABILITY_TINY




def _one_sentence(err: str) -> None:
    assert "Traceback" not in err and err.strip().count("\n") == 0 and err.startswith("normlab: error: "), err




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
    before = snapshot(folder)
    argv = {"train": ["train", "--norm", "bn", *TINY, "--out", str(folder)],
            "dry-run": ["train", "--norm", "bn", *TINY, "--out", str(folder), "--dry-run"],
            "report": ["report", str(folder)]}[command]
    assert main(argv) == 2
    _one_sentence(capsys.readouterr().err)
    assert snapshot(folder) == before


def test_a_hand_made_summary_record_makes_no_folder_a_study(tmp_path, capsys):
    folder = tmp_path / "a"
    (folder / "foo").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"study": "x", "experiments": [{"dir": "foo", "name": "foo",
                                                                                     "status": "pending"}]}))
    (folder / "foo" / "metrics.csv").write_text("my,data\n")
    before = snapshot(folder)
    assert main(["report", str(folder)]) == 2
    _one_sentence(capsys.readouterr().err)
    assert snapshot(folder) == before


def test_a_hand_made_experiment_folder_with_a_matching_config_is_not_overwritten(study, tmp_path, capsys):
    folder = tmp_path / "h2"
    (folder / "bn-seed1").mkdir(parents=True)
    shutil.copy(study / "bn-seed1" / "config.json", folder / "bn-seed1" / "config.json")
    (folder / "bn-seed1" / "metrics.csv").write_text("user data\n")
    (folder / "bn-seed1" / "status.json").write_text("{}")
    before = snapshot(folder)
    assert main(["run", "--norm", "bn", *TINY, "--out", str(folder)]) == 2
    _one_sentence(capsys.readouterr().err)
    assert snapshot(folder) == before


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
    before = snapshot(copy)
    argv = {"run": ["run", "--norm", "bn", "ln", *TINY, "--out", str(link), "--resume"],
            "dry-run": ["run", "--norm", "bn", "ln", *TINY, "--out", str(link), "--resume", "--dry-run"],
            "report": ["report", str(link)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "symbolic link" in err and snapshot(copy) == before


# --- 10. --dry-run refuses what a run refuses ---

def test_dry_run_refuses_a_folder_inside_a_running_study(tmp_path, capsys):
    running = tmp_path / "conc" / "study"
    with directory_lock(running):
        assert main(["run", "--norm", "bn", *TINY, "--out", str(running / "x"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "another normlab process" in err


# --- 3. dropout the mask can draw ---

@pytest.mark.parametrize("p", [0.99999, 1e-5, 1 - 2**-20])
def test_a_dropout_the_mask_cannot_draw_is_one_sentence(p, capsys):
    import torch

    from normlab.config import ExperimentConfig
    from normlab.model import Net

    with pytest.raises(ValueError, match="finer than a dropout mask can draw"):
        Net(norm="bn", dropout=p).train()(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match="finer than a dropout mask can draw"):
        ExperimentConfig(dropout=p)
    assert main(["train", "--norm", "bn", *TINY, "--dropout", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "--dropout" in err


def test_the_mask_draws_the_bounds_and_a_report_of_dead_activations_is_written(tmp_path, capsys):
    from normlab.model import dropout_mask

    assert dropout_mask((1 << 20,), 1 / 32768).min() == 0  # about 32 of 2^20 dropped
    assert dropout_mask((64,), 1 - 1 / 32768).isfinite().all()
    out = tmp_path / "d"
    assert main(["train", "--norm", "bn", *TINY, "--dropout", "0.9999", "--out", str(out)]) in (0, 3)
    assert main(["report", str(out)]) in (0, 3)
    assert "Traceback" not in capsys.readouterr().err


def test_dynamics_lines_take_an_empty_series():
    from normlab import report

    summary = {"experiments": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "dynamics_by_name", lambda *a, **k: {"bn": {}})
        lines = report.dynamics_lines(StudyView(Path(".")), summary)
    assert any("| bn |" in line for line in lines)


# --- 4. nesting a parser cannot follow ---

DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("name", ["bn-seed1/misclassified.json", "bn-seed1/status.json", "study.json",
                                  "summary.json"])
def test_deeply_nested_json_is_a_damaged_file(copy, capsys, name):
    (copy / name).write_text(DEEP)
    code = main(["report", str(copy)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err and "RecursionError" not in err


def test_a_deeply_nested_study_file_is_invalid_toml(tmp_path, capsys):
    f = tmp_path / "deep.toml"
    f.write_text('[[grid]]\nnorm = "bn"\nlr = ' + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["run", str(f), *TINY, "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "not valid TOML" in err


# --- 5, 7, 13. summary.json and study.json checked before they are believed ---

@pytest.mark.parametrize("field", ["seed", "lr", "norm"])
def test_a_summary_entry_without_a_setting_is_damaged_with_the_rebuild_command(copy, capsys, field):
    from normlab.errors import DamagedError
    from normlab.report import generate_report

    (copy / "study.json").unlink()
    summary = json.loads((copy / "summary.json").read_text())
    for e in summary["experiments"]:
        del e[field]
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DamagedError, match="normlab report"):
        generate_report(copy)
    assert main(["report", str(copy)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def _seeds_column(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(name + " "))
    return line.split()[2]


def test_an_experiment_listed_twice_in_study_json_is_not_counted_twice(copy, capsys):
    record = json.loads((copy / "study.json").read_text())
    record["experiments"] = record["experiments"] * 2
    (copy / "study.json").write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 0
    out, err = capsys.readouterr()
    assert _seeds_column(out, "bn") == "1" and "twice" in err


def test_duplicated_summary_entries_are_damaged(copy, capsys):
    from normlab.errors import DamagedError
    from normlab.report import generate_report

    (copy / "study.json").unlink()
    summary = json.loads((copy / "summary.json").read_text())
    summary["experiments"] = summary["experiments"] + [dict(summary["experiments"][0], dir="bn-seed1x")]
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DamagedError, match="twice"):
        generate_report(copy)
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert _seeds_column(out, "bn") == "1"


@pytest.mark.parametrize("value", [float("inf"), 1e308, -1.0])
def test_a_wall_time_no_clock_measured_is_damaged(copy, capsys, value):
    from normlab.errors import DamagedError
    from normlab.report import generate_report

    for name in ("study.json", "summary.json"):
        record = json.loads((copy / name).read_text())
        record["wall_seconds"] = value
        (copy / name).write_text(json.dumps(record))
    with pytest.raises(DamagedError):
        generate_report(copy)
    main(["report", str(copy)])
    report = (copy / "report.md").read_text()
    assert "inf s" not in report and "0" * 50 not in report


@pytest.mark.parametrize("key, value", [("workers", 10**400), ("analysis", [1]), ("machine", {"cpu": 3}),
                                        ("round_wall_seconds", {"seed 1": float("inf")})])
def test_a_malformed_study_record_field_is_reported_not_replaced(copy, capsys, key, value):
    from normlab.summary import meta_problem

    record = json.loads((copy / "study.json").read_text())
    record[key] = value
    assert meta_problem(record) == f"its {key} is malformed"
    (copy / "study.json").write_text(json.dumps(record))
    before = json.loads((copy / "summary.json").read_text())
    assert main(["report", str(copy)]) == 0
    assert f"its {key} is malformed" in capsys.readouterr().err  # rebuilt from summary.json, and said so
    if key == "analysis":
        assert json.loads((copy / "study.json").read_text())["analysis"] == before["analysis"]


def test_a_damaged_misclassified_json_names_the_command_that_redoes_it(copy, capsys):
    (copy / "bn-seed1" / "misclassified.json").write_text('{"wrong_total": -1}')
    main(["report", str(copy)])
    err = capsys.readouterr().err
    assert "--resume" in err and str(copy) in err


# --- 6. machine fields are text in report.md ---

def test_machine_fields_cannot_inject_markdown_or_html(copy, capsys):
    evil = "x\n# Heading <script>alert(1)</script> | cell |"
    for name in ("study.json", "summary.json"):
        record = json.loads((copy / name).read_text())
        record["machine"] = {**record["machine"], "cpu": evil, "device": evil, "torch": evil, "gpu": evil}
        record["machines"] = [record["machine"], dict(record["machine"], cpu=evil + "2")]
        (copy / name).write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "<script>" not in report and not any(line.startswith("# Heading") for line in report.splitlines())


# --- 8. families checked against the study that runs ---

FAMILY_FILE = """
[[grid]]
name = "gn-g{groups}"
norm = "gn"
groups = [1, 2]
[[family]]
question = "do groups matter?"
among = ["gn-g1", "gn-g2"]
"""


def test_a_family_that_a_command_line_sweep_renames_is_said_and_dropped(tmp_path, capsys):
    """Not a silently empty section: the run says the study file's families no longer apply, and the
    report compares by its default families."""
    f = tmp_path / "fam.toml"
    f.write_text(FAMILY_FILE)
    argv = ["run", str(f), *TINY, "--lr", "0.01", "0.02", "--dry-run", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[[family]]" in err and "default families" in err and "Traceback" not in err


@pytest.mark.parametrize("family", [
    {"question": "q", "among": ["nope", "bn"]},
    {"question": "q", "among": ["bn", "ln"], "reference": "zzz"},
    {"question": "q", "among": "bn"},
    {"question": "q", "differ_in": "colour"},
    {"question": 3, "among": ["bn", "ln"]},
    {"question": "q", "among": ["bn", "bn"]},
])
def test_a_damaged_families_record_is_reported(copy, capsys, family):
    from normlab.summary import meta_problem

    record = json.loads((copy / "study.json").read_text())
    record["families"] = [family]
    assert meta_problem(record) == "its families is malformed"
    for name in ("study.json", "summary.json"):
        r = json.loads((copy / name).read_text())
        r["families"] = [family]
        (copy / name).write_text(json.dumps(r))
    main(["report", str(copy)])
    assert "families is malformed" in capsys.readouterr().err


# --- 11. Python callers get ValueErrors ---

@pytest.mark.parametrize("call", [
    lambda: __import__("normlab.studies").studies.build_study("mission", seeds=[-1]),
    lambda: __import__("normlab.studies").studies.build_study("mission", seeds=[2**40]),
    lambda: __import__("normlab.studies").studies.build_study("mission", seeds=list(range(50_000))),
    lambda: __import__("normlab.studies").studies.build_study(None),
    lambda: __import__("normlab.config").config.ExperimentConfig(lr=10**400),
    lambda: __import__("normlab.config").config.ExperimentConfig(rotate=10**400),
    lambda: __import__("normlab.config").config.ExperimentConfig.from_dict(None),
    lambda: __import__("normlab.model").model.Net.from_config("bn"),
    lambda: __import__("normlab.model").model.Net(norm=None),
    lambda: __import__("normlab.model").model.Net(norm="bn", groups=-3),
])
def test_python_callers_get_value_errors(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("spec", [
    dict(grids="bn"), dict(grids=[{"norm": "bn"}], base=3), dict(grids=[{"norm": "bn"}], families="x"),
    dict(grids=[{"norm": "bn", "name": 3}]), dict(grids=[{"norm": "bn", "name": "{norm.real}"}]),
    dict(grids=[{"norm": ["bn", "ln"]}], families=[{"question": "q", "among": ["bn", "gone"]}]),
])
def test_a_malformed_study_spec_is_a_value_error(spec):
    from normlab.studies import StudySpec, build_study

    with pytest.raises(ValueError):
        build_study(StudySpec(name="x", **spec))


@pytest.mark.parametrize("kwargs", [{"device": "meta"}, {"device": "nonsense"}, {"device": "cuda:99"}])
def test_run_study_refuses_a_device_before_writing(tmp_path, kwargs):
    import torch

    from normlab.runner import run_study
    from normlab.studies import build_study

    if kwargs["device"].startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(ValueError):
        run_study(build_study("mission"), tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def test_run_study_refuses_a_name_for_a_study(tmp_path):
    from normlab.runner import run_study

    with pytest.raises(ValueError, match="must be a Study"):
        run_study("mission", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_load_model_refuses_a_device_as_a_value_error(study):
    import normlab

    with pytest.raises(ValueError, match="device"):
        normlab.load_model(study / "bn-seed1" / "model.pt", device="nonsense")


# --- 14. a special file in the dataset cache ---

def test_a_fifo_in_the_dataset_cache_is_one_sentence_before_any_download(tmp_path, monkeypatch, capsys):
    import os

    from normlab import data

    raw = tmp_path / "cache" / data.spec("mnist").folder / "raw"
    raw.mkdir(parents=True)
    os.mkfifo(raw / "t10k-labels-idx1-ubyte")
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "sources", lambda name: pytest.fail("fetched before the cache was checked"))
    assert main(["data"]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "t10k-labels-idx1-ubyte" in err and err.count("move it away") == 1


def test_a_bad_seed_is_named_as_the_seeds_flag(capsys):
    assert main(["run", "mission", *TINY, "--seeds", "-1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "--seeds -1" in err


def test_families_of_an_earlier_grid_whose_experiments_are_gone_are_dropped_with_a_note(tmp_path, capsys):
    f = tmp_path / "fam.toml"
    f.write_text(FAMILY_FILE)
    out = tmp_path / "o"
    assert main(["run", str(f), *TINY, "--out", str(out)]) == 0
    shutil.rmtree(out / "gn-g1-seed1")
    (tmp_path / "later").mkdir()
    later = tmp_path / "later" / "fam.toml"  # the same study, a later grid without the family
    later.write_text('[[grid]]\nname = "gn-g{groups}"\nnorm = "gn"\ngroups = 4\n')
    capsys.readouterr()
    assert main(["run", str(later), *TINY, "--out", str(out), "--resume"]) == 0
    assert "families name experiments this study no longer holds" in capsys.readouterr().err
    record = json.loads((out / "study.json").read_text())
    from normlab.summary import meta_problem

    assert meta_problem(record) is None and "families" not in record
