r"""The autopilot's plan: from a finder result, the optimizer family and the run length to a schedule.

:func:`make_plan` is pure (NumPy only): it checks that the model trains at all (a flat finder curve
stops the autopilot before training, :class:`NotTrainable`), picks the schedule shape
(:func:`lrkit.autopilot.policy.default_shape`, or the user's ``shape``), and sets its scale,

.. math::

    \eta_t = \eta_{peak}\, \frac{s(t)}{\hat s},\qquad
    \eta_{peak} = \eta_f \,\big(\hat s/\bar s\big)^{\alpha}

with :math:`\eta_f` the finder's suggestion, :math:`s` the shape, :math:`\hat s` its peak and
:math:`\bar s` its mean over the run (:func:`lrkit.autopilot.policy.peak_factor`). The result is
an :class:`AutopilotPlan`: plain data that round-trips through JSON (:meth:`AutopilotPlan.to_dict`,
:meth:`AutopilotPlan.from_dict`), so a resumed run rebuilds it without a second finder run.

Example:
    >>> import numpy as np
    >>> from lrkit.finder.result import FinderResult
    >>> lrs = np.geomspace(1e-5, 1.0, 40)
    >>> curve = 2.0 - np.tanh(np.log10(lrs) + 3)          # the loss falls between 1e-4 and 1e-2
    >>> r = FinderResult(lrs=lrs, losses=curve, smoothed_losses=curve, suggestion=1e-3, method="verified")
    >>> plan = make_plan(r, family="adam", train_steps=1000)
    >>> round(plan.peak_lr, 5), plan.warmup_steps, round(plan.schedule(49), 5)
    (0.002, 50, 0.002)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrkit import schedules as S
from lrkit.autopilot import policy
from lrkit.finder.inputs import UNSCALED_WARNING
from lrkit.finder.result import SCORED_BY_VALIDATION
from lrkit.finder.verify import WORSE, got_worse
from lrkit.scaling import FAMILIES, lr_ignored, optimizer_family
from lrkit.schedules.base import Schedule

__all__ = [
    "AutopilotError",
    "AutopilotPlan",
    "NotTrainable",
    "FLAT_DROP",
    "check_optimizer",
    "check_trainable",
    "make_plan",
    "resolve_train_steps",
]

#: a range-test curve whose smoothed loss never falls this fraction below its start is flat.
FLAT_DROP = 0.02
#: a verification candidate "improved" when its score is this fraction below the start.
IMPROVE_TOL = 0.01
#: candidate runs shorter than this, and range tests with fewer points than the next, are too short
#: to call a model untrainable (the check then lets it through).
MIN_EVIDENCE_STEPS = 5
MIN_EVIDENCE_POINTS = 20


class AutopilotError(ValueError):
    """The autopilot cannot run as asked; the message says why and what to pass instead."""


class NotTrainable(AutopilotError):
    """The finder found no learning rate at which the model trains (its curve is flat)."""


def resolve_train_steps(train_steps: Any, *, epochs: Any = None, steps_per_epoch: Any = None,
                        where: str = "autopilot") -> int:
    """The run length in optimizer steps: ``train_steps``, else ``epochs * steps_per_epoch``.

    Raises:
        AutopilotError: neither is known (an iterable without ``len()``, no ``train_steps``), or a
            value is not a whole number >= 1.

    Example:
        >>> resolve_train_steps(None, epochs=3, steps_per_epoch=100)
        300
        >>> resolve_train_steps(None, epochs=3, steps_per_epoch=None)
        Traceback (most recent call last):
        ...
        lrkit.autopilot.plan.AutopilotError: autopilot: the run length is unknown: pass train_steps=N (the optimizer steps of the whole run); epochs=3 was given but the data has no len() to count the steps of an epoch
    """
    def whole(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise AutopilotError(f"{where}: {name} must be a whole number >= 1, got {v!r}")
        return int(v)

    if train_steps is not None:
        return whole("train_steps", train_steps)
    if epochs is not None and steps_per_epoch is not None:
        return whole("epochs", epochs) * whole("steps per epoch", steps_per_epoch)
    why = ("the data has no len() to count the steps of an epoch" if epochs is not None
           else "no train_steps was given and the data has no len() to infer it from")
    raise AutopilotError(f"{where}: the run length is unknown: pass train_steps=N (the optimizer steps "
                         f"of the whole run){'; epochs=' + str(epochs) + ' was given but ' if epochs is not None else '; '}"
                         f"{why}")


def check_optimizer(optimizer: Any, *, where: str = "autopilot") -> str:
    """The optimizer's family, or :class:`AutopilotError` if the autopilot must not set its LR.

    Refused: learning-rate-free optimizers (Prodigy, D-Adaptation: they estimate their own step
    size, and an LR schedule on top fights that estimate) and Schedule-Free optimizers (they
    replace the decay by iterate averaging; a decaying schedule undoes it).

    Example:
        >>> check_optimizer("AdamW")
        'adamw'
        >>> check_optimizer("Prodigy")
        Traceback (most recent call last):
        ...
        lrkit.autopilot.plan.AutopilotError: autopilot: Prodigy is a learning-rate-free optimizer: it estimates its own step size and an LR schedule on top would fight that estimate. Use it on its own, or give the autopilot an optimizer with a learning rate (e.g. torch.optim.AdamW).
    """
    name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    ignored = lr_ignored(optimizer)
    if ignored is not None:
        raise AutopilotError(f"{where}: {ignored}")
    family = optimizer_family(optimizer)
    if family == "lr_free" and "schedulefree" not in name.lower().replace("_", ""):
        raise AutopilotError(
            f"{where}: {name} is a learning-rate-free optimizer: it estimates its own step size and an LR "
            "schedule on top would fight that estimate. Use it on its own, or give the autopilot an "
            "optimizer with a learning rate (e.g. torch.optim.AdamW).")
    if "schedulefree" in name.lower().replace("_", ""):
        raise AutopilotError(
            f"{where}: {name} is a Schedule-Free optimizer: it replaces the LR decay by iterate averaging, "
            "and the autopilot's warmup-then-decay schedule would undo that. Use it on its own, or give "
            "the autopilot the plain optimizer (e.g. torch.optim.AdamW).")
    return family


def _flat_evidence(result: Any) -> tuple[bool, str]:
    """Whether the finder saw the model train at some LR, and the numbers that say so."""
    s = np.asarray(result.smoothed_losses, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return True, "the range test recorded fewer than 2 finite losses"
    start, low = float(s[0]), float(np.min(s))
    drop = (start - low) / abs(start) if start != 0 else (start - low)
    lrs = np.asarray(result.lrs)
    curve = (f"the range-test loss went from {start:.4g} to at best {low:.4g} ({drop:+.1%}) over lr "
             f"{float(lrs[0]):.3g} .. {float(lrs[-1]):.3g}")
    if drop >= FLAT_DROP:
        return False, curve
    if len(s) < MIN_EVIDENCE_POINTS:
        # a handful of LRs (a run of ~100 steps gets a 10-point range test) cannot rule out every LR
        return False, curve + " (too short a test to call the model untrainable)"
    if float(np.max(s)) > start + WORSE * abs(start):
        # the loss rose at the high LRs: it answers the weights, as a candidate that got worse says
        # (a tiny BERT whose 6-step candidates, scored on its validation set, all sat at chance)
        return False, curve + f", then rose to {float(np.max(s)):.4g}"
    details = getattr(result, "details", {}) or {}
    # a candidate run of a step or two cannot show progress: only longer ones are evidence
    candidates = [c for c in (details.get("candidates") or [])
                  if isinstance(c, dict) and int(c.get("steps") or 0) >= MIN_EVIDENCE_STEPS]
    if not candidates:
        return True, curve
    start_score = details.get("start_score")
    scores = [c["score"] for c in candidates if c.get("score") is not None]
    if start_score is not None:
        improved = any(sc < start_score - IMPROVE_TOL * abs(start_score) for sc in scores)
    else:
        improved = bool(scores)
    if improved:
        return False, curve
    moved = [c for c in details.get("candidates") or [] if isinstance(c, dict) and got_worse(c)]
    if moved:
        # too short to show progress, but the loss answers the weights: a model that learns late (a
        # transformer trained from scratch), not one whose loss does not depend on its parameters
        return False, curve
    tried = ", ".join(f"{c['lr']:.2g}" for c in candidates)
    return True, (f"{curve}, and none of the {len(candidates)} candidate LRs ({tried}) improved on the "
                  "starting loss in a short run")


def check_trainable(result: Any) -> None:
    """Raise :class:`NotTrainable` when the finder's curve says the model does not train at any LR.

    Flat means: the smoothed range-test loss never fell :data:`FLAT_DROP` (2%) below its start,
    *and* no verification candidate of at least :data:`MIN_EVIDENCE_STEPS` steps improved on the
    starting score by :data:`IMPROVE_TOL` (a pre-trained model can have a flat curve and still
    improve; it passes), *and* none got worse either (:func:`lrkit.finder.verify.got_worse`:
    diverged, died or ended :data:`~lrkit.finder.verify.WORSE` (10%) above its start -- a loss that
    answers the weights belongs to a model too slow to show progress in a short run, e.g. a
    transformer trained from scratch, not to one whose loss does not depend on its parameters; it
    passes, and the finder's answer says it is unverified), *and* the smoothed curve itself never
    rose that far above its start at the high LRs (the same evidence, from the range test); without
    such candidates the curve alone decides. A range test of fewer than :data:`MIN_EVIDENCE_POINTS`
    points is not enough evidence and passes, candidates or not: a 100-step run gets a 10-point test
    and 5-step candidates, in which a tiny BERT trained with SGD moves nowhere, though its loss
    depends on its weights.

    Example:
        >>> import numpy as np
        >>> from lrkit.finder.result import FinderResult
        >>> flat = FinderResult(lrs=np.geomspace(1e-4, 1, 20), losses=np.full(20, 2.3),
        ...                     smoothed_losses=np.full(20, 2.3), suggestion=1e-3, method="rule")
        >>> check_trainable(flat)
        Traceback (most recent call last):
        ...
        lrkit.autopilot.plan.NotTrainable: autopilot: the model does not train at any learning rate the finder tried: the range-test loss went from 2.3 to at best 2.3 (+0.0%) over lr 0.0001 .. 1. Check that the parameters require gradients and are in the optimizer, that the loss depends on them, and the labels. The autopilot stops here instead of guessing an LR.
    """
    flat, evidence = _flat_evidence(result)
    if flat:
        raise NotTrainable(
            f"autopilot: the model does not train at any learning rate the finder tried: {evidence}. Check "
            "that the parameters require gradients and are in the optimizer, that the loss depends on "
            "them, and the labels. The autopilot stops here instead of guessing an LR.")


def _normalised(shape: Any, train_steps: int) -> Schedule:
    if not isinstance(shape, Schedule):
        raise AutopilotError(f"autopilot: shape must be an lrkit.schedules.Schedule (its scale is ignored), "
                             f"got {type(shape).__name__}")
    try:
        peak, _ = policy.shape_stats(shape, train_steps)
    except ValueError as exc:
        raise AutopilotError(f"autopilot: {exc}") from None
    return shape if peak == 1.0 else S.scale(shape, 1.0 / peak)


@dataclass(frozen=True)
class AutopilotPlan:
    """What the autopilot decided before training, with its reasons (plain data, JSON round-trip).

    Attributes:
        family: the optimizer family (:data:`lrkit.scaling.FAMILIES`).
        train_steps: the run length :math:`T` in optimizer steps.
        peak_lr: the scale in use: :attr:`schedule` peaks at this LR.
        shape: the schedule shape, peak 1.0 over the run.
        auto_peak_lr: the peak the autopilot chose from the finder (``None`` without a finder
            result); equal to ``peak_lr`` unless the user fixed the scale.
        finder_lr: the finder's suggestion :math:`\\eta_f` (``None`` without a finder result).
        finder_cost_steps: optimizer steps the finder spent.
        shape_source: ``"auto"`` (:func:`~lrkit.autopilot.policy.default_shape`) or ``"user"``.
        warmup_steps: steps before the shape first reaches its peak (no plateau reduction before).
        reasons: one sentence per decision.
        finder_reference: ``(steps, loss, kind)`` of the finder's best verification run (``kind``
            ``"val"`` or ``"train"``: what it was scored by), the doctor's ``reference_run``;
            ``None`` when the finder verified nothing.
        many_epochs: the finder divided its answer for a run of many passes over a training set
            its model can fit (:mod:`lrkit.finder.regime`) and the scale in use is that answer's
            (not the user's): the plan already expects the run to overfit, and the early-overfitting
            restart (:mod:`lrkit.autopilot.overfit`) is off.
    """

    family: str
    train_steps: int
    peak_lr: float
    shape: Schedule
    auto_peak_lr: float | None = None
    finder_lr: float | None = None
    finder_cost_steps: int = 0
    shape_source: str = "auto"
    warmup_steps: int = 0
    reasons: tuple[str, ...] = field(default_factory=tuple)
    finder_reference: tuple[int, float, str] | None = None
    many_epochs: bool = False

    @property
    def schedule(self) -> Schedule:
        """The LR schedule of the run (before guard and plateau adjustments): ``peak_lr * shape``."""
        return S.scale(self.shape, self.peak_lr)

    def summary(self) -> str:
        """A few lines saying what the autopilot will do and why."""
        head = f"lrkit autopilot: peak LR {self.peak_lr:.3g} over {self.train_steps} steps ({self.family})"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the shape as :meth:`Schedule.to_dict`)."""
        return {"family": self.family, "train_steps": self.train_steps, "peak_lr": self.peak_lr,
                "shape": self.shape.to_dict(), "auto_peak_lr": self.auto_peak_lr, "finder_lr": self.finder_lr,
                "finder_cost_steps": self.finder_cost_steps, "shape_source": self.shape_source,
                "warmup_steps": self.warmup_steps, "reasons": list(self.reasons),
                "finder_reference": None if self.finder_reference is None else list(self.finder_reference),
                "many_epochs": self.many_epochs}

    @classmethod
    def from_dict(cls, d: Any) -> "AutopilotPlan":
        """Rebuild a plan from :meth:`to_dict` (checked)."""
        keys = {"family", "train_steps", "peak_lr", "shape", "auto_peak_lr", "finder_lr", "finder_cost_steps",
                "shape_source", "warmup_steps", "reasons"}
        if not isinstance(d, dict) or not keys <= set(d) <= keys | {"finder_reference", "many_epochs"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise AutopilotError(f"AutopilotPlan.from_dict: expected the keys {sorted(keys)}, got {got}")
        if d["family"] not in FAMILIES:
            raise AutopilotError(f"AutopilotPlan.from_dict: unknown family {d['family']!r}")
        return cls(family=d["family"], train_steps=int(d["train_steps"]), peak_lr=float(d["peak_lr"]),
                   shape=S.from_dict(d["shape"]),
                   auto_peak_lr=None if d["auto_peak_lr"] is None else float(d["auto_peak_lr"]),
                   finder_lr=None if d["finder_lr"] is None else float(d["finder_lr"]),
                   finder_cost_steps=int(d["finder_cost_steps"]), shape_source=str(d["shape_source"]),
                   warmup_steps=int(d["warmup_steps"]), reasons=tuple(d["reasons"]),
                   finder_reference=_reference(d.get("finder_reference")),
                   many_epochs=_flag(d.get("many_epochs", False)))


def _flag(value: Any) -> bool:
    """A saved ``many_epochs`` (a plan saved before it existed has none: ``False``)."""
    if not isinstance(value, bool):
        raise AutopilotError(f"AutopilotPlan.from_dict: many_epochs must be true or false, got {value!r}")
    return value


def _reference(ref: Any) -> tuple[int, float, str] | None:
    """A saved ``finder_reference`` (a plan saved before it existed has none)."""
    from lrkit.doctor.core import reference_run_ok  # the doctor's own check of what it will be given

    if ref is None:
        return None
    if not reference_run_ok(ref):
        raise AutopilotError(f"AutopilotPlan.from_dict: finder_reference must be [steps, loss, 'val' | 'train'], got {ref!r}")
    return int(ref[0]), float(ref[1]), str(ref[2])


def finder_reference(details: Any) -> tuple[int, float, str] | None:
    """``(steps, score, kind)`` of the best accepted verification candidate in a finder result's
    ``details`` (``kind`` ``"val"`` when scored by ``evaluate()``), or ``None``.

    Example:
        >>> finder_reference({"score": "evaluate()", "candidates": [
        ...     {"lr": 0.1, "score": None, "steps": 3}, {"lr": 0.01, "score": 0.5, "steps": 20}]})
        (20, 0.5, 'val')
    """
    if not isinstance(details, dict):
        return None
    ok = [c for c in details.get("candidates") or () if c.get("score") is not None and math.isfinite(c["score"])]
    if not ok:
        return None
    best = min(ok, key=lambda c: c["score"])
    kind = "val" if details.get("score") == SCORED_BY_VALIDATION else "train"
    return int(best["steps"]), float(best["score"]), kind


def _warmup_of(shape: Schedule, train_steps: int) -> int:
    values = shape(np.arange(train_steps))
    first_peak = int(np.argmax(values >= values.max() * (1 - 1e-9)))
    return first_peak + 1 if first_peak > 0 else 0


def make_plan(
    result: Any = None,
    *,
    family: str,
    train_steps: int,
    shape: Schedule | None = None,
    peak_lr: float | None = None,
) -> AutopilotPlan:
    """Decide the schedule of a run (see the module docstring).

    Args:
        result: the :class:`~lrkit.finder.result.FinderResult` of ``find_lr(..., train_steps=T)``;
            ``None`` only together with ``peak_lr``.
        family: the optimizer family (``lrkit.scaling.optimizer_family(optimizer)``).
        train_steps: :math:`T`, optimizer steps of the whole run.
        shape: your own schedule shape (any :class:`~lrkit.schedules.Schedule`; its scale is
            ignored, the autopilot sets it). Default: the autopilot's shape for the family.
        peak_lr: fix the scale yourself (the finder's answer is then kept only as the guard's
            fallback, see :func:`lrkit.autopilot.policy.lowered_multiplier`).

    Raises:
        AutopilotError: a bad argument, or a learning-rate-free family.
        NotTrainable: the finder's curve is flat (the model does not train at any LR).
    """
    if family not in FAMILIES:
        raise AutopilotError(f"autopilot: family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if family == "lr_free":
        check_optimizer("Prodigy")  # raises the refusal with its reason
    train_steps = resolve_train_steps(train_steps)
    if peak_lr is not None and (isinstance(peak_lr, bool) or not isinstance(peak_lr, (int, float))
                                or not math.isfinite(peak_lr) or peak_lr <= 0):
        raise AutopilotError(f"autopilot: peak_lr must be a finite number > 0 or None (the autopilot "
                             f"chooses), got {peak_lr!r}")
    if result is None and peak_lr is None:
        raise AutopilotError("autopilot: make_plan needs a finder result (find_lr(..., train_steps=T)) or peak_lr")
    reasons: list[str] = []
    if shape is None:
        shape_n, source = policy.default_shape(family, train_steps), "auto"
        reasons.append("schedule: " + policy.shape_reason(family, train_steps))
    else:
        shape_n, source = _normalised(shape, train_steps), "user"
        reasons.append(f"schedule: your shape {shape.to_spec()}, rescaled by the autopilot")
        if shape.total_steps is not None and shape.total_steps != train_steps:
            reasons.append(f"note: your shape lasts {shape.total_steps} steps, the run {train_steps}")
    factor = policy.peak_factor(shape_n, train_steps)
    auto = finder_lr = None
    cost = 0
    if result is not None:
        check_trainable(result)
        finder_lr = float(result.suggestion)
        auto = finder_lr * factor
        cost = int(getattr(result, "cost_steps", 0) or (result.details or {}).get("range_test_steps", 0)
                   + (result.details or {}).get("verify_steps_used", 0))
        reasons.append(f"peak LR {auto:.3g} = finder's constant-LR answer {finder_lr:.3g} x {factor:.2f} "
                       f"(the shape's peak/mean ratio to the power {policy.ALPHA}); the finder cost {cost} steps "
                       f"({cost / train_steps:.0%} of the run)")
        unscaled = [w for w in (result.details or {}).get("warnings") or () if w.startswith(UNSCALED_WARNING)]
        reasons.extend(f"inputs: {w}" for w in unscaled)  # no LR fixes that: said before training
    if peak_lr is not None:
        reasons.append(f"peak LR {float(peak_lr):.3g}: given by you"
                       + (f" ({float(peak_lr) / auto:.3g}x the autopilot's {auto:.3g})" if auto else ""))
    peak = float(peak_lr) if peak_lr is not None else float(auto)
    g = policy.guard_settings(train_steps)
    reasons.append(f"guard: snapshot every {g['snapshot_every']} healthy steps; on divergence roll back and "
                   f"lower the LR x{policy.GAMMA} (a first problem out of a healthy run keeps the LR: a bad batch is likelier)")
    reference = finder_reference(result.details) if result is not None else None
    # the plan expects the run to overfit when its own scale comes from a finder answer divided for it
    many = result is not None and peak_lr is None and bool((result.details or {}).get("many_epochs_factor"))
    if many:
        shape_info = result.details["run_shape"]
        reasons.append(
            f"many epochs: the run makes {shape_info['epochs']:.0f} passes over a training set its model can fit, "
            "so the finder divided its answer for a run that overfits (lrkit.finder.regime); no "
            "early-overfitting restart on top of that")
    ceiling = policy.lr_ceiling(auto)
    if ceiling is not None and peak > ceiling:
        reasons.append(
            f"watch: your peak is above {policy.CEILING:g}x the autopilot's ({ceiling:.3g}, an LR the "
            "finder did not see train): a blow-up there, a run stuck since one"
            + (f", or a run still 25% behind what the finder's best check reached ({reference[1]:.4g} "
               f"{'validation' if reference[2] == 'val' else 'training'} loss in {reference[0]} steps) after "
               f"{4 * reference[0]} steps" if reference is not None else "")
            + " is rolled back and brought to the autopilot's own peak")
    reasons.append("plateau: halve the LR after 3 validations without a 0.1% improvement (when validation "
                   f"losses are reported; those closer than {policy.plateau_gap(train_steps)} steps are averaged)")
    return AutopilotPlan(family=family, train_steps=train_steps, peak_lr=peak, shape=shape_n, auto_peak_lr=auto,
                         finder_lr=finder_lr, finder_cost_steps=cost, shape_source=source,
                         warmup_steps=_warmup_of(shape_n, train_steps), reasons=tuple(reasons),
                         finder_reference=reference, many_epochs=many)
