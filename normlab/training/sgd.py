"""torch.optim.SGD's update for K members stacked along a first axis, each with its own settings.

vmap needs a functional update and torch's functional `sgd` takes one LR for all parameters, so
this is the one implementation the grouped step uses; tests hold it equal to torch.optim.SGD.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def stacked_sgd(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor],
                lr: torch.Tensor, beta: torch.Tensor, weight_decay: torch.Tensor | None, decayed: set[str]) -> None:
    """torch.optim.SGD's step (no dampening, no Nesterov), in place, member k with lr[k], momentum
    beta[k] and weight decay weight_decay[k] on the parameters named in `decayed`:
    g += wd * p; buf = beta * buf + g; p -= lr * buf. At momentum 0 (the one-cycle schedule's low
    point when momentum is 0.05) SGD leaves the buffer alone and steps along g: so does this,
    member by member, without a branch on the host. A member at lr 0 does not move."""
    still = beta == 0
    for n, p in params.items():
        g = grads[n]
        shape = (-1, *([1] * (p.dim() - 1)))
        if weight_decay is not None and n in decayed:
            g = g.add(p * weight_decay.view(shape))
        moved = momentum[n] * beta.view(shape) + g
        keep = still.view(shape)
        momentum[n].copy_(torch.where(keep, momentum[n], moved))
        p.sub_(lr.view(shape) * torch.where(keep, g, moved))
