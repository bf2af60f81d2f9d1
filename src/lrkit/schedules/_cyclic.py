"""Schedules that go up as well as down: SGDR warm restarts, cyclical LR, one-cycle."""
from __future__ import annotations

import math

import numpy as np

from lrkit.schedules import _validate as v
from lrkit.schedules._formula import BuiltinSchedule, floor_div
from lrkit.schedules.base import Schedule

__all__ = ["warm_restarts", "cyclic", "one_cycle"]


# --------------------------------------------------------------------------------------------
def restart_index(t, first: float, mult: float, xp=np):
    """Closed-form SGDR cycle index ``i``, its start step and its length for each step ``t``.

    Cycle ``i`` has length ``first * mult**i`` and starts at ``first * (mult**i - 1)/(mult - 1)``
    (``first * i`` when ``mult == 1``). The logarithm gives ``i`` up to rounding; one
    correction step either way makes it exact at the restart steps themselves.
    """
    if mult == 1.0:
        i = floor_div(xp, t, first)
        return i, i * first, xp.zeros_like(t) + first
    i = xp.floor(xp.log1p(t * (mult - 1.0) / first) / math.log(mult))
    i = xp.maximum(i, 0.0)

    def start(k):  # the ratio first: exactly 1 for k = 1, so the first restart lands on `first` itself
        return first * ((xp.power(mult, k) - 1.0) / (mult - 1.0))

    i = xp.where(start(i) > t, i - 1.0, i)
    i = xp.where(start(i + 1.0) <= t, i + 1.0, i)
    return i, start(i), first * xp.power(mult, i)


def _warm_restarts(xp, t, *, base_lr, first_cycle_steps, cycle_mult, min_lr, m_mul):
    i, s, length = restart_index(t, float(first_cycle_steps), float(cycle_mult), xp)
    t_cur = t - s
    peak = base_lr - min_lr if m_mul == 1.0 else (base_lr - min_lr) * xp.power(m_mul, i)
    return min_lr + peak * (1.0 + xp.cos(xp.pi * t_cur / length)) / 2.0


def warm_restarts(base_lr: float, first_cycle_steps: int, cycle_mult: float = 1,
                  min_lr: float = 0.0, m_mul: float = 1.0) -> Schedule:
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    .. math::
        \eta_t = \eta_{min} + \frac{\mu^{i}(\eta_0 - \eta_{min})}{2}
                 \left(1 + \cos\left(\pi \frac{t - S_i}{T_0 k^{i}}\right)\right),
        \qquad S_i = T_0 \frac{k^{i} - 1}{k - 1} \;(S_i = i\,T_0 \text{ if } k = 1)

    where :math:`i` is the index of the cycle containing step :math:`t` (computed in closed
    form), :math:`T_0` = ``first_cycle_steps``, :math:`k` = ``cycle_mult``, :math:`\mu` =
    ``m_mul``, :math:`\eta_0` = ``base_lr``, :math:`\eta_{min}` = ``min_lr``. Each cycle starts
    at its peak (the restart) and anneals towards ``min_lr`` without reaching it.

    Equals torch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` (``m_mul = 1``, integer
    ``cycle_mult``) and Keras ``CosineDecayRestarts(base_lr, T_0, t_mul, m_mul,
    alpha=min_lr/base_lr)``.

    **No end.** The schedule restarts forever: ``total_steps`` is ``None`` and nothing holds. To
    stop after a number of cycles, :func:`join` it with :func:`constant` at a cycle boundary
    :math:`S_n`.

    Args:
        base_lr: the peak of the first cycle (finite, >= 0).
        first_cycle_steps: :math:`T_0`, the length of the first cycle (whole number >= 1).
        cycle_mult: :math:`k` >= 1, the growth factor of the cycle length (torch's ``T_mult``,
            Keras's ``t_mul``; may be fractional, as in Keras).
        min_lr: the floor (finite, 0 <= min_lr <= base_lr).
        m_mul: :math:`\mu` in (0, 1], the factor applied to the peak at every restart (Keras).

    Returns:
        A :class:`Schedule` with ``total_steps = None``.

    Example:
        >>> s = warm_restarts(base_lr=0.1, first_cycle_steps=10, cycle_mult=2)
        >>> s(0), round(s(5), 6), s(10), s(30)
        (0.1, 0.05, 0.1, 0.1)
    """
    where = "warm_restarts"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "first_cycle_steps": v.positive_int(where, "first_cycle_steps", first_cycle_steps),
        "cycle_mult": v.real(where, "cycle_mult", cycle_mult, lo=1.0),
        "min_lr": v.lr_value(where, "min_lr", min_lr),
        "m_mul": v.real(where, "m_mul", m_mul, lo=0.0, hi=1.0, lo_open=True),
    }
    if isinstance(cycle_mult, int) and not isinstance(cycle_mult, bool):
        params["cycle_mult"] = int(cycle_mult)  # keep `cycle_mult=2` as written in the spec
    if params["min_lr"] > params["base_lr"]:
        raise ValueError(f"{where}: min_lr must be <= base_lr ({params['base_lr']!r}), "
                         f"got {min_lr!r}")
    return BuiltinSchedule(where, params, None, _warm_restarts)


# --------------------------------------------------------------------------------------------
_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _cyclic(xp, t, *, base_lr, max_lr, step_size_up, step_size_down, mode, gamma):
    down = step_size_up if step_size_down is None else step_size_down
    total = float(step_size_up + down)
    ratio = step_size_up / total
    cycle = 1.0 + floor_div(xp, t, total)
    x = (t - (cycle - 1.0) * total) / total  # position in the cycle, in [0, 1)
    factor = xp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    height = (max_lr - base_lr) * factor
    if mode == "triangular2":
        height = height * xp.exp2(-(cycle - 1.0))
    elif mode == "exp_range":
        height = height * xp.power(gamma, t)
    return base_lr + height


def cyclic(base_lr: float, max_lr: float, step_size_up: int, step_size_down: int | None = None,
           mode: str = "triangular", gamma: float = 1.0) -> Schedule:
    r"""Cyclical learning rate (Smith 2017): a triangle wave between ``base_lr`` and ``max_lr``.

    .. math::
        c = \left\lfloor 1 + \frac{t}{u + d} \right\rfloor, \quad
        x = 1 + \frac{t}{u + d} - c, \quad
        h = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & x > r \end{cases}, \quad
        r = \frac{u}{u + d}

    .. math::
        \eta_t = \eta_0 + (\eta_{max} - \eta_0)\, h \, f, \qquad
        f = 1 \;(\text{triangular}),\; 2^{-(c - 1)} \;(\text{triangular2}),\;
        \gamma^{t} \;(\text{exp\_range})

    where :math:`u` = ``step_size_up``, :math:`d` = ``step_size_down`` (defaults to
    :math:`u`), :math:`\eta_0` = ``base_lr``, :math:`\eta_{max}` = ``max_lr``. This is the
    learning-rate part of torch ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode,
    gamma)`` (momentum cycling is the optimizer's business, not the schedule's).

    Args:
        base_lr: the low end of the cycle (finite, >= 0).
        max_lr: the high end (finite, >= base_lr).
        step_size_up: steps from ``base_lr`` up to ``max_lr`` (whole number >= 1).
        step_size_down: steps back down (whole number >= 1); ``None`` means ``step_size_up``.
        mode: ``"triangular"``, ``"triangular2"`` (halve the amplitude every cycle) or
            ``"exp_range"`` (multiply the amplitude by ``gamma**t``).
        gamma: the per-step amplitude factor of ``exp_range``, in (0, 1]; must stay ``1.0``
            in the other modes (it would be ignored there, so it is rejected instead).

    Returns:
        A :class:`Schedule` with ``total_steps = None`` (it cycles forever).

    Example:
        >>> s = cyclic(base_lr=0.001, max_lr=0.01, step_size_up=10)
        >>> [round(s(t), 6) for t in (0, 5, 10, 20)]
        [0.001, 0.0055, 0.01, 0.001]
    """
    where = "cyclic"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "max_lr": v.lr_value(where, "max_lr", max_lr),
        "step_size_up": v.positive_int(where, "step_size_up", step_size_up),
        "step_size_down": (None if step_size_down is None
                           else v.positive_int(where, "step_size_down", step_size_down)),
        "mode": v.choice(where, "mode", mode, _CYCLIC_MODES),
        "gamma": v.real(where, "gamma", gamma, lo=0.0, hi=1.0, lo_open=True),
    }
    if params["max_lr"] < params["base_lr"]:
        raise ValueError(f"{where}: max_lr must be >= base_lr ({params['base_lr']!r}), "
                         f"got {max_lr!r}")
    if params["mode"] != "exp_range" and params["gamma"] != 1.0:
        raise ValueError(f"{where}: gamma is only used with mode='exp_range'; got gamma={gamma!r} "
                         f"with mode={mode!r} (pass mode='exp_range' or leave gamma=1.0)")
    return BuiltinSchedule(where, params, None, _cyclic)


# --------------------------------------------------------------------------------------------
_ANNEAL = ("cos", "linear")


def _one_cycle_phases(total_steps, pct_start, three_phase):
    """Phase end steps as torch computes them (floats), and the (start, end) LR keys."""
    if three_phase:
        ends = [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2,
                total_steps - 1]
        keys = [("initial", "max"), ("max", "initial"), ("initial", "min")]
    else:
        ends = [float(pct_start * total_steps) - 1, total_steps - 1]
        keys = [("initial", "max"), ("max", "min")]
    return ends, keys


def _one_cycle(xp, t, *, max_lr, total_steps, pct_start, anneal_strategy, div_factor,
               final_div_factor, three_phase):
    lrs = {"max": max_lr, "initial": max_lr / div_factor}
    lrs["min"] = lrs["initial"] / final_div_factor
    ends, keys = _one_cycle_phases(total_steps, pct_start, three_phase)
    starts = [0.0, *ends[:-1]]
    t = xp.minimum(t, total_steps - 1)  # hold the final value

    def phase(k):
        pct = (t - starts[k]) / (ends[k] - starts[k])
        lo, hi = lrs[keys[k][0]], lrs[keys[k][1]]
        if anneal_strategy == "cos":
            return hi + (lo - hi) / 2.0 * (xp.cos(xp.pi * pct) + 1)
        return (hi - lo) * pct + lo

    # torch uses the first phase whose end is >= t (the last phase otherwise)
    out = phase(len(ends) - 1)
    for k in range(len(ends) - 2, -1, -1):
        out = xp.where(t <= ends[k], phase(k), out)
    return out


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3,
              anneal_strategy: str = "cos", div_factor: float = 25.0,
              final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    r"""The 1cycle policy (Smith & Topin 2017), exactly as torch ``OneCycleLR``.

    With :math:`\eta_{max}` = ``max_lr``, :math:`\eta_{init} = \eta_{max}/\text{div\_factor}`,
    :math:`\eta_{min} = \eta_{init}/\text{final\_div\_factor}`, :math:`T` = ``total_steps``,
    :math:`p` = ``pct_start`` and :math:`A(a, b, x)` the annealing from :math:`a` to :math:`b`
    (``cos``: :math:`b + \frac{a - b}{2}(1 + \cos \pi x)`; ``linear``: :math:`a + (b - a)x`):

    .. math::
        \eta_t = \begin{cases}
          A(\eta_{init}, \eta_{max}, t / e_1) & t \le e_1 = pT - 1 \\
          A(\eta_{max}, \eta_{min}, (t - e_1)/(T - 1 - e_1)) & e_1 < t \le T - 1
        \end{cases}

    and with ``three_phase=True``: :math:`\eta_{init} \to \eta_{max}` until :math:`e_1 = pT-1`,
    :math:`\eta_{max} \to \eta_{init}` until :math:`e_2 = 2pT - 2`, then
    :math:`\eta_{init} \to \eta_{min}` until :math:`T - 1`. The final value is reached at step
    ``T - 1`` (the last step of a ``T``-step run) and held after it (torch raises there).

    optax's ``cosine_onecycle_schedule(T', peak, p')`` uses integer phase ends ``int(p' T')`` and
    ``T'`` (instead of ``pT - 1`` and ``T - 1``) and ``linear_onecycle_schedule`` always has
    three phases with a free ``pct_final``; they agree with this schedule when
    ``T' = T - 1``, ``int(p' T') = pT - 1`` (and ``int(pct_final T') = 2pT - 2``).

    torch's ``OneCycleLR(epochs=E, steps_per_epoch=N)`` is ``total_steps=E * N`` (see
    :func:`epochs_to_steps`).

    Args:
        max_lr: the peak learning rate (finite, >= 0).
        total_steps: :math:`T`, the number of steps in the cycle (whole number >= 2).
        pct_start: :math:`p` in (0, 1), the fraction of the cycle spent increasing; every phase
            must be longer than zero steps (``pT > 1`` and the later phases non-empty).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        div_factor: :math:`\eta_{max}/\eta_{init}` (finite, >= 1).
        final_div_factor: :math:`\eta_{init}/\eta_{min}` (finite, >= 1).
        three_phase: use the three-phase variant (fast.ai's original 1cycle).

    Returns:
        A :class:`Schedule` with ``total_steps = T``.

    Example:
        >>> s = one_cycle(max_lr=0.1, total_steps=100, pct_start=0.25)
        >>> round(s(0), 9), s(24), round(s(99), 12)
        (0.004, 0.1, 4e-07)
    """
    where = "one_cycle"
    params = {
        "max_lr": v.lr_value(where, "max_lr", max_lr),
        "total_steps": v.positive_int(where, "total_steps", total_steps),
        "pct_start": v.real(where, "pct_start", pct_start, lo=0.0, hi=1.0, lo_open=True,
                            hi_open=True),
        "anneal_strategy": v.choice(where, "anneal_strategy", anneal_strategy, _ANNEAL),
        "div_factor": v.real(where, "div_factor", div_factor, lo=1.0),
        "final_div_factor": v.real(where, "final_div_factor", final_div_factor, lo=1.0),
        "three_phase": v.flag(where, "three_phase", three_phase),
    }
    ends, _ = _one_cycle_phases(params["total_steps"], params["pct_start"], params["three_phase"])
    start = 0.0
    for k, end in enumerate(ends):
        if not end > start:
            raise ValueError(
                f"{where}: pct_start={params['pct_start']!r} with total_steps="
                f"{params['total_steps']!r} gives phase {k + 1} no steps (phase ends {ends}); "
                f"every phase needs > 0 steps: use more total_steps or a pct_start closer to 0.5")
        start = end
    return BuiltinSchedule(where, params, params["total_steps"], _one_cycle)
