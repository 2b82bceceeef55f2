"""The one epoch loop, for one member or K: batches, divergence checks, evaluation, metrics.

A step object does the work of one SGD step for all its members (`single.SingleStep`, or
`group.GroupStep` for K members as one vmapped model); the loop is the same for both. All
randomness of epoch e comes from generators seeded with (seed, e), so a run resumed after epoch
e-1 continues exactly as an uninterrupted one would (on the same machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..dynamics import recorded_steps
from ..errors import DivergedError, first_line

EVAL_BATCH = 2000
CHECK_EVERY = 20  # steps between the host syncs that look for a non-finite loss


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float  # mean NLL over the epoch's (augmented) training batches, without L1
    train_accuracy: float  # percent, on those batches in train mode
    test_loss: float  # mean NLL over the test set
    test_accuracy: float  # percent
    lr: float  # learning rate at the last step of the epoch
    seconds: float  # wall time of the epoch, training and evaluation
    images_per_second: float = 0.0  # training only; shown, not saved in metrics.csv
    val_loss: float | None = None  # on the held-out validation images, when val_split > 0
    val_accuracy: float | None = None

    def row(self) -> dict:
        """The metrics.csv row (and checkpoint history entry) of this epoch; the validation
        columns only when there is a validation set, so other rows keep their columns."""
        return {k: v for k, v in asdict(self).items()
                if k != "images_per_second" and not (k.startswith("val_") and v is None)}


Outcome = dict[int, "EpochMetrics | DivergedError"]  # member index -> its epoch


class Step(Protocol):
    """One SGD step of every training member; what `epoch_steps` drives."""

    device: torch.device

    def training(self) -> list[int]:
        """The indices of the members still training this epoch."""

    def begin(self, epoch: int) -> None:
        """Seed the epoch's generators and batch orders; zero the epoch's sums."""

    def step(self, t: int, i: int, j: int, record_at: tuple[int, int] | None) -> None:
        """Step t on the batch of positions i:j of each member's order."""

    def totals(self, batch: int) -> list[float]:
        """Each member's loss + penalty at the last step of this batch size (a host sync)."""

    def retire(self, k: int) -> None:
        """Member k stops training (it diverged)."""

    def sums(self) -> tuple[list[float], list[int]]:
        """Each member's summed training loss and correct count over the epoch so far."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """Each member's (mean NLL, accuracy %) on x, y, in eval mode."""

    def end(self) -> None:
        """The epoch's parameters back into each member's own model and optimizer."""

    def lr(self, k: int) -> float:
        """Member k's learning rate at its last step."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Slices covering n items; a last batch of one image is dropped (BN cannot normalize it)."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size) if min(i + batch_size, n) - i > 1]


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities for x, in eval mode, in large batches."""
    model.eval()
    return torch.cat([model(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean NLL loss, accuracy in percent) on the given set."""
    logp = predict(model, x)
    loss = F.nll_loss(logp, y, reduction="sum").item() / len(y)
    accuracy = 100.0 * (logp.argmax(1) == y).sum().item() / len(y)
    return loss, accuracy


def epoch_steps(step: Step, epoch: int, slices: list[tuple[int, int]], data, recording: bool
                ) -> Generator[None, None, Outcome]:
    """Epoch `epoch` of every member of `step`, yielding after each SGD step so that several
    steps can take turns (`take_turns`); returns member index -> metrics, or the divergence
    that stopped it. A member that diverges is retired and the others go on."""
    start = time.perf_counter()
    step.begin(epoch)
    outcome: Outcome = {}
    to_record = recorded_steps(epoch, len(slices)) if recording else set()
    for t, (i, j) in enumerate(slices):
        step.step(t, i, j, (epoch, t + 1) if t + 1 in to_record else None)
        yield
        if t % CHECK_EVERY == 0 or t == len(slices) - 1:  # the one host sync
            for k, value in zip(step.training(), step.totals(j - i)):
                if not math.isfinite(value):
                    outcome[k] = DivergedError(epoch, f"loss became {value} at epoch {epoch}, step {t + 1}")
                    step.retire(k)
            if not step.training():
                return outcome
    seen = sum(j - i for i, j in slices)
    train_seconds = time.perf_counter() - start
    loss_sum, correct = step.sums()
    test_loss, test_accuracy = step.evaluate(data.test_x, data.test_y)
    members = step.training()
    val_loss = val_accuracy = [None] * len(members)
    if data.val_x is not None:
        val_loss, val_accuracy = step.evaluate(data.val_x, data.val_y)
    step.end()
    for q, k in enumerate(members):
        if not math.isfinite(test_loss[q]):
            outcome[k] = DivergedError(epoch, f"test loss became {test_loss[q]} at epoch {epoch}")
            continue
        outcome[k] = EpochMetrics(
            epoch=epoch, train_loss=round(loss_sum[q] / seen, 6),
            train_accuracy=round(100.0 * correct[q] / seen, 4),
            test_loss=round(test_loss[q], 6), test_accuracy=round(test_accuracy[q], 4),
            lr=round(step.lr(k), 8), seconds=round(time.perf_counter() - start, 3),
            images_per_second=seen / train_seconds,
            val_loss=None if val_loss[q] is None else round(val_loss[q], 6),
            val_accuracy=None if val_accuracy[q] is None else round(val_accuracy[q], 4))
    return outcome


def run_to_end(steps: Generator[None, None, Outcome]) -> Outcome:
    """The outcome of one `epoch_steps` generator run to its end, alone."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def take_turns(epochs: list[tuple[Step, Generator]]) -> list[Outcome | Exception]:
    """Several epochs (`epoch_steps` generators), their steps taking turns; on CUDA each issues its
    work on a stream of its own, so steps that cannot be one (different norms) keep the GPU busy
    together instead of one after another. They are independent (own tensors, own generators),
    so the turns change no number. One that raises gives its exception as its outcome."""
    streams = [torch.cuda.Stream() if step.device.type == "cuda" else None for step, _ in epochs]
    running = {k: steps for k, (_, steps) in enumerate(epochs)}
    outcomes: list = [None] * len(epochs)
    if streams and streams[0] is not None:
        current = torch.cuda.current_stream()
        for s in streams:
            s.wait_stream(current)  # each stream starts after what came before (the set-up)
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
            except Exception as e:  # this one's failure (a bug) is its own: the others go on
                outcomes[k] = e
                del running[k]
    for s in streams:
        if s is not None:
            torch.cuda.current_stream().wait_stream(s)
    return outcomes


def overflow_divergence(error: BaseException, epoch: int) -> DivergedError | None:
    """The divergence an overflow during training is ("value cannot be converted to type float
    without overflow", a Python float too large for float32), or None for any other error."""
    if isinstance(error, OverflowError) or (isinstance(error, RuntimeError) and "overflow" in str(error)):
        return DivergedError(epoch, f"a value overflowed at epoch {epoch} ({first_line(error, 100)})")
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer reads what it ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step: Step, epoch: int, slices: list[tuple[int, int]], seconds: float,
               warmup_steps: int = 5) -> float:
    """Training images per second of `step`'s real SGD step over all its members, for `normlab bench`:
    the epoch's first batches, again and again, until `seconds` have passed after a warm-up."""
    step.begin(epoch)
    members = len(step.training())
    images, start, count = 0, None, 0
    while True:
        for t, (i, j) in enumerate(slices):
            if count == warmup_steps:
                synchronize(step.device)
                images, start = 0, time.perf_counter()
            step.step(t, i, j, None)
            images += (j - i) * members
            count += 1
            if start is not None and count % 10 == 0:
                synchronize(step.device)
                if time.perf_counter() - start >= seconds:
                    return images / (time.perf_counter() - start)
