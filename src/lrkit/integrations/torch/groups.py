"""The LRs of an optimizer's param groups as lrkit reads them: the finder and the autopilot keep
every group's ratio to the first LR above 0 (a group at LR 0 is frozen, and stays so), and the
doctor reads that group's LR as the run's."""
from __future__ import annotations

import math

import torch

__all__ = ["doctor_lr", "group_lr", "reference_lr"]


def group_lr(group: dict) -> float:
    """A param group's LR as a float (a tensor LR too)."""
    lr = group["lr"]
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def reference_lr(lrs: list[float]) -> float | None:
    """The LR the groups' ratios are taken to: the first finite one above 0 (a group at LR 0 is
    frozen, and stays so), ``None`` when there is none.

    Example:
        >>> reference_lr([0.0, 1e-3, 1e-2]), reference_lr([0.0])
        (0.001, None)
    """
    return next((lr for lr in lrs if math.isfinite(lr) and lr > 0), None)


def doctor_lr(groups: list[dict]) -> float:
    """The LR an optimizer runs at, as the doctor reads it: :func:`reference_lr` of its param groups
    (a group frozen at LR 0 says nothing about the run), group 0's when no group is above 0."""
    lrs = [group_lr(g) for g in groups]
    ref = reference_lr(lrs)
    return lrs[0] if ref is None else ref
