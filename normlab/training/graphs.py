"""The grouped step as a CUDA graph: captured once per batch size, then replayed.

A study's steps are small (a 7.7k-parameter net): run eagerly, the GPU waits on ~800 kernel
launches per step; replayed as one graph, a probe of the same step ran in about a tenth of the time
(benchmarks/gpu_check.py measures normlab's own, side by side with the eager step).
The step (`GroupStep.step_tensors`) reads and writes only tensors that live as long as its group —
stacked parameters, momentum buffers, per-slot generators, and static inputs (batch indices, each
member's LR and momentum) that are filled before each replay — so a replay is the eager step, bit
for bit in intent: the members' generators are registered with the graph, and any state the
warm-up moved is put back before the capture.

Capture can fail (an operation a graph cannot hold, a driver that refuses): then the group runs
eagerly, and the output says so in one sentence.
"""

from __future__ import annotations

import torch

from ..errors import first_line, notice


def snapshot(group) -> dict:
    """Everything a step of `group` (a GroupStep) moves, copied."""
    model = group.model
    return {"params": {n: p.detach().clone() for n, p in model.params.items()},
            "momentum": {n: b.clone() for n, b in model.momentum.items()},
            "buffers": {n: b.clone() for n, b in model.buffers.items()},
            "gens": [g.get_state() for g in group.gens + group.drops],
            "loss_sum": group.loss_sum.clone(), "correct": group.correct.clone()}


@torch.no_grad()
def restore(group, saved: dict) -> None:
    """Put back what `snapshot` copied, in place (the tensors a graph holds stay the same objects)."""
    model = group.model
    for n, p in model.params.items():
        p.copy_(saved["params"][n])
    for n, b in model.momentum.items():
        b.copy_(saved["momentum"][n])
    for n, b in model.buffers.items():
        b.copy_(saved["buffers"][n])
    for g, state in zip(group.gens + group.drops, saved["gens"]):
        g.set_state(state)
    group.loss_sum.copy_(saved["loss_sum"])
    group.correct.copy_(saved["correct"])


def capture(group, batch: int, warmup: int = 2):
    """A CUDA graph of one step at this batch size; the group's state is as it was before."""
    static = group.static_for(batch)
    saved = snapshot(group)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuDNN, cuBLAS and autograd set themselves up outside the graph
        for _ in range(warmup):
            group.step_tensors(static)
    torch.cuda.current_stream().wait_stream(side)
    restore(group, saved)
    graph = torch.cuda.CUDAGraph()
    for generator in group.gens + group.drops:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        group.step_tensors(static)
    restore(group, saved)  # capturing recorded the step; the first replay runs it
    return graph


class StepGraphs:
    """A group's captured steps, one per batch size; `enabled` turns off for good when a capture fails."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.by_batch: dict[int, object] = {}

    def replay_or_capture(self, group, batch: int) -> None:
        """Replay the group's graph for this batch size, capturing it first; where capture fails,
        run the step eagerly from then on and say why, once."""
        graph = self.by_batch.get(batch)
        if graph is None:
            try:
                graph = capture(group, batch)
            except Exception as e:  # any refusal of the capture: the eager step computes the same
                self.enabled = False
                notice(f"the training step could not be captured as a CUDA graph ({first_line(e, 160)}); it "
                       "runs eagerly instead (same numbers, slower).")
                group.step_tensors(group.static_for(batch))
                return
            self.by_batch[batch] = graph
        graph.replay()
