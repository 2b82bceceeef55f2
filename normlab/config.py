"""The typed configuration of one experiment; saved beside its results and inside its checkpoint."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .data import DATASETS
from .errors import ConfigError
from .model import NetConfig, check_norm, config_from_dict

# Experiment names become directory names: no path separators, no hidden or option-like names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class ExperimentConfig:
    name: str = "bn"
    norm: str = "bn"
    groups: int = 4  # GN groups in every norm layer
    dropout: float = 0.05  # probability after every block
    l1: float = 0.0  # lambda * sum|w| over conv weights, added to the loss
    l2: float = 0.0  # SGD weight decay on conv weights
    seed: int = 1  # fresh initialization and all randomness derive from it
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.02  # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    dataset: str = "mnist"
    train_limit: int | None = None  # use only the first N training images (quick runs, tests)
    test_limit: int | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError("name", self.name, "{setting} is not a safe experiment name; use up to 64 "
                              "letters, digits, '.', '_' or '-', starting with a letter or digit.")
        self.norm = check_norm(self.norm, self.groups)
        if self.dataset not in DATASETS:
            raise ConfigError("dataset", self.dataset,
                              f"{{setting}} is not a known dataset; choose one of: {', '.join(DATASETS)}.")
        for key in ("epochs", "batch_size", "train_limit", "test_limit", "seed"):
            value = getattr(self, key)
            if value is None and key.endswith("_limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
                kind = "zero or a positive integer" if key == "seed" else "a positive integer"
                raise ConfigError(key, value, f"{{setting}} must be {kind}.")
        for key in ("batch_size", "train_limit"):
            if getattr(self, key) == 1:
                raise ConfigError(key, 1, "{setting} leaves batches of one image, which BatchNorm cannot "
                                  "normalize; use 2 or more.")
        for key in ("l1", "l2", "dropout", "lr", "momentum"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(key, value, "{setting} must be a finite number.")
            if value < 0 or (key == "lr" and value == 0):
                raise ConfigError(key, value, "{setting} must be " + ("positive." if key == "lr"
                                                                       else "zero or positive."))
        if self.dropout >= 1:
            raise ConfigError("dropout", self.dropout, "{setting} must be below 1.")
        if not isinstance(self.augment, bool):
            raise ConfigError("augment", self.augment, "{setting} must be true or false.")

    @property
    def dirname(self) -> str:
        return f"{self.name}-seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        return config_from_dict(cls, d, "experiment")

    def net_config(self, mean: float, std: float) -> NetConfig:
        return NetConfig(self.norm, self.groups, self.dropout, mean, std)
