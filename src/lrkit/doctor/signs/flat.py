r"""Sign ``flat``: after a long stretch the loss has not really started to decrease (LR too low);
or, with signs of an unstable start, ``diverging`` (stuck: units died or saturated).

Checked at the window checks once ``flat_steps`` losses are in. With the current level
:math:`M = \operatorname{median}(\ell_{t-W+1..t})`, the first window's level
:math:`R = \operatorname{median}(\ell_{1..W})` and the start
:math:`R_0 = \max(\operatorname{median}(\ell_{1..s}), R)`,

.. math::

    \frac{R - M}{R} < \text{tol} = \min\big(0.3,\ \max(\text{flat\_tol},\ 1 - e^{-4 \cdot 1.2533\,\sigma\sqrt{2/W}})\big)

    \frac{R_0 - M}{R_0} < \text{tol}_0 = \min\big(0.5,\ \max(2\,\text{flat\_tol},\
        1 - e^{-3 \cdot 1.2533\,\sigma\sqrt{1/s + 1/W}})\big)

(a decrease within the noise of the medians is no decrease): the run *never started* to
decrease. The caps (:data:`WINDOW_CAP`, :data:`START_CAP`) keep a very noisy run diagnosable, but
where they bind the test no longer spans the noise, and a run that fell 2.4x with a per-loss noise
of 0.6 could show only 28% in its medians. So a flat run must also rule out a fall up to the caps:

.. math::

    -\ln\frac{M}{R} + z_u\,\sigma_W < -\ln(1 - 0.3), \qquad
    -\ln\frac{M}{R_0} + z_u\,\sigma_0 < -\ln(1 - 0.5),

with :math:`z_u` = :data:`UPPER_Z` and :math:`\sigma_W, \sigma_0` the sd of the two
differences of medians above (with a window of 50 this binds only where the per-loss noise
exceeds about 0.25); once found flat, a run stays flat while the first two tests hold. The test against the start keeps a run that dropped fast in its first
steps and then converged from being called flat; a clear downward least-squares trend of the log-loss since the start
(slope more than 4 standard errors below 0, fitted decrease above ``flat_tol``) is progress
too, and so are last ``s`` losses all below the first window's level by more than
:math:`\max(\text{tol}_0,\ 1 - e^{-4 \cdot 1.2533\,\sigma\sqrt{1/s + 1/W}})`: a fall in the last
rows of an epoch log, which the window's median does not show yet (a Keras run sat at 8.0 for ten
epochs, then logged 5.3 and 1.3, and read flat, "raise the LR"). Not reported while the LR is still rising (by 1.5x or more over the last window: a warmup
starts flat), nor within a window of a cut of a steady LR by half or more between two checks (a
guard's rollback, a step schedule -- not the tail of a smooth decay: the loss at the new LR has
not had its window yet). A flat run that blew up in its first window (two of three consecutive
losses suffice here: the flat stretch after them confirms it), one whose last window trained at
an LR above ``lr_ceiling`` (known too high: a network a 30x LR killed in a step or two, then
sitting at its start, looks like a run whose LR is too low), or whose gradient norm fell more
than 3x (or its noise more than 3x) without progress while its level sits more than a factor
:math:`\rho` above its best or clearly above its first window's (:math:`(R-M)/R < -\text{tol}`:
evidence that it got worse, not just slow), is reported as ``diverging`` instead: units died or
saturated, the LR was too high, and raising it would be the wrong advice. The last case is a
network killed back to chance after it learned in its first window -- on a two-class task with
noisy batches (chance 0.69, best 0.375: 1.8x) no factor sees it, and its losses, all at chance,
lose the batches' noise (in windows of at least :data:`NOISE_ROWS` losses, unless the gradient
norm fell too); it is dated from its best level (the rise began after it) and looked
for from the end of the second window on (the rest of this sign waits for ``flat_steps``). A fall
of the noise alone (not the gradient norm's, which falls as a run settles) is a collapse too when
the level sits 1.5x above its best and the windows hold at least :data:`NOISE_ROWS` losses: a
network killed before it had learned much, its level back at its first window's, whose batches'
losses no longer differ (an LR too low leaves their noise as it was); dated from the start. A
level that sits clearly *above* the first window's (:math:`(R-M)/R < -\text{tol}`) without such a
collapse is no flat run either: the loss rose (a schedule's LR rise being waited out by
:mod:`~lrkit.doctor.signs.diverging`, say), and "raise the LR" would be the wrong advice again.
A flat run whose training loss has made no progress (under :data:`VAL_SWING_PROGRESS` over its
first window) while its validation loss zigzags (:meth:`Flat.val_swing`, the median distance of an
evaluation's log from its neighbours' mean over the last :data:`VAL_KEEP`, above :data:`VAL_SWING`,
with no new best in their second half) is ``diverging`` too: the weights move a lot and go nowhere,
which an LR too low cannot do -- on a fixed validation set its losses fall in a straight line (a
run blown up before its first logged row and thrashing since, as Lightning's default logging every
50 steps shows one, reads flat otherwise). With fewer than :data:`VAL_MIN_EVALS` evaluations (three
or four: a short run validated per epoch) the swing must exceed :data:`VAL_FEW_SWING`. A run whose
loss *has* made that progress, over its first window or, beyond the start's noise, since its start
(:data:`LEARNED_Z`), learned; if its validation loss still moves (:meth:`Flat.val_stalled`: swinging, or risen above its best) with no new best
against every evaluation seen, it sits at its floor or overfits: neither diverging nor flat. A flat
run whose loss has stopped changing at all -- its last :data:`FROZEN_ROWS` or more logged values
equal to :data:`FROZEN_REL`, and not a drift in one direction at every step -- after its first window
held a different value (and its level is not clearly above that window's, as for flat) is
``diverging`` as well: it moved, then no weight moved any more (units
died or saturated; an LR too low still moves the weights, and a run's batches differ); frozen from
its first value on, it stays flat, with the gradients to check first. A flat run whose weights
have moved far -- the metric ``weight_change`` (:func:`lrkit.collapse.relative_change` of a sample
of the trainable weights since the start, which the live callbacks measure) at least
:data:`MOVED` -- stays flat, but is not advised to raise its LR: the updates are large and lead
nowhere, which an LR too low does not do (it moves the weights little, and the loss follows them);
the advice is to lower it if the loss stays there. Not ``diverging``, on which a guard acts: a run
at a good LR can sit at chance a while with its weights moving before it learns (a tiny BERT at
5e-3 did for 100 steps), and one moved that far says the LR is not too low, not yet that it is too
high. Onset of flat: the first step observed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from lrkit.collapse import WEIGHT_CHANGE
from lrkit.doctor.signs._base import (
    MEDIAN_EFF,
    TINY,
    Finding,
    Observation,
    Sign,
    diff_noise,
    finding_from,
    finding_state,
    median,
    scaled,
    validation_loss,
)
from lrkit.doctor.signs.diverging import LOST_MIN_PROGRESS, diverging_explanation
from lrkit.doctor.signs.early_blowup import early_blowup_step

__all__ = ["Flat", "NOISE_ROWS"]

#: a fall of the noise alone is read as a collapse only from windows of at least this many losses: the
#: MAD of fewer differences is too noisy for a 3x fall to mean anything (per-epoch logs of a healthy
#: run, whose window is a handful of rows, showed one)
NOISE_ROWS = 20
#: the most a run may have fallen (against its first window; against its start) and still be flat
WINDOW_CAP, START_CAP = 0.3, 0.5
#: sd of the medians' noise added to a fall before it is compared with a cap
UPPER_Z = 1.5
#: a flat run whose validation loss swings between evaluations by this much (the median distance of an
#: evaluation's log from its neighbours' mean) with no new best in their second half is stuck, not
#: slow: an LR too low cannot move the weights that much -- its validation losses on a fixed set fall
#: in a straight line, swing 0 (a Lightning run of Adam at LR 3, logged every 50 steps: its blow-up
#: before the first row, then validation losses jumping 7% around 1.1x chance, was advised to raise
#: the LR 10x; on the development half of the real-runs corpus the too-high Lightning runs that read
#: flat swing 1.5%, the too-low ones 0.00%). Assumes a fixed validation set (not a random subset)
VAL_SWING = 0.01
#: ... and only while the training loss has made less progress than this, over its first window or
#: (beyond its noise, :data:`LEARNED_Z`) since its start: a healthy run that overfits (diabetes, SGD at
#: 0.1, epoch rows: training loss 10% down within the flat tolerance of its noisy rows, validation loss
#: rising in 3-4% zigzags) is learning, not stuck. A run that made that progress and whose validation
#: loss swings so is not flat either: it learned and sits at its floor (Keras, diabetes, Adam at 0.03,
#: batch 16: 23% down in its first 5 epoch rows, then the validation loss swinging 7% with no new best,
#: read 'diverging' -- progress taken against a first window that was the whole log -- then 'flat')
VAL_SWING_PROGRESS = 0.05
#: ... or since its start, when that fall is this many sd of the difference of the start's median and
#: the window's (a Lightning run blown up before its first row at step 49, then at chance: its first
#: row 10% above its level, 0.5 sd; the Keras run above: 23% in five rows, 2.9 sd)
LEARNED_Z = 2.0
#: evaluations that swing needs (the last :data:`VAL_KEEP` are kept)
VAL_MIN_EVALS, VAL_KEEP = 5, 10
#: ... or as few as this many, when their swing exceeds :data:`VAL_FEW_SWING` (one zigzag of 10% and
#: more, which weights that barely move cannot make): a short run validated per epoch has three or four
#: evaluations (Lightning, SGD-momentum at LR 40 on the digits, four epochs logged to W&B: training
#: losses thrashing between 33 and 134, validation 58, 86, 64, 71 -- read flat, "raise the LR")
VAL_FEW_EVALS, VAL_FEW_SWING = 3, 0.10
#: a loss that repeats to this relative precision over the last :data:`FROZEN_ROWS` logged values has
#: stopped changing: no weight moves (an epoch's mean over the same examples in another order differs
#: by about 1e-7 in float32; a live run's batches differ by far more). Seen in a Keras run logged per
#: epoch by MLflow's autolog, SGD at LR 30 on the digits: 14.29 in its first epoch, then 14.549266
#: +-2e-6 with accuracy at chance, which read flat and was advised to raise the LR 10x. A healthy model
#: that has settled while it sees its batches in the same order every epoch repeats its epoch means as
#: well (Keras 3 on TensorFlow after ``keras.utils.set_random_seed`` shuffles NumPy inputs identically
#: each epoch: a linear model on 51,000 rows at Adam 0.01 logged 0.534313 for ten epochs); the losses
#: alone cannot tell it from a dead one, and the diverging message names it
FROZEN_REL, FROZEN_ROWS = 1e-6, 4
#: ... after its first window held a value this far (relative) from the frozen one: it moved, then
#: stopped. A hundred times the precision above: a loss whose values differ by parts per million from
#: its start never moved (a property test of a flat run with per-step noise 1e-6 -- its last four values
#: by chance within 1e-6 of each other -- read "moved, then stopped" against a 1e-6 margin)
FROZEN_MOVED = 1e-4
#: a flat run whose weights moved this far from their start (relative, ``weight_change``) is not slow:
#: its advice is not to raise the LR. Measured on a tiny BERT trained by the Hugging Face Trainer with
#: AdamW (a marker-token task; it learns at 3e-4 to 3e-3): at 5e-3 to 2e-2 it sat at chance (ln 2) to
#: the end, read flat and was advised to raise the LR, its weights 0.47-1.6 of their norm away from the
#: start by step 48; LR 1e-4 read flat (slow) at 0.01-0.03; LR 3e-4, at chance for half its run before
#: it learned, had moved 0.13 (and 5e-3 on another seed moved 0.38 at chance in 40 steps, then learned
#: after 100: too weak a reading for a guard to act on, see the module docstring). Also seen: the same
#: BERT pre-trained on one task, fine-tuned on another with a fresh head: at 2e-2 at chance, 1.5-1.6
#: of its size away (it learns at 1e-4 to 5e-3)
MOVED = 0.3


#: a log whose first loss is at this step or later hides the run's start: a flat verdict then says
#: that an LR which killed the network in those steps reads the same (Lightning's default
#: ``log_every_n_steps=50``: SGD-momentum at LR 1 and Adam at 0.1-1 on raw digits pixels, dead
#: before step 49, read flat and were advised to raise the LR; a 10x lower LR reads the same)
UNSEEN_START = 20


def _fall(rel: float) -> float:
    """A relative decrease ``rel`` as a fall of the log-loss, :math:`-\\ln(1 - rel)` (rel < 1)."""
    return -math.log(1.0 - min(rel, 1.0 - 1e-12))



def swing(z: np.ndarray) -> float:
    r""":math:`\operatorname{median}_i |z_i - \tfrac12(z_{i-1} + z_{i+1})|` of a series of at least three
    log-losses: how far each strays from its neighbours' mean (0 for a straight line, whatever its slope).

    Example:
        >>> round(swing(np.log([1.0, 0.9, 0.81, 0.729])), 6), round(swing(np.log([1.0, 1.1, 1.0, 1.1])), 3)
        (0.0, 0.095)
    """
    return float(np.median(np.abs(z[1:-1] - 0.5 * (z[:-2] + z[2:]))))

class Flat(Sign):
    """``flat`` (or ``diverging`` when stuck after an unstable start); see the module docstring.

    State: running sums of the least-squares trend of the log-loss on the observation index
    (O(1) per step) and the LR at each of the last window checks (for warmup).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=10)
        >>> for t in range(60):
        ...     d = doc.observe(t, 2.3 + 0.01 * (-1) ** t, lr=1e-6)
        >>> d.verdict, d.advice[0]
        ('flat', 'raise the LR about 10x, from 1e-06 to 1e-05')
    """

    name = "flat"

    def reset(self) -> None:
        super().reset()
        # n, sum t, sum t^2, sum y, sum t*y, sum y^2 of log-loss on the observation index
        self.trend = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.lr_window: list[float] = []  # LR at each window check, for warmup detection
        self.vals: list[float] = []  # log of the last VAL_KEEP validation losses
        self.val_before = math.inf  # log of the best validation loss before those
        self.moved = math.nan  # the last weight_change reported (a live adapter's)

    def observe(self, obs: Observation) -> None:
        moved = obs.metrics.get(WEIGHT_CHANGE)
        if moved is not None and math.isfinite(moved):
            self.moved = float(moved)
        v = validation_loss(obs)
        if v is not None and math.isfinite(v) and v > 0:
            self.vals.append(math.log(v))
            if len(self.vals) > VAL_KEEP:
                self.val_before = min(self.val_before, self.vals.pop(0))
        t = self.track
        y = t.y.last(1)[0]  # this step's log-loss
        if y > math.log(TINY):
            n = t.n
            tr = self.trend
            tr[0] += 1.0
            tr[1] += n
            tr[2] += float(n) * n
            tr[3] += y
            tr[4] += n * y
            tr[5] += y * y

    def trend_since_start(self) -> tuple[float, float]:
        r"""Least-squares fit :math:`y_i = a + b\,i` of log-loss on the observation index since the
        start: returns ``(t, d)``, the slope's t-statistic :math:`b / \mathrm{se}(b)` and the
        fitted relative decrease :math:`d = 1 - e^{b (n-1)}` over the ``n`` observations."""
        n, st, stt, sy, sty, syy = self.trend
        if n < 3:
            return 0.0, 0.0
        sxx = stt - st * st / n
        sxy = sty - st * sy / n
        syy_c = syy - sy * sy / n
        if sxx <= 0:
            return 0.0, 0.0
        b = sxy / sxx
        resid = max(syy_c - b * sxy, 0.0) / (n - 2)
        se = math.sqrt(resid / sxx)
        t = b / se if se > 0 else (-math.inf if b < 0 else (math.inf if b > 0 else 0.0))
        return float(t), float(1.0 - math.exp(b * (n - 1)))

    def check(self) -> None:
        t = self.track
        W = t.window
        was_flat = self.finding is not None and self.finding.verdict == "flat"
        self.finding = None
        if t.n < W or math.isinf(t.best):
            return
        y, _ = t.y.ordered()
        M = float(np.median(np.exp(y)))
        if t.lr is not None:
            self.lr_window = (self.lr_window + [t.lr])[-(W // t.check_every + 1):]
        # not while the LR is still rising by half or more over a window: a warmup starts flat
        warming_up = len(self.lr_window) > 1 and self.lr_window[-1] > 1.5 * self.lr_window[0]
        # nor within a window of a cut of a steady LR by half or more between two checks (a guard's
        # rollback, a step schedule; not the tail of a smooth decay): a stretch at a lower LR is no
        # evidence the LR is too low yet
        w = self.lr_window
        cut = any(c < 0.5 * b and b >= 0.9 * a for a, b, c in zip(w, w[1:], w[2:]))
        # a network killed back above its first window's level (the collapse rule below) is looked for
        # from the second window on: a whole window after the first is all its evidence needs
        soon = t.n < self.config["flat_steps"]
        if (soon and t.n < 2 * W) or warming_up or cut:
            return
        flat_tol = self.config["flat_tol"]
        sig = t.sigma
        L0 = t.initial_level()
        R = median(t.first_window)
        R0 = max(median(t.first), R)
        rel = (R - M) / R if R > 0 else 0.0
        best_raw_rel = (R0 - M) / R0 if R0 > 0 else 0.0
        # the start (median of s losses) is noisier than a window median: its own tolerance,
        # 3 sd of the difference of a median of s and a median of W
        sd0 = MEDIAN_EFF * sig * math.sqrt(1.0 / t.short + 1.0 / W)
        tol0 = min(START_CAP, max(2 * flat_tol, 1.0 - math.exp(-3.0 * sd0)))
        # a decrease within 4 noise sd of the difference of two window medians is no decrease
        sd = MEDIAN_EFF * sig * math.sqrt(2.0 / W)
        tol = min(WINDOW_CAP, max(flat_tol, 1.0 - math.exp(-4.0 * sd)))
        ev = t.base_evidence()
        trend_t, trend_rel = self.trend_since_start()
        ev["trend_t"] = trend_t
        # a clear downward trend since the start is progress, however noisy the window medians are
        decreasing = trend_t < -4.0 and trend_rel > flat_tol
        # so are the last s losses all far below the first window's level (4 sd of the difference of
        # a median of s and one of W): the run has started to decrease, however little of it the
        # window's median shows yet (a coarse log falling in its last rows)
        recent = math.exp(max(t.y.last(t.short)))
        started = R > 0 and (R - recent) / R > max(tol0, 1.0 - math.exp(-4.0 * sd0))
        decreasing = decreasing or started
        # where the noise makes a cap bind, the decrease the medians cannot rule out must stay under it
        # (to be found flat; a run found flat stays so while the tolerances hold)
        ruled_out = was_flat or (_fall(rel) + UPPER_Z * sd < _fall(WINDOW_CAP)
                                 and _fall(best_raw_rel) + UPPER_Z * sd0 < _fall(START_CAP))
        if not (rel < tol and best_raw_rel < tol0 and ruled_out and not decreasing):
            return
        ev["relative_progress"] = rel
        ev["best_relative_progress"] = best_raw_rel
        # learned: progress over the first window, or a fall since the start beyond the start's noise
        # (a log of one window has no progress over its first window, whatever its rows did)
        learned = rel >= VAL_SWING_PROGRESS or (best_raw_rel >= VAL_SWING_PROGRESS
                                                and _fall(best_raw_rel) > LEARNED_Z * sd0)
        early = self._stuck_since(rel, tol, ev, learned)
        if soon and "rose_over_first_window" not in ev:
            return  # the rest needs flat_steps losses
        if early is not None:
            # stuck (an unstable start, a collapse, an LR known too high): the LR is too high
            ev["early_max_ratio"] = max(t.first_window) / L0 if L0 > 0 else math.inf
            ev["stuck"] = 1.0
            self.finding = Finding("diverging", early, ev)
        elif rel > -tol and not (learned and self.val_stalled()):
            # (a run that learned -- its loss fell from its start -- and whose validation loss now swings
            # or rises with no new best sits at its floor, or overfits, or the LR is too high: an LR too
            # low would still bring the validation loss down in a straight line)
            if self.moved >= MOVED:  # the weights moved far and the loss did not follow (see MOVED)
                ev["weight_change"] = self.moved
            self.finding = Finding("flat", t.first_step, ev)
        # else the level sits clearly above the first window's: it rose -- whatever the cause (a
        # schedule's LR rise, waited out by the loss_rise sign), not an LR too low to make progress

    def _stuck_since(self, rel: float, tol: float, ev: dict[str, float], learned: bool) -> int | None:
        """The onset when a run without progress is stuck, not flat (an unstable start, a collapse,
        an LR above ``lr_ceiling``: see the module docstring), else ``None``; ``rel``, ``tol``: the
        level's progress over the first window's and its tolerance; ``learned``: the loss made
        progress (:data:`VAL_SWING_PROGRESS`); the numbers go into ``ev``."""
        t = self.track
        W = t.window
        sig = t.sigma
        early = early_blowup_step(t, need=2, of=3)  # a run that then stayed flat: two of three suffice
        # stuck after an unstable start: the gradient norm (or the noise) collapsed while the
        # loss made no progress -- saturated/dead units, the LR was too high
        gn_drop = math.nan
        if t.gn.n >= t.short and t.gn_first:
            ref = median(t.gn_first)
            cur = median(t.gn.last(t.short))
            gn_drop = ref / cur if cur > 0 else math.inf
        fw = np.log(np.maximum(np.array(t.first_window), TINY))
        sig0 = diff_noise(fw)
        noise_drop = sig0 / sig if sig > 0 else math.inf
        if early is None and (gn_drop > 3.0 or (noise_drop > 3.0 and sig0 > 0.05)):
            ev["grad_norm_drop"] = gn_drop
            ev["noise_drop"] = noise_drop
            # a collapse is "stuck" (diverging: the guard acts on it) only with evidence that the
            # run got worse: its level sits a factor rho above its best, or clearly above its first
            # window's (it rose after what it learned there: dated from its best); else it stays flat
            # (the rules after the first, for a collapse seen in the noise alone, need windows long
            # enough for a 3x fall of a MAD to mean something: NOISE_ROWS)
            seen = gn_drop > 3.0 or W >= NOISE_ROWS
            if t.level - t.best > math.log(t.diverge_ratio):
                early = t.first_step
            elif rel < -tol and t.best_center_step is not None and seen:
                early = t.best_center_step + 1
                ev["rose_over_first_window"] = -rel
            elif seen and t.level - t.best > math.log(LOST_MIN_PROGRESS) and noise_drop > 3.0 and sig0 > 0.05:
                # no progress, 1.5x its best, and the batches' noise gone: their losses no longer depend
                # on what the network makes of its inputs (an LR too low leaves the noise as it was)
                early = t.first_step
        frozen = self.frozen_rows()
        if early is None and frozen and rel > -tol:  # (a level clearly above the first window's rose: not flat)
            ev["frozen_rows"] = float(frozen)
            if any(abs(math.log(max(v, TINY)) - t.y.last(1)[0]) > FROZEN_MOVED for v in t.first_window):
                # it moved, then stopped moving without any progress: units died or saturated
                early = t.first_step
        few = len(self.vals) < VAL_MIN_EVALS
        if early is None and not learned and (swing := self.val_swing()) > (VAL_FEW_SWING if few else VAL_SWING):
            # the weights move a lot and go nowhere: not an LR too low (see VAL_SWING)
            ev["val_swing"] = swing
            early = t.first_step
        ceiling = self.config.get("lr_ceiling")
        over = t.max_lr(W) / ceiling if ceiling else math.nan
        if early is None and over > 1.0:
            # flat at an LR known to be too high (lr_ceiling): not an LR too low -- stuck
            ev["lr_over_ceiling"] = over
            early = t.first_step
        return early

    def frozen_rows(self) -> int:
        """How many of the last logged losses repeat the last one to :data:`FROZEN_REL` (0 when fewer
        than :data:`FROZEN_ROWS` do, or when they move in one direction at every step: a drift below
        the precision, as full-batch steps at a tiny LR make): a loss that no longer changes at all."""
        y, _ = self.track.y.ordered()
        if len(y) < FROZEN_ROWS or y[-1] <= math.log(TINY):
            return 0
        same = np.abs(y - y[-1]) <= FROZEN_REL
        k = len(y) if same.all() else int(len(y) - 1 - np.flatnonzero(~same)[-1])
        steps = np.diff(y[-k:])
        if (steps < 0).all() or (steps > 0).all():
            return 0  # a steady drift under the precision (full-batch steps at a tiny LR), not a frozen loss
        return k if k >= FROZEN_ROWS else 0

    def val_swing(self) -> float:
        r"""How far the validation loss swings between evaluations without getting anywhere: with
        :math:`z_i` the logs of the last :data:`VAL_KEEP` validation losses,
        :math:`\operatorname{median}_i |z_i - \tfrac12(z_{i-1} + z_{i+1})|` (0 for a straight line,
        whatever its slope); 0 with fewer than :data:`VAL_FEW_EVALS`, or when the second half holds a
        new best (the run is getting somewhere)."""
        z = np.array(self.vals)
        if len(z) < VAL_FEW_EVALS or z[len(z) // 2:].min() < z[:len(z) // 2].min():
            return 0.0
        return swing(z)

    def val_stalled(self) -> bool:
        """The validation loss still moves -- it swings by more than :data:`VAL_SWING`, or sits that
        much above its best -- and the second half of the last evaluations (at least
        :data:`VAL_MIN_EVALS`) brought no new best, against every evaluation before them: what an
        LR too low does not do."""
        z = np.array(self.vals)
        if len(z) < VAL_MIN_EVALS:
            return False
        best_before = min(self.val_before, float(z[:len(z) // 2].min()))
        if z[len(z) // 2:].min() < best_before:
            return False
        return swing(z) > VAL_SWING or z[-1] - best_before > math.log1p(VAL_SWING)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        if finding.verdict == "diverging":
            return diverging_explanation(self.track, self.config, finding.onset, finding.evidence)
        # the progress the test saw: against the first window; against the start as well while the log
        # is too short for the two windows to differ (5 rows: one window, 0%, whatever the rows did)
        rel = finding.evidence.get("relative_progress", 0.0)
        if self.track.n < 2 * self.track.window:
            rel = max(rel, finding.evidence.get("best_relative_progress", 0.0))
        advice = (
            scaled(self.track.lr, 10 if rel < 0.02 else 3, "raise", self.track.lr_peak),
            "run an LR range test (lrkit find)",
            "check that gradients reach the parameters (frozen layers, zero grad norm)",
        )
        moved = finding.evidence.get("weight_change")
        if moved is not None:  # not a slow run: the weights move far, the loss does not follow
            lower = scaled(self.track.lr, 3, "lower", self.track.lr_peak)
            return (
                f"do not raise the LR: {lower} if the loss stays at this level",
                "run an LR range test (lrkit find)",
                "check the labels and inputs (a loss that cannot fall whatever the weights do)",
            ), (
                f"The loss is flat: it has not decreased in {self.track.n} logged losses, yet the weights have moved "
                f"{100 * moved:.0f}% of their size since the start. An LR too low moves the weights little and the "
                "loss follows them; here the updates are large and lead nowhere: the LR is more likely too high (a "
                "transformer stuck at chance level is the classic case), or the data give the loss nothing to learn."
            )
        if "frozen_rows" in finding.evidence:  # not a slow loss: one that does not change at all
            return advice[2:] + advice[:2], (
                f"The loss is flat: it has not changed at all over its last {finding.evidence['frozen_rows']:.0f} "
                "logged values (to 1 part in a million): no weight moves. Check that gradients reach the "
                "parameters before raising the LR.")
        t = self.track
        first, n = t.first_step, t.n
        span = f"{n} steps" if first is None or step - first + 1 == n else f"{n} logged losses (steps {first}-{step})"
        said = f"The loss is flat: it moved {100 * rel:.1f}% of its initial level in {span}."
        if first is not None and first >= UNSEEN_START:
            # the log starts late: an LR that stopped the network in the unseen steps reads flat too
            said += (f" The log starts at step {first}: a run whose LR killed or saturated the network in its "
                     "first steps sits just as still, so look at those steps (log every step) or run a range "
                     "test before raising the LR.")
            advice = (advice[1], advice[0], *advice[2:])
        return advice, said

    def state_dict(self) -> dict[str, Any]:
        return {
            "trend": list(self.trend),
            "lr_window": list(self.lr_window),
            "vals": list(self.vals),
            "val_before": self.val_before if math.isfinite(self.val_before) else None,
            "moved": self.moved if math.isfinite(self.moved) else None,
            "flat_finding": finding_state(self.finding),
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        if "trend" in s:
            self.trend = [float(v) for v in s["trend"]]
        self.lr_window = [float(v) for v in s.get("lr_window", [])]
        self.vals = [float(v) for v in s.get("vals", [])]
        self.val_before = math.inf if s.get("val_before") is None else float(s["val_before"])
        self.moved = math.nan if s.get("moved") is None else float(s["moved"])
        self.finding = finding_from(s.get("flat_finding"))
