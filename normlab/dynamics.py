"""Training dynamics, recorded while training: what each norm layer sees and does, step by step.

At chosen steps (several in epoch 1, where things move fastest, then each epoch's last step) the
recorder measures, for every block of the network (`Net.blocks`):

- input_mean, input_std     activations entering the norm (after the ReLU, or the conv for a
                            norm that carries its own activation)
- output_mean, output_std   activations leaving it
- relu_zero_fraction        fraction of the ReLU's outputs that are exactly 0 (blocks with a ReLU)
- grad_norm                 L2 norm of the conv weight's gradient (loss + L1 term), before the step
- weight_norm               L2 norm of the conv weight, before the step
- update_ratio              |w_after - w_before| / |w_before| of that step (SGD with momentum,
                            weight decay and the schedule's LR included)

Recording only reads tensors: no random numbers are drawn and nothing is written into the model,
so a run trains bit-identically with or without it (a test checks). Rows are long-format
(epoch, step, layer, statistic, value); the checkpoint keeps them and `dynamics.csv` is their view.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

STATISTICS = ("input_mean", "input_std", "output_mean", "output_std", "relu_zero_fraction",
              "grad_norm", "weight_norm", "update_ratio")


def recorded_steps(epoch: int, steps: int) -> set[int]:
    """Steps (1-based, within the epoch) to record: 1, 2, 4, 8, ... in epoch 1, and every epoch's last."""
    chosen = {steps}
    if epoch == 1:
        s = 1
        while s < steps:
            chosen.add(s)
            s *= 2
    return chosen


def _value(v: float) -> float:
    return float(f"{v:.6g}")


Sink = Callable[[str, str, torch.Tensor], None]  # (layer, statistic, scalar tensor)


def install_activation_hooks(model: nn.Module, sink: Sink, armed: Callable[[], bool]) -> None:
    """Forward hooks on each block's norm and ReLU that pass the activation statistics to `sink`
    while `armed()`. They also work inside torch.func.vmap, where each value is per member."""
    for layer, block in model.blocks():
        def norm_hook(module, inputs, output, layer=layer):
            if armed():
                with torch.no_grad():
                    for side, t in (("input", inputs[0]), ("output", output)):
                        std, mean = torch.std_mean(t.detach().float(), correction=0)
                        sink(layer, f"{side}_mean", mean)
                        sink(layer, f"{side}_std", std)

        def relu_hook(module, inputs, output, layer=layer):
            if armed():
                with torch.no_grad():
                    sink(layer, "relu_zero_fraction", (output.detach() == 0).float().mean())

        block.norm.register_forward_hook(norm_hook)
        if isinstance(block.act, nn.ReLU):
            block.act.register_forward_hook(relu_hook)


class DynamicsRecorder:
    """Activation hooks that measure only while armed, and the weight statistics of a step."""

    def __init__(self, model: nn.Module):
        self.blocks = model.blocks()
        self._armed = False
        self._stats: dict[tuple[str, str], torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}
        install_activation_hooks(model, lambda layer, stat, v: self._stats.__setitem__((layer, stat), v),
                                 lambda: self._armed)

    def arm(self) -> None:
        """Measure activations during the next forward pass."""
        self._stats.clear()
        self._armed = True

    def after_backward(self) -> None:
        """Gradient and weight norms, and a copy of each weight to measure the update against."""
        self._armed = False
        with torch.no_grad():
            for name, block in self.blocks:
                w = block.conv.weight
                self._before[name] = w.detach().clone()
                self._stats[name, "weight_norm"] = w.detach().norm()
                if w.grad is not None:
                    self._stats[name, "grad_norm"] = w.grad.detach().norm()

    def after_step(self, epoch: int, step: int) -> list[dict]:
        """This step's rows, (epoch, step, layer, statistic, value), in STATISTICS order per layer."""
        with torch.no_grad():
            for name, block in self.blocks:
                before = self._before.pop(name)
                self._stats[name, "update_ratio"] = (block.conv.weight.detach() - before).norm() / before.norm()
        rows = step_rows(epoch, step, [layer for layer, _ in self.blocks], self._stats)
        self._stats.clear()
        return rows


def step_rows(epoch: int, step: int, layers: list[str], stats: dict[tuple[str, str], torch.Tensor]) -> list[dict]:
    """One step's rows from {(layer, statistic): scalar tensor}, layers in order, STATISTICS order within."""
    keys = [(layer, stat) for layer in layers for stat in STATISTICS if (layer, stat) in stats]
    values = torch.stack([stats[k].float().cpu() for k in keys]).tolist()
    return [{"epoch": epoch, "step": step, "layer": layer, "statistic": stat, "value": _value(v)}
            for (layer, stat), v in zip(keys, values)]
