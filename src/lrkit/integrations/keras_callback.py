r"""The LR doctor (and guard) as a Keras 3 ``Callback``.

:class:`LRDoctorCallback` feeds a :class:`~lrkit.doctor.core.Doctor` one observation per
training batch, in ``on_train_batch_end``. Keras' ``logs["loss"]`` is the *running mean* of the
epoch, not the batch's loss, so the callback reads the model's loss tracker (the ``Mean`` metric
named ``"loss"``, whose ``total`` and ``count`` variables are sums weighted by the batch size) and
recovers the batch's own loss exactly:

.. math::

    \ell_k = \frac{\text{total}_k - \text{total}_{k-1}}{\text{count}_k - \text{count}_{k-1}}

The user's ``logs`` dict is never modified.

With ``guard=True`` a :class:`~lrkit.doctor.guard.Guard` snapshots ``model.get_weights()`` and
every optimizer variable (moments, the iteration counter) as NumPy copies, and on ``nan`` /
``diverging`` writes them back and multiplies the LR by ``lr_factor``:

* The LR must be a float (a ``keras.Variable``): Keras refuses to assign an optimizer whose LR is
  a ``LearningRateSchedule``, so ``guard=True`` with a schedule raises ``ValueError`` in
  ``on_train_begin`` (watching a scheduled run, ``guard=False``, works). To guard a scheduled run,
  set the LR per epoch with ``keras.callbacks.LearningRateScheduler``: before each batch the
  callback notices an LR set by someone else, takes it as the new base and applies its
  multiplier :math:`m` to it (the LR in force is :math:`m \cdot \text{base}`).
* After a rollback the loss tracker is reset (``reset_state()``; a NaN would otherwise stay in
  the epoch's running mean forever), so that epoch's reported ``loss`` covers only the batches
  after the rollback. Other compiled metrics are left alone.
* Not restored: Keras' random seed generators (dropout), and the data position (the epoch goes
  on). Tested with the torch backend; with JAX, Keras keeps the training state outside the
  variables during an epoch, so a mid-epoch restore is not supported there.

Example::

    model.fit(x, y, callbacks=[LRDoctorCallback(guard=True, snapshot_every=50)])
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import keras
import numpy as np

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.guard import Guard, GuardedWatch, Intervention

__all__ = ["LRDoctorCallback"]


class _State:
    def __init__(self, cb: "LRDoctorCallback") -> None:
        self.cb = cb

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        model = self.cb.model
        weights = [np.array(w, copy=True) for w in model.get_weights()]
        opt = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in model.optimizer.variables]
        return weights, opt

    def restore(self, state: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
        model = self.cb.model
        weights, opt = state
        model.set_weights(weights)
        for v, saved in zip(model.optimizer.variables, opt):
            if v.path.endswith("learning_rate"):
                continue  # the LR is set by the callback (the clock is not rewound)
            v.assign(saved)


class LRDoctorCallback(GuardedWatch, keras.callbacks.Callback):
    """Diagnose (and with ``guard=True`` protect) ``model.fit``; see the module docstring.

    Args:
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``False``: watch only).
        doctor: the :class:`~lrkit.doctor.core.Doctor` (default ``Doctor()``).
        snapshot_every, lr_factor, max_retries, act_on, storage, storage_dir, on_intervention,
            logger: as in :class:`~lrkit.doctor.guard.Guard` (only with ``guard=True``).

    Attributes:
        diagnosis, interventions, lr_multiplier, history (one ``(step, loss, lr)`` per batch).
    """

    def __init__(
        self,
        guard: bool = False,
        *,
        doctor: Doctor | None = None,
        snapshot_every: int = 50,
        lr_factor: float = 0.1,
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        storage: str = "memory",
        storage_dir: Any = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(guard, bool):
            raise ValueError(f"LRDoctorCallback: guard must be True or False, got {guard!r}")
        if doctor is not None and not isinstance(doctor, Doctor):
            raise ValueError(f"LRDoctorCallback: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        self.doctor = doctor if doctor is not None else Doctor()
        self.guard: Guard | None = None
        if guard:
            self.guard = Guard(
                _State(self), doctor=self.doctor, snapshot_every=snapshot_every, lr_factor=lr_factor,
                max_retries=max_retries, act_on=act_on, storage=storage, storage_dir=storage_dir,
                on_intervention=on_intervention, logger=logger, take_initial_snapshot=False,
            )
        self.history: list[tuple[int, float, float]] = []
        self._step = 0
        self._tracker: Any = None
        self._prev = (0.0, 0.0)
        self._base_lr: float | None = None
        self._last_set: float | None = None

    # ------------------------------------------------------------------ helpers
    def _current_lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _loss_vars(self) -> tuple[Any, Any]:
        tracker = next((m for m in self.model.metrics if m.name == "loss"), None)
        if tracker is None:
            names = [m.name for m in self.model.metrics]
            raise ValueError(
                f"LRDoctorCallback: the model has no 'loss' metric (its metrics are {names}); compile the model "
                "with a loss before fit()"
            )
        total = next((v for v in tracker.variables if v.path.endswith("total")), None)
        count = next((v for v in tracker.variables if v.path.endswith("count")), None)
        if total is None or count is None:
            raise ValueError(
                "LRDoctorCallback: the model's loss tracker has no total/count variables "
                f"({[v.path for v in tracker.variables]}); cannot recover per-batch losses"
            )
        self._tracker = tracker
        return total, count

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        opt = self.model.optimizer
        if self.guard is not None:
            lr_cfg = opt.get_config().get("learning_rate")
            if isinstance(lr_cfg, dict):  # a serialised LearningRateSchedule
                raise ValueError(
                    "LRDoctorCallback(guard=True): the optimizer's learning_rate is a LearningRateSchedule, "
                    f"which Keras does not let anyone assign ({lr_cfg.get('class_name', 'schedule')}); pass a float "
                    "learning_rate (with keras.callbacks.LearningRateScheduler for a per-epoch schedule), or use "
                    "guard=False to only watch"
                )
            self._base_lr = self._current_lr()
            self._last_set = self._base_lr
            self.guard.start()
        self._loss_vars()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._prev = (0.0, 0.0)  # fit() resets the trackers at each epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.guard is None:
            return
        cur = self._current_lr()
        if self._last_set is None or not math.isclose(cur, self._last_set, rel_tol=1e-6, abs_tol=0.0):
            self._base_lr = cur  # someone else (an LR scheduler callback) set it: a new base
        want = self._base_lr * self.guard.lr_multiplier
        if not math.isclose(cur, want, rel_tol=1e-7, abs_tol=0.0):
            self.model.optimizer.learning_rate = want
        self._last_set = self._current_lr()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        total_v, count_v = self._loss_vars()
        total = float(keras.ops.convert_to_numpy(total_v))
        count = float(keras.ops.convert_to_numpy(count_v))
        dt, dc = total - self._prev[0], count - self._prev[1]
        self._prev = (total, count)
        if dc <= 0:
            return  # no new batch in the tracker
        loss = dt / dc if math.isfinite(total) else math.nan
        lr = self._current_lr()
        step = self._step
        self._step += 1
        self.history.append((step, loss, lr))
        if self.guard is None:
            self.doctor.observe(step, loss, lr=lr)
            return
        if self.guard.observe(loss, lr=lr, step=step) is not None:
            self._tracker.reset_state()  # a NaN would stay in the epoch's running mean
            self._prev = (0.0, 0.0)
