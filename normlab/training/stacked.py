"""K members' parameters stacked along a first axis and run as one model with `torch.func.vmap`.

`torch.func.stack_module_state` stacks the members' models; `vmap` over `functional_call` runs
them: one kernel launch per layer for the whole group instead of one per member, which is what a
launch-bound GPU needs. Forward hooks on the template's norms and ReLUs collect the activation
statistics of a recorded step inside the vmapped call.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..dynamics import install_activation_hooks, step_rows
from ..model import Dropout, Net, dropout_mask
from .loop import EVAL_BATCH
from .state import TrainState


class ActivationStats:
    """Forward hooks on the template's norms and ReLUs that collect activation statistics
    inside the vmapped call; the call returns them stacked, one row per member."""

    def __init__(self, template: torch.nn.Module):
        self.layers = [name for name, _ in template.blocks()]
        self.keys: list[tuple[str, str]] = []
        self.values: list[torch.Tensor] = []
        self.active = False
        install_activation_hooks(template, self.add, lambda: self.active)

    def add(self, layer: str, stat: str, value: torch.Tensor) -> None:
        self.keys.append((layer, stat))
        self.values.append(value)

    def take(self) -> torch.Tensor:
        out = torch.stack(self.values) if self.values else torch.zeros(0)
        self.values = []
        return out


def dropout_input_shapes(net_config) -> list[tuple[int, ...]]:
    """(C, H, W) of the input of every active dropout layer, in forward order."""
    net = Net.from_config(net_config).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[1:])))
             for m in net.modules() if isinstance(m, Dropout) and m.p > 0]
    with torch.no_grad():
        net(torch.zeros(2, 1, 28, 28))  # two images: IN on the 1x1 maps refuses one
    for h in hooks:
        h.remove()
    return shapes


class StackedModel:
    """The stacked parameters, buffers and SGD momentum buffers of `slots` (a None slot holds a
    copy of the first member), and the vmapped forward pass over them."""

    def __init__(self, slots: list[TrainState | None], contiguous: bool):
        first = next(m for m in slots if m is not None)
        self.device = first.device
        self.template = Net.from_config(first.net_config).to("meta")  # no hooks of a member's recorder
        self.template.check_range = False  # a host-side check cannot run inside vmap; test data is in range
        self.dropouts = [m for m in self.template.modules() if isinstance(m, Dropout) and m.p > 0]
        self.mask_shapes = dropout_input_shapes(first.net_config)
        self.stats = ActivationStats(self.template)
        models = [(m or first).model for m in slots]
        params, buffers = stack_module_state(models)
        # On CUDA, contiguous_format: cuDNN's batch norm cannot query channels_last strides inside vmap
        # (params and batches both; tests/test_graphs.py pins it). On the CPU, the layout of a separate
        # run (channels_last activations), so a member rounds as its separate run does.
        self.contiguous = contiguous
        self.buffers = {n: b.contiguous() if contiguous else b for n, b in buffers.items()}
        self.params = {n: (p.detach().contiguous() if contiguous else p.detach()).requires_grad_()
                       for n, p in params.items()}
        self.weights = {n for n in self.params if self.params[n].dim() >= 3}  # conv weights: L1/L2 apply
        path = {id(module): name for name, module in first.model.named_modules()}
        self.blocks = {f"{path[id(block)]}.conv.weight": layer for layer, block in first.model.blocks()}
        self.momentum = self.stacked_momentum([m or first for m in slots])
        self.dtype = next(iter(self.params.values())).dtype

    def stacked_momentum(self, states: list[TrainState]) -> dict[str, torch.Tensor]:
        """Each parameter's momentum buffers, stacked; zeros before the first step, where SGD's
        `buf = grad` equals `buf = momentum * 0 + grad` to the bit."""
        out = {}
        for n in self.params:
            bufs = [s.optimizer.state.get(dict(s.model.named_parameters())[n], {}).get("momentum_buffer")
                    for s in states]
            out[n] = (torch.stack(bufs).contiguous() if all(b is not None for b in bufs)
                      else torch.zeros_like(self.params[n].detach()))
        return out

    def masks(self, batch: int, generators: list[torch.Generator]) -> list[torch.Tensor]:
        """Each dropout layer's masks for this step, stacked over slots; slot k draws all of its
        layers' masks in forward order from its own generator, as its separate run draws them."""
        per_slot = [[dropout_mask((batch, *shape), layer.p, self.dtype, self.device, g)
                     for layer, shape in zip(self.dropouts, self.mask_shapes)] for g in generators]
        return [torch.stack([masks[i] for masks in per_slot]) for i in range(len(self.dropouts))]

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The batch (K, B, C, H, W) in the memory layout of the step: contiguous on CUDA (what cuDNN's
        batch norm needs inside vmap), each member's slice channels_last on the CPU (as a separate run)."""
        if self.contiguous:
            return x.contiguous()
        return torch.stack([xk.contiguous(memory_format=torch.channels_last) for xk in x])

    def forward(self, x: torch.Tensor, train: bool, record: bool = False, shared_input: bool = False,
                masks: list[torch.Tensor] | None = None):
        """(log-probabilities (K, B, 10), activation statistics (K, S)) of every slot."""
        self.template.train(train)
        self.stats.active, self.stats.keys = record, []

        def one(p, b, xx):
            out = functional_call(self.template, (p, b), (xx,))
            return out, self.stats.take()

        def with_masks(p, b, xx, masks):
            for layer, mask in zip(self.dropouts, masks):
                layer.mask = mask
            try:
                return one(p, b, xx)
            finally:
                for layer in self.dropouts:
                    layer.mask = None

        try:
            with warnings.catch_warnings():  # adaptive_avg_pool2d has no batching rule: a note, not a fault
                warnings.filterwarnings("ignore", message="There is a performance drop")
                if masks:
                    return vmap(with_masks, in_dims=(0, 0, 0, 0))(self.params, self.buffers, x, masks)
                return vmap(one, in_dims=(0, 0, None if shared_input else 0))(self.params, self.buffers, x)
        finally:
            self.stats.active = False

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """(mean NLL, accuracy %) of every slot on x, y, in eval mode."""
        logp = torch.cat([self.forward(x[i:i + EVAL_BATCH], train=False, shared_input=True)[0]
                          for i in range(0, len(x), EVAL_BATCH)], dim=1)
        loss = vmap(lambda lp: F.nll_loss(lp, y, reduction="sum"))(logp) / len(y)
        accuracy = 100.0 * (logp.argmax(2) == y).sum(1) / len(y)
        return loss.tolist(), accuracy.tolist()

    @torch.no_grad()
    def copy_slot(self, k: int, src: int) -> None:
        """Slot k's parameters, momentum and buffers become a copy of slot src's, in place (a
        captured graph stays valid)."""
        for n in self.params:
            self.params[n][k] = self.params[n][src]
            self.momentum[n][k] = self.momentum[n][src]
        for b in self.buffers.values():
            b[k] = b[src]

    @torch.no_grad()
    def write_back(self, k: int, state: TrainState) -> None:
        """Slot k's parameters, momentum and buffers into the member's own model and optimizer."""
        name_of = {id(p): n for n, p in state.model.named_parameters()}
        for group in state.optimizer.param_groups:  # the optimizer's own order, as its step would fill it
            for p in group["params"]:
                n = name_of[id(p)]
                p.copy_(self.params[n][k])
                # in the parameter's own memory layout, as SGD would have made it
                state.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(self.momentum[n][k])
        for n, b in state.model.named_buffers():
            b.copy_(self.buffers[n][k])

    def gradient_stats(self, grads: dict[str, torch.Tensor], acts: torch.Tensor) -> dict:
        """What a recorded step keeps before the update: activations, gradient and weight norms."""
        return {"acts": acts, "keys": list(self.stats.keys),
                "grad": {layer: grads[n].flatten(1).norm(dim=1) for n, layer in self.blocks.items()},
                "weight": {layer: self.params[n].detach().flatten(1).norm(dim=1) for n, layer in self.blocks.items()},
                "before": {n: self.params[n].detach().clone() for n in self.blocks}}

    def dynamics_rows(self, k: int, epoch: int, step: int, s: dict) -> list[dict]:
        """Slot k's dynamics rows of a recorded step, after its update."""
        stats = {key: s["acts"][k, q] for q, key in enumerate(s["keys"])}
        for n, layer in self.blocks.items():
            stats[layer, "grad_norm"] = s["grad"][layer][k]
            stats[layer, "weight_norm"] = s["weight"][layer][k]
            before = s["before"][n][k]
            stats[layer, "update_ratio"] = (self.params[n][k].detach() - before).norm() / before.norm()
        return step_rows(epoch, step, self.stats.layers, stats)
