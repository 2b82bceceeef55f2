"""The one network of normlab: a < 8k-parameter CNN whose normalization is an argument.

Architecture (the original exercise's, docs/FACTS.md), each block Conv3x3 (no bias) -> ReLU -> Norm -> Dropout:

    28x28x1 -> block 1->8 -> block 8->16 -> MaxPool2 -> Conv1x1 16->8
            -> block 8->16 -> block 16->16 -> block 16->16 -> AvgPool to 1x1
            -> block(1x1) 16->16 -> Conv1x1 16->10 -> log-softmax

The norm is looked up in one registry (`normlab.zoo.NORMS`): its entry builds the block's conv
and norm and says whether the norm carries its own activation, so the network never branches
on the norm's name. Blocks have named children (`conv`, `act`, `norm`, `drop`); state dicts of
earlier normlab versions (children numbered 0-3) are renamed on load.

Three settings change the network around the norm, each defaulting to the exercise's network:
`last_norm` (False: the 1x1 block after global pooling is a plain Conv -> ReLU -> Dropout, as the
GN and FRN papers leave the layers after pooling unnormalized), `init` ("he": Kaiming-normal conv
weights, fan-in, ReLU gain, zero biases, instead of PyTorch's default) and `conv_bias` (a learned
bias in every conv).

"ln" means GroupNorm with one group: each sample normalized over (C, H, W) with a
per-channel gamma/beta. This is the definition the GroupNorm paper (Wu & He, 2018) uses
for LN in conv nets, and what the original exercise used. `nn.LayerNorm([C, H, W])` would normalize the
same elements but learn a gamma/beta per *element* (2*C*H*W parameters: 21,632 for the
first layer alone), breaking the < 8k budget and tying the model to one input size; the
other "layer norm" of conv nets, LayerNorm2d (each pixel over C), normalizes different
elements and is a different method.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .network import (  # noqa: F401
    INITS,
    LAYERS,
    NORM_WIDTHS,
    NetConfig,
    check_dropout,
    check_network,
    check_norm,
    config_from_dict,
)
from .zoo import NORMS, NormEntry


def _capturing(x: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured, where a host-side check cannot run."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def dropout_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """normlab's dropout mask: 0 for a dropped element, 1/(1-p) for a kept one.

    One 64-bit random word gives four 16-bit draws; of each we keep 15 bits (the top draw of a
    word has only 15 random bits), and an element is dropped when they fall below
    round(p * 32768). So p is quantized to 1/32768 (0.05 -> 0.049988). Cheaper than
    `bernoulli_`, which took 28% of a CPU training step.
    """
    n = 1
    for d in shape:
        n *= d
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)
    bits = words.view(torch.int16)[:n].view(shape).bitwise_and_(0x7FFF)
    threshold = round(p * 32768)
    return torch.where(bits >= threshold, 32768 / (32768 - threshold), 0.0).to(dtype)


class Dropout(nn.Dropout):
    """nn.Dropout with normlab's cheaper mask (`dropout_mask`) on CPU; eval mode is the identity.

    On CUDA, nn.Dropout's own path. Inside the grouped executor's vmapped step (`normlab.grouped`)
    each member's mask is drawn outside, from that member's own generator, and set as `mask`, so a
    member's masks are those of its separate run whatever group it trains in.
    """

    mask: torch.Tensor | None = None  # set by normlab.grouped for one vmapped forward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        if self.mask is not None:
            return x * self.mask
        if x.is_cuda:
            return super().forward(x)
        return x * dropout_mask(tuple(x.shape), self.p, x.dtype, x.device)


class Block(nn.Sequential):
    """conv -> act -> norm -> drop, from a zoo entry: by default the conv has no bias (the norm's
    beta, or nothing, follows); `act` is ReLU, or Identity when the norm carries its own activation."""

    def __init__(self, cin: int, cout: int, kernel: int, entry: NormEntry, groups: int, dropout: float,
                 bias: bool = False):
        super().__init__(OrderedDict(
            conv=entry.conv(cin, cout, kernel, bias),
            act=nn.ReLU() if entry.has_relu else nn.Identity(),
            norm=entry.build(cout, groups),
            drop=Dropout(dropout),
        ))


# Blocks of normlab <= 0.1 had numbered children: features.<i>.<0-3>.<param> (conv, act, norm, drop).
_OLD_BLOCK_KEY = re.compile(r"^(.*features\.\d+)\.([0-3])\.(.+)$")
_OLD_CHILDREN = ("conv", "act", "norm", "drop")


def _rename_old_block_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        m = _OLD_BLOCK_KEY.match(key)
        if m:
            state_dict[f"{m[1]}.{_OLD_CHILDREN[int(m[2])]}.{m[3]}"] = state_dict.pop(key)


def build_layers(entry: NormEntry, groups: int, dropout: float, last_norm: bool = True,
                 conv_bias: bool = False) -> list[nn.Module]:
    """The modules of `LAYERS`, in order; without `last_norm`, the blocks after global pooling are plain."""
    layers, pooled = [], False
    for kind, *shape in LAYERS:
        if kind == "block":
            plain = pooled and not last_norm
            layers.append(Block(*shape, NORMS["none"] if plain else entry, groups, dropout, bias=conv_bias))
        elif kind == "conv":
            layers.append(nn.Conv2d(*shape, bias=conv_bias))
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(nn.AdaptiveAvgPool2d(1))
            pooled = True
    return layers


def he_init(model: nn.Module) -> None:
    """He et al. (2015): conv weights ~ N(0, 2 / fan_in), so a conv + ReLU keeps its input's scale;
    biases start at 0. Draws from torch's global generator, in module order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Net(nn.Module):
    """The original exercise's CNN (7,704 parameters with bn/gn/ln; every zoo norm's count is in the README). Input: float images in [0, 1], (N, 1, 28, 28)."""

    check_range = True  # eval-mode inputs checked to lie in [0, 1] (off inside torch.func.vmap)

    def __init__(self, norm: str = "bn", groups: int = 4, dropout: float = 0.05,
                 mean: float = 0.1307, std: float = 0.3081, last_norm: bool = True, init: str = "default",
                 conv_bias: bool = False):
        super().__init__()
        norm = check_norm(norm, groups)
        check_dropout(dropout)
        check_network(last_norm, init, conv_bias)
        for key, value in (("mean", mean), ("std", std)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or abs(value) > 1e30:
                raise ConfigError(key, value, "{setting} must be a finite number (the training images' pixel "
                                  "statistic in [0, 1]).")
        if std <= 1e-30:
            raise ConfigError("std", std, "{setting} must be positive: the images are divided by it.")
        self.config = NetConfig(norm, groups, dropout, mean, std, last_norm, init, conv_bias)
        self.register_buffer("input_mean", torch.tensor(float(mean)))
        self.register_buffer("input_std", torch.tensor(float(std)))
        self.features = nn.Sequential(*build_layers(NORMS[norm], groups, dropout, last_norm, conv_bias))
        if init == "he":
            he_init(self)
        self.register_load_state_dict_pre_hook(_rename_old_block_keys)

    def blocks(self) -> list[tuple[str, Block]]:
        """("block1", ...), ... in order: the layers that hold a norm."""
        return [(f"block{i + 1}", b) for i, b in enumerate(m for m in self.features if isinstance(m, Block))]

    def _as_unit_images(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] images (as `normlab.data.load` returns them) become floats in [0, 1];
        (N, 28, 28) gains its channel axis. Other integer types, or eval-mode floats outside
        [0, 1], are refused: a silently wrong answer is worse than an error."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Net takes a torch.Tensor of images, got {type(x).__name__}; convert it with "
                            "torch.as_tensor.")
        if x.dtype == torch.uint8:
            x = x.to(self.input_mean.dtype).div(255)
        elif not x.is_floating_point():
            raise TypeError(f"Net takes float images in [0, 1] or uint8 images in [0, 255], got {x.dtype}.")
        elif x.dtype != self.input_mean.dtype:
            x = x.to(self.input_mean.dtype)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"Net takes images of shape (N, 1, 28, 28) or (N, 28, 28), got {tuple(x.shape)}.")
        if not self.training and self.check_range and x.numel() and not _capturing(x):
            _check_unit_range(x)
        return x

    @classmethod
    def from_config(cls, config: NetConfig | dict) -> Net:
        if not isinstance(config, NetConfig):
            config = NetConfig.from_dict(config)  # a dict of settings; anything else is a worded ValueError
        return cls(**config.to_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_unit_images(x)
        x = (x - self.input_mean) / self.input_std
        return F.log_softmax(self.features(x).flatten(1), dim=1)


def _check_unit_range(x: torch.Tensor) -> None:
    lo, hi = x.aminmax()
    if not (lo.item() >= -1e-3 and hi.item() <= 1 + 1e-3):  # NaN fails this too
        raise ValueError(f"Net takes float images in [0, 1], got values from {lo.item():g} to {hi.item():g} "
                         "(NaN included, if any); divide [0, 255] images by 255, or pass them as uint8.")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
