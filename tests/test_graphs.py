"""The host side of the CUDA-graph step, on the CPU: what a graph replays must be what the eager
step computes — the one-cycle schedule's own values, each member's own generators, static buffers
for every batch size including the last short one, and state put back after a warm-up."""

from __future__ import annotations

import pytest
import torch

from normlab.config import ExperimentConfig
from normlab.training import graphs
from normlab.training.group import GroupStep
from normlab.training.loop import epoch_seed, epoch_steps, run_to_end
from normlab.training.state import TrainState

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 200 training images at batch 64: three full batches and a short one of 8
SMALL = dict(norm="bn", epochs=2, train_limit=200, test_limit=64, batch_size=64)


def _members(seeds=(1, 2), **settings) -> list[TrainState]:
    return [TrainState(ExperimentConfig(name="g", seed=s, lr=0.02 * s, **{**SMALL, **settings})) for s in seeds]


def _epoch(group: GroupStep, epoch: int = 1) -> dict:
    first = group.members[0]
    return run_to_end(epoch_steps(group, epoch, first.slices, first.data, recording=False))


def test_the_schedule_table_holds_onecyclelr_s_own_values():
    members = _members(momentum=0.05)  # the schedule touches momentum 0 at its low point
    reference = _members(momentum=0.05)
    group = GroupStep(members)
    group.begin(1)
    steps = len(members[0].slices)
    for k, m in enumerate(reference):
        lrs, momenta = [], []
        for _ in range(steps):
            lrs.append(m.optimizer.param_groups[0]["lr"])
            momenta.append(m.optimizer.param_groups[0]["momentum"])
            m.optimizer.step()
            m.scheduler.step()
        assert group.lr_table[:, k].tolist() == pytest.approx(lrs, rel=1e-6)
        assert group.momentum_table[:, k].tolist() == pytest.approx(momenta, rel=1e-6)
        assert members[k].scheduler.state_dict()["last_epoch"] == m.scheduler.state_dict()["last_epoch"]


def test_each_member_draws_its_batches_from_its_own_generator():
    members = _members()
    group = GroupStep(members)
    gens = group.gens
    for epoch in (1, 2):
        group.begin(epoch)
        for k, m in enumerate(members):
            expected = torch.randperm(len(m.data.train_y), generator=torch.Generator().manual_seed(
                epoch_seed(m.cfg.seed, epoch)))
            assert torch.equal(group.order[k], expected)
        assert group.gens is gens  # the same generator objects every epoch: a graph holds them


def test_every_batch_size_gets_its_static_buffers_and_the_short_last_one_too():
    group = GroupStep(_members())
    _epoch(group)
    assert sorted(group.static) == [8, 64]
    for batch, static in group.static.items():
        assert static["index"].shape == (2, batch) and static["lr"].shape == (2,)


def test_a_warm_up_leaves_no_trace():
    group = GroupStep(_members())
    group.begin(1)
    static = group.static_for(64)
    static["index"].copy_(group.order[:, :64])
    static["lr"].copy_(group.lr_table[0])
    static["momentum"].copy_(group.momentum_table[0])
    saved = graphs.snapshot(group)
    group.step_tensors(static)
    params = group.model.params
    assert not torch.equal(params["features.0.conv.weight"], saved["params"]["features.0.conv.weight"])
    graphs.restore(group, saved)
    for n, p in params.items():
        assert torch.equal(p, saved["params"][n]), n
    assert all(torch.equal(torch.as_tensor(g.get_state()), torch.as_tensor(s))
               for g, s in zip(group.gens + group.drops, saved["gens"]))


def test_a_step_that_cannot_be_captured_runs_eagerly_and_says_so_once(monkeypatch, capsys):
    eager = _epoch(GroupStep(_members()))
    graphed = GroupStep(_members())
    graphed.graphs.enabled = True  # as on CUDA

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture", refuse)
    outcome = _epoch(graphed)
    err = capsys.readouterr().err
    assert err.count("could not be captured as a CUDA graph") == 1 and "runs eagerly" in err
    assert graphed.graphs.enabled is False
    for k in eager:
        assert eager[k].row() | {"seconds": 0} == outcome[k].row() | {"seconds": 0}


def test_the_cuda_layout_is_contiguous_for_parameters_and_batches():
    """cuDNN's batch norm inside vmap refuses channels_last (the GPU check found it): on CUDA the
    group stacks its parameters and its batches in contiguous_format."""
    group = GroupStep(_members(), contiguous=True)
    assert all(p.is_contiguous() for p in group.model.params.values())
    x = torch.rand(2, 64, 1, 28, 28).contiguous(memory_format=torch.contiguous_format)
    assert group.model.layout(x).is_contiguous()
    outcome = _epoch(group)
    assert sorted(outcome) == [0, 1] and all(m.epoch == 1 for m in outcome.values())
