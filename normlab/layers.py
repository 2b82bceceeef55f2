"""Layers normlab writes itself, from their papers' definitions, where timm has no class for them."""

from __future__ import annotations

import torch
from torch import nn

FRN_EPS = 1e-6  # the fixed part of FRN's epsilon (Singh & Krishnan 2019; timm's default too)
FRN_LEARNED_EPS_INIT = 1e-4  # where the learned part starts: normlab's choice


class FilterResponseNormTluLearnedEps2d(nn.Module):
    """FRN + TLU with a learned epsilon: the FRN paper's remedy for 1x1 activation maps.

    y = max(gamma * x / sqrt(nu2 + eps) + beta, tau), nu2 = mean of x^2 over (H, W) per sample
    and channel, and eps = 1e-6 + |eps_l| with one learned scalar eps_l per layer. On a 1x1 map
    nu2 = x^2, so with a fixed tiny eps the layer outputs sign(x) and passes no gradient; a
    learned eps lets the network make the normalization gentle where it must be.
    timm's FilterResponseNormTlu2d has a fixed eps, so this entry is written here; the tests
    hold it equal to `normlab.norms.filter_response_norm` with that eps.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.tau = nn.Parameter(torch.zeros(num_channels))
        self.eps_learned = nn.Parameter(torch.tensor(FRN_LEARNED_EPS_INIT))

    @property
    def eps(self) -> torch.Tensor:
        return FRN_EPS + self.eps_learned.abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        nu2 = x.square().mean(dim=(2, 3), keepdim=True)
        x_hat = x * torch.rsqrt(nu2 + self.eps)
        return torch.maximum(x_hat * self.weight.view(shape) + self.bias.view(shape), self.tau.view(shape))
