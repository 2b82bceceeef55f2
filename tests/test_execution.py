"""The execution layer: one interface, typed results, and a study that reads each checkpoint once
per epoch (plus once when it is planned), not at every step of its bookkeeping."""

from __future__ import annotations

import torch

import normlab.checkpoint as checkpoint_module
from normlab.config import ExperimentConfig
from normlab.errors import DamagedError, DivergedError, NormlabError
from normlab.execution import Status, result_from_exception
from normlab.runner import run_study
from normlab.studies import build_study


def test_every_exception_becomes_one_kind_of_result():
    assert result_from_exception("x", DamagedError("bad file")).status is Status.DAMAGED
    assert result_from_exception("x", DivergedError(3, "nan")).status is Status.DIVERGED
    assert result_from_exception("x", NormlabError("one sentence")).traceback is None
    os_error = result_from_exception("x", OSError(28, "No space left on device", "/d/f"))
    assert os_error.status is Status.FAILED and "/d/f" in os_error.message and "free some space" in os_error.message
    assert os_error.traceback is None
    try:
        raise KeyError("a bug")
    except KeyError as e:
        bug = result_from_exception("x", e)
    assert bug.status is Status.FAILED and "KeyError" in bug.message and "Traceback" in bug.traceback


def test_a_study_reads_each_checkpoint_once_per_epoch_and_once_when_planned(tmp_path, monkeypatch):
    """3 experiments x 2 epochs, in this process: at most 3 x 2 + 3 torch.load calls."""
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(checkpoint_module.torch, "load", torch.load)
    base = ExperimentConfig(epochs=2, train_limit=256, test_limit=128, batch_size=64)
    study = build_study("mission", base, seeds=[1])
    run_study(study, tmp_path / "s", workers=1, quiet=True)
    assert len(loads) <= 3 * 2 + 3, loads
    outcome = run_study(study, tmp_path / "s", workers=1, quiet=True, resume=True)  # nothing left to run
    assert len(loads) <= 3 * 2 + 3 + 3
    assert [e["status"] for e in outcome.summary["experiments"]] == ["done"] * 3
