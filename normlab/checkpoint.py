"""Checkpoints that rebuild their own model and carry their experiment's whole record.

A checkpoint holds the config, the metrics history, the device, what trained each epoch (code
version, process x thread layout), the parameter count and (for a diverged run) the divergence, next to the model, optimizer and schedule state. It is the one
source of truth of an experiment: config.json, metrics.csv, dynamics.csv and status.json are views of it
(`normlab.recovery` rebuilds them). Written atomically, read with weights_only=True.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from .errors import NormlabError, first_line
from .fileio import atomic_write_bytes, kind_of
from .model import Net, NetConfig
from .provenance import valid as provenance_valid
from .results import DYNAMICS_COLUMNS, METRIC_COLUMNS

FORMAT = "normlab-checkpoint"
VERSION = 2  # 2 adds history, device, params and diverged; version 1 files are still read
REQUIRED = {"epoch": int, "experiment": dict, "net_config": dict, "model": dict, "optimizer": dict,
            "scheduler": dict}


def save_checkpoint(path: Path, *, experiment: dict, net_config: NetConfig, model: dict,
                    optimizer: dict, scheduler: dict, epoch: int, history: list[dict], device: str,
                    params: int, diverged: dict | None = None, dynamics: list[dict] | None = None,
                    provenance: list[dict] | None = None) -> None:
    """Everything needed to continue training after `epoch`, to rebuild the model, or its views."""
    buf = io.BytesIO()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "experiment": experiment,
        "net_config": net_config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.items()},
        "optimizer": _to_cpu(optimizer),
        "scheduler": scheduler,
        "history": history,
        "device": device,
        "params": params,
        "diverged": diverged,
        "dynamics": dynamics or [],  # normlab.dynamics rows; absent from files written before it existed
        "provenance": provenance or [],  # normlab.provenance: what trained which epochs; absent before it existed
    }
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def weights_l1(model_state: dict) -> float:
    """Σ|w| over a model state's conv weights (the tensors L1/L2 act on), as summary.json records it."""
    return round(sum(v.detach().cpu().abs().sum().item() for v in model_state.values() if v.dim() >= 2), 2)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class CheckpointError(NormlabError, ValueError):
    """A file that is not a usable normlab checkpoint; `reason` says why in a few words."""

    def __init__(self, path: Path, reason: str, fix: str = "pass the model.pt of a normlab run"):
        self.reason = reason
        super().__init__(f"{path} is not a normlab checkpoint that can be loaded safely ({reason}); {fix}.")


def _not_a_checkpoint(path: Path, why: str) -> CheckpointError:
    return CheckpointError(path, why)


def verify_checksums(path: Path) -> None:
    """Every member of the checkpoint's zip archive against the CRC-32 that torch.save wrote for
    it. torch.load does not check them, so one flipped bit in a tensor would load as a silently
    different model; here it is a damaged file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError, RuntimeError) as e:
        # a flipped bit in the zip's directory can read as an unknown compression method, a newer zip
        # version or an encrypted member (NotImplementedError, RuntimeError): damage all the same
        raise _not_a_checkpoint(path, f"truncated or corrupt: {first_line(e, 80)}") from None
    if bad is not None:
        raise CheckpointError(path, f"its content does not match its checksum, in {bad}: a changed or "
                              "partly copied file", fix="restore it from a copy, or retrain its experiment")


MAX_EPOCH_SECONDS = 1e7  # about four months: longer is not a time an epoch took


def _number(value, low: float = float("-inf"), high: float = float("inf")) -> bool:
    """A finite int or float (not a bool) within [low, high]."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _history_row_valid(row) -> bool:
    """A metrics row as training writes it: every column a finite number in its range."""
    if not isinstance(row, dict) or not set(METRIC_COLUMNS) <= set(row):
        return False
    ranges = {"train_loss": (0, float("inf")), "test_loss": (0, float("inf")), "val_loss": (0, float("inf")),
              "train_accuracy": (0, 100), "test_accuracy": (0, 100), "val_accuracy": (0, 100),
              "lr": (0, float("inf")), "seconds": (0, MAX_EPOCH_SECONDS)}
    return isinstance(row["epoch"], int) and all(_number(row[k], *ranges[k]) for k in row if k in ranges) \
        and set(row) <= set(ranges) | {"epoch"}


def _dynamics_row_valid(row) -> bool:
    return (isinstance(row, dict) and set(row) == set(DYNAMICS_COLUMNS) and isinstance(row["layer"], str)
            and isinstance(row["statistic"], str) and all(_number(row[k], 1) for k in ("epoch", "step"))
            and isinstance(row["value"], (int, float)) and not isinstance(row["value"], bool))


def record_problems(state: dict) -> list[str]:
    """The parts of a version-2 checkpoint's record that training could not have written: its history
    (one row per epoch, 1..epoch, within the experiment's epochs, every metric finite and in range),
    device, parameter count, divergence, dynamics rows and provenance."""
    bad = []
    history, epochs = state.get("history"), state["experiment"].get("epochs")
    if not isinstance(history, list) or [r.get("epoch") if isinstance(r, dict) else None
                                         for r in history] != list(range(1, state["epoch"] + 1)) \
            or not all(_history_row_valid(r) for r in history) or not (isinstance(epochs, int)
                                                                          and 0 <= state["epoch"] <= epochs):
        bad.append("history")
    if not isinstance(state.get("device"), str):
        bad.append("device")
    if not isinstance(state.get("params"), int) or isinstance(state.get("params"), bool) or state["params"] < 1:
        bad.append("params")
    diverged = state.get("diverged")
    if diverged is not None and not (isinstance(diverged, dict) and _number(diverged.get("epoch"), 1)
                                     and isinstance(diverged.get("epoch"), int)
                                     and isinstance(diverged.get("message"), str)):
        bad.append("diverged")
    dynamics = state.setdefault("dynamics", [])
    if not isinstance(dynamics, list) or not all(_dynamics_row_valid(r) for r in dynamics):
        bad.append("dynamics")
    if not provenance_valid(state.setdefault("provenance", [])):
        bad.append("provenance")
    return bad


def load_checkpoint(path: Path | str) -> dict:
    """The checkpoint's dict; one clear error for a missing, foreign, damaged or unsafe file."""
    path = Path(path)
    kind = kind_of(path)
    if kind is None:
        raise CheckpointError(path, "the file does not exist")
    if kind != "file":  # a link or a FIFO is never followed or waited on
        raise CheckpointError(path, f"not a regular file but a {kind}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _not_a_checkpoint(path, "the file is empty")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise _not_a_checkpoint(path, "not a PyTorch file: corrupt or foreign")
    verify_checksums(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of a damaged or foreign file
        raise _not_a_checkpoint(path, f"truncated or corrupt: torch.load failed with {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _not_a_checkpoint(path, "a PyTorch file, but not one that normlab wrote")
    if state.get("version") not in (1, VERSION):
        raise CheckpointError(path, f"format version {state.get('version')!r}; this normlab reads versions 1 "
                              f"and {VERSION}: upgrade normlab, or retrain with this one")
    bad = [k for k, kind in REQUIRED.items() if not isinstance(state.get(k), kind)]
    if state["version"] >= 2 and not bad:
        bad += record_problems(state)
    if bad:
        raise _not_a_checkpoint(path, f"missing or malformed {', '.join(bad)}")
    return state


def check_device(device) -> torch.device:
    """`device` as a torch.device normlab can train or evaluate on here: the CPU, or a CUDA GPU this machine
    has; anything else is a ValueError worded for Python, raised before a file is read or written."""
    from .errors import ArgumentError

    try:
        dev = torch.device(device) if isinstance(device, (str, torch.device)) else None
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ArgumentError(f"device={device!r:.60} is not a device normlab runs on; use 'cpu' or 'cuda'.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device={device!r} asks for CUDA, but no CUDA GPU is available here; use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ArgumentError(f"device={device!r} names a GPU this machine lacks (it has "
                            f"{torch.cuda.device_count()}); use 'cuda' or 'cuda:0'.")
    return dev


def load_model(path: Path | str, device: str | torch.device = "cpu") -> Net:
    """The eval-mode Net saved at `path`.

    Input: float images in [0, 1] or uint8 images in [0, 255], shape (N, 1, 28, 28) or (N, 28, 28).
    """
    check_device(device)
    state = load_checkpoint(path)
    try:
        model = Net.from_config(state["net_config"])
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError) as e:
        first = first_line(e, 200)
        raise _not_a_checkpoint(Path(path), f"its weights do not fit its network: {first}") from None
    return model.to(device).eval()
