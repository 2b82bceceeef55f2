"""The typed configuration of one experiment; saved beside its results and inside its checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .data import DATASETS
from .errors import NormlabError
from .model import NetConfig, check_norm, config_from_dict


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
        self.norm = check_norm(self.norm, self.groups)
        if self.dataset not in DATASETS:
            raise NormlabError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}."
            )
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                            ("--train-limit", self.train_limit), ("--test-limit", self.test_limit)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise NormlabError(f"{flag} must be a positive integer, got {value}.")
        for flag, value in (("--l1", self.l1), ("--l2", self.l2), ("--dropout", self.dropout)):
            if not value >= 0:  # also rejects NaN
                raise NormlabError(f"{flag} must be zero or positive, got {value}.")
        if not self.lr > 0:
            raise NormlabError(f"--lr must be positive, got {self.lr}.")
        if self.dropout >= 1:
            raise NormlabError(f"--dropout must be below 1, got {self.dropout}.")

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
