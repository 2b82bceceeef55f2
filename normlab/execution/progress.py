"""What a study shows while it runs: a bar on a terminal, one line per epoch, notes on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

from .task import EpochResult, Pending, Status


def epoch_line(name: str, m: dict, epochs: int) -> str:
    return (f"{name:<22} epoch {m['epoch']:>3}/{epochs:<3} train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:6.2f}%  test loss {m['test_loss']:.4f} "
            f"acc {m['test_accuracy']:6.2f}%  {m['images_per_second']:7,.0f} img/s  {m['seconds']:6.1f}s")


class Progress:
    """The display of every executor's results; it holds no scheduling state.

    quiet: no bar and no epoch lines (each line is passed to `on_epoch` instead, if given); notes,
    failures and the final table still show. Bars appear only on a terminal, so piped output is a
    clean log.
    """

    def __init__(self, quiet: bool = False, on_epoch: Callable[[str], None] | None = None):
        self.quiet, self.on_epoch = quiet, on_epoch
        self.bar: tqdm | None = None

    def start(self, label: str, pending: dict[str, Pending]) -> None:
        self.close()
        self.bar = tqdm(total=sum(p.config.epochs - p.done for p in pending.values()), unit="epoch", desc=label,
                        disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def echo(self, line: str) -> None:
        if not self.quiet:
            tqdm.write(line)
        elif self.on_epoch:
            self.on_epoch(line)

    def note(self, line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def show(self, result: EpochResult, item: Pending) -> None:
        """One task's result, `item` being its experiment after the result was taken."""
        if result.metrics is not None:
            if self.bar is not None:
                self.bar.update(1)
            self.echo(epoch_line(result.name, result.metrics, item.config.epochs))
        if result.finished and result.status is not Status.DONE:
            if self.bar is not None:
                self.bar.total -= item.config.epochs - item.done  # epochs that will never run
            self.note(f"{result.name}: {result.status.value}: {result.message}")
            if result.traceback:
                self.note(result.traceback)
