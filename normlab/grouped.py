"""Many experiments trained as one vmapped model: the grouped executor.

Experiments that can share a step — the same network, data, augmentation, batch size and number
of epochs; they may differ in seed, LR, momentum, L1 and L2 — train one epoch together as one
model whose parameters are stacked along a new first axis (`torch.func.stack_module_state`) and
run with `torch.func.vmap` over `functional_call`: one kernel launch per layer for the whole group
instead of one per experiment, which is what a launch-bound GPU needs.

Each member stays an ordinary `Experiment`: its own seed's fresh init, batch order and
augmentation (its own generators, as in a separate run), its own optimizer and one-cycle schedule
(stepped every step; their LR and momentum drive the stacked update, torch.optim.SGD's formula),
its own dynamics rows and its own files, written by `Experiment.save` — so resume, reports and
divergence see nothing different. Each member's dropout masks are drawn outside vmap from its
own generator, seeded as its separate run seeds its dropout, so on the CPU a member follows its
separate run to float rounding with dropout on too (tests) — and nothing a member draws depends on
the group it trains in: a group split by an interrupt, or a member left out as damaged, changes
no other member's numbers. A member that diverges is recorded as diverged (its last good epoch
kept) and leaves the group; the rest go on.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .config import step_key
from .dynamics import install_activation_hooks, recorded_steps, step_rows
from .errors import DivergedError
from .model import Dropout, Net, dropout_mask
from .train import EVAL_BATCH, EpochMetrics, Experiment, epoch_seed


class _Stats:
    """Forward hooks on the template's norms and ReLUs that collect activation statistics
    inside the vmapped call; the call returns them stacked, one row per member."""

    def __init__(self, template: torch.nn.Module):
        self.layers = [name for name, _ in template.blocks()]
        self.keys: list[tuple[str, str]] = []
        self.values: list[torch.Tensor] = []
        self.active = False
        install_activation_hooks(template, self._add, lambda: self.active)

    def _add(self, layer: str, stat: str, value: torch.Tensor) -> None:
        self.keys.append((layer, stat))
        self.values.append(value)

    def take(self) -> torch.Tensor:
        out = torch.stack(self.values) if self.values else torch.zeros(0)
        self.values = []
        return out


def _dropout_input_shapes(net_config) -> list[tuple[int, ...]]:
    """(C, H, W) of the input of every active dropout layer, in forward order."""
    net = Net.from_config(net_config).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[1:])))
             for m in net.modules() if isinstance(m, Dropout) and m.p > 0]
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return shapes


class GroupedEpoch:
    """One epoch of several Experiments at the same epoch, as one vmapped model.

    `slots` is the group's fixed line-up: an Experiment that trains this epoch, or None for a
    member that does not (ahead after an interrupt, damaged, diverged, finished). A None slot
    becomes an inert placeholder — a copy of a real member's state at learning rate 0, whose
    results are dropped — so the vmapped step always has the same size: on the CPU a group of one
    rounds differently from a larger one, and a member's numbers must not depend on its siblings.
    """

    def __init__(self, slots: list[Experiment | None]):
        members = [m for m in slots if m is not None]
        if not members:
            raise ValueError("a group needs at least one member that trains.")
        if len({step_key(m.cfg) for m in members}) != 1 or len({m.epoch for m in members}) != 1:
            raise ValueError("members of a group must share every setting but seed, lr, momentum, l1 and l2, "
                             "and be at the same epoch.")
        self.slots = list(slots)
        first = members[0]
        self.device = first.device
        self.template = Net.from_config(first.net_config).to("meta")  # no hooks of a member's recorder
        self.template.check_range = False  # a host-side check cannot run inside vmap; test data is in range
        self.dropouts = [m for m in self.template.modules() if isinstance(m, Dropout) and m.p > 0]
        self.mask_shapes = _dropout_input_shapes(first.net_config)
        self.stats = _Stats(self.template)
        params, self.buffers = stack_module_state([(m or first).model for m in self.slots])
        self.names = list(params)
        self.params = {n: p.detach().requires_grad_() for n, p in params.items()}
        self.weights = {n for n in self.names if self.params[n].dim() >= 3}  # conv weights: L1/L2 apply
        path = {id(module): name for name, module in first.model.named_modules()}
        self.blocks = {f"{path[id(block)]}.conv.weight": layer for layer, block in first.model.blocks()}
        self.momentum = self._stacked_momentum()

    @property
    def members(self) -> list[Experiment]:
        """The experiments that train, in slot order."""
        return [m for m in self.slots if m is not None]

    @property
    def real(self) -> list[int]:
        return [k for k, m in enumerate(self.slots) if m is not None]

    def _stacked_momentum(self) -> dict[str, torch.Tensor | None]:
        out, first = {}, self.members[0]
        for n in self.names:
            bufs = [(m or first).optimizer.state.get(dict((m or first).model.named_parameters())[n], {})
                    .get("momentum_buffer") for m in self.slots]
            out[n] = torch.stack(bufs).clone() if all(b is not None for b in bufs) else None
        return out

    def _column(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))

    def _masks(self, batch: int, generators: list[torch.Generator], dtype: torch.dtype) -> list[torch.Tensor]:
        """Each dropout layer's masks for this step, stacked over slots; slot k draws all of its
        layers' masks in forward order from its own generator, as its separate run draws them."""
        per_slot = [[dropout_mask((batch, *shape), layer.p, dtype, self.device, g)
                     for layer, shape in zip(self.dropouts, self.mask_shapes)] for g in generators]
        return [torch.stack([masks[i] for masks in per_slot]) for i in range(len(self.dropouts))]

    def _forward(self, x: torch.Tensor, train: bool, record: bool = False, shared_input: bool = False,
                 masks: list[torch.Tensor] | None = None):
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
    def retire(self, k: int) -> None:
        """Slot k stops training (its member diverged): a placeholder from now on, holding a copy of
        a training member's finite state, so the step keeps its size and no NaN is carried."""
        self.slots[k] = None
        if not self.members:
            return
        src = self.real[0]
        for n in self.names:
            self.params[n][k] = self.params[n][src]
            if self.momentum[n] is not None:
                self.momentum[n][k] = self.momentum[n][src]
        for b in self.buffers.values():
            b[k] = b[src]

    def write_back(self) -> None:
        """Each member's model and momentum buffers from the stacked state."""
        for k in self.real:
            m = self.slots[k]
            name_of = {id(p): n for n, p in m.model.named_parameters()}
            with torch.no_grad():
                for group in m.optimizer.param_groups:  # the optimizer's own order, as its step would fill it
                    for p in group["params"]:
                        n = name_of[id(p)]
                        p.copy_(self.params[n][k])
                        if self.momentum[n] is not None:
                            m.optimizer.state[p]["momentum_buffer"] = self.momentum[n][k].clone()
                for n, b in m.model.named_buffers():
                    b.copy_(self.buffers[n][k])

    def run(self) -> dict[str, EpochMetrics | DivergedError]:
        """Train and evaluate one epoch of every member and save each; name -> metrics or divergence."""
        first = self.members[0]
        epoch = first.epoch + 1
        start = time.perf_counter()
        gens: dict[int, torch.Generator] = {}
        perms: dict[int, torch.Tensor] = {}
        drops: list[torch.Generator] = []
        for k, m in enumerate(self.slots):
            seed = epoch_seed(m.cfg.seed, epoch) if m is not None else 0
            if m is not None:
                gens[k] = torch.Generator(device=self.device).manual_seed(seed)
                perms[k] = torch.randperm(len(m.data.train_y), generator=gens[k], device=self.device)
            # each member's dropout masks from its own generator, seeded as its separate run seeds them
            drops.append(torch.Generator(device=self.device).manual_seed(seed))
        to_record = recorded_steps(epoch, len(first.slices)) if first.recorder else set()
        loss_sum = torch.zeros(len(self.slots), device=self.device)
        correct = torch.zeros(len(self.slots), dtype=torch.long, device=self.device)
        outcome: dict[str, EpochMetrics | DivergedError] = {}
        seen = 0
        for step, (i, j) in enumerate(first.slices):
            batches = {k: self.slots[k].batch(perms[k][i:j], gens[k]) for k in self.real}
            fill = batches[self.real[0]]  # a placeholder trains on a copy of a member's batch
            x = torch.stack([batches.get(k, fill)[0] for k in range(len(self.slots))])
            y = torch.stack([batches.get(k, fill)[1] for k in range(len(self.slots))])
            out, loss, total = self.train_step(x, y, (epoch, step + 1) if step + 1 in to_record else None, drops)
            loss_sum += loss.detach() * (j - i)
            correct += (out.argmax(2) == y).sum(1)
            seen += j - i
            if step % 20 == 0 or step == len(first.slices) - 1:
                values = total.detach().tolist()
                for k in self.real:
                    if not math.isfinite(values[k]):
                        m = self.slots[k]
                        outcome[m.cfg.dirname] = DivergedError(epoch, f"loss became {values[k]} at epoch {epoch}, "
                                                                      f"step {step + 1}")
                        m.diverged(outcome[m.cfg.dirname])
                        self.retire(k)
                if not self.members:
                    return outcome
        train_seconds = time.perf_counter() - start
        test_loss, test_accuracy = self._evaluate(first.data.test_x, first.data.test_y)
        val_loss = val_accuracy = [None] * len(self.slots)
        if first.data.val_x is not None:
            val_loss, val_accuracy = self._evaluate(first.data.val_x, first.data.val_y)
        self.write_back()
        for k in self.real:
            m = self.slots[k]
            if not math.isfinite(test_loss[k]):
                outcome[m.cfg.dirname] = DivergedError(epoch, f"test loss became {test_loss[k]} at epoch {epoch}")
                m.diverged(outcome[m.cfg.dirname])
                continue
            metrics = EpochMetrics(
                epoch=epoch, train_loss=round(loss_sum[k].item() / seen, 6),
                train_accuracy=round(100.0 * correct[k].item() / seen, 4),
                test_loss=round(test_loss[k], 6), test_accuracy=round(test_accuracy[k], 4),
                lr=round(m.scheduler.get_last_lr()[0], 8), seconds=round(time.perf_counter() - start, 3),
                images_per_second=seen / train_seconds,
                val_loss=None if val_loss[k] is None else round(val_loss[k], 6),
                val_accuracy=None if val_accuracy[k] is None else round(val_accuracy[k], 4))
            m.epoch = epoch
            m.history.append(metrics.row())
            m.save()
            outcome[m.cfg.dirname] = metrics
        return outcome

    def _per_slot(self, value, placeholder) -> list:
        """`value(member)` for each training slot, `placeholder` for the others."""
        return [value(m) if m is not None else placeholder for m in self.slots]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, record_at: tuple[int, int] | None = None,
                   dropout_generators: list[torch.Generator] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step of every slot on its batch x[k], y[k]: (log-probabilities, NLL loss, loss +
        L1 term), each stacked over slots; with `record_at` = (epoch, step), its dynamics rows."""
        if self.dropouts and dropout_generators is None:
            dropout_generators = [torch.Generator(device=self.device).manual_seed(k) for k in range(len(self.slots))]
        dtype = next(iter(self.params.values())).dtype  # the model's dtype: the network converts its input to it
        masks = self._masks(x.shape[1], dropout_generators, dtype) if self.dropouts else None
        out, acts = self._forward(x, train=True, record=record_at is not None, masks=masks)
        loss = vmap(F.nll_loss)(out, y)
        total = loss
        l1 = self._per_slot(lambda m: m.cfg.l1, 0.0)
        if any(l1):
            penalty = sum(self.params[n].abs().flatten(1).sum(1) for n in self.weights)
            total = loss + torch.tensor(l1, device=self.device) * penalty
        grads = torch.autograd.grad(total.sum(), [self.params[n] for n in self.names])
        stats = self._gradient_stats(grads, acts) if record_at else None
        self._sgd_step(dict(zip(self.names, grads)))
        for m in self.members:
            with warnings.catch_warnings():  # the members' optimizers never step themselves
                warnings.simplefilter("ignore", UserWarning)
                m.scheduler.step()
        if record_at:
            self._record(*record_at, stats)
        return out, loss, total

    def throughput(self, seconds: float, warmup_steps: int = 5) -> float:
        """Training images per second of the whole group's real step, for `normlab bench`."""
        members = self.members
        gens = [torch.Generator(device=self.device).manual_seed(k) for k in range(len(members))]
        perms = [torch.randperm(len(m.data.train_y), generator=g, device=self.device)
                 for m, g in zip(members, gens)]
        images, start, step = 0, None, 0
        while True:
            for i, j in members[0].slices:
                if step == warmup_steps:
                    members[0]._sync()
                    images, start = 0, time.perf_counter()
                batches = [m.batch(p[i:j], g) for m, p, g in zip(members, perms, gens)]
                self.train_step(torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches]))
                images += (j - i) * len(members)
                step += 1
                if start is not None and step % 10 == 0:
                    members[0]._sync()
                    if time.perf_counter() - start >= seconds:
                        return images / (time.perf_counter() - start)

    @torch.no_grad()
    def _sgd_step(self, grads: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD's update (no dampening, no Nesterov) with each member's LR, momentum and
        weight decay: g += wd * p; buf = g on the first step, else momentum * buf + g; p -= lr * buf.
        At momentum 0 (the schedule's low point when momentum is 0.05) SGD leaves the buffer alone
        and steps along g: so does this, member by member. A placeholder steps at LR 0 with a
        training member's momentum, so it takes the same code path and never moves."""
        first = self.members[0].optimizer.param_groups
        groups = self._per_slot(lambda m: m.optimizer.param_groups, None)
        for n in self.names:
            p, g = self.params[n], grads[n]
            group = 0 if n in self.weights else 1
            wd = [gr[group]["weight_decay"] if gr else 0.0 for gr in groups]
            if any(wd):
                g = g.add(p * self._column(wd, p))
            momentum = [(gr or first)[group]["momentum"] for gr in groups]
            if self.momentum[n] is None:
                self.momentum[n] = g.clone()
                direction = self.momentum[n]
            elif all(momentum):
                direction = self.momentum[n].mul_(self._column(momentum, p)).add_(g)
            else:
                still = self._column([float(m == 0) for m in momentum], p).bool()
                self.momentum[n] = torch.where(still, self.momentum[n], self.momentum[n] * self._column(momentum, p) + g)
                direction = torch.where(still, g, self.momentum[n])
            p.sub_(self._column([gr[group]["lr"] if gr else 0.0 for gr in groups], p) * direction)

    def _gradient_stats(self, grads, acts: torch.Tensor) -> dict:
        grad = dict(zip(self.names, grads))
        return {"acts": acts, "keys": list(self.stats.keys),
                "grad": {layer: grad[n].flatten(1).norm(dim=1) for n, layer in self.blocks.items()},
                "weight": {layer: self.params[n].detach().flatten(1).norm(dim=1) for n, layer in self.blocks.items()},
                "before": {n: self.params[n].detach().clone() for n in self.blocks}}

    def _record(self, epoch: int, step: int, s: dict) -> None:
        for k in self.real:
            m = self.slots[k]
            stats = {key: s["acts"][k, q] for q, key in enumerate(s["keys"])}
            for n, layer in self.blocks.items():
                stats[layer, "grad_norm"] = s["grad"][layer][k]
                stats[layer, "weight_norm"] = s["weight"][layer][k]
                before = s["before"][n][k]
                stats[layer, "update_ratio"] = (self.params[n][k].detach() - before).norm() / before.norm()
            m.dynamics += step_rows(epoch, step, self.stats.layers, stats)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """(mean NLL, accuracy %) of every slot on the test set, in eval mode."""
        logp = torch.cat([self._forward(x[i:i + EVAL_BATCH], train=False, shared_input=True)[0]
                          for i in range(0, len(x), EVAL_BATCH)], dim=1)
        loss = vmap(lambda lp: F.nll_loss(lp, y, reduction="sum"))(logp) / len(y)
        accuracy = 100.0 * (logp.argmax(2) == y).sum(1) / len(y)
        return loss.tolist(), accuracy.tolist()
