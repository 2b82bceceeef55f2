"""What a careful user relies on beyond the fault matrix: dry runs that check, exit codes that follow
the study, retries after a failed start, clean logs, file modes, and one sentence for OS errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.config import ExperimentConfig
from normlab.experiment import Experiment
from normlab.fileio import atomic_write_json
from normlab.results import read_metrics
from normlab.studies import build_study

pytestmark = pytest.mark.usefixtures("no_drawing")  # files, records and errors: test_plots draws the figures

TINY = ["--epochs", "2", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]
ROOT = Path(__file__).resolve().parent.parent


def _mission(out: Path) -> dict[str, ExperimentConfig]:
    base = ExperimentConfig(epochs=2, train_limit=128, test_limit=64, batch_size=32)
    return {c.dirname: c for c in build_study("mission", base, [1]).experiments}


def test_dry_run_lists_each_experiment_as_new_resumable_or_done_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m"
    cfgs = _mission(out)
    done = Experiment(cfgs["bn-l1-seed1"], out / "bn-l1-seed1")
    while done.epoch < 2:
        done.run_epoch()
    done.finish()
    Experiment(cfgs["gn-seed1"], out / "gn-seed1").run_epoch()
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert main(["run", *TINY, "--out", str(out), "--resume", "--dry-run"]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "[done]" in lines["bn-l1-seed1"]
    assert "[resumable at epoch 1]" in lines["gn-seed1"]
    assert "[new]" in lines["ln-seed1"]
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    # every check of a real run: another config in --out, or existing results without --resume
    assert main(["run", *TINY, "--lr", "0.5", "--out", str(out), "--resume", "--dry-run"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["run", *TINY, "--out", str(out), "--dry-run"]) == 2
    assert "--resume" in capsys.readouterr().err
    # and it lists the repairs a real run would make
    (out / "gn-seed1" / "metrics.csv").unlink()
    assert main(["run", *TINY, "--out", str(out), "--resume", "--dry-run"]) == 0
    assert "would rebuild metrics.csv (missing)" in capsys.readouterr().out
    assert not (out / "gn-seed1" / "metrics.csv").exists()


def test_dry_run_creates_no_directory_and_refuses_an_unwritable_one(tmp_path, capsys):
    assert main(["run", *TINY, "--out", str(tmp_path / "new" / "deeper"), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", *TINY, "--out", str(blocker / "sub"), "--dry-run"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_workers_are_capped_at_the_experiments_and_cores_and_the_output_says_so(tmp_path, capsys):
    assert main(["train", "--norm", "ln", *TINY, "--workers", "1000", "--out", str(tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "--workers 1000 capped at 1 (1 experiment(s) to run on" in err


@pytest.mark.parametrize("args, warning", [
    (["train", "--norm", "bn", "--groups", "2"], "--groups 2 has no effect"),
    (["run", "--seed", "3", "--seeds", "1", "2"], "--seed 3 has no effect beside --seeds 1 2"),
])
def test_options_that_do_nothing_warn(tmp_path, capsys, args, warning):
    assert main([*args, *TINY, "--out", str(tmp_path), "--dry-run"]) == 0
    assert warning in capsys.readouterr().err


def test_options_that_act_do_not_warn(tmp_path, capsys):
    assert main(["run", "--groups", "2", "--seeds", "1", "2", *TINY, "--out", str(tmp_path), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_failed_start_does_not_block_the_corrected_retry(tmp_path, capsys, no_drawing):
    out = tmp_path / "t"
    assert main(["train", "--norm", "bn", *TINY, "--batch-size", "1", "--out", str(out), "--quiet"]) == 2
    assert "--batch-size 1" in capsys.readouterr().err
    # a start that died before its first epoch leaves a config.json of another config: no results to keep
    atomic_write_json(out / "bn-seed1" / "config.json", {**ExperimentConfig(lr=0.5).to_dict(), "name": "bn"})
    assert main(["train", "--norm", "bn", *TINY, "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "bn-seed1" / "status.json").read_text())["status"] == "done"


def test_exit_code_follows_the_study_not_the_invocation(tmp_path, capsys, no_drawing):
    out = tmp_path / "d"
    args = ["train", "--norm", "bn", "--lr", "1e6", *TINY, "--out", str(out), "--quiet"]
    assert main(args) == 3
    assert main([*args, "--resume"]) == 3  # nothing ran this time; the study still holds a diverged run
    assert main(["report", str(out)]) == 3
    assert "diverged" in capsys.readouterr().err
    (entry,) = json.loads((out / "summary.json").read_text())["experiments"]
    assert entry["status"] == "diverged" and entry["diverged_epoch"] == 1 and entry["epochs_run"] == 0


def test_a_divergence_is_recorded_in_the_checkpoint_and_survives_a_lost_status(tmp_path, capsys, no_drawing):
    out = tmp_path / "d"
    args = ["train", "--norm", "bn", "--lr", "1e6", *TINY, "--out", str(out), "--quiet"]
    assert main(args) == 3
    (out / "bn-seed1" / "status.json").unlink()
    assert main([*args, "--resume"]) == 3
    assert "rebuilt status.json" in capsys.readouterr().err
    status = json.loads((out / "bn-seed1" / "status.json").read_text())
    assert status["status"] == "diverged" and "loss became" in status["message"]


@pytest.mark.slow
def test_quiet_prints_the_final_table_and_no_epoch_line(tmp_path, capfd, no_drawing):
    """Worker processes included (file descriptors are captured). A piped log of one line per epoch
    is checked by test_cli's end-to-end run."""
    assert main(["run", *TINY, "--seeds", "1", "--workers", "2", "--out", str(tmp_path / "q"), "--quiet"]) == 0
    out = capfd.readouterr().out
    assert " epoch " not in out and "final acc" in out


def test_result_files_follow_the_umask(tmp_path, no_drawing):
    previous = os.umask(0o027)
    try:
        assert main(["train", "--norm", "ln", *TINY, "--out", str(tmp_path), "--quiet"]) == 0
    finally:
        os.umask(previous)
    for f in ("summary.json", "study.json", "ln-seed1/model.pt", "ln-seed1/metrics.csv", "ln-seed1/config.json"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o640, f


def test_an_os_error_is_one_sentence(tmp_path, capsys, monkeypatch, no_drawing):
    assert main(["train", "--norm", "ln", *TINY, "--out", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)  # a read-only results directory, even for root
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_committed_results_report_without_repairs(tmp_path, capsys, no_drawing):
    """Checkpoints of the first format (no history inside) still report, their files taken as they are."""
    study = tmp_path / "mission"
    shutil.copytree(ROOT / "results" / "mission", study)
    committed = json.loads((study / "summary.json").read_text())
    assert main(["report", str(study)]) == 0
    assert "rebuilt" not in capsys.readouterr().err
    summary = json.loads((study / "summary.json").read_text())
    for old, new in zip(committed["experiments"], summary["experiments"]):
        for key in ("name", "seed", "final_test_accuracy", "best_test_accuracy", "epochs_run", "status",
                    "params", "conv_weight_l1"):
            assert new[key] == old[key], (old["dir"], key)
    assert summary["wall_seconds"] == committed["wall_seconds"]
    for e in summary["experiments"]:
        assert read_metrics(study / e["dir"] / "metrics.csv")[-1]["test_accuracy"] == e["final_test_accuracy"]


@pytest.mark.slow
def test_the_numbers_do_not_depend_on_the_worker_count(tmp_path, no_drawing):
    """One worker trains in this process; it must use one torch thread, as every pool worker does."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what a fresh process on this machine would have
    try:
        for workers in ("1", "2"):
            assert main(["run", "--norm", "ln", "gn", *TINY, "--workers", workers, "--out", str(tmp_path / workers),
                         "--quiet"]) == 0
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    for d in ("ln-seed1", "gn-seed1"):
        assert read_metrics(tmp_path / "1" / d / "metrics.csv")[-1] | {"seconds": 0} == \
            read_metrics(tmp_path / "2" / d / "metrics.csv")[-1] | {"seconds": 0}


def test_resuming_with_another_setting_is_refused_even_without_config_json(tmp_path, capsys, no_drawing):
    out = tmp_path / "r"
    assert main(["train", "--norm", "ln", *TINY, "--out", str(out), "--quiet"]) == 0
    (out / "ln-seed1" / "config.json").unlink()
    assert main(["train", "--norm", "ln", *TINY, "--lr", "0.5", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different config (lr 0.02 -> 0.5)" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--norm", "gn", "--seed", "99999999999999999999"], "--seed 99999999999999999999 must be at most"),
    (["run", "--epochs", "1e3"], "argument --epochs: invalid int value: '1e3'"),
    (["run", "--momentum", "0.99"], "--momentum 0.99 must be from 0.05 to 0.94"),
])
def test_more_bad_input_is_one_sentence(tmp_path, capsys, args, message):
    try:
        code = main([*args, "--out", str(tmp_path), "--dry-run"])
    except SystemExit as e:  # argparse's own errors end the process, as from the shell
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_dry_run_of_a_diverged_study_exits_as_the_study_does(tmp_path, no_drawing):
    args = ["train", "--norm", "bn", "--lr", "1e6", *TINY, "--out", str(tmp_path), "--quiet"]
    assert main(args) == 3
    assert main([*args, "--resume", "--dry-run"]) == 3


@pytest.mark.parametrize("images, error, message", [
    ("numpy", TypeError, "torch.Tensor"),
    ("nan", ValueError, "NaN"),
    ("32x32", ValueError, "shape (N, 1, 28, 28)"),
])
def test_a_loaded_model_refuses_inputs_it_would_get_wrong(tmp_path, no_drawing, images, error, message):
    import numpy as np
    import torch

    import normlab
    assert main(["train", "--norm", "ln", *TINY, "--out", str(tmp_path), "--quiet"]) == 0
    model = normlab.load_model(tmp_path / "ln-seed1" / "model.pt")
    x = {"numpy": np.zeros((2, 28, 28), dtype=np.uint8), "nan": torch.full((2, 1, 28, 28), float("nan")),
         "32x32": torch.rand(2, 1, 32, 32)}[images]
    with pytest.raises(error, match=re.escape(message)):
        model(x)
    # float64 and uint8 images are scored as the float32 images they stand for
    u8 = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    expected = model(u8.float().div(255).unsqueeze(1))
    torch.testing.assert_close(model(u8), expected)
    torch.testing.assert_close(model(u8.double().div(255)), expected)


def test_net_settings_are_checked_from_python():
    from normlab.model import Net
    with pytest.raises(ValueError, match=r"dropout=nan must be a probability"):
        Net(dropout=float("nan"))


def test_a_second_grid_in_the_same_directory_adds_to_the_study(tmp_path, capsys, no_drawing):
    out = tmp_path / "g"
    assert main(["run", "--norm", "ln", "--lr", "0.01", "0.02", *TINY, "--out", str(out), "--quiet"]) == 0
    assert main(["run", "--norm", "gn", "--lr", "0.01", "0.02", *TINY, "--out", str(out), "--quiet"]) == 0
    dirs = [e["dir"] for e in json.loads((out / "summary.json").read_text())["experiments"]]
    assert dirs == ["ln-lr0.01-seed1", "ln-lr0.02-seed1", "gn-lr0.01-seed1", "gn-lr0.02-seed1"]
    assert "RuntimeWarning" not in capsys.readouterr().err
