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

from .augment import random_affine
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
        net(torch.zeros(2, 1, 28, 28))  # two images: IN on the 1x1 maps refuses one
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

    def __init__(self, slots: list[Experiment | None], graph: bool = False, contiguous: bool | None = None):
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
        params, buffers = stack_module_state([(m or first).model for m in self.slots])
        # On CUDA, contiguous_format: cuDNN's batch norm cannot query channels_last strides inside vmap
        # (params and batches both; tests/test_grouped.py pins it). On the CPU, the layout of a separate
        # run (channels_last activations), so a member rounds as its separate run does.
        self.cuda_layout = self.device.type == "cuda" if contiguous is None else contiguous
        self.buffers = {n: b.contiguous() if self.cuda_layout else b for n, b in buffers.items()}
        self.names = list(params)
        self.params = {n: (p.detach().contiguous() if self.cuda_layout else p.detach()).requires_grad_()
                       for n, p in params.items()}
        self.weights = {n for n in self.names if self.params[n].dim() >= 3}  # conv weights: L1/L2 apply
        path = {id(module): name for name, module in first.model.named_modules()}
        self.blocks = {f"{path[id(block)]}.conv.weight": layer for layer, block in first.model.blocks()}
        self.momentum = self._stacked_momentum()
        # which terms the step has: decided once per group, so a captured graph has no host branch
        self.uses_l1 = any(m.cfg.l1 for m in members)
        self.uses_weight_decay = any(m.cfg.l2 for m in members)
        self.graph = graph and self.device.type == "cuda"  # capture the step as a CUDA graph (normlab.graphs)
        self._graphs: dict[int, object] = {}  # batch size -> captured graph
        self._static: dict[int, dict] = {}  # batch size -> the step's static input and output tensors
        # one generator object per slot, and the epoch's sums, for the group's life: a graph holds them
        self.gens = [torch.Generator(device=self.device) for _ in self.slots]
        self.drops = [torch.Generator(device=self.device) for _ in self.slots]
        self.loss_sum = torch.zeros(len(self.slots), device=self.device)
        self.correct = torch.zeros(len(self.slots), dtype=torch.long, device=self.device)

    @property
    def members(self) -> list[Experiment]:
        """The experiments that train, in slot order."""
        return [m for m in self.slots if m is not None]

    @property
    def real(self) -> list[int]:
        return [k for k, m in enumerate(self.slots) if m is not None]

    def _stacked_momentum(self) -> dict[str, torch.Tensor]:
        """Each parameter's momentum buffers, stacked; zeros before the first step, where SGD's
        `buf = grad` equals `buf = momentum * 0 + grad` to the bit."""
        out, first = {}, self.members[0]
        for n in self.names:
            bufs = [(m or first).optimizer.state.get(dict((m or first).model.named_parameters())[n], {})
                    .get("momentum_buffer") for m in self.slots]
            out[n] = (torch.stack(bufs).contiguous() if all(b is not None for b in bufs)
                      else torch.zeros_like(self.params[n].detach()))
        return out

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
    def retire(self, k: int, plan: dict | None = None) -> None:
        """Slot k stops training (its member diverged): a placeholder from now on, holding a copy of
        a training member's finite state at learning rate 0, so the step keeps its size and no NaN is
        carried. Only tensors change, in place: a captured graph stays valid."""
        self.slots[k] = None
        if not self.members:
            return
        src = self.real[0]
        for n in self.names:
            self.params[n][k] = self.params[n][src]
            self.momentum[n][k] = self.momentum[n][src]
        for b in self.buffers.values():
            b[k] = b[src]
        for static in self._static.values():
            static["l1"][k] = 0
            static["weight_decay"][k] = 0
        if plan is not None:
            plan["lr"][:, k] = 0
            plan["momentum"][:, k] = plan["momentum"][:, src]

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
                        # in the parameter's own memory layout, as SGD would have made it
                        m.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(self.momentum[n][k])
                for n, b in m.model.named_buffers():
                    b.copy_(self.buffers[n][k])

    def run(self) -> dict[str, EpochMetrics | DivergedError]:
        """Train and evaluate one epoch of every member and save each; name -> metrics or divergence."""
        outcome = run_together([self])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_steps(self):
        """`run` as a generator that yields after every step and returns the outcome, so several
        groups can take turns (`run_together`): on one GPU, each on its own stream."""
        first = self.members[0]
        epoch = first.epoch + 1
        start = time.perf_counter()
        plan = self.epoch_plan(epoch)
        to_record = recorded_steps(epoch, len(first.slices)) if first.recorder else set()
        outcome: dict[str, EpochMetrics | DivergedError] = {}
        for step, (i, j) in enumerate(first.slices):
            self.step(plan, step, i, j, record_at=(epoch, step + 1) if step + 1 in to_record else None)
            yield
            if step % 20 == 0 or step == len(first.slices) - 1:  # the one host sync: every 20 steps
                values = plan["total"][j - i].tolist()
                for k in self.real:
                    if not math.isfinite(values[k]):
                        m = self.slots[k]
                        outcome[m.cfg.dirname] = DivergedError(epoch, f"loss became {values[k]} at epoch {epoch}, "
                                                                      f"step {step + 1}")
                        m.diverged(outcome[m.cfg.dirname])
                        self.retire(k, plan)
                if not self.members:
                    return outcome
        seen = plan["seen"]
        train_seconds = time.perf_counter() - start
        loss_sum, correct = plan["loss_sum"].tolist(), plan["correct"].tolist()
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
                epoch=epoch, train_loss=round(loss_sum[k] / seen, 6),
                train_accuracy=round(100.0 * correct[k] / seen, 4),
                test_loss=round(test_loss[k], 6), test_accuracy=round(test_accuracy[k], 4),
                lr=round(m.scheduler.get_last_lr()[0], 8), seconds=round(time.perf_counter() - start, 3),
                images_per_second=seen / train_seconds,
                val_loss=None if val_loss[k] is None else round(val_loss[k], 6),
                val_accuracy=None if val_accuracy[k] is None else round(val_accuracy[k], 4))
            m.land(metrics, members=len(self.real))
            outcome[m.cfg.dirname] = metrics
        return outcome

    def _per_slot(self, value, placeholder) -> list:
        """`value(member)` for each training slot, `placeholder` for the others."""
        return [value(m) if m is not None else placeholder for m in self.slots]

    def epoch_plan(self, epoch: int, steps: int | None = None) -> dict:
        """Everything an epoch's steps read, made before the first one: each member's batch order
        and generators (seeded as its separate run seeds them), and its one-cycle LR and momentum at
        every step, stepped out of its own scheduler — so the steps need no host work but copies."""
        first = self.members[0]
        steps = len(first.slices) if steps is None else steps
        dev, dtype = self.device, next(iter(self.params.values())).dtype
        self.loss_sum.zero_()
        self.correct.zero_()
        orders = []
        for k, m in enumerate(self.slots):
            seed = epoch_seed(m.cfg.seed, epoch) if m is not None else 0
            self.gens[k].manual_seed(seed)
            self.drops[k].manual_seed(seed)
            orders.append(torch.randperm(len(first.data.train_y), generator=self.gens[k], device=dev)
                          if m is not None else None)
        orders = [o if o is not None else orders[self.real[0]] for o in orders]  # a placeholder: a copy
        lr = torch.zeros(steps, len(self.slots), dtype=dtype)
        momentum = torch.zeros(steps, len(self.slots), dtype=dtype)
        for k, m in enumerate(self.slots):
            for t in range(steps):  # OneCycleLR's own values: the scheduler is stepped, as each step would
                group = (m or first).optimizer.param_groups[0]
                lr[t, k], momentum[t, k] = (group["lr"] if m is not None else 0.0), group["momentum"]
                if m is not None:
                    with warnings.catch_warnings():  # the members' optimizers never step themselves
                        warnings.simplefilter("ignore", UserWarning)
                        m.scheduler.step()
            if m is None:  # a placeholder follows the first member's momentum, at learning rate 0
                momentum[:, k] = momentum[:, self.real[0]]
        return {"epoch": epoch, "order": torch.stack(orders), "gens": self.gens, "drops": self.drops,
                "lr": lr.to(dev), "momentum": momentum.to(dev), "seen": 0,
                "loss_sum": self.loss_sum, "correct": self.correct}

    def step(self, plan: dict, step: int, i: int, j: int, record_at: tuple[int, int] | None = None) -> None:
        """One SGD step of every slot on its batch i:j: replayed as a CUDA graph when one is
        captured, else run; a recorded step (dynamics) always runs, to read its statistics."""
        batch = j - i
        static = self._static_for(batch, plan)
        static["index"].copy_(plan["order"][:, i:j])
        static["lr"].copy_(plan["lr"][step])
        static["momentum"].copy_(plan["momentum"][step])
        if record_at is None and self.graph:
            from .graphs import replay_or_capture

            replay_or_capture(self, batch, plan)
        else:
            self._step_tensors(static, plan, record_at)
        plan["seen"] += batch

    def _static_for(self, batch: int, plan: dict) -> dict:
        """The step's input and output tensors for this batch size, made once: a captured graph
        reads and writes these very tensors."""
        if batch not in self._static:
            k, dev, dtype = len(self.slots), self.device, next(iter(self.params.values())).dtype
            self._static[batch] = {
                "index": torch.zeros(k, batch, dtype=torch.long, device=dev),
                "lr": torch.zeros(k, dtype=dtype, device=dev), "momentum": torch.zeros(k, dtype=dtype, device=dev),
                "l1": torch.tensor(self._per_slot(lambda m: m.cfg.l1, 0.0), dtype=dtype, device=dev),
                "weight_decay": torch.tensor(self._per_slot(
                    lambda m: m.optimizer.param_groups[0]["weight_decay"], 0.0), dtype=dtype, device=dev),
                "total": torch.zeros(k, dtype=dtype, device=dev)}
        plan.setdefault("total", {})[batch] = self._static[batch]["total"]
        return self._static[batch]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """The batch (K, B, C, H, W) in the memory layout of the step: contiguous on CUDA (what cuDNN's
        batch norm needs inside vmap), each member's slice channels_last on the CPU (as a separate run)."""
        if self.cuda_layout:
            return x.contiguous()
        return torch.stack([xk.contiguous(memory_format=torch.channels_last) for xk in x])

    def _step_tensors(self, static: dict, plan: dict, record_at: tuple[int, int] | None = None) -> None:
        """The step itself, on device tensors only (what a CUDA graph captures): gather and augment
        every member's batch with its own generator, its dropout masks from its own, forward, NLL +
        L1, backward, and torch.optim.SGD's update with each member's LR, momentum and weight decay."""
        first = self.members[0]
        data, index = first.data, static["index"]
        x, y = data.train_x[index], data.train_y[index]  # (K, B, 1, 28, 28), (K, B)
        if first.cfg.augment:
            x = torch.stack([random_affine(x[k], plan["gens"][k], first.augment) for k in range(len(self.slots))])
        x = self._layout(x)
        dtype = next(iter(self.params.values())).dtype  # the model's dtype: the network converts its input to it
        masks = self._masks(x.shape[1], plan["drops"], dtype) if self.dropouts else None
        out, acts = self._forward(x, train=True, record=record_at is not None, masks=masks)
        loss = vmap(F.nll_loss)(out, y)
        total = loss
        if self.uses_l1:
            penalty = sum(self.params[n].abs().flatten(1).sum(1) for n in self.weights)
            total = loss + static["l1"] * penalty
        grads = torch.autograd.grad(total.sum(), [self.params[n] for n in self.names])
        stats = self._gradient_stats(grads, acts) if record_at else None
        self._sgd_step(dict(zip(self.names, grads)), static)
        with torch.no_grad():
            plan["loss_sum"] += loss.detach() * x.shape[1]
            plan["correct"] += (out.argmax(2) == y).sum(1)
            static["total"].copy_(total.detach())
        if record_at:
            self._record(*record_at, stats)

    def throughput(self, seconds: float, warmup_steps: int = 5) -> float:
        """Training images per second of the whole group's real step, for `normlab bench`."""
        first = self.members[0]
        plan = self.epoch_plan(first.epoch + 1)
        images, start, step = 0, None, 0
        while True:
            for t, (i, j) in enumerate(first.slices):
                if step == warmup_steps:
                    first._sync()
                    images, start = 0, time.perf_counter()
                self.step(plan, t, i, j)
                images += (j - i) * len(self.members)
                step += 1
                if start is not None and step % 10 == 0:
                    first._sync()
                    if time.perf_counter() - start >= seconds:
                        return images / (time.perf_counter() - start)

    @torch.no_grad()
    def _sgd_step(self, grads: dict[str, torch.Tensor], static: dict) -> None:
        """torch.optim.SGD's update (no dampening, no Nesterov) with each slot's LR, momentum and
        weight decay: g += wd * p; buf = momentum * buf + g; p -= lr * buf. At momentum 0 (the
        schedule's low point when momentum is 0.05) SGD leaves the buffer alone and steps along g:
        so does this, slot by slot, without a branch on the host. A placeholder steps at LR 0."""
        still = static["momentum"] == 0
        for n in self.names:
            p, g = self.params[n], grads[n]
            shape = (-1, *([1] * (p.dim() - 1)))
            if n in self.weights and self.uses_weight_decay:
                g = g.add(p * static["weight_decay"].view(shape))
            moved = self.momentum[n] * static["momentum"].view(shape) + g
            keep = still.view(shape)
            self.momentum[n].copy_(torch.where(keep, self.momentum[n], moved))
            p.sub_(static["lr"].view(shape) * torch.where(keep, g, moved))

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


def run_together(groups: list[GroupedEpoch]) -> list[dict[str, EpochMetrics | DivergedError] | Exception]:
    """One epoch of each group, their steps taking turns; on CUDA each group issues its work on a
    stream of its own, so groups that cannot share a step (different norms) keep the GPU busy
    together instead of one after another. Groups are independent (own tensors, own generators),
    so the turns change no number. A group that raises gives its exception as its outcome."""
    streams = [torch.cuda.Stream() if g.device.type == "cuda" else None for g in groups]
    running = {k: g.run_steps() for k, g in enumerate(groups)}
    outcomes: list = [None] * len(groups)
    if streams and streams[0] is not None:
        current = torch.cuda.current_stream()
        for s in streams:
            s.wait_stream(current)  # each stream starts after what came before (the groups' set-up)
    while running:
        for k in list(running):
            try:
                if streams[k] is not None:
                    with torch.cuda.stream(streams[k]):
                        next(running[k])
                else:
                    next(running[k])
            except StopIteration as done:
                outcomes[k] = done.value
                del running[k]
            except Exception as e:  # this group's failure (a bug) is its own: the others go on
                outcomes[k] = e
                del running[k]
    for s in streams:
        if s is not None:
            torch.cuda.current_stream().wait_stream(s)
    return outcomes
