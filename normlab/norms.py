"""Reference BatchNorm, LayerNorm and GroupNorm written out from their definitions.

These are for teaching and checking, not training: `normlab explain` prints their
intermediate values, and the tests prove they equal `torch.nn` to float precision.
Every function works on x of shape (N, C, H, W) and returns the output together with
the statistics it used, so a reader can see which elements each mean/variance covers.

    y = (x - mean) / sqrt(var + eps) * gamma + beta      (var is the biased variance)

- BN: one mean/var per channel, over (N, H, W): the batch couples samples together.
  In eval mode the running averages are used instead; in train mode they are updated with
  running = (1 - momentum) * running + momentum * batch_stat, using the *unbiased* variance.
- GN: one mean/var per (sample, group of C/G channels), over (C/G, H, W).
- LN (as in the GroupNorm paper, and in normlab): GN with one group, i.e. per sample over (C, H, W).
gamma and beta are per channel in all three, so each layer has 2*C parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NormResult:
    output: torch.Tensor
    mean: torch.Tensor  # the statistics, shaped to broadcast against x's groups
    var: torch.Tensor
    normalized: torch.Tensor  # (x - mean) / sqrt(var + eps), before gamma/beta


def _affine(x_hat: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    shape = (1, x_hat.shape[1], 1, 1)
    y = x_hat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> NormResult:
    """BN per channel over (N, H, W). In training, updates running stats in place."""
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        if running_mean is not None and running_var is not None:
            count = x.numel() / x.shape[1]
            unbiased = var * count / max(count - 1, 1)
            running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
    else:
        mean, var = running_mean, running_var
    shape = (1, x.shape[1], 1, 1)
    x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return NormResult(_affine(x_hat, weight, bias), mean, var, x_hat)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> NormResult:
    """GN per sample and group over (C/G, H, W). Same in train and eval: no running stats."""
    n, c, h, w = x.shape
    if c % num_groups:
        raise ValueError(f"{num_groups} groups do not divide {c} channels")
    grouped = x.reshape(n, num_groups, c // num_groups * h * w)
    mean = grouped.mean(dim=2)
    var = grouped.var(dim=2, unbiased=False)
    x_hat = ((grouped - mean[..., None]) / torch.sqrt(var[..., None] + eps)).reshape(n, c, h, w)
    return NormResult(_affine(x_hat, weight, bias), mean, var, x_hat)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> NormResult:
    """LN per sample over (C, H, W), with per-channel gamma/beta: GroupNorm with one group."""
    return group_norm(x, 1, weight, bias, eps)
