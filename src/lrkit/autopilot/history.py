r"""A bounded record of the run the autopilot flew: what its report plots (NumPy only).

Every step's training loss and LR go in; a run of any length keeps at most ``capacity`` of them,
evenly spaced: rows are kept every :math:`k`-th step, and when the record is full every other
row is dropped and :math:`k` doubles (so a run of :math:`n` steps keeps between ``capacity/2``
and ``capacity`` rows, every :math:`k`-th with :math:`k` the smallest power of two that fits).
Validation losses are sparse and are kept apart, thinned the same way only when they too fill
``capacity``. The record is part of :meth:`Autopilot.state_dict <lrkit.autopilot.pilot.Autopilot.state_dict>`
(plain lists), so a resumed run's report shows the whole run.

Example:
    >>> h = RunHistory(capacity=8)
    >>> for t in range(20):
    ...     h.add(t, 1.0 / (t + 1), 0.1, val_loss=0.5 if t % 10 == 9 else None)
    >>> h.stride, h.steps
    (4, [0, 4, 8, 12, 16])
    >>> h.val_steps, h.val_losses
    ([9, 19], [0.5, 0.5])
"""
from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["RunHistory"]


class RunHistory:
    """Training loss and LR every ``stride`` steps (at most ``capacity`` rows), and validation losses."""

    def __init__(self, capacity: int = 2048) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"RunHistory: capacity must be an int >= 2, got {capacity!r}")
        self.capacity = capacity
        self.stride = 1
        self.seen = 0  # steps offered to add()
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []

    def add(self, step: int, loss: float, lr: float, val_loss: float | None = None) -> None:
        """Record one optimizer step (kept if it falls on the stride)."""
        if self.seen % self.stride == 0:
            self.steps.append(int(step))
            self.losses.append(float(loss))
            self.lrs.append(float(lr))
            if len(self.steps) > self.capacity:
                self.steps, self.losses, self.lrs = self.steps[::2], self.losses[::2], self.lrs[::2]
                self.stride *= 2
        self.seen += 1
        if val_loss is not None:
            self.val_steps.append(int(step))
            self.val_losses.append(float(val_loss))
            if len(self.val_steps) > self.capacity:
                self.val_steps, self.val_losses = self.val_steps[::2], self.val_losses[::2]

    def __len__(self) -> int:
        return len(self.steps)

    def state(self) -> dict[str, Any]:
        """Plain JSON types (non-finite losses as ``None``)."""
        def fin(xs: list[float]) -> list[float | None]:
            return [x if math.isfinite(x) else None for x in xs]

        return {"capacity": self.capacity, "stride": self.stride, "seen": self.seen, "steps": list(self.steps),
                "losses": fin(self.losses), "lrs": fin(self.lrs), "val_steps": list(self.val_steps),
                "val_losses": fin(self.val_losses)}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "RunHistory":
        """The record :meth:`state` described."""
        def num(xs: Any) -> list[float]:
            return [math.nan if x is None else float(x) for x in xs]

        h = cls(int(s["capacity"]))
        h.stride, h.seen = int(s["stride"]), int(s["seen"])
        h.steps, h.losses, h.lrs = [int(v) for v in s["steps"]], num(s["losses"]), num(s["lrs"])
        h.val_steps, h.val_losses = [int(v) for v in s["val_steps"]], num(s["val_losses"])
        return h
