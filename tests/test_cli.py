"""The command line: a tiny real study end to end, and one clear sentence for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import normlab
from normlab.cli import main
from normlab.studies import presets
from normlab.training.data import load_data
from normlab.training.loop import evaluate

TINY_ARGS = ["--epochs", "2", "--train-limit", "512", "--test-limit", "256", "--batch-size", "64"]
RUN_ARGS = [*TINY_ARGS, "--seeds", "1"]  # a study of one seed: the mission preset plans three


def normlab_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normlab", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=600)


@pytest.mark.slow
def test_tiny_mission_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "mission"
    r = normlab_cli("run", *RUN_ARGS, "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "mission" and summary["dataset"] == "mnist" and summary["epochs"] == 2
    assert summary["wall_seconds"] > 0 and summary["machine"]["cores"] >= 1
    names = {e["name"]: e for e in summary["experiments"]}
    assert set(names) == {"bn-l1", "gn", "ln"}
    assert names["bn-l1"]["norm"] == "bn" and names["bn-l1"]["l1"] > 0
    for e in names.values():
        assert e["status"] == "done" and e["epochs_run"] == 2 and e["params"] < 8000
        model = normlab.load_model(out / e["checkpoint"])
        d = load_data("mnist", 512, 256, "cpu")
        _, acc = evaluate(model, d.test_x, d.test_y)
        assert round(acc, 4) == e["final_test_accuracy"]
        assert (out / e["dir"] / "misclassified.png").stat().st_size > 0
    for f in ("test_loss.png", "test_accuracy.png", "report.md"):
        assert (out / f).stat().st_size > 0
    assert "bn-l1" in r.stdout and "final acc" in r.stdout  # the final table
    # piped, the output is a clean log: no progress-bar states, one line per epoch
    assert "\r" not in r.stdout and "\r" not in r.stderr
    assert len([line for line in r.stdout.splitlines() if " epoch " in line]) == 3 * 2
    # a finished study resumes to a no-op; without --resume it refuses to overwrite
    before = {p: p.read_bytes() for p in out.rglob("*.pt")}
    assert main(["run", *RUN_ARGS, "--out", str(out), "--resume", "--quiet"]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*.pt")} == before
    capsys.readouterr()
    assert main(["run", *RUN_ARGS, "--out", str(out)]) == 2 and "--resume" in capsys.readouterr().err


def test_train_one_experiment_in_process(tmp_path, capsys):
    assert main(["train", "--norm", "gn", "--groups", "2", *TINY_ARGS, "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (entry,) = summary["experiments"]
    assert entry["name"] == "gn" and entry["groups"] == 2 and entry["status"] == "done"
    assert "gn" in capsys.readouterr().out


def test_dry_run_lists_the_grid_without_training(tmp_path, capsys):
    assert main(["run", "grid15", "--dry-run", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "15 experiments" in out and "bn-l1_0.002-l2_0.002" in out and "gn-l1_0-l2_0.001" in out
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--norm", "xx"], "--norm xx is not a known norm; choose one of: bn, gn, ln"),
    (["train", "--norm", "gn", "--groups", "3"], "--groups 3 does not divide"),
    (["train", "--norm", "bn", "--epochs", "0"], "--epochs 0 must be a positive integer"),
    (["train", "--norm", "bn", "--batch-size", "0"], "--batch-size 0 must be a positive integer"),
    (["train", "--norm", "bn", "--l1", "-1"], "--l1 -1.0 must be zero or positive"),
    (["train", "--norm", "bn", "--l2", "-1"], "--l2 -1.0 must be zero or positive"),
    (["train", "--norm", "bn", "--test-limit", "-5"], "--test-limit -5 must be a positive integer"),
    (["train", "--norm", "bn", "--dataset", "cifar"], "--dataset cifar is not a known dataset; choose one of: mnist, fashion-mnist"),
    (["run", "nope"], "unknown study 'nope'; choose one of: " + ", ".join(presets())),
    (["run", "missing.toml"], "study file missing.toml does not exist"),
    (["train", "--lr", "0.1"], "normlab train needs --norm"),
    (["train", "--norm", "bn", "--lr", "0.1", "0.2"], "--lr has 2 values; use normlab run for a grid"),
    (["run", "--workers", "0"], "--workers must be a positive integer"),
    (["train", "--norm", "bn", "--lr", "inf"], "--lr inf must be a finite number"),
    (["train", "--norm", "bn", "--l2", "nan"], "--l2 nan must be a finite number"),
    (["train", "--norm", "bn", "--dropout", "1"], "--dropout 1.0 must be a probability from 0 to below 1"),
    (["train", "--norm", "bn", "--name", "../x"], "--name ../x is not a safe experiment name"),
    (["train", "--norm", "bn", "--name", "a/b"], "--name a/b is not a safe experiment name"),
    (["train", "--norm", "bn", "--batch-size", "1"], "--batch-size 1 leaves batches of one image"),
    (["train", "--norm", "bn", "--train-limit", "1"], "--train-limit 1 leaves batches of one image"),
    (["run", "--seeds", "1", "1"], "--seeds 1 1 has repeated values"),
    (["report", "/nonexistent/dir"], "is not a directory; pass the output directory"),
])
def test_bad_input_is_one_sentence_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--norm", "bn", *TINY_ARGS, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_data_command_prints_the_folder(capsys):
    assert main(["data", "--dataset", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "mnist test: 10000 images" in out and "MNIST" in out


def test_divergence_is_recorded_and_the_exit_code_says_so(tmp_path, capsys):
    code = main(["train", "--norm", "bn", "--lr", "1e6", *TINY_ARGS, "--out", str(tmp_path), "--quiet"])
    assert code == 3
    (entry,) = json.loads((tmp_path / "summary.json").read_text())["experiments"]
    assert entry["status"] == "diverged" and entry["diverged_epoch"] == 1
    assert "diverged" in capsys.readouterr().err


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    from normlab.errors import NormlabError
    from normlab.fileio import directory_lock
    with directory_lock(tmp_path):
        with pytest.raises(NormlabError, match="another normlab process is already writing"):
            with directory_lock(tmp_path):
                pass
    with directory_lock(tmp_path):  # released afterwards
        pass


def test_foreign_checkpoint_is_a_clear_error(tmp_path):
    import torch

    from normlab.errors import NormlabError
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for name in ("other.pt", "junk.pt", "missing.pt"):
        with pytest.raises(NormlabError, match="normlab checkpoint|does not exist"):
            normlab.load_model(tmp_path / name)


@pytest.mark.slow
def test_a_diverging_experiment_does_not_stop_the_study(tmp_path, capfd):
    """A peak LR of 1e6 makes the loss non-finite; the experiments at 0.02 must still finish, and the
    exit code says so."""
    out = tmp_path / "m"
    assert main(["run", "--norm", "bn", "ln", "--lr", "0.02", "1e6", *TINY_ARGS, "--out", str(out),
                 "--workers", "2", "--quiet"]) == 3
    err = capfd.readouterr().err  # file descriptors: the worker processes' stderr too
    assert "diverged" in err and "Traceback" not in err
    status = {e["name"]: e for e in json.loads((out / "summary.json").read_text())["experiments"]}
    assert set(status) == {"bn-lr0.02", "bn-lr1e06", "ln-lr0.02", "ln-lr1e06"}
    for norm in ("bn", "ln"):
        assert status[f"{norm}-lr1e06"]["status"] == "diverged" and status[f"{norm}-lr1e06"]["diverged_epoch"] >= 1
        assert status[f"{norm}-lr0.02"]["status"] == "done"
    assert "diverged" in (out / "report.md").read_text()


@pytest.mark.slow
def test_two_processes_on_one_directory(tmp_path):
    import signal
    import time
    out = tmp_path / "busy"
    args = ["train", "--norm", "ln", "--epochs", "50", "--train-limit", "8192", "--test-limit", "256",
            "--out", str(out), "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "normlab", *args], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "study.json").exists():
            time.sleep(0.1)
        second = normlab_cli(*args, "--resume")
        assert first.poll() is None, "the first run must still hold the directory"
        assert second.returncode == 2 and "another normlab process is already writing" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130


def test_a_closed_output_pipe_is_a_quiet_exit(monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (say `head`) has gone
    closed = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["run", "grid15", "--dry-run"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    closed.close()


def test_an_interrupt_a_library_wraps_in_another_error_still_ends_as_interrupted(monkeypatch, capsys):
    """A signal that lands while a class is being set up (matplotlib's import does this) reaches
    normlab as a RuntimeError whose cause is the KeyboardInterrupt: still exit 130, one sentence."""
    import os
    import signal

    import normlab.cli as cli

    def import_something(args):
        class Slow:
            def __set_name__(self, owner, name):
                os.kill(os.getpid(), signal.SIGTERM)
                while True:  # the handler raises KeyboardInterrupt here
                    pass

        class Owner:  # creating it runs __set_name__
            attribute = Slow()

    monkeypatch.setattr(cli, "cmd_explain", import_something)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), import_something))
    assert cli.main(["explain"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.startswith("normlab: interrupted;") and "Traceback" not in err


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_an_interrupt_python_swallows_in_a_callback_still_ends_the_command(monkeypatch, capsys):
    """A signal whose KeyboardInterrupt is raised inside a weakref callback (garbage collection
    during plotting does this) is dropped by Python with a printed traceback; normlab delivers it
    again, so the command still stops: exit 130, one sentence, no traceback."""
    import os
    import signal
    import weakref

    import normlab.cli as cli

    steps = [0]

    def work_with_a_callback(args):
        class Thing:
            pass

        def callback(_):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**8):  # the handler raises KeyboardInterrupt here, inside the callback
                pass

        thing = Thing()
        ref = weakref.ref(thing, callback)  # noqa: F841 - kept alive so the callback runs
        del thing  # runs the callback
        for _ in range(3 * 10**7):  # the command's own work goes on, until the interrupt arrives again
            steps[0] += 1
        return 0

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), work_with_a_callback))
    assert cli.main(["explain"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "normlab: interrupted;" in err and "Traceback" not in err, err
    assert steps[0] < 3 * 10**7  # stopped, not run to the end
