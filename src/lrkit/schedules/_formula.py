"""The concrete :class:`Schedule` used by every built-in constructor.

A built-in schedule is its constructor's ``name``, its validated keyword arguments
(``params``) and a module-level *formula* ``f(xp, steps, **params) -> lrs`` evaluated on an
array of non-negative float steps with the array namespace ``xp`` — NumPy, or ``jax.numpy``
for the optax export (so formulas use only ``xp.where``-style code: no in-place assignment,
no Python branching on values, no steps below 0 passed to a nested schedule). Keeping the formula a module-level function (not a
closure) keeps schedules picklable; keeping ``params`` the only state keeps them immutable
and makes ``to_spec()`` rebuild exactly the same schedule.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from lrkit.schedules.base import Schedule

Formula = Callable[..., np.ndarray]


class BuiltinSchedule(Schedule):
    """A schedule defined by a named constructor and a vectorised formula."""

    def __init__(self, name: str, params: Mapping[str, Any], total_steps: int | None,
                 formula: Formula) -> None:
        super().__init__(params, total_steps)
        self.name = name
        self._formula = formula

    _supports_xp = True

    def _evaluate(self, steps, xp=np):
        return self._formula(xp, steps, **self._params)


def evaluate(schedule: Schedule, steps, xp=np):
    """Evaluate a (possibly nested) schedule on already-validated non-negative float steps."""
    if xp is np:
        return np.asarray(schedule._evaluate(np.asarray(steps, dtype=np.float64)), dtype=np.float64)
    return schedule.evaluate(steps, xp=xp)


def floor_div(xp, t, d: float):
    """``floor(t / d)``, exact at the multiples of ``d`` with every array namespace.

    XLA (``jax.numpy`` under ``jit``) may compute ``t / d`` as ``t * (1 / d)``, which gives
    ``49 * (1/49) = 0.9999999999999999`` and a staircase one step late. The correction compares
    whole products, which are exact.
    """
    if xp is np:
        return np.floor(t / d)
    q = xp.floor(t / d)
    q = xp.where(q * d > t, q - 1.0, q)
    return xp.where((q + 1.0) * d <= t, q + 1.0, q)


def ceil_div(xp, t, d: float):
    """``ceil(t / d)``, exact at the multiples of ``d`` (see :func:`floor_div`)."""
    if xp is np:
        return np.ceil(t / d)
    q = floor_div(xp, t, d)
    return xp.where(q * d == t, q, q + 1.0)
