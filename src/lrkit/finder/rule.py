"""lrkit's own range-test rule: steps 1-2 of :mod:`lrkit.finder.suggest` (the classic rules it is
compared with are in :mod:`lrkit.finder._rules`), the answer from a short ramp, and the bootstrap band
of a rule answer.

Example:
    >>> x = np.logspace(-5, 0, 100)
    >>> s = 2.0 - np.tanh(np.log10(x) + 2.5) + np.where(x > 0.1, 20 * (np.log10(x) + 1) ** 2, 0.0)
    >>> lr, info = rule_answer(x, s, s, "sgd")
    >>> 1e-3 < lr < 1e-1, info["informative"]
    (True, True)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lrkit import scaling
from lrkit.finder._rules import ema_bias_corrected, torch_lr_finder_steepest

#: the rule answer is never further below the LR of the lowest smoothed loss than this many decades
#: (a steepest point further down is the noise of a short curve's first losses; see step 2)
RULE_FLOOR_DECADES = 3.5
#: a range test of fewer points is a short ramp (see :func:`short_ramp_answer`)
SHORT_RAMP = 30
#: a curve whose smoothed loss drops by less than this fraction is "flat".
FLAT_DROP = 0.05

_ADAPTIVE = frozenset({"adam", "adamw", "rmsprop", "adagrad", "adadelta", "lion", "muon", "muon_adamw", "unknown",
                       "lr_free"})


def cold_start_divisor(family: str) -> float:
    """:math:`c` of step 2: how far under an LR the warmed-up ramp tolerated a cold start stays."""
    return 10.0 if family in _ADAPTIVE else 3.0


def rule_answer(x: np.ndarray, s: np.ndarray, raw: np.ndarray, family: str) -> tuple[float, dict]:
    """Steps 1-2 of the module docstring on one (lrs, smoothed, raw) curve."""
    i_min, start = lowest_point(s, raw)
    lr_min = float(x[i_min])
    steep = torch_lr_finder_steepest(x, raw)
    if steep is None:  # short curve: steepest descent of the smoothed loss against log(lr)
        steep = float(x[int(np.argmin(np.gradient(s, np.log(x))))]) if len(x) > 2 and x[-1] > x[0] else lr_min
    cap = cold_start_divisor(family)
    lr = max(min(steep, lr_min / cap), lr_min / 10.0**RULE_FLOOR_DECADES)
    scale = abs(start) if start != 0 else 1.0
    flat = bool((start - s[i_min]) < FLAT_DROP * scale)
    if flat:
        lr /= 3.0
    informative = bool(i_min >= head_length(len(x)))
    if not informative and s[-1] <= s[0] + FLAT_DROP * scale:
        # the loss never got below its start, nor rose above it: nothing to read (a ramp too short to
        # learn in); the family's rule of thumb. (A curve that rose from its first LRs says that every
        # LR of the ramp is too high: its bottom stands.)
        lr = scaling.default_lr(family)
    lr = float(np.clip(lr, x[0], x[-1]))
    return lr, {"loss_min_lr": lr_min, "steepest": steep, "cap_divisor": cap, "flat_curve": flat,
                "informative": informative}


def head_length(n: int) -> int:
    """Points of a curve of ``n`` that make its head, the "first tenth" (at least 3)."""
    return max(3, n // 10)


def lowest_point(s: np.ndarray, raw: np.ndarray) -> tuple[int, float]:
    r"""Index of the lowest smoothed loss and the start level it is measured from,
    :math:`(\arg\min_i \bar\ell_i,\ \bar\ell_0)` -- unless that index lies in the curve's head (its
    first tenth, :func:`head_length`) while the smoothed loss after the head falls :data:`FLAT_DROP`
    below the head's median *raw* loss: then the lowest point after the head, and that median (the
    flat-curve test of step 2 compares the two).

    Why: the bias-corrected EMA starts at the first raw loss, :math:`\bar\ell_0 = \ell_0`, one batch's
    loss where every later point averages up to 39 (:math:`(1+\beta)/(1-\beta)`); when that batch
    happens to be the easiest, no later average gets under it before the loss has fallen far, and a
    short ramp can blow up before it does. A 40-step Keras range test of a linear regression on
    TensorFlow cycled through four batches at 4.7, 6.7, 7.7 and 12.2 (the same order every pass), fell
    to 0.02 at LR 1-4 and blew up at 6: its smoothed minimum was point 0, the curve read "never got
    below its start, then rose", and the rule answered the ramp's bottom, 1e-7. The head's median is a
    fair start level; a loss that falls clearly below it after the head has a minimum to read.

    Example:
        >>> raw = np.r_[np.tile([4.7, 6.7, 7.7, 12.2], 7), [2.6, 3.1, 2.5, 1.7, 0.2, 0.04, 0.02, 0.04, 0.3, 8.3, 644]]
        >>> s = ema_bias_corrected(raw, 0.95)
        >>> i, start = lowest_point(s, raw)
        >>> int(np.argmin(s)), i, start
        (0, 36, 6.7)
    """
    i_min = int(np.argmin(s))
    head = head_length(len(s))
    if i_min >= head or len(s) <= head:
        return i_min, float(s[0])
    start = float(np.median(raw[:head]))
    after = head + int(np.argmin(s[head:]))
    return (after, start) if s[after] < start - FLAT_DROP * abs(start) else (i_min, float(s[0]))


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
        lr = min(lr, float(x[-1]) / cold_start_divisor(family))
    return float(np.clip(lr, x[0], x[-1]))


def uncertainty(band: tuple[float, float], rules: dict[str, float | None]) -> dict[str, Any]:
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


def bootstrap_band(x: np.ndarray, raw: np.ndarray, s: np.ndarray, family: str, rng_seed: int, n: int = 64) -> tuple[float, float]:
    rng = np.random.default_rng(rng_seed)
    resid = raw - s
    answers = []
    for _ in range(n):
        fake = s + rng.choice(resid, size=len(resid), replace=True)
        answers.append(rule_answer(x, ema_bias_corrected(fake, 0.95), fake, family)[0])
    lo, hi = np.percentile(answers, [10, 90])
    return float(lo), float(hi)

