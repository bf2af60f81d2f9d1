"""lrkit's learning-rate suggestion: range-test rules, then short cold-start checks of a few candidates.

Why not just a rule. The classic rules read one curve recorded while the LR *ramps*. For adaptive
optimizers (Adam, RMSprop, Adagrad) the second-moment state warms up during the ramp, so the
steepest-slope point is often 10-100x too high for a real run that starts cold; fastai's ``valley``
is safe but about 10x too low, ``minimum/10`` 3-10x too low (see ``/work/shared/FINDINGS.md``).
What they agree on is the *top* of the usable range: the LR :math:`\\eta_{\\min}` where the smoothed
loss is lowest, past which training breaks down. lrkit therefore uses the curve to place a small
grid below :math:`\\eta_{\\min}` and, when it may drive the trainer, measures the grid directly.

1. **Curve.** Smooth the raw losses with a bias-corrected EMA,
   :math:`m_i = 0.95\\,m_{i-1} + 0.05\\,\\ell_i,\\ \\bar\\ell_i = m_i/(1-0.95^{i+1})`, and take
   :math:`\\eta_{\\min} = \\eta_{\\arg\\min_i \\bar\\ell_i}`.
2. **Rule answer** (no trainer, or nothing verified): the torch-lr-finder steepest point
   :math:`\\eta_s`, capped by the minimum,

   .. math::

       \\eta_{rule} = \\min(\\eta_s,\\ \\eta_{\\min}/c),\\qquad
       c = 3 \\text{ (SGD families)},\\quad c = 10 \\text{ (adaptive or unknown families)}

   (a cold start tolerates less than the warmed-up ramp did), but never below
   :math:`\\eta_{\\min} \\cdot 10^{-3.5}` (:data:`RULE_FLOOR_DECADES`): a steepest point further
   down is the noise of the first losses of a short curve -- a 12-step ramp over seven decades, all
   a 40-step run's 30% allows, put it at 4e-7 for Adam on a curve that only fell near 1 -- and on
   the development half of the finder's benchmark the best LR sat at most 3.1 decades below the
   first candidate's :math:`\\eta_{\\min}` (a pre-trained network; the other tasks at most 2.6);
   divided by a further 3 when the curve
   is flat (:math:`(\\bar\\ell_0 - \\bar\\ell_{\\min}) < 0.05\\,|\\bar\\ell_0|`: a pre-trained model or a
   ramp that started too high; short ramps overshoot there). A curve whose smoothed minimum lies in
   its first tenth (*uninformative*: the loss never got below its start) and whose end is not above
   its start either (within 5%) has nothing to read -- a ramp too short to learn in;
   :math:`\\eta_{\\min}` is the bottom of the ramp -- and the rule answers the optimizer family's rule
   of thumb (:func:`lrkit.scaling.default_lr`, clipped to the ramp) instead, with the warning; one
   that rose from its first LRs keeps the bottom of the ramp (every LR tried was too high).
3. **Cold-start verification** (``trainer`` and ``verify_steps = k > 0``): a bracketing search in
   :math:`\\log\\eta` within a budget of steps (``verify_budget``, default
   :data:`MAX_CANDIDATES` :math:`\\times k`; ``find_lr(..., train_steps=T)`` gives it what the range
   test leaves of 30% of the run). Each candidate starts from the caller's state (``restore``), runs
   :math:`k` steps at its constant LR (a cold start, like the real run) and is scored by
   ``trainer.evaluate()`` when it returns a number, else by the mean training loss of the last
   third of its steps (every candidate sees the same batches). A candidate is rejected when a loss
   is non-finite, when two consecutive losses exceed 4x the median :math:`m` of its first three
   (for :math:`m \\le 0`, a loss that goes negative:
   :func:`~lrkit.finder.range_test.divergence_bound` with the first three's spread below :math:`m`;
   the run is aborted there, so a divergent candidate costs a few steps), or when its score does not improve
   on the starting score. The search:

   * starts at :math:`\\eta_{top} = \\eta_{\\min}` and walks down a decade at a time while the
     candidates improve on the best by more than :math:`\\tau = 2\\%` (:data:`NOISE_TOL`; rejected
     ones are stepped over) or tie it exactly (within :data:`TIE_TOL`: the LR does not bind a short
     run there, e.g. an optimizer that caps its own step, and only a lower one can tell). When the
     curve is uninformative (its minimum lies in its first tenth: the loss never got below its
     start) it starts from the top of the recorded range instead;
   * when the top candidate trains but improves its start by less than 1% (:data:`MIN_PROGRESS`),
     it is either chaotic or far too low: a decade lower tells which, and in the second case the
     search walks *up*, two decades at a time;
   * when the best is the highest LR tried, it looks past that edge (a decade up, while improving);
   * going up, "improving" is measured against the progress made, not only the score: a candidate
     improves on the best :math:`S_b` (start :math:`S_0`) when
     :math:`S < S_b - \\tau\\,\\min(|S_b|,\\ S_0 - S_b)`. Where every candidate so far is decades too
     low and barely moved, one that made a hundred times their progress is a real step although its
     score is within 2% of theirs;
   * then refines with candidates half a decade either side of the best (the side of a failed
     upper neighbour first: the optimum often lies near the stability edge).

   Scores within :data:`TIE_TOL` tie, and the lower LR wins the tie (where the LR makes no
   difference to a short run, the lower is the safer for a long one). A budget too small for two
   candidates means no verification: the rule answer, with a warning.
4. **Pick.** With :math:`(x_-, S_-), (x_0, S_0), (x_+, S_+)` the log-LRs and scores of the best
   candidate and of its nearest neighbours below and above, the short-run optimum is the vertex of
   the parabola through them (clamped to half-way to either neighbour),

   .. math::

       \\log\\hat\\eta = x_0 - \\frac{1}{2}\\,
       \\frac{(x_0-x_-)^2 (S_0-S_+) - (x_0-x_+)^2 (S_0-S_-)}{(x_0-x_-)(S_0-S_+) - (x_0-x_+)(S_0-S_-)},

   half-way down to the lower neighbour when the upper one, half a decade away, failed (at most a
   quarter decade down: half a grid step, whatever the neighbour's distance); the best
   itself at an edge of the candidates or when the upper neighbour ties it. The answer is :math:`\\eta^* = \\hat\\eta / 2`
   (:data:`SHORT_RUN_FACTOR`): a run of :math:`k` steps rewards early progress and cannot see the
   higher noise floor of a too-high LR later, so its optimum sits above the full run's (by 2-3x on
   the benchmark tasks). The factor is deliberately the low end: too low costs a little, too high
   can cost a diverged run. Only stochastic steps have that floor: when every step sees the same
   batch (full-batch training; :func:`deterministic_steps`, two steps at an LR that moves no
   weight at the end of the first accepted candidate's run) the full run's best LR is set by
   stability, which a short run sees first, and :math:`\\eta^* = \\hat\\eta`. A run of many
   passes over a small training set its model can fit (``epochs``, ``params_per_example`` and
   ``examples``; :mod:`lrkit.finder.regime`) overfits long before its end, which a short run cannot see: there
   :math:`\\eta^*` is divided by a further :data:`~lrkit.finder.regime.MANY_EPOCHS_FACTOR`, with a warning.
5. **Band** :math:`[\\eta_{lo}, \\eta_{hi}]`: with verification, the accepted candidates within
   :math:`\\tau` of the best and :math:`\\hat\\eta`, widened to at least half-way to each
   neighbour and a full half-decade past an open edge (a one-sided bracket is never a zero-width
   band), all divided by 2, then widened to at least
   :math:`[\\eta^* \\cdot 10^{-0.85},\\ \\eta^* \\cdot 10^{0.77}]` (:data:`FULL_RUN_SPREAD`): the
   candidates' spread is the uncertainty of the *short-run* optimum, and carrying it to the full run
   adds more -- on the development half of the finder's benchmark (60 verified runs, six seeds) the
   10th and 90th percentiles of :math:`\\log_{10}(\\eta_{oracle}/\\eta^*)` were -0.85 and +0.77,
   so the band is an 80% interval for the full run's best LR as measured there (before, the
   candidates' spread alone held the oracle in 26 of 66 development runs); without, the 10th-90th percentile of the rule answer over 64 bootstrap
   curves (the smoothed curve plus resampled residuals, seeded by ``rng_seed``), together with the
   rule answer itself. ``details["warnings"]`` says, in words, when the curve is flat or
   uninformative, when no candidate made progress (``method="unverified(no progress)"``), when the
   best sits at an open edge, and when the budget was too small to verify.
6. **Batch size.** With ``batch_size`` and a different ``target_batch_size``, the answer and the band
   are rescaled by :func:`lrkit.scaling.scale_lr` with ``rule="auto"`` (square root for adaptive
   families, linear for SGD) and the method string gains ``+scaled``.

Example:
    >>> import numpy as np
    >>> lrs = np.logspace(-5, 0, 100)
    >>> x = np.log10(lrs)
    >>> losses = 2.0 - np.tanh(x + 2.5) + np.where(x > -1, 20 * (x + 1) ** 2, 0.0)
    >>> s = suggest(lrs, losses, family="sgd")
    >>> s.method, 1e-3 < s.lr < 1e-1, s.band[0] <= s.lr <= s.band[1]
    ('rule', True, True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit import scaling
from lrkit.finder._rules import check_curve, classic_suggestions, ema_bias_corrected, torch_lr_finder_steepest
from lrkit.finder.range_test import divergence_bound
from lrkit.finder.regime import MANY_EPOCHS_FACTOR, check_shape, many_epochs
from lrkit.collapse import COLLAPSED

__all__ = [
    "Suggestion",
    "suggest",
    "classic_suggestions",
    "GRID_RATIO",
    "WIDE_RATIO",
    "MAX_CANDIDATES",
    "MAX_TRIED",
    "NOISE_TOL",
    "ABORT_FACTOR",
    "SHORT_RUN_FACTOR",
    "FLAT_DROP",
    "MIN_PROGRESS",
    "FULL_RUN_SPREAD",
    "RULE_FLOOR_DECADES",
    "SHORT_RAMP",
    "short_ramp_answer",
]

#: decades below and above a verified answer that its band reaches at least: the 10th and 90th
#: percentiles of log10(oracle LR / answer) over the development half of the finder's benchmark
#: (60 verified runs, six seeds; ``python -m benchmarks.finder_regret --half dev``)
FULL_RUN_SPREAD = (0.85, 0.77)
#: the rule answer is never further below the LR of the lowest smoothed loss than this many decades
#: (a steepest point further down is the noise of a short curve's first losses; see step 2)
RULE_FLOOR_DECADES = 3.5
#: a range test of fewer points is a short ramp (see :func:`short_ramp_answer`)
SHORT_RAMP = 30
#: ratio between neighbouring candidates (half a decade).
GRID_RATIO = math.sqrt(10.0)
#: ratio between candidates when the curve is uninformative (its minimum in the first tenth).
WIDE_RATIO = 10.0
#: most candidates a verification runs to the end (2 decades below the minimum).
MAX_CANDIDATES = 5
#: most candidates tried in all (aborted divergent runs included).
MAX_TRIED = 8
#: relative score difference treated as noise.
NOISE_TOL = 0.02
#: a verification run is aborted when two consecutive losses exceed this multiple of the median
#: of its first three.
ABORT_FACTOR = 4.0
#: the short-run optimum is divided by this before it is returned (short runs favour high LRs).
SHORT_RUN_FACTOR = 2.0

#: optimizer steps of the determinism probe (see :func:`deterministic_steps`)
PROBE_STEPS = 2
#: the probe's learning rate: too small to move any weight of a float32 model
PROBE_LR = 1e-30
#: losses of the probe within this relative difference are the same loss
DETERMINISTIC_TOL = 1e-5


#: a curve whose smoothed loss drops by less than this fraction is "flat".
FLAT_DROP = 0.05
#: scores within this relative difference tie (the lower LR is then preferred).
TIE_TOL = 1e-3
#: a verification whose best candidate improves its start score by less than this is no verification.
MIN_PROGRESS = 0.01

_ADAPTIVE = frozenset({"adam", "adamw", "rmsprop", "adagrad", "adadelta", "lion", "unknown", "lr_free"})


@dataclass(frozen=True)
class Suggestion:
    """A suggested learning rate with its uncertainty and the evidence behind it.

    Attributes:
        lr: the suggested learning rate (rescaled to ``target_batch_size`` when one was given).
        method: how it was chosen: ``"rule"``, ``"verified"``, ``"rule(verification rejected all)"``,
            with ``"+flat"`` / ``"+scaled"`` appended when those adjustments applied.
        band: ``(lo, hi)``, ``lo <= lr <= hi``: where the full run's best LR lies (verified: the
            candidates' spread widened by :data:`FULL_RUN_SPREAD`; rule: a bootstrap band).
        rules: the classic rules (see :func:`classic_suggestions`) plus ``"lrkit_rule"`` (step 2) and
            ``"lr_at_min_loss"`` (the LR of the lowest smoothed loss, not a suggestion by itself).
        details: JSON-friendly evidence: candidates, their scores, steps spent, regime, scaling.
    """

    lr: float
    method: str
    band: tuple[float, float]
    rules: dict[str, float | None]
    details: dict = field(default_factory=dict)


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _cold_start_divisor(family: str) -> float:
    """:math:`c` of step 2: how far under an LR the warmed-up ramp tolerated a cold start stays."""
    return 10.0 if family in _ADAPTIVE else 3.0


def _rule_lr(x: np.ndarray, s: np.ndarray, raw: np.ndarray, family: str) -> tuple[float, dict]:
    """Steps 1-2 of the module docstring on one (lrs, smoothed, raw) curve."""
    i_min = int(np.argmin(s))
    lr_min = float(x[i_min])
    steep = torch_lr_finder_steepest(x, raw)
    if steep is None:  # short curve: steepest descent of the smoothed loss against log(lr)
        steep = float(x[int(np.argmin(np.gradient(s, np.log(x))))]) if len(x) > 2 and x[-1] > x[0] else lr_min
    cap = _cold_start_divisor(family)
    lr = max(min(steep, lr_min / cap), lr_min / 10.0**RULE_FLOOR_DECADES)
    scale = abs(s[0]) if s[0] != 0 else 1.0
    flat = bool((s[0] - s[i_min]) < FLAT_DROP * scale)
    if flat:
        lr /= 3.0
    informative = bool(i_min >= max(3, len(x) // 10))
    if not informative and s[-1] <= s[0] + FLAT_DROP * scale:
        # the loss never got below its start, nor rose above it: nothing to read (a ramp too short to
        # learn in); the family's rule of thumb. (A curve that rose from its first LRs says that every
        # LR of the ramp is too high: its bottom stands.)
        lr = scaling.default_lr(family)
    lr = float(np.clip(lr, x[0], x[-1]))
    return lr, {"loss_min_lr": lr_min, "steepest": steep, "cap_divisor": cap, "flat_curve": flat,
                "informative": informative}


CLASSIC_RULES = ("steepest", "steepest_lightning", "valley", "minimum_div_10")


def short_ramp_answer(rule_lr: float, family: str, x: np.ndarray, s: np.ndarray) -> float:
    """The unverified answer from a range test of fewer than :data:`SHORT_RAMP` points (all a run
    shorter than about 100 steps leaves it within 30%): the rule's answer, but at least the family's
    rule of thumb :math:`\\eta_p` (:func:`lrkit.scaling.default_lr`), and below where the ramp blew up,

    .. math::

        \\eta = \\min\\big(\\max(\\eta_{rule},\\ \\eta_p),\\ \\eta_{end}/c\\big) \\text{ if the curve ended at
        twice its lowest smoothed loss, else } \\max(\\eta_{rule},\\ \\eta_p)

    (:math:`\\eta_{end}` the last LR of the ramp, :math:`c` the rule's cold-start divisor, 3 for SGD
    families and 10 for adaptive ones), clipped to the ramp. Why: a ramp of 10-30 points over seven
    decades moves 0.2-0.7 decades a step, the smoothing (a 20-step span) cannot show where the loss
    starts to fall, and the steepest point is the noise of the first losses -- decades too low -- while
    a short run needs an LR at the top of its stable range, not below it. Measured on the eleven
    development tasks of the finder's benchmark and four development-side logistic regressions on
    unscaled features (SGD), cut to 40- and 90-step runs (12- and 27-point ramps; oracle: a 13-point
    grid of runs of that length, three seeds): the rule alone ended at a median regret of 418% and
    99%, worst 58x and 50x; the rule of thumb alone at 328% and 154%, worst 18x and 35x; their maximum
    at 137% and 52%, worst 18x and 35x. The maximum is worse than the rule on the four unscaled
    regressions (their best LR, 1e-5..1e-4, is far under the rule of thumb, and a coarse ramp blows up
    only near 0.01-0.3, too high for the cap to reach): a run that short on unscaled inputs is not
    served by either; standardise the inputs.

    Example:
        >>> x = np.logspace(-7, 0, 12)
        >>> short_ramp_answer(4e-7, "adam", x, np.full(12, 0.7))   # noise's pick: the rule of thumb
        0.001
        >>> s = np.r_[np.full(8, 50.0), 60.0, 90.0, 150.0, 400.0]     # blew up by 1e-2: kept below it
        >>> round(short_ramp_answer(1e-6, "sgd", np.logspace(-7, -2, 12), s), 5)
        0.00333
    """
    lr = max(float(rule_lr), scaling.default_lr(family))
    lowest = float(np.min(s))
    if s[-1] - lowest > max(abs(lowest), 1e-12):  # the ramp ended at twice its lowest loss: it blew up there
        lr = min(lr, float(x[-1]) / _cold_start_divisor(family))
    return float(np.clip(lr, x[0], x[-1]))


def _uncertainty(band: tuple[float, float], rules: dict[str, float | None]) -> dict[str, Any]:
    """How sure the answer is, in decades of LR (powers of ten).

    ``band_decades`` = :math:`\\log_{10}(\\eta_{hi}/\\eta_{lo})`, the width of the band;
    ``rules_spread_decades`` = :math:`\\log_{10}(\\max_r \\eta_r / \\min_r \\eta_r)` over the
    classic rules that answered: how far steepest-slope, valley and minimum/10 disagree on this
    curve (a spread above about one decade says the curve is ambiguous and the rules are not to be
    trusted alone).
    """
    lo, hi = band
    found = [v for k in CLASSIC_RULES if (v := rules.get(k)) is not None and v > 0]
    return {
        "band_decades": float(np.log10(hi / lo)) if lo > 0 else None,
        "rules_spread_decades": float(np.log10(max(found) / min(found))) if len(found) >= 2 else None,
    }


def _bootstrap_band(x: np.ndarray, raw: np.ndarray, s: np.ndarray, family: str, rng_seed: int, n: int = 64) -> tuple[float, float]:
    rng = np.random.default_rng(rng_seed)
    resid = raw - s
    answers = []
    for _ in range(n):
        fake = s + rng.choice(resid, size=len(resid), replace=True)
        answers.append(_rule_lr(x, ema_bias_corrected(fake, 0.95), fake, family)[0])
    lo, hi = np.percentile(answers, [10, 90])
    return float(lo), float(hi)


def _run_candidate(trainer: Any, state: Any, lr: float, steps: int, ref_eval: float | None,
                   check_collapse: bool = True, probe: bool = False) -> dict:
    """Restore, run ``steps`` constant-LR steps, score; always leaves the trainer restored.
    ``check_collapse``: reject a run whose model ends giving every input the same output (off when
    the starting model already does, e.g. a zero-initialised head, where a low LR is no death).
    ``probe``: when the run is accepted, :func:`deterministic_steps` on its trained model
    (``"deterministic"`` in the result; its steps are not in ``"steps"``)."""
    trainer.restore(state)
    losses: list[float] = []
    reason = None
    above = 0
    try:
        for _ in range(steps):
            loss = float(trainer.step(lr))
            losses.append(loss)
            if not math.isfinite(loss):
                reason = "non-finite loss"
                break
            ref = float(np.median(losses[:3]))
            bound = divergence_bound(ref, ref - min(losses[:3]), ABORT_FACTOR)
            above = above + 1 if bound > ref and loss > bound else 0
            if above >= 2:
                reason = (f"loss above {ABORT_FACTOR:g}x its start twice in a row" if ref > 0 else
                          f"loss above {bound:.4g} (start {ref:.4g} + {ABORT_FACTOR - 1:g} x its scale) twice in a row")
                break
        score = start = None
        if reason is None:
            val = trainer.evaluate()
            if val is not None and not math.isfinite(float(val)):
                reason = "non-finite validation loss"
            elif val is not None:
                score = float(val)
            else:
                tail = losses[-max(1, len(losses) // 3):]
                score = float(np.mean(tail))
            start = ref_eval if (val is not None and ref_eval is not None) else float(np.median(losses[:3]))
            if reason is None:
                if not score < start:
                    reason = f"no improvement (score {score:.4g} >= start {start:.4g})"
                elif check_collapse and _collapsed(trainer):
                    reason = DEAD
        deterministic = deterministic_steps(trainer) if probe and reason is None else None
    finally:
        trainer.restore(state)
    out = {"lr": lr, "score": score if reason is None else None, "steps": len(losses), "rejected": reason,
           "start": start, "final": score}
    if deterministic is not None:
        out["deterministic"] = deterministic
    return out


#: why a candidate whose model ends giving every input the same output is rejected
DEAD = "collapsed: every input gets the same output (a dead network, not a trained one)"


def _collapsed(trainer: Any) -> bool:
    """The trainer's model gives every input the same output (:mod:`lrkit.collapse`); trainers
    without the optional ``output_spread()`` never say so."""
    spread = getattr(trainer, "output_spread", None)
    value = spread() if callable(spread) else None
    return value is not None and value <= COLLAPSED


def default_verify_budget(verify_steps: int) -> int:
    """The verification's budget when none is given: :data:`MAX_CANDIDATES` runs of
    ``verify_steps`` and the determinism probe's :data:`PROBE_STEPS`.

    Example:
        >>> default_verify_budget(10)
        52
    """
    return MAX_CANDIDATES * int(verify_steps) + PROBE_STEPS


def deterministic_steps(trainer: Any) -> bool:
    """Does every step see the same batch? :data:`PROBE_STEPS` steps at :data:`PROBE_LR` from the
    trainer's current weights (they do not move) return the same loss, within
    :data:`DETERMINISTIC_TOL`, exactly when they do: full-batch training without dropout or
    augmentation. The caller restores the trainer afterwards. Taken on a *trained* model (the end of
    a candidate run): an untrained one may score every batch alike (a zero-initialised classifier
    head gives each example the loss :math:`\\ln K`).

    Why it matters: a run whose steps are stochastic settles at a noise floor that grows with the
    LR, which a short run does not reach, so its best LR sits above the full run's (the
    short-run factor); a deterministic run has no such floor, and its best LR is set by
    stability, which a short run sees first (measured on full-batch softmax regression of the raw
    digits pixels: the 10-step optimum 0.7 decades *below* the 300-step one).
    """
    losses = [float(trainer.step(PROBE_LR)) for _ in range(PROBE_STEPS)]
    if not all(math.isfinite(v) for v in losses):
        return False
    ref = max(abs(losses[0]), 1e-12)
    return max(abs(v - losses[0]) for v in losses) <= DETERMINISTIC_TOL * ref


class _Search:
    """Step 3: a bracketing search over log-LR on the trainer, within a budget of steps."""

    def __init__(self, trainer: Any, state: Any, steps: int, budget: int, ref_eval: float | None,
                 floor: float, ceiling: float, check_collapse: bool = True) -> None:
        self.trainer, self.state, self.steps, self.budget, self.ref_eval = trainer, state, steps, budget, ref_eval
        self.floor, self.ceiling = floor, ceiling
        self.results: list[dict] = []
        self.check_collapse = check_collapse
        self.deterministic: bool | None = None  # the probe's answer, on the first accepted run

    # -- bookkeeping -----------------------------------------------------------------------
    def spent(self) -> int:
        """Steps taken: the candidates' and the probe's (:data:`PROBE_STEPS`, once it ran)."""
        return sum(r["steps"] for r in self.results) + (PROBE_STEPS if self.deterministic is not None else 0)

    def affordable(self) -> bool:
        """Another candidate fits: its steps, and the probe's while it has not run yet."""
        probe = PROBE_STEPS if self.deterministic is None else 0
        return len(self.results) < MAX_TRIED and self.spent() + self.steps + probe <= self.budget

    def tried(self, lr: float) -> bool:
        return any(abs(math.log(r["lr"] / lr)) < 1e-6 for r in self.results)

    def run(self, lr: float) -> dict | None:
        if abs(lr / self.floor - 1) < 1e-9:  # a step that lands on a bound by rounding
            lr = self.floor
        if not self.affordable() or self.tried(lr):
            return None
        r = _run_candidate(self.trainer, self.state, lr, self.steps, self.ref_eval, self.check_collapse,
                           probe=self.deterministic is None)
        if "deterministic" in r:
            self.deterministic = r.pop("deterministic")
        self.results.append(r)
        return r

    def ok(self) -> list[dict]:
        return [r for r in self.results if r["score"] is not None]

    def best(self) -> dict | None:
        """The lowest score; among scores that tie (within :data:`TIE_TOL`), the lowest LR: where the
        LR makes no difference to a short run, the lower one is the safer for a long one."""
        ok = self.ok()
        if not ok:
            return None
        top = min(ok, key=lambda r: r["score"])
        return min((r for r in ok if self.ties(r, top)), key=lambda r: r["lr"])

    def start_score(self, r: dict) -> float | None:
        return self.ref_eval if self.ref_eval is not None else r.get("start")

    def progress(self, r: dict) -> float:
        """Relative improvement of ``r``'s score over the start (0 when unknown)."""
        start = self.start_score(r)
        if start is None or r["score"] is None or start == 0:
            return 0.0
        return (start - r["score"]) / abs(start)

    def worse(self, r: dict, best: dict) -> bool:
        return r["score"] is None or r["score"] > best["score"] + NOISE_TOL * abs(best["score"])

    def ties(self, r: dict, best: dict) -> bool:
        """``r`` scores the same as ``best`` (within :data:`TIE_TOL`)."""
        return r["score"] is not None and abs(r["score"] - best["score"]) <= TIE_TOL * abs(best["score"])

    def improves(self, r: dict, best: dict) -> bool:
        return r["score"] is not None and r["score"] < best["score"] - NOISE_TOL * abs(best["score"])

    def climbs(self, r: dict, best: dict) -> bool:
        """Going *up*, ``r`` improves on ``best`` by :data:`NOISE_TOL` of the smaller of the best's
        score and the progress it made: where every candidate so far barely moved from the start (an
        LR decades too low), a candidate that made several times their progress is a real step,
        though its score is within 2% of theirs."""
        if r["score"] is None:
            return False
        start = self.start_score(best)
        made = start - best["score"] if start is not None else abs(best["score"])
        return r["score"] < best["score"] - NOISE_TOL * max(0.0, min(abs(best["score"]), made))

    # -- the search ------------------------------------------------------------------------
    def walk(self, lr: float, factor: float, stop_at: float) -> None:
        """From ``lr``, step by ``factor`` while candidates keep improving on the best (rejected ones
        are stepped over going down: an LR too high to train says nothing about the ones below; going
        up, improving is :meth:`climbs`)."""
        while self.affordable():
            lr *= factor
            if (factor < 1 and lr < stop_at * (1 - 1e-9)) or (factor > 1 and lr > stop_at * (1 + 1e-9)):
                return
            best = self.best()
            r = self.run(lr)
            if r is None:
                return
            if best is None:
                continue  # nothing accepted yet: keep looking
            if factor < 1 and self.ties(r, best):
                continue  # the LR does not bind a short run here: only a lower one can tell
            if not (self.climbs(r, best) if factor > 1 else self.improves(r, best)):
                return

    def search(self, top: float, decade: float) -> None:
        first = self.run(top)
        if first is None:
            return
        if first["score"] is not None and self.progress(first) < MIN_PROGRESS:
            # The top candidate trains but makes no progress: too high (chaotic) or too low. A decade
            # down tells which: better there, descend as usual; not, the curve's region is too low.
            below = self.run(top / decade)
            if below is not None and below["score"] is not None and self.improves(below, first):
                self.walk(top / decade, 1 / decade, self.floor)
            else:
                self.walk(top, decade * decade, self.ceiling)
        else:
            self.walk(top, 1 / decade, self.floor)
        best = self.best()
        if best is not None and best["lr"] >= max(r["lr"] for r in self.results) and best["lr"] < self.ceiling:
            self.walk(best["lr"], decade, self.ceiling)  # the best is the highest tried: look past the edge
        self.refine(math.sqrt(decade))

    def refine(self, half: float) -> None:
        """Candidates half a grid step either side of the best (see :meth:`search`)."""
        for _ in range(2):
            best = self.best()
            if best is None:
                return
            sides = []
            for f in (half, 1 / half):
                lr = best["lr"] * f
                if self.tried(lr) or not self.floor * (1 - 1e-9) <= lr <= self.ceiling * (1 + 1e-9):
                    continue
                nb = self.neighbour(best, up=f > 1)
                if nb is None:
                    continue  # an open edge: the walk already went as far as the budget allowed
                # A failed neighbour above is the stability edge, where the optimum often lies: that
                # side first; otherwise the side whose neighbour scored better.
                key = (-math.inf if f > 1 else math.inf) if nb["score"] is None else nb["score"]
                sides.append((key, lr))
            if not sides:
                return
            for _, lr in sorted(sides):
                self.run(lr)

    def neighbour(self, r: dict, *, up: bool) -> dict | None:
        side = [c for c in self.results if (c["lr"] > r["lr"] if up else c["lr"] < r["lr"])]
        if not side:
            return None
        return min(side, key=lambda c: abs(math.log(c["lr"] / r["lr"])))


def _pick(search: _Search) -> tuple[float, tuple[float, float], str, dict]:
    """Step 4: the short-run optimum from the scored candidates (parabola in log-LR), and its band."""
    best = search.best()
    assert best is not None
    ok = search.ok()
    s_best = best["score"]
    near = [r["lr"] for r in ok if r["score"] <= s_best + NOISE_TOL * abs(s_best)]
    up, down = search.neighbour(best, up=True), search.neighbour(best, up=False)
    x0 = math.log(best["lr"])
    edges = {"upper_open": up is None, "lower_open": down is None}
    if up is None or down is None:
        lr, how = best["lr"], "best candidate (an edge of the candidates: the band is widened past it)"
    elif down["score"] is None:
        lr, how = best["lr"], "best candidate (the next candidate down failed)"
    elif up["score"] is None and up["lr"] <= best["lr"] * GRID_RATIO * (1 + 1e-9):
        # Half-way to a neighbour half a decade down: a quarter decade, also where the neighbour
        # below is further (the budget ended the refinement before it was tried).
        lr = math.exp(x0 - min(math.log(best["lr"] / down["lr"]), math.log(GRID_RATIO)) / 2)
        how = "half-way to the next candidate below (the next one up, close by, failed)"
    elif up["score"] is None:
        lr, how = best["lr"], "best candidate (the next one up, far above, failed)"
    elif search.ties(up, best):
        lr, how = best["lr"], "best candidate (the next one up scores the same: the lower LR is the safer)"
    else:
        x1, x3 = math.log(down["lr"]), math.log(up["lr"])
        y1, y2, y3 = down["score"], s_best, up["score"]
        num = (x0 - x1) ** 2 * (y2 - y3) - (x0 - x3) ** 2 * (y2 - y1)
        den = (x0 - x1) * (y2 - y3) - (x0 - x3) * (y2 - y1)
        vertex = x0 - 0.5 * num / den if den != 0 else x0
        vertex = min(max(vertex, x0 - (x0 - x1) / 2), x0 + (x3 - x0) / 2)
        lr, how = math.exp(vertex), "vertex of the parabola through the best and its neighbours (log-LR)"
    lo, hi = min(near + [lr]), max(near + [lr])
    # The band never claims more precision than the candidates resolve: half the distance to a
    # neighbour on a closed side, a full grid step past an open edge.
    step_up = up["lr"] / best["lr"] if up is not None else None
    step_down = best["lr"] / down["lr"] if down is not None else None
    grid = step_up or step_down or GRID_RATIO
    hi = max(hi, best["lr"] * (math.sqrt(step_up) if step_up else grid))
    lo = min(lo, best["lr"] / (math.sqrt(step_down) if step_down else grid))
    return lr, (lo, hi), how, edges


def _verify(trainer: Any, lr_top: float, lr_floor: float, lr_ceiling: float, steps: int, decade: float,
            budget: int) -> tuple[_Search, int]:
    """The search of step 3 from the trainer's state (the determinism probe's steps included in
    ``budget``): ``(search, steps used)``."""
    state = trainer.snapshot()
    try:
        ref_eval = trainer.evaluate()
        ref_eval = float(ref_eval) if ref_eval is not None and math.isfinite(float(ref_eval)) else None
        # a model that starts collapsed (a zero-initialised head) cannot be told dead
        search = _Search(trainer, state, steps, budget, ref_eval, lr_floor, lr_ceiling,
                         check_collapse=not _collapsed(trainer))
        search.search(lr_top, decade)
    finally:
        trainer.restore(state)
        del state
    return search, search.spent()


def suggest(
    lrs: Any,
    losses: Any,
    *,
    trainer: Any = None,
    family: str = "unknown",
    verify_steps: int = 0,
    batch_size: int | None = None,
    target_batch_size: int | None = None,
    rng_seed: int = 0,
    verify_budget: int | None = None,
    epochs: float | None = None,
    params_per_example: float | None = None,
    examples: float | None = None,
) -> Suggestion:
    """Suggest a learning rate from a range test, optionally checking candidates on ``trainer``.

    The method (rule, cold-start verification, conservative pick, band, rescaling) is described
    with its formulas in the module docstring.

    Args:
        lrs: learning rate of every range-test step (finite, > 0, non-decreasing; >= 4 points).
        losses: raw training loss of every step (the curve is cut at the first non-finite one).
        trainer: a :class:`~lrkit.finder.trainer.Trainer` in its pre-range-test state; needed when
            ``verify_steps > 0``. It is snapshotted and restored around every candidate run and
            ends exactly as it was handed over.
        family: optimizer family, one of :data:`lrkit.scaling.FAMILIES`.
        verify_steps: optimizer steps per candidate (0 = rule only). Total cost is at most
            :func:`default_verify_budget` steps, usually less.
        batch_size: the batch size of the range test.
        target_batch_size: the batch size of the real run; needs ``batch_size``.
        rng_seed: seed of the bootstrap band (rule-only answers).
        verify_budget: most optimizer steps all verification runs may take together (default
            :func:`default_verify_budget`).
        epochs, params_per_example, examples: the real run's passes over its training set
            (counted with ``batch_size``; rescaled to ``target_batch_size`` when given), the
            model's trainable parameters per training example and the training examples, when known
            (:func:`lrkit.finder.regime.run_shape`); together they tell the many-epoch regime
            (:mod:`lrkit.finder.regime`), where a verified answer is divided by
            :data:`~lrkit.finder.regime.MANY_EPOCHS_FACTOR`, with a warning.

    Returns:
        A :class:`Suggestion`.

    Example:
        >>> lrs = np.logspace(-6, 0, 80)
        >>> losses = np.where(lrs < 1e-2, 1.0 - 0.1 * np.log10(lrs / 1e-6), 9.0)
        >>> s = suggest(lrs, losses, family="adam", batch_size=32, target_batch_size=128)
        >>> s.method, s.details["batch_scaling"]["rule"]
        ('rule+scaled', 'sqrt')
    """
    verify_steps, verify_budget, batch_size, target_batch_size, rng_seed = _checked_args(
        family, verify_steps, verify_budget, batch_size, target_batch_size, rng_seed, trainer)
    n_given = len(np.atleast_1d(np.asarray(lrs)))
    x, raw = check_curve(lrs, losses)
    if len(x) < 4:
        raise ValueError(
            f"lrs/losses must hold at least 4 finite points to suggest from, got {len(x)} (of {n_given}); "
            "lower start_lr or raise num_iter"
        )
    shape = {"epochs": check_shape("epochs", epochs),
             "params_per_example": check_shape("params_per_example", params_per_example),
             "examples": check_shape("examples", examples)}
    if shape["epochs"] is not None and batch_size and target_batch_size:  # the real run's batches differ
        shape["epochs"] *= target_batch_size / batch_size
    many = many_epochs(**shape, family=family)
    rules: dict[str, float | None] = dict(classic_suggestions(x, raw))
    s = ema_bias_corrected(raw, 0.95)
    rule_lr, rule_info = _rule_lr(x, s, raw, family)
    rules["lrkit_rule"] = rule_lr
    rules["lr_at_min_loss"] = rule_info["loss_min_lr"]
    details: dict[str, Any] = {"family": family, "rule": rule_info, "verify_steps": verify_steps}
    if any(v is not None for v in shape.values()):
        details["run_shape"] = {**shape, "many_epochs": many}

    warnings: list[str] = []
    if rule_info["flat_curve"] or not rule_info["informative"]:
        warnings.append(
            "the range-test curve is flat or uninformative (the loss "
            + ("never got below its start" if not rule_info["informative"] else "fell by less than "
               f"{FLAT_DROP:.0%}") + "): widen the LR range (start_lr/end_lr), check that the model "
            "trains at all, or raise num_iter; a pre-trained model can show this legitimately")
    budget = default_verify_budget(verify_steps) if verify_budget is None else verify_budget
    if verify_steps > 0 and budget < 2 * verify_steps + PROBE_STEPS:
        warnings.append(
            f"unverified: the verification budget ({budget} steps) holds fewer than two runs of "
            f"{verify_steps} steps; the answer is the range-test rule's. Pass a longer train_steps "
            "(the finder spends at most 30% of it) or accept a rule answer")
        verify_steps = 0
        details["verify_steps"] = 0
    if verify_steps > 0:
        lr, band, method = _verified_answer(trainer, x, rule_lr, scaling.default_lr(family), rule_info, verify_steps,
                                            budget, details, warnings, many)
    else:
        details["verify_steps_used"] = 0
        lr = rule_lr
        lo, hi = _bootstrap_band(x, raw, s, family, rng_seed)
        band = (min(lo, lr), max(hi, lr))
        method = "rule+flat" if rule_info["flat_curve"] else "rule"
        if len(x) < SHORT_RAMP:
            lr = short_ramp_answer(rule_lr, family, x, s)
            method = "rule(short ramp)"
            if lr != rule_lr:
                warnings.append(
                    f"a {len(x)}-step range test is too coarse for its rule ({rule_lr:.3g}, from the noise of a few "
                    f"losses): the answer is kept at least at the {family} rule of thumb "
                    f"({scaling.default_lr(family):.3g}) and below where the ramp blew up")
    band = (float(min(band[0], lr)), float(max(band[1], lr)))
    if many:
        warnings.append(_many_epochs_warning(shape, applied=method == "verified"))
    details["warnings"] = warnings
    details["uncertainty"] = _uncertainty(band, rules)
    if batch_size is not None and target_batch_size is not None and target_batch_size != batch_size:
        lr, band = _rescaled(lr, band, family, batch_size, target_batch_size, details)
        method += "+scaled"
    return Suggestion(lr=float(lr), method=method, band=(float(band[0]), float(band[1])), rules=rules, details=details)


def _checked_args(family: str, verify_steps: Any, verify_budget: Any, batch_size: Any, target_batch_size: Any,
                  rng_seed: Any, trainer: Any) -> tuple:
    """:func:`suggest`'s arguments checked (one clear error naming the first bad one), ints normalised."""
    if family not in scaling.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(scaling.FAMILIES)}, got {family!r}")
    verify_steps = _check_int("verify_steps", verify_steps, 0)
    verify_budget = _check_int("verify_budget", verify_budget, 0, allow_none=True)
    batch_size = _check_int("batch_size", batch_size, 1, allow_none=True)
    target_batch_size = _check_int("target_batch_size", target_batch_size, 1, allow_none=True)
    rng_seed = _check_int("rng_seed", rng_seed, 0)
    if target_batch_size is not None and batch_size is None:
        raise ValueError(
            f"target_batch_size={target_batch_size} needs batch_size (the range test's batch size), got None"
        )
    if verify_steps > 0 and trainer is None:
        raise ValueError(f"verify_steps={verify_steps} needs a trainer to run the candidates on, got trainer=None")
    if trainer is not None:
        for attr in ("snapshot", "restore", "step", "evaluate"):
            if not callable(getattr(trainer, attr, None)):
                raise ValueError(
                    f"trainer must implement the Trainer protocol (snapshot, restore, step, evaluate); "
                    f"{type(trainer).__name__} has no method {attr!r}"
                )
    return verify_steps, verify_budget, batch_size, target_batch_size, rng_seed


#: a rejected candidate whose score ends more than this fraction above its start got worse (an LR
#: too high for it); one within it neither improved nor got worse (flat: no sign of too high; a
#: transformer's first steps at a sound LR can rise a few percent)
WORSE = 0.10


def got_worse(candidate: dict) -> bool:
    """Whether a verification candidate (an entry of ``details["candidates"]``) shows an LR too high
    for the model: it diverged, went non-finite, died, or ended more than :data:`WORSE` above its
    start. An accepted candidate, or one that merely failed to improve, does not.

    Example:
        >>> got_worse({"lr": 0.1, "rejected": "non-finite loss", "final": None, "start": None})
        True
        >>> got_worse({"lr": 1e-4, "rejected": "no improvement", "final": 0.6941, "start": 0.6939})
        False
    """
    final, start = candidate.get("final"), candidate.get("start")
    if candidate.get("rejected") is None:
        return False  # accepted: it improved (maybe by too little to tell the LRs apart)
    if final is None or start is None or not str(candidate["rejected"]).startswith("no improvement"):
        return True  # diverged, non-finite or dead
    return final > start * (1 + WORSE) if start > 0 else final > start


def rejected_all_answer(results: list[dict], prior_lr: float, rule_lr: float, decade: float,
                        floor: float) -> tuple[float, str]:
    r"""The unverified answer when no candidate made progress -- every one rejected, or none
    improved its start by :data:`MIN_PROGRESS` -- and the warning that says why.

    A candidate that diverged, died or ended more than :data:`WORSE` above its start shows an LR
    too high to train (:func:`got_worse`); one that merely failed to improve (a run too short to
    show progress, a transformer's early bump, a model that learns late) does not, and says nothing
    about where the full run's best LR is: a tiny BERT trained from scratch sits at chance for its
    first 6-step runs at every LR up to 0.01, yet over 192 steps 0.01 fails and 1e-3 is best. So
    with :math:`W` the lowest candidate that got worse, the answer is the optimizer family's rule of
    thumb :math:`\eta_p` (:func:`lrkit.scaling.default_lr`) kept a grid step below :math:`W`,

    .. math::

        \eta = \max\big(\min(\eta_p,\ W/\sqrt{10}),\ \eta_0\big),

    and when every candidate got worse, a grid ratio below the lowest one tried,
    :math:`\max(\min(\eta_r, \eta_{low}/r), \eta_0)` (:math:`\eta_r` the range-test rule's answer,
    :math:`\eta_0` the first range-test LR). Before 2026-12-05 a candidate that did not improve
    counted as too high, and the answer went a grid ratio below the lowest one: 3.5e-7 for that
    BERT, four decades below its best LR.

    Example:
        >>> flat = lambda lr: {"lr": lr, "rejected": "no improvement", "final": 0.70, "start": 0.6939}
        >>> worse = {"lr": 0.035, "rejected": "no improvement", "final": 0.99, "start": 0.6939}
        >>> rejected_all_answer([worse, flat(3.5e-3), flat(3.5e-4)], 1e-3, 1e-7, 10.0, 1e-7)[0]
        0.001
        >>> rejected_all_answer([{"lr": 0.1, "rejected": "non-finite loss", "final": None, "start": None}],
        ...                     1e-3, 0.05, 10.0, 1e-6)[0]
        0.01
    """
    judged = [(r["lr"], got_worse(r)) for r in results]
    w = min((lr for lr, bad in judged if bad), default=math.inf)
    flat = [lr for lr, bad in judged if not bad and lr < w]
    if not flat:
        lr = max(min(rule_lr, min(r["lr"] for r in results) / decade), floor)
        return lr, ("every candidate diverged or got worse in a cold start; the answer, min(rule answer, lowest "
                    "candidate / grid ratio) but not below the first range-test LR, is unverified. Lower "
                    "start_lr, check the model, or raise verify_steps.")
    lr = max(min(prior_lr, w / GRID_RATIO), floor)
    top = f"; from {w:.3g} up they got worse (more than {WORSE:.0%})" if math.isfinite(w) else ""
    return lr, (f"up to {max(flat):.3g} the candidates neither improved by {MIN_PROGRESS:.0%} nor got worse{top}. "
                f"Runs this short say nothing more about this model: the answer is the optimizer family's rule "
                f"of thumb ({prior_lr:.3g}){' kept a grid step below the first that got worse' if top else ''} "
                "(unverified) -- pass train_steps for longer runs, a val_loader, or treat it as a guess")


def _verified_answer(trainer: Any, x: np.ndarray, rule_lr: float, prior_lr: float, rule_info: dict,
                     verify_steps: int, budget: int, details: dict,
                     warnings: list[str], many: bool = False) -> tuple[float, tuple[float, float], str]:
    """Steps 3-5 of the module docstring: ``(lr, band, method)``; the candidates and what the pick
    did go into ``details``, what the user should know into ``warnings``."""
    if rule_info["informative"]:
        top, decade = rule_info["loss_min_lr"], GRID_RATIO**2
    else:  # the curve never got below its start: search the recorded range from its top
        top, decade = float(x[-1]), WIDE_RATIO
    details["grid"] = {"top": top, "ratio": decade, "informative_curve": rule_info["informative"],
                       "budget_steps": budget}
    ceiling = float(x[-1]) * WIDE_RATIO
    search, used = _verify(trainer, top, float(x[0]), ceiling, verify_steps, decade, budget)
    details["candidates"] = search.results
    details["verify_steps_used"] = used
    details["deterministic_steps"] = deterministic = bool(search.deterministic)
    details["start_score"] = search.ref_eval
    details["score"] = "evaluate()" if search.ref_eval is not None else "mean training loss, last third"
    dead = sorted(r["lr"] for r in search.results if r["rejected"] == DEAD)
    if dead:
        warnings.append(
            f"at {', '.join(f'{v:.3g}' for v in dead)} the model ended giving every input the same output "
            "(a dead network, e.g. ReLUs switched off by too large a step): those LRs were rejected; "
            "unscaled inputs make this likelier, standardising them widens the usable range")
    best = search.best()
    if best is None:
        lr, said = rejected_all_answer(search.results, prior_lr, rule_lr, decade, float(x[0]))
        warnings.append(said if said.startswith("every") else f"no candidate improved on its start: {said}")
        details["warning"] = warnings[-1]
        return lr, (lr / GRID_RATIO, lr * GRID_RATIO), "rule(verification rejected all)"
    lr_short, band, refine, edges = _pick(search)
    factor = 1.0 if deterministic else SHORT_RUN_FACTOR
    details["short_run_factor"] = factor
    if many:  # and the full run passes its validation minimum long before its end: lrkit.finder.regime
        factor *= MANY_EPOCHS_FACTOR
        details["many_epochs_factor"] = MANY_EPOCHS_FACTOR
    lr = max(lr_short / factor, float(x[0]))
    band = (max(band[0] / factor, float(x[0]) / GRID_RATIO), band[1] / factor)
    details["short_run_optimum"] = lr_short
    details["refine"] = refine
    details["edges"] = edges
    if search.progress(best) < MIN_PROGRESS:
        lr, said = rejected_all_answer(search.results, prior_lr, rule_lr, decade, float(x[0]))
        warnings.append(
            f"no candidate improved its start by {MIN_PROGRESS:.0%} in {verify_steps}-step runs: the "
            f"verification could not tell the LRs apart: {said}")
        return lr, (lr / GRID_RATIO, lr * GRID_RATIO), "unverified(no progress)"
    if edges["lower_open"] and len(search.ok()) > 1:
        warnings.append(
            "the best candidate is the lowest one the budget allowed: a lower LR may be better "
            "(the band reaches a grid step below it)")
    elif edges["upper_open"] and len(search.ok()) > 1:
        warnings.append(
            "the best candidate is the highest one tried: a higher LR may be better "
            "(the band reaches a grid step above it)")
    details["short_run_band"] = band
    below, above = FULL_RUN_SPREAD
    band = (max(min(band[0], lr / 10**below), float(x[0]) / GRID_RATIO), max(band[1], lr * 10**above))
    return lr, band, "verified"


def _many_epochs_warning(shape: dict, applied: bool) -> str:
    """What the user should know of a run in the many-epoch regime (:mod:`lrkit.finder.regime`)."""
    said = (f"the run makes {shape['epochs']:.0f} passes over its {shape['examples']:.0f} training examples, with "
            f"{shape['params_per_example']:.3g} trainable parameters per example: its validation loss is likely "
            "to reach its minimum and rise again long before the end, which the short verification runs "
            "cannot see")
    advice = ("Watch the validation loss (early stopping; then find_lr(..., many_epochs=False) gives the "
              "undivided answer), or train with lrkit's autopilot, which plans for it")
    if applied:
        return (f"{said}, so the answer is their optimum divided by a further {MANY_EPOCHS_FACTOR:g} (on the "
                "development tasks in this regime the best constant LR sat 3-18x below the undivided answer). "
                + advice)
    return f"{said}; the answer (not verified) may be several times too high. " + advice


def _rescaled(lr: float, band: tuple[float, float], family: str, batch_size: int, target_batch_size: int,
              details: dict) -> tuple[float, tuple[float, float]]:
    """Step 6: the answer and band moved to ``target_batch_size`` (:func:`lrkit.scaling.scale_lr`, ``rule="auto"``)."""
    new_lr = scaling.scale_lr(lr, batch_size, target_batch_size, rule="auto", family=family)
    factor = new_lr / lr
    details["batch_scaling"] = {
        "from_batch_size": batch_size, "to_batch_size": target_batch_size, "rule": scaling.scaling_rule(family),
        "factor": factor, "lr_before": lr,
    }
    return new_lr, (band[0] * factor, band[1] * factor)
