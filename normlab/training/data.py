"""A dataset resident in memory as float tensors on the training device, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import data as datasets
from ..errors import NormlabError

VAL_SPLIT_SEED = 0  # one fixed split per dataset and size, whatever the experiment's seed


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
