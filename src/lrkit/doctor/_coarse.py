r"""Very long logs, read at a coarser grain: blocks of ``k`` consecutive rows become one point.

A per-step log of millions of rows holds far more points than the doctor needs to judge the
learning rate (its window is 50 points; a divergence, a plateau or a noise floor spans thousands
of steps in such a run), and feeding every row costs tens of microseconds each. So
:func:`~lrkit.doctor.diagnosis.diagnose` reads a log of more than :data:`MAX_POINTS` losses as
blocks of :math:`k = \lceil n / \text{MAX\_POINTS} \rceil` rows, each summarised with NumPy:

* **step**: the block's last step (so onsets are dated to within ``k`` steps);
* **loss** and **gradient norm**: the mean of the block's values (present rows only for the
  norm); the loss's noise is then :math:`\sqrt{k}` times smaller, which the doctor's own noise
  estimate measures as it does for any log;
* **LR, validation loss, metrics**: the block's last logged value (they are sparse or slowly
  changing);
* **non-finite values** are exact: the rows from the start of the block holding the first
  non-finite loss, gradient norm or validation loss up to that row are fed one by one, so the
  ``nan`` verdict names its real step.

What changes is the time scale: the doctor's window is 50 *points*, so it spans ``50 k`` steps.
Verdicts agree with the row-by-row pass where the problem is larger than a block (a divergence,
a plateau, a NaN, a run of outlier batches, tested on generated runs of each kind); a slow swing
with a period of a few hundred steps, which the row-by-row pass sees as repeated divergence, is
read as ``fluctuating`` at the coarser grain. ``diagnose(..., exact=True)`` (``lrkit diagnose
--exact``) feeds every row instead.

Example:
    >>> import numpy as np
    >>> steps, loss = np.arange(10), np.arange(10, dtype=float)
    >>> s, l, cols = coarsen(steps, loss, {"lr": (np.full(10, 0.1), np.ones(10, bool))}, 4)
    >>> s.tolist(), l.tolist(), cols["lr"][0].tolist()
    ([3, 7, 9], [1.5, 5.5, 8.5], [0.1, 0.1, 0.1])
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_POINTS", "rows_per_point", "coarsen", "first_non_finite"]

#: logs with more losses than this are read in blocks (``diagnose(..., exact=True)`` reads every row).
MAX_POINTS = 100_000

Columns = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (values, present mask)


def rows_per_point(n: int, max_points: int = MAX_POINTS) -> int:
    """``k``: 1 up to ``max_points`` losses, else :math:`\\lceil n / \\text{max\\_points} \\rceil`.

    Example:
        >>> rows_per_point(50_000), rows_per_point(2_000_000)
        (1, 20)
    """
    return 1 if n <= max_points else int(math.ceil(n / max_points))


def first_non_finite(loss: np.ndarray, cols: Columns) -> int | None:
    """The first row whose loss, logged gradient norm or logged validation loss is not finite."""
    bad = ~np.isfinite(loss)
    for name in ("grad_norm", "val_loss"):
        if name in cols:
            v, m = cols[name]
            bad |= m & ~np.isfinite(v)
    return int(np.argmax(bad)) if bad.any() else None


def _last_present(values: np.ndarray, mask: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block: the last value where ``mask`` holds, and whether there was one."""
    n = len(values)
    rows = np.flatnonzero(mask)  # the present rows, in order
    ends = np.append(starts[1:], n)
    j = np.searchsorted(rows, ends) - 1  # the last present row before each block's end ...
    has = j >= 0
    last = rows[np.maximum(j, 0)] if len(rows) else np.zeros(len(starts), dtype=np.int64)
    has &= last >= starts  # ... if it lies inside the block
    return np.where(has, values[last], np.nan), has


def coarsen(steps: np.ndarray, loss: np.ndarray, cols: Columns, k: int) -> tuple[np.ndarray, np.ndarray, Columns]:
    """Blocks of ``k`` rows as one point each (see the module docstring); finite rows assumed."""
    n = len(steps)
    starts = np.arange(0, n, k)
    counts = np.diff(np.append(starts, n))
    out_steps = steps[np.minimum(starts + k, n) - 1]
    out_loss = np.add.reduceat(loss, starts) / counts
    out: Columns = {}
    for name, (v, m) in cols.items():
        if name == "grad_norm":
            summed = np.add.reduceat(np.where(m, v, 0.0), starts)
            present = np.add.reduceat(m.astype(np.int64), starts)
            has = present > 0
            out[name] = (np.where(has, summed / np.maximum(present, 1), np.nan), has)
        else:
            out[name] = _last_present(v, m, starts)
    return out_steps, out_loss, out
