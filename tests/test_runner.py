"""The local executor: several seeds run as rounds, seed after seed, each with its own wall time."""

from __future__ import annotations

from dataclasses import replace

from conftest import TINY

from normlab.config import ExperimentConfig
from normlab.runner import run_study
from normlab.studies import Study, build_study


def test_seeds_run_as_rounds_in_order_with_their_wall_time(tmp_path):
    base = ExperimentConfig(name="x", **{**TINY, "epochs": 1, "train_limit": 256})
    study = build_study("mission", base, seeds=[2, 1])
    lines: list[str] = []
    outcome = run_study(study, tmp_path, workers=2, quiet=True, on_epoch=lines.append)
    seeds_in_order = [int(line.split("-seed")[1].split()[0]) for line in lines]
    assert seeds_in_order == [2, 2, 2, 1, 1, 1]  # every experiment of seed 2 before any of seed 1
    rounds = outcome.summary["seed_rounds"]
    assert [r["seed"] for r in rounds] == [2, 1]
    assert all(r["wall_seconds"] > 0 for r in rounds)
    # each figure is rounded to 0.01 s on its own, so their sum may exceed the total by that much
    slack = 0.005 * (len(rounds) + 1)
    assert sum(r["wall_seconds"] for r in rounds) <= outcome.summary["wall_seconds"] + slack
    assert all(e["status"] == "done" for e in outcome.summary["experiments"])


def test_seeds_share_one_round_when_a_seed_cannot_fill_the_workers(tmp_path):
    base = ExperimentConfig(name="gn", norm="gn", **{**TINY, "epochs": 1, "train_limit": 256})
    study = Study("train", [replace(base, seed=s) for s in (1, 2)])
    outcome = run_study(study, tmp_path, workers=2, quiet=True)
    assert "seed_rounds" not in outcome.summary  # both seeds ran at once, one per worker
    assert [e["status"] for e in outcome.summary["experiments"]] == ["done", "done"]
