r"""Sign ``diverging`` in the first window: the loss blew up right at the start.

During the first window, three of five consecutive losses above
:math:`\max(\rho^2, e^{6\sigma_0})\,L_i` (:math:`\sigma_0` the noise of the first window so far,
:math:`L_i` the lowest 3-point running median of the losses before step ``i``, but at least
:math:`L_0`), with none of the losses between the first and the last of them below :math:`1.5\,L_i` (a
blow-up lifts the whole stretch; outlier batches leave the batches between them at the trend), is reported as ``diverging`` at
that step, even if the loss comes back: the LR is
too high for the start of training (lower it, or add warmup). Checked at the window checks
until one is found or the first window is complete. In a coarse log (``short`` = 1: each row is a
level, an average of many steps or an epoch) one such row is enough: a Hugging Face run at an LR
far too high, logged every 10 steps, measured its untrained loss at 2.30, logged 11.0 for its first
ten steps and crawled back, never below 2.30 in 90 steps -- and read healthy, its one lifted row
short of three.

**Above a known ceiling.** When the doctor was given ``lr_ceiling`` (an LR known to be too high,
e.g. 4x the autopilot's own peak) and an LR of the first window exceeded it, the factor is
:math:`\rho` instead, whatever the first window's noise (which the blow-up itself makes): the
prior and a loss at twice its start agree; and the first window is searched at every step, not
only at the window checks (on a 90-step run, waiting for the check cost a fifth of the run). An LR
far too high often blows a network up for only two or three steps before it collapses (its ReLUs
dead, its outputs near the label prior) and then learns slowly from there: a 30x LR on an MNIST
MLP reached 4.1x, 3.6x and 3.9x its first loss, then sat at 0.75x of it, under
:math:`\rho^2` = 4 and so never reported, while a loss that doubles is well above what the
noise of a healthy start does at an LR the finder measured as trainable.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from lrkit.doctor.signs._base import TINY, Finding, Observation, Sign, Track, diff_noise, finding_from, finding_state, median
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["EarlyBlowUp", "early_blowup_step"]

#: every loss of the stretch must be at least this factor above the best before it
LIFT = 1.5


def early_blowup_step(track: Track, need: int = 3, of: int = 5, hot: bool = False) -> int | None:
    """First step of the first window whose loss exceeds ``max(rho**2, exp(6 sigma0)) * L_i``,
    as ``need`` of ``of`` consecutive losses do (``None`` if there is none); with ``hot`` (the
    LR went above a ceiling known to be too high) ``rho * L_i``.

    Comparing each loss with the best before it makes this a test of a *rise*: a run whose loss
    falls fast from a high start (a geometric decay) has no loss above its earlier best, while
    a blow-up does, however long it lasts. The floor ``L0`` keeps a noisy start from making
    ordinary noise look like a rise.

    Example:
        >>> from lrkit.doctor.signs import Track
        >>> t = Track({"window": 10, "short": 3, "check_every": 2, "diverge_ratio": 2.0,
        ...            "noise_z": 8.0, "min_rise": 0.1, "loss_floor": 0.0})
        >>> for i, loss in enumerate([1.0, 0.95, 0.9, 0.88, 9.0, 12.0, 2.5, 11.0, 0.8, 0.78]):
        ...     t.push(i, loss, None)
        >>> early_blowup_step(t)
        4
    """
    fw = np.array(track.first_window)
    yw = np.log(np.maximum(fw, TINY))
    sig0 = diff_noise(yw)
    factor = track.diverge_ratio if hot else max(track.diverge_ratio**2, math.exp(6.0 * sig0))
    # the best *robust* level before step i: the running minimum of 3-point medians that end
    # before i, so one low outlier batch does not lower the bar
    m3 = fw.copy()
    if len(fw) >= 3:
        m3[1:-1] = np.median(np.stack([fw[:-2], fw[1:-1], fw[2:]]), axis=0)
    best_before = np.full(len(fw), np.inf)
    if len(fw) >= 2:
        best_before[1] = fw[0]
    if len(fw) >= 3:
        best_before[2:] = np.minimum(fw[0], np.minimum.accumulate(m3)[: len(fw) - 2])
    # ... but never below the start level L0 = min(first loss, median of the first s losses):
    # a noisy start must not turn ordinary noise into a "rise" (L0 <= first loss, so a real
    # blow-up above rho**2 times the first loss is still caught)
    L0 = min(float(fw[0]), float(np.median(fw[: track.short])))
    best_before = np.maximum(best_before, L0)
    high = (fw > factor * best_before) & (fw - best_before > track.min_rise * fw[0])
    # `need` of `of` consecutive losses at least (default three of five): outlier batches, even
    # two close together, are no blow-up
    # ... and the stretch from the first to the last of them lifted as a whole: a blow-up raises
    # even the losses between them (to LIFT times the best before), while outlier batches leave
    # the batches between them at the trend
    for i in range(len(high) - of + 1):
        if int(high[i : i + of].sum()) < need:
            continue
        at = np.flatnonzero(high[i : i + of]) + i
        stretch = slice(int(at[0]), int(at[-1]) + 1)  # from its first high loss to its last
        if float(np.min(fw[stretch] / best_before[stretch])) >= LIFT:
            return int(track.first_window_steps[at[0]])
    return None


class EarlyBlowUp(Sign):
    """``diverging`` when the loss blew up in the first window (see the module docstring).

    The finding lasts until the next window check (the blow-up may be over); it stays in the
    Doctor's history.
    """

    name = "early_blowup"

    def reset(self) -> None:
        super().reset()
        self.done = False  # the first window was searched for a blow-up
        self.fresh = False  # observe() found it this step (check() keeps it)

    def observe(self, obs: Observation) -> None:
        # above a known ceiling every step counts: a blow-up found at the next window check (10
        # steps on) costs a rollback that many steps of a run that may be short
        self.fresh = False
        t = self.track
        if not self.done and t.n >= 5 and self._above_ceiling():
            self._search(hot=True)
            self.fresh = self.finding is not None

    def check(self) -> None:
        if self.fresh:  # found by observe() this very step
            return
        self.finding = None
        if self.done or self.track.n < self.track.short + 3:
            return
        self._search(hot=self._above_ceiling())

    def _search(self, hot: bool) -> None:
        t = self.track
        # a row of a coarse log (``short`` = 1: a Trainer's every-10-steps log, an epoch log) is
        # already an average or a level: one such row lifted is a blow-up, not an outlier batch
        e = early_blowup_step(t, hot=hot, need=1, of=1) if t.short == 1 else early_blowup_step(t, hot=hot)
        if e is not None:
            self.done = True
            ev = t.base_evidence()
            fw = t.first_window
            ev["early_max_ratio"] = max(fw) / min(fw[0], median(fw[: t.short]))
            self.finding = Finding("diverging", e, ev)
        elif t.n >= t.window:
            self.done = True

    def _above_ceiling(self) -> bool:
        """An LR of the first window (all of it is still in the track's LR ring) exceeded ``lr_ceiling``."""
        ceiling = self.config.get("lr_ceiling")
        if ceiling is None:
            return False
        return self.track.max_lr(self.track.n) > ceiling  # nan (no LR logged) compares False

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        return diverging_explanation(self.track, self.config, finding.onset, finding.evidence)

    def state_dict(self) -> dict[str, Any]:
        return {"early_checked": self.done, "early_finding": finding_state(self.finding)}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.done = bool(s.get("early_checked", False))
        self.finding = finding_from(s.get("early_finding"))
