"""Batched random affine augmentation: one `affine_grid` + `grid_sample` for a whole batch.

The original exercise applied torchvision's RandomRotation and RandomAffine image by image on PIL
images in DataLoader workers; that per-sample path is what made it slow (docs/FACTS.md). We
keep the same family of geometric distortions (rotation, shear, scale, translation) and draw
one set of parameters per image from a seeded generator, so augmentation is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    degrees: float = 7.0  # rotation, uniform in [-degrees, degrees]
    translate: float = 0.1  # fraction of the image size, per axis
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0  # x-shear angle in degrees, uniform in [-shear, shear]

    def to_dict(self) -> dict:
        return asdict(self)


def random_affine(x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Apply an independent random rotation/shear/scale/translation to each image of x (N, C, H, W).

    Pixels sampled from outside the image are 0 (background), bilinear interpolation.
    """
    n = x.shape[0]
    dev = x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        r = torch.rand(n, generator=generator, device=generator.device)
        return (low + (high - low) * r).to(dev, x.dtype)

    angle = uniform(-cfg.degrees, cfg.degrees) * (math.pi / 180)
    shear = uniform(-cfg.shear, cfg.shear) * (math.pi / 180)
    scale = uniform(*cfg.scale)
    # affine_grid works in [-1, 1] coordinates, so a shift of t (fraction of size) is 2t.
    tx = uniform(-cfg.translate, cfg.translate) * 2
    ty = uniform(-cfg.translate, cfg.translate) * 2
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # theta maps output coordinates to input coordinates: rotation @ shear, divided by scale.
    theta = torch.stack(
        [
            torch.stack([cos, cos * tan - sin, tx], dim=1),
            torch.stack([sin, sin * tan + cos, ty], dim=1),
        ],
        dim=1,
    ) / scale.view(n, 1, 1)
    theta[:, :, 2] *= scale.view(n, 1)  # keep the translation unscaled
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
