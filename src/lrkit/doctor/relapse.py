r"""After a rollback: a loss that goes straight back up is a new divergence, judged against the restored state.

A rollback into the doctor's opening stretch restarts the doctor (slow progress at a lowered LR
must not be judged against the failed one's losses), so a run that blows up again right after
it -- a bad data shard still coming, a network killed on the way -- would set the doctor's new
baseline on its dead plateau. :class:`RelapseWatch` keeps the restored state's best log-level
:math:`b` as the reference -- or the run's best since the rollback, when lower and the give-back
test below is then the one in use (a state saved while its level still lagged behind a
fast-falling loss has a best above what it goes on to reach; a run that learned much keeps the
restored best: its best since, the lowest of many noisy levels near zero, would make 2x a matter
of noise). With :math:`m` the median of the last :data:`~lrkit.doctor.snapshots.LEVEL` finite
log-losses, the run has relapsed when

.. math::

    m - b \ge \theta \quad\text{for } \text{RELAPSE\_STEPS} \text{ steps in a row}, \qquad
    \theta = \min\Big(\log \text{RELAPSE\_RATIO},\ \max\big(f\,(s - b),\ z\,\tfrac{1.25\,\sigma}{\sqrt{20}}\big)\Big)

-- the loss level sits at twice the reference best or more for 10 steps, or, in a run whose
progress :math:`s - b` is at least :math:`\log 1.25` (:data:`RELAPSE_MIN_PROGRESS`) and too small
for a factor of two to mean much (a two-class task learns from 0.69 to 0.35: back at chance is 2x
only by luck), the level has given back :math:`f` =
:data:`~lrkit.doctor.signs.diverging.LOST_FRACTION` (70%) of it, by more than :math:`z` =
:data:`RELAPSE_Z` sd of a level's noise. Here :math:`s` is the higher of the run's start (the
median of its first five log-losses) and the level it had failed to before the rollback, and
:math:`\sigma` the per-step noise of the log-loss when the state was saved. The level must also
have risen by more than ``min_rise`` in the loss itself -- the doctor's ``min_rise`` times the
run's starting loss, as for any divergence: a run trained to a loss of 4e-6 whose level then
sits at 1e-4 is 25x its best and has lost nothing (Adam on a memorised training set, restored
after a late spike: before this, a healthy Keras run was rolled back on such noise until the guard
gave up). The verdict is ``diverging``, onset the first of those steps.

The watch lasts until a snapshot taken after the rollback is verified healthy -- and, when the
give-back threshold is the one in use, at least :data:`RELAPSE_HORIZON` steps: a run whose whole
progress is within reach of a snapshot's verification margin (a level up to 1.5x the best passes
it) can have a snapshot verified on its way back to chance, all the more when its per-batch losses
swing by 2-3x and the snapshot fell in a lucky stretch. (Where the run made much progress, a
longer watch only reads the noise of a loss near zero against a best that is the lowest of many
noisy levels: on the autopilot's digits MLP, a train loss of 0.005-0.02, a 40-step watch called
healthy runs after a NaN fault relapsed, at 2.05x.)

Whenever a lowered LR is brought back (the end of a probation, :mod:`lrkit.doctor.lr_policy`),
the guard arms the watch again, against the level the run last failed to: a return there is the
LR's doing, and a restarted doctor, or one blind in a noisy run, may not see it in time for the
policy to lower the LR for good.

Pure Python: the guard feeds it.

Example:
    >>> import math
    >>> w = RelapseWatch()
    >>> w.arm(best=math.log(1.0), label=100, at=100)
    >>> recent = [0.0] * 20
    >>> for t in range(101, 160):
    ...     loss = 3.0 if t > 115 else 1.0               # 15 steps at the best, then back up to 3x it
    ...     recent.append(math.log(loss))
    ...     d = w.check(t, loss, recent, newer_healthy=lambda label: False)
    ...     if d is not None:
    ...         break
    >>> d.verdict, d.step, t                             # the level (a median of 20) crossed at 125
    ('diverging', 125, 134)

    A two-class run that learned from chance (0.69) to 0.37 and went straight back to 0.66 has
    relapsed, though 0.66 is under twice its best:

    >>> w.arm(best=math.log(0.37), label=100, start=math.log(0.69), sigma=0.3, at=100)
    >>> recent = []
    >>> for t in range(101, 130):
    ...     recent.append(math.log(0.66))
    ...     d = w.check(t, 0.66, recent, newer_healthy=lambda label: True)
    ...     if d is not None:
    ...         break
    >>> d.verdict, d.step, round(d.evidence["progress_given_back"], 2)
    ('diverging', 105, 0.93)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from lrkit.doctor.core import Diagnosis
from lrkit.doctor.signs._base import MEDIAN_EFF
from lrkit.doctor.signs.diverging import LOST_FRACTION
from lrkit.doctor.snapshots import LEVEL, SHORT

__all__ = ["RelapseWatch", "RELAPSE_RATIO", "RELAPSE_STEPS", "RELAPSE_Z", "RELAPSE_MIN_PROGRESS", "RELAPSE_HORIZON"]

#: after a rollback, a loss level this many times the restored state's best ...
RELAPSE_RATIO = 2.0
#: ... for this many steps is a new divergence
RELAPSE_STEPS = 10
#: a give-back threshold is never under this many sd of the level's noise
RELAPSE_Z = 2.0
#: ... and applies to a distance of at least this factor between the best and where the run came from
RELAPSE_MIN_PROGRESS = 1.25
#: the watch lasts at least this many steps after the rollback (two levels' worth)
RELAPSE_HORIZON = 2 * LEVEL


class RelapseWatch:
    """The restored state's level as the reference after a rollback (see the module docstring)."""

    def __init__(self) -> None:
        self.ref: dict[str, float | int | None] | None = None
        #: the level the run last failed to (a re-arming without one, when a lowered LR is brought
        #: back, watches for a return to it)
        self.failed = math.nan

    def arm(self, *, best: float, label: int, start: float = math.nan, failed: float = math.nan,
            sigma: float = 0.0, at: int | None = None, min_rise: float = 0.0) -> None:
        """A rollback at step ``at`` restored the snapshot of step ``label``, whose best log-level
        was ``best`` and per-step log-loss noise ``sigma``; ``start``: the run's starting log-level,
        ``failed``: the level the run had failed to (``nan``: unknown; with neither, the factor
        alone decides); ``min_rise``: the least rise of the loss itself (not its log) that counts."""
        if math.isfinite(failed):
            self.failed = failed
        self.ref = {"above": None, "label": label, "at": label if at is None else at, "start": start,
                    "sigma": sigma, "min_rise": max(float(min_rise), 0.0)}
        self.ref.update(self._reference(best))

    def _reference(self, best: float) -> dict[str, float]:
        """The best log-level ``best`` to judge against (the restored state's, or a better one
        reached since), with the progress and threshold that go with it."""
        w = self.ref
        progress = max((v - best for v in (w["start"], self.failed) if math.isfinite(v)), default=math.nan)
        return {"best": best, "progress": progress, "threshold": self.threshold(progress, w["sigma"])}

    @staticmethod
    def threshold(progress: float, sigma: float) -> float:
        """:math:`\\theta` of the module docstring: the rise of the level that is a relapse, for a
        distance ``progress`` (log) between the restored best and the level the run came from."""
        theta = math.log(RELAPSE_RATIO)
        if math.isfinite(progress) and progress >= math.log(RELAPSE_MIN_PROGRESS):
            floor = RELAPSE_Z * MEDIAN_EFF * max(sigma, 0.0) / math.sqrt(LEVEL)
            theta = min(theta, max(LOST_FRACTION * progress, floor))
        return theta

    def check(self, step: int, loss: float, recent: Sequence[float],
              newer_healthy: Callable[[int], bool], best_now: float = math.inf) -> Diagnosis | None:
        """``diverging`` when the run relapsed at ``step`` (``recent``: the latest finite
        log-losses, oldest first; ``newer_healthy(label)``: a snapshot taken after ``label`` is
        verified healthy, which ends the watch; ``best_now``: the run's best log-level now, which
        becomes the reference where it is lower than the restored state's)."""
        w = self.ref
        if w is None or not math.isfinite(w["best"]):
            return None
        if best_now < w["best"]:
            newer = self._reference(best_now)
            if newer["threshold"] < math.log(RELAPSE_RATIO):  # only a run that learned little is
                w.update(newer)  # judged against its newer best
        too_soon = w["threshold"] < math.log(RELAPSE_RATIO) and step - int(w["at"]) < RELAPSE_HORIZON
        if not too_soon and newer_healthy(int(w["label"])):
            self.ref = None  # the run is back on its feet
            return None
        recent = list(recent)[-LEVEL:]
        if len(recent) < SHORT or not math.isfinite(loss):
            return None
        level = sorted(recent)[len(recent) // 2]
        if level - w["best"] < w["threshold"] or math.exp(level) - math.exp(w["best"]) <= w["min_rise"]:
            w["above"] = None
            return None
        w["above"] = step if w["above"] is None else w["above"]
        if step - w["above"] + 1 < RELAPSE_STEPS:
            return None
        ratio = math.exp(level - w["best"])
        evidence = {"loss_ratio_to_best": ratio}
        if math.isfinite(w["progress"]) and w["progress"] > 0:
            evidence["progress_given_back"] = (level - w["best"]) / w["progress"]
        return Diagnosis(
            "diverging", w["above"], step, evidence,
            ("lower the LR", "check the data of these steps"),
            f"After the rollback the loss level rose to {ratio:.3g}x its best (the restored state's, or one "
            "reached since)"
            + (f" (giving back {evidence['progress_given_back']:.0%} of the progress the run had made)"
               if "progress_given_back" in evidence else "")
            + f" and stayed there since step {w['above']}.",
        )
