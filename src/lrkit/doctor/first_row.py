r"""A short log whose first row holds a blow-up: read as a whole, after the row-by-row doctor.

The doctor measures a rise against :math:`L_0`, the loss of the untrained model. A per-step log
gives it; a coarse log (an epoch, or the mean of 10 or 50 steps per row) does not: its first row
is the *average* over an interval in which the LR was already at work, and when the LR is far too
high that average holds the blow-up (a Hugging Face run at AdamW LR 10 logged 7160 for its first
10 steps, then 64, 17, 50 ... 2.3 at chance). Scaled by that row, every later spike looks small and
the fall from it looks like progress: the run read healthy.

So a log of ``4 <= n < 50`` rows (the doctor's coarse settings) whose first row is at least
:math:`\rho^2` times the median of the rest, :math:`\ell_1 \ge \rho^2\,\operatorname{median}(\ell_{2..n})`
(above the loss floor), is read again, as a whole, for three shapes of a blow-up:

* **stuck**: the rest never progressed -- no running median of :math:`k = \min(5, \lfloor (n-1)/2 \rfloor)`
  rows went ``flat_tol`` below its first :math:`k` (a Keras epoch at mean loss 16, then epochs
  at chance: units saturated or died);
* **spiked**: the first row at least :math:`\rho^4` (16) times the second, and a row of the rest
  at least :math:`\max(\rho, e^{z\sigma/2})` times *both* its neighbours (:math:`\sigma` the
  robust noise of the rest's log-differences, :math:`z` = ``noise_z``), not at an LR raised from
  the row before. A row is an average of many steps, so one bad batch cannot double it; and a
  healthy decay that falls :math:`r`-fold per interval gives two first rows :math:`r` apart, so 16x
  takes a loss falling by orders of magnitude within the first interval (a fast learner's first
  epochs fall 2-5x: RMSprop at a too-high 0.1 on the digits logged 1.48, then 0.86, and its later
  spikes are not a blow-up at the start);
* **rising**: the second row above the first (the loss rose over the first two intervals, both
  far above where it went), the LR not raised between them (a warmup).

A healthy run that learns fast also has a first row far above the rest (the untrained model's
loss is in it), but its rest falls smoothly: none of the three shapes. Each is reported as
``diverging`` at the first row, even if the run recovered since: the LR is too high for the start
of training (lower it, add warmup).

**Stalled since the first row.** A blow-up averaged over a long first interval lifts it less: Adam
at LR 0.5 on the digits, logged per epoch by Keras' ``TensorBoard`` callback, averaged 4.47, 3.90
and 5.34 over its first epoch (three seeds) and sat at 2.35, 2.36 and 2.08 after it (1.9x, 1.65x,
2.6x) -- dead, at the loss of a constant prediction, its validation loss never better than its
first evaluation, read *converged* ("stop training"). Adam keeps moving the weights that still get
a gradient, so the loss drifts by 1e-4 an epoch and is not frozen either. So a first row at least
:data:`~lrkit.doctor.signs.early_blowup.LIFT` (1.5) times the rest's median is read as stalled
when, after it, *nothing* improved: the rest's running medians (as for **stuck**) and the
validation losses from the first evaluation on (at least :data:`MIN_VAL_EVALS`) fell less than
:data:`~lrkit.doctor.signs.flat.VAL_SWING_PROGRESS` (5%, the doctor's "learned" threshold), with
the LR over the first half of the log never under half the first row's (a cut that stopped the run
early is not a stall; a linear decay over the whole run, the Trainer's default, leaves the first half
at a comparable LR). A run
that learns -- even a linear model that has nearly converged in its first epoch still gains a few
percent after it -- or overfits (its training loss falls) is not stalled. The one healthy run this
reads wrong is one that truly learned all it could in its first interval and trained on for
nothing; the message says so.

Example:
    >>> from lrkit.doctor import diagnose
    >>> blown = [803.0, 8.6, 3.61, 2.37, 6.64, 2.36, 2.32, 2.34, 2.34, 2.35, 2.33, 2.31]
    >>> diagnose({"loss": blown}).verdict
    'diverging'
    >>> fast = [2.25, 0.62, 0.29, 0.27, 0.19, 0.10, 0.14, 0.09, 0.08, 0.05, 0.06, 0.05]
    >>> diagnose({"loss": fast}).verdict
    'healthy'
"""
from __future__ import annotations

import math

import numpy as np

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.logs import LogRecords
from lrkit.doctor.signs._base import diff_noise, scaled
from lrkit.doctor.signs.early_blowup import LIFT
from lrkit.doctor.signs.flat import VAL_SWING_PROGRESS

__all__ = ["blown_first_row"]

#: the rule reads logs of at least this many rows, and fewer than MAX_ROWS (the coarse settings)
MIN_ROWS, MAX_ROWS = 4, 50

#: a row at an LR this many times the previous row's was raised by a schedule (warmup, restart)
LR_RAISED = 1.5

#: validation losses (from the first row's step on) the stalled shape needs
MIN_VAL_EVALS = 5


def blown_first_row(records: LogRecords, doctor: Doctor) -> Diagnosis | None:
    """``diverging`` at the first row when it blew up (see the module docstring), else ``None``."""
    has = records.has("loss")
    loss = records.loss[has]
    steps = records.step[has]
    floor = doctor.config["loss_floor"]
    above = loss - floor
    if not MIN_ROWS <= len(above) < MAX_ROWS or not np.all(np.isfinite(above)) or np.any(above <= 0):
        return None  # a short log (rows are averages or sparse samples), finite
    rest = above[1:]
    level = float(np.median(rest))
    ratio = float(above[0] / level)
    rho = doctor.config["diverge_ratio"]
    lrs = _lrs(records, has)
    evidence = {"first_loss": float(loss[0]), "loss_level_since": level + floor, "first_to_level_ratio": ratio}
    head = (f"The loss averaged {loss[0]:.4g} over the first logged interval (step {int(steps[0])}), "
            f"{ratio:.3g}x the level it has sat at since ({level + floor:.4g})")
    if ratio < rho**2:
        return _stalled(records, steps, rest, lrs, floor, evidence, head) if ratio >= LIFT else None
    k = _k(rest)
    if _progress(rest, k) < doctor.config["flat_tol"]:
        first, last = float(np.median(rest[:k])), float(np.median(rest[-k:]))
        evidence["relative_progress_since"] = (first - last) / first
        why = ", and has not decreased since: it blew up at the start and is stuck (units likely saturated or died)."
        return _verdict(steps, k, evidence, head + why, lrs, factor=10)
    spike = _spike(np.log(above), lrs, rho, doctor.config["noise_z"]) if above[0] >= rho**4 * above[1] else None
    if spike is not None:
        i, times = spike
        evidence.update(spike_step=float(steps[i]), spike_ratio=times)
        why = (f"; since then it jumped to {loss[i]:.4g} at step {int(steps[i])}, {times:.3g}x the rows on either "
               "side: it blew up at the start and is recovering unevenly.")
        return _verdict(steps, i, evidence, head + why, lrs, factor=3)
    if above[1] > above[0] and not _raised(lrs, 1):
        evidence["second_to_first_ratio"] = float(above[1] / above[0])
        why = (f", and the next interval averaged higher still ({loss[1]:.4g}): it blew up at the start "
               "and fell back only later.")
        return _verdict(steps, 1, evidence, head + why, lrs, factor=3)
    return None


def _k(rest: np.ndarray) -> int:
    """Rows in a running median of the rest: up to 5, at most half of them."""
    return max(1, min(5, len(rest) // 2))


def _progress(rest: np.ndarray, k: int) -> float:
    """How far the rest's running medians of ``k`` rows fell below their first, relative to it."""
    windows = [float(np.median(rest[i:i + k])) for i in range(len(rest) - k + 1)]
    return (windows[0] - min(windows)) / windows[0]


def _stalled(records: LogRecords, steps: np.ndarray, rest: np.ndarray, lrs: np.ndarray | None, floor: float,
             evidence: dict[str, float], head: str) -> Diagnosis | None:
    """``diverging`` when nothing improved after a first row at least :data:`LIFT` times the rest
    (the module docstring's *stalled*; ``rest`` the rows after it above the floor, ``evidence`` and
    ``head`` what :func:`blown_first_row` says of the first row), else ``None``."""
    if len(rest) < MIN_VAL_EVALS or records.val_loss is None:
        return None
    hv = records.has("val_loss") & (records.step >= steps[0])
    val = records.val_loss[hv] - floor
    if len(val) < MIN_VAL_EVALS or not np.all(np.isfinite(val)) or np.any(val <= 0):
        return None
    if lrs is not None:
        half = lrs[: 1 + len(lrs) // 2]  # the first row and the first half of the rest
        known = half[np.isfinite(half) & (half > 0)]
        if len(known) and float(known.min()) < 0.5 * float(known[0]):
            return None  # the LR was cut early: a schedule (or a person) may have stopped the run
    k = _k(rest)
    train_progress = _progress(rest, k)
    val_progress = float((val[0] - val.min()) / val[0])
    if max(train_progress, val_progress) >= VAL_SWING_PROGRESS:
        return None
    evidence.update(relative_progress_since=train_progress, val_relative_progress_since=val_progress, stuck=1.0)
    message = (f"{head}, and nothing improved after it: the training loss fell {100 * train_progress:.1f}% "
               f"and the validation loss {100 * val_progress:.1f}% from its first evaluation, over {len(rest)} "
               f"rows and {len(val)} "
               "evaluations. An LR too high kills (or saturates) a network in its first steps and leaves it "
               "sitting like this; an LR too low would still bring both down. (A model that learned all it "
               "could in its first interval looks the same: then training on is pointless.)")
    return _verdict(steps, k, evidence, message, lrs, factor=10)


def _spike(y: np.ndarray, lrs: np.ndarray | None, rho: float, z: float) -> tuple[int, float] | None:
    """The first row after the first two at least ``max(rho, exp(z sigma / 2))`` times both
    neighbours, and its factor over the higher one (``None`` if there is none)."""
    rest = y[1:]
    sigma = diff_noise(rest) if len(rest) >= 3 else 0.0
    margin = max(math.log(rho), z * sigma / 2.0)
    for i in range(2, len(y) - 1):
        over = y[i] - max(y[i - 1], y[i + 1])
        if over > margin and not _raised(lrs, i):
            return i, math.exp(over)
    return None


def _raised(lrs: np.ndarray | None, i: int) -> bool:
    """The LR of row ``i`` is well above the previous row's (a schedule raised it)."""
    return lrs is not None and bool(lrs[i] >= LR_RAISED * lrs[i - 1])  # nan compares False


def _lrs(records: LogRecords, has: np.ndarray) -> np.ndarray | None:
    """The LR of each loss row (nan where none was logged), or ``None`` without an LR column."""
    return None if records.lr is None else records.lr[has].astype(np.float64)


def _verdict(steps: np.ndarray, seen: int, evidence: dict[str, float], message: str, lrs: np.ndarray | None,
             factor: int) -> Diagnosis:
    known = [] if lrs is None else [float(v) for v in lrs if math.isfinite(v) and v > 0]
    lr0 = known[0] if known else None  # the LR the run started at
    advice = (scaled(lr0, factor, "lower"), "add warmup (e.g. 5-10% of the steps)")
    return Diagnosis("diverging", int(steps[0]), int(steps[min(len(steps) - 1, seen)]), evidence, advice, message)
