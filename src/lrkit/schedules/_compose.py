"""Composition: join schedules in time, scale, multiply, clip; epochs to steps."""
from __future__ import annotations

import math
import numbers
from typing import Sequence


from lrkit.schedules import _validate as v
from lrkit.schedules._formula import BuiltinSchedule, evaluate, floor_div
from lrkit.schedules.base import Schedule

__all__ = ["join", "scale", "multiply", "clip", "epochwise", "epochs_to_steps"]


# --------------------------------------------------------------------------------------------
def _join(xp, t, *, schedules, boundaries):
    out = evaluate(schedules[0], t, xp)
    for b, sched in zip(boundaries, schedules[1:]):
        # the later schedule never sees a step below 0 (its value there is discarded anyway)
        out = xp.where(t < b, out, evaluate(sched, xp.maximum(t - b, 0.0), xp))
    return out


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run schedules one after another; each later one restarts its clock at its boundary.

    .. math::
        \eta_t = s_k(t - b_{k-1}) \quad \text{for} \quad b_{k-1} \le t < b_k,
        \qquad b_{-1} = 0,\; b_n = \infty

    The optax ``join_schedules(schedules, boundaries)`` semantics: ``schedules[k]`` sees
    ``step - boundaries[k-1]``. The join is continuous at a boundary only if the earlier
    schedule ends where the next one starts (e.g. ``linear(0, 0.1, 100)`` then
    ``cosine(0.1, 900)`` at boundary 100).

    Args:
        schedules: one or more :class:`Schedule` instances.
        boundaries: ``len(schedules) - 1`` strictly increasing whole step numbers >= 1.

    Returns:
        A :class:`Schedule`; ``total_steps = boundaries[-1] + schedules[-1].total_steps``
        (``None`` if the last schedule never ends).

    Example:
        >>> s = join([linear(0.0, 0.1, 100), cosine(0.1, 900)], boundaries=[100])
        >>> s(50), s(100), round(s(550), 6), s(1000)
        (0.05, 0.1, 0.05, 0.0)
    """
    where = "join"
    if isinstance(schedules, Schedule) or not isinstance(schedules, (list, tuple)) or not schedules:
        raise ValueError(f"{where}: schedules must be a non-empty list of Schedule objects, "
                         f"got {schedules!r}")
    scheds = [v.schedule_arg(where, f"schedules[{i}]", s) for i, s in enumerate(schedules)]
    bounds = v.increasing_ints(where, "boundaries", boundaries, allow_empty=True, minimum=1)
    if len(bounds) != len(scheds) - 1:
        raise ValueError(f"{where}: boundaries must have len(schedules) - 1 = {len(scheds) - 1} "
                         f"entries, got {len(bounds)}")
    last = scheds[-1].total_steps
    total = None if last is None else (bounds[-1] if bounds else 0) + last
    return BuiltinSchedule(where, {"schedules": scheds, "boundaries": bounds}, total, _join)


# --------------------------------------------------------------------------------------------
def _scale(xp, t, *, schedule, factor):
    return factor * evaluate(schedule, t, xp)


def scale(schedule: Schedule, factor: float) -> Schedule:
    r"""Multiply a schedule by a constant factor (also ``schedule * factor``).

    .. math::
        \eta_t = c \, s(t)

    Args:
        schedule: the schedule :math:`s`.
        factor: :math:`c` (finite, >= 0).

    Returns:
        A :class:`Schedule` with the same ``total_steps``.

    Example:
        >>> s = scale(cosine(0.1, 100), 0.5)
        >>> s(0), (cosine(0.1, 100) * 0.5)(0)
        (0.05, 0.05)
    """
    where = "scale"
    params = {"schedule": v.schedule_arg(where, "schedule", schedule),
              "factor": v.real(where, "factor", factor, lo=0.0)}
    return BuiltinSchedule(where, params, schedule.total_steps, _scale)


# --------------------------------------------------------------------------------------------
def _multiply(xp, t, *, a, b):
    return evaluate(a, t, xp) * evaluate(b, t, xp)


def multiply(a: Schedule, b: Schedule) -> Schedule:
    r"""The product of two schedules (e.g. a decay times a slow cyclic factor).

    .. math::
        \eta_t = a(t)\, b(t)

    Args:
        a: a :class:`Schedule`.
        b: a :class:`Schedule` (often one with values around 1, used as a multiplier).

    Returns:
        A :class:`Schedule`; ``total_steps`` is the later of the two horizons, ``None`` if
        either never ends.

    Example:
        >>> s = multiply(cosine(0.1, 100), linear(0.0, 1.0, 10))
        >>> s(0), round(s(5), 6)
        (0.0, 0.049692)
    """
    where = "multiply"
    params = {"a": v.schedule_arg(where, "a", a), "b": v.schedule_arg(where, "b", b)}
    total = (None if a.total_steps is None or b.total_steps is None
             else max(a.total_steps, b.total_steps))
    return BuiltinSchedule(where, params, total, _multiply)


# --------------------------------------------------------------------------------------------
def _clip(xp, t, *, schedule, min_lr, max_lr):
    out = evaluate(schedule, t, xp)
    if min_lr is not None:
        out = xp.maximum(out, min_lr)
    if max_lr is not None:
        out = xp.minimum(out, max_lr)
    return out


def clip(schedule: Schedule, min_lr: float | None = None, max_lr: float | None = None) -> Schedule:
    r"""Clamp a schedule to ``[min_lr, max_lr]``.

    .. math::
        \eta_t = \min(\max(s(t), \eta_{lo}), \eta_{hi})

    Args:
        schedule: the schedule :math:`s`.
        min_lr: the floor :math:`\eta_{lo}` (finite, >= 0), or ``None`` for no floor.
        max_lr: the ceiling :math:`\eta_{hi}` (finite, >= min_lr), or ``None`` for no ceiling.
            At least one of the two must be given.

    Returns:
        A :class:`Schedule` with the same ``total_steps``.

    Example:
        >>> s = clip(cosine(0.1, 100), min_lr=0.01)
        >>> s(0), s(100)
        (0.1, 0.01)
    """
    where = "clip"
    schedule = v.schedule_arg(where, "schedule", schedule)
    if min_lr is None and max_lr is None:
        raise ValueError(f"{where}: pass min_lr, max_lr or both (got neither)")
    lo = None if min_lr is None else v.lr_value(where, "min_lr", min_lr)
    hi = None if max_lr is None else v.lr_value(where, "max_lr", max_lr)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{where}: min_lr must be <= max_lr ({hi!r}), got {min_lr!r}")
    return BuiltinSchedule(where, {"schedule": schedule, "min_lr": lo, "max_lr": hi},
                           schedule.total_steps, _clip)


# --------------------------------------------------------------------------------------------
def _epochwise(xp, t, *, schedule, steps_per_epoch):
    return evaluate(schedule, floor_div(xp, t, steps_per_epoch), xp)


def epochwise(schedule: Schedule, steps_per_epoch: int) -> Schedule:
    r"""Read a schedule written in **epochs** once per epoch, and use it for every step.

    .. math::
        \eta_t = s\left(\left\lfloor t / E \right\rfloor\right)

    where :math:`E` = ``steps_per_epoch``. This reproduces a torch scheduler that is stepped
    once per epoch (e.g. ``StepLR(step_size=30)`` stepped after each epoch is
    ``epochwise(step_decay(lr, 30), steps_per_epoch)``). For a schedule that moves every
    step but whose lengths you think of in epochs, convert the lengths instead:
    ``cosine(0.1, total_steps=epochs_to_steps(90, steps_per_epoch))``.

    Args:
        schedule: the schedule :math:`s`, whose unit is the epoch.
        steps_per_epoch: :math:`E`, optimizer steps per epoch (whole number >= 1).

    Returns:
        A :class:`Schedule` counting optimizer steps; ``total_steps`` is
        ``schedule.total_steps * E``.

    Example:
        >>> s = epochwise(step_decay(0.1, step_size=2, gamma=0.5), steps_per_epoch=100)
        >>> s(199), s(200)
        (0.1, 0.05)
    """
    where = "epochwise"
    schedule = v.schedule_arg(where, "schedule", schedule)
    spe = v.positive_int(where, "steps_per_epoch", steps_per_epoch)
    total = None if schedule.total_steps is None else schedule.total_steps * spe
    return BuiltinSchedule(where, {"schedule": schedule, "steps_per_epoch": spe}, total,
                           _epochwise)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    r"""Convert a length in epochs to optimizer steps, refusing to round silently.

    .. math::
        n = e \cdot E

    Args:
        epochs: :math:`e`, a number of epochs (finite, >= 0; may be fractional, e.g. 0.5).
        steps_per_epoch: :math:`E`, optimizer steps per epoch (whole number >= 1) — with
            gradient accumulation, count optimizer updates, not batches.

    Returns:
        The whole number of steps :math:`n`; a ``ValueError`` if :math:`e E` is not whole.

    Example:
        >>> epochs_to_steps(90, steps_per_epoch=390), epochs_to_steps(0.5, steps_per_epoch=390)
        (35100, 195)
    """
    where = "epochs_to_steps"
    e = v.real(where, "epochs", epochs, lo=0.0)
    spe = v.positive_int(where, "steps_per_epoch", steps_per_epoch)
    if isinstance(epochs, numbers.Integral):
        return int(epochs) * spe
    n = e * spe
    r = round(n)
    if not math.isclose(n, r, rel_tol=0.0, abs_tol=1e-9 * max(1.0, n)):
        raise ValueError(f"{where}: epochs * steps_per_epoch must be a whole number of steps, got "
                         f"{epochs!r} * {spe} = {n!r}; round it yourself to the step you mean")
    return int(r)

