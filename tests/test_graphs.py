"""The host side of the CUDA-graph step, on the CPU: what a graph replays must be what the eager
step computes — the one-cycle schedule's own values, each member's own generators, static buffers
for every batch size including the last short one, and state put back after a warm-up."""

from __future__ import annotations

import pytest
import torch

from normlab import graphs
from normlab.config import ExperimentConfig
from normlab.grouped import GroupedEpoch
from normlab.train import Experiment, epoch_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 200 training images at batch 64: three full batches and a short one of 8
SMALL = dict(norm="bn", epochs=2, train_limit=200, test_limit=64, batch_size=64)


def _members(tmp_path, seeds=(1, 2), **settings) -> list[Experiment]:
    return [Experiment(ExperimentConfig(name="g", seed=s, lr=0.02 * s, **{**SMALL, **settings}),
                       tmp_path / f"g-seed{s}") for s in seeds]


def test_the_schedule_table_holds_onecyclelr_s_own_values(tmp_path):
    members = _members(tmp_path, momentum=0.05)  # the schedule touches momentum 0 at its low point
    reference = _members(tmp_path / "ref", momentum=0.05)
    plan = GroupedEpoch(members).epoch_plan(1)
    steps = len(members[0].slices)
    for k, m in enumerate(reference):
        lrs, momenta = [], []
        for _ in range(steps):
            lrs.append(m.optimizer.param_groups[0]["lr"])
            momenta.append(m.optimizer.param_groups[0]["momentum"])
            m.optimizer.step()
            m.scheduler.step()
        assert plan["lr"][:, k].tolist() == pytest.approx(lrs, rel=1e-6)
        assert plan["momentum"][:, k].tolist() == pytest.approx(momenta, rel=1e-6)
        assert members[k].scheduler.state_dict()["last_epoch"] == m.scheduler.state_dict()["last_epoch"]


def test_each_member_draws_its_batches_from_its_own_generator(tmp_path):
    members = _members(tmp_path)
    group = GroupedEpoch(members)
    for epoch in (1, 2):
        plan = group.epoch_plan(epoch)
        for k, m in enumerate(members):
            expected = torch.randperm(len(m.data.train_y), generator=torch.Generator().manual_seed(
                epoch_seed(m.cfg.seed, epoch)))
            assert torch.equal(plan["order"][k], expected)
        assert plan["gens"] is group.gens  # the same generator objects every epoch: a graph holds them


def test_every_batch_size_gets_its_static_buffers_and_the_short_last_one_too(tmp_path):
    group = GroupedEpoch(_members(tmp_path))
    group.run()
    assert sorted(group._static) == [8, 64]
    for batch, static in group._static.items():
        assert static["index"].shape == (2, batch) and static["lr"].shape == (2,)


def test_a_warm_up_leaves_no_trace(tmp_path):
    group = GroupedEpoch(_members(tmp_path))
    plan = group.epoch_plan(1)
    static = group._static_for(64, plan)
    static["index"].copy_(plan["order"][:, :64])
    static["lr"].copy_(plan["lr"][0])
    static["momentum"].copy_(plan["momentum"][0])
    saved = graphs._snapshot(group, plan)
    group._step_tensors(static, plan)
    assert not torch.equal(group.params["features.0.conv.weight"], saved["params"]["features.0.conv.weight"])
    graphs._restore(group, plan, saved)
    for n, p in group.params.items():
        assert torch.equal(p, saved["params"][n]), n
    assert all(torch.equal(torch.as_tensor(g.get_state()), torch.as_tensor(s))
               for g, s in zip(plan["gens"] + plan["drops"], saved["gens"]))


def test_a_step_that_cannot_be_captured_runs_eagerly_and_says_so_once(tmp_path, monkeypatch, capsys):
    eager = GroupedEpoch(_members(tmp_path / "eager"))
    eager.run()
    graphed = GroupedEpoch(_members(tmp_path / "graphed"))
    graphed.graph = True  # as on CUDA

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture", refuse)
    graphed.run()
    err = capsys.readouterr().err
    assert err.count("could not be captured as a CUDA graph") == 1 and "runs eagerly" in err
    assert graphed.graph is False
    for a, b in zip(eager.members, graphed.members):
        assert a.history[-1] | {"seconds": 0} == b.history[-1] | {"seconds": 0}


def test_the_cuda_layout_is_contiguous_for_parameters_and_batches(tmp_path):
    """cuDNN's batch norm inside vmap refuses channels_last (the GPU check found it): on CUDA the
    group stacks its parameters and its batches in contiguous_format."""
    group = GroupedEpoch(_members(tmp_path), contiguous=True)
    assert all(p.is_contiguous() for p in group.params.values())
    x = torch.rand(2, 64, 1, 28, 28).contiguous(memory_format=torch.contiguous_format)
    assert group._layout(x).is_contiguous()
    history = [group.run() for _ in range(1)]
    assert history and all(m.epoch == 1 for m in group.members)
