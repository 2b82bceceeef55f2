"""Training one experiment: data resident in memory, batched augmentation, files written every epoch.

The loop follows pytorch/examples' mnist `train`/`test` shape; the data path follows
cifar10-airbench: the dataset is loaded once as a tensor, batches are slices of a seeded
permutation, augmentation runs on whole batches. All randomness of epoch e comes from
generators seeded with (seed, e), so a run resumed after epoch e-1 continues exactly as an
uninterrupted one would (on the same machine).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as datasets
from .augment import random_affine
from .checkpoint import load_checkpoint, save_checkpoint, weights_l1
from .config import ExperimentConfig
from .dynamics import DynamicsRecorder, recorded_steps
from .errors import DamagedError, DivergedError, NormlabError, first_line, notice
from .fileio import atomic_write_json, read_json
from .model import Net, count_parameters
from .provenance import extend as extend_provenance
from .provenance import layout_entry
from .recovery import inspect_experiment, repair_views, status_view, write_views
from .results import CHECKPOINT, CONFIG, DAMAGED, DIVERGED, DONE, MISCLASSIFIED, RUNNING, STATUS

EVAL_BATCH = 2000
MOMENTUM_SWING = 0.05  # the one-cycle momentum cycle is momentum +- this
MISCLASSIFIED_COUNT = 10


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


@dataclass
class Data:
    train_x: torch.Tensor  # float (N, 1, 28, 28) in [0, 1]
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float  # training-set pixel mean/std, stored in the model for standardization
    std: float
    val_x: torch.Tensor | None = None  # held out from the training images (val_split), or None
    val_y: torch.Tensor | None = None


VAL_SPLIT_SEED = 0  # one fixed split per dataset and size, whatever the experiment's seed


def validation_indices(pool: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of a training pool of `pool` images: `size` of them
    drawn by a fixed-seed permutation, so every experiment of a study holds out the same images.
    Both in their original order."""
    perm = torch.randperm(pool, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return perm[size:].sort().values, perm[:size].sort().values


def resolve_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NormlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise NormlabError(f"unknown device {name!r}; choose auto, cpu or cuda.")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def load_data(dataset: str, train_limit: int | None, test_limit: int | None, device: str,
              val_split: int = 0) -> Data:
    """The dataset as float tensors on `device`, loaded once per process. The first `train_limit`
    training images form the pool from which `val_split` are held out for validation."""
    mean, std = datasets.channel_stats(dataset)
    tensors = []
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images, labels = datasets.load(dataset, split)
        images, labels = images[:limit], labels[:limit]
        tensors += [images.to(device).float().div_(255).unsqueeze(1), labels.to(device)]
    data = Data(*tensors, mean=mean, std=std)
    if val_split:
        train, val = validation_indices(len(data.train_y), val_split)
        train, val = train.to(device), val.to(device)
        data.val_x, data.val_y = data.train_x[val], data.train_y[val]
        data.train_x, data.train_y = data.train_x[train], data.train_y[train]
    return data


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def parameter_groups(model: torch.nn.Module, l2: float) -> list[dict]:
    """L1 and L2 touch conv weights only (dim >= 2), never norm gamma/beta, as in nanoGPT.

    Decaying BN/GN gamma toward 0 would switch channels off (that is network slimming, a
    different method); the conv weights are what "regularize the model" means here.
    """
    weights = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": weights, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for p in model.parameters() if p.dim() >= 2)


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


class Experiment:
    """One experiment's model, optimizer and schedule, tied to its directory of result files.

    The directory is cross-checked first (`normlab.recovery`): views are rebuilt from the
    checkpoint, and a damaged experiment raises DamagedError before anything is written.
    """

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, device: str | torch.device = "cpu",
                 resume: bool = False, notify: Callable[[str], None] = notice, checked: bool = False,
                 executor: str = "local", processes: int = 1):
        """`checked`: the study already cross-checked this directory (once, under its lock), so
        only the checkpoint is read — one torch.load — and nothing else is inspected again.
        `executor` and `processes` (training side by side) go into each epoch's provenance."""
        self.cfg = cfg
        self.executor, self.processes = executor, processes
        self.dir = Path(exp_dir)
        self.device = resolve_device(str(device))
        self.data = load_data(cfg.dataset, cfg.train_limit, cfg.test_limit, self.device.type, cfg.val_split)
        checkpoint = _checked_checkpoint(self.dir) if checked else None
        if checkpoint is None or checkpoint.get("version") == 1:  # version 1 needs its views: the full check
            state = inspect_experiment(self.dir, cfg.to_dict(), resume)
            if state.kind == DAMAGED:
                raise DamagedError(state.problem)
        self.net_config = cfg.net_config(self.data.mean, self.data.std)
        self.slices = batch_slices(len(self.data.train_y), cfg.batch_size)
        self.augment = cfg.augmentation()
        self._fresh()
        self.epoch = 0
        self.history: list[dict] = []
        self.dynamics: list[dict] = []  # normlab.dynamics rows, kept in the checkpoint
        self.provenance: list[dict] = []  # what trained which epochs (normlab.provenance)
        self.diverged_at: dict | None = None
        if checkpoint is not None and checkpoint.get("version") != 1:
            self._restore(checkpoint)
            return
        repair_views(state, notify)
        if state.checkpoint is not None:
            self._restore(state.checkpoint)
        else:
            atomic_write_json(self.dir / CONFIG, cfg.to_dict())

    def _fresh(self) -> None:
        """A fresh initialization derived from the seed alone, with its optimizer and schedule."""
        torch.manual_seed(self.cfg.seed)
        self.model = Net.from_config(self.net_config).to(self.device, memory_format=torch.channels_last)
        self.recorder = DynamicsRecorder(self.model) if self.cfg.dynamics else None
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, self.cfg.l2), lr=self.cfg.lr,
                                         momentum=self.cfg.momentum)
        # OneCycleLR cycles the momentum against the LR and overrides SGD's own: `momentum` is the
        # centre of that cycle (0.9 -> 0.95 down to 0.85 and back, OneCycleLR's defaults).
        m = self.cfg.momentum
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.cfg.lr, total_steps=self.cfg.epochs * len(self.slices),
            base_momentum=round(m - MOMENTUM_SWING, 10), max_momentum=round(m + MOMENTUM_SWING, 10))

    @property
    def params(self) -> int:
        return count_parameters(self.model)

    @property
    def status(self) -> dict:
        path = self.dir / STATUS
        return read_json(path) if path.exists() else {"status": "pending", "epochs_run": 0}

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = first_line(e)
            raise DamagedError(f"{self.dir / CHECKPOINT} is damaged (its state does not fit this experiment: "
                               f"{first}); restore it, or delete {self.dir} and run the study again with "
                               "--resume to retrain that experiment.") from None
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.dynamics = list(state.get("dynamics") or [])
        self.provenance = list(state.get("provenance") or [])
        self.diverged_at = state.get("diverged")

    def record(self) -> dict:
        """The experiment's record as its checkpoint stores it, less the tensors."""
        return {"experiment": self.cfg.to_dict(), "epoch": self.epoch, "history": self.history,
                "device": str(self.device), "params": self.params, "diverged": self.diverged_at,
                "dynamics": self.dynamics, "provenance": self.provenance}

    def save(self) -> None:
        """The checkpoint first (the source of truth), then its views."""
        record = self.record()
        save_checkpoint(self.dir / CHECKPOINT, net_config=self.net_config, model=self.model.state_dict(),
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), **record)
        write_views(self.dir, record, DIVERGED if self.diverged_at else RUNNING)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images at `idx`, augmented (whole batch at once), and their labels."""
        x, y = self.data.train_x[idx], self.data.train_y[idx]
        if self.cfg.augment:
            x = random_affine(x, gen, self.augment)
        # channels_last: 5-8% faster on CPU (oneDNN convs; max-pool 10x faster); same maths.
        return x.contiguous(memory_format=torch.channels_last), y

    def train_step(self, x: torch.Tensor, y: torch.Tensor, record_at: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step: (log-probabilities, NLL loss, loss + L1 term). With `record_at` =
        (epoch, step) and a recorder, the step's dynamics rows are added to `self.dynamics`."""
        recorder = self.recorder if record_at else None
        if recorder:
            recorder.arm()
        out = self.model(x)
        loss = F.nll_loss(out, y)
        total = loss + self.cfg.l1 * l1_penalty(self.model) if self.cfg.l1 else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if recorder:
            recorder.after_backward()
        self.optimizer.step()
        self.scheduler.step()
        if recorder:
            self.dynamics += recorder.after_step(*record_at)
        return out, loss, total

    def throughput(self, seconds: float, warmup_steps: int = 5) -> float:
        """Training images per second of this experiment's real step, for `normlab bench`."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        perm = torch.randperm(len(self.data.train_y), generator=gen, device=self.device)
        images, start, step = 0, None, 0
        while True:
            for i, j in self.slices:
                if step == warmup_steps:
                    self._sync()
                    images, start = 0, time.perf_counter()
                self.train_step(*self.batch(perm[i:j], gen))
                images += j - i
                step += 1
                if start is not None and step % 10 == 0:
                    self._sync()
                    if time.perf_counter() - start >= seconds:
                        return images / (time.perf_counter() - start)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_epoch(self) -> EpochMetrics:
        """Train one epoch, evaluate on the test set, write metrics and checkpoint atomically.
        A number that overflows what a tensor holds on the way is a divergence, as a non-finite loss is."""
        try:
            return self._run_epoch()
        except (RuntimeError, OverflowError) as e:
            diverged = overflow_divergence(e, self.epoch + 1)
            if diverged is None:
                raise
            raise diverged from None

    def _run_epoch(self) -> EpochMetrics:
        cfg, d = self.cfg, self.data
        epoch = self.epoch + 1
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout masks
        gen = torch.Generator(device=self.device).manual_seed(seed)
        start = time.perf_counter()
        self.model.train()
        perm = torch.randperm(len(d.train_y), generator=gen, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        to_record = recorded_steps(epoch, len(self.slices)) if self.recorder else set()
        for step, (i, j) in enumerate(self.slices):
            x, y = self.batch(perm[i:j], gen)
            out, loss, total = self.train_step(x, y, (epoch, step + 1) if step + 1 in to_record else None)
            loss_sum += loss.detach() * (j - i)
            correct += (out.argmax(1) == y).sum()
            seen += j - i
            if step % 20 == 0 or step == len(self.slices) - 1:
                value = total.item()
                if value != value or abs(value) == float("inf"):
                    raise DivergedError(epoch, f"loss became {value} at epoch {epoch}, step {step + 1}")
        train_seconds = time.perf_counter() - start
        test_loss, test_accuracy = evaluate(self.model, d.test_x, d.test_y)
        if test_loss != test_loss or abs(test_loss) == float("inf"):
            raise DivergedError(epoch, f"test loss became {test_loss} at epoch {epoch}")
        val_loss = val_accuracy = None
        if d.val_x is not None:
            val_loss, val_accuracy = (round(v, 6 if i == 0 else 4) for i, v in
                                      enumerate(evaluate(self.model, d.val_x, d.val_y)))
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=round(loss_sum.item() / seen, 6),
            train_accuracy=round(100.0 * correct.item() / seen, 4),
            test_loss=round(test_loss, 6),
            test_accuracy=round(test_accuracy, 4),
            lr=round(self.scheduler.get_last_lr()[0], 8),
            seconds=round(time.perf_counter() - start, 3),
            images_per_second=seen / train_seconds,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
        )
        self.land(metrics)
        return metrics

    def land(self, metrics: EpochMetrics, members: int = 1) -> None:
        """Add a trained epoch to the record — its metrics and what trained it — then save it.
        `members`: models trained as one step with this one (the grouped executor)."""
        self.epoch = metrics.epoch
        self.history.append(metrics.row())
        entry = layout_entry(str(self.device), torch.get_num_threads(), self.executor, self.processes, members)
        self.provenance = extend_provenance(self.provenance, metrics.epoch, entry)
        self.save()

    def finish(self) -> None:
        """Record the most confident mistakes on the test set, then mark the experiment done."""
        atomic_write_json(self.dir / MISCLASSIFIED,
                          misclassified(self.model, self.data.test_x, self.data.test_y, self.cfg))
        atomic_write_json(self.dir / STATUS, status_view(self.record(), DONE))

    def diverged(self, error: DivergedError) -> None:
        """Keep the last good epoch's state and record the divergence in the checkpoint, with the
        dynamics recorded during the epoch that diverged (they show what grew)."""
        last_steps = [r for r in self.dynamics if r["epoch"] > self.epoch]
        if self.epoch > 0:
            last_good = _checked_checkpoint(self.dir)
            if last_good is not None and last_good.get("version") == 1:
                last_good = inspect_experiment(self.dir, None).checkpoint  # a version-1 file comes upgraded
            if last_good is None:
                raise DamagedError(f"{self.dir / CHECKPOINT} could not be read back after the run diverged; "
                                   f"delete {self.dir} and run the study again with --resume to retrain it.")
            self._restore({**last_good, "diverged": None})
        else:
            self._fresh()
            self.dynamics = []
        self.dynamics += last_steps
        self.diverged_at = {"epoch": error.epoch, "message": str(error)}
        self.save()


def overflow_divergence(error: BaseException, epoch: int) -> DivergedError | None:
    """The divergence an overflow during training is ("value cannot be converted to type float
    without overflow", a Python float too large for float32), or None for any other error."""
    if isinstance(error, OverflowError) or (isinstance(error, RuntimeError) and "overflow" in str(error)):
        return DivergedError(epoch, f"a value overflowed at epoch {epoch} ({first_line(error, 100)})")
    return None


def _checked_checkpoint(exp_dir: Path) -> dict | None:
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
    record["conv_weight_l1"] = weights_l1(exp.model.state_dict())
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
