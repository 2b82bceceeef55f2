"""An experiment's training state tied to its directory: opened once, saved every epoch.

The directory is checked and repaired when the experiment is opened (`normlab.recovery`), or,
when the study has already checked it under its lock, only its checkpoint is read. Every landed
epoch writes the checkpoint (the source of truth) and then its views, atomically; the last one
adds the misclassified pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from . import data as datasets
from .checkpoint import load_checkpoint, save_checkpoint, weights_l1
from .config import ExperimentConfig
from .errors import DamagedError, DivergedError, NormlabError, first_line, notice
from .fileio import atomic_write_json
from .provenance import extend as extend_provenance
from .provenance import layout_entry
from .recovery import inspect_experiment, repair_views, status_view, write_views
from .results import CHECKPOINT, CONFIG, DAMAGED, DIVERGED, DONE, MISCLASSIFIED, RUNNING, STATUS
from .training.loop import EpochMetrics, epoch_steps, overflow_divergence, predict, run_to_end
from .training.single import SingleStep
from .training.state import TrainState

MISCLASSIFIED_COUNT = 10


class Experiment:
    """One experiment's `TrainState`, its record (metrics history, provenance, divergence) and its files.

    `checked`: the study already cross-checked this directory (once, under its lock), so only the
    checkpoint is read — one torch.load. Otherwise the directory is cross-checked here: views are
    rebuilt from the checkpoint, and a damaged experiment raises DamagedError before anything is
    written. `executor` and `processes` (training side by side) go into each epoch's provenance.
    """

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, device: str | torch.device = "cpu",
                 resume: bool = False, notify: Callable[[str], None] = notice, checked: bool = False,
                 executor: str = "local", processes: int = 1):
        self.cfg = cfg
        self.executor, self.processes = executor, processes
        self.dir = Path(exp_dir)
        self.state = TrainState(cfg, device)
        self.history: list[dict] = []
        self.provenance: list[dict] = []  # what trained which epochs (normlab.provenance)
        self.diverged_at: dict | None = None
        checkpoint = checked_checkpoint(self.dir) if checked else None
        if checkpoint is None or checkpoint.get("version") == 1:  # version 1 needs its views: the full check
            found = inspect_experiment(self.dir, cfg.to_dict(), resume)
            if found.kind == DAMAGED:
                raise DamagedError(found.problem)
        if checkpoint is not None and checkpoint.get("version") != 1:
            self.restore(checkpoint)
            return
        repair_views(found, notify)
        if found.checkpoint is not None:
            self.restore(found.checkpoint)
        else:
            atomic_write_json(self.dir / CONFIG, cfg.to_dict())

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def restore(self, saved: dict) -> None:
        try:
            self.state.restore(saved)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise DamagedError(f"{self.dir / CHECKPOINT} is damaged (its state does not fit this experiment: "
                               f"{first_line(e)}); restore it, or delete {self.dir} and run the study again with "
                               "--resume to retrain that experiment.") from None
        self.history = list(saved["history"])
        self.provenance = list(saved.get("provenance") or [])
        self.diverged_at = saved.get("diverged")

    def record(self) -> dict:
        """The experiment's record as its checkpoint stores it, less the tensors."""
        return {"experiment": self.cfg.to_dict(), "epoch": self.epoch, "history": self.history,
                "device": str(self.state.device), "params": self.state.params, "diverged": self.diverged_at,
                "dynamics": self.state.dynamics, "provenance": self.provenance}

    def save(self) -> None:
        """The checkpoint first (the source of truth), then its views."""
        record = self.record()
        save_checkpoint(self.dir / CHECKPOINT, net_config=self.state.net_config, **self.state.tensors(), **record)
        write_views(self.dir, record, DIVERGED if self.diverged_at else RUNNING)

    def run_epoch(self) -> EpochMetrics:
        """Train one epoch alone (`training.loop`), evaluate, and land it; a divergence — a non-finite
        loss, or a number that overflows what a tensor holds — is raised as DivergedError."""
        epoch, state = self.epoch + 1, self.state
        try:
            outcome = run_to_end(epoch_steps(SingleStep(state), epoch, state.slices, state.data,
                                             state.recorder is not None))
        except (RuntimeError, OverflowError) as e:
            diverged = overflow_divergence(e, epoch)
            if diverged is None:
                raise
            raise diverged from None
        result = outcome[0]
        if isinstance(result, DivergedError):
            raise result
        self.land(result)
        return result

    def land(self, metrics: EpochMetrics, members: int = 1) -> None:
        """Add a trained epoch to the record — its metrics and what trained it — then save it.
        `members`: models trained as one step with this one (the grouped executor)."""
        self.state.epoch = metrics.epoch
        self.history.append(metrics.row())
        entry = layout_entry(str(self.state.device), torch.get_num_threads(), self.executor, self.processes, members)
        self.provenance = extend_provenance(self.provenance, metrics.epoch, entry)
        self.save()

    def finish(self) -> None:
        """Record the most confident mistakes on the test set, then mark the experiment done."""
        data = self.state.data
        atomic_write_json(self.dir / MISCLASSIFIED, misclassified(self.state.model, data.test_x, data.test_y, self.cfg))
        atomic_write_json(self.dir / STATUS, status_view(self.record(), DONE))

    def diverged(self, error: DivergedError) -> None:
        """Keep the last good epoch's state and record the divergence in the checkpoint, with the
        dynamics recorded during the epoch that diverged (they show what grew)."""
        last_steps = [r for r in self.state.dynamics if r["epoch"] > self.epoch]
        if self.epoch > 0:
            last_good = checked_checkpoint(self.dir)
            if last_good is not None and last_good.get("version") == 1:
                last_good = inspect_experiment(self.dir, None).checkpoint  # a version-1 file comes upgraded
            if last_good is None:
                raise DamagedError(f"{self.dir / CHECKPOINT} could not be read back after the run diverged; "
                                   f"delete {self.dir} and run the study again with --resume to retrain it.")
            self.restore({**last_good, "diverged": None})
        else:
            self.state.fresh()
        self.state.dynamics += last_steps
        self.diverged_at = {"epoch": error.epoch, "message": str(error)}
        self.save()


def checked_checkpoint(exp_dir: Path) -> dict | None:
    """The checkpoint of a directory the study has already checked (None when there is none yet);
    a file damaged since then is DamagedError, naming it."""
    path = Path(exp_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
        state["experiment"] = ExperimentConfig.from_dict(state["experiment"]).to_dict()
        return state
    except NormlabError as e:
        raise DamagedError(f"{e} It changed after the study checked it; restore it, or delete "
                           f"{exp_dir} and run the study again with --resume to retrain that experiment.") from None


def summary_record(exp: Experiment) -> dict:
    """What summary.json needs of an experiment after a task, so the study need not re-read its
    checkpoint: its record (less the dynamics rows) and the size of its conv weights."""
    record = {k: v for k, v in exp.record().items() if k != "dynamics"}
    record["conv_weight_l1"] = weights_l1(exp.state.model.state_dict())
    return record


def misclassified(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig,
                  count: int = MISCLASSIFIED_COUNT) -> dict:
    """The `count` test images the model got wrong with the highest confidence (ties: lower index).

    The most confident mistakes are the most informative ones to look at, and the choice is
    deterministic. Pixels are stored so plots need only this file.
    """
    probs = predict(model, x).exp()
    confidence, predicted = probs.max(1)
    wrong = (predicted != y).nonzero().flatten()
    order = sorted(wrong.tolist(), key=lambda i: (-round(confidence[i].item(), 6), i))[:count]
    classes = datasets.spec(cfg.dataset).classes
    return {
        "dataset": cfg.dataset,
        "rule": "most confident mistakes on the test set",
        "wrong_total": len(wrong),
        # every wrong test image, so two models can be compared image by image (a paired test)
        "wrong_indices": wrong.tolist(),
        "images": [
            {
                "index": i,
                "true": int(y[i]),
                "predicted": int(predicted[i]),
                "true_name": classes[int(y[i])],
                "predicted_name": classes[int(predicted[i])],
                "confidence": round(confidence[i].item(), 4),
                "pixels": (x[i, 0] * 255).round().to(torch.uint8).cpu().tolist(),
            }
            for i in order
        ],
    }
