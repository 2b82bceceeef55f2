"""Training dynamics: recorded without changing training, kept in the checkpoint, rebuilt as a view."""

import math

import pytest
import torch

from normlab.checkpoint import load_checkpoint
from normlab.config import ExperimentConfig
from normlab.dynamics import STATISTICS, recorded_steps
from normlab.experiment import Experiment
from normlab.model import Net
from normlab.recovery import inspect_experiment
from normlab.results import DYNAMICS, parse_dynamics, read_dynamics

SMALL = dict(epochs=2, train_limit=512, test_limit=128, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_drawing")  # test_plots draws the figures


def _train(tmp_path, name: str, **settings) -> Experiment:
    cfg = ExperimentConfig(name=name, **{**SMALL, **settings})
    exp = Experiment(cfg, tmp_path / cfg.dirname)
    for _ in range(cfg.epochs):
        exp.run_epoch()
    return exp


def test_recorded_steps_are_dense_early_in_epoch_one_then_each_epochs_last():
    assert recorded_steps(1, 469) == {1, 2, 4, 8, 16, 32, 64, 128, 256, 469}
    assert recorded_steps(2, 469) == {469}
    assert recorded_steps(1, 1) == {1}


def test_recording_does_not_change_training(tmp_path):
    """Hooks only read: weights and metrics are bit-identical with and without recording."""
    on = _train(tmp_path, "on", norm="gn", dynamics=True)
    off = _train(tmp_path, "off", norm="gn", dynamics=False)
    for (k, a), (_, b) in zip(on.state.model.state_dict().items(), off.state.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert [r["test_loss"] for r in on.history] == [r["test_loss"] for r in off.history]
    assert on.state.dynamics and not off.state.dynamics
    assert not (tmp_path / off.cfg.dirname / DYNAMICS).exists()


@pytest.mark.parametrize("norm", ["bn", "frn"])
def test_every_layer_gets_every_statistic_at_the_recorded_steps(tmp_path, norm):
    exp = _train(tmp_path, norm, norm=norm)
    rows = read_dynamics(tmp_path / exp.cfg.dirname / DYNAMICS)
    assert rows == parse_dynamics((tmp_path / exp.cfg.dirname / DYNAMICS).read_text())
    assert rows == load_checkpoint(tmp_path / exp.cfg.dirname / "model.pt")["dynamics"]
    steps = len(exp.state.slices)
    assert sorted({(r["epoch"], r["step"]) for r in rows}) == sorted(
        [(1, s) for s in recorded_steps(1, steps)] + [(2, steps)])
    layers = {r["layer"] for r in rows}
    assert layers == {f"block{i}" for i in range(1, 7)}
    stats = {r["statistic"] for r in rows}
    expected = set(STATISTICS) - ({"relu_zero_fraction"} if norm == "frn" else set())  # FRN has no ReLU
    assert stats == expected
    assert all(math.isfinite(r["value"]) for r in rows)
    first = {(r["layer"], r["statistic"]): r["value"] for r in rows if (r["epoch"], r["step"]) == (1, 1)}
    assert 0 < first["block1", "update_ratio"] < 1 and first["block1", "grad_norm"] > 0
    if norm == "bn":  # BN's output in train mode: per channel mean 0, var 1, then gamma=1, beta=0 at init
        assert abs(first["block2", "output_mean"]) < 1e-4 and abs(first["block2", "output_std"] - 1) < 1e-3
        assert 0.2 < first["block2", "relu_zero_fraction"] < 0.9


def test_activations_shrink_layer_by_layer_without_normalization():
    """What the `none` runs show (README, "Why normalize?"): at this network's default init, each
    conv + ReLU scales the activations' std down, so the last blocks see a vanishing signal."""
    torch.manual_seed(0)
    model = Net("none", dropout=0.0)
    stds = []
    for _, block in model.blocks():
        block.norm.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
    model(torch.rand(64, 1, 28, 28))
    assert stds == sorted(stds, reverse=True) and stds[-1] < stds[0] / 20


def test_a_lost_or_damaged_dynamics_view_is_rebuilt_from_the_checkpoint(tmp_path, capsys):
    exp = _train(tmp_path, "v", norm="ln")
    path = tmp_path / exp.cfg.dirname / DYNAMICS
    original = path.read_text()
    for damage in (lambda: path.unlink(), lambda: path.write_text(original[: len(original) // 2]),
                   lambda: path.write_text("epoch,step\n1,x\n")):
        damage()
        state = inspect_experiment(path.parent, exp.cfg.to_dict())
        assert [name for name, _ in state.repairs] == [DYNAMICS]
        Experiment(exp.cfg, path.parent, resume=True)
        assert path.read_text() == original
        assert "rebuilt dynamics.csv from model.pt" in capsys.readouterr().err


def test_a_run_that_diverges_keeps_the_dynamics_of_the_epoch_that_diverged(tmp_path):
    """The checkpoint keeps the last good epoch; the rows recorded up to the divergence stay, to show what grew."""
    from normlab.execution import EpochTask, Status, run_epoch_task

    cfg = ExperimentConfig(name="d", norm="none", lr=1e6, **SMALL)
    r = run_epoch_task(EpochTask(cfg.dirname, cfg.to_dict(), str(tmp_path / cfg.dirname), "cpu"))
    assert r.status is Status.DIVERGED
    rows = read_dynamics(tmp_path / cfg.dirname / DYNAMICS)
    assert rows and {r["epoch"] for r in rows} == {1}
    assert any(not math.isfinite(r["value"]) or r["value"] > 1e3 for r in rows)


def test_tensorboard_gets_the_same_statistics_as_scalars_and_per_layer_histograms(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from normlab.cli import main

    out = tmp_path / "study"
    assert main(["run", "--norm", "gn", "--epochs", "2", "--train-limit", "256", "--test-limit", "64",
                 "--batch-size", "64", "--workers", "1", "--quiet", "--tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard" / "gn-seed1"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    rows = read_dynamics(out / "gn-seed1" / DYNAMICS)
    assert {f"{r['statistic']}/{r['layer']}" for r in rows} | {"metrics/test_accuracy"} <= set(tags["scalars"])
    grad = [r for r in rows if (r["statistic"], r["layer"]) == ("grad_norm", "block3")]
    logged = events.Scalars("grad_norm/block3")
    assert [round(e.value, 4) for e in logged] == [round(r["value"], 4) for r in grad]
    assert [e.step for e in logged] == [(r["epoch"] - 1) * 4 + r["step"] for r in grad]  # 4 steps per epoch
    assert {"block1/conv.weight", "block6/norm.weight"} <= set(tags["histograms"])
    assert len(events.Histograms("block1/conv.weight")) == 2  # one per epoch


def test_tensorboard_on_resume_writes_experiments_that_finished_before(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from normlab.cli import main

    out = tmp_path / "study"
    args = ["run", "--norm", "ln", "--epochs", "1", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "64", "--workers", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0 and not (out / "tensorboard").exists()
    assert main([*args, "--resume", "--tensorboard"]) == 0
    assert any((out / "tensorboard" / "ln-seed1").glob("events.out.tfevents.*"))
