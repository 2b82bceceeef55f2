"""What a seed trains to, held against committed numbers, and the record of what trained it.

A short fixed-seed training of BN, GN and LN (2 epochs on 512 images, one torch thread) is
compared with numbers committed in tests/reference_training.json for each CPU class it was
recorded on: exactly on a class that is recorded (any change to the training code that alters what
a seed trains to fails here), within a tolerance on any other (a different CPU rounds float sums
differently, and the trajectories drift by a little). Record the current class with
`python tests/test_reproducibility.py --record` after a deliberate change, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REFERENCE = Path(__file__).with_name("reference_training.json")
SETTINGS = dict(epochs=2, train_limit=512, test_limit=256, batch_size=64, seed=3)
NORMS = ("bn", "gn", "ln")
COMPARED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")


def cpu_class() -> str:
    """The CPU's model name, the kernels torch picks for it, and torch's version: what decides the
    rounding of a CPU training run."""
    import torch

    from normlab.summary import machine_description

    name = machine_description()["cpu"]
    return f"{name} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__.split('+')[0]}"


def train_reference(tmp: Path) -> dict[str, list[dict]]:
    import torch

    from normlab.config import ExperimentConfig
    from normlab.experiment import Experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for norm in NORMS:
            exp = Experiment(ExperimentConfig(name=norm, norm=norm, **SETTINGS), tmp / norm)
            rows = [exp.run_epoch().row() for _ in range(SETTINGS["epochs"])]
            out[norm] = [{k: row[k] for k in COMPARED} for row in rows]
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, list[dict]]:
    return train_reference(tmp_path_factory.mktemp("reference"))


def test_a_fixed_seed_trains_to_the_committed_numbers(trained):
    recorded = json.loads(REFERENCE.read_text())
    assert recorded["settings"] == SETTINGS
    here = recorded["classes"].get(cpu_class())
    if here is not None:  # the same CPU class: bit for bit
        assert trained == here, f"training on {cpu_class()} no longer gives the committed numbers"
        return
    for reference in recorded["classes"].values():  # another CPU class: the same science, drifted a little
        for norm in NORMS:
            for mine, theirs in zip(trained[norm], reference[norm]):
                assert mine["lr"] == theirs["lr"]
                assert abs(mine["test_accuracy"] - theirs["test_accuracy"]) <= 3.0, (norm, mine, theirs)
                assert abs(mine["train_loss"] - theirs["train_loss"]) <= 0.05 * theirs["train_loss"], (norm, mine)


def test_every_epoch_records_the_code_device_and_layout_that_trained_it(tmp_path):
    from normlab.checkpoint import load_checkpoint
    from normlab.config import ExperimentConfig
    from normlab.provenance import code_version
    from normlab.runner import run_study
    from normlab.studies import Study

    cfg = ExperimentConfig(name="p", norm="gn", epochs=2, train_limit=256, test_limit=128, batch_size=64)
    summary = run_study(Study("prov", [cfg]), tmp_path, quiet=True, notify=lambda *_: None).summary
    (entry,) = summary["experiments"]
    (stretch,) = entry["trained_by"]
    assert stretch == {"first_epoch": 1, "last_epoch": 2, "code": code_version(), "device": "cpu",
                       "executor": "local", "processes": 1, "threads": 1, "members": 1}
    assert load_checkpoint(tmp_path / entry["dir"] / "model.pt")["provenance"] == [stretch]
    assert entry["device"] == summary["machine"]["device"] == "cpu"  # the record agrees with the summary
    assert summary["machines"] == [summary["machine"]]
    assert summary["analysis"]["declared"] == "before the data"


def test_a_stretch_trained_otherwise_starts_a_new_provenance_entry():
    from normlab.provenance import extend

    entry = {"code": "x", "device": "cpu", "executor": "local", "processes": 2, "threads": 1, "members": 1}
    p = extend(extend([], 1, entry), 2, entry)
    assert p == [{"first_epoch": 1, "last_epoch": 2, **entry}]
    p = extend(p, 3, {**entry, "code": "y"})
    assert [(s["first_epoch"], s["last_epoch"], s["code"]) for s in p] == [(1, 2, "x"), (3, 3, "y")]


def record() -> None:
    import tempfile

    recorded = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {"settings": SETTINGS, "classes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        recorded["classes"][cpu_class()] = train_reference(Path(tmp))
    recorded["settings"] = SETTINGS
    REFERENCE.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"recorded {cpu_class()} in {REFERENCE}")


if __name__ == "__main__" and "--record" in sys.argv:
    record()


def test_extending_a_study_by_seeds_trains_only_the_new_seeds(tmp_path):
    from normlab.runner import run_study
    from normlab.studies import build_study

    tiny = {"epochs": [1], "train_limit": [256], "test_limit": [128], "batch_size": [64]}
    first = run_study(build_study("mission", seeds=[1], grid=tiny), tmp_path, quiet=True, notify=lambda *_: None)
    before = {e["dir"]: (tmp_path / e["dir"] / "model.pt").read_bytes() for e in first.summary["experiments"]}
    landed: list[str] = []
    second = run_study(build_study("mission", seeds=[1, 2], grid=tiny), tmp_path, resume=True, quiet=True,
                       notify=lambda *_: None, on_epoch=landed.append)
    assert sorted(e["seed"] for e in second.summary["experiments"]) == [1, 1, 1, 2, 2, 2]
    assert {d: (tmp_path / d / "model.pt").read_bytes() for d in before} == before  # seed 1 untouched
    assert landed and all("seed2" in line for line in landed)  # only seed 2 trained
    assert second.summary["analysis"]["declared"] == "before the data"  # the plan on record stays
