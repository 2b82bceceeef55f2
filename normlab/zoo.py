"""The norm zoo: every normalization normlab can put in its network, one registry entry each.

Shaped like timm's `create_norm_layer` / `create_norm_act_layer`: an entry names a builder
`(num_channels, groups) -> nn.Module` and the slot it fills in a block of the network:

- "norm":     Conv -> ReLU -> Norm -> Dropout   (the exercise's order)
- "norm_act": Conv -> NormAct -> Dropout        the layer carries its own activation (FRN + TLU,
                                                EvoNorm-S0), so the block has no ReLU
- "conv":     WSConv -> ReLU -> Norm -> Dropout the conv itself changes (weight standardization)

Each entry's layer is the code people use — torch.nn's norms and timm's classes (timm is a
dependency) — except FRN with a learned ε, which neither ships (`normlab.layers`); `normlab.norms`
writes each one out from its definition and the tests hold the two equal. CLI choices, validation, `normlab explain` and plot colours all read
this registry: adding a norm is adding an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the layers load with torch and timm when a network is built, not when a config is read
    from torch import nn

NORM, NORM_ACT, CONV = "norm", "norm_act", "conv"


def _conv(cin: int, cout: int, kernel: int, bias: bool = False) -> nn.Module:
    from torch import nn

    return nn.Conv2d(cin, cout, kernel, bias=bias)


def _std_conv(cin: int, cout: int, kernel: int, bias: bool = False) -> nn.Module:
    from timm.layers import StdConv2d

    # padding=0 keeps the exercise's "valid" convolutions (timm pads 'same' by default)
    return StdConv2d(cin, cout, kernel, padding=0, bias=bias)


def _torch(name: str, *args):
    """A builder of torch.nn.<name>(*args, ...)."""
    def build(*more):
        from torch import nn

        return getattr(nn, name)(*args, *more)
    return build


def _timm(name: str):
    def build(*args, **kwargs):
        import timm.layers

        return getattr(timm.layers, name)(*args, **kwargs)
    return build


def _frn_learned_eps(c: int) -> nn.Module:
    from .layers import FilterResponseNormTluLearnedEps2d

    return FilterResponseNormTluLearnedEps2d(c)


@dataclass(frozen=True)
class NormEntry:
    """One norm of the zoo: how to build it, where it goes, and how to show it."""

    name: str
    slot: str  # NORM, NORM_ACT or CONV (see the module docstring)
    build: Callable[[int, int], nn.Module]  # (num_channels, groups) -> the norm (or norm + activation)
    description: str
    colour: str  # one colour per norm in every figure
    source: str  # where the implementation comes from
    uses_groups: bool = False  # reads the `groups` setting
    batch_independent: bool = True  # a sample's output does not depend on the rest of its batch
    conv: Callable[..., nn.Module] = _conv  # (in, out, kernel, bias) -> the block's conv

    @property
    def has_relu(self) -> bool:
        return self.slot != NORM_ACT


def _entries(*entries: NormEntry) -> dict[str, NormEntry]:
    return {e.name: e for e in entries}


NORMS: dict[str, NormEntry] = _entries(
    NormEntry("bn", NORM, lambda c, g: _torch("BatchNorm2d")(c),
              "BatchNorm2d: per channel over (N, H, W); running statistics in eval",
              "tab:blue", "torch.nn.BatchNorm2d", batch_independent=False),
    NormEntry("gn", NORM, lambda c, g: _torch("GroupNorm")(g, c),
              "GroupNorm: per sample over each group of channels and (H, W)",
              "tab:orange", "torch.nn.GroupNorm", uses_groups=True),
    NormEntry("ln", NORM, lambda c, g: _torch("GroupNorm")(1, c),
              "LayerNorm as GroupNorm(1, C): per sample over (C, H, W)",
              "tab:green", "torch.nn.GroupNorm(1, C)"),
    NormEntry("in", NORM, lambda c, g: _torch("GroupNorm")(c, c),
              "InstanceNorm as GroupNorm(C, C): per sample per channel over (H, W); on the 1x1 maps after "
              "global pooling it outputs beta whatever the input, so this network cannot learn with it",
              "tab:purple", "torch.nn.GroupNorm(C, C)"),
    NormEntry("none", NORM, lambda c, g: _torch("Identity")(),
              "no normalization", "black", "torch.nn.Identity"),
    NormEntry("ws-gn", CONV, lambda c, g: _torch("GroupNorm")(g, c),
              "weight-standardized conv + GroupNorm (Qiao et al. 2019)",
              "tab:red", "timm.layers.StdConv2d + torch.nn.GroupNorm", uses_groups=True, conv=_std_conv),
    NormEntry("frn", NORM_ACT, lambda c, g: _timm("FilterResponseNormTlu2d")(c),
              "Filter Response Norm + TLU: per sample per channel, x / rms over (H, W), then max(., tau) "
              "(Singh & Krishnan 2019); on 1x1 maps x / rms is sign(x), whose gradient vanishes",
              "tab:brown", "timm.layers.FilterResponseNormTlu2d"),
    NormEntry("frn-eps", NORM_ACT, lambda c, g: _frn_learned_eps(c),
              "Filter Response Norm + TLU with a learned eps (1e-6 + |eps_l|, one per layer): the FRN paper's "
              "remedy for 1x1 maps, where a fixed tiny eps makes x / rms the sign of x",
              "tab:olive", "normlab.layers.FilterResponseNormTluLearnedEps2d"),
    NormEntry("evonorm-s0", NORM_ACT, lambda c, g: _timm("EvoNorm2dS0")(c, groups=g),
              "EvoNorm-S0: x * sigmoid(v x) / group std over (C/G, H, W) (Liu et al. 2020)",
              "tab:pink", "timm.layers.EvoNorm2dS0", uses_groups=True),
    NormEntry("ln2d", NORM, lambda c, g: _timm("LayerNorm2d")(c),
              "LayerNorm2d: per sample per pixel over C (as in ConvNeXt)",
              "tab:cyan", "timm.layers.LayerNorm2d"),
)


def create_norm_layer(name: str, num_channels: int, groups: int = 4) -> nn.Module:
    """The norm (or norm + activation) layer `name` for `num_channels` channels, as timm's helper."""
    return NORMS[name].build(num_channels, groups)


def colour(name: str) -> str:
    """The plot colour of norm `name`; gray for a name the registry does not know."""
    entry = NORMS.get(name)
    return entry.colour if entry else "gray"
