"""Checkpoints that rebuild their own model, written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import NormlabError
from .fileio import atomic_write_bytes
from .model import Net, NetConfig

FORMAT = "normlab-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, *, experiment: dict, net_config: NetConfig, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int) -> None:
    """Everything needed to continue training after `epoch`, or to rebuild the model alone."""
    buf = io.BytesIO()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "experiment": experiment,
        "net_config": net_config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def load_checkpoint(path: Path | str) -> dict:
    """The checkpoint's dict; one clear error for a missing, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise NormlabError(f"checkpoint {path} does not exist; pass the model.pt of a normlab run.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NormlabError(
            f"{path} is not a normlab checkpoint that can be loaded safely ({first[:200]}); "
            "pass the model.pt of a normlab run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NormlabError(f"{path} is not a normlab checkpoint; pass the model.pt of a normlab run.")
    if state.get("version") != VERSION:
        raise NormlabError(
            f"{path} is a normlab checkpoint of version {state.get('version')}, this normlab reads "
            f"version {VERSION}; retrain it with this version."
        )
    return state


def load_model(path: Path | str, device: str | torch.device = "cpu") -> Net:
    """The eval-mode Net saved at `path`. Input: float images in [0, 1], shape (N, 1, 28, 28)."""
    state = load_checkpoint(path)
    model = Net.from_config(state["net_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
