"""Faults of the process, not of the files: a worker killed, signals to the whole process group,
a main process killed outright, bits flipped in a checkpoint, an interrupt while a group saves or
while a report draws. Each must end without a hang or a traceback, and never exit 0 with a
changed number; every interrupted study resumes to exactly the numbers of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import science

import normlab
from normlab.cli import main
from normlab.config import ExperimentConfig
from normlab.results import read_metrics
from normlab.runner import run_study
from normlab.studies import build_study

ARGS = ["run", "--epochs", "3", "--train-limit", "1024", "--test-limit", "256", "--batch-size", "64",
        "--workers", "2", "--seeds", "1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# processes and files, not figures: test_plots draws them (the studies here draw none but the fixture's)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_drawing")]


def start(out: Path, *extra: str) -> subprocess.Popen:
    """`normlab run` in its own process group, as a shell would start it."""
    return subprocess.Popen([sys.executable, "-m", "normlab", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def finish(out: Path, *extra: str) -> int:
    """The same command, run to its end in this process: a resume needs no fresh interpreter, and
    this process's pool of worker processes is reused (exit status returned)."""
    return main([*ARGS, "--out", str(out), "--quiet", *extra])


def children(pid: int) -> list[int]:
    """Worker processes of `pid` (its spawned children, the resource tracker left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "study"
    assert finish(out) == 0
    return out


def assert_same_numbers(study: Path, reference: Path) -> None:
    summary = json.loads((study / "summary.json").read_text())
    assert all(e["status"] == "done" for e in summary["experiments"]), summary["experiments"]
    for e in summary["experiments"]:
        assert science(read_metrics(study / e["dir"] / "metrics.csv")) == \
            science(read_metrics(reference / e["dir"] / "metrics.csv")), e["dir"]


def test_a_killed_worker_ends_its_experiment_in_one_sentence_and_the_study_goes_on(tmp_path, uninterrupted):
    out = tmp_path / "study"
    proc = start(out)
    wait_for(lambda: list(out.glob("*/model.pt")) and len(children(proc.pid)) == 2)
    os.kill(children(proc.pid)[0], signal.SIGKILL)  # what the out-of-memory killer does
    _, err = proc.communicate(timeout=300)  # no hang
    assert proc.returncode == 1, err
    assert "worker process training it died (killed by SIGKILL" in err and "--resume" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert sum(e["status"] == "done" for e in summary["experiments"]) == 2  # the others finished
    assert finish(out, "--resume") == 0
    assert_same_numbers(out, uninterrupted)


@pytest.mark.parametrize("sig,to_group", [(signal.SIGTERM, True), (signal.SIGHUP, True), (signal.SIGINT, True),
                                          (signal.SIGTERM, False)], ids=["TERM", "HUP", "INT", "TERM-main-only"])
def test_a_signal_ends_the_study_in_seconds_and_resume_is_exact(tmp_path, uninterrupted, sig, to_group):
    """To the process group: what `timeout`, systemd, a batch scheduler or a closed terminal do; to
    the main process alone: what `kill PID` does, and the main process must stop its workers."""
    out = tmp_path / "study"
    proc = start(out)
    wait_for(lambda: list(out.glob("*/model.pt")))
    send = os.killpg if to_group else os.kill
    send(proc.pid, sig)
    sent = time.time()
    time.sleep(0.2)
    send(proc.pid, sig)  # a second one, as an impatient user sends: still no traceback
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 10
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert any(e["epochs_run"] >= 1 for e in summary["experiments"])
    assert finish(out, "--resume") == 0  # the lock was released
    assert_same_numbers(out, uninterrupted)


def test_workers_stop_writing_when_their_main_process_is_killed(tmp_path):
    out = tmp_path / "study"
    proc = start(out)
    wait_for(lambda: list(out.glob("*/model.pt")) and len(children(proc.pid)) == 2)
    workers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs in the main process
    proc.communicate(timeout=60)
    wait_for(lambda: not any(alive(w) for w in workers), seconds=10)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(1.5)  # every worker is gone: nothing of the study may write from here on
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    assert finish(out, "--resume") == 0  # the lock died with its holder; stale temp files are swept
    assert not list(out.rglob(".*.tmp"))


def _flip_a_bit_in_the_weights(checkpoint: Path) -> None:
    with zipfile.ZipFile(checkpoint) as z:
        member = max(z.infolist(), key=lambda i: i.file_size)
        with z.open(member) as f:
            payload = f.read()
    data = bytearray(checkpoint.read_bytes())
    at = data.find(payload)
    assert at > 0
    data[at + len(payload) // 2] ^= 0x10
    checkpoint.write_bytes(bytes(data))


def test_one_flipped_bit_in_a_checkpoint_is_refused_everywhere(tmp_path, capsys):
    out = tmp_path / "t"
    tiny = ["--epochs", "1", "--train-limit", "256", "--test-limit", "128", "--batch-size", "64", "--quiet"]
    assert main(["train", "--norm", "ln", *tiny, "--out", str(out)]) == 0
    checkpoint = out / "ln-seed1" / "model.pt"
    _flip_a_bit_in_the_weights(checkpoint)
    capsys.readouterr()
    for argv in (["train", "--norm", "ln", *tiny, "--out", str(out), "--resume"], ["report", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(checkpoint) in err and "checksum" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="does not match its checksum"):
        normlab.load_model(checkpoint)


def test_an_interrupt_while_a_group_saves_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    """The grouped executor saves its members one after another; an interrupt between two saves
    leaves members at different epochs. Each resumes from its own epoch on its own generators."""
    from normlab.experiment import Experiment

    base = ExperimentConfig(epochs=2, train_limit=256, test_limit=64, batch_size=64)
    study = build_study("mission", base, seeds=[1, 2])  # three step-sharing groups of two seeds
    torch.set_num_threads(1)
    run_study(study, tmp_path / "clean", grouped="on", quiet=True)
    real_save, saves = Experiment.save, []

    def save_then_interrupt(self):
        real_save(self)
        saves.append(self.cfg.dirname)
        if len(saves) == 3:  # epoch 1: the first group (bn-l1, seeds 1 and 2) saved, then one of the second
            raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "cut", grouped="on", quiet=True)
    monkeypatch.setattr(Experiment, "save", real_save)
    epochs = sorted(json.loads((d / "status.json").read_text())["epochs_run"] if (d / "status.json").exists()
                    else 0 for d in (tmp_path / "cut").iterdir() if d.is_dir())
    assert epochs[0] < epochs[-1]  # the interrupt did split a group
    run_study(study, tmp_path / "cut", grouped="on", quiet=True, resume=True)
    assert_same_numbers(tmp_path / "cut", tmp_path / "clean")


def test_sigterm_while_report_draws_leaves_every_figure_whole(tmp_path, uninterrupted):
    out = tmp_path / "study"
    shutil.copytree(uninterrupted, out, symlinks=True)
    figures = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert figures
    for delay in (0.5, 1.0, 1.5, 2.0, 3.0):
        proc = subprocess.Popen([sys.executable, "-m", "normlab", "report", str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130) and "Traceback" not in err, err
        for path, before in figures.items():
            assert path.read_bytes() == before, path  # the same drawing, whole: never half a PNG
        assert not list(out.rglob(".*.tmp"))


def test_run_study_from_a_thread_runs(tmp_path):
    """Signal handlers belong to the main thread; from another thread a study still runs."""
    base = ExperimentConfig(epochs=1, train_limit=256, test_limit=128, batch_size=64)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        r=run_study(build_study("mission", base, seeds=[1]), tmp_path / "t", workers=1, quiet=True)))
    thread.start()
    thread.join(300)
    assert [e["status"] for e in outcome["r"].summary["experiments"]] == ["done"] * 3


def test_a_damaged_member_changes_no_healthy_member_of_its_group(tmp_path, monkeypatch):
    """After epoch 1 one member's checkpoint is damaged; its two siblings train epoch 2 beside its
    placeholder and end exactly as in the undamaged study."""
    from normlab.experiment import Experiment

    base = ExperimentConfig(epochs=2, train_limit=256, test_limit=64, batch_size=64)
    study = build_study("mission", base, seeds=[1, 2, 3])  # bn-l1, gn, ln: three groups of three seeds
    torch.set_num_threads(1)
    run_study(study, tmp_path / "clean", grouped="on", quiet=True)
    real_save, saves = Experiment.save, []

    def save_then_stop(self):
        real_save(self)
        saves.append(self.cfg.dirname)
        if len(saves) == len(study.experiments):  # every member has its first epoch on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "save", save_then_stop)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_study(study, cut, grouped="on", quiet=True)
    monkeypatch.setattr(Experiment, "save", real_save)
    (cut / "gn-seed2" / "model.pt").write_bytes(b"PK\x03\x04 damaged")
    outcome = run_study(study, cut, grouped="on", quiet=True, resume=True)
    entries = {e["dir"]: e for e in outcome.summary["experiments"]}
    assert entries["gn-seed2"]["status"] == "damaged"
    for name in entries:
        if name != "gn-seed2":
            assert science(read_metrics(cut / name / "metrics.csv")) == \
                science(read_metrics(tmp_path / "clean" / name / "metrics.csv")), name


def test_a_flipped_bit_in_the_zip_directory_is_a_damaged_checkpoint_never_another_error(tmp_path):
    """The end of model.pt is the zip's central directory: a flipped bit there can read as an
    unknown compression method, a newer zip version or an encrypted member. Every one of them is
    a CheckpointError (a ValueError) naming the file, or the same model loads."""
    from normlab.checkpoint import CheckpointError, load_checkpoint

    out = tmp_path / "t"
    assert main(["train", "--norm", "ln", "--epochs", "1", "--train-limit", "256", "--test-limit", "128",
                 "--batch-size", "64", "--quiet", "--out", str(out)]) == 0
    good = (out / "ln-seed1" / "model.pt").read_bytes()
    reference = load_checkpoint(out / "ln-seed1" / "model.pt")["model"]
    damaged = tmp_path / "model.pt"
    refused = 0
    for at in range(len(good) - 400, len(good)):
        for bit in (0x02, 0x40):
            data = bytearray(good)
            data[at] ^= bit
            damaged.write_bytes(bytes(data))
            try:
                state = load_checkpoint(damaged)["model"]
            except CheckpointError as e:
                assert isinstance(e, ValueError) and str(damaged) in str(e)
                refused += 1
                continue
            assert all(torch.equal(state[k], reference[k]) for k in reference)  # loaded: the same model
    assert refused > 0
