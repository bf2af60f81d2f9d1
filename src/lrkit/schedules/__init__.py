"""Learning-rate schedules as pure functions of the optimizer step (NumPy only).

Every constructor validates its arguments once and returns an immutable :class:`Schedule`:
``schedule(step)`` for an ``int`` (a ``float``) or a NumPy array of steps (an array).
Conventions shared by all of them:

* a schedule counts **optimizer steps** ``t = 0, 1, 2, ...`` (use :func:`epochs_to_steps` or
  :func:`epochwise` when you think in epochs);
* ``total_steps`` is the whole horizon, **including** any warmup; past it a schedule holds its
  last value (never an error mid-run); schedules without an end have ``total_steps = None``;
* parameter names are shared: ``base_lr`` (start/peak), ``min_lr`` (floor), ``end_lr``,
  ``total_steps``, ``warmup_steps``, ``gamma`` (a decay factor);
* the CLI spec uses the same names: ``cosine(base_lr=0.1, total_steps=1000)`` — see
  :func:`parse_spec` and :meth:`Schedule.to_spec` (and :func:`from_dict` /
  :meth:`Schedule.to_dict` for JSON);
* the formulas are written once, for any NumPy-like array namespace:
  ``schedule.evaluate(count, xp=jax.numpy)`` traces under ``jax.jit`` (for the optax export)
  and gives the same values as ``schedule(step)``.

Example:
    >>> from lrkit import schedules as S
    >>> s = S.warmup(S.cosine(base_lr=0.1, total_steps=900), warmup_steps=100)
    >>> s.total_steps, s(100), s.to_spec()
    (1000, 0.1, "warmup(schedule=cosine(base_lr=0.1, total_steps=900, min_lr=0.0), warmup_steps=100, start_lr=0.0, mode='linear')")
"""
from lrkit.schedules._basic import (
    constant,
    cosine,
    exponential,
    inverse_time,
    linear,
    multistep,
    piecewise_constant,
    piecewise_linear,
    polynomial,
    step_decay,
)
from lrkit.schedules._compose import clip, epochs_to_steps, epochwise, join, multiply, scale
from lrkit.schedules._cyclic import cyclic, one_cycle, warm_restarts
from lrkit.schedules._warmup import inverse_sqrt, warmup, warmup_stable_decay
from lrkit.schedules.base import Schedule
from lrkit.schedules.plateau import PlateauState, ReduceOnPlateau, reduce_on_plateau
from lrkit.schedules.spec import from_dict, parse_spec

#: The names a CLI spec may call (every constructor that returns a :class:`Schedule`).
SCHEDULE_CONSTRUCTORS = (
    "constant",
    "step_decay",
    "multistep",
    "exponential",
    "polynomial",
    "inverse_time",
    "linear",
    "cosine",
    "warm_restarts",
    "cyclic",
    "one_cycle",
    "warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
    "piecewise_constant",
    "piecewise_linear",
    "join",
    "scale",
    "multiply",
    "clip",
    "epochwise",
)

__all__ = [
    "Schedule",
    *SCHEDULE_CONSTRUCTORS,
    "epochs_to_steps",
    "parse_spec",
    "from_dict",
    "PlateauState",
    "ReduceOnPlateau",
    "reduce_on_plateau",
    "SCHEDULE_CONSTRUCTORS",
]
