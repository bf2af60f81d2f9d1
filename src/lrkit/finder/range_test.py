"""The learning-rate range test on the :class:`~lrkit.finder.trainer.Trainer` protocol (NumPy only).

The range test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017) trains for
``num_iter`` optimizer steps while the learning rate grows from ``start_lr`` to ``end_lr``, and
records the training loss of every step. The loss curve against the LR shows where training starts
to make progress and where it breaks down; :func:`find` turns it into a suggestion.

The ramp. With :math:`N` = ``num_iter`` steps and :math:`i = 0, \\dots, N-1`:

.. math::

    \\eta_i = \\eta_0 \\left(\\frac{\\eta_1}{\\eta_0}\\right)^{i/(N-1)} \\quad\\text{(mode="exp")},
    \\qquad
    \\eta_i = \\eta_0 + (\\eta_1 - \\eta_0)\\,\\frac{i}{N-1} \\quad\\text{(mode="linear")}

where :math:`\\eta_0` = ``start_lr`` and :math:`\\eta_1` = ``end_lr``: both endpoints are hit
exactly.

Smoothing and divergence. The raw losses :math:`\\ell_i` are smoothed by a bias-corrected
exponential moving average with weight :math:`\\alpha` = ``smooth`` on the newest loss:

.. math::

    m_i = (1-\\alpha)\\, m_{i-1} + \\alpha\\, \\ell_i,\\quad m_{-1} = 0,\\qquad
    \\bar\\ell_i = \\frac{m_i}{1 - (1-\\alpha)^{i+1}}

(:math:`\\alpha = 1` means no smoothing). The test stops early when the smoothed loss exceeds
``diverge_threshold`` times the best smoothed loss so far,
:math:`\\bar\\ell_i > \\tau \\min_{j \\le i} \\bar\\ell_j` (for a loss that went to or below zero,
where a ratio means nothing, see :func:`divergence_bound`), or when a loss is NaN or infinite (that
step is not recorded). Whatever happens (normal end, divergence, an exception, ``KeyboardInterrupt``)
the trainer's snapshot is restored before :func:`run_range_test` returns or raises.

Example:
    >>> import numpy as np
    >>> class Quadratic:                     # a ten-line Trainer: gradient descent on w**2
    ...     def __init__(self): self.w = 1.0
    ...     def snapshot(self): return self.w
    ...     def restore(self, state): self.w = state
    ...     def step(self, lr):
    ...         self.w -= lr * 2 * self.w
    ...         return self.w ** 2
    ...     def evaluate(self): return None
    >>> t = Quadratic()
    >>> rec = run_range_test(t, start_lr=1e-4, end_lr=10.0, num_iter=50)
    >>> rec.stopped_early, t.w               # diverged past lr = 1, and w is restored
    (True, 1.0)
    >>> bool(rec.lrs[0] == 1e-4)
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lrkit import scaling
from lrkit.finder.inputs import unscaled_inputs
from lrkit.finder.trainer import Trainer

__all__ = ["RangeTestRecord", "lr_ramp", "run_range_test", "find", "plan_budget", "DEFAULT_VERIFY_STEPS",
           "DEFAULT_NUM_ITER", "MAX_COST_FRACTION", "PLANNED_NUM_ITER", "MIN_PLANNED_NUM_ITER", "MIN_VERIFY_STEPS",
           "plan_verify_budget"]

#: optimizer steps per candidate run when neither ``verify_steps`` nor ``train_steps`` is given.
DEFAULT_VERIFY_STEPS = 30
#: range-test steps when neither ``num_iter`` nor ``train_steps`` is given.
DEFAULT_NUM_ITER = 100
#: with ``train_steps``, the finder spends at most this fraction of the real run.
MAX_COST_FRACTION = 0.3
#: with ``train_steps``, the range test's length: it only has to locate the loss minimum, the
#: verification runs decide (a longer ramp did not choose better on the regret benchmark).
PLANNED_NUM_ITER = 40
#: ... and never shorter than this (a run under 34 steps cannot fit even that in its 30%).
MIN_PLANNED_NUM_ITER = 10
#: the shortest verification run the plan makes: fewer steps cannot show a candidate's progress.
MIN_VERIFY_STEPS = 5
#: a run too short for this many verification runs (after the shortest range test) gets none: its
#: 30% all go to the range test, and the answer is the rule's, marked unverified.
MIN_PLANNED_CANDIDATES = 4
#: a range test that cannot take two steps from a start LR at or below this was not stopped by the
#: LR (a step this small moves no weight of a sane model): its error says so instead of "lower start_lr"
TINY_LR = 1e-5

ProgressFn = Callable[[int, float, float], None]


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def plan_budget(
    *,
    num_iter: int | None = None,
    verify: bool = True,
    verify_steps: int | None = None,
    train_steps: int | None = None,
) -> tuple[int, int]:
    r"""How many steps the range test and each verification run take: ``(num_iter, verify_steps)``.

    Without ``train_steps`` the defaults are :data:`DEFAULT_NUM_ITER` and
    :data:`DEFAULT_VERIFY_STEPS`. With the length :math:`T` of the real training run the finder
    keeps its cost within :data:`MAX_COST_FRACTION` of it: each of at most
    :math:`K` = :data:`lrkit.finder.suggest.MAX_CANDIDATES` verification runs takes
    :math:`v = \max(\lfloor T/30 \rfloor, 5)` steps, the determinism probe takes
    :math:`p` = :data:`lrkit.finder.suggest.PROBE_STEPS` and the range test at most
    :data:`PLANNED_NUM_ITER` of the rest (it only has to locate the loss minimum; the verification
    runs decide),

    .. math::

        n = \min\big(40,\ \max(10,\ \lfloor 0.3\,T \rfloor - K v - p)\big),
        \qquad n + K v + p \le 0.3\,T \quad (T \ge 100)

    (when fewer than :data:`MIN_PLANNED_CANDIDATES` verification runs of at least
    :data:`MIN_VERIFY_STEPS` steps fit beside a 10-step range test -- :math:`T < 100` -- there are
    none: the range test gets the whole 30% and the answer is the rule's, marked unverified).
    Values given explicitly win over the plan.

    Raises:
        ValueError: a count out of range, or ``verify=False`` with ``verify_steps > 0``.

    Example:
        >>> plan_budget()
        (100, 30)
        >>> plan_budget(train_steps=300)     # 38 + 5 x 10 + 2 = 90 steps = 30% of the run
        (38, 10)
        >>> plan_budget(train_steps=10_000, verify=False)
        (40, 0)
    """
    from lrkit.finder.search import default_verify_budget

    if num_iter is not None and not _is_count(num_iter, 2):
        raise ValueError(f"num_iter must be an integer >= 2, got {num_iter!r} (or None for the default)")
    if verify_steps is not None and not _is_count(verify_steps, 0):
        raise ValueError(f"verify_steps must be None or an integer >= 0, got {verify_steps!r}")
    if train_steps is not None and not _is_count(train_steps, 1):
        raise ValueError(f"train_steps must be None or an integer >= 1 (the length of the real run), got {train_steps!r}")
    if not isinstance(verify, (bool, np.bool_)):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    if not verify and verify_steps:
        raise ValueError(f"verify=False contradicts verify_steps={verify_steps}; drop one of them")
    if train_steps is None:
        v = (DEFAULT_VERIFY_STEPS if verify_steps is None else int(verify_steps)) if verify else 0
        return (DEFAULT_NUM_ITER if num_iter is None else int(num_iter)), v
    v = (max(int(train_steps) // 30, MIN_VERIFY_STEPS) if verify_steps is None else int(verify_steps)) if verify else 0
    total = int(MAX_COST_FRACTION * train_steps)
    if verify_steps is None and v and total - MIN_PLANNED_NUM_ITER < MIN_PLANNED_CANDIDATES * v:
        # too short a run for a search worth the name: the whole 30% goes to the range test
        return (min(PLANNED_NUM_ITER, max(MIN_PLANNED_NUM_ITER, total)) if num_iter is None else int(num_iter)), 0
    room = total - default_verify_budget(v)
    n = min(PLANNED_NUM_ITER, max(MIN_PLANNED_NUM_ITER, room)) if num_iter is None else int(num_iter)
    return n, v


def plan_verify_budget(train_steps: int | None, num_iter: int) -> int | None:
    r"""The most steps all verification runs may take together: what the range test leaves of
    :data:`MAX_COST_FRACTION` of the run, :math:`\lfloor 0.3\,T \rfloor - n`; ``None`` without
    ``train_steps`` (the suggestion's own default, :func:`~lrkit.finder.suggest.default_verify_budget`, applies).
    On a short run this allows fewer candidates than :data:`lrkit.finder.suggest.MAX_CANDIDATES`,
    each still at least :data:`MIN_VERIFY_STEPS` long (a verification run too short to show
    progress is no verification).

    Example:
        >>> plan_budget(train_steps=120), plan_verify_budget(120, 10)   # 5 runs of 5 steps and the probe fit
        ((10, 5), 26)
        >>> plan_budget(train_steps=90)    # too short to verify: a 27-step range test
        (27, 0)
        >>> plan_verify_budget(None, 100) is None
        True
    """
    if train_steps is None:
        return None
    return max(0, int(MAX_COST_FRACTION * train_steps) - int(num_iter))


@dataclass(frozen=True)
class RangeTestRecord:
    """What a range test measured.

    Attributes:
        lrs: the learning rate of every recorded step (float64, increasing).
        losses: the raw training loss of every recorded step (all finite).
        smoothed: the bias-corrected EMA of ``losses`` (see the module docstring).
        stopped_early: ``True`` if the test stopped before ``num_iter`` steps (divergence).
        reason: why it stopped, in words (``"completed 100 steps"``, ``"loss is nan at ..."``).
        num_iter: the number of steps that were planned.
        steps_run: optimizer steps actually taken (the recorded ones, plus a last one whose loss
            was not finite); the cost of the test.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    stopped_early: bool
    reason: str
    num_iter: int = field(default=0)
    steps_run: int = field(default=0)


def _check_lr(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def divergence_bound(best: float, fall: float, tau: float) -> float:
    r"""The loss above which a run counts as blown up, given its best (or starting) loss :math:`b`.

    :math:`\tau\, b` while :math:`b > 0` (the classic rule). A loss that went to or below zero --
    a Gaussian negative log-likelihood with a learned variance, a loss with a negative term -- has
    no meaningful ratio (with :math:`b < 0` every loss is above :math:`\tau b`); there the bound is
    :math:`b + (\tau - 1)\max(|b|,\ f)`: a rise above :math:`b` of :math:`\tau - 1` times the
    larger of :math:`|b|` and ``fall`` :math:`f`, the scale of the loss's own movement (the range
    test: how far its smoothed loss came down from its first value; a candidate run: how far its
    first losses lie below their median).

    Example:
        >>> divergence_bound(1.0, 1.3, 4.0)
        4.0
        >>> divergence_bound(-1.0, 6.0, 4.0)
        17.0
    """
    if best > 0:
        return tau * best
    return best + (tau - 1.0) * max(abs(best), fall)


def _check_args(start_lr, end_lr, num_iter, mode, smooth, diverge_threshold) -> tuple[float, float]:
    start = _check_lr("start_lr", start_lr)
    end = _check_lr("end_lr", end_lr)
    if not start < end:
        raise ValueError(f"start_lr must be < end_lr, got start_lr={start!r} and end_lr={end!r}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)) or num_iter < 2:
        raise ValueError(f"num_iter must be an integer >= 2, got {num_iter!r}")
    if mode not in ("exp", "linear"):
        raise ValueError(f"mode must be 'exp' or 'linear', got {mode!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float, np.floating)) or not (0 < smooth <= 1):
        raise ValueError(f"smooth must be a number in (0, 1] (1 = no smoothing), got {smooth!r}")
    if (
        isinstance(diverge_threshold, bool)
        or not isinstance(diverge_threshold, (int, float, np.floating, np.integer))
        or not (math.isfinite(diverge_threshold) and diverge_threshold > 1)
    ):
        raise ValueError(f"diverge_threshold must be a finite number > 1, got {diverge_threshold!r}")
    return start, end


def lr_ramp(start_lr: float, end_lr: float, num_iter: int, mode: str = "exp") -> np.ndarray:
    """The learning rates of a range test, ``num_iter`` values from ``start_lr`` to ``end_lr``.

    .. math::

        \\eta_i = \\eta_0 (\\eta_1/\\eta_0)^{i/(N-1)} \\ (\\text{exp}),\\qquad
        \\eta_i = \\eta_0 + (\\eta_1-\\eta_0)\\, i/(N-1) \\ (\\text{linear})

    Both endpoints are exact and the ramp is strictly increasing.

    Example:
        >>> lr_ramp(1e-3, 1.0, 4).round(6).tolist()
        [0.001, 0.01, 0.1, 1.0]
        >>> lr_ramp(0.1, 0.4, 4, mode="linear").round(6).tolist()
        [0.1, 0.2, 0.3, 0.4]
    """
    start, end = _check_args(start_lr, end_lr, num_iter, mode, 0.05, 4.0)
    frac = np.arange(num_iter, dtype=np.float64) / (num_iter - 1)
    if mode == "exp":
        lrs = start * (end / start) ** frac
    else:
        lrs = start + (end - start) * frac
    lrs[0], lrs[-1] = start, end
    # rounding can make two neighbours equal when the range is tiny; keep it strictly increasing
    return np.maximum.accumulate(lrs)


def run_range_test(
    trainer: Trainer,
    *,
    start_lr: float,
    end_lr: float,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 4.0,
    progress: ProgressFn | None = None,
) -> RangeTestRecord:
    """Run the LR range test on ``trainer`` and restore its state afterwards.

    Args:
        trainer: any object with ``snapshot()``, ``restore(state)`` and ``step(lr) -> float``.
        start_lr: first learning rate, finite and > 0.
        end_lr: last learning rate, finite and > ``start_lr``.
        num_iter: number of optimizer steps planned, an integer >= 2.
        mode: ``"exp"`` (geometric ramp, the usual choice) or ``"linear"``.
        smooth: EMA weight of the newest loss, in (0, 1]; 1 disables smoothing.
        diverge_threshold: stop when the smoothed loss exceeds this multiple (> 1) of the best one.
        progress: optional callback ``progress(i, lr, loss)`` called after every step (the core
            never prints).

    Returns:
        A :class:`RangeTestRecord`.

    Raises:
        ValueError: bad arguments, or the loss is not finite at the very first step (the model or
            data is broken, or ``start_lr`` is already too high).

    Example:
        >>> class Const:
        ...     def snapshot(self): return None
        ...     def restore(self, state): pass
        ...     def step(self, lr): return 1.0
        ...     def evaluate(self): return None
        >>> run_range_test(Const(), start_lr=0.01, end_lr=1.0, num_iter=3).losses.tolist()
        [1.0, 1.0, 1.0]
    """
    lrs_planned = lr_ramp(start_lr, end_lr, num_iter, mode)
    _check_args(start_lr, end_lr, num_iter, mode, smooth, diverge_threshold)
    for attr in ("snapshot", "restore", "step"):
        if not callable(getattr(trainer, attr, None)):
            raise ValueError(
                f"trainer must implement the Trainer protocol (snapshot, restore, step); "
                f"{type(trainer).__name__} has no method {attr!r}"
            )
    smooth = float(smooth)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped_early = False
    reason = f"completed {num_iter} steps"
    avg = 0.0
    best = math.inf
    steps_run = 0
    state = trainer.snapshot()
    try:
        for i, lr in enumerate(lrs_planned):
            lr = float(lr)
            loss = float(trainer.step(lr))
            steps_run += 1
            if not math.isfinite(loss):
                if i == 0:
                    raise ValueError(
                        f"loss is not finite at the first step (lr={lr:.3g}, loss={loss}): "
                        "check the model/data, or lower start_lr"
                    )
                stopped_early = True
                reason = f"loss is {loss} at step {i} (lr={lr:.3g})"
                break
            avg = (1.0 - smooth) * avg + smooth * loss
            sm = avg / (1.0 - (1.0 - smooth) ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(sm)
            if progress is not None:
                progress(i, lr, loss)
            best = min(best, sm)
            bound = divergence_bound(best, smoothed[0] - best, diverge_threshold)
            if sm > bound:
                stopped_early = i < num_iter - 1
                if stopped_early:
                    reason = (
                        f"diverged at step {i} (lr={lr:.3g}): smoothed loss {sm:.4g} > "
                        + (f"{diverge_threshold:g} x best {best:.4g}" if best > 0 else
                           f"{bound:.4g} (best {best:.4g} + {diverge_threshold - 1:g} x its fall)")
                    )
                break
    finally:
        trainer.restore(state)
        del state
    return RangeTestRecord(
        lrs=np.asarray(lrs, dtype=np.float64),
        losses=np.asarray(losses, dtype=np.float64),
        smoothed=np.asarray(smoothed, dtype=np.float64),
        stopped_early=stopped_early,
        reason=reason,
        num_iter=int(num_iter),
        steps_run=steps_run,
    )


def _suggest(record: RangeTestRecord, trainer, *, family, verify_steps, batch_size, target_batch_size, rng_seed,
             verify_budget=None, shape=None):
    from lrkit.finder.suggest import suggest

    s = suggest(
        record.lrs,
        record.losses,
        trainer=trainer if verify_steps > 0 else None,
        family=family,
        verify_steps=verify_steps,
        batch_size=batch_size,
        target_batch_size=target_batch_size,
        rng_seed=rng_seed,
        verify_budget=verify_budget if verify_steps > 0 else None,
        **(shape or {}),
    )
    return {"lr": s.lr, "method": s.method, "band": tuple(s.band), "rules": dict(s.rules), "details": dict(s.details)}


def find(
    trainer: Trainer,
    *,
    start_lr: float,
    end_lr: float,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 4.0,
    progress: ProgressFn | None = None,
    verify_steps: int = 0,
    family: str = "unknown",
    batch_size: int | None = None,
    target_batch_size: int | None = None,
    rng_seed: int = 0,
    verify_budget: int | None = None,
    epochs: float | None = None,
    params_per_example: float | None = None,
    examples: float | None = None,
    train_steps: int | None = None,
):
    """Range test plus suggestion on any Trainer: the framework-free core of ``find_lr``.

    Runs :func:`run_range_test`, then :func:`lrkit.finder.suggest.suggest` on the raw losses; with
    ``verify_steps > 0`` the suggestion may spend that many optimizer steps per candidate LR on
    short runs from the same starting state (the trainer is snapshotted before and restored after,
    so it ends exactly as it started). ``epochs``, ``params_per_example`` and ``examples`` describe the real run
    (:func:`lrkit.finder.regime.run_shape`) and go to the suggestion. ``train_steps``, the real run's
    length when known, only lets the result say when the test cost more than
    :data:`MAX_COST_FRACTION` of it (a run under 34 steps: the range test never takes fewer than
    :data:`MIN_PLANNED_NUM_ITER`).

    Returns:
        A :class:`lrkit.finder.result.FinderResult`.

    Example:
        >>> class Quadratic:
        ...     def __init__(self): self.w = 1.0
        ...     def snapshot(self): return self.w
        ...     def restore(self, state): self.w = state
        ...     def step(self, lr):
        ...         self.w -= lr * 2 * self.w
        ...         return self.w ** 2 + 0.01
        ...     def evaluate(self): return None
        >>> res = find(Quadratic(), start_lr=1e-4, end_lr=10.0, num_iter=60)
        >>> 1e-3 < res.suggestion < 1.0
        True
    """
    from lrkit.finder.result import FinderResult

    if isinstance(verify_steps, bool) or not isinstance(verify_steps, (int, np.integer)) or verify_steps < 0:
        raise ValueError(f"verify_steps must be an integer >= 0, got {verify_steps!r}")
    shape = {"epochs": epochs, "params_per_example": params_per_example, "examples": examples}
    record = run_range_test(
        trainer,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        mode=mode,
        smooth=smooth,
        diverge_threshold=diverge_threshold,
        progress=progress,
    )
    if len(record.lrs) < 2:
        hint = ("lower start_lr or check the model/data" if start_lr > TINY_LR else
                f"an LR of {start_lr:.2g} barely moves a weight, so a lower one will not help: the model, the data or "
                "the optimizer itself gives this (try one training step outside lrkit at a tiny LR)")
        raise ValueError(f"the range test stopped after {len(record.lrs)} step(s) ({record.reason}); {hint}")
    if verify_steps > 0:
        state = trainer.snapshot()
        try:
            sugg = _suggest(
                record, trainer, family=family, verify_steps=int(verify_steps), batch_size=batch_size,
                target_batch_size=target_batch_size, rng_seed=rng_seed, verify_budget=verify_budget, shape=shape,
            )
        finally:
            trainer.restore(state)
            del state
    else:
        sugg = _suggest(
            record, None, family=family, verify_steps=0, batch_size=batch_size,
            target_batch_size=target_batch_size, rng_seed=rng_seed, shape=shape,
        )
    details = dict(sugg["details"])
    details.setdefault("stop_reason", record.reason)
    details.setdefault("family", family)
    details.setdefault("verify_steps", int(verify_steps))
    details.setdefault("range_test_steps", record.steps_run)
    details["cost_steps"] = record.steps_run + int(details.get("verify_steps_used", 0))
    from lrkit.finder.search import default_verify_budget

    most_verify = int(verify_budget) if verify_budget is not None else default_verify_budget(int(verify_steps))
    details["budget"] = {"max_steps": int(num_iter) + (most_verify if verify_steps > 0 else 0),
                         "sized_by_train_steps": verify_budget is not None}
    if verify_steps == 0 and verify_budget is not None:
        details["warnings"] = list(details.get("warnings") or []) + [
            "unverified: no verification runs (the run is too short for them within 30% of it, or verify=False); "
            "the answer is the range-test rule's"]
    if train_steps is not None and details["cost_steps"] > MAX_COST_FRACTION * int(train_steps):
        why = (f"a run this short leaves a range test no room, and its answer is rough: at least the {family} rule "
               f"of thumb (lrkit.scaling.default_lr({family!r}) = {scaling.default_lr(family):.3g}) unless the ramp "
               "blew up below it" if MAX_COST_FRACTION * int(train_steps) < MIN_PLANNED_NUM_ITER else
               "num_iter or verify_steps given explicitly override its plan")
        details["warnings"] = list(details.get("warnings") or []) + [
            f"the finder took {details['cost_steps']} steps, {details['cost_steps'] / int(train_steps):.0%} of the "
            f"{int(train_steps)}-step run (it aims for at most {MAX_COST_FRACTION:.0%}): {why}"]
    sample = getattr(trainer, "input_sample", None)  # optional: lrkit.finder.trainer
    unscaled = unscaled_inputs(sample()) if callable(sample) else None
    if unscaled is not None:
        details["warnings"] = list(details.get("warnings") or []) + [unscaled]
    return FinderResult(
        lrs=record.lrs,
        losses=record.losses,
        smoothed_losses=record.smoothed,
        suggestion=float(sugg["lr"]),
        method=str(sugg["method"]),
        rules=dict(sugg["rules"]),
        band=(float(sugg["band"][0]), float(sugg["band"][1])),
        details=details,
        stopped_early=record.stopped_early,
        num_iter=record.num_iter,
        batch_size=batch_size,
    )
