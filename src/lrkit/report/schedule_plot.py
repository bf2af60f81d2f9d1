"""The schedule plot: learning rate against optimizer step.

Takes an ``ax`` and returns it; imports matplotlib only when called.

Example:
    >>> from lrkit.schedules import cosine, warmup
    >>> ax = plot_schedule(warmup(cosine(0.1, 900), 100))
    >>> ax.get_xlabel(), len(ax.lines[0].get_xdata())
    ('optimizer step', 1001)
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_schedule"]

#: steps drawn for a schedule without an end when ``steps`` is not given
DEFAULT_OPEN_ENDED_STEPS = 1000


def plot_schedule(schedule: Any, ax: Any = None, *, steps: int | None = None, log: bool = False,
                  label: str | None = None, **kw: Any) -> Any:
    r"""Draw ``schedule`` on ``ax`` for steps ``0 .. steps - 1`` and return ``ax``.

    Args:
        schedule: a :class:`~lrkit.schedules.Schedule`.
        ax: a matplotlib ``Axes``; a new figure is created when ``None``.
        steps: how many steps to draw (whole number >= 1). Default: ``total_steps + 1``
            (so the final value shows), or 1000 for a schedule without an end.
        log: use a logarithmic LR axis (steps where the LR is 0 are not drawn then).
        label: the legend label; default: the schedule's spec.
        **kw: passed to ``ax.plot`` (e.g. ``color``, ``linewidth``).

    Returns:
        ``ax``.
    """
    if steps is None:
        total = schedule.total_steps
        steps = DEFAULT_OPEN_ENDED_STEPS if total is None else int(total) + 1
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"plot_schedule: steps must be a whole number >= 1, got {steps!r}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4))
    t = np.arange(int(steps))
    lrs = schedule(t)
    spec = schedule.to_spec()
    if label is None:
        label = spec if len(spec) <= 80 else spec[:77] + "..."
    if log:
        lrs = np.where(lrs > 0, lrs, np.nan)
        ax.set_yscale("log")
    ax.plot(t, lrs, label=label, **kw)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return ax
