"""The verified answer: steps 3-5 of :mod:`lrkit.finder.suggest` put together (the search of
:mod:`lrkit.finder.search`, the short-run factor, the full-run band), and the answer when no
candidate made progress."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lrkit.finder.regime import MANY_EPOCHS_FACTOR
from lrkit.finder.search import (DEAD, GRID_RATIO, MIN_PROGRESS, SHORT_RUN_FACTOR, SIGN_UPDATE_FACTOR,
                                 WIDE_RATIO, pick, run_search)

#: decades below and above a verified answer that its band reaches at least: the 10th and 90th
#: percentiles of log10(oracle LR / answer) over the development half of the finder's benchmark
#: (60 verified runs, six seeds; ``python -m benchmarks.finder_regret --half dev``)
FULL_RUN_SPREAD = (0.85, 0.77)

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


def verified_answer(trainer: Any, x: np.ndarray, rule_lr: float, prior_lr: float, rule_info: dict,
                     verify_steps: int, budget: int, details: dict,
                     warnings: list[str], many: bool = False,
                     family: str = "unknown") -> tuple[float, tuple[float, float], str]:
    """Steps 3-5 of the module docstring: ``(lr, band, method)``; the candidates and what the pick
    did go into ``details``, what the user should know into ``warnings``."""
    if rule_info["informative"]:
        top, decade = rule_info["loss_min_lr"], GRID_RATIO**2
    else:  # the curve never got below its start: search the recorded range from its top
        top, decade = float(x[-1]), WIDE_RATIO
    details["grid"] = {"top": top, "ratio": decade, "informative_curve": rule_info["informative"],
                       "budget_steps": budget}
    ceiling = float(x[-1]) * WIDE_RATIO
    search, used = run_search(trainer, top, float(x[0]), ceiling, verify_steps, decade, budget)
    details["candidates"] = search.results
    details["verify_steps_used"] = used
    details["deterministic_steps"] = deterministic = bool(search.deterministic)
    details["start_score"] = search.ref_eval
    details["score"] = search.scored_by
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
    lr_short, band, refine, edges = pick(search)
    factor = 1.0 if deterministic else SHORT_RUN_FACTOR
    details["short_run_factor"] = factor
    if many:  # and the full run passes its validation minimum long before its end: lrkit.finder.regime
        factor *= MANY_EPOCHS_FACTOR
        details["many_epochs_factor"] = MANY_EPOCHS_FACTOR
    if family in SIGN_UPDATE_FACTOR:  # deterministic steps too: a sign step oscillates by the LR at any noise
        factor *= SIGN_UPDATE_FACTOR[family]
        details["sign_update_factor"] = SIGN_UPDATE_FACTOR[family]
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
