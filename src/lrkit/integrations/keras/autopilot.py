r"""The LR autopilot as a Keras 3 callback for ``model.fit``: compile with any float LR, it is ignored.

::

    model.compile(optimizer=keras.optimizers.AdamW(), loss="sparse_categorical_crossentropy")
    pilot = AutopilotCallback(x, y, batch_size=32, val_data=(x_val, y_val))
    model.fit(x, y, batch_size=32, epochs=10, validation_data=(x_val, y_val), callbacks=[pilot])

A Keras callback does not see the data ``fit`` trains on, so the finder's data is given to the
callback (the same arrays, a ``PyDataset`` or a re-iterable of batches: as for
:func:`lrkit.keras.find_lr`). In ``on_train_begin`` it runs the finder (at most 30% of the run;
the run length is ``train_steps`` or ``epochs * steps per epoch`` from ``fit``), decides the plan,
and from then on assigns the optimizer's LR before every batch (with ``steps_per_execution=k``,
where ``fit`` calls the batch callbacks once per ``k`` batches, before every ``k``: the schedule
counts every batch, :class:`~lrkit.integrations.keras.callback.BatchSpan`). The guard reads each batch's own
loss from the model's loss tracker (the difference of its running sums, as
:class:`lrkit.keras.LRDoctorCallback` does); on ``nan``/``diverging`` it writes the last good
weights and optimizer variables back (the LR and the step clock go on) and lowers the LR; each
epoch's ``val_loss`` feeds the plateau rule. Every intervention is logged to ``lrkit.autopilot``
and kept in :attr:`AutopilotCallback.events`. Another callback that sets the LR too (``ReduceLROnPlateau``,
``LearningRateScheduler``) is overridden before the next batch, and the log says so once.

**Checkpoints.** Keras saves weights and optimizer variables (``model.save``,
``keras.callbacks.BackupAndRestore``), not callbacks. Give ``state_path="autopilot.json"``: the
autopilot's state (plan, step, multiplier, plateau, doctor) is written there at the end of every
epoch, and a new ``fit`` whose callback finds the file resumes from it: no second finder run, the
same schedule, the same guard state. :meth:`AutopilotCallback.state_dict` gives the same dict.

Refused with the reason: an optimizer whose ``learning_rate`` is a ``LearningRateSchedule`` (a
schedule already drives it), a learning-rate-free or Schedule-Free optimizer, an unknown run length.
Tested with the torch backend and, for ``steps_per_execution`` and the guard's mid-epoch restore,
with JAX (where Keras writes the epoch's state back into the variables whenever a callback reads
``self.model``).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import keras
import numpy as np

from lrkit.autopilot.pilot import Autopilot, AutopilotEvent, check_storage
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.collapse import check_every_arg
from lrkit.doctor.guarded_watch import PendingValidation
from lrkit.integrations.keras._state import FrozenWeights, host_copies, restore_host_copies
from lrkit.integrations.keras.callback import BatchSpan, _scale_velocity
from lrkit.schedules.base import Schedule

__all__ = ["AutopilotCallback"]


class _State:
    """Host copies of the weights and optimizer variables; the LR and the iteration clock go on."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.frozen = FrozenWeights()

    def snapshot(self) -> tuple[list[Any], list[np.ndarray]]:
        return host_copies(self.model, self.frozen)

    def restore(self, state: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
        restore_host_copies(self.model, state)


def _loss_tracker(model: Any) -> tuple[Any, Any, Any]:
    tracker = next((m for m in model.metrics if m.name == "loss"), None)
    if tracker is None:
        raise AutopilotError(f"AutopilotCallback: the model has no 'loss' metric (its metrics are "
                             f"{[m.name for m in model.metrics]}); compile it with a loss before fit()")
    total = next((v for v in tracker.variables if v.path.endswith("total")), None)
    count = next((v for v in tracker.variables if v.path.endswith("count")), None)
    if total is None or count is None:
        raise AutopilotError("AutopilotCallback: the model's loss tracker has no total/count variables; cannot "
                             "recover per-batch losses")
    return tracker, total, count


class AutopilotCallback(keras.callbacks.Callback):
    """Train with ``model.fit`` and no learning rate given (see the module docstring).

    Args:
        x, y, dataset, batch_size, val_data: the finder's data, as for :func:`lrkit.keras.find_lr`.
        train_steps: optimizer steps of the whole run (default: ``epochs * steps`` of ``fit``).
        shape: your own schedule shape (its scale is ignored: the autopilot sets it).
        peak_lr: fix the peak LR yourself (the finder still runs: the guard falls back to its answer).
        guard, plateau, restart_on_overfit: see :class:`lrkit.autopilot.Autopilot` (the last: restart a
            run that overfits early -- its epochs' ``val_loss`` -- from its start at a lower LR, once;
            an ``EarlyStopping`` callback counts the restarted run's first epochs as epochs without
            improvement: give it ``restore_best_weights=True``, or pass ``restart_on_overfit=False``).
        state_path: a JSON file to save the autopilot's state to after every epoch, and to resume
            from when it exists.
        logger: where the messages go (default ``lrkit.autopilot``).
        seed: seed of the finder's own randomness.
        check_outputs_every: before the first step, every this many steps and after a rollback,
            the spread of the model's outputs over up to 256 inputs (the validation data's first,
            else the training data's) is measured in inference mode (0 = never): a network whose
            outputs stopped depending on its inputs is rolled back (:mod:`lrkit.doctor.signs.dead`).
        storage, storage_dir: where the guard keeps its snapshots, ``"memory"`` or ``"disk"`` (a
            model whose copies do not fit in memory; :class:`lrkit.autopilot.Autopilot`). They
            live as long as the callback, across ``fit()`` calls (a run trained in several calls
            can still be rolled back into an earlier one): :meth:`close` deletes them (so does
            garbage collection, or the end of the process).
    """

    def __init__(self, x: Any = None, y: Any = None, *, dataset: Any = None, batch_size: int | None = None,
                 val_data: Any = None, train_steps: int | None = None, shape: Schedule | None = None,
                 peak_lr: float | None = None, guard: bool = True, plateau: bool = True,
                 state_path: str | os.PathLike[str] | None = None, logger: logging.Logger | None = None,
                 seed: int = 0, check_outputs_every: int = 25, storage: str = "memory",
                 storage_dir: Any = None, restart_on_overfit: bool = True) -> None:
        super().__init__()
        check_every_arg("AutopilotCallback: check_outputs_every", check_outputs_every)
        check_storage(storage, storage_dir, "AutopilotCallback")
        self.storage, self.storage_dir = storage, storage_dir
        self.check_outputs_every = check_outputs_every
        if x is None and dataset is None:
            raise AutopilotError("AutopilotCallback: a Keras callback does not see fit()'s data; give the finder "
                                 "its data: AutopilotCallback(x, y, batch_size=...) or AutopilotCallback(dataset=...)")
        if train_steps is not None:
            resolve_train_steps(train_steps, where="AutopilotCallback")
        self._data = {"x": x, "y": y, "dataset": dataset, "batch_size": batch_size, "val_data": val_data}
        self.train_steps, self.shape, self.peak_lr = train_steps, shape, peak_lr
        self.use_guard, self.plateau, self.logger, self.seed = guard, plateau, logger, seed
        self.restart_on_overfit = restart_on_overfit
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.pilot: Autopilot | None = None
        self.finder: Any = None
        self._step = 0
        self._span = BatchSpan()  # batches per callback call: steps_per_execution
        self._prev = (0.0, 0.0)
        self._pending = PendingValidation(prefixes=("val_",), loss_names=("val_loss",))
        self._outputs: Any = None  # lrkit.integrations.keras.trainer.OutputsCheck
        self._assigned: float | None = None  # the LR set before the last batch
        self._overridden = False  # another callback set the LR (said once)

    @property
    def plan(self) -> AutopilotPlan | None:
        return self.pilot.plan if self.pilot is not None else None

    @property
    def events(self) -> list[AutopilotEvent]:
        return self.pilot.events if self.pilot is not None else []

    # ------------------------------------------------------------------ setting up
    def _steps(self) -> int:
        params = self.params or {}
        epochs, per_epoch = params.get("epochs"), params.get("steps")
        return resolve_train_steps(self.train_steps, epochs=epochs, steps_per_epoch=per_epoch,
                                   where="AutopilotCallback")

    def on_train_begin(self, logs: dict | None = None) -> None:
        opt = self.model.optimizer
        family = check_optimizer(opt, where="AutopilotCallback")
        if not isinstance(opt.learning_rate, keras.Variable):
            held = getattr(opt, "_learning_rate", None)
            raise AutopilotError(f"AutopilotCallback: the optimizer's learning_rate is a {type(held).__name__} (a "
                                 "schedule already drives it), and the autopilot sets the LR itself; compile with a "
                                 "float learning rate (any value), or pass the schedule's shape as "
                                 "AutopilotCallback(shape=...)")
        if self.pilot is None:
            saved = self._load()
            if saved is not None:
                self.pilot = Autopilot.from_state_dict(saved, logger=self.logger, storage=self.storage,
                                                       storage_dir=self.storage_dir)
                last = self.pilot.state_dict()["last_step"]
                self._step = 0 if last is None else int(last) + 1
            else:
                from lrkit.integrations.keras.trainer import find_lr_keras

                steps = self._steps()
                self.finder = find_lr_keras(self.model, train_steps=steps, progress=False, seed=self.seed,
                                            **self._data)
                plan = make_plan(self.finder, family=family, train_steps=steps, shape=self.shape,
                                 peak_lr=self.peak_lr)
                self.pilot = Autopilot(plan, guard=self.use_guard, plateau=self.plateau, logger=self.logger,
                                       storage=self.storage, storage_dir=self.storage_dir,
                                       restart_on_overfit=self.restart_on_overfit)
                self.pilot.logger.info("%s", plan.summary())
            self.pilot.attach(_State(self.model))
        _loss_tracker(self.model)
        if self.check_outputs_every and self._outputs is None:
            from lrkit.integrations.keras.trainer import OutputsCheck, first_inputs

            d = self._data
            val = d["val_data"]
            if isinstance(val, tuple):  # validation arrays
                arrays, batches = val, None
            elif val is not None:  # validation batches
                arrays, batches = None, val
            else:  # the training data
                arrays, batches = d["x"], (d["dataset"] if d["x"] is None else None)
            self._outputs = OutputsCheck(first_inputs(arrays, batches), self.check_outputs_every)

    def _load(self) -> dict | None:
        if self.state_path is None or not os.path.exists(self.state_path):
            return None
        with open(self.state_path, encoding="utf-8") as fh:
            return json.load(fh)

    # ------------------------------------------------------------------ every batch
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._prev = (0.0, 0.0)  # fit() resets the loss tracker at each epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._span.begin(batch)
        opt = self.model.optimizer
        if self._assigned is not None and not self._overridden:
            self._check_override(float(keras.ops.convert_to_numpy(opt.learning_rate)))
        opt.learning_rate = lr = self.pilot.lr(self._step)
        self._assigned = float(np.float32(lr))  # as the optimizer's float32 variable holds it
        if self._outputs is not None:
            self._outputs.before_step(self.model, self._step)  # the state this step starts from

    def _check_override(self, now: float) -> None:
        """Say once that something else set the LR since the last batch (``ReduceLROnPlateau``,
        ``LearningRateScheduler``, the user's own callback): the autopilot has just overridden it."""
        if math.isclose(now, self._assigned, rel_tol=1e-6, abs_tol=1e-30):
            return
        self._overridden = True
        self.pilot.logger.warning(
            "lrkit autopilot: at step %d the optimizer's LR was %.4g, not the %.4g the autopilot set before the last "
            "batch: another callback (ReduceLROnPlateau, LearningRateScheduler, ...) sets the LR too, and the "
            "autopilot overrides it before every batch. Remove it: the autopilot has its own plateau rule "
            "(plateau=True), or give it a shape (AutopilotCallback(shape=...))", self._step, now, self._assigned)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        tracker, total_v, count_v = _loss_tracker(self.model)
        total = float(keras.ops.convert_to_numpy(total_v))
        count = float(keras.ops.convert_to_numpy(count_v))
        dt, dc = total - self._prev[0], count - self._prev[1]
        self._prev = (total, count)
        if dc <= 0:
            return
        loss = dt / dc if math.isfinite(total) else math.nan  # the mean of the span's batches
        first, n = self._step, self._span.end(batch)
        step, self._step = first + n - 1, first + n  # observed at the span's last step
        val_loss, metrics = self._pending.take()
        if self._outputs is not None:
            metrics = self._outputs.merged(metrics)
        before = self.pilot.multiplier
        if self.pilot.observe(step, loss, lr=self.pilot.lr(first), val_loss=val_loss, metrics=metrics):
            if self._outputs is not None:
                self._outputs.restart()  # the restored state is read before its next step
            tracker.reset_state()  # a NaN would stay in the epoch's running mean
            self._prev = (0.0, 0.0)
            _scale_velocity(self.model.optimizer, self.pilot.multiplier / before)  # SGD's velocity holds the LR

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.pilot is not None:
            self.pilot.ended(self._step)  # said when fit stopped well short of the plan (data ran out, ...)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._pending.hold(logs, convert=keras.ops.convert_to_numpy)
        if self.state_path is not None and self.pilot is not None:
            tmp = self.state_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.state_dict(), fh)
            os.replace(tmp, self.state_path)

    def state_dict(self) -> dict[str, Any]:
        """The autopilot's state (plain JSON types), for :meth:`Autopilot.from_state_dict`."""
        return self.pilot.state_dict()

    def close(self) -> None:
        """The run is over: drop the guard's snapshots (``storage="disk"``: delete their files).
        A later ``fit()`` with this callback starts the guard afresh from the model it finds."""
        if self.pilot is not None:
            self.pilot.close()
