"""The schedule families a search can try: a peak LR and a run length make a :class:`~lrkit.schedules.Schedule`.

Example:
    >>> s = schedule_for("warmup_cosine", 0.1, 100)
    >>> round(float(s(10)), 6), round(float(s(99)), 5)
    (0.1, 3e-05)
"""
from __future__ import annotations

from typing import Any, Callable

from lrkit import schedules

__all__ = ["SCHEDULE_FAMILIES", "schedule_for"]

SCHEDULE_FAMILIES = ("constant", "cosine", "warmup_cosine", "one_cycle", "linear")


def schedule_for(family: Any, lr: float, total_steps: int) -> Callable[[int], float]:
    """The schedule of ``family`` peaking at ``lr`` over ``total_steps`` steps.

    ``constant``; ``cosine`` (to 0); ``warmup_cosine`` (10% linear warmup, then cosine to 0);
    ``one_cycle`` (torch's ``OneCycleLR`` with ``max_lr=lr``); ``linear`` (decay to 0); or a
    callable ``family(lr, total_steps) -> schedule``.
    """
    if callable(family):
        return family(lr, total_steps)
    if family is None or family == "constant":
        return schedules.constant(lr)
    if family == "cosine":
        return schedules.cosine(base_lr=lr, total_steps=total_steps)
    if family == "warmup_cosine":
        warm = max(1, total_steps // 10)
        return schedules.warmup(schedules.cosine(base_lr=lr, total_steps=max(1, total_steps - warm)), warmup_steps=warm)
    if family == "one_cycle":
        return schedules.one_cycle(max_lr=lr, total_steps=total_steps)
    if family == "linear":
        return schedules.linear(start_lr=lr, end_lr=0.0, total_steps=total_steps)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_FAMILIES)} or a callable (lr, total_steps) -> "
                     f"schedule, got {family!r}")
