"""Shared fixtures: tiny real-data configs, so tests exercise the real path in seconds."""

from __future__ import annotations

import pytest

from normlab.config import ExperimentConfig

TINY = dict(epochs=2, train_limit=512, test_limit=256, batch_size=64)


@pytest.fixture
def tiny_cfg() -> ExperimentConfig:
    return ExperimentConfig(name="t", norm="bn", **TINY)
