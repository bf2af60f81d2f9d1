"""Warmup: a wrapper for any schedule, the inverse-square-root rule and warmup-stable-decay."""
from __future__ import annotations


from lrkit.schedules import _validate as v
from lrkit.schedules._formula import BuiltinSchedule, evaluate
from lrkit.schedules.base import Schedule

__all__ = ["warmup", "inverse_sqrt", "warmup_stable_decay"]

_WARMUP_MODES = ("linear", "cosine")


def _warmup(xp, t, *, schedule, warmup_steps, start_lr, mode):
    peak = schedule(0)  # a constant of the schedule, computed with NumPy
    frac = t / warmup_steps
    if mode == "cosine":
        frac = (1.0 - xp.cos(xp.pi * frac)) / 2.0
    ramp = start_lr + (peak - start_lr) * frac
    rest = evaluate(schedule, xp.maximum(t - warmup_steps, 0.0), xp)
    return xp.where(t < warmup_steps, ramp, rest)


def warmup(schedule: Schedule, warmup_steps: int, start_lr: float = 0.0,
           mode: str = "linear") -> Schedule:
    r"""Prepend a warmup from ``start_lr`` to the schedule's first value; the schedule follows.

    .. math::
        \eta_t = \begin{cases}
          \eta_s + (s(0) - \eta_s)\, r(t / W) & t < W \\
          s(t - W) & t \ge W
        \end{cases}, \qquad
        r(x) = x \;(\text{linear}), \quad r(x) = \tfrac{1 - \cos \pi x}{2} \;(\text{cosine})

    where :math:`s` = ``schedule``, :math:`W` = ``warmup_steps``, :math:`\eta_s` = ``start_lr``.
    **The wrapped schedule's clock starts after the warmup**: it is shifted by :math:`W`, so
    ``warmup(cosine(0.1, 900), 100)`` lasts 100 + 900 = 1000 steps (``total_steps == 1000``)
    and peaks at 0.1 at step 100. This is a :func:`join` of a ramp and ``schedule`` at
    boundary ``W``. The same as

    * optax ``warmup_cosine_decay_schedule(start_lr, peak, W, decay_steps=W + T, end_value)``
      (optax's ``decay_steps`` *includes* the warmup) for ``warmup(cosine(peak, T, end), W,
      start_lr)``;
    * Keras ``CosineDecay(start_lr, decay_steps=T, alpha=end/peak, warmup_target=peak,
      warmup_steps=W)``;
    * torch ``SequentialLR([LinearLR(start_factor=start_lr/peak, total_iters=W),
      CosineAnnealingLR(T_max=T, eta_min=end)], milestones=[W])`` on an optimizer with LR
      ``peak``.

    Args:
        schedule: the schedule :math:`s` that runs after the warmup.
        warmup_steps: :math:`W` (whole number >= 1).
        start_lr: the learning rate at step 0 (finite, 0 <= start_lr <= schedule(0)).
        mode: ``"linear"`` or ``"cosine"`` ramp.

    Returns:
        A :class:`Schedule` with ``total_steps = W + schedule.total_steps`` (``None`` if the
        wrapped schedule never ends).

    Example:
        >>> s = warmup(cosine(base_lr=0.1, total_steps=900), warmup_steps=100)
        >>> s.total_steps, s(0), s(50), s(100), s(1000)
        (1000, 0.0, 0.05, 0.1, 0.0)
    """
    where = "warmup"
    schedule = v.schedule_arg(where, "schedule", schedule)
    params = {
        "schedule": schedule,
        "warmup_steps": v.positive_int(where, "warmup_steps", warmup_steps),
        "start_lr": v.lr_value(where, "start_lr", start_lr),
        "mode": v.choice(where, "mode", mode, _WARMUP_MODES),
    }
    peak = schedule(0)
    if params["start_lr"] > peak:
        raise ValueError(f"{where}: start_lr must be <= the wrapped schedule's first value "
                         f"schedule(0) = {peak!r} (a warmup goes up), got {start_lr!r}")
    total = None if schedule.total_steps is None else params["warmup_steps"] + schedule.total_steps
    return BuiltinSchedule(where, params, total, _warmup)


# --------------------------------------------------------------------------------------------
def _inverse_sqrt(xp, t, *, base_lr, warmup_steps):
    w = float(warmup_steps)
    return xp.where(t < w, base_lr * (t / w), base_lr * xp.sqrt(w / xp.maximum(t, w)))


def inverse_sqrt(base_lr: float, warmup_steps: int) -> Schedule:
    r"""Linear warmup, then decay with the inverse square root of the step (Transformer rule).

    .. math::
        \eta_t = \eta_0 \cdot \begin{cases} t / W & t < W \\ \sqrt{W / t} & t \ge W \end{cases}

    where :math:`\eta_0` = ``base_lr`` is the peak, reached at :math:`t = W` =
    ``warmup_steps``. This is ``transformers.get_inverse_sqrt_schedule(num_warmup_steps=W)``
    and fairseq's ``inverse_sqrt`` with ``warmup_init_lr=0``. The "Noam" rule of Vaswani et
    al., :math:`d^{-1/2}\min(n^{-1/2}, n W^{-3/2})` with :math:`n = t + 1`, is this schedule
    with :math:`\eta_0 = (d W)^{-1/2}` evaluated one step later (Noam counts from 1).

    Args:
        base_lr: the peak learning rate (finite, >= 0).
        warmup_steps: :math:`W` (whole number >= 1).

    Returns:
        A :class:`Schedule` with ``total_steps = None`` (it keeps decaying).

    Example:
        >>> s = inverse_sqrt(base_lr=0.01, warmup_steps=100)
        >>> s(50), s(100), s(400)
        (0.005, 0.01, 0.005)
    """
    where = "inverse_sqrt"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "warmup_steps": v.positive_int(where, "warmup_steps", warmup_steps),
    }
    return BuiltinSchedule(where, params, None, _inverse_sqrt)


# --------------------------------------------------------------------------------------------
_WSD_DECAYS = ("linear", "cosine", "1-sqrt")


def _wsd(xp, t, *, base_lr, total_steps, warmup_steps, decay_steps, decay, min_lr):
    decay_start = float(total_steps - decay_steps)
    out = xp.zeros_like(t) + base_lr
    if warmup_steps > 0:
        out = xp.where(t < warmup_steps, (t / warmup_steps) * (base_lr - min_lr) + min_lr, out)
    u = xp.clip((t - decay_start) / decay_steps, 0.0, 1.0)
    if decay == "linear":
        shape = 1.0 - u
    elif decay == "cosine":
        shape = 0.5 * (1.0 + xp.cos(xp.pi * u))
    else:
        shape = 1.0 - xp.sqrt(u)
    return xp.where(t >= decay_start, shape * (base_lr - min_lr) + min_lr, out)


def warmup_stable_decay(base_lr: float, total_steps: int, warmup_steps: int, decay_steps: int,
                        decay: str = "linear", min_lr: float = 0.0) -> Schedule:
    r"""Warmup-stable-decay (WSD, "trapezoidal"): ramp up, hold ``base_lr``, decay at the end.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \cdot \begin{cases}
          t / W & t < W \\
          1 & W \le t < T - D \\
          f\big(\min(1, (t - T + D)/D)\big) & t \ge T - D
        \end{cases}

    with :math:`f(u) = 1 - u` (linear), :math:`\tfrac12(1 + \cos \pi u)` (cosine) or
    :math:`1 - \sqrt{u}` (1-sqrt, Hägele et al. 2024); :math:`\eta_0` = ``base_lr``,
    :math:`\eta_{min}` = ``min_lr``, :math:`T` = ``total_steps`` (including warmup and decay),
    :math:`W` = ``warmup_steps``, :math:`D` = ``decay_steps``. The warmup starts from
    ``min_lr``. Equals ``transformers.get_wsd_schedule(num_warmup_steps=W,
    num_decay_steps=D, num_training_steps=T, warmup_type="linear", decay_type=decay,
    min_lr_ratio=min_lr/base_lr)``.

    Args:
        base_lr: the plateau learning rate (finite, >= 0).
        total_steps: :math:`T`, the whole run (whole number >= 1).
        warmup_steps: :math:`W` (whole number >= 0; 0 means no warmup).
        decay_steps: :math:`D` (whole number >= 1), with :math:`W + D \le T`.
        decay: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        min_lr: the value at the start of the warmup and the end of the decay
            (finite, 0 <= min_lr <= base_lr).

    Returns:
        A :class:`Schedule` with ``total_steps = T``.

    Example:
        >>> s = warmup_stable_decay(0.1, total_steps=1000, warmup_steps=100, decay_steps=200)
        >>> s(50), s(100), s(800), s(900), s(1000)
        (0.05, 0.1, 0.1, 0.05, 0.0)
    """
    where = "warmup_stable_decay"
    params = {
        "base_lr": v.lr_value(where, "base_lr", base_lr),
        "total_steps": v.positive_int(where, "total_steps", total_steps),
        "warmup_steps": v.nonneg_int(where, "warmup_steps", warmup_steps),
        "decay_steps": v.positive_int(where, "decay_steps", decay_steps),
        "decay": v.choice(where, "decay", decay, _WSD_DECAYS),
        "min_lr": v.lr_value(where, "min_lr", min_lr),
    }
    if params["warmup_steps"] + params["decay_steps"] > params["total_steps"]:
        raise ValueError(
            f"{where}: warmup_steps + decay_steps must be <= total_steps ({params['total_steps']}), "
            f"got {params['warmup_steps']} + {params['decay_steps']} = "
            f"{params['warmup_steps'] + params['decay_steps']} (the warmup is longer than the "
            f"schedule leaves room for)")
    if params["min_lr"] > params["base_lr"]:
        raise ValueError(f"{where}: min_lr must be <= base_lr ({params['base_lr']!r}), "
                         f"got {min_lr!r}")
    return BuiltinSchedule(where, params, params["total_steps"], _wsd)
