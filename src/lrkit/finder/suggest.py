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

   (a cold start tolerates less than the warmed-up ramp did), divided by a further 3 when the curve
   is flat (:math:`(\\bar\\ell_0 - \\bar\\ell_{\\min}) < 0.05\\,|\\bar\\ell_0|`: a pre-trained model or a
   ramp that started too high; short ramps overshoot there).
3. **Cold-start verification** (``trainer`` and ``verify_steps = k > 0``): candidates
   :math:`\\eta_j = \\eta_{top}\\,\\rho^{-j},\\ j = 0,1,\\dots` are tried from the top down, with
   :math:`\\eta_{top} = \\eta_{\\min},\\ \\rho = \\sqrt{10}`; when the curve is uninformative (its minimum
   lies in its first tenth: the loss never got below its start) the whole recorded range is
   searched instead, :math:`\\eta_{top} = \\eta_{last},\\ \\rho = 10`. Each candidate starts from the
   caller's state (``restore``), runs :math:`k` steps at the constant LR :math:`\\eta_j` (a cold
   start, like the real run), and is scored by ``trainer.evaluate()`` when it returns a number, else
   by the mean training loss of the last third of the steps (every candidate sees the same
   batches). A candidate is rejected when a loss is non-finite, when two consecutive losses exceed
   4x the median of its first three (the run is aborted there, so a divergent candidate costs a few
   steps), or when its score does not improve on the starting score. The descent stops once two
   consecutive candidates (:data:`PATIENCE`) are more than :math:`\\tau = 2\\%` worse than the best
   so far (the optimum is behind; one alone can be noise), after :data:`MAX_CANDIDATES` full runs,
   or after :data:`MAX_TRIED` candidates.
4. **Pick.** With :math:`S_{-}, S_0, S_{+}` the scores of the best candidate and of its neighbours
   one step below and above, the short-run optimum is the vertex of the parabola through them in
   :math:`\\log\\eta` (clamped to half a grid step; half a step down if the upper neighbour failed),

   .. math::

       \\log\\hat\\eta = \\log\\eta_0 + \\frac{h\\,(S_{-} - S_{+})}{2\\,(S_{-} - 2S_0 + S_{+})},
       \\qquad h = \\log\\rho,

   and the answer is :math:`\\eta^* = \\hat\\eta / 2` (:data:`SHORT_RUN_FACTOR`): a run of
   :math:`k` steps rewards early progress and cannot see the higher noise floor of a too-high LR
   later, so its optimum sits above the full run's (by 2-3x on the benchmark tasks). The factor is
   deliberately the low end: too low costs a little, too high can cost a diverged run.
5. **Band** :math:`[\\eta_{lo}, \\eta_{hi}]`: with verification, the accepted candidates within
   :math:`\\tau` of the best and :math:`\\hat\\eta`, all divided by 2 (widened to contain
   :math:`\\eta^*`); without, the 10th-90th percentile
   of the rule answer over 64 bootstrap curves (the smoothed curve plus resampled residuals, seeded
   by ``rng_seed``), together with the rule answer itself.
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

__all__ = [
    "Suggestion",
    "suggest",
    "classic_suggestions",
    "GRID_RATIO",
    "WIDE_RATIO",
    "MAX_CANDIDATES",
    "MAX_TRIED",
    "PATIENCE",
    "NOISE_TOL",
    "ABORT_FACTOR",
    "SHORT_RUN_FACTOR",
    "FLAT_DROP",
]

#: ratio between neighbouring candidates (half a decade).
GRID_RATIO = math.sqrt(10.0)
#: ratio between candidates when the curve is uninformative (its minimum in the first tenth).
WIDE_RATIO = 10.0
#: most candidates a verification runs to the end (2 decades below the minimum).
MAX_CANDIDATES = 5
#: most candidates tried in all (aborted divergent runs included).
MAX_TRIED = 8
#: the descent stops after this many consecutive candidates worse than the best (one can be noise).
PATIENCE = 2
#: relative score difference treated as noise.
NOISE_TOL = 0.02
#: a verification run is aborted when two consecutive losses exceed this multiple of the median
#: of its first three.
ABORT_FACTOR = 4.0
#: the short-run optimum is divided by this before it is returned (short runs favour high LRs).
SHORT_RUN_FACTOR = 2.0
#: a curve whose smoothed loss drops by less than this fraction is "flat".
FLAT_DROP = 0.05

_ADAPTIVE = frozenset({"adam", "adamw", "rmsprop", "adagrad", "adadelta", "lion", "unknown", "lr_free"})


@dataclass(frozen=True)
class Suggestion:
    """A suggested learning rate with its uncertainty and the evidence behind it.

    Attributes:
        lr: the suggested learning rate (rescaled to ``target_batch_size`` when one was given).
        method: how it was chosen: ``"rule"``, ``"verified"``, ``"rule(verification rejected all)"``,
            with ``"+flat"`` / ``"+scaled"`` appended when those adjustments applied.
        band: ``(lo, hi)`` learning rates about as good as ``lr``; ``lo <= lr <= hi``.
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


def _rule_lr(x: np.ndarray, s: np.ndarray, raw: np.ndarray, family: str) -> tuple[float, dict]:
    """Steps 1-2 of the module docstring on one (lrs, smoothed, raw) curve."""
    i_min = int(np.argmin(s))
    lr_min = float(x[i_min])
    steep = torch_lr_finder_steepest(x, raw)
    if steep is None:  # short curve: steepest descent of the smoothed loss against log(lr)
        steep = float(x[int(np.argmin(np.gradient(s, np.log(x))))]) if len(x) > 2 and x[-1] > x[0] else lr_min
    cap = 10.0 if family in _ADAPTIVE else 3.0
    lr = min(steep, lr_min / cap)
    scale = abs(s[0]) if s[0] != 0 else 1.0
    flat = bool((s[0] - s[i_min]) < FLAT_DROP * scale)
    if flat:
        lr /= 3.0
    lr = float(np.clip(lr, x[0], x[-1]))
    informative = bool(i_min >= max(3, len(x) // 10))
    return lr, {"loss_min_lr": lr_min, "steepest": steep, "cap_divisor": cap, "flat_curve": flat,
                "informative": informative}


CLASSIC_RULES = ("steepest", "steepest_lightning", "valley", "minimum_div_10")


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


def _run_candidate(trainer: Any, state: Any, lr: float, steps: int, ref_eval: float | None) -> dict:
    """Restore, run ``steps`` constant-LR steps, score; always leaves the trainer restored."""
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
            above = above + 1 if ref > 0 and loss > ABORT_FACTOR * ref else 0
            if above >= 2:
                reason = f"loss above {ABORT_FACTOR:g}x its start twice in a row"
                break
        score = None
        if reason is None:
            val = trainer.evaluate()
            if val is not None and not math.isfinite(float(val)):
                reason = "non-finite validation loss"
            elif val is not None:
                score = float(val)
            else:
                tail = losses[-max(1, len(losses) // 3):]
                score = float(np.mean(tail))
            if reason is None:
                start = ref_eval if (val is not None and ref_eval is not None) else float(np.median(losses[:3]))
                if not score < start:
                    reason = f"no improvement (score {score:.4g} >= start {start:.4g})"
    finally:
        trainer.restore(state)
    return {"lr": lr, "score": score if reason is None else None, "steps": len(losses), "rejected": reason}


def _pick(results: list[dict], ratio: float) -> tuple[float, tuple[float, float], str]:
    """Step 4: the short-run optimum from the scored candidates (parabola in log-LR), and its band."""
    ok = [r for r in results if r["score"] is not None]
    best = min(ok, key=lambda r: r["score"])
    s_best = best["score"]
    near = [r["lr"] for r in ok if r["score"] <= s_best + NOISE_TOL * abs(s_best)]
    band = (min(near), max(near))
    h = math.log(ratio)
    x0 = math.log(best["lr"])
    k = results.index(best)  # results run down the grid: results[k - 1] is one step up
    upper = results[k - 1] if k > 0 else None
    lower = results[k + 1] if k + 1 < len(results) else None
    if lower is None or lower["score"] is None:
        return best["lr"], band, "best candidate (no lower neighbour to interpolate)"
    if upper is None:
        return best["lr"], band, "best candidate (no upper neighbour to interpolate)"
    if upper["score"] is None:
        shift = -h / 2
        how = "half a step below the best (the next candidate up failed)"
    else:
        s_lo, s_hi = lower["score"], upper["score"]
        curv = s_lo - 2 * s_best + s_hi
        shift = h * (s_lo - s_hi) / (2 * curv) if curv > 0 else 0.0
        shift = min(max(shift, -h / 2), h / 2)
        how = "vertex of the parabola through the best and its neighbours (log-LR)"
    lr = math.exp(x0 + shift)
    return lr, (min(band[0], lr), max(band[1], lr)), how


def _verify(trainer: Any, lr_top: float, lr_floor: float, steps: int, ratio: float) -> tuple[list[dict], int, float | None]:
    state = trainer.snapshot()
    try:
        ref_eval = trainer.evaluate()
        ref_eval = float(ref_eval) if ref_eval is not None and math.isfinite(float(ref_eval)) else None
        results: list[dict] = []
        best, worse = math.inf, 0
        for j in range(MAX_TRIED):
            lr = lr_top / ratio**j
            if lr < lr_floor * (1 - 1e-12) and results and any(r["score"] is not None for r in results):
                break
            if sum(r["steps"] == steps for r in results) >= MAX_CANDIDATES:
                break
            r = _run_candidate(trainer, state, lr, steps, ref_eval)
            results.append(r)
            if r["score"] is None:
                continue
            if r["score"] < best:
                best, worse = r["score"], 0
            elif r["score"] > best + NOISE_TOL * abs(best):
                worse += 1
                if worse >= PATIENCE:
                    break  # past the short-run optimum
    finally:
        trainer.restore(state)
        del state
    used = sum(r["steps"] for r in results)
    return results, used, ref_eval


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
            ``MAX_CANDIDATES * verify_steps`` steps, usually less.
        batch_size: the batch size of the range test.
        target_batch_size: the batch size of the real run; needs ``batch_size``.
        rng_seed: seed of the bootstrap band (rule-only answers).

    Returns:
        A :class:`Suggestion`.

    Example:
        >>> lrs = np.logspace(-6, 0, 80)
        >>> losses = np.where(lrs < 1e-2, 1.0 - 0.1 * np.log10(lrs / 1e-6), 9.0)
        >>> s = suggest(lrs, losses, family="adam", batch_size=32, target_batch_size=128)
        >>> s.method, s.details["batch_scaling"]["rule"]
        ('rule+scaled', 'sqrt')
    """
    if family not in scaling.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(scaling.FAMILIES)}, got {family!r}")
    verify_steps = _check_int("verify_steps", verify_steps, 0)
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
    n_given = len(np.atleast_1d(np.asarray(lrs)))
    x, raw = check_curve(lrs, losses)
    if len(x) < 4:
        raise ValueError(
            f"lrs/losses must hold at least 4 finite points to suggest from, got {len(x)} (of {n_given}); "
            "lower start_lr or raise num_iter"
        )
    rules: dict[str, float | None] = dict(classic_suggestions(x, raw))
    s = ema_bias_corrected(raw, 0.95)
    rule_lr, rule_info = _rule_lr(x, s, raw, family)
    rules["lrkit_rule"] = rule_lr
    rules["lr_at_min_loss"] = rule_info["loss_min_lr"]
    details: dict[str, Any] = {"family": family, "rule": rule_info, "verify_steps": verify_steps}

    if verify_steps > 0:
        if rule_info["informative"]:
            top, ratio = rule_info["loss_min_lr"], GRID_RATIO
        else:  # the curve never got below its start: search the whole recorded range, a decade apart
            top, ratio = float(x[-1]), WIDE_RATIO
        details["grid"] = {"top": top, "ratio": ratio, "informative_curve": rule_info["informative"]}
        results, used, ref_eval = _verify(trainer, top, float(x[0]), verify_steps, ratio)
        details["candidates"] = results
        details["verify_steps_used"] = used
        details["start_score"] = ref_eval
        details["score"] = "evaluate()" if ref_eval is not None else "mean training loss, last third"
        ok = [r for r in results if r["score"] is not None]
        if ok:
            lr_short, band, refine = _pick(results, ratio)
            lr = max(lr_short / SHORT_RUN_FACTOR, float(x[0]))
            band = (max(band[0] / SHORT_RUN_FACTOR, float(x[0])), band[1] / SHORT_RUN_FACTOR)
            details["short_run_optimum"] = lr_short
            details["refine"] = refine
            method = "verified"
        else:
            lr = min(rule_lr, min(r["lr"] for r in results) / ratio)
            lr = max(lr, float(x[0]))
            band = (lr, lr)
            method = "rule(verification rejected all)"
            details["warning"] = (
                "every candidate diverged or failed to improve in a cold start; the answer, "
                "min(rule answer, lowest candidate / grid ratio) but not below the first range-test LR, "
                "is unverified. Lower start_lr, check the model, or raise verify_steps."
            )
    else:
        details["verify_steps_used"] = 0
        lr = rule_lr
        lo, hi = _bootstrap_band(x, raw, s, family, rng_seed)
        band = (min(lo, lr), max(hi, lr))
        method = "rule"
        if rule_info["flat_curve"]:
            method += "+flat"
    band = (float(min(band[0], lr)), float(max(band[1], lr)))
    details["uncertainty"] = _uncertainty(band, rules)

    if batch_size is not None and target_batch_size is not None and target_batch_size != batch_size:
        rule_name = scaling.scaling_rule(family)
        new_lr = scaling.scale_lr(lr, batch_size, target_batch_size, rule="auto", family=family)
        factor = new_lr / lr
        details["batch_scaling"] = {
            "from_batch_size": batch_size, "to_batch_size": target_batch_size, "rule": rule_name,
            "factor": factor, "lr_before": lr,
        }
        lr, band = new_lr, (band[0] * factor, band[1] * factor)
        method += "+scaled"
    return Suggestion(lr=float(lr), method=method, band=(float(band[0]), float(band[1])), rules=rules, details=details)
