"""Reliability, a second hostile pass: a checkpoint's record that training could not have written,
result files of any size, images listed twice, temp names that are not normlab's, a linked dataset
cache file, Python arguments of the wrong type, a study name that would break its heading."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import snapshot

from normlab import results
from normlab.checkpoint import load_checkpoint
from normlab.cli import main
from normlab.errors import NormlabError
from normlab.recovery import misclassified_problem

pytestmark = pytest.mark.usefixtures("no_drawing")  # files, records and errors: test_plots draws the figures


def _forge(path, change) -> None:
    """Rewrite a checkpoint with one field changed, as a hand with torch.load/torch.save would."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _row(key, value):
    return lambda s: s["history"][-1].__setitem__(key, value)


FORGERIES = {
    "accuracy nan": _row("test_accuracy", math.nan),
    "loss inf": _row("test_loss", math.inf),
    "accuracy over 100": _row("test_accuracy", 150.0),
    "accuracy as text": _row("test_accuracy", "high"),
    "a metric missing": lambda s: s["history"][-1].pop("test_loss"),
    "an epoch's seconds absurd": _row("seconds", 1e300),
    "more epochs than the config": lambda s: (s.__setitem__("epoch", 5), s["history"].extend(
        {**s["history"][-1], "epoch": e} for e in range(2, 6))),
    "negative params": lambda s: s.__setitem__("params", -5),
    "divergence without a message": lambda s: s.__setitem__("diverged", {"epoch": 1}),
    "divergence message not text": lambda s: s.__setitem__("diverged", {"epoch": 1, "message": ["a"]}),
    "dynamics rows of nothing": lambda s: s.__setitem__("dynamics", [{"foo": 1}]),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_record_training_could_not_have_written_is_a_damaged_checkpoint(copy, forgery):
    path = copy / "bn-seed1" / "model.pt"
    _forge(path, FORGERIES[forgery])
    with pytest.raises(NormlabError, match="missing or malformed"):
        load_checkpoint(path)


def test_a_forged_accuracy_is_reported_as_damage_and_deletes_nothing(copy, capsys):
    _forge(copy / "bn-seed1" / "model.pt", FORGERIES["accuracy over 100"])
    before = snapshot(copy / "bn-seed1")
    main(["report", str(copy)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model.pt" in err
    assert snapshot(copy / "bn-seed1") == before  # misclassified.json and the rest kept
    entry = next(e for e in json.loads((copy / "summary.json").read_text())["experiments"] if e["norm"] == "bn")
    assert entry["status"] == "damaged"


def test_a_result_file_larger_than_any_normlab_writes_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MAX_RESULT_BYTES", 100)
    (tmp_path / "summary.json").write_text(json.dumps({"x": "y" * 200}))
    read = results.read_json_file(tmp_path / "summary.json")
    assert not read.ok and "larger than" in read.problem


def test_images_listed_twice_are_a_damaged_misclassified_file(study):
    record = load_checkpoint(study / "bn-seed1" / "model.pt")
    value = json.loads((study / "bn-seed1" / "misclassified.json").read_text())
    assert misclassified_problem(value, record["experiment"], record["history"]) is None
    value["images"] = [value["images"][0]] * len(value["images"])
    assert "repeat an image" in misclassified_problem(value, record["experiment"], record["history"])


def test_a_linked_dataset_file_is_refused_before_any_download(tmp_path, monkeypatch, capsys):
    from normlab import data

    cache = tmp_path / "cache" / "MNIST" / "raw"
    cache.mkdir(parents=True)
    real = data.data_root() / "MNIST" / "raw"
    for f in real.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    (cache / "t10k-labels-idx1-ubyte").unlink()
    (cache / "t10k-labels-idx1-ubyte").symlink_to(real / "t10k-labels-idx1-ubyte")
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "sources", lambda name: pytest.fail("a source was tried"))
    assert main(["data", "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and err.count("\n") == 1 and "NORMLAB_DATA" not in err


@pytest.mark.parametrize("argument", [{"executor": ["local"]}, {"address": 5}, {"resume": "no"},
                                      {"quiet": "no"}, {"tensorboard": 1}, {"on_epoch": "print"}])
def test_run_study_refuses_arguments_of_the_wrong_type_before_writing(tmp_path, argument):
    from normlab.runner import run_study
    from normlab.studies import build_study

    study = build_study("mission", seeds=[1])
    with pytest.raises(ValueError):
        run_study(study, tmp_path / "o", **argument)
    assert not (tmp_path / "o").exists()


def test_a_study_name_that_is_not_normlab_s_stays_out_of_a_code_span(copy):
    from normlab.report import generate_report
    from normlab.summary import read_summary

    summary = {**read_summary(copy), "study": "a` <img src=x> `b"}
    generate_report(copy, summary)
    heading = (copy / "report.md").read_text().splitlines()[0]
    assert "<img" not in heading and heading.count("`") == heading.count("\\`")


def test_an_exploratory_setting_given_twice_is_refused(study, capsys):
    assert main(["report", str(study), "--exploratory", "alpha=0.1", "alpha=0.2"]) == 2
    assert "given twice" in capsys.readouterr().err
