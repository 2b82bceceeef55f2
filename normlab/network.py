"""The network's plan and its settings, without torch: what a config needs to check a norm, a group
count or an init, so `normlab --help` and config parsing stay light (`normlab.model` builds it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ConfigError
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


def check_norm(norm: str, groups: int = 4) -> str:
    """Normalize and validate a norm name and group count, with a message that names the fix."""
    name = str(norm).strip().lower()
    if name not in NORMS:
        raise ConfigError("norm", norm, f"{{setting}} is not a known norm; choose one of: {', '.join(NORMS)}.")
    if NORMS[name].uses_groups:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ConfigError("groups", groups, "{setting} must be a positive integer.")
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


