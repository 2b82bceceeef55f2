"""The grouped executor: several experiments as one vmapped model, each with today's files."""

import json

import pytest
import torch

from normlab.cli import main
from normlab.config import ExperimentConfig, step_key
from normlab.errors import DivergedError
from normlab.execution.schedule import step_classes
from normlab.experiment import Experiment
from normlab.grouped import GroupedEpoch, run_together
from normlab.results import read_dynamics, read_metrics

SMALL = dict(norm="bn", epochs=2, train_limit=256, test_limit=128, batch_size=64, dropout=0.0)
# seed, lr, l1, l2, momentum (0.05: the one-cycle schedule swings it to near 0 around the LR peak;
# exactly 0 is test_the_stacked_update_is_torch_sgd_member_by_member's case)
MEMBERS = [(1, 0.02, 0.0, 0.0, 0.9), (2, 0.05, 1e-4, 0.0, 0.05), (3, 0.1, 0.0, 1e-3, 0.9)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_only_experiments_that_can_share_a_step_are_grouped():
    a = ExperimentConfig(name="a", seed=1, lr=0.1, l1=1e-4)
    b = ExperimentConfig(name="b", seed=2, lr=0.5, l2=1e-3, momentum=0.8)
    assert step_key(a) == step_key(b)
    configs = [a, b, ExperimentConfig(name="c", norm="gn"), ExperimentConfig(name="d", batch_size=64),
               ExperimentConfig(name="e", seed=5)]
    assert step_classes(configs) == [["a-seed1", "b-seed2", "e-seed5"], ["c-seed1"], ["d-seed1"]]


def train_together(members: list[Experiment]) -> dict:
    """One epoch of `members` as one group; a bug in the group is raised."""
    outcome = run_together([GroupedEpoch(members)])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _separate_and_grouped(tmp_path, cfgs: list[ExperimentConfig]) -> tuple[dict, dict]:
    """Each config trained alone, and all of them as one group; dir name -> Experiment after training."""
    separate = {}
    for cfg in cfgs:
        exp = Experiment(cfg, tmp_path / "separate" / cfg.dirname)
        for _ in range(cfg.epochs):
            try:
                exp.run_epoch()
            except DivergedError as e:
                exp.diverged(e)
                break
        separate[cfg.dirname] = exp
    for _ in range(2):  # each epoch from the files, as the executor does
        members = [Experiment(c, tmp_path / "grouped" / c.dirname, resume=True) for c in cfgs]
        members = [m for m in members if m.diverged_at is None]
        train_together(members)
    grouped = {c.dirname: Experiment(c, tmp_path / "grouped" / c.dirname, resume=True) for c in cfgs}
    return separate, grouped


def _assert_same_run(alone: Experiment, together: Experiment) -> None:
    assert together.epoch == alone.epoch and together.diverged_at == alone.diverged_at
    for (k, a), b in zip(alone.state.model.state_dict().items(), together.state.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10, msg=k)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in alone.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in together.history] == strip
    assert repr(together.state.dynamics) == repr(alone.state.dynamics)  # repr: nan equals nan (a diverged run)
    expected, got = alone.state.optimizer.state_dict()["state"], together.state.optimizer.state_dict()["state"]
    assert list(got) == list(expected)
    for i in expected:
        torch.testing.assert_close(got[i]["momentum_buffer"], expected[i]["momentum_buffer"], rtol=0, atol=1e-10)
    assert together.state.scheduler.state_dict()["last_epoch"] == alone.state.scheduler.state_dict()["last_epoch"]


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def test_a_group_of_three_equals_three_separate_runs(tmp_path, float64):
    """In float64 the two paths agree to rounding (1e-10 in every weight and momentum buffer after
    2 epochs, the same metrics and dynamics rows), momentum near 0 included; in float32 they differ as
    much as two conv algorithms do, because this network amplifies rounding at init
    (channels_last vs contiguous weights: ~1e-3 in log-probabilities)."""
    cfgs = [ExperimentConfig(name="m", seed=s, lr=lr, l1=l1, l2=l2, momentum=m, **SMALL)
            for s, lr, l1, l2, m in MEMBERS]
    separate, grouped = _separate_and_grouped(tmp_path, cfgs)
    for name in separate:
        _assert_same_run(separate[name], grouped[name])


def test_with_dropout_each_member_draws_the_masks_of_its_separate_run(tmp_path, float64):
    """Dropout masks come from each member's own generator, so with dropout on a member still
    equals its separate run, and never depends on who else is in its group."""
    cfgs = [ExperimentConfig(name="m", seed=s, lr=lr, l1=l1, l2=l2, momentum=m, **{**SMALL, "dropout": 0.1})
            for s, lr, l1, l2, m in MEMBERS[:2]]
    separate, grouped = _separate_and_grouped(tmp_path, cfgs)
    for name in separate:
        _assert_same_run(separate[name], grouped[name])
    _, alone = _separate_and_grouped(tmp_path / "alone", cfgs[1:])  # the same member in a group of one
    _assert_same_run(alone[cfgs[1].dirname], grouped[cfgs[1].dirname])


def test_members_after_one_that_diverged_keep_their_own_data_and_numbers(tmp_path, float64):
    """The first member diverges in epoch 1 and leaves the group; the others go on exactly as alone."""
    cfgs = [ExperimentConfig(name="m", seed=1, lr=3e38, **{**SMALL, "norm": "none"}),
            *[ExperimentConfig(name="m", seed=s, lr=0.05, **{**SMALL, "norm": "none"}) for s in (2, 3)]]
    separate, grouped = _separate_and_grouped(tmp_path, cfgs)
    assert grouped[cfgs[0].dirname].diverged_at is not None
    for name in separate:
        _assert_same_run(separate[name], grouped[name])


ARGS = ["--epochs", "2", "--train-limit", "256", "--test-limit", "128", "--batch-size", "64", "--quiet"]


def test_grouped_study_writes_todays_files_and_resumes(tmp_path, capsys, request):
    out = tmp_path / "g"
    cmd = ["run", "--norm", "gn", "--lr", "0.02", "0.05", "--seeds", "1", "2", *ARGS, "--grouped", "on"]
    assert main([*cmd, "--out", str(out), "--epochs", "1"]) == 0
    # the same study asked for 2 epochs is another config: resume the 1-epoch files under a 2-epoch study
    for d in out.glob("gn-*"):
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "dynamics.csv", "metrics.csv",
                                                       "misclassified.json", "misclassified.png", "model.pt",
                                                       "status.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["experiments"]] == ["done"] * 4
    request.getfixturevalue("no_drawing")  # what follows compares numbers, not figures
    # an interrupted grouped study resumes where it stopped and ends as an uninterrupted one
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*cmd, "--out", str(full)]) == 0
    real = GroupedEpoch.epoch_steps

    def stop_in_epoch_2(self):  # the executor drives epoch_steps: two steps of epoch 2, then Ctrl-C
        steps = real(self)
        if self.members[0].epoch >= 1:
            next(steps)
            next(steps)
            yield
            raise KeyboardInterrupt
        return (yield from steps)

    GroupedEpoch.epoch_steps = stop_in_epoch_2
    try:
        assert main([*cmd, "--out", str(cut)]) == 130
    finally:
        GroupedEpoch.epoch_steps = real
    assert main([*cmd, "--out", str(cut), "--resume"]) == 0
    for d in full.glob("gn-*"):
        assert read_metrics(d / "metrics.csv")[-1]["test_loss"] == read_metrics(cut / d.name / "metrics.csv")[-1]["test_loss"]
        assert read_dynamics(d / "dynamics.csv") == read_dynamics(cut / d.name / "dynamics.csv")
    assert "Traceback" not in capsys.readouterr().err


def test_a_diverged_member_is_recorded_and_the_others_finish(tmp_path, capsys, no_drawing):
    out = tmp_path / "d"
    code = main(["run", "--norm", "none", "--lr", "0.05", "1e6", *ARGS, "--grouped", "on", "--out", str(out)])
    assert code == 3  # some diverged
    summary = {e["name"]: e for e in json.loads((out / "summary.json").read_text())["experiments"]}
    assert summary["none-lr1e06"]["status"] == "diverged"
    assert summary["none-lr0.05"]["status"] == "done" and summary["none-lr0.05"]["epochs_run"] == 2
    assert "Traceback" not in capsys.readouterr().err


def test_grouped_on_with_ray_is_one_sentence(tmp_path, capsys):
    code = main(["run", "--norm", "bn", *ARGS, "--grouped", "on", "--executor", "ray", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be combined with --executor ray" in err and "Traceback" not in err


def test_bench_measures_the_grouped_step():
    from normlab.bench import grouped_step_throughput

    assert grouped_step_throughput(0.5, members=2) > 0


@pytest.mark.parametrize("norm", __import__("normlab.zoo", fromlist=["NORMS"]).NORMS)
def test_every_norm_of_the_zoo_trains_grouped(tmp_path, norm):
    """The grouped executor (the default on CUDA) builds and steps a group for every norm: `in` on
    the 1x1 maps after pooling, for one, refuses a probe batch of one image."""
    cfgs = [ExperimentConfig(name="z", norm=norm, seed=s, epochs=1, train_limit=128, test_limit=64, batch_size=64)
            for s in (1, 2)]
    members = [Experiment(c, tmp_path / f"{norm}-{c.seed}") for c in cfgs]
    train_together(members)
    assert all(m.epoch == 1 for m in members)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_the_stacked_update_is_torch_sgd_member_by_member(weight_decay):
    """`training.sgd.stacked_sgd` with K members' own LR, momentum (0 included: SGD then keeps its
    buffer) and weight decay equals K torch.optim.SGD steps, over several steps."""
    from normlab.training.sgd import stacked_sgd

    gen = torch.Generator().manual_seed(0)
    settings = [(0.1, 0.9), (0.05, 0.0), (0.2, 0.5)]
    weights = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in settings]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizers = [torch.optim.SGD([p], lr=lr, momentum=m, weight_decay=weight_decay) for p, (lr, m) in
                  zip(params, settings)]
    stacked = {"w": torch.stack(weights)}
    momentum = {"w": torch.zeros_like(stacked["w"])}
    lr = torch.tensor([s[0] for s in settings], dtype=torch.float64)
    beta = torch.tensor([s[1] for s in settings], dtype=torch.float64)
    decay = torch.full((3,), weight_decay, dtype=torch.float64)
    for _ in range(3):
        grads = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64)
        for p, g, opt in zip(params, grads, optimizers):
            p.grad = g.clone()
            opt.step()
        stacked_sgd(stacked, {"w": grads}, momentum, lr, beta, decay, {"w"})
    for k, p in enumerate(params):
        torch.testing.assert_close(stacked["w"][k], p.detach(), rtol=0, atol=1e-15)
