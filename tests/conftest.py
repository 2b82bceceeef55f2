"""Shared fixtures: tiny real-data configs, so tests exercise the real path in seconds."""

from __future__ import annotations

import pytest

from normlab.config import ExperimentConfig
from normlab.results import METRIC_COLUMNS

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
def tiny_cfg() -> ExperimentConfig:
    return ExperimentConfig(name="t", norm="bn", **TINY)


def science(rows: list[dict]) -> list[list]:
    """Every metric but wall time: what must match between two runs of the same experiment."""
    return [[r[k] for k in METRIC_COLUMNS if k != "seconds"] for r in rows]
