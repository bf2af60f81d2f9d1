"""Lower a torch run's LR in place, schedulers included (``on_converged="lower_lr"``)."""
from __future__ import annotations

from typing import Any, Iterable

import torch

__all__ = ["scale_lrs"]


def scale_lrs(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any], factor: float) -> None:
    """Multiply the LR of every param group by ``factor``, and the base LRs of its schedulers.

    A scheduler that recomputes the LR from its ``base_lrs`` (``LambdaLR``, ``CosineAnnealingLR``,
    ...) would undo a change of the param groups alone; a chainable one multiplies the group's
    current LR. Both follow the lowered LR from the next step on. ``initial_lr`` (set by
    schedulers) is scaled too, tensor LRs in place.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        >>> scale_lrs(opt, [sched], 0.1)
        >>> opt.step(); sched.step(); round(opt.param_groups[0]["lr"], 6)
        0.01
    """
    for g in optimizer.param_groups:
        for k in ("lr", "initial_lr"):
            if k not in g:
                continue
            if isinstance(g[k], torch.Tensor):
                g[k].mul_(factor)
            else:
                g[k] = g[k] * factor
    for s in schedulers:
        if isinstance(getattr(s, "base_lrs", None), list):
            s.base_lrs = [b * factor for b in s.base_lrs]
        if isinstance(getattr(s, "_last_lr", None), list):
            s._last_lr = [g["lr"] for g in optimizer.param_groups]
