"""The concrete :class:`Schedule` used by every built-in constructor.

A built-in schedule is its constructor's ``name``, its validated keyword arguments
(``params``) and a module-level *formula* ``f(steps, **params) -> lrs`` evaluated on a
float64 array of non-negative steps. Keeping the formula a module-level function (not a
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

    def _evaluate(self, steps: np.ndarray) -> np.ndarray:
        return self._formula(steps, **self._params)


def evaluate(schedule: Schedule, steps: np.ndarray) -> np.ndarray:
    """Evaluate a (possibly nested) schedule on already-validated float64 steps."""
    return np.asarray(schedule._evaluate(np.asarray(steps, dtype=np.float64)), dtype=np.float64)
