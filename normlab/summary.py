"""summary.json: one entry per experiment, built from the experiment directories alone."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .fileio import atomic_write_json, read_json
from .train import read_metrics


def conv_weight_l1(checkpoint: Path) -> float | None:
    """Σ|w| over the conv weights (the tensors L1/L2 act on) of a saved model."""
    if not checkpoint.exists():
        return None
    state = load_checkpoint(checkpoint)["model"]
    return round(sum(v.abs().sum().item() for v in state.values() if v.dim() >= 2), 2)


def machine_description(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": device,
            "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def experiment_entry(study_dir: Path, exp_dir: Path) -> dict:
    cfg = read_json(exp_dir / "config.json")
    status_path = exp_dir / "status.json"
    status = read_json(status_path) if status_path.exists() else {"status": "pending"}
    rows = read_metrics(exp_dir / "metrics.csv")
    best = max(rows, key=lambda r: (r["test_accuracy"], -r["epoch"])) if rows else None
    last = rows[-1] if rows else None
    entry = {
        "name": cfg["name"],
        "norm": cfg["norm"],
        "l1": cfg["l1"],
        "l2": cfg["l2"],
        "seed": cfg["seed"],
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "groups": cfg["groups"],
        "dataset": cfg["dataset"],
        "params": status.get("params"),
        "epochs": cfg["epochs"],
        "epochs_run": len(rows),
        "final_test_accuracy": last["test_accuracy"] if last else None,
        "best_test_accuracy": best["test_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_test_loss": last["test_loss"] if last else None,
        "final_train_loss": last["train_loss"] if last else None,
        "train_seconds": round(sum(r["seconds"] for r in rows), 2),
        "conv_weight_l1": conv_weight_l1(exp_dir / "model.pt"),
        "checkpoint": os.path.relpath(exp_dir / "model.pt", study_dir) if rows else None,
        "dir": os.path.relpath(exp_dir, study_dir),
        "status": status["status"],
    }
    if status.get("message"):
        entry["message"] = status["message"]
    if "diverged_epoch" in status:
        entry["diverged_epoch"] = status["diverged_epoch"]
    return entry


def write_summary(study_dir: Path, study: str, exp_dirs: list[Path], extra: dict) -> dict:
    entries = [experiment_entry(study_dir, d) for d in exp_dirs if (d / "config.json").exists()]
    summary = {
        "study": study,
        "dataset": entries[0]["dataset"] if entries else None,
        "epochs": max((e["epochs"] for e in entries), default=0),
        **extra,
        "experiments": entries,
    }
    atomic_write_json(study_dir / "summary.json", summary)
    return summary


def load_summary(study_dir: Path) -> dict:
    return read_json(Path(study_dir) / "summary.json")
