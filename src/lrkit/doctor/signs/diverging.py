r"""Sign ``diverging``: the loss level has risen well above its best.

**Diverging** when, for ``patience`` consecutive steps,

.. math::

    m_t - b'_t > \max\big(\log \rho,\; \min(z\,\sigma_s,\ \log 100)\big) + [n < W]\log\rho
    \quad\text{and}\quad
    e^{m_t} - e^{b'_t} > r \cdot L_0, \qquad b'_t = \min(b_t,\ y_1) \text{ if } n < W \text{ else } b_t

with :math:`\rho` = ``diverge_ratio``, :math:`z` = ``noise_z``, :math:`r` = ``min_rise`` and
:math:`y_1` the very first loss (taken at the initial weights, so that a blow-up in the first
steps is caught); :math:`m_t, b_t, \sigma_s, L_0` as in :class:`~lrkit.doctor.signs.Track`. The
level must rise by a factor *and* by an amount that matters next to where training started (a
rise from 1e-6 to 1e-4 is not a problem); during the first ``W`` steps, while noise and best are
poorly known, the factor is :math:`\rho^2` (and the first loss counts as a best).

**Progress lost.** Past the first window, a run is diverging too when the median of its last
:math:`W/2` log-losses has given back :data:`LOST_FRACTION` (70%) of the progress it made from
where it started, :math:`y_0` (the first loss or the median of the first three, the lower; see
:func:`start_level`), down to its best level,

.. math::

    \operatorname{med}(y_{t-W/2+1..t}) - b_t \ge 0.7\,(\log y_0 - b_t), \qquad
    \log y_0 - b_t \ge \max(\log 1.5,\ 3\,\sigma^{(b)}), \qquad \text{both} > 5\,\sigma_s^{(b)},

with :math:`\sigma_s^{(b)}` the level's noise when the best was reached and :math:`\sigma^{(b)}`
the per-step noise then (the start is at most a median of three, as noisy as one step: a first
loss drawn high in a flat noisy run, against the lowest of its hundreds of medians, is progress that
never was -- 7 in 1200 simulated flat runs of 400 steps at log-noise 0.2-0.4 were called diverging
this way with the median-of-the-level test alone): a run
sent back near where it started (a classifier back at chance) by an LR far too high can sit there
at 1.5-2x its best, under :math:`\rho`, while the noise it grew as it went wrong hides the rise
from the margin above; measured against the noise it had when it was training, it does not.

The onset (see :func:`rise_onset`) is where the rise began. An episode that ends with the level
back within a factor :math:`\rho` of the best is *recovered*; :class:`~lrkit.doctor.signs.LossSpikes`
reads these episodes.

**Schedules.** A rise that came with a rise of the logged LR -- the highest LR since the onset at
least 1.5 times :math:`\eta_0`, the lowest LR of the ``s`` losses before it (an SGDR warm
restart, a cyclical or one-cycle schedule, a warmup) -- is *explained by the schedule* and is
not reported while the schedule can still bring the loss back: while the LR is rising, or
decaying but (over the last ``s`` steps, the losses of the level) still above
:math:`\max(1.5\,\eta_0,\ \eta_\text{peak}/4)`
(:math:`\eta_\text{peak}` the highest LR since the rise began). It is reported (with its onset) when the loss fails to come back as the schedule
decays: the LR is back down (below that bound) or has stopped changing for ``patience`` steps
(an LR raised and held is no schedule; a schedule stepped once per epoch looks the same, and its
rises are judged like any other) and the level is still diverging; or at once when the level
exceeds :math:`\rho\,L_0`, worse than the untrained model (a blow-up no schedule explains), or
when the LR went above ``lr_ceiling`` (an LR known to be too high, e.g. far above the finder's).
Explained episodes that come back are not counted as recovered; one whose level dips under the
margin for fewer than ``s`` steps goes on (same onset).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from lrkit.doctor.signs._base import (
    MEDIAN_EFF,
    TINY,
    Finding,
    Observation,
    Sign,
    Track,
    grad_reference,
    median,
    nan_none,
    scaled,
)

__all__ = ["LossRise", "rise_onset", "start_level", "diverging_explanation", "NOISE_CAP", "LOST_FRACTION",
           "LOST_MIN_PROGRESS", "LOST_NOISE_Z"]

#: no noise explains a level this many times its best (the noise margin is capped at its log: a
#: noise estimate from a handful of rows -- a log every 50 steps, an epoch log -- can be the rise)
NOISE_CAP = 100.0
#: past the first window, a lasting level that has given back this fraction of the progress the run
#: made (log-loss, from where it started (:func:`start_level`) down to its best level) is diverging,
#: whatever the noise now: the noise of a run that went wrong is part of what went wrong, so the rise
#: is measured against the noise at the best
LOST_FRACTION = 0.7
#: ... of a progress of at least this factor
LOST_MIN_PROGRESS = 1.5
#: ... and of at least this many sd of the level's noise at the best (and a rise as large): the best
#: is the lowest of many noisy medians of ``s`` losses (about 3 sd below their mean over a few
#: hundred) and the lasting level, a median of ``W/2``, can sit ~3 of its own sd (~1.9 of theirs)
#: above its mean over as many: 3 + 1.9, about 5, is noise alone
LOST_NOISE_Z = 5.0
#: ... and the progress at least this many sd of the *per-step* noise at the best: the start is one
#: loss (or the median of three), as noisy as a single step, not as a median of ``s``
LOST_START_Z = 3.0


def start_level(track: Track) -> float:
    r"""Where the run started, for the progress-lost rule: the first loss, or the median of the
    first three when lower.

    A single first loss is one noisy draw: in a flat run with a per-step log-noise of 0.3 it sits a
    standard deviation above the level one time in six, and the "progress" down to the lowest of
    hundreds of noisy medians was then read as given back (a flat run called diverging: 10 of 500
    simulated flat runs of 400 steps at log-noise 0.1-0.4, 3 with the median of three). The median
    of more (the first ``s``, as :meth:`Track.initial_level`) already falls with a run that learns
    fast, and its smaller progress makes a noisy run that keeps what it learned look relapsed.

    Example:
        >>> from lrkit.doctor.signs import Track
        >>> t = Track({"window": 10, "short": 3, "check_every": 2, "diverge_ratio": 2.0,
        ...            "noise_z": 8.0, "min_rise": 0.1, "loss_floor": 0.0})
        >>> for i, loss in enumerate([3.0, 2.2, 2.4, 2.3]):
        ...     t.push(i, loss, None)
        >>> start_level(t)
        2.4
    """
    return min(track.first[0], median(track.first[:3])) if track.first else math.nan


def rise_onset(track: Track, step: int, log_margin: float | None) -> int:
    r"""Where the rise began (computed once, at the first diverging step; O(W^2) then).

    A continuous two-segment line is fitted by least squares to the window's log-losses,
    :math:`y_i \approx a + \beta t_i + \gamma \max(0, t_i - c)`, for every break ``c``; the
    break with the smallest residual and :math:`\gamma > 0` (the slope went up) gives the
    onset, the step after ``c``, if it fits significantly better than a single line
    (F-statistic > 25).
    Otherwise, if the window rises steadily (a single line with :math:`R^2 > 0.5`: a slow
    rise that began before it), the line is extrapolated back to the best level :math:`b`.
    Otherwise, if the loss jumped to a noisy higher level, the split ``c`` maximising
    :math:`(\operatorname{med}(y_{c..}) - \operatorname{med}(y_{..c}))\sqrt{c(n-c)/n}` (when
    the jump exceeds the diverging margin). Otherwise (e.g. no loss evidence: ``log_margin``
    ``None``), the step after the best level's median window centre.
    """
    y, steps = track.y.ordered()
    n = len(y)
    if log_margin is not None and n >= 6:
        t = np.arange(n, dtype=float)
        best_c, best_sse = None, math.inf
        ones = np.ones(n)
        X1 = np.column_stack([ones, t])
        c1, *_ = np.linalg.lstsq(X1, y, rcond=None)
        sse_line = float(np.sum((y - X1 @ c1) ** 2))
        for c in range(1, n - 2):
            X = np.column_stack([ones, t, np.maximum(0.0, t - c)])
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            if coef[2] <= 0:
                continue
            sse = float(np.sum((y - X @ coef) ** 2))
            if sse < best_sse:
                best_c, best_sse = c, sse
        # keep the break only if it explains the data much better than one line (F statistic
        # with 1 and n - 3 degrees of freedom > 25: the best of ~W candidate breaks is taken,
        # so the usual F > 10 would let noise through)
        if best_c is not None and sse_line - best_sse > 25.0 * max(best_sse, 1e-12 * n) / (n - 3):
            return int(steps[best_c + 1])
        r2 = 1.0 - sse_line / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
        if c1[1] > 0 and r2 > 0.5 and not math.isinf(track.best):
            # a steady rise that began before the window: extrapolate the line back to the
            # best level (steps assumed evenly spaced within the window)
            t_cross = (track.best - c1[0]) / c1[1]
            spacing = (steps[-1] - steps[0]) / (n - 1)
            onset = int(round(steps[0] + (t_cross + 1) * spacing))
            lo = track.best_center_step + 1 if track.best_center_step is not None else int(steps[0])
            return int(min(max(onset, lo), step))
        # a jump to a noisy higher level: the split that best separates low from high medians
        c = np.arange(2, n - 1)
        shift = np.array([np.median(y[i:]) - np.median(y[:i]) for i in c]) * np.sqrt(c * (n - c) / n)
        i = int(np.argmax(shift))
        if shift[i] > 0 and np.median(y[c[i]:]) - np.median(y[: c[i]]) > log_margin:
            return int(steps[c[i]])
    if track.best_center_step is None:
        return step
    return min(track.best_center_step + 1, step)


def diverging_explanation(track: Track, config: Mapping[str, Any], onset: int | None, ev: Mapping[str, float]) -> tuple[tuple[str, ...], str]:
    """Advice and message of a ``diverging`` finding (shared by the signs that raise it)."""
    advice = [scaled(track.lr, 10, "lower", track.lr_peak)]
    if onset is not None and track.first_step is not None and track.n <= 2 * track.window:
        advice.append("add warmup (e.g. 5-10% of the steps)")
    if "grad_norm_ratio" in ev and ev["grad_norm_ratio"] > config["grad_ratio"]:
        advice.insert(1, "clip gradients (e.g. max norm 1.0)")
    else:
        advice.append("clip gradients (e.g. max norm 1.0)")
    ratio = ev.get("loss_ratio_to_best", math.nan)
    if math.isfinite(ratio) and ratio > 1:
        why = f"the loss level is {ratio:.3g}x its best"
    elif "grad_norm_ratio" in ev:
        why = f"the gradient norm is {ev['grad_norm_ratio']:.3g}x its reference"
    else:
        why = "the loss rose"
    msg = f"The loss is diverging since step {onset}: {why}."
    if "lr_over_ceiling" in ev:
        msg = (f"The loss has not decreased in {track.n} steps at an LR {ev['lr_over_ceiling']:.3g}x above "
               "the ceiling known to train (lr_ceiling): the run is stuck (units died or saturated), not "
               "too slow; raising the LR would be the wrong advice.")
    elif "val_swing" in ev:
        msg = (f"The loss has not decreased over {track.n} logged losses, yet the validation loss jumps by "
               f"{100 * ev['val_swing']:.0f}% between evaluations with no new best: an LR too low cannot move the "
               "weights that much. The LR is likely too high (a blow-up before the log shows it, then stuck); "
               "raising it would be the wrong advice.")
    elif "frozen_rows" in ev:
        msg = (f"The loss moved at the start, then stopped changing at all: its last {ev['frozen_rows']:.0f} logged "
               "values are equal to 1 part in a million, with no progress. No weight moves any more: units died or "
               "saturated, the LR was likely too high; raising it would be the wrong advice. (One healthy run reads "
               "the same: a model that has settled while it sees its batches in the same order every epoch -- "
               "Keras on TensorFlow after keras.utils.set_random_seed does -- repeats its epoch means too; a "
               "dead one sits at the loss of a constant prediction.)")
    elif "grad_norm_drop" in ev:  # name only what was measured (no gradient norm logged: no "fell nanx")
        fell = [f"{what} fell {ev[key]:.3g}x" for key, what in (("grad_norm_drop", "gradient norm"), ("noise_drop", "noise"))
                if math.isfinite(ev.get(key, math.nan))]
        msg = ("The loss has not decreased since an unstable start" + (f" ({', '.join(fell)})" if fell else "")
               + ": units likely saturated or died.")
    elif "early_max_ratio" in ev:
        msg = (
            f"The loss blew up to {ev['early_max_ratio']:.3g}x its initial value at step {onset} and has "
            "not decreased since (the network is likely dead)."
        )
    return tuple(advice), msg


class LossRise(Sign):
    """``diverging`` when the loss level stays far above its best (see the module docstring).

    State: the length of the current run of diverging steps, its onset, and the recovered
    episodes (``[onset, observation index at recovery]``, the last 8).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=10)
        >>> for t in range(100):
        ...     d = doc.observe(t, 1.0 / (1 + t) if t < 60 else 0.02 * 1.2 ** (t - 60))
        >>> d.verdict, 58 <= d.step <= 62
        ('diverging', True)
    """

    name = "loss_rise"

    def reset(self) -> None:
        super().reset()
        self.count = 0
        self.onset: int | None = None
        self.recovered: list[list[int]] = []
        self.explained = False  # the current episode began with the LR raised by a schedule
        self.lr_before = math.nan  # the lowest LR of the losses just before its onset
        self.gap = 0  # steps an excused episode has been under the margin
        self.lr_peak = math.nan  # the highest LR since it began
        self.lr_prev = math.nan  # the LR of the previous step
        self.lr_still = 0  # steps the LR has not changed

    def _schedule_excuses(self) -> bool:
        """The current (explained) episode may still come back as the schedule decays."""
        t = self.track
        lr = t.lr
        if not self.explained or lr is None:
            return False
        if math.exp(t.level) > t.diverge_ratio * t.initial_level():
            return False  # worse than the untrained model: a blow-up no schedule explains
        if self.lr_still >= self.config["patience"]:
            return False  # the LR was raised and held: no schedule will bring the loss back
        ceiling = self.config.get("lr_ceiling")
        if ceiling is not None and self.lr_peak > ceiling:
            return False  # the schedule took the LR where it is known not to train
        rising = not math.isnan(self.lr_prev) and lr > self.lr_prev
        # the level is a median of the last s losses: all of them must be at the lowered LR
        recent = max((v for v in t.lrs.last(t.short) if v == v), default=lr)
        back_down = recent <= max(1.5 * self.lr_before, self.lr_peak / 4.0)
        return rising or not back_down

    def evidence(self) -> dict[str, float] | None:
        """The diverging evidence of the current level, or ``None``."""
        t = self.track
        if not t.first:
            return None
        log_rho = math.log(t.diverge_ratio)
        best = t.best
        if t.n < t.window:  # during the first window, the very first loss (initial weights) is a reference too
            best = min(best, math.log(max(t.first[0], TINY)))
        # a noise estimate from a handful of rows (a log every 50 steps, an epoch log) can be the
        # rise itself: no noise explains a level NOISE_CAP times its best
        margin = max(log_rho, min(t.noise_z * t.sigma_short(), math.log(NOISE_CAP)))
        if t.n < t.window:  # noise and best are still poorly known: one more factor rho
            margin += log_rho
        rise = math.exp(t.level) - math.exp(best)
        L0 = t.initial_level()
        lost = self._progress_lost()
        if not ((t.level - best > margin or lost is not None) and rise > t.min_rise * L0):
            return None
        ev = t.base_evidence()
        if lost is not None:
            ev["progress_lost"] = lost
        ev["log_margin"] = margin
        ev["log_best"] = best
        ev["rise_over_initial"] = rise / L0 if L0 > 0 else math.inf
        ref_cur = grad_reference(t)
        if ref_cur is not None and ref_cur[0] > 0:
            ev["grad_norm_ratio"] = ref_cur[1] / ref_cur[0]
        return ev

    def _progress_lost(self) -> float | None:
        """The fraction of its progress the run has given back, when it is :data:`LOST_FRACTION`
        or more (see there), else ``None``."""
        t = self.track
        if t.n < t.window or not t.first or math.isinf(t.best):
            return None
        # from the start, not the single first loss: one noisy draw above a flat run's level is no progress
        progress = math.log(max(start_level(t), TINY)) - t.best
        if progress < math.log(LOST_MIN_PROGRESS):
            return None
        noise = MEDIAN_EFF * t.best_noise / math.sqrt(t.short) if not math.isnan(t.best_noise) else t.sigma_short()
        # progress and rise must clear LOST_NOISE_Z sd of the noise at the best (see there), and the
        # progress LOST_START_Z sd of the per-step noise it stands for (the start is a single loss)
        per_step = noise * math.sqrt(t.short) / MEDIAN_EFF
        if not progress > max(LOST_NOISE_Z * noise, LOST_START_Z * per_step):
            return None
        # a lasting level, the median of half a window (the short level's excursions in a run whose
        # noise grew are not a relapse); computed only past the cheap checks (this runs every step)
        rise = median(t.y.last(max(t.short, t.window // 2))) - t.best
        if rise >= LOST_FRACTION * progress and rise > LOST_NOISE_Z * noise:
            return rise / progress
        return None

    def observe(self, obs: Observation) -> None:
        t = self.track
        lr = t.lr
        if lr is not None:
            self.lr_still = self.lr_still + 1 if lr == self.lr_prev else 0
        ev = self.evidence()
        if ev is None and self.explained and self.finding is None and self.gap < t.short:
            # an excused episode whose level dipped under the margin: the same episode for `s` steps
            self.gap += 1
            self.lr_prev = math.nan if lr is None else lr
            if lr is not None:
                self.lr_peak = max(self.lr_peak, lr) if not math.isnan(self.lr_peak) else lr
            return
        self.gap = 0
        if ev is not None:
            self.count += 1
            if self.count == 1:
                self.onset = rise_onset(t, obs.step, ev["log_margin"])
                self.lr_before, self.lr_peak = t.lr_around(self.onset)
                self.explained = self.lr_peak >= 1.5 * self.lr_before  # False when unknown (nan)
            elif lr is not None:
                self.lr_peak = max(self.lr_peak, lr) if not math.isnan(self.lr_peak) else lr
            if self.explained:
                ev["lr_ratio_to_before_rise"] = self.lr_peak / self.lr_before
            if self._schedule_excuses():
                ev = None  # not (yet) a verdict: the schedule may bring the loss back
        else:
            if self.count >= self.config["patience"] and self.finding is not None and t.level - t.best < math.log(t.diverge_ratio):
                # a reported diverging episode ended with the level back near the best
                self.recovered = (self.recovered + [[int(self.onset), t.n]])[-8:]  # type: ignore[arg-type]
            self.count = 0
            self.onset = None
            self.explained = False
        self.lr_prev = math.nan if lr is None else lr
        self.finding = Finding("diverging", self.onset, ev) if ev is not None and self.count >= self.config["patience"] else None

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        return diverging_explanation(self.track, self.config, finding.onset, finding.evidence)

    def state_dict(self) -> dict[str, Any]:
        return {"div_count": self.count, "div_onset": self.onset, "recovered": [list(e) for e in self.recovered],
                "div_evidence": None if self.finding is None else dict(self.finding.evidence),
                "div_explained": self.explained, "div_lr_peak": nan_none(self.lr_peak),
                "div_lr_before": nan_none(self.lr_before), "div_gap": self.gap,
                "div_lr_prev": nan_none(self.lr_prev), "div_lr_still": self.lr_still}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.count = int(s.get("div_count", 0))
        self.onset = s.get("div_onset")
        self.recovered = [[int(a), int(b)] for a, b in s.get("recovered", [])]
        self.explained = bool(s.get("div_explained", False))
        self.lr_peak = math.nan if s.get("div_lr_peak") is None else float(s["div_lr_peak"])
        self.lr_before = math.nan if s.get("div_lr_before") is None else float(s["div_lr_before"])
        self.gap = int(s.get("div_gap", 0))
        self.lr_prev = math.nan if s.get("div_lr_prev") is None else float(s["div_lr_prev"])
        self.lr_still = int(s.get("div_lr_still", 0))
        ev = s.get("div_evidence")
        if ev is not None:
            self.finding = Finding("diverging", self.onset, {k: float(v) for k, v in ev.items()})
