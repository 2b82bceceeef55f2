"""Shared fixtures: tiny real-data configs, so tests exercise the real path in seconds."""

from __future__ import annotations

import os

import pytest

from normlab.config import ExperimentConfig
from normlab.results import METRIC_COLUMNS


def pytest_configure(config):
    """Under pytest-xdist each worker process shares the machine's cores with the others: one torch
    thread each, so that no worker's OpenMP threads spin against another's (a test that needs more
    threads sets them itself, and a study's own worker processes take one thread anyway)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


TINY = dict(epochs=2, train_limit=512, test_limit=256, batch_size=64)


@pytest.fixture
def one_torch_thread():
    """One torch thread, as a study's worker process trains: numbers then match the runner's."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_drawing(monkeypatch):
    """No figure is drawn: for tests about files, processes and recovery (drawing is tested in
    test_plots), where matplotlib's seconds per figure are not what is checked."""
    from normlab import figures, report

    monkeypatch.setattr(figures, "REGISTRY", [])
    monkeypatch.setattr(report, "plot_misclassified", lambda *a, **k: None)


@pytest.fixture
def tiny_cfg() -> ExperimentConfig:
    return ExperimentConfig(name="t", norm="bn", **TINY)


def science(rows: list[dict]) -> list[list]:
    """Every metric but wall time: what must match between two runs of the same experiment."""
    return [[r[k] for k in METRIC_COLUMNS if k != "seconds"] for r in rows]


RELIABILITY_TINY = ["--epochs", "1", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32", "--quiet"]


def snapshot(root) -> dict:
    """Every path under `root` with its bytes (None for a folder or a link): what must not change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished one-epoch study of two experiments (bn, ln), trained once per test module."""
    from normlab.cli import main

    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["run", "--norm", "bn", "ln", *RELIABILITY_TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(study, tmp_path):
    """A copy of `study` (links kept as links) for a test to damage."""
    import shutil

    shutil.copytree(study, tmp_path / "s", symlinks=True)
    return tmp_path / "s"
