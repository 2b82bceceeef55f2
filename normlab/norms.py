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


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5) -> NormResult:
    """IN per sample and channel over (H, W): GroupNorm with one channel per group."""
    return group_norm(x, x.shape[1], weight, bias, eps)


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-6) -> NormResult:
    """LayerNorm2d (ConvNeXt's): per sample and pixel, over the C channels only."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return NormResult(_affine(x_hat, weight, bias), mean, var, x_hat)


def filter_response_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor,
                         eps: float = 1e-5) -> NormResult:
    """FRN + TLU: x / sqrt(mean(x^2 over H, W) + eps) per sample and channel (no mean is
    subtracted), gamma/beta, then the thresholded linear unit max(y, tau) as its activation."""
    nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
    x_hat = x / torch.sqrt(nu2 + eps)
    y = _affine(x_hat, weight, bias)
    return NormResult(torch.maximum(y, tau.reshape(1, -1, 1, 1)), torch.zeros_like(nu2), nu2, x_hat)


def evonorm_s0(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, v: torch.Tensor,
               eps: float = 1e-5) -> NormResult:
    """EvoNorm-S0: x * sigmoid(v x) / std, the std per sample and group over (C/G, H, W) (biased),
    then gamma/beta. Activation and normalization in one layer; no mean is subtracted."""
    n, c, h, w = x.shape
    var = x.reshape(n, num_groups, -1).var(dim=2, unbiased=False)
    std = torch.sqrt(var + eps).repeat_interleave(c // num_groups, dim=1).reshape(n, c, 1, 1)
    x_hat = x * torch.sigmoid(v.reshape(1, -1, 1, 1) * x) / std
    return NormResult(_affine(x_hat, weight, bias), torch.zeros_like(var), var, x_hat)


def standardize_weight(weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weight standardization: each output channel's filter to mean 0, variance 1 over
    (in channels, kh, kw), biased variance; the conv then uses this weight."""
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape_as(weight)
