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
   :math:`\\eta_{\\min} = \\eta_{\\arg\\min_i \\bar\\ell_i}` -- searched after the curve's first tenth
   when the smoothed loss there falls 5% under the first tenth's median raw loss
   (:func:`lrkit.finder.rule.lowest_point`: :math:`\\bar\\ell_0` is a single batch's loss, and an easiest
   first batch would otherwise make the whole curve read as never below its start).
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
   ``trainer.evaluate()`` when it returns a number, else by the trainer's optional
   ``sample_loss()`` (the loss on a fixed sample of training batches, the same for every
   candidate), else by the mean training loss of the last third of its steps (every candidate
   sees the same batches). A candidate is rejected when a loss
   is non-finite, when two consecutive losses exceed 4x the median :math:`m` of its first three
   (for :math:`m \\le 0`, a loss that goes negative:
   :func:`~lrkit.finder.range_test.divergence_bound` with the first three's spread below :math:`m`;
   the run is aborted there, so a divergent candidate costs a few steps), or when its score does not improve
   on the starting score. The search:

   * starts at :math:`\\eta_{top} = \\eta_{\\min}` and walks down a decade at a time while the
     candidates improve on the best by more than :math:`\\tau = 2\\%` (:data:`NOISE_TOL`; rejected
     ones are stepped over) or tie it exactly (within :data:`~lrkit.finder.search.TIE_TOL`: the LR
     does not bind a short run there, e.g. an optimizer that caps its own step, and only a lower
     one can tell). When the curve is uninformative (its minimum lies in its first tenth: the loss
     never got below its start) it starts from the top of the recorded range instead;
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

   Scores within :data:`~lrkit.finder.search.TIE_TOL` tie, and the lower LR wins the tie (where
   the LR makes no difference to a short run, the lower is the safer for a long one). A budget too small for two
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
   batch (full-batch training; :func:`~lrkit.finder.search.deterministic_steps`, two steps at an LR that moves no
   weight at the end of the first accepted candidate's run) the full run's best LR is set by
   stability, which a short run sees first, and :math:`\\eta^* = \\hat\\eta`. A run of many
   passes over a small training set its model can fit (``epochs``, ``params_per_example`` and
   ``examples``; :mod:`lrkit.finder.regime`) overfits long before its end, which a short run cannot see: there
   :math:`\\eta^*` is divided by a further :data:`~lrkit.finder.regime.MANY_EPOCHS_FACTOR`, with a warning.
   An optimizer whose every step has a size set by the LR itself (Lion: the sign of a momentum;
   Muon: a weight matrix's orthogonalised momentum) never takes smaller steps late in a run, as
   Adam's :math:`m/\\sqrt{v}` does when the gradient turns noisy, so its short-run optimum
   overstates the full run's more: :math:`\\eta^*` is divided by a further
   :data:`~lrkit.finder.search.SIGN_UPDATE_FACTOR` (3 for Lion, 6 for Muon; full batch too).
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

Where it lives: steps 1-2 in :mod:`lrkit.finder.rule`, the search of step 3 and the pick of step 4
in :mod:`lrkit.finder.search`, the verified answer and its band (3-5) in :mod:`lrkit.finder.verify`;
this module puts them together and rescales (step 6).

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

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit import scaling
from lrkit.finder._rules import check_curve, classic_suggestions, ema_bias_corrected
from lrkit.finder.regime import MANY_EPOCHS_FACTOR, check_shape, many_epochs
from lrkit.finder.rule import (FLAT_DROP, RULE_FLOOR_DECADES, SHORT_RAMP, bootstrap_band, rule_answer,
                               short_ramp_answer, uncertainty)
from lrkit.finder.search import (ABORT_FACTOR, GRID_RATIO, MAX_CANDIDATES, MAX_TRIED, MIN_PROGRESS, NOISE_TOL,
                                 PROBE_STEPS, SHORT_RUN_FACTOR, WIDE_RATIO,
                                 default_verify_budget)
from lrkit.finder.verify import FULL_RUN_SPREAD, verified_answer

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
    rule_lr, rule_info = rule_answer(x, s, raw, family)
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
        lr, band, method = verified_answer(trainer, x, rule_lr, scaling.default_lr(family), rule_info, verify_steps,
                                            budget, details, warnings, many, family)
    else:
        details["verify_steps_used"] = 0
        lr = rule_lr
        lo, hi = bootstrap_band(x, raw, s, family, rng_seed)
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
    details["uncertainty"] = uncertainty(band, rules)
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
