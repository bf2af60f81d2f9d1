r"""Before a sudden LR raise: the moment to snapshot, and the losses that vouch for that snapshot.

An LR raised by hand, by a new stage or by a warm restart is the moment the risk of a run rises,
and the state just before it is the one a rollback of the raise wants. :class:`RaiseWatch` keeps
the LRs :math:`\eta_{t-R}, \dots, \eta_{t-1}` of the last :data:`RAISE_STEADY` (= :math:`R`) steps
and says that the next step's LR :math:`\eta` is a *sudden raise* when

.. math::

    \eta \ge \text{RAISE\_SNAPSHOT}\cdot\eta_{t-1}
    \quad\text{and}\quad \eta_{t-1} \le 1.5\,\eta_{t-R}

(doubled in one step after a stretch where it rose less than 1.5x: not a warmup's first steps, and
never a schedule's smooth changes). Every loss trained from the snapshot taken then is trained at
the raised LR, so the guard judges that snapshot by the losses of the healthy steps that *led* to
it as well (:attr:`~lrkit.doctor.snapshots.SnapshotRecord.pre`); the watch keeps the latest
:data:`~lrkit.doctor.snapshots.VERIFY` of them with their steps. Pure Python: the guard feeds it.

Example:
    >>> w = RaiseWatch()
    >>> for t in range(10):
    ...     w.note(t, loss=0.5, lr=0.1)
    >>> w.sudden(0.15), w.sudden(0.3)            # 1.5x is a schedule's business; 3x is a raise
    (False, True)
    >>> import numpy as np; w.sudden(np.float32(0.3)), w.sudden(None)
    (True, False)
    >>> [k for k, _ in w.led(3)]                 # the steps whose losses vouch for the state now
    [7, 8, 9]
"""
from __future__ import annotations

import collections
import math
import numbers

from lrkit.doctor.snapshots import VERIFY

__all__ = ["RaiseWatch", "RAISE_SNAPSHOT", "RAISE_STEADY"]

#: a next-step LR at least this many times the last step's is a sudden raise ...
RAISE_SNAPSHOT = 2.0
#: ... when it rose less than 1.5x over this many steps before (not a warmup)
RAISE_STEADY = 5


class RaiseWatch:
    """The last steps' LRs and log-losses (see the module docstring)."""

    def __init__(self) -> None:
        self.lrs: collections.deque[float] = collections.deque(maxlen=RAISE_STEADY)
        self.losses: collections.deque[tuple[int, float]] = collections.deque(maxlen=VERIFY)

    def note(self, step: int, loss: float, lr: float | None) -> None:
        """One observed step: its loss (non-finite ones are left out) and LR (``None``: not known)."""
        if isinstance(lr, numbers.Real) and math.isfinite(lr):
            self.lrs.append(float(lr))
        if math.isfinite(loss):
            self.losses.append((step, math.log(max(loss, 1e-300))))

    def sudden(self, lr: float | None) -> bool:
        """Is ``lr``, the next step's LR, a sudden raise? (``None``, NaN or inf: no.)"""
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
            return False
        lr = float(lr)
        lrs = self.lrs
        if len(lrs) < 2 or not lrs[-1] > 0:
            return False
        return lr >= RAISE_SNAPSHOT * lrs[-1] and lrs[-1] <= 1.5 * lrs[0]

    def led(self, n: int) -> list[tuple[int, float]]:
        """The (step, log-loss) of the last ``n`` (at most :data:`VERIFY`) finite losses."""
        return list(self.losses)[-min(n, VERIFY):] if n > 0 else []
