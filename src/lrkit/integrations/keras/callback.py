r"""The LR doctor (and guard) as a Keras 3 ``Callback``.

:class:`LRDoctorCallback` feeds a :class:`~lrkit.doctor.core.Doctor` one observation per
training batch, in ``on_train_batch_end``. Keras' ``logs["loss"]`` is the *running mean* of the
epoch, not the batch's loss, so the callback reads the model's loss tracker (the ``Mean`` metric
named ``"loss"``, whose ``total`` and ``count`` variables are sums weighted by the batch size) and
recovers the batch's own loss exactly:

.. math::

    \ell_k = \frac{\text{total}_k - \text{total}_{k-1}}{\text{count}_k - \text{count}_{k-1}}

The user's ``logs`` dict is never modified.

Each observation's ``lr`` is the LR the optimizer uses for that batch (read before it). The
validation results of an epoch (``val_loss`` and every ``val_*`` metric in ``on_epoch_end``'s logs)
go to the doctor with the next batch, so a validation loss or accuracy that swings without progress
is a ``fluctuating`` verdict (the last epoch's results have no next batch and are not judged).

With ``guard=True`` a :class:`~lrkit.doctor.guard.Guard` snapshots ``model.get_weights()`` and
every optimizer variable (moments, the iteration counter) as NumPy copies, and on ``nan`` /
``diverging`` writes them back and multiplies the LR by ``lr_factor`` (a first problem out of a
healthy run keeps it: ``forgive_first``, see :mod:`lrkit.doctor.guard`). What "the LR" is depends
on the optimizer's ``learning_rate``:

* **A float** (a ``keras.Variable``): the callback assigns :math:`m \cdot \text{base}`, where
  :math:`m` is the guard's multiplier. Before each batch it notices an LR set by someone else
  (e.g. ``keras.callbacks.LearningRateScheduler``) and takes it as the new base.
* **An lrkit export** (``lrkit.schedules.cosine(...).to_keras()``, plateau included): Keras
  refuses to assign an optimizer whose LR is a ``LearningRateSchedule``, so the callback scales
  the schedule instead, through its
  :meth:`~lrkit.integrations.keras.schedule.LRKitSchedule.set_multiplier`: the LR in force is
  :math:`m \cdot b \cdot \text{lr}(k)`, with :math:`b` the schedule's multiplier when training
  began (normally 1). A rollback does not rewind the optimizer's ``iterations`` (the schedule's
  clock, like the guard's: time goes on) nor the multiplier (the LR after a rollback is the
  lowered one) nor a plateau's state (fed by epoch-end metrics that really were observed);
  weights and the other optimizer variables go back.
* **Any other ``LearningRateSchedule``** (e.g. ``keras.optimizers.schedules.CosineDecay``) or a
  callable cannot be lowered: ``guard=True`` raises ``ValueError`` in ``on_train_begin`` naming
  lrkit's export as the fix (watching it, ``guard=False``, works).
* Keras' ``SGD`` and ``RMSprop`` keep a momentum *velocity* that holds the LR
  (:math:`v \leftarrow \mu v - \eta g`, :math:`w \leftarrow w + v`); a rollback that lowers the LR
  by :math:`\gamma` also scales the restored velocity by :math:`\gamma`, as if it had been built at
  the lowered LR (left as it was, the old LR's velocity would throw a run at the edge of
  stability off again).
* After a rollback the loss tracker is reset (``reset_state()``; a NaN would otherwise stay in
  the epoch's running mean forever), so that epoch's reported ``loss`` covers only the batches
  after the rollback. Other compiled metrics are left alone.
* Not restored: Keras' random seed generators (dropout), and the data position (the epoch goes
  on). With JAX, where ``fit`` keeps the training state outside the variables during an epoch,
  Keras writes it back whenever a callback reads ``self.model`` and reads the variables again
  before the next batch, so a mid-epoch restore holds there too (tested on both backends).

**Resume after a crash** (``storage="disk"``, a ``run_id``, ``resume=True``). The snapshots and a
manifest (LR multiplier, interventions, the doctor's state) are written crash-safely under
``storage_dir``; a process killed with ``kill -9`` and started again finds them in
``on_train_begin``: the weights and every optimizer variable (the iteration counter included, so
an lrkit schedule's clock comes back too) are restored from the newest good snapshot, the
multiplier and the doctor's state from the manifest, and ``fit`` starts at the epoch that holds the
snapshot (through the model's initial epoch, as ``keras.callbacks.BackupAndRestore`` does), that
epoch's batches from the first. A run that finishes removes its files.

Example::

    model.fit(x, y, callbacks=[LRDoctorCallback(guard=True, snapshot_every=50)])

    # crash-safe: run the same script again after a kill and it goes on where it was
    cb = LRDoctorCallback(guard=True, storage="disk", storage_dir="ckpt", run_id="exp1", resume=True)
    model.fit(x, y, epochs=20, callbacks=[cb])

    # a scheduled run: warmup then cosine, guarded (the guard scales lrkit's export)
    lr = lrkit.schedules.warmup(lrkit.schedules.cosine(0.1, 900), 100).to_keras()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    model.fit(x, y, callbacks=[LRDoctorCallback(guard=True)])
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Callable

import keras
import numpy as np

from lrkit.collapse import check_every_arg
from lrkit.doctor.core import Doctor
from lrkit.doctor.guarded_watch import GuardedWatch, PendingValidation
from lrkit.doctor.interventions import Intervention
from lrkit.integrations.keras._state import FrozenWeights, host_copies, restore_host_copies
from lrkit.integrations.keras.schedule import LRKitSchedule, _learning_rate_of

__all__ = ["LRDoctorCallback"]


class _State:
    def __init__(self, cb: "LRDoctorCallback") -> None:
        self.cb = cb
        self.resuming = False  # a resume from disk rewinds the schedule's clock too
        self.frozen = FrozenWeights()

    def snapshot(self) -> tuple[list[Any], list[np.ndarray]]:
        return host_copies(self.cb.model, self.frozen)

    def restore(self, state: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
        # the LR is the callback's to set; under an lrkit schedule its clock goes on, as the guard's (a
        # resume from disk rewinds it)
        scheduled = self.cb._schedule is not None
        restore_host_copies(self.cb.model, state, keep_iteration=scheduled and not self.resuming)


class BatchSpan:
    """How many batches one pair of batch callbacks covers.

    With ``compile(steps_per_execution=k)`` (the JAX and TensorFlow backends) ``fit`` runs ``k``
    batches per call of its train function and calls ``on_train_batch_begin(first)`` and
    ``on_train_batch_end(last)`` once around them: a callback that counted its calls as steps ran
    ``k`` times slow (an autopilot schedule planned for 352 steps was at step 88 of it when the run
    ended, still near its peak). :meth:`end` returns the number of batches since the last
    :meth:`begin` (1 where ``fit`` passes the same batch to both); the loss read then is their mean.

    Example:
        >>> span = BatchSpan()
        >>> span.begin(0); span.end(3), span.end(5)
        (4, 1)
    """

    def __init__(self) -> None:
        self._first: int | None = None

    def begin(self, batch: int) -> None:
        self._first = int(batch)

    def end(self, batch: int) -> int:
        first, self._first = self._first, None
        return int(batch) - first + 1 if first is not None and int(batch) >= first else 1


def _scale_velocity(optimizer: Any, factor: float) -> None:
    r"""Scale the restored velocity of Keras' ``SGD`` and ``RMSprop`` momentum by the LR cut.

    Their velocity holds the LR (:math:`v \leftarrow \mu v - \eta g`, :math:`w \leftarrow w + v`),
    unlike PyTorch's and optax's, which hold gradients and meet the LR at the update. A snapshot's
    velocity was built at the old LR: left as it is, it would go on moving the weights by
    :math:`v/(1-\mu)` -- the old LR's steps -- while the gradient pulls back at a tenth of the
    strength, and a run at the edge of stability is thrown off again (seen with ``SGD(momentum=0.9)``).
    Scaled by the cut, the velocity is the one the lowered LR would have built.
    """
    if factor == 1.0 or not isinstance(optimizer, (keras.optimizers.SGD, keras.optimizers.RMSprop)):
        return
    if not getattr(optimizer, "momentum", 0.0):
        return
    for v in optimizer.variables:
        if v.path.endswith("_momentum"):
            v.assign(v * factor)


class LRDoctorCallback(GuardedWatch, keras.callbacks.Callback):
    """Diagnose (and with ``guard=True`` protect) ``model.fit``; see the module docstring.

    Args:
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``False``: watch only).
        doctor: the :class:`~lrkit.doctor.core.Doctor` (default ``Doctor()``).
        snapshot_every, lr_factor, forgive_first, max_retries, act_on, storage, storage_dir, on_intervention,
            logger, run_id, resume, sync_writes: as in :class:`~lrkit.doctor.guard.Guard` (only with
            ``guard=True``); with ``storage="disk"``, a ``run_id`` and ``resume=True`` a process
            killed mid-``fit`` and started again resumes (see the module docstring).
        on_converged, on_overfitting: ``"stop"`` (``model.stop_training``), ``"lower_lr"``
            (multiply the LR by ``plateau_factor``, default 0.1) or ``None`` (default: only
            report) when the doctor notes ``converged`` (the validation loss stopped improving,
            as ``EarlyStopping``; ``Doctor(converge_patience=..., converge_min_delta=...)``) or
            ``overfitting``; see :mod:`lrkit.doctor.watch`.
        check_outputs_on: inputs (arrays, e.g. ``x_val``; up to 256 rows are used) on which the
            spread of the model's outputs is read in inference mode before the first step, every
            ``check_outputs_every`` steps and after a rollback: a network whose outputs stopped
            depending on its inputs is ``diverging`` (:mod:`lrkit.doctor.signs.dead`), and the
            guard rolls it back. ``None`` (default): not read (a callback does not see ``fit``'s
            batches).
        check_outputs_every: see ``check_outputs_on`` (0 = never). At the same steps the callback
            reads how far a sample of the trainable weights moved since the start (the metric
            ``weight_change``, inputs or not): a flat run whose weights moved far is not advised to
            raise its LR (:mod:`lrkit.doctor.signs.flat`).

    Attributes:
        diagnosis (the latest verdict), detections (each problem once, with its step), worst (the
        most severe detection), interventions, lr_multiplier, history (one ``(step, loss, lr)``
        per batch). Each detection is logged once on ``logger`` (default ``lrkit.doctor``), and
        :meth:`summary` is logged when training ends.
    """

    def __init__(
        self,
        guard: bool = False,
        *,
        doctor: Doctor | None = None,
        snapshot_every: int = 50,
        lr_factor: float = 0.1,
        forgive_first: bool = True,
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        storage: str = "memory",
        storage_dir: Any = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
        on_converged: str | None = None,
        on_overfitting: str | None = None,
        plateau_factor: float = 0.1,
        run_id: str | None = None,
        resume: bool = False,
        sync_writes: bool = False,
        check_outputs_on: Any = None,
        check_outputs_every: int = 25,
    ) -> None:
        super().__init__()
        check_every_arg("LRDoctorCallback: check_outputs_every", check_outputs_every)
        from lrkit.integrations.keras.trainer import OutputsCheck, first_inputs

        self._outputs = OutputsCheck(None if check_outputs_on is None else first_inputs(check_outputs_on),
                                     check_outputs_every, weights=True)
        self._keras_state = _State(self)
        self._set_initial_epoch = False
        self._init_watch("LRDoctorCallback", self._keras_state, guard=guard, doctor=doctor, logger=logger,
                         on_converged=on_converged, on_overfitting=on_overfitting, plateau_factor=plateau_factor,
                         snapshot_every=snapshot_every, lr_factor=lr_factor, forgive_first=forgive_first,
                         max_retries=max_retries, act_on=act_on,
                         storage=storage, storage_dir=storage_dir, on_intervention=on_intervention,
                         run_id=run_id, resume=resume, sync_writes=sync_writes)
        self.history: list[tuple[int, float, float]] = []
        self._step = 0
        self._span = BatchSpan()
        self._tracker: Any = None
        self._prev = (0.0, 0.0)
        self._base_lr: float | None = None
        self._last_set: float | None = None
        self._schedule: LRKitSchedule | None = None  # the guarded lrkit export, if any
        self._rate: Any = None  # the optimizer's LR object the base was taken from
        self._lr_used = math.nan
        self._pending_val = PendingValidation(prefixes=("val_",), loss_names=("val_loss",))

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
        if self.guard is not None:
            rate = _learning_rate_of(self.model.optimizer)
            self._schedule = rate if isinstance(rate, LRKitSchedule) else None
            if self._schedule is not None:
                cur = self._schedule.multiplier  # the base of the schedule's multiplier
            elif isinstance(rate, keras.Variable):
                cur = self._current_lr()
            else:
                kind = ("a LearningRateSchedule" if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
                        else "a callable")
                raise ValueError(
                    f"LRDoctorCallback(guard=True): the optimizer's learning_rate is {kind} "
                    f"({type(rate).__name__}), which Keras does not let anyone assign, so the guard cannot lower "
                    "it; export the schedule from lrkit instead, e.g. "
                    "lrkit.schedules.cosine(base_lr, total_steps).to_keras() or "
                    "lrkit.integrations.keras.schedule.to_keras(schedule) (the guard scales it), pass a float "
                    "learning_rate, or use guard=False to only watch"
                )
            # a new base, unless this is another fit() of the same run whose LR still holds what
            # this callback set (else the multiplier would be applied twice)
            if rate is not self._rate or self._last_set is None or not math.isclose(
                    cur, self._last_set, rel_tol=1e-6, abs_tol=0.0):
                self._base_lr = cur
            self._rate = rate
            self._last_set = cur
            self._keras_state.resuming = True
            try:
                self.guard.start()
            finally:
                self._keras_state.resuming = False
            if self.guard.resumed_from is not None:
                self._resumed(self.guard.resumed_from)
        if self.doctor.config.get("chance_loss") is None and not self.doctor.chance_refuted:
            self.doctor.set_chance_loss(_chance_loss(self.model))  # a classifier's chance level, from compile()
        self._loss_vars()

    def _resumed(self, step: int) -> None:
        """A run found on disk was restored at ``step``: count on from there, and start ``fit`` at
        the epoch that holds it (as ``keras.callbacks.BackupAndRestore`` does, through the model's
        initial epoch), that epoch's batches from its first."""
        self._step = step
        steps = (self.params or {}).get("steps")
        if steps:
            epoch = step // int(steps)
            if epoch > (getattr(self.model, "_initial_epoch", None) or 0):
                self.model._initial_epoch = epoch
                self._set_initial_epoch = True
            self._watch_logger().info("lrkit guard: fit() continues at epoch %d (the snapshot of step %d)",
                                      epoch, step)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._prev = (0.0, 0.0)  # fit() resets the trackers at each epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # validation results (``val_loss``, ``val_accuracy``, ...) go to the doctor with the next
        # training step: a swinging validation metric is the ``fluctuating`` verdict
        self._pending_val.hold(logs, convert=keras.ops.convert_to_numpy)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._span.begin(batch)
        if self.guard is not None and self._schedule is not None:
            sched = self._schedule
            if sched.multiplier != self._last_set:
                self._base_lr = sched.multiplier  # someone else set it: a new base
            want = self._base_lr * self.guard.lr_multiplier
            if sched.multiplier != want:
                sched.set_multiplier(want)
            self._last_set = want
        elif self.guard is not None:
            cur = self._current_lr()
            if self._last_set is None or not math.isclose(cur, self._last_set, rel_tol=1e-6, abs_tol=0.0):
                self._base_lr = cur  # someone else (an LR scheduler callback) set it: a new base
            want = self._base_lr * self.guard.lr_multiplier
            if not math.isclose(cur, want, rel_tol=1e-7, abs_tol=0.0):
                self.model.optimizer.learning_rate = want
            self._last_set = self._current_lr()
        self._lr_used = self._current_lr()  # before the step: a schedule moves with iterations
        if self.guard is not None:  # a sudden raise: a snapshot of the state before it
            self.guard.before_step(self._lr_used)
        self._outputs.before_step(self.model, self._step)  # the state this step starts from

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        total_v, count_v = self._loss_vars()
        total = float(keras.ops.convert_to_numpy(total_v))
        count = float(keras.ops.convert_to_numpy(count_v))
        dt, dc = total - self._prev[0], count - self._prev[1]
        self._prev = (total, count)
        if dc <= 0:
            return  # no new batch in the tracker
        loss = dt / dc if math.isfinite(total) else math.nan  # the mean of the span's batches
        lr = self._lr_used
        n = self._span.end(batch)
        step = self._step + n - 1  # the span's last step
        self._step += n
        self.history.append((step, loss, lr))
        if step == 0 and self.doctor.untrained_loss(loss):  # the untrained model's loss, measured
            self._watch_logger().info(
                "lrkit doctor: the untrained model's loss (%.4g) is far above chance level: chance is no reference "
                "for this run (unscaled inputs?), and a loss falling to it is not read as a collapse", loss)
        val_loss, metrics = self._pending_val.take()
        metrics = self._outputs.merged(metrics)
        # each new detection is logged once (lrkit.doctor); a rollback by the guard (lrkit.guard)
        rec = self._watch_observe(step, loss, lr=lr, val_loss=val_loss, metrics=metrics)
        if rec is not None:
            self._outputs.restart()  # the restored state is read before its next step
            self._tracker.reset_state()  # a NaN would stay in the epoch's running mean
            self._prev = (0.0, 0.0)
            _scale_velocity(self.model.optimizer, rec.new_multiplier / rec.old_multiplier)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._watch_speak_summary()  # the worst problem seen, even if the run recovered
        # drop the snapshots (and their files with storage="disk"); the multiplier and records
        # stay, and a later fit() starts from a fresh snapshot. An exception skips this hook: use
        # ``with LRDoctorCallback(...) as cb:`` (or cb.close()) to clean up on every exit path.
        if self.guard is not None:
            self.guard.close()
        if self._set_initial_epoch:  # the resumed fit is over: the next fit() starts where it is told
            self.model._initial_epoch = None
            self._set_initial_epoch = False

    # ------------------------------------------------------------------ on_converged / on_overfitting
    def _watch_echo(self, level: int, text: str) -> bool:
        """A detection on Keras' console, above the progress bar (as Keras prints its own lines),
        when ``fit`` shows one; otherwise Python logging says it."""
        if not (getattr(self, "params", None) or {}).get("verbose", 1) or not keras.config.is_interactive_logging_enabled():
            return False
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return True

    def _watch_stop(self) -> bool:
        self.model.stop_training = True
        return True

    def _watch_lower_lr(self, factor: float) -> bool:
        if self.guard is not None and self._base_lr is not None:
            self._base_lr *= factor  # applied with the guard's multiplier from the next batch
            return True
        rate = _learning_rate_of(self.model.optimizer)
        if isinstance(rate, LRKitSchedule):
            rate.set_multiplier(rate.multiplier * factor)
            return True
        if isinstance(rate, keras.Variable):
            self.model.optimizer.learning_rate = self._current_lr() * factor
            return True
        return False  # a Keras LearningRateSchedule cannot be assigned


_CROSS_ENTROPY = {"sparse_categorical_crossentropy": "categorical", "categorical_crossentropy": "categorical",
                  "binary_crossentropy": "binary"}


def _chance_loss(model: Any) -> float | None:
    """``ln K`` for a model compiled with a cross-entropy loss over ``K`` outputs (``ln 2`` for a
    binary cross-entropy on one output), else ``None`` (:mod:`lrkit.doctor.signs.chance`). Only an
    unweighted single loss whose logits or probabilities are the model's only output counts."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else getattr(loss, "name", None)
    kind = _CROSS_ENTROPY.get(name) if isinstance(name, str) else None
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if kind is None or not isinstance(shape, tuple) or not shape or not isinstance(shape[-1], int):
        return None
    k = shape[-1]
    if kind == "binary":
        return math.log(2.0) if k == 1 else None
    return math.log(k) if k >= 2 else None
