"""`--tensorboard`: each experiment's metrics and dynamics as TensorBoard scalars, its layers as histograms.

Written by the study's own process as each epoch lands, from that experiment's result files
(metrics.csv, dynamics.csv, model.pt): it shows exactly what the files say, works alike with the
worker pool, one worker or Ray, and costs the training nothing. Events go to
<study>/tensorboard/<experiment>/; view them with `tensorboard --logdir <study>/tensorboard`.
TensorBoard is an optional extra: `pip install 'normlab[tensorboard]'`.

Steps are training steps: an epoch's metrics at its last step, a dynamics row at its own step.
Histograms, per block (`block1` ...): the conv weight and the norm's parameters after the epoch.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .errors import NormlabError
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


class TensorBoardExport:
    """One SummaryWriter per experiment of a study directory, fed epoch by epoch."""

    def __init__(self, study_dir: Path):
        self.root = Path(study_dir) / DIRNAME
        self._writer_class = _summary_writer()  # fail before training, not after the first epoch
        self.writers: dict = {}
        self.steps_per_epoch: dict[str, int] = {}

    def _writer(self, name: str):
        if name not in self.writers:
            self.writers[name] = self._writer_class(log_dir=str(self.root / name))
        return self.writers[name]

    def epoch(self, name: str, epoch: int) -> None:
        """Write what `epoch` of experiment `name` left in its files."""
        exp_dir = self.root.parent / name
        writer = self._writer(name)
        dynamics = read_dynamics(exp_dir / DYNAMICS)
        if dynamics:  # the last recorded step of an epoch is its last step
            self.steps_per_epoch[name] = max(r["step"] for r in dynamics if r["epoch"] == dynamics[0]["epoch"])
        steps = self.steps_per_epoch.get(name, 1)
        for r in dynamics:
            if r["epoch"] == epoch:
                writer.add_scalar(f"{r['statistic']}/{r['layer']}", r["value"], (epoch - 1) * steps + r["step"])
        rows = read_metrics(exp_dir / METRICS)
        if len(rows) >= epoch:
            for key in METRIC_COLUMNS[1:]:
                writer.add_scalar(f"metrics/{key}", rows[epoch - 1][key], epoch * steps)
            state = load_checkpoint(exp_dir / CHECKPOINT)
            model = Net.from_config(state["net_config"])
            model.load_state_dict(state["model"])
            for layer, block in model.blocks():
                for param, value in block.named_parameters():
                    writer.add_histogram(f"{layer}/{param}", value.detach(), epoch * steps)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
