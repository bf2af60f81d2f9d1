r"""The LR autopilot as a Hugging Face ``TrainerCallback``: ``Trainer(..., callbacks=[AutopilotCallback()])``.

No ``learning_rate`` to choose: whatever ``TrainingArguments.learning_rate`` says is ignored (only
the ratios between param groups are kept). In ``on_train_begin`` the callback runs the finder (at
most 30% of the run, ``state.max_steps``) on the ``Trainer``'s model and train dataloader (the
model computes its own loss: ``model(**batch).loss``) and, when the ``Trainer`` has an
``eval_dataset``, scores its candidate runs on the batches of ``trainer.get_eval_dataloader()``
(as ``lrkit.transformers.find_lr(trainer)`` does; :func:`owning_trainer`), decides the plan, and takes over the
``Trainer``'s ``LambdaLR``: its ``base_lrs`` become the group ratios :math:`r_g` and its lambda the
autopilot's LR, so the ``Trainer`` keeps stepping its own scheduler and logs the autopilot's
``learning_rate``.

**The guard** reads what the ``Trainer`` logs (``on_log``: ``loss``, ``grad_norm``) when the run
writes enough training logs to fill the doctor's window; with fewer -- the default
``logging_steps=500`` over a few thousand steps, or any run of under 500 steps -- it reads every
optimizer step's loss itself, from a forward hook on the model's output (the mean over the step's
micro-batches, and over the ranks under DDP; no gradient norm), and says so once in the log. On
``nan``/``diverging`` the model, the optimizer state, the AMP scaler and the RNGs go back in place
to the last good snapshot and the LR is lowered from the next step on. Each evaluation's
``eval_loss`` feeds the plateau rule. Every intervention is logged to ``lrkit.autopilot`` and kept
in :attr:`AutopilotCallback.events`. ``logging_nan_inf_filter`` must stay ``True`` (the default;
see :mod:`lrkit.transformers` ``LRDoctorCallback`` for why); a NaN then reaches the doctor through
``grad_norm``.

**A bad batch skipped** (``skip_spikes``, default on): a forward hook reads each step's loss from
the model's output and in ``on_pre_optimizer_step`` a spike far above the run's level with the LR
steady has its gradients dropped (as :mod:`lrkit.transformers` ``LRDoctorCallback`` does,
:mod:`lrkit.integrations.transformers.skips`); an event says so and the log that covers it is read
without it.

**Checkpoints.** The autopilot's state rides in the scheduler's ``state_dict`` (``LambdaLR`` saves
the attributes of callable lambdas), refreshed whenever the ``Trainer`` is about to save: so
``trainer.train(resume_from_checkpoint=...)`` resumes the autopilot with no second finder run, the
same schedule and the same guard state.

Refused with the reason: a scheduler other than the ``Trainer``'s ``LambdaLR`` schedules
(``"reduce_lr_on_plateau"``, a custom one), a learning-rate-free or Schedule-Free optimizer,
DeepSpeed and FSDP runs (sharded state), an unknown run length. Plain DDP (``torchrun``) works:
the finder averages the gradients over the ranks itself (the callback is handed the unwrapped
model) and decides on the ranks' mean losses, so every rank gets the same plan; the guard then
acts on the gathered logs, and every rank intervenes at the same step.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import torch
from transformers import TrainerCallback

from lrkit import scaling
from lrkit.autopilot.pilot import Autopilot, AutopilotEvent, check_storage
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.doctor.core import Doctor
from lrkit.doctor.guarded_watch import PendingValidation
from lrkit.integrations.torch.autopilot import _group_ratios
from lrkit.integrations.torch.amp import scaled_grad_norm
from lrkit.integrations.torch.dist import rank_agree, rank_means, world_size
from lrkit.integrations.torch.groups import doctor_lr, set_group_lr
from lrkit.collapse import check_every_arg
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot
from lrkit.integrations.transformers.callback import (RefreshedBeforeSaves, _expected_logs, _guard_blockers,
                                                      _initial_loss)
from lrkit.integrations.transformers.finder import eval_loader
from lrkit.integrations.transformers.outputs import ProbesOutputs
from lrkit.integrations.transformers.skips import HoldsStepSkips, StepSkips
from lrkit.schedules.base import Schedule

__all__ = ["AutopilotCallback"]

_KEY = "lrkit_autopilot"


def owning_trainer(callback: TrainerCallback, depth: int = 8) -> Any:
    """The ``transformers.Trainer`` whose callbacks include ``callback``, found among the callers of
    the event being handled (at most ``depth`` frames up), or ``None``.

    A ``Trainer`` hands its callbacks the model, the optimizer and the train dataloader, but not
    itself, and its ``eval_dataloader`` only once an evaluation has run: in ``on_train_begin`` the
    validation set the finder should score its candidates on is reachable only through the
    ``Trainer`` (``Trainer._inner_training_loop`` -> ``CallbackHandler.on_train_begin`` ->
    ``call_event`` -> the callback). Until 2026-12-07 the callback did without, and its candidates
    were ranked by the mean of their last two or three training losses: on a tiny BERT with
    16-example batches, noise that sent one seed's plan to 8x the best peak, a run that ended at
    chance (``benchmarks.autopilot_frameworks``).
    """
    import sys

    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and any(c is callback for c in owner.callback_handler.callbacks):
            return owner
        frame = frame.f_back
    return None


class _PilotLambda:
    """The ``LambdaLR`` lambda: step -> the autopilot's LR. ``LambdaLR`` saves a callable object's
    ``__dict__``: it holds only ``lrkit_autopilot`` (plain data, refreshed before each checkpoint);
    the callback lives in a slot, outside it."""

    __slots__ = ("_cb", "__dict__")

    def __init__(self, cb: "AutopilotCallback") -> None:
        self._cb = cb
        self.__dict__[_KEY] = None

    def __call__(self, step: int) -> float:
        return self._cb.pilot.lr(int(step))


class _State(RecyclingState):
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler

    def snapshot(self) -> TorchSnapshot:
        return self._take(self.model, [self.optimizer], scaler=self.scaler)

    def restore(self, state: TorchSnapshot) -> None:
        state.restore(self.model, [self.optimizer], scaler=self.scaler)


class AutopilotCallback(HoldsStepSkips, ProbesOutputs, RefreshedBeforeSaves, TrainerCallback):
    """Train with ``transformers.Trainer`` and no learning rate given (see the module docstring).

    Args:
        shape: your own schedule shape (its scale is ignored: the autopilot sets it).
        peak_lr: fix the peak LR yourself (the finder still runs: the guard falls back to its answer).
        guard, plateau, skip_spikes, restart_on_overfit: see :class:`lrkit.autopilot.Autopilot` (the
            last restarts a run whose ``eval_loss`` passes its best early from its start at a lower
            LR, once; an ``EarlyStoppingCallback`` counts the restarted run's first evaluations as no
            improvement and may stop it: pass ``restart_on_overfit=False`` alongside one).
        logger: where the messages go (default ``lrkit.autopilot``).
        seed: seed of the finder's own randomness.
        progress: show the finder's progress bar.
        check_outputs_every: on the first step and then every this many optimizer steps, the
            spread of the model's outputs (``.logits``) over the batch is read on the training
            forward (0 = never) and given to the doctor with the next log: a network whose outputs
            stopped depending on its inputs is rolled back (:mod:`lrkit.doctor.signs.dead`).
        storage, storage_dir: where the guard keeps its snapshots, ``"memory"`` or ``"disk"`` (a
            model whose copies do not fit in memory; :class:`lrkit.autopilot.Autopilot`); removed
            when training ends (or at exit, if it fails).

    Attributes:
        plan: the :class:`~lrkit.autopilot.AutopilotPlan` (after ``on_train_begin``).
        events: every intervention, with its message.
        finder: the finder's result (``None`` after a resume).
    """

    def __init__(self, *, shape: Schedule | None = None, peak_lr: float | None = None, guard: bool = True,
                 plateau: bool = True, logger: logging.Logger | None = None, seed: int = 0,
                 progress: bool = False, skip_spikes: bool = True, check_outputs_every: int = 25,
                 storage: str = "memory", storage_dir: Any = None, restart_on_overfit: bool = True) -> None:
        check_every_arg("AutopilotCallback: check_outputs_every", check_outputs_every)
        check_storage(storage, storage_dir, "AutopilotCallback")
        self.storage, self.storage_dir = storage, storage_dir
        self.check_outputs_every = check_outputs_every
        self.shape, self.peak_lr, self.guard, self.plateau = shape, peak_lr, guard, plateau
        self.skip_spikes, self.restart_on_overfit = skip_spikes, restart_on_overfit
        self.logger, self.seed, self.progress = logger, seed, progress
        self.pilot: Autopilot | None = None
        self.finder: Any = None
        self._lambda: _PilotLambda | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        self._ratios: list[float] = []
        self._last_step: int | None = None
        self._skips: StepSkips | None = None  # skip_spikes: each step's loss (a forward hook) and the skips
        self._scaler: Any = None
        self._pending = PendingValidation(prefixes=("eval_",), loss_names=("eval_loss",))
        self._per_step = False  # the guard reads each step's loss itself (too few logs; on_train_begin)

    def _release_hooks(self) -> None:
        """Take the forward hooks (skips, output spread) off the model: training ended, or failed."""
        self._release_skips()
        self._stop_outputs()

    @property
    def plan(self) -> AutopilotPlan | None:
        return self.pilot.plan if self.pilot is not None else None

    @property
    def events(self) -> list[AutopilotEvent]:
        return self.pilot.events if self.pilot is not None else []

    # ------------------------------------------------------------------ setting up
    def _check(self, args: Any, model: Any, optimizer: Any, scheduler: Any) -> torch.optim.Optimizer:
        blockers = _guard_blockers(args, model) if self.guard else []
        if blockers:
            raise AutopilotError(f"AutopilotCallback: the guard rolls back in place in one process, and this run "
                                 f"uses {', '.join(blockers)}; pass AutopilotCallback(guard=False)")
        if self.guard and not getattr(args, "logging_nan_inf_filter", True):
            raise AutopilotError("AutopilotCallback: logging_nan_inf_filter=False keeps every later logged loss NaN "
                                 "after one NaN step, so the guard would give up on a recovered model; leave it True")
        if not isinstance(model, torch.nn.Module) or optimizer is None:
            raise AutopilotError("AutopilotCallback needs the Trainer's model (a torch.nn.Module) and optimizer, got "
                                 f"model={type(model).__name__}, optimizer={type(optimizer).__name__}")
        inner = getattr(optimizer, "optimizer", optimizer)
        check_optimizer(inner, where="AutopilotCallback")
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise AutopilotError(f"AutopilotCallback: the Trainer's scheduler is {type(scheduler).__name__}, and the "
                                 "autopilot drives the LR through the Trainer's LambdaLR schedules (lr_scheduler_type "
                                 "'linear', 'cosine', 'constant', ...: any of them, it is replaced); do not pass your "
                                 "own scheduler in optimizers=(...), or pass its shape as AutopilotCallback(shape=...)")
        return inner

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer, scheduler = kwargs.get("model"), kwargs.get("optimizer"), kwargs.get("lr_scheduler")
        inner = self._check(args, model, optimizer, scheduler)
        self._optimizer, self._scheduler = inner, scheduler
        saved = next((getattr(f, "__dict__", {}).get(_KEY) for f in scheduler.lr_lambdas
                      if isinstance(getattr(f, "__dict__", {}).get(_KEY), dict)), None)
        self._ratios = _group_ratios(inner)  # group g gets r_g times the autopilot's LR
        family = check_optimizer(inner)
        scale = _logged_scale(args, model, kwargs.get("train_dataloader"))
        # too few logs for the doctor's window: the guard reads every step's loss from the model's
        # output, on the per-example scale (no logged-scale factor on the finder's reference)
        self._per_step = bool(self.guard) and _expected_logs(args, state) < int(Doctor().config["window"])
        ref_scale = 1.0 if self._per_step else scale
        if self.pilot is not None:  # a callback reused from an earlier train(): its snapshots are stale
            self.pilot.close()
        if saved is not None and state.global_step > 0:
            self.pilot = Autopilot.from_state_dict(saved, logger=self.logger, storage=self.storage,
                                                   storage_dir=self.storage_dir)
        else:
            steps = resolve_train_steps(state.max_steps if state.max_steps and state.max_steps > 0 else None,
                                        where="AutopilotCallback")
            val = kwargs.get("eval_dataloader")  # None until an evaluation has run (`is None`: a
            if val is None:                        # DataLoader over an IterableDataset has no len)
                val = eval_loader(owning_trainer(self))
            self.finder = self._find(args, model, inner, kwargs.get("train_dataloader"), val, steps)
            plan = make_plan(self.finder, family=family, train_steps=steps, shape=self.shape,
                             peak_lr=self.peak_lr)
            ref = plan.finder_reference
            if ref_scale != 1.0 and ref is not None and ref[2] == "train":  # the guard compares logged losses to it
                plan = dataclasses.replace(plan, finder_reference=(ref[0], ref[1] * ref_scale, ref[2]))
            self.pilot = Autopilot(plan, guard=self.guard, plateau=self.plateau, logger=self.logger,
                                   skip_spikes=self.skip_spikes, storage=self.storage, storage_dir=self.storage_dir,
                                   restart_on_overfit=self.restart_on_overfit)
            self.pilot.logger.info("%s", plan.summary())
            if self._per_step:
                self.pilot.logger.info(
                    "lrkit autopilot: this run will write %d training logs (logging_steps=%r over %d steps), fewer "
                    "than the doctor's window: the guard reads every step's loss from the model's output instead",
                    _expected_logs(args, state), getattr(args, "logging_steps", None), int(state.max_steps or 0))
        if scale != 1.0 and scaling.scaling_rule(family) == "linear":
            # the Trainer's gradient is `scale` times the mean the finder measured: an update linear in
            # the gradient (SGD) needs the LR divided by it (adaptive optimizers are scale-invariant)
            self._ratios = [r / scale for r in self._ratios]
            self.pilot.logger.info(
                "lrkit autopilot: the Trainer sums this model's %d micro-batch losses (it ignores "
                "num_items_in_batch), so the gradient of a step is %.3gx their mean: %s's LR is set to the "
                "plan's / %.3g", int(getattr(args, "gradient_accumulation_steps", 1) or 1), scale, family, scale)
        self._scaler = getattr(optimizer, "scaler", None)
        self.pilot.attach(_State(model, inner, self._scaler), agree=rank_agree)  # DDP: the ranks' mean timings
        self._release_hooks()
        if self.pilot.skips or self._per_step:  # a forward hook reads each step's loss
            self._skips = StepSkips(model)
        self._start_outputs(model)
        self._lambda = _PilotLambda(self)
        scheduler.lr_lambdas = [self._lambda] * len(inner.param_groups)
        scheduler.base_lrs = list(self._ratios)
        self._last_step = state.global_step - 1 if state.global_step > 0 else None
        self._apply(scheduler.last_epoch)

    def _find(self, args: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train: Any, val: Any,
              steps: int):
        from lrkit.integrations.torch.trainer import find_lr

        if train is None:
            raise AutopilotError("AutopilotCallback: the Trainer gave no train_dataloader to run the finder on")
        clip = getattr(args, "max_grad_norm", None)
        with warnings.catch_warnings():  # the Trainer's LambdaLR is attached; the autopilot replaces it next
            warnings.filterwarnings("ignore", message="the optimizer has an LR scheduler attached")
            # several processes: the callback is handed the unwrapped model, so the finder averages
            # the gradients over the ranks itself (as the Trainer's DDP wrapper will): the run's batch
            return find_lr(model, optimizer, None, train, val_loader=val, train_steps=steps,
                           accumulation_steps=int(getattr(args, "gradient_accumulation_steps", 1) or 1),
                           grad_clip_norm=float(clip) if clip else None, progress=self.progress, seed=self.seed,
                           average_gradients=world_size() > 1)

    def _apply(self, step: int) -> None:
        lr = self.pilot.lr(max(0, int(step)))
        for g, r in zip(self._optimizer.param_groups, self._ratios):
            set_group_lr(g, lr * r)
        self._scheduler._last_lr = [float(g["lr"]) for g in self._optimizer.param_groups]

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self._pending.hold(metrics)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._skips is not None and self.pilot is not None:
            step = int(state.global_step)  # the optimizer step in flight
            ask = self.pilot.skips
            self._skips.decide(lambda loss: ask and self.pilot.skip(step, loss), self._optimizer, self._scaler)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._take_outputs(int(state.global_step) - 1)  # every rank, every optimizer step
        if self._per_step and self.pilot is not None and self._skips is not None:
            self._observe_step(int(state.global_step) - 1)
        super().on_step_end(args, state, control, **kwargs)  # the state saved with a checkpoint

    def _observe_step(self, step: int) -> None:
        """The guard's reading of one optimizer step, when the logs are too few (see the module docstring)."""
        loss = self._skips.last_loss
        if loss is None or self._skips.last_skipped or (self._last_step is not None and step <= self._last_step):
            return  # no loss seen, or a skipped update: the doctor never sees it
        self._last_step = step
        val_loss, metrics = self._pending.take()
        self._feed(step, loss, None, None, val_loss, self._with_outputs(metrics))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._release_hooks()
        if self.pilot is not None:
            self.pilot.ended(int(state.global_step))  # said when the run stopped well short of its plan
            self.pilot.close()  # the snapshots (their files with storage="disk") go; events and plan stay

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.pilot is None or not logs or "loss" not in logs:
            return
        if self._per_step:  # every step was read already: only start the next log's tally
            if self._skips is not None:
                self._skips.read_log(float(logs["loss"]), None)
            return
        step = int(state.global_step) - 1  # the last optimizer step the log covers
        if step < 0 or (self._last_step is not None and step <= self._last_step):
            return
        self._last_step = step
        gn = logs.get("grad_norm")  # the log's last step's; an fp16 overflow the scaler skipped is unknown
        loss, gn = float(logs["loss"]), None if gn is None else scaled_grad_norm(float(gn), self._scaler)
        if self._skips is not None:  # the doctor never sees a skipped step
            loss, gn = self._skips.read_log(loss, gn)
            if loss is None:  # every step of this log was skipped
                return
        val_loss, metrics = self._pending.take()
        metrics = self._with_outputs(metrics)  # the latest output spread read since the last log
        if world_size() > 1:  # the Trainer's logs are gathered already; this makes sure of it
            loss, gn, val_loss = rank_means([loss, gn, val_loss])
        lr = logs.get("learning_rate")  # the Trainer logs group 0's: a frozen one (LR 0) says nothing of the run
        self._feed(step, loss, doctor_lr(self._optimizer.param_groups) if lr == 0 else lr, gn, val_loss, metrics)

    def _feed(self, step: int, loss: float, lr: Any, gn: float | None, val_loss: float | None,
              metrics: Any) -> None:
        """One observation for the autopilot; a rollback re-applies the LR and restarts the probe."""
        try:
            rolled = self.pilot.observe(step, loss, lr=lr, grad_norm=gn, val_loss=val_loss, metrics=metrics)
        except Exception:
            self._release_hooks()  # training ends here (the guard gave up): take the hook off the model
            raise
        if rolled:
            self._apply(self._scheduler.last_epoch)
            self._restart_outputs()

    # ------------------------------------------------------------------ checkpoints
    def _refresh(self) -> None:
        if self._lambda is not None and self.pilot is not None:
            self._lambda.__dict__[_KEY] = self.pilot.state_dict()


def _logged_scale(args: Any, model: Any, loader: Any) -> float:
    """How many times the per-example loss the ``Trainer`` logs (and differentiates) for one step:
    the number of micro-batches when it sums losses that the model averaged over its own micro-batch
    (see :func:`lrkit.integrations.transformers.callback._initial_loss`), else 1 (a measured ratio
    within 10% of 1 is taken as 1)."""
    accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    if accumulation <= 1:
        return 1.0
    reading = _initial_loss(model, loader, accumulation)  # the ranks' means under DDP
    if reading is None or not reading[0] > 0:
        return 1.0
    ratio = reading[1] / reading[0]
    return 1.0 if abs(ratio - 1.0) < 0.1 else float(ratio)
