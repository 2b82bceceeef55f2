"""The step of one member: torch's SGD and OneCycleLR on the member's own model."""

from __future__ import annotations

import torch

from .loop import epoch_seed, evaluate
from .state import TrainState


class SingleStep:
    """`loop.Step` for one `TrainState`: the step a separate run takes."""

    def __init__(self, state: TrainState):
        self.state, self.device = state, state.device
        self.alive = True

    def training(self) -> list[int]:
        return [0] if self.alive else []

    def begin(self, epoch: int) -> None:
        seed = epoch_seed(self.state.cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout masks
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.state.model.train()
        self.order = torch.randperm(len(self.state.data.train_y), generator=self.gen, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)

    def step(self, t: int, i: int, j: int, record_at: tuple[int, int] | None) -> None:
        x, y = self.state.batch(self.order[i:j], self.gen)
        out, loss, self.total = self.state.train_step(x, y, record_at)
        self.loss_sum += loss.detach() * (j - i)
        self.correct += (out.argmax(1) == y).sum()

    def totals(self, batch: int) -> list[float]:
        return [self.total.item()]

    def retire(self, k: int) -> None:
        self.alive = False

    def sums(self) -> tuple[list[float], list[int]]:
        return [self.loss_sum.item()], [self.correct.item()]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        loss, accuracy = evaluate(self.state.model, x, y)
        return [loss], [accuracy]

    def end(self) -> None:
        """Nothing to copy back: the member's own model and optimizer took the steps."""

    def lr(self, k: int) -> float:
        return self.state.scheduler.get_last_lr()[0]
