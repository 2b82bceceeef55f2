"""The network's plan and its settings, without torch: what a config needs to check a norm, a group
count or an init, so `normlab --help` and config parsing stay light (`normlab.model` builds it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ArgumentError, ConfigError
from .zoo import NORMS

# The network, in order: ("block", in, out, kernel), ("conv", in, out, kernel), ("maxpool",), ("gap",).
# Net is built from this plan, and the norm layers' widths (for checking a group count) are read from it.
LAYERS = (
    ("block", 1, 8, 3),     # 26x26
    ("block", 8, 16, 3),    # 24x24
    ("maxpool",),           # 12x12
    ("conv", 16, 8, 1),     # transition: fewer channels, no norm
    ("block", 8, 16, 3),    # 10x10
    ("block", 16, 16, 3),   # 8x8
    ("block", 16, 16, 3),   # 6x6
    ("gap",),               # 1x1
    ("block", 16, 16, 1),
    ("conv", 16, 10, 1),
)
NORM_WIDTHS = tuple(layer[2] for layer in LAYERS if layer[0] == "block")
INITS = ("default", "he")  # PyTorch's own conv init, or He et al. 2015 (Kaiming normal, fan-in, ReLU gain)


# normlab's dropout mask (normlab.model.dropout_mask) drops an element when 15 random bits fall below
# round(p * 32768): a probability is drawn in steps of 1/32768, and only 1 to 32767 steps are dropout.
MASK_STEPS = 32768


def check_dropout(p) -> float:
    """A dropout probability the mask can draw: 0, or from 1/32768 to 1 - 1/32768."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ConfigError("dropout", p, "{setting} must be a probability from 0 to below 1.")
    if p != 0 and not 1 <= round(p * MASK_STEPS) <= MASK_STEPS - 1:
        raise ConfigError("dropout", p, f"{{setting}} is finer than a dropout mask can draw (steps of 1/{MASK_STEPS}); "
                          f"use 0, or a probability from {1 / MASK_STEPS:.6g} to {1 - 1 / MASK_STEPS:.6g}.")
    return p


def check_norm(norm: str, groups: int = 4) -> str:
    """Normalize and validate a norm name and group count, with a message that names the fix."""
    if not isinstance(norm, str):
        raise ConfigError("norm", norm, f"{{setting}} is not a norm name; choose one of: {', '.join(NORMS)}.")
    name = norm.strip().lower()
    if name not in NORMS:
        raise ConfigError("norm", norm, f"{{setting}} is not a known norm; choose one of: {', '.join(NORMS)}.")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ConfigError("groups", groups, "{setting} must be a positive integer.")
    if NORMS[name].uses_groups:
        bad = sorted({w for w in NORM_WIDTHS if w % groups})
        if bad:
            ok = [g for g in range(1, 17) if all(w % g == 0 for w in NORM_WIDTHS)]
            raise ConfigError("groups", groups, f"{{setting}} does not divide the {bad[0]} channels of a "
                              f"norm layer; choose one of {', '.join(map(str, ok))}.")
    return name


def check_network(last_norm: bool, init: str, conv_bias: bool) -> None:
    """The network settings around the norm, with a message that names the fix."""
    for key, value in (("last_norm", last_norm), ("conv_bias", conv_bias)):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "{setting} must be true or false.")
    if init not in INITS:
        raise ConfigError("init", init, f"{{setting}} is not a known init; choose one of: {', '.join(INITS)}.")


def config_from_dict(cls, d: dict, what: str):
    """Build dataclass `cls` from `d`; unknown keys fail loudly instead of being dropped."""
    if not isinstance(d, dict):
        raise ArgumentError(f"the {what} config must be a dict of settings, not {type(d).__name__} {d!r:.60}.")
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError("keys", sorted(unknown),
                          f"unknown {what} config keys {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**d)


@dataclass
class NetConfig:
    """Everything needed to rebuild a Net; saved inside every checkpoint."""

    norm: str = "bn"
    groups: int = 4  # GN groups in every norm layer (8 channels -> 2 per group, 16 -> 4)
    dropout: float = 0.05  # probability, after every block
    mean: float = 0.1307  # input standardization, part of the model so checkpoints are self-contained
    std: float = 0.3081
    last_norm: bool = True  # the 1x1 block after global pooling has its norm (the exercise's network)
    init: str = "default"  # conv weights: PyTorch's default init, or "he"
    conv_bias: bool = False  # a learned bias in every conv

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return config_from_dict(cls, d, "model")

    def to_dict(self) -> dict:
        return asdict(self)


