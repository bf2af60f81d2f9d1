"""Export an lrkit schedule to a Keras 3 learning-rate schedule (plateaus and the guard included).

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

**Reduce-on-plateau composes with any schedule.** Keras's own ``ReduceLROnPlateau`` assigns the
optimizer's LR, which Keras refuses once a ``LearningRateSchedule`` is attached. Here the
reduction is a factor *inside* the exported schedule: export a
:class:`~lrkit.schedules.ReduceOnPlateau` and pass its :attr:`LRKitSchedule.callback` to
``fit``; at every epoch end the callback feeds ``logs[monitor]`` (default ``"val_loss"``) to the
plateau, exactly as the core's :meth:`~lrkit.schedules.ReduceOnPlateau.update` would::

    rop = reduce_on_plateau(warmup(cosine(0.1, 900), 100), patience=2, factor=0.5)
    lr = to_keras(rop)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    model.fit(x, y, validation_data=(xv, yv), epochs=20, callbacks=[lr.callback])

Forgetting ``callbacks=[lr.callback]`` is an error as soon as the optimizer takes its second step
(the LR would otherwise never be reduced); in your own training loop build the export with
``monitor=None`` and call :meth:`LRKitSchedule.observe` yourself.

**The factors are Keras variables.** The plateau's scale :math:`c` and an external multiplier
:math:`m` (1 unless :class:`~lrkit.integrations.keras.callback.LRDoctorCallback` with
``guard=True`` lowered it after a rollback) are non-trainable ``keras.Variable`` s of the
``floatx`` in force when the export is built, read at every step, so changing them needs no
recompilation with the torch and TensorFlow backends. JAX bakes a variable that is not part of
the training state into the compiled step; the plateau callback therefore rebuilds ``fit``'s
train function when the scale changes (a few times per run). Multiplying by exactly 1.0 leaves
the values bitwise unchanged.
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from lrkit.integrations._schedule_table import plan
from lrkit.schedules.base import Schedule
from lrkit.schedules.plateau import PlateauState, ReduceOnPlateau

__all__ = ["LRKitSchedule", "PlateauCallback", "to_keras"]

#: the constructor parameters of a ReduceOnPlateau that ``get_config`` stores (its configuration)
_PLATEAU_PARAMS = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")

_log = logging.getLogger("lrkit.plateau")


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


def _learning_rate_of(optimizer: Any) -> Any:
    """The object an optimizer computes its LR from (a schedule, a callable or a variable)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:  # LossScaleOptimizer
        optimizer = optimizer.inner_optimizer
    return getattr(optimizer, "_learning_rate", None)


def _concrete_count(step: Any) -> int | None:
    """The value of the optimizer's iteration variable, or ``None`` while a graph is traced."""
    value = step.value
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if isinstance(value, jax.core.Tracer):
            return None
    elif backend == "tensorflow":  # pragma: no cover - TensorFlow is not installed in CI
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
    return int(np.asarray(ops.convert_to_numpy(value)))


@keras.saving.register_keras_serializable(package="lrkit")
class LRKitSchedule(keras.optimizers.schedules.LearningRateSchedule):
    r"""A Keras learning-rate schedule computing an lrkit schedule; see :func:`to_keras`.

    At optimizer step :math:`k` (``optimizer.iterations``) it gives

    .. math::
        \text{lr}(k) = m\, s(\max(k, 0)) \qquad\text{or, for a plateau,}\qquad
        \text{lr}(k) = m \max\big(s(\max(k, 0))\, c,\; \eta_{min}\big)

    where :math:`s` is the lrkit schedule, :math:`c` the plateau's scale (:attr:`scale`, moved
    by :meth:`observe`), :math:`\eta_{min}` its ``min_lr`` and :math:`m` the external
    :attr:`multiplier` (1.0 unless a guard lowered it) — the LR of
    :meth:`ReduceOnPlateau.lr <lrkit.schedules.ReduceOnPlateau.lr>` times :math:`m`. The
    factors :math:`c` and :math:`m` are ``keras.Variable`` s of the ``floatx`` in force when the
    export is built (build it under ``float64`` for LRs exactly equal to the core's).

    Args:
        schedule: an lrkit :class:`~lrkit.schedules.Schedule`, a
            :class:`~lrkit.schedules.ReduceOnPlateau`, or a schedule's ``to_dict()`` (what
            :meth:`get_config` stores; then ``plateau`` holds the plateau's parameters).
        method: ``"auto"``, ``"table"`` or ``"formula"`` (see the module docstring).
        table_steps: with ``"table"``, the number of steps tabulated (default
            ``total_steps + 1``); the formula continues after it if the schedule has not ended.
        monitor: for a plateau, the key of the epoch's ``logs`` that :attr:`callback` feeds to
            it (default ``"val_loss"``); ``None`` for no callback (call :meth:`observe`
            yourself). Not used without a plateau (pass ``None`` or leave the default).
        plateau: the plateau's parameters as stored by :meth:`get_config` (``mode``,
            ``factor``, ``patience``, ``threshold``, ``threshold_mode``, ``cooldown``,
            ``min_lr``, ``eps``), with ``schedule`` the wrapped schedule; ``None`` otherwise.
        state: progress to start from, as returned by :meth:`state_dict` (``None``: fresh).

    Attributes:
        schedule: the lrkit schedule :math:`s` (for a plateau, the schedule it wraps).
        plateau: the :class:`~lrkit.schedules.ReduceOnPlateau`, or ``None``.
        method: ``"table"`` or ``"formula"`` (what ``"auto"`` resolved to).
        monitor: the metric :attr:`callback` reads, or ``None``.
        callback: the :class:`PlateauCallback` to pass to ``fit`` (``None`` without a plateau
            or with ``monitor=None``).
    """

    def __init__(self, schedule: Schedule | ReduceOnPlateau | dict, method: str = "auto",
                 table_steps: int | None = None, monitor: str | None = "val_loss",
                 plateau: dict | None = None, state: dict | None = None) -> None:
        super().__init__()
        if isinstance(schedule, dict):
            from lrkit.schedules import from_dict

            schedule = from_dict(schedule)
        if plateau is not None:
            if not isinstance(schedule, Schedule):
                raise ValueError(f"LRKitSchedule: plateau=... goes with the wrapped Schedule (as in "
                                 f"get_config()), got schedule={schedule!r}")
            if not isinstance(plateau, dict) or not set(plateau) <= set(_PLATEAU_PARAMS):
                raise ValueError(f"LRKitSchedule: plateau must be a dict with keys among "
                                 f"{list(_PLATEAU_PARAMS)}, got {plateau!r}")
            schedule = ReduceOnPlateau(schedule, **plateau)
        if isinstance(schedule, ReduceOnPlateau):
            rop, base = schedule, schedule.schedule
        elif isinstance(schedule, Schedule):
            rop, base = None, schedule
        else:
            raise ValueError(f"to_keras: schedule must be an lrkit Schedule or ReduceOnPlateau, "
                             f"got {schedule!r}")
        if rop is None:
            if monitor not in (None, "val_loss"):
                raise ValueError(f"to_keras: monitor={monitor!r} is only used with a ReduceOnPlateau "
                                 f"(it names the metric fed to the plateau); this schedule is "
                                 f"{base.to_spec()}, pass monitor=None")
            monitor = None
        elif monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"to_keras: monitor must be the name of a logged metric (e.g. 'val_loss' "
                             f"or 'loss') or None, got {monitor!r}")
        p = plan(base, method, table_steps, "to_keras")
        self.schedule = base
        self.plateau = rop
        self.method = "formula" if p.table is None else "table"
        self.monitor = monitor
        self._method_arg = method
        self._table_steps = table_steps
        self._table = p.table
        self._tail = p.tail
        self._tables: dict[str, np.ndarray] = {}
        dtype = keras.config.floatx()
        self._multiplier = 1.0
        self._multiplier_var = keras.Variable(1.0, dtype=dtype, trainable=False, name="lrkit_multiplier")
        self._pstate: PlateauState | None = None
        self._scale_var = None
        if rop is not None:
            self._pstate = rop.init()
            self._scale_var = keras.Variable(1.0, dtype=dtype, trainable=False, name="lrkit_plateau_scale")
        # the forgotten-callback check (see _check_fed)
        self._attached = False
        self._seen_count: int | None = None
        self.callback: PlateauCallback | None = (
            PlateauCallback(self, monitor) if rop is not None and monitor is not None else None)
        if state is not None:
            self.load_state_dict(state)

    # ------------------------------------------------------------------ the LR
    def _table_as(self, dtype: str) -> np.ndarray:
        if dtype not in self._tables:
            self._tables[dtype] = self._table.astype(dtype)
        return self._tables[dtype]

    def __call__(self, step):
        """The LR at optimizer step ``step`` (a tensor or number; negative steps count as 0)."""
        if self.callback is not None and not self._attached:
            self._check_fed(step)
        dtype = keras.config.floatx()
        lr = self._base(ops.convert_to_tensor(step), dtype)
        # the factors are tensors of ``dtype`` like ``lr``, so the backend's own ``*`` keeps it
        if self.plateau is not None:
            scaled = lr * _read(self._scale_var, dtype)
            # max() that keeps the dtype; the floor is made at every call (a tensor made while jax
            # traces must not outlive the trace)
            floor = ops.convert_to_tensor(self.plateau.min_lr, dtype=dtype)
            lr = ops.where(scaled >= floor, scaled, floor)
        return lr * _read(self._multiplier_var, dtype)

    def _base(self, step, dtype: str):
        """The schedule at ``max(step, 0)``, in ``dtype``."""
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

    def _check_fed(self, step) -> None:
        """Raise if an optimizer trains with this plateau while no callback feeds it.

        Only calls with the optimizer's iteration variable count (not ``lr(50)``), and only
        once the count has moved (or while a graph is traced): reading ``optimizer.learning_rate``
        of an idle or freshly loaded model is fine.
        """
        if not isinstance(step, keras.Variable):
            return
        count = _concrete_count(step)
        if count is not None and (self._seen_count is None or count == self._seen_count):
            self._seen_count = count
            return
        if count is None and keras.backend.backend() == "jax":
            _give_back_jax_fit_state()
        raise ValueError(
            f"to_keras({self.plateau!r}): the optimizer is training with this plateau schedule but "
            f"nothing feeds it {self.monitor!r}, so its LR would never be reduced; pass its callback "
            f"to fit: model.fit(..., callbacks=[lr.callback]) with lr the exported schedule "
            f"(LRKitSchedule.of(model.optimizer) finds it), or, in your own training loop, export "
            f"with to_keras(..., monitor=None) and call lr.observe(metric) after each evaluation")

    # ------------------------------------------------------------------ the factors
    @property
    def plateau_state(self) -> PlateauState | None:
        """The plateau's :class:`~lrkit.schedules.PlateauState` (``None`` without a plateau)."""
        return self._pstate

    @property
    def scale(self) -> float:
        """The plateau's scale :math:`c` (1.0 until the first reduction; 1.0 without a plateau)."""
        return self._pstate.scale if self._pstate is not None else 1.0

    @property
    def multiplier(self) -> float:
        """The external factor :math:`m` on the whole LR (1.0 unless set)."""
        return self._multiplier

    def set_multiplier(self, multiplier: float) -> None:
        """Multiply every LR by ``multiplier`` from now on (finite, >= 0); the guard uses it.

        Example:
            >>> from lrkit.schedules import constant
            >>> lr = to_keras(constant(0.1))
            >>> lr.set_multiplier(0.5)
            >>> round(float(lr(0)), 6)
            0.05
        """
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float, np.floating, np.integer)) \
                or not math.isfinite(multiplier) or multiplier < 0:
            raise ValueError(f"LRKitSchedule.set_multiplier: multiplier must be a finite number >= 0, "
                             f"got {multiplier!r}")
        self._multiplier = float(multiplier)
        self._multiplier_var.assign(self._multiplier)

    def observe(self, metric: float) -> PlateauState:
        """Feed one metric to the plateau (what :attr:`callback` does at each epoch end).

        The same step as the core's :meth:`~lrkit.schedules.ReduceOnPlateau.update` (modes,
        thresholds, patience, cooldown, ``min_lr``, ``eps``); the optimizer's next LRs use the
        new scale. It does not move the step (the optimizer's ``iterations`` does).

        Returns:
            The new :class:`~lrkit.schedules.PlateauState`.

        Raises:
            ValueError: the schedule has no plateau, or ``metric`` is not a number.

        Example:
            >>> from lrkit.schedules import constant, reduce_on_plateau
            >>> lr = to_keras(reduce_on_plateau(constant(0.1), patience=0, factor=0.5), monitor=None)
            >>> for val_loss in [1.0, 2.0]:
            ...     state = lr.observe(val_loss)
            >>> round(float(lr(0)), 6), state.num_bad_epochs
            (0.05, 0)
        """
        if self.plateau is None:
            raise ValueError(f"LRKitSchedule.observe: {self.schedule.to_spec()} has no plateau; export "
                             f"reduce_on_plateau(schedule, ...) to feed it metrics")
        self._pstate = self.plateau.update(self._pstate, metric)
        self._scale_var.assign(self._pstate.scale)
        return self._pstate

    # ------------------------------------------------------------------ progress
    def state_dict(self) -> dict[str, Any]:
        """Progress only: ``{"multiplier": m}``, plus ``"plateau"`` (its state as a dict) for a plateau.

        Example:
            >>> from lrkit.schedules import reduce_on_plateau
            >>> lr = to_keras(reduce_on_plateau(0.1, patience=0), monitor=None)
            >>> _ = lr.observe(1.0)
            >>> lr.state_dict()["plateau"]["best"], lr.state_dict()["multiplier"]
            (1.0, 1.0)
        """
        d: dict[str, Any] = {"multiplier": self._multiplier}
        if self.plateau is not None:
            d["plateau"] = self.plateau.state_dict(self._pstate)
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict` (the configuration is the constructor's).

        Raises:
            ValueError: not a dict, missing or unexpected keys, or bad values.
        """
        expected = {"multiplier"} | ({"plateau"} if self.plateau is not None else set())
        if not isinstance(state, dict) or set(state) != expected:
            raise ValueError(f"LRKitSchedule.load_state_dict: expected a dict with keys {sorted(expected)} "
                             f"(from state_dict() of a schedule with{'' if self.plateau else 'out'} a "
                             f"plateau), got {state!r}")
        if self.plateau is not None:
            pstate = self.plateau.load_state(dict(state["plateau"]))
        self.set_multiplier(state["multiplier"])
        if self.plateau is not None:
            self._pstate = pstate
            self._scale_var.assign(pstate.scale)

    # ------------------------------------------------------------------ serialisation
    def get_config(self) -> dict[str, Any]:
        """The configuration and the progress, JSON-ready.

        ``{"schedule": s.to_dict(), "method", "table_steps", "monitor", "plateau": {mode,
        factor, ...} or None, "state": state_dict()}``. The progress is included (as Keras
        keeps an optimizer's current LR in its config), so a model saved mid-run loads back
        with its plateau reductions and multiplier; :meth:`from_config` restores them.
        """
        plateau = None
        if self.plateau is not None:
            plateau = {k: getattr(self.plateau, k) for k in _PLATEAU_PARAMS}
        return {"schedule": self.schedule.to_dict(), "method": self._method_arg,
                "table_steps": self._table_steps, "monitor": self.monitor, "plateau": plateau,
                "state": self.state_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LRKitSchedule":
        """Rebuild from :meth:`get_config` (the schedule via :func:`lrkit.schedules.from_dict`)."""
        return cls(**config)

    @classmethod
    def of(cls, optimizer: Any) -> "LRKitSchedule":
        """The :class:`LRKitSchedule` a Keras optimizer uses (e.g. after ``load_model``).

        Raises:
            ValueError: the optimizer's learning rate is something else (a float, a Keras
                schedule), named in the message.

        Example:
            >>> from lrkit.schedules import cosine
            >>> opt = keras.optimizers.SGD(learning_rate=to_keras(cosine(0.1, 100)))
            >>> LRKitSchedule.of(opt).schedule.name
            'cosine'
        """
        lr = _learning_rate_of(optimizer)
        if isinstance(lr, cls):
            return lr
        what = type(lr).__name__ if lr is not None else f"not found on {type(optimizer).__name__}"
        raise ValueError(f"LRKitSchedule.of: the optimizer's learning_rate is not an lrkit export "
                         f"(it is {what}); build it with learning_rate=to_keras(schedule)")

    def __repr__(self) -> str:
        spec = repr(self.plateau) if self.plateau is not None else self.schedule.to_spec()
        return f"to_keras({spec}, method={self.method!r})"


def _give_back_jax_fit_state() -> None:
    """Let a Keras JAX ``fit`` that fails while tracing its train step keep the model's weights.

    Keras's JAX trainer detaches the weights (and the optimizer's and metrics' variables) from
    their ``keras.Variable`` s into a ``state`` tuple before the first step of an epoch and puts
    them back from the last *finished* step (``model._jax_state``, in ``fit``'s ``finally``). An
    error raised while the first step is traced therefore left every variable empty, and the
    next ``fit`` (the one with ``callbacks=[lr.callback]``) failed with ``'NoneType' object is not
    callable``. This hands the not-yet-used ``state`` of the ``fit`` frame on the stack to that
    ``finally`` as if a step had finished with it, so the variables get their own values back.
    Nothing is changed when no such frame is found (another Keras version or caller).
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "fit" and code.co_filename.replace("\\", "/").endswith("backend/jax/trainer.py"):
            model, state = frame.f_locals.get("self"), frame.f_locals.get("state")
            if isinstance(state, tuple) and len(state) == 4 and getattr(model, "_jax_state_synced", True) is False:
                model._jax_state = dict(zip(("trainable_variables", "non_trainable_variables",
                                             "optimizer_variables", "metrics_variables"), state))
            return
        frame = frame.f_back


def _read(var: Any, dtype: str):
    """A scalar variable's value as a tensor of ``dtype``."""
    value = var.value
    return value if var.dtype == dtype else ops.cast(value, dtype)


class PlateauCallback(keras.callbacks.Callback):
    """Feeds ``logs[monitor]`` to an exported plateau at every epoch end; get it as ``lr.callback``.

    At ``on_train_begin`` it checks that ``model.optimizer`` uses its schedule; at
    ``on_epoch_end`` it calls :meth:`LRKitSchedule.observe` with ``logs[monitor]`` (the logs are
    read, never modified). An epoch without validation (``validation_freq``, or no
    ``validation_data``) has no ``val_*`` entries: the plateau is not fed then and a warning
    says so. A monitor that is missing while other metrics are there (a typo) is a
    ``ValueError`` listing them. A reduction is logged at INFO level on ``"lrkit.plateau"``.
    The callback holds no state of its own: the progress is the schedule's
    (:meth:`LRKitSchedule.state_dict`).

    Args:
        schedule: the :class:`LRKitSchedule` with a plateau.
        monitor: the key of the epoch's logs to feed (e.g. ``"val_loss"``).
    """

    def __init__(self, schedule: LRKitSchedule, monitor: str) -> None:
        super().__init__()
        if not isinstance(schedule, LRKitSchedule) or schedule.plateau is None:
            raise ValueError(f"PlateauCallback: schedule must be an LRKitSchedule exported from a "
                             f"ReduceOnPlateau, got {schedule!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"PlateauCallback: monitor must be a metric name such as 'val_loss', got {monitor!r}")
        self.schedule = schedule
        self.monitor = monitor

    def on_train_begin(self, logs: dict | None = None) -> None:
        used = _learning_rate_of(self.model.optimizer)
        if used is not self.schedule:
            what = ("another lrkit export (each to_keras() call makes its own)" if isinstance(used, LRKitSchedule)
                    else f"{type(used).__name__}")
            raise ValueError(
                f"PlateauCallback: model.optimizer does not use the schedule this callback feeds; its "
                f"learning_rate is {what}; pass the callback of the schedule the optimizer was built "
                f"with (keras.optimizers.SGD(learning_rate=lr) and callbacks=[lr.callback]; "
                f"LRKitSchedule.of(model.optimizer).callback after load_model)")
        self.schedule._attached = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in logs):
                warnings.warn(
                    f"lrkit plateau: no {self.monitor!r} in this epoch's logs (no validation ran: pass "
                    f"validation_data=... to fit, or export with monitor='loss'); the plateau is not "
                    f"updated this epoch", stacklevel=2)
                return
            raise ValueError(f"lrkit plateau: monitor={self.monitor!r} is not among the epoch's logs "
                             f"{sorted(logs)}; export with to_keras(..., monitor=<one of them>)")
        before = self.schedule.scale
        state = self.schedule.observe(logs[self.monitor])
        if state.scale != before:
            _log.info("lrkit plateau: %s did not improve for %d epochs; scale %.4g -> %.4g (epoch %d)",
                      self.monitor, self.schedule.plateau.patience + 1, before, state.scale, epoch)
            if keras.backend.backend() == "jax":
                # jax.jit compiled the scale's old value into the train step: trace it again
                self.model.make_train_function(force=True)


def to_keras(schedule: Schedule | ReduceOnPlateau, *, method: str = "auto",
             table_steps: int | None = None, monitor: str | None = "val_loss") -> LRKitSchedule:
    r"""A Keras ``LearningRateSchedule`` with the learning rates of ``schedule``.

    .. math::
        \text{lr}(k) = s(\max(k, 0))

    where :math:`s` is the schedule and :math:`k` the optimizer's ``iterations`` (0 for the
    first update). A :class:`~lrkit.schedules.ReduceOnPlateau` gives
    :math:`\max(s(k)\,c, \eta_{min})` with the scale :math:`c` that its callback
    (``lr.callback``, for ``fit``) moves at each epoch end: warmup, then cosine, scaled down on
    plateaus — see :class:`LRKitSchedule`.

    Args:
        schedule: an lrkit :class:`~lrkit.schedules.Schedule` or
            :class:`~lrkit.schedules.ReduceOnPlateau`.
        method: ``"auto"``, ``"table"`` or ``"formula"`` (see the module docstring).
        table_steps: with ``"table"``, tabulate steps ``0 .. table_steps - 1``.
        monitor: for a plateau, the key of the epoch's logs its callback feeds it (default
            ``"val_loss"``; ``"loss"`` needs no validation data); ``None``: no callback, call
            ``lr.observe(metric)`` yourself.

    Returns:
        An :class:`LRKitSchedule`, e.g. for ``keras.optimizers.SGD(learning_rate=...)``; for a
        plateau pass ``callbacks=[lr.callback]`` to ``fit``.

    Raises:
        ValueError: an unknown ``method``, a bad ``table_steps`` or ``monitor``, or a schedule
            the chosen method cannot represent (the message says what to pass).

    Example:
        >>> import keras
        >>> from lrkit.schedules import cosine, reduce_on_plateau, warmup
        >>> lr = to_keras(cosine(base_lr=0.1, total_steps=100))
        >>> opt = keras.optimizers.SGD(learning_rate=lr)
        >>> round(float(lr(50)), 6), lr.get_config()["schedule"]["name"]
        (0.05, 'cosine')
        >>> lr = to_keras(reduce_on_plateau(warmup(cosine(0.1, 900), 100), patience=2, factor=0.5))
        >>> opt = keras.optimizers.SGD(learning_rate=lr)
        >>> type(lr.callback).__name__, lr.callback.monitor   # model.fit(..., callbacks=[lr.callback])
        ('PlateauCallback', 'val_loss')
    """
    return LRKitSchedule(schedule, method=method, table_steps=table_steps, monitor=monitor)
