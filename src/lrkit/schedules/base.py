"""The :class:`Schedule` type: a learning rate as a pure function of the optimizer step.

A schedule counts **optimizer steps** (not epochs): ``schedule(0)`` is the LR used for the
first optimizer update. It accepts an ``int`` (returns a Python ``float``) or a NumPy array of
steps (returns a ``float64`` array of the same shape). Schedules are immutable; everything that
defines one is in :attr:`Schedule.params`, which is what ``repr``, :meth:`Schedule.to_spec`
and the CLI use. Past its horizon a schedule holds its last value.

Subclasses implement :meth:`Schedule._evaluate` on a float64 array of non-negative steps. The
built-in schedules also accept ``xp=jax.numpy`` there (see :meth:`Schedule.evaluate`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["Schedule"]


class Schedule:
    """Base class of every lrkit schedule.

    Attributes:
        name: the constructor name, e.g. ``"cosine"`` (the same name as in a CLI spec).
        params: the constructor's keyword arguments (plain values or nested schedules).
        total_steps: the horizon in optimizer steps, or ``None`` if the schedule never ends.
    """

    name: str = "schedule"

    def __init__(self, params: Mapping[str, Any], total_steps: int | None = None) -> None:
        self._params = dict(params)
        self._total_steps = total_steps

    # -- the function of the step --------------------------------------------------------
    def _evaluate(self, steps: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step):
        scalar = np.ndim(step) == 0
        steps = np.asarray(step, dtype=np.float64)
        if not np.all(np.isfinite(steps)) or np.any(steps < 0):
            raise ValueError(f"step must be a finite number >= 0, got {step!r}")
        out = np.asarray(self._evaluate(np.atleast_1d(steps)), dtype=np.float64)
        if scalar:
            return float(out.reshape(-1)[0])
        return out.reshape(steps.shape)

    #: whether :meth:`_evaluate` accepts an array namespace other than NumPy (``xp=``)
    _supports_xp: bool = False

    def evaluate(self, steps, xp=None):
        """The LRs at ``steps`` computed with the array namespace ``xp`` (NumPy by default).

        ``xp=jax.numpy`` gives a traceable computation (usable inside ``jax.jit``, e.g. an optax
        schedule) from the very same formulas as ``schedule(step)``. Unlike ``__call__`` this
        does not validate ``steps`` (pass non-negative steps) and always returns an array.
        Integer steps are converted to the namespace's default float type (float32 in JAX
        unless ``jax_enable_x64``: exact up to 2**24 steps).

        Example:
            >>> import numpy as np
            >>> from lrkit.schedules import cosine
            >>> cosine(0.1, 100).evaluate(np.array([0, 50]), xp=np).round(6).tolist()
            [0.1, 0.05]
        """
        if xp is None or xp is np:
            return np.asarray(self._evaluate(np.asarray(steps, dtype=np.float64)), dtype=np.float64)
        if not self._supports_xp:
            raise ValueError(f"{type(self).__name__} only evaluates with NumPy (xp=numpy), "
                             f"got xp={getattr(xp, '__name__', xp)!r}")
        return self._evaluate(xp.asarray(steps) * 1.0, xp=xp)

    # -- description -----------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def total_steps(self) -> int | None:
        return self._total_steps

    def to_spec(self) -> str:
        """The constructor call that rebuilds this schedule, e.g. ``cosine(base_lr=0.1, total_steps=100)``."""
        def fmt(v: Any) -> str:
            if isinstance(v, Schedule):
                return v.to_spec()
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(fmt(x) for x in v) + "]"
            return repr(v)

        args = ", ".join(f"{k}={fmt(v)}" for k, v in self._params.items())
        return f"{self.name}({args})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"name": ..., "params": {...}}`` (nested schedules as dicts)."""
        def conv(v: Any) -> Any:
            if isinstance(v, Schedule):
                return v.to_dict()
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v

        return {"name": self.name, "params": {k: conv(v) for k, v in self._params.items()}}

    # -- exports and pictures (adapters are imported lazily; the core stays NumPy-only) ---
    def to_torch(self, optimizer, **kwargs):
        """A ``torch.optim.lr_scheduler.LRScheduler`` that sets exactly these LRs on ``optimizer``."""
        from lrkit.integrations.torch.schedule import to_torch

        return to_torch(self, optimizer, **kwargs)

    def to_keras(self, **kwargs):
        """A ``keras.optimizers.schedules.LearningRateSchedule`` with these LRs (serialisable)."""
        from lrkit.integrations.keras.schedule import to_keras

        return to_keras(self, **kwargs)

    def to_optax(self, **kwargs):
        """An optax schedule: a callable ``count -> lr`` usable inside ``jax.jit``."""
        from lrkit.integrations.jax.schedule import to_optax

        return to_optax(self, **kwargs)

    def plot(self, ax=None, *, steps: int | None = None, **kwargs):
        """Plot the LR against the step on ``ax`` (a new figure if ``None``); returns ``ax``."""
        from lrkit.report.schedule_plot import plot_schedule

        return plot_schedule(self, ax=ax, steps=steps, **kwargs)

    # -- arithmetic with numbers (composition lives in lrkit.schedules._compose) ----------
    def __mul__(self, factor):
        """``schedule * 0.5`` is :func:`lrkit.schedules.scale` (a number only)."""
        from numbers import Real

        if isinstance(factor, Schedule) or isinstance(factor, bool) or not isinstance(factor, Real):
            return NotImplemented
        from lrkit.schedules._compose import scale

        return scale(self, factor)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return self.to_spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_spec())
