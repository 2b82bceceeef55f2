"""The grouped step as a CUDA graph: captured once per batch size, then replayed.

A study's steps are small (a 7.7k-parameter net): run eagerly, the GPU waits on ~800 kernel
launches per step; replayed as one graph, a probe of the same step ran in about a tenth of the time
(benchmarks/gpu_check.py measures normlab's own, side by side with the eager step).
The step (`GroupedEpoch._step_tensors`) reads and writes only tensors
that live as long as its group — stacked parameters, momentum buffers, per-slot generators, and
static inputs (batch indices, each member's LR and momentum) that are filled before each replay —
so a replay is the eager step, bit for bit in intent: the members' generators are registered with
the graph, and any state the warm-up moved is put back before the capture.

Capture can fail (an operation a graph cannot hold, a driver that refuses): then the group runs
eagerly, and the output says so in one sentence.
"""

from __future__ import annotations

import torch

from .errors import first_line, notice


def _snapshot(group, plan: dict) -> dict:
    return {"params": {n: p.detach().clone() for n, p in group.params.items()},
            "momentum": {n: b.clone() for n, b in group.momentum.items()},
            "buffers": {n: b.clone() for n, b in group.buffers.items()},
            "gens": [g.get_state() for g in plan["gens"] + plan["drops"]],
            "loss_sum": plan["loss_sum"].clone(), "correct": plan["correct"].clone()}


@torch.no_grad()
def _restore(group, plan: dict, saved: dict) -> None:
    for n, p in group.params.items():
        p.copy_(saved["params"][n])
    for n, b in group.momentum.items():
        b.copy_(saved["momentum"][n])
    for n, b in group.buffers.items():
        b.copy_(saved["buffers"][n])
    for g, state in zip(plan["gens"] + plan["drops"], saved["gens"]):
        g.set_state(state)
    plan["loss_sum"].copy_(saved["loss_sum"])
    plan["correct"].copy_(saved["correct"])


def capture(group, batch: int, plan: dict, warmup: int = 2):
    """A CUDA graph of one step at this batch size; the group's state is as it was before."""
    static = group._static[batch]
    saved = _snapshot(group, plan)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuDNN, cuBLAS and autograd set themselves up outside the graph
        for _ in range(warmup):
            group._step_tensors(static, plan)
    torch.cuda.current_stream().wait_stream(side)
    _restore(group, plan, saved)
    graph = torch.cuda.CUDAGraph()
    for generator in plan["gens"] + plan["drops"]:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        group._step_tensors(static, plan)
    _restore(group, plan, saved)  # capturing recorded the step; the first replay runs it
    return graph


def replay_or_capture(group, batch: int, plan: dict) -> None:
    """Replay the group's graph for this batch size, capturing it first; where capture fails,
    run the step eagerly from then on and say why, once."""
    graph = group._graphs.get(batch)
    if graph is None:
        try:
            graph = capture(group, batch, plan)
        except Exception as e:  # any refusal of the capture: the eager step computes the same
            group.graph = False
            notice(f"the training step could not be captured as a CUDA graph ({first_line(e, 160)}); it runs "
                   "eagerly instead (same numbers, slower).")
            group._step_tensors(group._static[batch], plan)
            return
        group._graphs[batch] = graph
    graph.replay()
