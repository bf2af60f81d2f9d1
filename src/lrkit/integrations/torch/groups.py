"""The LRs of an optimizer's param groups as lrkit reads them: the finder and the autopilot keep
every group's ratio to the first LR above 0 (a group at LR 0 is frozen, and stays so), and the
doctor reads that group's LR as the run's."""
from __future__ import annotations

import math

import torch

from lrkit.scaling import lr_ignored

__all__ = ["check_guardable", "doctor_lr", "group_lr", "reference_lr", "set_group_lr"]


def group_lr(group: dict) -> float:
    """A param group's LR as a float (a tensor LR too); a clear error for one that has none."""
    lr = group["lr"]
    if lr is None:
        raise ValueError("the optimizer has a param group with lr=None: lrkit reads and sets the LR of every "
                         "group; build the optimizer with an LR (its value is only a starting point)")
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def set_group_lr(group: dict, value: float) -> None:
    """Set a param group's LR to ``value``, in place when it is a tensor: an optimizer that keeps its
    LR as a tensor (torchao's 8- and 4-bit optimizers refuse any other; torch's own with
    ``lr=torch.tensor(...)``, for ``torch.compile``) keeps the same tensor.

    Example:
        >>> g = {"lr": torch.tensor(0.1)}; t = g["lr"]; set_group_lr(g, 0.5); g["lr"] is t, float(t)
        (True, 0.5)
    """
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        lr.fill_(float(value))
    else:
        group["lr"] = value


def reference_lr(lrs: list[float]) -> float | None:
    """The LR the groups' ratios are taken to: the first finite one above 0 (a group at LR 0 is
    frozen, and stays so), ``None`` when there is none.

    Example:
        >>> reference_lr([0.0, 1e-3, 1e-2]), reference_lr([0.0])
        (0.001, None)
    """
    return next((lr for lr in lrs if math.isfinite(lr) and lr > 0), None)


def doctor_lr(groups: list[dict]) -> float | None:
    """The LR an optimizer runs at, as the doctor reads it: :func:`reference_lr` of its param groups
    (a group frozen at LR 0 says nothing about the run), group 0's when no group is above 0;
    ``None`` (unknown) when a group has no LR (``Adafactor(relative_step=True)`` keeps ``None``)."""
    if any(g.get("lr") is None for g in groups):
        return None
    lrs = [group_lr(g) for g in groups]
    ref = reference_lr(lrs)
    return lrs[0] if ref is None else ref


def check_guardable(optimizer: torch.optim.Optimizer, where: str) -> None:
    """A guard lowers the LR after a rollback: refuse, with the reason, an optimizer that ignores
    its param groups' LR (:func:`lrkit.scaling.lr_ignored`) before anything changes."""
    ignored = lr_ignored(optimizer)
    if ignored is not None:
        raise ValueError(f"{where}: the guard lowers the LR after a rollback, and {ignored}; or watch the run "
                         "without the guard (guard=False)")
