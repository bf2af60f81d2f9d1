"""Decay schedules: constant, step, multistep, exponential, polynomial, inverse-time, linear,
cosine, piecewise constant and piecewise linear.

All count optimizer steps ``t = 0, 1, 2, ...``; past ``total_steps`` they hold their last value.
"""
from __future__ import annotations

from typing import Sequence

from lrkit.schedules import _validate as v
from lrkit.schedules._formula import BuiltinSchedule, ceil_div, floor_div
from lrkit.schedules.base import Schedule

__all__ = [
    "constant",
    "step_decay",
    "multistep",
    "exponential",
    "polynomial",
    "inverse_time",
    "linear",
    "cosine",
    "piecewise_constant",
    "piecewise_linear",
]


# --------------------------------------------------------------------------------------------
def _constant(xp, t, *, lr):
    return xp.zeros_like(t) + lr


def constant(lr: float) -> Schedule:
    r"""The same learning rate at every step.

    .. math::
        \eta_t = \eta

    Args:
        lr: the learning rate :math:`\eta` (finite, >= 0).

    Returns:
        A :class:`Schedule` with ``total_steps = None`` (it never ends).

    Example:
        >>> constant(lr=0.01)(12345)
        0.01
    """
    lr = v.lr_value("constant", "lr", lr)
    return BuiltinSchedule("constant", {"lr": lr}, None, _constant)


# --------------------------------------------------------------------------------------------
def _step_decay(xp, t, *, base_lr, step_size, gamma):
    return base_lr * xp.power(gamma, floor_div(xp, t, step_size))


def step_decay(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` steps.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\lfloor t / s \rfloor}

    where :math:`\eta_0` = ``base_lr``, :math:`s` = ``step_size``, :math:`\gamma` = ``gamma``.
    Same as ``torch.optim.lr_scheduler.StepLR(step_size, gamma)`` stepped once per optimizer
    step, Keras ``ExponentialDecay(decay_steps=s, decay_rate=gamma, staircase=True)`` and
    :func:`exponential` ``(base_lr, gamma, decay_steps=s, staircase=True)``.

    Args:
        base_lr: the initial learning rate (finite, >= 0).
        step_size: steps between two decays (whole number >= 1).
        gamma: the decay factor, in (0, 1].

    Returns:
        A :class:`Schedule` with ``total_steps = None``.

    Example:
        >>> s = step_decay(base_lr=0.1, step_size=30, gamma=0.5)
        >>> s(29), s(30), s(60)
        (0.1, 0.05, 0.025)
    """
    where = "step_decay"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "step_size": v.positive_int(where, "step_size", step_size),
        "gamma": v.real(where, "gamma", gamma, lo=0.0, hi=1.0, lo_open=True),
    }
    return BuiltinSchedule("step_decay", params, None, _step_decay)


# --------------------------------------------------------------------------------------------
def _multistep(xp, t, *, base_lr, milestones, gamma):
    k = xp.searchsorted(xp.asarray(milestones, dtype=t.dtype), t, side="right")
    return base_lr * xp.power(gamma, k * 1.0)


def multistep(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""Multiply the learning rate by ``gamma`` at each milestone step.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\#\{i \,:\, m_i \le t\}}

    where :math:`m_i` are the ``milestones`` (strictly increasing). Same as
    ``torch.optim.lr_scheduler.MultiStepLR(milestones, gamma)`` (torch also accepts repeated
    milestones, which apply ``gamma`` twice; here they are rejected — pass ``gamma**2``).

    Args:
        base_lr: the initial learning rate (finite, >= 0).
        milestones: strictly increasing whole step numbers >= 1.
        gamma: the decay factor, in (0, 1].

    Returns:
        A :class:`Schedule`; ``total_steps`` is the last milestone (constant from there on).

    Example:
        >>> s = multistep(base_lr=0.1, milestones=[30, 80], gamma=0.1)
        >>> [round(s(t), 6) for t in (0, 29, 30, 79, 80, 1000)]
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    """
    where = "multistep"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "milestones": v.increasing_ints(where, "milestones", milestones, minimum=1),
        "gamma": v.real(where, "gamma", gamma, lo=0.0, hi=1.0, lo_open=True),
    }
    return BuiltinSchedule("multistep", params, params["milestones"][-1], _multistep)


# --------------------------------------------------------------------------------------------
def _exponential(xp, t, *, base_lr, gamma, decay_steps, staircase):
    p = floor_div(xp, t, decay_steps) if staircase else t / decay_steps
    return base_lr * xp.power(gamma, p)


def exponential(base_lr: float, gamma: float, decay_steps: int = 1,
                staircase: bool = False) -> Schedule:
    r"""Exponential decay: the learning rate is multiplied by ``gamma`` every ``decay_steps``.

    .. math::
        \eta_t = \eta_0 \, \gamma^{p}, \qquad
        p = t / d \;\; \text{or, with staircase,} \;\; p = \lfloor t / d \rfloor

    where :math:`\eta_0` = ``base_lr``, :math:`\gamma` = ``gamma``, :math:`d` = ``decay_steps``.
    One parameter, ``gamma``, is the factor per ``decay_steps`` steps; this covers both
    families:

    * torch ``ExponentialLR(gamma)``: ``exponential(base_lr, gamma)`` (``decay_steps=1``);
    * Keras ``ExponentialDecay(lr, decay_steps, decay_rate, staircase)`` and optax
      ``exponential_decay(lr, transition_steps, decay_rate, staircase=...)`` (with
      ``transition_begin=0``, ``end_value=None``): ``exponential(lr, gamma=decay_rate,
      decay_steps=decay_steps, staircase=staircase)``. For an ``end_value`` floor use
      :func:`clip`; for ``transition_begin`` use :func:`join` with :func:`constant`.

    Args:
        base_lr: the initial learning rate (finite, >= 0).
        gamma: the decay factor per ``decay_steps`` steps, in (0, 1].
        decay_steps: steps over which the LR is multiplied by ``gamma`` (whole number >= 1).
        staircase: decay in discrete jumps every ``decay_steps`` steps.

    Returns:
        A :class:`Schedule` with ``total_steps = None``.

    Example:
        >>> s = exponential(base_lr=0.1, gamma=0.5, decay_steps=10)
        >>> round(s(5), 6), round(s(10), 6)
        (0.070711, 0.05)
    """
    where = "exponential"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "gamma": v.real(where, "gamma", gamma, lo=0.0, hi=1.0, lo_open=True),
        "decay_steps": v.positive_int(where, "decay_steps", decay_steps),
        "staircase": v.flag(where, "staircase", staircase),
    }
    return BuiltinSchedule("exponential", params, None, _exponential)


# --------------------------------------------------------------------------------------------
def _polynomial(xp, t, *, base_lr, total_steps, end_lr, power, cycle):
    T = float(total_steps)
    if cycle:
        horizon = T * xp.maximum(ceil_div(xp, t, T), 1.0)
        remaining = xp.clip((horizon - t) / horizon, 0.0, 1.0)  # 1 - t/horizon, exactly 0 at the end
    else:
        # (T - min(t, T)) / T rather than 1 - min(t, T)/T: never below 0, even where XLA
        # computes the division as a multiplication by 1/T (power < 1 would turn -1e-17 into NaN)
        remaining = xp.clip((T - xp.minimum(t, T)) / T, 0.0, 1.0)
    return (base_lr - end_lr) * xp.power(remaining, power) + end_lr


def polynomial(base_lr: float, total_steps: int, end_lr: float = 0.0, power: float = 1.0,
               cycle: bool = False) -> Schedule:
    r"""Polynomial decay from ``base_lr`` to ``end_lr`` over ``total_steps`` steps.

    .. math::
        \eta_t = (\eta_0 - \eta_e)\left(1 - \frac{\min(t, T)}{T}\right)^{p} + \eta_e

    where :math:`\eta_0` = ``base_lr``, :math:`\eta_e` = ``end_lr``, :math:`T` =
    ``total_steps``, :math:`p` = ``power``. With ``cycle=True`` the horizon restarts: :math:`T`
    is replaced by :math:`T \cdot \max(1, \lceil t/T \rceil)` and :math:`\min(t, T)` by
    :math:`t` (Keras ``PolynomialDecay(cycle=True)``), and the schedule never ends.

    Equals Keras ``PolynomialDecay(base_lr, T, end_lr, power, cycle)``, optax
    ``polynomial_schedule(base_lr, end_lr, power, T)`` and — with ``end_lr=0`` — torch
    ``PolynomialLR(total_iters=T, power)`` (compare with torch's closed form
    ``_get_closed_form_lr``; its chainable ``step()`` form multiplies ratios and drifts by
    rounding error).

    Args:
        base_lr: the initial learning rate (finite, >= 0).
        total_steps: the decay horizon :math:`T` (whole number >= 1); ``end_lr`` is reached
            at step ``T`` and held after it.
        end_lr: the final learning rate (finite, >= 0; may exceed ``base_lr``).
        power: the exponent :math:`p` > 0.
        cycle: restart the decay every ``T`` steps (Keras semantics).

    Returns:
        A :class:`Schedule` whose ``total_steps`` is ``T`` (``None`` when ``cycle``).

    Example:
        >>> s = polynomial(base_lr=0.1, total_steps=100, end_lr=0.01, power=2.0)
        >>> round(s(50), 6), s(100), s(500)
        (0.0325, 0.01, 0.01)
    """
    where = "polynomial"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "total_steps": v.positive_int(where, "total_steps", total_steps),
        "end_lr": v.lr_value(where, "end_lr", end_lr),
        "power": v.real(where, "power", power, lo=0.0, lo_open=True),
        "cycle": v.flag(where, "cycle", cycle),
    }
    total = None if params["cycle"] else params["total_steps"]
    return BuiltinSchedule("polynomial", params, total, _polynomial)


# --------------------------------------------------------------------------------------------
def _inverse_time(xp, t, *, base_lr, decay_steps, decay_rate, staircase):
    p = floor_div(xp, t, decay_steps) if staircase else t / decay_steps
    return base_lr / (1.0 + decay_rate * p)


def inverse_time(base_lr: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False) -> Schedule:
    r"""Inverse-time decay.

    .. math::
        \eta_t = \frac{\eta_0}{1 + r\, p}, \qquad
        p = t / d \;\; \text{or, with staircase,} \;\; p = \lfloor t / d \rfloor

    where :math:`\eta_0` = ``base_lr``, :math:`r` = ``decay_rate``, :math:`d` = ``decay_steps``.
    Same as Keras ``InverseTimeDecay(base_lr, decay_steps, decay_rate, staircase)``.

    Args:
        base_lr: the initial learning rate (finite, >= 0).
        decay_steps: the time unit :math:`d` of the decay (whole number >= 1).
        decay_rate: :math:`r` (finite, >= 0).
        staircase: decay in discrete jumps every ``decay_steps`` steps.

    Returns:
        A :class:`Schedule` with ``total_steps = None``.

    Example:
        >>> s = inverse_time(base_lr=0.1, decay_steps=10, decay_rate=1.0)
        >>> s(0), s(10), round(s(30), 6)
        (0.1, 0.05, 0.025)
    """
    where = "inverse_time"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "decay_steps": v.positive_int(where, "decay_steps", decay_steps),
        "decay_rate": v.real(where, "decay_rate", decay_rate, lo=0.0),
        "staircase": v.flag(where, "staircase", staircase),
    }
    return BuiltinSchedule("inverse_time", params, None, _inverse_time)


# --------------------------------------------------------------------------------------------
def _linear(xp, t, *, start_lr, end_lr, total_steps):
    # clipped: XLA's t * (1/T) can exceed 1 by an ulp, which would overshoot end_lr (below 0)
    frac = xp.clip(xp.minimum(t, total_steps) / total_steps, 0.0, 1.0)
    return start_lr + (end_lr - start_lr) * frac


def linear(start_lr: float, end_lr: float, total_steps: int) -> Schedule:
    r"""Linear interpolation from ``start_lr`` to ``end_lr`` over ``total_steps`` steps.

    .. math::
        \eta_t = \eta_s + (\eta_e - \eta_s)\,\frac{\min(t, T)}{T}

    where :math:`\eta_s` = ``start_lr``, :math:`\eta_e` = ``end_lr``, :math:`T` =
    ``total_steps``. Same as optax ``linear_schedule(start_lr, end_lr, T)`` and, on an optimizer
    whose LR is :math:`\eta`, torch ``LinearLR(start_factor=a, end_factor=b, total_iters=T)``
    with ``start_lr = a * eta`` and ``end_lr = b * eta`` (torch's arguments are factors).

    Args:
        start_lr: the learning rate at step 0 (finite, >= 0).
        end_lr: the learning rate at step ``T`` and after (finite, >= 0).
        total_steps: the horizon :math:`T` (whole number >= 1).

    Returns:
        A :class:`Schedule` with ``total_steps = T``.

    Example:
        >>> s = linear(start_lr=0.0, end_lr=0.1, total_steps=10)
        >>> s(0), s(5), s(10), s(99)
        (0.0, 0.05, 0.1, 0.1)
    """
    where = "linear"
    params = {
        "start_lr": v.lr_value(where, "start_lr", start_lr),
        "end_lr": v.lr_value(where, "end_lr", end_lr),
        "total_steps": v.positive_int(where, "total_steps", total_steps),
    }
    return BuiltinSchedule("linear", params, params["total_steps"], _linear)


# --------------------------------------------------------------------------------------------
def _cosine(xp, t, *, base_lr, total_steps, min_lr):
    frac = xp.minimum(t, total_steps) / total_steps
    return min_lr + (base_lr - min_lr) * (1.0 + xp.cos(xp.pi * frac)) / 2.0


def cosine(base_lr: float, total_steps: int, min_lr: float = 0.0) -> Schedule:
    r"""Cosine annealing from ``base_lr`` to ``min_lr`` over ``total_steps`` steps.

    .. math::
        \eta_t = \eta_{min} + \frac{\eta_0 - \eta_{min}}{2}
                 \left(1 + \cos\left(\pi \frac{\min(t, T)}{T}\right)\right)

    where :math:`\eta_0` = ``base_lr``, :math:`\eta_{min}` = ``min_lr``, :math:`T` =
    ``total_steps``. Equals the closed form of torch
    ``CosineAnnealingLR(T_max=T, eta_min=min_lr)`` for :math:`t \le T` (torch keeps following
    the cosine back up after ``T_max``; this schedule holds ``min_lr``), Keras
    ``CosineDecay(base_lr, T, alpha=min_lr/base_lr)`` and optax
    ``cosine_decay_schedule(base_lr, T, alpha=min_lr/base_lr)``. Note ``min_lr`` is reached at
    step ``T`` — in a run of ``T`` optimizer steps (0 .. T-1) the last LR used is slightly above
    it, exactly as with torch.

    Args:
        base_lr: the learning rate at step 0 (finite, >= 0).
        total_steps: the horizon :math:`T` (whole number >= 1).
        min_lr: the floor reached at step ``T`` (finite, 0 <= min_lr <= base_lr).

    Returns:
        A :class:`Schedule` with ``total_steps = T``.

    Example:
        >>> s = cosine(base_lr=0.1, total_steps=100)
        >>> s(0), round(s(50), 6), s(100), s(1000)
        (0.1, 0.05, 0.0, 0.0)
    """
    where = "cosine"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "total_steps": v.positive_int(where, "total_steps", total_steps),
        "min_lr": v.lr_value(where, "min_lr", min_lr),
    }
    if params["min_lr"] > params["base_lr"]:
        raise ValueError(f"cosine: min_lr must be <= base_lr ({params['base_lr']!r}), "
                         f"got {min_lr!r}")
    return BuiltinSchedule("cosine", params, params["total_steps"], _cosine)


# --------------------------------------------------------------------------------------------
def _piecewise_constant(xp, t, *, boundaries, values):
    idx = xp.searchsorted(xp.asarray(boundaries, dtype=t.dtype), t, side="left")
    return xp.asarray(values, dtype=t.dtype)[idx]


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    r"""Piecewise-constant learning rate (Keras ``PiecewiseConstantDecay`` convention).

    .. math::
        \eta_t = v_i \quad \text{for} \quad b_{i-1} < t \le b_i,
        \qquad b_{-1} = -\infty,\; b_n = +\infty

    so ``values[0]`` is used up to *and including* step ``boundaries[0]``, and ``values[i]``
    from step ``boundaries[i-1] + 1``. This is Keras's convention. optax
    ``piecewise_constant_schedule`` switches one step earlier (at ``count >= boundary``) and
    takes multiplicative scales: optax ``{b: s}`` corresponds to boundary ``b - 1`` here with
    the accumulated product of scales as the value. torch ``MultiStepLR`` also switches at the
    milestone itself: see :func:`multistep`.

    Args:
        boundaries: strictly increasing whole step numbers >= 0.
        values: ``len(boundaries) + 1`` learning rates (finite, >= 0).

    Returns:
        A :class:`Schedule`; ``total_steps = boundaries[-1] + 1`` (the first step of the last
        value, held from there on).

    Example:
        >>> s = piecewise_constant(boundaries=[100, 200], values=[0.1, 0.01, 0.001])
        >>> s(100), s(101), s(200), s(201)
        (0.1, 0.01, 0.01, 0.001)
    """
    where = "piecewise_constant"
    bounds = v.increasing_ints(where, "boundaries", boundaries, minimum=0)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{where}: values must be a list of {len(bounds) + 1} learning rates, "
                         f"got {values!r}")
    if len(values) != len(bounds) + 1:
        raise ValueError(f"{where}: values must have len(boundaries) + 1 = {len(bounds) + 1} "
                         f"entries, got {len(values)}")
    vals = [v.lr_value(where, f"values[{i}]", x) for i, x in enumerate(values)]
    return BuiltinSchedule(where, {"boundaries": bounds, "values": vals}, bounds[-1] + 1,
                           _piecewise_constant)


# --------------------------------------------------------------------------------------------
def _piecewise_linear(xp, t, *, steps, lrs):
    return xp.interp(t, xp.asarray(steps, dtype=t.dtype), xp.asarray(lrs, dtype=t.dtype))


def piecewise_linear(steps: Sequence[int], lrs: Sequence[float]) -> Schedule:
    r"""Linear interpolation between knots ``(steps[i], lrs[i])``, held constant outside.

    .. math::
        \eta_t = \ell_i + (\ell_{i+1} - \ell_i)\frac{t - s_i}{s_{i+1} - s_i}
        \quad (s_i \le t \le s_{i+1}),
        \qquad \eta_t = \ell_0 \; (t < s_0), \qquad \eta_t = \ell_n \; (t > s_n)

    Args:
        steps: strictly increasing whole step numbers >= 0 (at least one).
        lrs: one learning rate per knot (finite, >= 0).

    Returns:
        A :class:`Schedule` with ``total_steps = steps[-1]``.

    Example:
        >>> s = piecewise_linear(steps=[0, 10, 110], lrs=[0.0, 0.1, 0.001])
        >>> s(5), s(10), round(s(60), 6), s(1000)
        (0.05, 0.1, 0.0505, 0.001)
    """
    where = "piecewise_linear"
    knots = v.increasing_ints(where, "steps", steps, minimum=0)
    if isinstance(lrs, (str, bytes)) or not hasattr(lrs, "__len__") or len(lrs) != len(knots):
        raise ValueError(f"{where}: lrs must be a list with one learning rate per knot "
                         f"({len(knots)}), got {lrs!r}")
    vals = [v.lr_value(where, f"lrs[{i}]", x) for i, x in enumerate(lrs)]
    return BuiltinSchedule(where, {"steps": knots, "lrs": vals}, knots[-1], _piecewise_linear)
