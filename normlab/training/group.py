"""The step of K members at once: one vmapped forward and backward, each member's own update.

Members that can share a step — the same network, data, augmentation, batch size and number of
epochs; they may differ in seed, LR, momentum, L1 and L2 — keep everything a separate run has:
their own seed's init, batch order, augmentation and dropout masks (each from its own generator,
seeded as its separate run seeds it), their own one-cycle schedule (read out of their own
scheduler), their own update (`sgd.stacked_sgd`). So on the CPU a member follows its separate run
to float rounding (tests), and nothing a member draws depends on the group it trains in.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.func import vmap

from ..augment import random_affine
from ..config import step_key
from .graphs import StepGraphs
from .loop import epoch_seed
from .sgd import stacked_sgd
from .stacked import StackedModel
from .state import TrainState


class GroupStep:
    """`loop.Step` for a fixed line-up of slots: a `TrainState` that trains, or None for a member
    that does not (ahead after an interrupt, damaged, diverged, finished). A None slot is an inert
    placeholder — a copy of a real member's state at learning rate 0, whose results are dropped —
    so the vmapped step always has the same size: on the CPU a group of one rounds differently from
    a larger one, and a member's numbers must not depend on its siblings."""

    def __init__(self, slots: list[TrainState | None], graph: bool = False, contiguous: bool | None = None):
        members = [m for m in slots if m is not None]
        if not members:
            raise ValueError("a group needs at least one member that trains.")
        if len({step_key(m.cfg) for m in members}) != 1 or len({m.epoch for m in members}) != 1:
            raise ValueError("members of a group must share every setting but seed, lr, momentum, l1 and l2, "
                             "and be at the same epoch.")
        self.slots = list(slots)
        first = members[0]
        self.first, self.device = first, first.device
        self.model = StackedModel(self.slots, self.device.type == "cuda" if contiguous is None else contiguous)
        # which terms the step has: decided once per group, so a captured graph has no host branch
        self.uses_l1 = any(m.cfg.l1 for m in members)
        self.uses_weight_decay = any(m.cfg.l2 for m in members)
        self.graphs = StepGraphs(enabled=graph and self.device.type == "cuda")
        # one generator object per slot, and the epoch's sums, for the group's life: a graph holds them
        self.gens = [torch.Generator(device=self.device) for _ in self.slots]
        self.drops = [torch.Generator(device=self.device) for _ in self.slots]
        self.loss_sum = torch.zeros(len(self.slots), device=self.device)
        self.correct = torch.zeros(len(self.slots), dtype=torch.long, device=self.device)
        self.static: dict[int, dict] = {}  # batch size -> the step's input and output tensors

    @property
    def members(self) -> list[TrainState]:
        """The states that train, in slot order."""
        return [m for m in self.slots if m is not None]

    def training(self) -> list[int]:
        return [k for k, m in enumerate(self.slots) if m is not None]

    def begin(self, epoch: int, steps: int | None = None) -> None:
        """Everything an epoch's steps read, made before the first one: each member's batch order
        and generators (seeded as its separate run seeds them), and its one-cycle LR and momentum at
        every step, stepped out of its own scheduler — so the steps need no host work but copies."""
        first, real = self.first, self.training()
        steps = len(first.slices) if steps is None else steps
        self.loss_sum.zero_()
        self.correct.zero_()
        orders = []
        for k, m in enumerate(self.slots):
            seed = epoch_seed(m.cfg.seed, epoch) if m is not None else 0
            self.gens[k].manual_seed(seed)
            self.drops[k].manual_seed(seed)
            orders.append(torch.randperm(len(first.data.train_y), generator=self.gens[k], device=self.device)
                          if m is not None else None)
        self.order = torch.stack([o if o is not None else orders[real[0]] for o in orders])  # placeholder: a copy
        lr = torch.zeros(steps, len(self.slots), dtype=self.model.dtype)
        momentum = torch.zeros(steps, len(self.slots), dtype=self.model.dtype)
        for k, m in enumerate(self.slots):
            for t in range(steps):  # OneCycleLR's own values: the scheduler is stepped, as each step would
                group = (m or first).optimizer.param_groups[0]
                lr[t, k], momentum[t, k] = (group["lr"] if m is not None else 0.0), group["momentum"]
                if m is not None:
                    with warnings.catch_warnings():  # the members' optimizers never step themselves
                        warnings.simplefilter("ignore", UserWarning)
                        m.scheduler.step()
            if m is None:  # a placeholder follows the first member's momentum, at learning rate 0
                momentum[:, k] = momentum[:, real[0]]
        self.lr_table, self.momentum_table = lr.to(self.device), momentum.to(self.device)

    def step(self, t: int, i: int, j: int, record_at: tuple[int, int] | None) -> None:
        """One SGD step of every slot on its batch i:j: replayed as a CUDA graph when one is
        captured, else run; a recorded step (dynamics) always runs, to read its statistics."""
        static = self.static_for(j - i)
        static["index"].copy_(self.order[:, i:j])
        static["lr"].copy_(self.lr_table[t])
        static["momentum"].copy_(self.momentum_table[t])
        if record_at is None and self.graphs.enabled:
            self.graphs.replay_or_capture(self, j - i)
        else:
            self.step_tensors(static, record_at)

    def static_for(self, batch: int) -> dict:
        """The step's input and output tensors for this batch size, made once: a captured graph
        reads and writes these very tensors."""
        if batch not in self.static:
            k, dev, dtype = len(self.slots), self.device, self.model.dtype

            def per_slot(value):
                return torch.tensor([value(m) if m is not None else 0.0 for m in self.slots], dtype=dtype, device=dev)

            self.static[batch] = {
                "index": torch.zeros(k, batch, dtype=torch.long, device=dev),
                "lr": torch.zeros(k, dtype=dtype, device=dev), "momentum": torch.zeros(k, dtype=dtype, device=dev),
                "l1": per_slot(lambda m: m.cfg.l1),
                "weight_decay": per_slot(lambda m: m.optimizer.param_groups[0]["weight_decay"]),
                "total": torch.zeros(k, dtype=dtype, device=dev)}
        return self.static[batch]

    def step_tensors(self, static: dict, record_at: tuple[int, int] | None = None) -> None:
        """The step itself, on device tensors only (what a CUDA graph captures): gather and augment
        every member's batch with its own generator, its dropout masks from its own, forward, NLL +
        L1, backward, and torch.optim.SGD's update with each member's LR, momentum and weight decay."""
        first, model = self.first, self.model
        index = static["index"]
        x, y = first.data.train_x[index], first.data.train_y[index]  # (K, B, 1, 28, 28), (K, B)
        if first.cfg.augment:
            x = torch.stack([random_affine(x[k], self.gens[k], first.augment) for k in range(len(self.slots))])
        x = model.layout(x)
        masks = model.masks(x.shape[1], self.drops) if model.dropouts else None
        out, acts = model.forward(x, train=True, record=record_at is not None, masks=masks)
        loss = vmap(F.nll_loss)(out, y)
        total = loss
        if self.uses_l1:
            penalty = sum(model.params[n].abs().flatten(1).sum(1) for n in model.weights)
            total = loss + static["l1"] * penalty
        names = list(model.params)
        grads = dict(zip(names, torch.autograd.grad(total.sum(), [model.params[n] for n in names])))
        stats = model.gradient_stats(grads, acts) if record_at else None
        stacked_sgd(model.params, grads, model.momentum, static["lr"], static["momentum"],
                    static["weight_decay"] if self.uses_weight_decay else None, model.weights)
        with torch.no_grad():
            self.loss_sum += loss.detach() * x.shape[1]
            self.correct += (out.argmax(2) == y).sum(1)
            static["total"].copy_(total.detach())
        if record_at:
            for k in self.training():
                self.slots[k].dynamics += model.dynamics_rows(k, *record_at, stats)

    def totals(self, batch: int) -> list[float]:
        values = self.static[batch]["total"].tolist()
        return [values[k] for k in self.training()]

    @torch.no_grad()
    def retire(self, k: int) -> None:
        """Slot k stops training (its member diverged): a placeholder from now on, holding a copy of
        a training member's finite state at learning rate 0, so the step keeps its size and no NaN is
        carried. Only tensors change, in place: a captured graph stays valid."""
        self.slots[k] = None
        if not self.members:
            return
        src = self.training()[0]
        self.model.copy_slot(k, src)
        for static in self.static.values():
            static["l1"][k] = 0
            static["weight_decay"][k] = 0
        self.lr_table[:, k] = 0
        self.momentum_table[:, k] = self.momentum_table[:, src]

    def sums(self) -> tuple[list[float], list[int]]:
        loss_sum, correct = self.loss_sum.tolist(), self.correct.tolist()
        return [loss_sum[k] for k in self.training()], [correct[k] for k in self.training()]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        loss, accuracy = self.model.evaluate(x, y)
        return [loss[k] for k in self.training()], [accuracy[k] for k in self.training()]

    def end(self) -> None:
        for k in self.training():
            self.model.write_back(k, self.slots[k])

    def lr(self, k: int) -> float:
        return self.slots[k].scheduler.get_last_lr()[0]
