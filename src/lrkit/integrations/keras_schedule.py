"""Export an lrkit :class:`~lrkit.schedules.Schedule` to a Keras 3 learning-rate schedule.

:func:`to_keras` returns an :class:`LRKitSchedule`, a
``keras.optimizers.schedules.LearningRateSchedule`` that works with every Keras backend's
optimizer (eager or traced: it only uses ``keras.ops``) and serialises through
``get_config()``/``from_config()`` (it is registered as ``"lrkit>LRKitSchedule"``, so models
saved with it load back with :func:`keras.saving.load_model` once this module is imported).

How it computes (``method``), in Keras's float type ``keras.config.floatx()``:

* ``"table"`` — looks the LR up in the schedule's own float64 values (computed by lrkit with
  NumPy) rounded once to ``floatx``: with ``floatx="float64"`` exactly ``schedule(step)``; in
  float32 correctly rounded.
* ``"formula"`` — the schedule's formula written with ``keras.ops`` (the same formulas as the
  core, traced by any backend): a few ulps from the core in float64; in float32 constants are
  rounded, so e.g. ``gamma**t`` drifts (about 1e-7 relative per 100 steps for ``gamma`` near 1).
* ``"auto"`` (default) — a table when the schedule ends within 2**21 steps, the formula
  otherwise.

Steps are converted to ``floatx`` for the formula (exact up to 2**24 steps in float32).
"""
from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from lrkit.integrations._schedule_table import plan
from lrkit.schedules.base import Schedule
from lrkit.schedules.plateau import ReduceOnPlateau

__all__ = ["LRKitSchedule", "to_keras"]


class _KerasNumpy:
    """The array namespace the lrkit formulas expect, made of ``keras.ops``."""

    pi = math.pi

    def __init__(self, dtype: str) -> None:
        self._dtype = dtype

    def __getattr__(self, name: str):
        fn = getattr(ops, name)

        def call(*args, **kwargs):
            # Python numbers become tensors of the schedule's dtype, and float arguments and
            # results are brought to it: some backends compute ops such as ``floor`` in
            # float32 even on float64 input, which would round a float64 LR.
            out = fn(*[self._t(a) for a in args], **kwargs)
            return self._t(out)

        return call

    # Keras's torch backend computes maximum/minimum of two float64 tensors in float32
    # (its result_type); ``where`` keeps the dtype
    def maximum(self, a, b):
        a, b = self._t(a), self._t(b)
        return ops.where(a >= b, a, b)

    def minimum(self, a, b):
        a, b = self._t(a), self._t(b)
        return ops.where(a <= b, a, b)

    def clip(self, x, lo, hi):
        return self.minimum(self.maximum(x, lo), hi)

    def _t(self, x):
        """Python numbers and float tensors of another float type -> the schedule's dtype.

        (E.g. torch makes ``int_tensor * 1.0`` float32 even in a float64 computation; such
        values are whole step counts, exact in float32, so the cast loses nothing.)
        """
        if type(x) in (float, int):
            return ops.convert_to_tensor(x, dtype=self._dtype)
        dt = getattr(x, "dtype", None)
        if dt is not None:
            dt = keras.backend.standardize_dtype(dt)
            if dt.startswith(("float", "bfloat")) and dt != self._dtype:
                return ops.cast(x, self._dtype)
        return x

    def asarray(self, x, dtype=None):
        return ops.convert_to_tensor(x, dtype=self._dtype)

    def interp(self, x, xp, fp):
        """``numpy.interp``: linear between the knots ``(xp, fp)``, held outside them."""
        xp = ops.convert_to_tensor(xp, dtype=self._dtype)
        fp = ops.convert_to_tensor(fp, dtype=self._dtype)
        n = int(xp.shape[0])
        if n == 1:
            return ops.zeros_like(x) + fp[0]
        i = ops.clip(ops.searchsorted(xp, x, side="right") - 1, 0, n - 2)
        x0, x1 = ops.take(xp, i), ops.take(xp, i + 1)
        y0, y1 = ops.take(fp, i), ops.take(fp, i + 1)
        inside = y0 + (y1 - y0) * ((x - x0) / (x1 - x0))
        out = ops.where(x <= xp[0], fp[0], inside)
        return ops.where(x >= xp[n - 1], fp[n - 1], out)


@keras.saving.register_keras_serializable(package="lrkit")
class LRKitSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A Keras learning-rate schedule computing an lrkit schedule; see :func:`to_keras`.

    Args:
        schedule: an lrkit :class:`~lrkit.schedules.Schedule`, or its ``to_dict()`` (what
            :meth:`get_config` stores).
        method: ``"auto"``, ``"table"`` or ``"formula"`` (see the module docstring).
        table_steps: with ``"table"``, the number of steps tabulated (default
            ``total_steps + 1``); the formula continues after it if the schedule has not ended.

    Attributes:
        schedule: the lrkit schedule.
        method: ``"table"`` or ``"formula"`` (what ``"auto"`` resolved to).
    """

    def __init__(self, schedule: Schedule | dict, method: str = "auto",
                 table_steps: int | None = None) -> None:
        super().__init__()
        if isinstance(schedule, dict):
            from lrkit.schedules import from_dict

            schedule = from_dict(schedule)
        if isinstance(schedule, ReduceOnPlateau):
            raise ValueError("to_keras: a ReduceOnPlateau reacts to metrics, it is not a function "
                             "of the step; export rop.schedule and add "
                             "keras.callbacks.ReduceLROnPlateau-style logic yourself")
        p = plan(schedule, method, table_steps, "to_keras")
        self.schedule = schedule
        self.method = "formula" if p.table is None else "table"
        self._method_arg = method
        self._table_steps = table_steps
        self._table = p.table
        self._tail = p.tail
        self._tables: dict[str, np.ndarray] = {}

    def _table_as(self, dtype: str) -> np.ndarray:
        if dtype not in self._tables:
            self._tables[dtype] = self._table.astype(dtype)
        return self._tables[dtype]

    def __call__(self, step):
        """The LR at optimizer step ``step`` (a tensor or number; negative steps count as 0)."""
        dtype = keras.config.floatx()
        step = ops.convert_to_tensor(step)
        if self._table is None:
            return self._formula(step, dtype)
        n = self._table.shape[0]
        idx = ops.clip(ops.cast(step, "int32"), 0, n - 1)
        looked_up = ops.take(ops.convert_to_tensor(self._table_as(dtype), dtype=dtype), idx)
        if self._tail == "hold":
            return looked_up
        t = ops.cast(step, dtype)
        return ops.where(t < n, looked_up, self._formula(step, dtype))

    def _formula(self, step, dtype: str):
        t = ops.maximum(ops.cast(step, dtype), 0.0)
        return ops.cast(self.schedule.evaluate(t, xp=_KerasNumpy(dtype)), dtype)

    def get_config(self) -> dict[str, Any]:
        """``{"schedule": schedule.to_dict(), "method": ..., "table_steps": ...}`` (JSON-ready)."""
        return {"schedule": self.schedule.to_dict(), "method": self._method_arg,
                "table_steps": self._table_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LRKitSchedule":
        """Rebuild from :meth:`get_config` (the schedule via :func:`lrkit.schedules.from_dict`)."""
        return cls(**config)

    def __repr__(self) -> str:
        return f"to_keras({self.schedule.to_spec()}, method={self.method!r})"


def to_keras(schedule: Schedule, *, method: str = "auto",
             table_steps: int | None = None) -> LRKitSchedule:
    r"""A Keras ``LearningRateSchedule`` with the learning rates of ``schedule``.

    .. math::
        \text{lr}(k) = s(\max(k, 0))

    where :math:`s` is the schedule and :math:`k` the optimizer's ``iterations`` (0 for the
    first update).

    Args:
        schedule: an lrkit :class:`~lrkit.schedules.Schedule`.
        method: ``"auto"``, ``"table"`` or ``"formula"`` (see the module docstring).
        table_steps: with ``"table"``, tabulate steps ``0 .. table_steps - 1``.

    Returns:
        An :class:`LRKitSchedule`, e.g. for ``keras.optimizers.SGD(learning_rate=...)``.

    Raises:
        ValueError: an unknown ``method``, a bad ``table_steps``, a plateau schedule, or a
            schedule the chosen method cannot represent (the message says what to pass).

    Example:
        >>> import keras
        >>> from lrkit.schedules import cosine
        >>> lr = to_keras(cosine(base_lr=0.1, total_steps=100))
        >>> opt = keras.optimizers.SGD(learning_rate=lr)
        >>> round(float(lr(50)), 6), lr.get_config()["schedule"]["name"]
        (0.05, 'cosine')
    """
    return LRKitSchedule(schedule, method=method, table_steps=table_steps)
