r"""The LR autopilot as a Lightning ``Callback``: ``configure_optimizers`` needs no LR, no scheduler.

::

    class Net(lightning.LightningModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters())        # its LR is ignored

    trainer = lightning.Trainer(max_steps=3000, callbacks=[AutopilotCallback()])
    trainer.fit(Net(), train_loader, val_loader)

In ``on_train_start`` the callback runs the finder (at most 30% of the run) on the module's own
``training_step`` over the train loader (validation loader for the candidates when there is one),
then sets the LR of every optimizer step itself (``on_train_batch_start``: group :math:`g` gets
:math:`r_g\,\eta_t`, with :math:`r_g` the ratio of its LR to the first group's). The run length is
``train_steps`` or Lightning's ``trainer.estimated_stepping_batches``. During the finder,
``self.log`` calls of ``training_step`` are dropped (the finder's steps are not part of the run).

The guard watches every optimizer step (the loss of ``training_step``; with
``accumulate_grad_batches=k`` the mean over the step's k micro-batches): on ``nan``/``diverging``
the module, the optimizer state and the RNGs go back in place to the last good snapshot and the LR
is lowered; the ``val_loss`` (or ``val/loss``) of each validation feeds the plateau rule. Every
intervention is logged to ``lrkit.autopilot`` and kept in :attr:`AutopilotCallback.events`.

**A bad batch skipped** (``skip_spikes``, default on): the step's loss is read before its update
(:mod:`lrkit.integrations.lightning.skips`), and a spike far above the run's level with the LR steady
has its gradients dropped before the optimizer step; an event says so and the doctor never sees it.

**Several processes (DDP).** The finder trains through the strategy (``strategy.training_step``:
the DDP wrapper averages the gradients over the ranks), so it measures the batch the run trains
with, and takes its decisions on the ranks' mean losses: one plan on every rank. The guard reads
the loss, gradient norm and validation loss averaged over the ranks and takes the snapshot period
on their mean timings: every rank intervenes at the same step, and the replicas stay identical
(tested with ``ddp_spawn`` on two CPU processes).

**Checkpoints.** The callback's :meth:`~AutopilotCallback.state_dict` (plan, multiplier, plateau,
doctor) is saved in Lightning checkpoints; ``trainer.fit(..., ckpt_path=...)`` resumes the
autopilot with it: no second finder run, the same schedule, the same guard state.

Refused with the reason: a Lightning LR scheduler from ``configure_optimizers`` (the autopilot is
the scheduler), manual optimization, a learning-rate-free or Schedule-Free optimizer, an unknown
run length.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import lightning.pytorch as pl
import torch

from lrkit.autopilot.pilot import Autopilot, AutopilotEvent, check_storage
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.collapse import check_every_arg
from lrkit.doctor.guarded_watch import PendingValidation
from lrkit.integrations.lightning.callback import probed_module
from lrkit.integrations.lightning.skips import StepLossSum, drop_step, step_grad_norm
from lrkit.integrations.torch.autopilot import _group_ratios, check_no_scheduler
from lrkit.integrations.torch.dist import rank_agree, rank_means
from lrkit.integrations.torch.doctor import grad_norm
from lrkit.integrations.torch.groups import doctor_lr, set_group_lr
from lrkit.integrations.torch.outputs import SpreadProbe
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot
from lrkit.schedules.base import Schedule

__all__ = ["AutopilotCallback"]


class _State(RecyclingState):
    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer

    def snapshot(self) -> TorchSnapshot:
        return self._take(self.module, [self.optimizer])

    def restore(self, state: TorchSnapshot) -> None:
        state.restore(self.module, [self.optimizer])


def _loss_of(out: Any) -> torch.Tensor | None:
    if isinstance(out, Mapping):
        out = out.get("loss")
    return out if isinstance(out, torch.Tensor) else None


class _Quiet:
    """``self.log``/``self.log_dict`` of a LightningModule do nothing inside this block."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.log = lambda *a, **k: None  # type: ignore[method-assign]
        self.module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        del self.module.log
        del self.module.log_dict


class AutopilotCallback(pl.Callback):
    """Train a LightningModule with no LR given (see the module docstring).

    Args:
        train_steps: optimizer steps of the whole run (default: ``trainer.estimated_stepping_batches``).
        shape: your own schedule shape (its scale is ignored: the autopilot sets it).
        peak_lr: fix the peak LR yourself (the finder still runs: the guard falls back to its answer).
        guard, plateau, skip_spikes, restart_on_overfit: see :class:`lrkit.autopilot.Autopilot`.
        logger: where the messages go (default ``lrkit.autopilot``).
        seed: seed of the finder's own randomness.
        progress: show the finder's progress bar.
        check_outputs_every: on the first step and then every this many optimizer steps, the
            spread of the module's outputs over the batch is read on the training forward (a hook
            on the LightningModule when it defines ``forward``, else on its only child module, e.g.
            the ``self.net`` that ``training_step`` calls; 0 = never): a network whose outputs
            stopped depending on its inputs is rolled back (:mod:`lrkit.doctor.signs.dead`).
        storage, storage_dir: where the guard keeps its snapshots, ``"memory"`` or ``"disk"`` (a
            model whose copies do not fit in memory; :class:`lrkit.autopilot.Autopilot`); removed
            when the fit ends, or fails.

    Attributes:
        plan: the :class:`~lrkit.autopilot.AutopilotPlan` (after ``on_train_start``).
        events: every intervention, with its message.
        finder: the finder's result (``None`` after a resume).
    """

    def __init__(self, train_steps: int | None = None, *, shape: Schedule | None = None, peak_lr: float | None = None,
                 guard: bool = True, plateau: bool = True, logger: logging.Logger | None = None, seed: int = 0,
                 progress: bool = False, skip_spikes: bool = True, check_outputs_every: int = 25,
                 storage: str = "memory", storage_dir: Any = None, restart_on_overfit: bool = True) -> None:
        super().__init__()
        check_every_arg("AutopilotCallback: check_outputs_every", check_outputs_every)
        check_storage(storage, storage_dir, "AutopilotCallback")
        self.storage, self.storage_dir = storage, storage_dir
        self.check_outputs_every = check_outputs_every
        self._outputs: SpreadProbe | None = None
        if train_steps is not None:
            resolve_train_steps(train_steps, where="AutopilotCallback")
        self.train_steps = train_steps
        self.shape, self.peak_lr, self.guard, self.plateau = shape, peak_lr, guard, plateau
        self.skip_spikes, self.restart_on_overfit = skip_spikes, restart_on_overfit
        self.logger, self.seed, self.progress = logger, seed, progress
        self.pilot: Autopilot | None = None
        self.finder: Any = None
        self._resume: dict | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._ratios: list[float] = []
        self._last_gs = 0
        self._gn: float | None = None
        self._step_loss = StepLossSum()  # the step's loss before its update (skip_spikes, and what is observed)
        self._loss: float | None = None
        self._skipping = False  # the step in flight had its update left out
        self._pending = PendingValidation(prefixes=("val_", "val/"), loss_names=("val_loss", "val/loss"))

    @property
    def plan(self) -> AutopilotPlan | None:
        return self.pilot.plan if self.pilot is not None else None

    @property
    def events(self) -> list[AutopilotEvent]:
        return self.pilot.events if self.pilot is not None else []

    # ------------------------------------------------------------------ setting up
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.optim.Optimizer:
        if not pl_module.automatic_optimization:
            raise AutopilotError("AutopilotCallback: the module uses manual optimization; the callback sets the LR "
                                 "of Lightning's automatic optimizer steps. Use lrkit.torch.autopilot inside your "
                                 "training_step instead; or, if it steps several optimizers of one update (Muon for "
                                 "the weight matrices, AdamW for the rest), return lrkit.torch.combine(muon, adamw) "
                                 "from configure_optimizers and keep automatic optimization")
        if len(trainer.optimizers) != 1:
            raise AutopilotError(f"AutopilotCallback: configure_optimizers must return one optimizer, got "
                                 f"{len(trainer.optimizers)}")
        if trainer.lr_scheduler_configs:
            names = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            raise AutopilotError(f"AutopilotCallback: configure_optimizers also returned an LR scheduler ({names}), "
                                 "and the autopilot sets the LR itself; return only the optimizer, or pass your "
                                 "schedule's shape as AutopilotCallback(shape=...)")
        opt = getattr(trainer.optimizers[0], "optimizer", trainer.optimizers[0])
        check_optimizer(opt, where="AutopilotCallback")
        check_no_scheduler(opt, where="AutopilotCallback")
        return opt

    def _steps(self, trainer: pl.Trainer) -> int:
        if self.train_steps is not None:
            return int(self.train_steps)
        est = trainer.estimated_stepping_batches
        if est is None or not math.isfinite(float(est)) or est < 1:
            raise AutopilotError("AutopilotCallback: the run length is unknown (Trainer(max_steps=-1) with a train "
                                 "loader without len(), or with no max_epochs: a run bounded by max_time only): pass "
                                 "AutopilotCallback(train_steps=N) or Trainer(max_steps=N)")
        return int(est)

    def _find(self, trainer: pl.Trainer, pl_module: pl.LightningModule, opt: torch.optim.Optimizer, steps: int):
        from lrkit.integrations.torch.trainer import find_lr

        loader = trainer.train_dataloader
        vals = trainer.val_dataloaders
        val = vals[0] if isinstance(vals, (list, tuple)) and vals else vals

        # with several processes through the strategy (its DDP wrapper's backward averages the
        # gradients over the ranks), so that the finder measures the batch the run will train with
        step = trainer.strategy.training_step if trainer.world_size > 1 else pl_module.training_step

        def step_fn(model: Any, batch: Any) -> torch.Tensor:
            loss = _loss_of(step(batch, 0))
            if loss is None:
                raise AutopilotError("AutopilotCallback: training_step must return the loss (a tensor or "
                                     "{'loss': tensor}) for the finder")
            return loss

        clip = trainer.gradient_clip_val if trainer.gradient_clip_algorithm in (None, "norm") else None
        with _Quiet(pl_module):
            return find_lr(pl_module, opt, None, loader, val_loader=val, step_fn=step_fn, train_steps=steps,
                           accumulation_steps=int(trainer.accumulate_grad_batches),
                           grad_clip_norm=float(clip) if clip else None, progress=self.progress, seed=self.seed)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = self._check(trainer, pl_module)
        self._optimizer = opt
        self._ratios = _group_ratios(opt)
        if self.pilot is not None:  # a callback reused from an earlier fit: its snapshots are stale
            self.pilot.close()
        if self._resume is not None:
            self.pilot = Autopilot.from_state_dict(self._resume, logger=self.logger, storage=self.storage,
                                                   storage_dir=self.storage_dir)
            self._resume = None
        else:
            steps = self._steps(trainer)
            self.finder = self._find(trainer, pl_module, opt, steps)
            plan = make_plan(self.finder, family=check_optimizer(opt), train_steps=steps, shape=self.shape,
                             peak_lr=self.peak_lr)
            self.pilot = Autopilot(plan, guard=self.guard, plateau=self.plateau, logger=self.logger,
                                   skip_spikes=self.skip_spikes, storage=self.storage, storage_dir=self.storage_dir,
                                   restart_on_overfit=self.restart_on_overfit)
            self.pilot.logger.info("%s", plan.summary())
        self.pilot.attach(_State(pl_module, opt), agree=rank_agree)  # several processes: their mean timings
        self._release_outputs()
        if self.check_outputs_every:
            self._outputs = SpreadProbe(probed_module(pl_module), self.check_outputs_every)
        self._last_gs = trainer.global_step
        self._apply(trainer.global_step)

    def _apply(self, step: int) -> None:
        lr = self.pilot.lr(step)
        for g, r in zip(self._optimizer.param_groups, self._ratios):
            set_group_lr(g, lr * r)

    # ------------------------------------------------------------------ every step
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._apply(trainer.global_step)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.pilot is not None:
            self._step_loss.add(trainer, loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # the optimizer step's loss: the mean over its micro-batches (``outputs`` of
        # on_train_batch_end holds only the last one's, divided by accumulate_grad_batches)
        self._loss = self._step_loss.take(trainer, pl_module)
        if self.pilot.skips and self.pilot.skip(trainer.global_step, self._loss):
            self._skipping = True
            drop_step(trainer, self._optimizer)
            return
        self._gn = grad_norm(list(pl_module.parameters()))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending.hold(trainer.callback_metrics)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_gs:  # accumulating: no optimizer step yet
            return
        step = trainer.global_step - 1
        self._last_gs = trainer.global_step
        probed = self._outputs.take(step) if self._outputs is not None else {}
        if self._skipping:  # the update was left out (a loss spike): nothing trained, nothing to observe
            self._skipping = False
            return
        loss = _loss_of(outputs)
        if loss is None:
            return
        val_loss, metrics = self._pending.take()
        if probed:
            metrics = {**(metrics or {}), **probed}
        gn, self._gn = step_grad_norm(trainer, self._gn), None
        value, gn = self._step_value(loss), gn if gn else None
        self._loss = None
        if trainer.world_size > 1:  # every rank reads the same numbers, so all take the same decisions
            value, gn, val_loss = rank_means([value, gn, val_loss], device=pl_module.device)
        rolled = self.pilot.observe(step, value, lr=doctor_lr(self._optimizer.param_groups),
                                    grad_norm=gn, val_loss=val_loss, metrics=metrics)
        if rolled:
            self._apply(trainer.global_step)
            if self._outputs is not None:
                self._outputs.restart()

    def _step_value(self, loss: torch.Tensor) -> float:
        """The step's loss as the doctor reads it: the sum taken before the update (the mean of
        every micro-batch, unscaled), else the step's output."""
        return self._loss if self._loss is not None else float(loss.detach().float().item())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release_outputs()
        if self.pilot is not None:
            self.pilot.ended(int(trainer.global_step))  # said when the run stopped well short of its plan
            self.pilot.close()  # the snapshots (their files with storage="disk") go; events and plan stay

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release_outputs()
        if self.pilot is not None:
            self.pilot.close()

    def _release_outputs(self) -> None:
        if self._outputs is not None:
            self._outputs.close()
            self._outputs = None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"autopilot": self.pilot.state_dict()} if self.pilot is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume = dict(state_dict["autopilot"])
