"""The original exercise's training pipeline, reproduced faithfully as the baseline for `normlab bench`
(shipped in the package, so bench runs from an installed wheel too).

Per-sample torchvision transforms on PIL images inside a 2-worker DataLoader (docs/FACTS.md):
RandomRotation(7, fill=1), RandomAffine(7, shear=10, translate=(0.1, 0.1), scale=(0.8, 1.2)),
ColorJitter(0.4, 0.4, 0.4, 0.1), ToTensor, Normalize(0.1307, 0.3081); batch 128, shuffled;
SGD with momentum, OneCycleLR stepped per batch, NLL loss plus L1 over every parameter.
The model is normlab's Net with torch's own nn.Dropout, as the original exercise had.

    python -m normlab.baseline --seconds 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import transforms

from .data import data_root, fetch
from .model import Net

SEED_TRANSFORM = transforms.Compose([
    transforms.RandomRotation((-7.0, 7.0), fill=(1,)),
    transforms.RandomAffine(degrees=7, shear=10, translate=(0.1, 0.1), scale=(0.8, 1.2)),
    transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    transforms.ToTensor(),
    transforms.Normalize((0.1307,), (0.3081,)),
])


def seed_model() -> nn.Module:
    """Net with nn.Dropout (the original's) and standardization done by the transform, not the model."""
    model = Net(norm="bn", mean=0.0, std=1.0)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ == "Dropout":
                setattr(module, child_name, nn.Dropout(child.p))
    return model


def measure(seconds: float, warmup_batches: int = 5, l1: float = 1e-4) -> float:
    """Training images per second of the seed pipeline over about `seconds`, after warm-up."""
    fetch("mnist")
    dataset = torchvision.datasets.MNIST(root=str(data_root()), train=True, download=False,
                                         transform=SEED_TRANSFORM)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2)
    model = seed_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=20 * len(loader))
    images, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == warmup_batches:
            images, start = 0, time.perf_counter()
        out = model(x)
        loss = F.nll_loss(out, y) + l1 * sum(p.abs().sum() for p in model.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        images += len(y)
        if start is not None and time.perf_counter() - start >= seconds:
            break
    return images / (time.perf_counter() - start)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    print(f"seed pipeline: {measure(p.parse_args().seconds):,.0f} images/s")
