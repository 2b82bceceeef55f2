"""The typed configuration of one experiment; saved beside its results and inside its checkpoint."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from .data import DATASETS
from .errors import ConfigError
from .network import INITS, NetConfig, check_dropout, check_network, check_norm, config_from_dict

MAX_SEED = 2**31 - 1  # every epoch's seed, seed * 1_000_003 + epoch, must fit torch's 64-bit seeds
MAX_EPOCHS = 1_000_000  # with MAX_SEED, every epoch's seed stays far inside torch's 64-bit range
FLOAT32_MAX = 3.4028234663852886e38  # training runs in float32: a larger number cannot reach a tensor
MAX_LIMIT = 2**62  # train_limit / test_limit: above the dataset they limit nothing, but must index a tensor

# Experiment names become directory names: no path separators, no hidden or option-like names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def setting(default, help: str, metavar: str = "F"):
    """A config field with its CLI help; the flags are generated from these (`normlab.cli`)."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass
class ExperimentConfig:
    """Every setting of one experiment, declared once: defaults, CLI flags, validation, config.json."""

    name: str = setting("bn", "experiment name (default: from the settings that vary)", "NAME")
    norm: str = setting("bn", "normalization layer", "NAME")
    groups: int = setting(4, "GroupNorm groups in every norm layer", "N")
    dropout: float = setting(0.05, "dropout probability after every block")
    l1: float = setting(0.0, "L1 factor: lambda * sum|w| over conv weights, added to the loss")
    l2: float = setting(0.0, "L2: SGD weight decay on conv weights")
    seed: int = setting(1, "random seed: the fresh initialization and all randomness derive from it", "N")
    epochs: int = setting(20, "epochs per experiment", "N")
    batch_size: int = setting(128, "training batch size", "N")
    lr: float = setting(0.02, "peak learning rate of the one-cycle schedule")
    momentum: float = setting(0.9, "SGD momentum: the centre of the one-cycle schedule's momentum cycle (+-0.05)")
    dataset: str = setting("mnist", "dataset", "NAME")
    train_limit: int | None = setting(None, "use only the first N training images (quick runs, tests)", "N")
    test_limit: int | None = setting(None, "use only the first N test images", "N")
    augment: bool = setting(True, "random affine augmentation of every training batch", "BOOL")
    rotate: float = setting(7.0, "augmentation: rotation, uniform in +-degrees")
    translate: float = setting(0.1, "augmentation: shift, uniform in +- this fraction of the image size per axis")
    scale_min: float = setting(0.9, "augmentation: smallest zoom factor")
    scale_max: float = setting(1.1, "augmentation: largest zoom factor")
    shear: float = setting(10.0, "augmentation: x-shear angle, uniform in +-degrees")
    dynamics: bool = setting(True, "record per-layer training dynamics to dynamics.csv (normlab.dynamics); "
                             "reading only, training is identical either way", "BOOL")
    last_norm: bool = setting(True, "normalize the 1x1 block after global pooling (false: a plain conv -> ReLU "
                              "there, as the GN and FRN papers place their norms)", "BOOL")
    init: str = setting("default", f"conv weight init: {' | '.join(INITS)} (PyTorch's own, or He/Kaiming normal)",
                        "NAME")
    conv_bias: bool = setting(False, "a learned bias in every conv", "BOOL")
    val_split: int = setting(0, "hold out N training images as a validation set, evaluated every epoch "
                             "(for choosing settings; the test set is for reporting)", "N")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError("name", self.name, "{setting} is not a safe experiment name; use up to 200 "
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
        if self.epochs > MAX_EPOCHS:
            raise ConfigError("epochs", self.epochs, f"{{setting}} is more than normlab can seed and schedule; "
                              f"use at most {MAX_EPOCHS:,}.")
        for key in ("train_limit", "test_limit"):
            if (getattr(self, key) or 0) > MAX_LIMIT:
                raise ConfigError(key, getattr(self, key), f"{{setting}} cannot index a tensor; use at most "
                                  f"{MAX_LIMIT} (any limit above the dataset's size uses all of it).")
        for key in ("batch_size", "train_limit"):
            if getattr(self, key) == 1:
                raise ConfigError(key, 1, "{setting} leaves batches of one image, which BatchNorm cannot "
                                  "normalize; use 2 or more.")
        for key in ("l1", "l2", "dropout", "lr", "momentum", "rotate", "translate", "scale_min", "scale_max",
                    "shear"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, value, "{setting} must be a finite number.")
            if isinstance(value, int) and abs(value) > FLOAT32_MAX:  # too large for a float at all
                raise ConfigError(key, value, f"{{setting}} does not fit the float32 numbers training uses; "
                                  f"use at most {FLOAT32_MAX:.4g}.")
            if not math.isfinite(value):
                raise ConfigError(key, value, "{setting} must be a finite number.")
            if value < 0 or (key == "lr" and value == 0):
                raise ConfigError(key, value, "{setting} must be " + ("positive." if key == "lr"
                                                                       else "zero or positive."))
            if value > FLOAT32_MAX:
                raise ConfigError(key, value, f"{{setting}} does not fit the float32 numbers training uses; "
                                  f"use at most {FLOAT32_MAX:.4g}.")
            if key in ("lr", "scale_min") and 0 < value < 2.0**-126:
                raise ConfigError(key, value, "{setting} rounds to 0 in the float32 numbers training uses; "
                                  f"use at least {2.0**-126:.4g}.")
        if not 0.05 <= self.momentum <= 0.94:
            raise ConfigError("momentum", self.momentum, "{setting} must be from 0.05 to 0.94 (the one-cycle "
                              "schedule swings it by 0.05 each way).")
        if self.seed > MAX_SEED:
            raise ConfigError("seed", self.seed, f"{{setting}} must be at most {MAX_SEED}.")
        check_dropout(self.dropout)
        for key in ("augment", "dynamics"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, getattr(self, key), "{setting} must be true or false.")
        check_network(self.last_norm, self.init, self.conv_bias)
        if isinstance(self.val_split, bool) or not isinstance(self.val_split, int) or self.val_split < 0:
            raise ConfigError("val_split", self.val_split, "{setting} must be zero or a positive integer.")
        pool = min(self.train_limit or DATASETS[self.dataset].size("train"), DATASETS[self.dataset].size("train"))
        if self.val_split and pool - self.val_split < 2:
            raise ConfigError("val_split", self.val_split, f"{{setting}} leaves fewer than 2 of the {pool} "
                              "training images to train on; hold out fewer.")
        if self.batch_size > pool - self.val_split:
            raise ConfigError("batch_size", self.batch_size, f"{{setting}} is larger than the "
                              f"{pool - self.val_split} training images it would batch; use at most that many.")
        if self.scale_min == 0 or self.scale_min > self.scale_max:
            raise ConfigError("scale_min", self.scale_min, f"{{setting}} must be positive and at most "
                              f"scale_max ({self.scale_max}).")

    @property
    def dirname(self) -> str:
        return f"{self.name}-seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        """From a config dict; settings added since it was written take their defaults."""
        return config_from_dict(cls, d, "experiment")

    def augmentation(self):
        """The augmentation's parameters (`normlab.augment.AugmentConfig`)."""
        from .augment import AugmentConfig

        return AugmentConfig(degrees=self.rotate, translate=self.translate,
                             scale=(self.scale_min, self.scale_max), shear=self.shear)

    def net_config(self, mean: float, std: float) -> NetConfig:
        return NetConfig(self.norm, self.groups, self.dropout, mean, std, self.last_norm, self.init,
                         self.conv_bias)


# The settings of an experiment: every field but its name (which is derived from them in a study).
SETTINGS = tuple(f.name for f in fields(ExperimentConfig) if f.name != "name")

# What experiments that train as one vmapped model (--grouped) may differ in; the rest shapes the step.
STEP_FREE_SETTINGS = ("name", "seed", "lr", "momentum", "l1", "l2")


def step_key(cfg: ExperimentConfig) -> tuple:
    """Experiments with equal keys can share one training step (one vmapped model)."""
    return tuple((k, v) for k, v in cfg.to_dict().items() if k not in STEP_FREE_SETTINGS)
