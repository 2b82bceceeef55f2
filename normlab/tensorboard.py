"""`--tensorboard`: each experiment's metrics and dynamics as TensorBoard scalars, its layers as histograms.

Written by the study's own process as each epoch lands, from that experiment's result files
(metrics.csv, dynamics.csv, model.pt): it shows exactly what the files say, works alike with the
worker pool, one worker or Ray, and costs the training nothing. Events go to
<study>/tensorboard/<experiment>/; view them with `tensorboard --logdir <study>/tensorboard`.
TensorBoard is an optional extra: `pip install 'normlab[tensorboard]'`.

Steps are training steps: an epoch's metrics at its last step, a dynamics row at its own step
(steps per epoch from the checkpoint's schedule). The first time an experiment is seen, every epoch
on disk is written (events an earlier run left past that point are purged), so a resumed study's
log has no gap. Histograms, per block (`block1` ...): the conv weight and the norm's parameters as
the checkpoint holds them. An export that fails says so once and stops; training goes on.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .errors import NormlabError, notice
from .model import Net
from .results import CHECKPOINT, DYNAMICS, METRIC_COLUMNS, METRICS, read_dynamics, read_metrics

DIRNAME = "tensorboard"


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NormlabError("--tensorboard needs the tensorboard package; install it with "
                           "pip install 'normlab[tensorboard]', or run without --tensorboard.") from None
    return SummaryWriter


def _refuse_link(path: Path) -> None:
    """A TensorBoard folder must be a folder (or absent): never a link leading writes outside the study."""
    from .fileio import kind_of

    kind = kind_of(path)
    if kind not in (None, "directory"):
        raise NormlabError(f"{path} is a {kind}, not a folder normlab made; move it away (normlab never writes "
                           "through a link), then run again with --tensorboard.")


class TensorBoardExport:
    """One SummaryWriter per experiment of a study directory, fed epoch by epoch."""

    def __init__(self, study_dir: Path):
        self.root = Path(study_dir) / DIRNAME
        self._writer_class = _summary_writer()  # fail before training, not after the first epoch
        _refuse_link(self.root)
        self.writers: dict = {}
        self.failed = False

    def epoch(self, name: str, epoch: int) -> None:
        """Write what `epoch` of experiment `name` left in its files (on first sight, every epoch up to it)."""
        if self.failed:
            return
        try:
            self._export(name, epoch)
        except Exception as e:  # the study matters more than its TensorBoard copy
            self.failed = True
            notice(f"--tensorboard stopped at {name}, epoch {epoch} ({type(e).__name__}: {e}); the study goes "
                   "on, its result files are complete.")

    def catch_up(self, names: list[str]) -> None:
        """Write every experiment of `names` this export has not seen but whose files hold epochs (one
        finished before this command, or one whose last result was cut off by an interrupt)."""
        for name in names:
            if self.failed or name in self.writers or not (self.root.parent / name / CHECKPOINT).is_file():
                continue
            try:
                state = load_checkpoint(self.root.parent / name / CHECKPOINT)
            except NormlabError:
                continue  # a damaged checkpoint is the study's to report, not the export's
            last = max([state["epoch"]] + [r["epoch"] for r in state.get("dynamics") or []])
            if last:
                self.epoch(name, last)

    def _export(self, name: str, epoch: int) -> None:
        exp_dir = self.root.parent / name
        state = load_checkpoint(exp_dir / CHECKPOINT)
        steps = max(1, int(state["scheduler"].get("total_steps", 0)) // max(1, state["experiment"]["epochs"]))
        first = name not in self.writers
        if first:
            _refuse_link(self.root)
            _refuse_link(self.root / name)
            self.writers[name] = self._writer_class(log_dir=str(self.root / name), purge_step=1)
        writer = self.writers[name]
        epochs = range(1, epoch + 1) if first else [epoch]
        dynamics = read_dynamics(exp_dir / DYNAMICS)
        rows = read_metrics(exp_dir / METRICS)
        for e in epochs:
            for r in dynamics:
                if r["epoch"] == e:
                    writer.add_scalar(f"{r['statistic']}/{r['layer']}", r["value"], (e - 1) * steps + r["step"])
            if len(rows) >= e:
                for key in METRIC_COLUMNS[1:]:
                    writer.add_scalar(f"metrics/{key}", rows[e - 1][key], e * steps)
        if len(rows) >= epoch:
            model = Net.from_config(state["net_config"])
            model.load_state_dict(state["model"])
            for layer, block in model.blocks():
                for param, value in block.named_parameters():
                    writer.add_histogram(f"{layer}/{param}", value.detach(), epoch * steps)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
