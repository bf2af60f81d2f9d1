r"""The LR doctor (and guard) as a Lightning ``Callback``.

:class:`LRDoctorCallback` feeds a :class:`~lrkit.doctor.core.Doctor` from ``on_train_batch_end``
(the loss of ``outputs``), with the LR of the first param group of ``trainer.optimizers[0]`` and
the global gradient norm measured in ``on_before_optimizer_step`` (after AMP unscaling; under
``precision="16-mixed"`` a step whose gradients overflowed, which the scaler skips, has no norm:
:mod:`lrkit.integrations.torch.amp`). It logs
``lrkit/verdict_severity`` (0 healthy, 1 flat, 2 fluctuating, 3 diverging, 4 nan; see
:data:`lrkit.doctor.SEVERITY`) and, with the guard, ``lrkit/lr_multiplier``, through
``pl_module.log``. The results of each validation run (``val_loss`` or ``val/loss``, and every
``val_*``/``val/*`` metric in ``trainer.callback_metrics``, read in ``on_validation_end``) go to the
doctor with the next training step, so a validation metric that swings without progress is a
``fluctuating`` verdict. With ``accumulate_grad_batches=k`` the doctor reads one step per
optimizer step, its loss the mean over its k micro-batches (the ``outputs`` of a batch hold only
its own loss, divided by k).

With ``guard=True`` a :class:`~lrkit.doctor.guard.Guard` snapshots the LightningModule (parameters,
buffers, gradients, modes), every optimizer's state and the RNGs, and on ``nan``/``diverging``
restores them in place and lowers the LR by ``lr_factor`` (a first problem out of a healthy run keeps
it: ``forgive_first``, see :mod:`lrkit.doctor.guard`).

**How the LR is lowered under Lightning's schedulers.** Lightning steps ``interval="step"``
schedulers *before* ``on_train_batch_end``, so the callback never rewrites param groups between
hooks. It registers a step pre-hook and post-hook on each optimizer
(``Optimizer.register_step_pre_hook``): the pre-hook multiplies every group's LR by the guard's
multiplier :math:`m` right before the update and the post-hook puts the scheduler's value back
right after it. Schedulers (chainable or not) therefore only ever see their own values, and the
update uses :math:`m\cdot\text{lr}`. The hooks are removed in ``on_train_end``.

A rollback rewinds the weights and optimizer state, not the clock: ``global_step``, schedulers
and the data loader go on.

**A bad batch skipped** (``skip_spikes``, on by default with the guard): the loss Lightning hands
to ``on_before_backward`` (unscaled, summed over accumulated micro-batches) is read before the
update, and a spike far above the run's level with the LR steady (:mod:`lrkit.doctor.spikes`) has
its gradients dropped in ``on_before_optimizer_step`` (after Lightning's AMP unscaling), so the
optimizer step changes nothing; the doctor does not see that batch. With several processes the
decision is taken on the loss averaged over them, so every rank skips the same steps.

**Several processes** (DDP): the loss, gradient norm and validation loss the doctor reads are
averaged over the ranks, and the snapshot period is taken on the ranks' mean timings, so every
rank reaches the same verdicts and the guard rolls back on all of them at the same step, to the
same snapshot, with the same LR: the replicas stay identical.

**Checkpoints.** The callback's state -- the guard's LR multiplier (applied by the hooks, so no
optimizer or scheduler state holds it), its interventions, the doctor's state and the step count --
is saved in every Lightning checkpoint (``state_dict``), and ``trainer.fit(..., ckpt_path=...)``
restores it: a run killed and resumed from its last checkpoint goes on at the lowered LR with its
history. The checkpoint's weights become the guard's first snapshot (snapshots themselves are not
in the checkpoint).

Example (see the tests for a complete run)::

    trainer = lightning.Trainer(max_steps=1000, callbacks=[LRDoctorCallback(guard=True)])
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from lrkit.collapse import check_every_arg
from lrkit.doctor.core import SEVERITY, Doctor
from lrkit.doctor.guarded_watch import GuardedWatch, PendingValidation, watch_skip_spikes
from lrkit.doctor.interventions import Intervention
from lrkit.integrations.lightning.skips import StepLossSum, drop_step, step_grad_norm
from lrkit.integrations.torch.dist import rank_agree, rank_means
from lrkit.integrations.torch.doctor import grad_norm
from lrkit.integrations.torch.groups import check_guardable, doctor_lr, set_group_lr
from lrkit.integrations.torch.outputs import SpreadProbe
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot

__all__ = ["LRDoctorCallback"]


class _State(RecyclingState):
    def __init__(self, cb: "LRDoctorCallback") -> None:
        self.cb = cb

    def snapshot(self) -> TorchSnapshot:
        return self._take(self.cb._module, self.cb._optimizers)

    def restore(self, state: TorchSnapshot) -> None:
        opts = self.cb._optimizers
        lrs = [[float(g["lr"]) for g in o.param_groups] for o in opts]
        state.restore(self.cb._module, opts)
        for o, saved in zip(opts, lrs):  # keep the scheduler's current LRs (the clock is not rewound)
            for g, lr in zip(o.param_groups, saved):
                set_group_lr(g, lr)


def probed_module(pl_module: pl.LightningModule) -> torch.nn.Module:
    """Where the training forward is seen: the LightningModule when it defines ``forward`` (its
    ``training_step`` may call ``self(...)``), else its only child module (the network it wraps);
    else the LightningModule (a ``training_step`` that calls several children is not measured)."""
    if type(pl_module).forward is not pl.LightningModule.forward:
        return pl_module
    children = list(pl_module.children())
    return children[0] if len(children) == 1 else pl_module


class LRDoctorCallback(GuardedWatch, pl.Callback):
    """Diagnose (and with ``guard=True`` protect) a Lightning run; see the module docstring.

    Args:
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``False``: watch only).
        doctor: the :class:`~lrkit.doctor.core.Doctor` (default ``Doctor()``).
        snapshot_every, lr_factor, forgive_first, max_retries, act_on, storage, storage_dir, on_intervention,
            logger, skip_spikes: as in :class:`~lrkit.doctor.guard.Guard` (only with ``guard=True``;
            ``skip_spikes``: see the module docstring; ``None``, the default, is on with the guard).
        log_verdict: log ``lrkit/verdict_severity`` (and ``lrkit/lr_multiplier``) with
            ``pl_module.log`` every step (default ``True``).
        track_grad_norm: measure the global gradient norm before each optimizer step.
        on_converged, on_overfitting: ``"stop"`` (``trainer.should_stop``), ``"lower_lr"``
            (multiply every param group's LR, and its schedulers' base LRs, by
            ``plateau_factor``, default 0.1) or ``None`` (default: only report) when the doctor
            notes ``converged`` (the validation loss stopped improving, as ``EarlyStopping``) or
            ``overfitting``; see :mod:`lrkit.doctor.watch`.
        check_outputs_every: on the first step and then every this many steps, the spread of the
            module's outputs over the batch is read on the training forward (a hook on the
            LightningModule when it defines ``forward``, else on its only child module, e.g. the
            ``self.net`` that ``training_step`` calls; 0 = never): a network whose outputs stopped
            depending on its inputs is ``diverging`` (:mod:`lrkit.doctor.signs.dead`), and the
            guard rolls it back.

    Attributes:
        diagnosis: the latest :class:`~lrkit.doctor.core.Diagnosis`.
        detections: each problem seen, once, with its step (logged once on ``logger``, default
            ``lrkit.doctor``, by the global rank zero); worst: the most severe of them (the
            summary logged when training ends names it, even if the run recovered).
        interventions: the guard's :class:`~lrkit.doctor.guard.Intervention` records.
        lr_multiplier: the factor applied to the LRs (1.0 without guard).
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
        log_verdict: bool = True,
        track_grad_norm: bool = True,
        on_converged: str | None = None,
        on_overfitting: str | None = None,
        plateau_factor: float = 0.1,
        skip_spikes: bool | None = None,
        check_outputs_every: int = 25,
    ) -> None:
        super().__init__()
        check_every_arg("LRDoctorCallback: check_outputs_every", check_outputs_every)
        self.check_outputs_every = check_outputs_every
        self._outputs: SpreadProbe | None = None
        skip_spikes = watch_skip_spikes("LRDoctorCallback", skip_spikes, guard)
        self._trainer: Any = None
        self._init_watch("LRDoctorCallback", _State(self), guard=guard, doctor=doctor, logger=logger,
                         on_converged=on_converged, on_overfitting=on_overfitting, plateau_factor=plateau_factor,
                         snapshot_every=snapshot_every, lr_factor=lr_factor, forgive_first=forgive_first,
                         max_retries=max_retries, act_on=act_on,
                         storage=storage, storage_dir=storage_dir, on_intervention=on_intervention,
                         skip_spikes=skip_spikes, agree=rank_agree)
        self.log_verdict = bool(log_verdict)
        self.track_grad_norm = bool(track_grad_norm)
        self._module: torch.nn.Module | None = None
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[Any] = []
        self._saved: dict[int, list[Any]] = {}
        self._gn: float | None = None
        self._step = 0
        self._last_lr: float | None = None
        self._pending_val = PendingValidation(prefixes=("val_", "val/"), loss_names=("val_loss", "val/loss"))
        # the losses handed to backward since the last optimizer step (skip_spikes, accumulation)
        self._step_loss = StepLossSum()
        self._step_mean: float | None = None  # accumulating: the optimizer step's loss, for the doctor
        self._last_gs = 0
        self._skipping = False
        self._no_loss = 0  # batches whose training_step returned no loss (nothing to observe)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: the step count, the doctor's and the guard's state."""
        return {**self._checkpoint_state(), "step": self._step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored by ``trainer.fit(..., ckpt_path=...)`` before training starts."""
        if not state_dict:
            return
        self._step = int(state_dict.get("step", 0))
        if self.guard is not None:
            self.guard.close()  # a callback reused from an earlier fit: its snapshots are stale
        self._load_checkpoint_state(state_dict)

    # ------------------------------------------------------------------ optimizer hooks
    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        base = [None if g["lr"] is None else float(g["lr"]) for g in opt.param_groups]
        self._saved[id(opt)] = base
        if opt is self._optimizers[0]:
            self._last_lr = None if base[0] is None else float(base[0]) * self.lr_multiplier
            if self.guard is not None:  # a sudden raise: a snapshot of the state before it
                self.guard.before_step(self._last_lr)
        m = self.lr_multiplier
        if m != 1.0:
            for g, b in zip(opt.param_groups, base):
                set_group_lr(g, b * m)

    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        base = self._saved.pop(id(opt), None)
        if base is not None:
            for g, b in zip(opt.param_groups, base):
                set_group_lr(g, b)

    def _doctor_lr(self) -> float | None:
        lr = doctor_lr(self._optimizers[0].param_groups)
        return None if lr is None else lr * self.lr_multiplier

    # ------------------------------------------------------------------ on_converged / on_overfitting
    def _watch_echo(self, level: int, text: str) -> bool:
        """A detection on Lightning's own console logger (``lightning.pytorch``, which Lightning
        gives a handler), rank zero only as every watch message."""
        logging.getLogger("lightning.pytorch").log(level, "%s", text)
        return True

    def _watch_stop(self) -> bool:
        self._trainer.should_stop = True
        return True

    def _watch_lower_lr(self, factor: float) -> bool:
        from lrkit.integrations.torch.lower import scale_lrs

        configs = getattr(self._trainer, "lr_scheduler_configs", [])
        for opt in self._optimizers:
            scale_lrs(opt, [c.scheduler for c in configs if getattr(c.scheduler, "optimizer", None) is opt], factor)
        return True

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.watch_speaks = bool(trainer.is_global_zero)  # Lightning's rank-zero logging
        self._trainer = trainer
        self._module = pl_module
        self._last_gs = trainer.global_step
        self._no_loss = 0
        self._optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        if not self._optimizers:
            raise ValueError("LRDoctorCallback: the trainer has no optimizer (configure_optimizers returned none)")
        if self.guard is not None:
            for opt in self._optimizers:
                check_guardable(opt, "LRDoctorCallback")
        for opt in self._optimizers:
            self._handles.append(opt.register_step_pre_hook(self._pre))
            self._handles.append(opt.register_step_post_hook(self._post))
        if self.check_outputs_every:
            self._outputs = SpreadProbe(probed_module(pl_module), self.check_outputs_every, weights=True)
            self._handles.append(self._outputs)  # removed with the optimizer hooks
        if self.guard is not None:
            self.guard.start()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._no_loss and not self._step and self.watch_speaks:
            self._watch_emit(logging.WARNING, (
                f"lrkit doctor: training_step returned no loss on any of its {self._no_loss} batches, so the doctor "
                "saw nothing of this run; return the loss from training_step (a tensor, or a dict with a 'loss' "
                "key; with manual optimization too, after your optimizer steps)"))
        self._watch_speak_summary()  # the worst problem seen, even if the run recovered
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.guard is not None:
            self.guard.close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        # an exception (GuardGaveUp included) ends training without on_train_end: release the
        # optimizer hooks and the guard's snapshot files here
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.guard is not None:
            self.guard.close()

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # after the epoch's validation metrics are aggregated into callback_metrics (as
        # ModelCheckpoint reads them); they go to the doctor with the next training step
        if trainer.sanity_checking:
            return
        self._pending_val.hold(trainer.callback_metrics)

    def _accumulating(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> bool:
        """Several micro-batches per optimizer step (``accumulate_grad_batches``): the doctor reads
        optimizer steps, with their mean loss."""
        return bool(pl_module.automatic_optimization) and int(trainer.accumulate_grad_batches) > 1

    def _sums_losses(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> bool:
        return (self.guard is not None and self.guard.skips) or self._accumulating(trainer, pl_module)

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: torch.Tensor) -> None:
        if self._sums_losses(trainer, pl_module):
            self._step_loss.add(trainer, loss)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        if self._sums_losses(trainer, pl_module) and self._optimizers and \
                getattr(optimizer, "optimizer", optimizer) is self._optimizers[0]:
            loss = self._step_loss.take(trainer, pl_module)
            if self._accumulating(trainer, pl_module):
                self._step_mean = loss  # outputs hold only the last micro-batch's loss, divided by their number
            lr = self._doctor_lr()
            if self.guard is not None and self.guard.skips and self.guard.skip(loss, lr=lr):
                self._skipping = True
                drop_step(trainer, self._optimizers[0])
                return
        if self.track_grad_norm:
            self._gn = grad_norm(list(pl_module.parameters()))

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._accumulating(trainer, pl_module):
            if trainer.global_step == self._last_gs:  # a micro-batch: no optimizer step yet
                return
            self._last_gs = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # training_step returned None: the step was skipped (or, manual, not returned)
            self._no_loss += 1
            return
        if self._step_mean is not None:
            loss, self._step_mean = self._step_mean, None
        if self._skipping:  # the guard held this update back (a loss spike): nothing to observe
            self._skipping = False
            if self._outputs is not None:
                self._outputs.take(self._step)
            self._step += 1
            self._gn = None
            return
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach().float().item())
        probed = self._outputs.take(self._step) if self._outputs is not None else {}
        lr = self._last_lr
        if lr is None:
            lr = self._doctor_lr()
        gn, self._gn = step_grad_norm(trainer, self._gn), None
        step = self._step
        self._step += 1
        if step == 0:  # the untrained model's loss: is a chance level you gave a reference?
            self.doctor.untrained_loss(float(loss))
        val_loss, metrics = self._pending_val.take()
        if probed:
            metrics = {**(metrics or {}), **probed}
        if trainer.world_size > 1:  # every rank reads the same numbers, so all take the same decisions
            loss, gn, val_loss = rank_means([loss, gn, val_loss], device=pl_module.device)
        # each new detection is logged once (lrkit.doctor, rank zero); a rollback by the guard
        rolled = self._watch_observe(step, loss, lr=lr, grad_norm=gn, val_loss=val_loss, metrics=metrics)
        if rolled is not None and self._outputs is not None:
            self._outputs.restart()  # the restored state is read on the next step
        if self.log_verdict:
            pl_module.log("lrkit/verdict_severity", float(SEVERITY[self.doctor.diagnosis.verdict]), on_step=True, on_epoch=False)
            if self.guard is not None:
                pl_module.log("lrkit/lr_multiplier", self.guard.lr_multiplier, on_step=True, on_epoch=False)
