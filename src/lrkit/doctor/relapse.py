r"""After a rollback: a loss that goes straight back up is a new divergence, judged against the restored state.

A rollback into the doctor's opening stretch restarts the doctor (slow progress at a lowered LR
must not be judged against the failed one's losses), so a run that blows up again right after
it -- a bad data shard still coming, a network killed on the way -- would set the doctor's new
baseline on its dead plateau. :class:`RelapseWatch` keeps the restored state's best log-level
:math:`b` as the reference until a snapshot taken after the rollback is verified healthy. With
:math:`m` the median of the last :data:`~lrkit.doctor.snapshots.LEVEL` finite log-losses, the run
has relapsed when

.. math::

    m - b \ge \log(\text{RELAPSE\_RATIO}) \quad\text{for } \text{RELAPSE\_STEPS} \text{ steps in a row}

(the loss level sits at twice the restored state's best or more for 10 steps); the verdict is
``diverging``, onset the first of those steps. Pure Python: the guard feeds it.

Example:
    >>> import math
    >>> w = RelapseWatch()
    >>> w.arm(best=math.log(1.0), label=100)
    >>> recent = []
    >>> for t in range(101, 130):
    ...     recent.append(math.log(3.0))            # the level went straight back to 3x the best
    ...     d = w.check(t, 3.0, recent, newer_healthy=lambda label: False)
    ...     if d is not None:
    ...         break
    >>> d.verdict, d.step, t
    ('diverging', 105, 114)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from lrkit.doctor.core import Diagnosis
from lrkit.doctor.snapshots import LEVEL, SHORT

__all__ = ["RelapseWatch", "RELAPSE_RATIO", "RELAPSE_STEPS"]

#: after a rollback, a loss level this many times the restored state's best ...
RELAPSE_RATIO = 2.0
#: ... for this many steps is a new divergence
RELAPSE_STEPS = 10


class RelapseWatch:
    """The restored state's level as the reference after a rollback (see the module docstring)."""

    def __init__(self) -> None:
        self.ref: dict[str, float | int | None] | None = None

    def arm(self, *, best: float, label: int) -> None:
        """A rollback restored the snapshot of step ``label``, whose best log-level was ``best``."""
        self.ref = {"best": best, "above": None, "label": label}

    def check(self, step: int, loss: float, recent: Sequence[float],
              newer_healthy: Callable[[int], bool]) -> Diagnosis | None:
        """``diverging`` when the run relapsed at ``step`` (``recent``: the latest finite
        log-losses, oldest first; ``newer_healthy(label)``: a snapshot taken after ``label`` is
        verified healthy, which ends the watch)."""
        w = self.ref
        if w is None or not math.isfinite(w["best"]):
            return None
        if newer_healthy(int(w["label"])):
            self.ref = None  # the run is back on its feet
            return None
        recent = list(recent)[-LEVEL:]
        if len(recent) < SHORT or not math.isfinite(loss):
            return None
        level = sorted(recent)[len(recent) // 2]
        if level - w["best"] < math.log(RELAPSE_RATIO):
            w["above"] = None
            return None
        w["above"] = step if w["above"] is None else w["above"]
        if step - w["above"] + 1 < RELAPSE_STEPS:
            return None
        ratio = math.exp(level - w["best"])
        return Diagnosis(
            "diverging", w["above"], step, {"loss_ratio_to_best": ratio},
            ("lower the LR", "check the data of these steps"),
            f"After the rollback the loss level rose to {ratio:.3g}x the restored state's best and stayed there "
            f"since step {w['above']}.",
        )
