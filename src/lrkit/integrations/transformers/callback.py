r"""The LR doctor (and guard) as a Hugging Face ``TrainerCallback``.

:class:`LRDoctorCallback` reads each training log in ``on_log`` (``loss``, ``learning_rate``,
``grad_norm``; ``state.global_step`` as the step), feeds a :class:`~lrkit.doctor.core.Doctor`, logs
a WARNING line (logger ``"lrkit.doctor"``) the first time each problem is detected, and, for a
verdict in ``stop_on``, sets ``control.should_training_stop = True`` so that the ``Trainer``
stops cleanly after the current step (its normal end-of-training path: callbacks, final save if
configured). The logs dict is never modified; the verdicts are in :attr:`diagnosis` and
:attr:`detections`.

What it sees is what the ``Trainer`` logs: with ``logging_steps=k`` each loss is the mean of
``k`` steps (use ``logging_steps=1`` for per-step detection). A run that will write fewer training
logs than a judgement takes -- the default ``logging_steps=500`` over a run of under 2,500 steps --
would leave the doctor (and the guard) blind: there a forward hook reads each optimizer step's loss
from the model's output instead (:mod:`lrkit.integrations.transformers.skips`; the ``loss`` the
model returns, on the logged scale), and the doctor is sized for that many steps. Otherwise the
logs are the doctor's only loss: the events carry the model, optimizer and scheduler, not the loss
(the guard's spike skipping reads each step's loss from that hook too; see below). Each evaluation's
``eval_loss`` and ``eval_*`` metrics (``on_evaluate``) go to the doctor with the next training log,
so a validation result that swings without progress is ``fluctuating``. **``logging_nan_inf_filter``** (``True`` by default) replaces a
NaN/inf step loss by the running average before logging, so that a run with NaN weights keeps
logging finite losses: the doctor can then only see the NaN through ``grad_norm`` (logged when
``max_grad_norm > 0``, the default, and by recent transformers always). Without the guard the
callback warns about it in ``on_train_begin``; pass ``logging_nan_inf_filter=False`` for a
reliable ``nan`` verdict. The guard needs the opposite (see below). Under ``fp16=True`` the
``grad_norm`` of a step whose gradients overflowed is ``nan``/``inf`` and the loss scaler skipped
that step: no weight changed, and the doctor reads the norm as unknown unless the scale has fallen
below 1 (:mod:`lrkit.integrations.torch.amp`).

**The guard** (``guard=True``). A :class:`~lrkit.doctor.guard.Guard` keeps last-good snapshots
(:class:`~lrkit.integrations.torch.state.TorchSnapshot`: the model's parameters and buffers, the
optimizer's state, the ``GradScaler`` of mixed precision if any, the torch/NumPy/Python RNGs) and,
when the doctor says ``nan`` or ``diverging`` (``act_on``), restores the last good one in place and
lowers the LR by ``lr_factor`` (unless it is a first problem out of a healthy run: ``forgive_first``,
see :mod:`lrkit.doctor.guard`). Everything happens in ``on_log``, right after the ``Trainer`` has
stepped the optimizer and the scheduler and logged the loss:

* **Snapshots** are taken there too, by the guard: after ``snapshot_every`` consecutive healthy
  (or flat) *observations*. The guard counts logs, so with ``logging_steps=k`` a snapshot is
  taken at most every ``snapshot_every * k`` optimizer steps; ``logging_steps=1`` makes it every
  ``snapshot_every`` steps. A snapshot taken at the log of step :math:`s` holds the state after
  step :math:`s` (the guard labels it :math:`s + 1`, "before step :math:`s+1`"; its records use
  ``state.global_step`` as the step).
* **Lowering the LR.** The schedules of ``TrainingArguments.lr_scheduler_type`` are
  ``torch.optim.lr_scheduler.LambdaLR`` objects, which overwrite every group's LR with
  :math:`\eta_t = b\,\lambda(t)` at each step, :math:`b` being the scheduler's ``base_lrs``. So a
  rollback multiplies ``lr_scheduler.base_lrs``, the groups' ``initial_lr`` *and* their current
  ``lr`` (the LR of the next step, already set by the scheduler) by :math:`\gamma` =
  ``lr_factor``: from the next step on the optimizer uses :math:`\gamma\, b\,\lambda(t)`, the
  schedule's shape at a lower scale, and the logged ``learning_rate`` says so. The scheduler's
  ``state_dict`` holds ``base_lrs``, so a checkpoint saved after a rollback resumes with the
  lowered LR. ``"reduce_lr_on_plateau"`` builds a ``ReduceLROnPlateau``, which only ever multiplies
  the groups' current LR: a rollback multiplies those (the optimizer's checkpoint holds them), and
  the plateau's own reductions go on from the lowered LR. Any other scheduler (``"greedy"``, which
  resets the LR to its first value; a custom one passed in ``optimizers=``) is refused in
  ``on_train_begin`` with a ``ValueError``.
* **The clock is not rewound.** A rollback restores the weights, the optimizer state, the scaler
  and the RNGs -- not ``state.global_step``, the scheduler's position or the data loader, which go
  on (as with the Lightning callback and the guard's own clock). The ``Trainer``'s loss
  accumulator was just emptied by the log, so the next logged loss covers only steps after the
  rollback; the ``train_loss`` of the ``TrainOutput`` (the mean over the whole run) still
  includes the losses before it.
* **``logging_nan_inf_filter`` must stay ``True``** (the default). Without the filter the
  ``Trainer`` adds a NaN/inf step loss to its running loss sum, and that sum stays NaN for the
  rest of the run (it is "emptied" by subtracting it from itself): every later log would say NaN
  even after a rollback, and the guard would give up on a healthy model. With the filter the sum
  stays finite and the NaN reaches the doctor through ``grad_norm``. ``guard=True`` refuses
  ``logging_nan_inf_filter=False`` with a ``ValueError``.
* **Bounded retries.** When a snapshot has been restored ``max_retries`` times and the run fails
  again, the guard restores it once more, logs an ERROR line and raises
  :class:`~lrkit.doctor.guard.GuardGaveUp` out of ``trainer.train()`` (as the Lightning and Keras
  callbacks do): the model is left on that last good state.
* **Checkpoints.** Whenever the ``Trainer`` is about to save, the callback's state -- the guard's
  LR multiplier, interventions and clock, the doctor's state -- is put on the scheduler object,
  whose ``state_dict`` (saved in each checkpoint's ``scheduler.pt``) holds its attributes; so
  ``trainer.train(resume_from_checkpoint=...)`` after a crash goes on with the doctor's history and
  the guard's records (the lowered LR itself is in the scheduler's ``base_lrs``). The checkpoint's
  weights become the guard's first snapshot.
* **A bad batch skipped** (``skip_spikes``, on by default with the guard). The logs come too late
  for that, so a forward hook on the model reads each training step's loss (the ``loss`` the model
  returns; :mod:`lrkit.integrations.transformers.skips`), and in ``on_pre_optimizer_step`` -- the
  gradients clipped, the update not yet applied -- a loss far above the run's level with the LR
  steady (:mod:`lrkit.doctor.spikes`) has its gradients dropped, so ``optimizer.step()`` changes
  nothing (with an fp16 ``GradScaler`` that has not unscaled them: one made infinite, and the
  scaler skips the step). A log that covers a skipped step is read as the mean of the hook's
  losses of the steps trained in it, so the doctor never sees the skipped one. A model that
  returns no loss (a custom ``compute_loss``) gives nothing to skip on.
* Each rollback is one WARNING line (logger ``"lrkit.guard"``, or ``logger``) and one
  :class:`~lrkit.doctor.guard.Intervention` in :attr:`interventions`; :attr:`lr_multiplier` is
  the product of the factors applied since ``train()`` began.

**What is supported.** One process on one device (CPU, a single GPU or MPS), or plain DDP over
several processes (``torchrun``; Accelerate's ``MULTI_CPU``/``MULTI_GPU``: every rank holds a whole
copy of the model and optimizer), with any ``LambdaLR`` schedule; gradient accumulation changes
nothing (the guard acts on the logs, one per optimizer step at most), and a mixed-precision
``GradScaler`` (found on Accelerate's optimizer wrapper) is part of the snapshot. Under DDP the
Trainer's logged loss is already the ranks' mean; the rest a rank sees alone (a step's loss for
``skip_spikes``, the initial loss, its timings) is averaged over the ranks too, so every rank
skips the same steps and rolls back at the same step to the same snapshot, and the replicas stay
identical (tested on two gloo processes; not run on GPUs).
``guard=True`` refuses, with a ``ValueError`` naming what it found (in ``on_init_end`` when the
callback is given to the ``Trainer``, else in ``on_train_begin``): DeepSpeed, FSDP, tensor
parallelism (``DTensor`` parameters), several GPUs in one process (``DataParallel``), TPU/XLA and
SageMaker parallelism. There the model and optimizer are sharded and the engines own their state
(ZeRO partitions, flat parameters, the wrapped optimizer, their loss scaler): an in-place rollback
would have to restore all of it on every rank at the same step, which a callback does not own.
The sound recipe there: ``stop_on=("nan", "diverging")``, then
``trainer.train(resume_from_checkpoint=...)`` with a lower ``learning_rate`` (the diagnosis'
advice says by how much). ``guard=True`` also refuses ``logging_strategy="no"`` (the guard would
never see a loss) and ``logging_nan_inf_filter=False`` (see above).

Example::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[LRDoctorCallback(guard=True, snapshot_every=20)])
    trainer.train()            # args: logging_steps=1 for per-step snapshots and detection
"""
from __future__ import annotations

import inspect
import logging
import math
import warnings
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from lrkit.collapse import check_every_arg
from lrkit.doctor.core import VERDICTS, Diagnosis, Doctor
from lrkit.doctor.diagnosis import settings_for_rows
from lrkit.doctor.guard import Guard
from lrkit.doctor.guarded_watch import GuardedWatch, PendingValidation, watch_doctor, watch_skip_spikes
from lrkit.doctor.interventions import GuardGaveUp, Intervention
from lrkit.doctor.model_config import chance_loss_from_config
from lrkit.doctor.watch import check_actions
from lrkit.integrations.torch.amp import scaled_grad_norm
from lrkit.integrations.torch.dist import rank_agree, rank_means, world_size
from lrkit.integrations.torch.groups import check_guardable, doctor_lr
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot, eval_mode, rngs_kept
from lrkit.integrations.transformers.skips import HoldsStepSkips, StepSkips
from lrkit.integrations.transformers.outputs import ProbesOutputs

__all__ = ["LRDoctorCallback"]

_KEY = "lrkit_doctor"  # the scheduler attribute the callback's state rides in (saved by its state_dict)

_RECIPE = (
    "use LRDoctorCallback(stop_on=('nan', 'diverging')) and resume from the last checkpoint with a lower "
    "learning_rate (trainer.train(resume_from_checkpoint=...)), or guard=False to watch only"
)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


#: Accelerate's distributed types the guard runs under: one process, or plain DDP over CPUs or CUDA GPUs
_GUARDABLE = ("NO", "MULTI_CPU", "MULTI_GPU")


def _guard_blockers(args: Any, model: Any = None) -> list[str]:
    """What in this run rules out the in-place guard (empty: one process, or plain DDP).

    Reads the ``TrainingArguments`` (``deepspeed``, ``fsdp``, ``parallel_mode``, Accelerate's
    ``distributed_type``) and, when given, the model (FSDP modules, ``DTensor`` parameters). Every
    attribute is read defensively: a field a transformers version lacks is simply not checked.
    """
    found: list[str] = []
    if getattr(args, "deepspeed", None):
        found.append("DeepSpeed (TrainingArguments.deepspeed)")
    if getattr(args, "fsdp", None):
        found.append(f"FSDP (TrainingArguments.fsdp={args.fsdp!r})")
    state = getattr(args, "distributed_state", None)
    dtype = getattr(state, "distributed_type", None)
    if dtype is not None and _name(dtype).upper() not in _GUARDABLE:
        found.append(f"Accelerate distributed_type={_name(dtype)}")
    mode = _name(getattr(args, "parallel_mode", "not_parallel"))
    if mode == "not_distributed":
        found.append("several GPUs in one process (DataParallel, n_gpu > 1)")
    elif mode not in ("not_parallel", "distributed"):  # distributed: DDP, told apart by distributed_type
        found.append(f"parallel_mode={mode}")
    if isinstance(model, torch.nn.Module) and torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        sharded = (FullyShardedDataParallel,)
        try:
            from torch.distributed.fsdp import FSDPModule

            sharded = (FullyShardedDataParallel, FSDPModule)
        except ImportError:  # pragma: no cover - torch < 2.6
            pass
        if any(isinstance(m, sharded) for m in model.modules()):
            found.append("an FSDP-wrapped model")
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # pragma: no cover - torch < 2.4
            DTensor = None  # noqa: N806
        if DTensor is not None and any(isinstance(p, DTensor) for p in model.parameters()):
            found.append("tensor-parallel (DTensor) parameters")
    return list(dict.fromkeys(found))


def _expected_logs(args: Any, state: Any) -> int:
    """How many training logs (``loss`` entries) this run will write."""
    if _name(getattr(args, "logging_strategy", "steps")) == "epoch":
        return max(1, math.ceil(float(getattr(args, "num_train_epochs", 1))))
    every = float(getattr(args, "logging_steps", 500) or 500)
    total = int(getattr(state, "max_steps", 0) or 0)
    if every < 1:  # a ratio of the total
        return max(1, int(round(1 / every)))
    return max(1, total // int(every))


def _logs_every(args: Any) -> float:
    """Optimizer steps per training log (``inf`` for one log per epoch or none)."""
    if _name(getattr(args, "logging_strategy", "steps")) != "steps":
        return math.inf
    every = float(getattr(args, "logging_steps", 500) or 500)
    return math.inf if every < 1 else every  # a ratio of the run: many steps per log


def _copy_lr(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _accepts_loss_kwargs(model: torch.nn.Module) -> bool:
    """Whether the ``Trainer`` passes ``num_items_in_batch`` to ``model`` (its own rule: the model's
    ``accepts_loss_kwargs``, else a ``**kwargs`` in its ``forward``)."""
    if hasattr(model, "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def _initial_loss(model: Any, loader: Any, accumulation: int = 1) -> tuple[float, float] | None:
    r"""The model's loss before training on the first examples of ``loader``'s dataset, collated by
    its ``collate_fn``: ``(per_example, as_logged)`` (``None`` if it cannot be had). The loader's
    sampler is not touched (its order is the run's), evaluation mode, no gradient, every RNG and the
    model's modes left as they were.

    ``as_logged`` is the same loss on the scale of the ``Trainer``'s logged loss. With
    :math:`m` = ``gradient_accumulation_steps`` > 1 and a model the ``Trainer`` passes
    ``num_items_in_batch`` to, the logged loss of a step is the *sum* of its micro-batches' losses,
    each computed with the step's item count :math:`N`: the mean per item when the model divides by
    :math:`N`, but :math:`m` times it when the model ignores :math:`N` and averages over its own
    micro-batch (seen with ``BertForSequenceClassification`` in transformers 5). So
    ``as_logged`` = :math:`m\,\ell(\text{batch}; N = m\,n)`, :math:`n` the batch's label count
    (unshifted: a causal LM's count is off by one position per sequence); otherwise the
    ``Trainer`` divides by :math:`m` and ``as_logged`` is the plain loss.

    Under ``torch.distributed`` both are the ranks' means (a collective: every rank calls it), so
    every rank's doctor starts from the same reading."""
    reading = _local_initial_loss(model, loader, accumulation)
    if world_size() > 1:
        reading = tuple(rank_means(list(reading or (None, None))))
        reading = None if None in reading else reading
    return reading


def _local_initial_loss(model: Any, loader: Any, accumulation: int) -> tuple[float, float] | None:
    """:func:`_initial_loss` on this process's model and data."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(model, torch.nn.Module) or dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    try:
        with rngs_kept(), torch.no_grad(), eval_mode(model):
            size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
            n = min(len(dataset), int(size or 8))  # Accelerate's loaders batch through their batch_sampler
            batch = (loader.collate_fn or torch.utils.data.default_collate)([dataset[i] for i in range(n)])
            if not isinstance(batch, dict):
                return None
            device = next(model.parameters()).device
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            plain = _loss_of(model(**batch))
            logged = plain
            labels = batch.get("labels")
            if plain is not None and accumulation > 1 and isinstance(labels, torch.Tensor) and _accepts_loss_kwargs(model):
                items = labels.ne(-100).sum()
                scaled = _loss_of(model(**batch, num_items_in_batch=items * accumulation))
                logged = None if scaled is None else accumulation * scaled
    except Exception:  # noqa: BLE001 - an initial reading is optional; the user's training is not at stake
        return None
    if plain is None or logged is None or not (math.isfinite(plain) and math.isfinite(logged)):
        return None
    return plain, logged


def _loss_of(out: Any) -> float | None:
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    return float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else None


class _State(RecyclingState):
    """The guard's view of the run: snapshot/restore of the model, optimizer, scaler and RNGs."""

    def __init__(self, cb: "LRDoctorCallback") -> None:
        self.cb = cb

    def snapshot(self) -> TorchSnapshot:
        cb = self.cb
        return self._take(cb._model, [cb._optimizer], scaler=cb._scaler)

    def restore(self, state: TorchSnapshot) -> None:
        cb = self.cb
        # the verdict that caused this rollback, before the guard rewinds the doctor to the snapshot's
        cb._rollback_diagnosis = cb.doctor.diagnosis
        groups = cb._optimizer.param_groups
        keep = [{k: _copy_lr(g[k]) for k in ("lr", "initial_lr") if k in g} for g in groups]
        state.restore(cb._model, [cb._optimizer], scaler=cb._scaler)
        for g, saved in zip(groups, keep):  # the scheduler's LRs stay (the clock is not rewound)
            for k, v in saved.items():
                if isinstance(g.get(k), torch.Tensor) and isinstance(v, torch.Tensor):
                    g[k].copy_(v)
                else:
                    g[k] = v


class RefreshedBeforeSaves:
    """A callback whose state rides in the ``Trainer``'s checkpoints: ``_refresh()`` puts it where the
    checkpoint will find it, at every step or epoch end after which the ``Trainer`` saves."""

    def _refresh(self) -> None:  # pragma: no cover - every user overrides it
        raise NotImplementedError

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            self._refresh()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            self._refresh()


class LRDoctorCallback(HoldsStepSkips, ProbesOutputs, RefreshedBeforeSaves, GuardedWatch, TrainerCallback):
    """Diagnose (and with ``guard=True`` protect) a ``transformers.Trainer`` run from its logs.

    See the module docstring for what is read, how the LR is lowered and what is supported.

    Args:
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``False``: watch only).
        doctor: the :class:`~lrkit.doctor.core.Doctor` (default: one sized for the number of
            logs the run will write, :func:`~lrkit.doctor.diagnosis.settings_for_rows`: under 50
            logs, e.g. ``logging_steps=10`` on a short run, each log is judged as a row, as
            ``lrkit diagnose`` judges the same ``trainer_state.json``).
        stop_on: verdicts that stop training (default ``()``: only report); a subset of
            ``("nan", "diverging", "fluctuating", "flat")``. With ``guard=True`` it may not share
            a verdict with ``act_on`` (a verdict either stops the run or rolls it back).
        snapshot_every, lr_factor, forgive_first, max_retries, act_on, storage, storage_dir, on_intervention:
            as in :class:`~lrkit.doctor.guard.Guard` (only with ``guard=True``);
            ``snapshot_every`` counts logged steps.
        logger: where detections (and the guard's interventions) are reported (default
            ``logging.getLogger("lrkit.doctor")``, and ``"lrkit.guard"`` for the guard).
        on_converged, on_overfitting: ``"stop"`` (``control.should_training_stop``),
            ``"lower_lr"`` (scale the ``LambdaLR``'s base LRs by ``plateau_factor``, default 0.1)
            or ``None`` (default: only report) when the doctor notes ``converged`` (the
            evaluation loss stopped improving, as ``EarlyStoppingCallback``) or ``overfitting``;
            see :mod:`lrkit.doctor.watch`.
        skip_spikes: leave out the update of a step whose loss is a spike far above the run's level
            (a bad batch; see the module docstring); ``None`` (default): on with the guard.
        initial_loss: when each training log covers several steps (``logging_steps > 1``), read the
            model's loss on the first training examples before training (one batch collated from the
            dataset, the sampler untouched; no gradient, evaluation mode, every RNG left as it was)
            and give it to the doctor as step 0: a blow-up inside the first logging interval then
            shows as a rise from where the run started (default ``True``; skipped for an iterable
            dataset or a model that returns no loss).
        check_outputs_every: on the first step and then every this many optimizer steps, the
            spread of the model's outputs (``.logits``) over the batch is read on the training
            forward (a hook; 0 = never) and given to the doctor with the next log: a network whose
            outputs stopped depending on its inputs is ``diverging``
            (:mod:`lrkit.doctor.signs.dead`), and the guard rolls it back.

    Attributes:
        diagnosis: the latest verdict. detections: each problem's first detection, in order
            (with the guard, also the ones it rolled back); worst: the most severe of them (the
            summary logged when training ends names it, even if the run recovered).
        stopped_by: the diagnosis that stopped training, or ``None``.
        interventions: the guard's :class:`~lrkit.doctor.guard.Intervention` records of the
            current (or last) ``train()`` call. lr_multiplier: the factor applied to the LRs.

    Example:
        >>> cb = LRDoctorCallback(guard=True, snapshot_every=20, lr_factor=0.1)
        >>> cb.lr_multiplier, cb.interventions
        (1.0, [])
    """

    def __init__(
        self,
        guard: bool = False,
        *,
        doctor: Doctor | None = None,
        stop_on: tuple[str, ...] = (),
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
        initial_loss: bool = True,
        skip_spikes: bool | None = None,
        check_outputs_every: int = 25,
    ) -> None:
        check_every_arg("LRDoctorCallback: check_outputs_every", check_outputs_every)
        self.check_outputs_every = check_outputs_every
        self.doctor = watch_doctor("LRDoctorCallback", guard, doctor)
        self.skip_spikes = watch_skip_spikes("LRDoctorCallback", skip_spikes, guard)
        if not isinstance(initial_loss, bool):
            raise ValueError(f"LRDoctorCallback: initial_loss must be True or False, got {initial_loss!r}")
        self.initial_loss = initial_loss
        self._chance_per_item: float | None = None  # the chance level before it was put on the logged scale
        self._auto_doctor = doctor is None  # sized for the run's number of logs at train begin
        self.watch_on = check_actions("LRDoctorCallback", on_converged, on_overfitting, plateau_factor)
        self.plateau_factor = float(plateau_factor)
        self._control: Any = None
        problems = tuple(v for v in VERDICTS if v != "healthy")
        if not isinstance(stop_on, (tuple, list)) or any(v not in problems for v in stop_on):
            raise ValueError(f"LRDoctorCallback: stop_on must be a tuple of verdicts from {problems}, got {stop_on!r}")
        self.stop_on = tuple(stop_on)
        self.logger = logger if logger is not None else logging.getLogger("lrkit.doctor")
        self._guard_kwargs: dict[str, Any] = dict(
            snapshot_every=snapshot_every, lr_factor=lr_factor, forgive_first=forgive_first,
            max_retries=max_retries, act_on=act_on,
            storage=storage, storage_dir=storage_dir, on_intervention=on_intervention, logger=logger,
        )
        self.guard: Guard | None = self._new_guard() if guard else None  # validates the guard's arguments
        self._applied = 1.0  # the guard's multiplier as the schedule's base_lrs hold it
        if self.guard is not None:
            both = [v for v in self.stop_on if v in self.guard.act_on]
            if both:
                raise ValueError(
                    f"LRDoctorCallback: stop_on and act_on share {both}: a verdict either stops the run "
                    f"(stop_on) or rolls it back (act_on, guard=True); got stop_on={self.stop_on!r}, "
                    f"act_on={self.guard.act_on!r}"
                )
        self.watch_logger = self.logger
        self.stopped_by: Diagnosis | None = None
        self._last_step: int | None = None
        self._pending_val = PendingValidation(prefixes=("eval_",), loss_names=("eval_loss",))
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        self._scaler: Any = None
        self._rollback_diagnosis: Diagnosis | None = None
        self._sched_any: Any = None  # the Trainer's scheduler (any kind): checkpoints carry our state on it
        self._skips: StepSkips | None = None  # skip_spikes: each step's loss (a forward hook) and the skips
        self._per_step = False  # too few logs to judge: each step's loss is read from the model (on_train_begin)
        self._lr_groups: Any = None  # the optimizer whose groups give a per-step reading's LR

    def _new_guard(self) -> Guard:
        # under DDP every rank snapshots at the same steps: the period is taken on the ranks' mean timings
        return Guard(_State(self), doctor=self.doctor, take_initial_snapshot=False, skip_spikes=self.skip_spikes,
                     agree=rank_agree, **self._guard_kwargs)

    # ------------------------------------------------------------------ checks
    def _check_args(self, args: Any, model: Any) -> None:
        blockers = _guard_blockers(args, model)
        if blockers:
            raise ValueError(
                "LRDoctorCallback(guard=True) supports one process or plain DDP (every rank a whole copy of the "
                f"model and optimizer; no DeepSpeed, FSDP, tensor parallelism or DataParallel); this run uses "
                f"{'; '.join(blockers)}. Sharded state cannot be rolled back in place from a callback: " + _RECIPE
            )
        if not getattr(args, "logging_nan_inf_filter", True):
            raise ValueError(
                "LRDoctorCallback(guard=True) needs TrainingArguments.logging_nan_inf_filter=True (the default), got "
                "False: without the filter one NaN/inf step loss makes the Trainer's running loss sum NaN for the rest "
                "of the run, so every later log would be NaN even after a rollback. With it, the guard sees a NaN "
                "through grad_norm"
            )
        if _name(getattr(args, "logging_strategy", "steps")) == "no":
            raise ValueError(
                "LRDoctorCallback(guard=True) reads the training loss from the Trainer's logs, but "
                "logging_strategy='no'; pass logging_strategy='steps' (logging_steps=1 for per-step detection)"
            )

    @staticmethod
    def _check_scheduler(scheduler: Any, optimizer: Any) -> None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return  # it multiplies the groups' current LR: lowered in place (the module docstring)
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                "LRDoctorCallback(guard=True) lowers the LR through the scheduler's base_lrs, which needs a "
                "torch.optim.lr_scheduler.LambdaLR (what every TrainingArguments.lr_scheduler_type builds except "
                "'reduce_lr_on_plateau', whose ReduceLROnPlateau it lowers in place, and 'greedy'); got "
                f"{type(scheduler).__name__}. Pick such an lr_scheduler_type, pass optimizers=(optimizer, "
                "LambdaLR(optimizer, ...)), or " + _RECIPE
            )
        if len(scheduler.base_lrs) != len(optimizer.param_groups):
            raise ValueError(
                f"LRDoctorCallback(guard=True): the scheduler has {len(scheduler.base_lrs)} base_lrs but the "
                f"optimizer has {len(optimizer.param_groups)} param groups; build the scheduler on this optimizer"
            )

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.guard is not None:  # refuse an unsupported setup before anything runs
            self._check_args(args, kwargs.get("model"))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._scaler = getattr(kwargs.get("optimizer"), "scaler", None)  # fp16 AMP's GradScaler lives on the wrapper
        if self.guard is not None:  # every check before anything changes
            model, optimizer, scheduler = kwargs.get("model"), kwargs.get("optimizer"), kwargs.get("lr_scheduler")
            self._check_args(args, model)  # again: the callback may have been added after the Trainer was built
            if not isinstance(model, torch.nn.Module) or optimizer is None:
                raise ValueError(
                    "LRDoctorCallback(guard=True) needs the Trainer's model (a torch.nn.Module) and optimizer in "
                    f"its events, got model={type(model).__name__}, optimizer={type(optimizer).__name__}"
                )
            inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it
            check_guardable(inner, "LRDoctorCallback")
            self._check_scheduler(scheduler, inner)
            self._model, self._optimizer, self._scheduler = model, inner, scheduler
        elif "lower_lr" in self.watch_on.values():  # on_converged/on_overfitting may lower the LR
            optimizer, scheduler = kwargs.get("optimizer"), kwargs.get("lr_scheduler")
            self._optimizer = getattr(optimizer, "optimizer", optimizer)
            self._scheduler = scheduler
        sched = kwargs.get("lr_scheduler")
        saved = getattr(sched, _KEY, None) if state.global_step > 0 else None
        saved = saved if isinstance(saved, dict) and "doctor" in saved else None
        # fewer training logs than a judgement takes (logging_steps=500, the default, over a short run):
        # the doctor would be blind, so each step's loss is read from the model's output instead
        logs = _expected_logs(args, state)
        self._per_step = logs < Doctor(**settings_for_rows(logs)).observations_needed
        if state.global_step == 0 or saved is not None:  # a fresh run, or a resume from a checkpoint
            self.doctor.reset()
            if self._auto_doctor:  # one observation per log (or per step): a doctor sized for that many
                rows = int(getattr(state, "max_steps", 0) or 0) if self._per_step else logs
                self.doctor = Doctor(**settings_for_rows(rows))
            self._watch_reset()
            self.stopped_by = None
            self._last_step = None
        self._sched_any = sched
        if self.doctor.config.get("chance_loss") is None and not self.doctor.chance_refuted:
            self.doctor.set_chance_loss(_chance_loss(kwargs.get("model")))  # a classifier's, from its config
        if self.guard is not None:
            self.guard.close()
            self.guard = self._new_guard()  # a fresh clock and multiplier for this train() call
        if saved is not None:
            self._load_checkpoint_state(saved)
            self._last_step = saved.get("last_step")
        if self.guard is not None:
            self.guard.start()  # the state before the first step of this call
            self._applied = self.guard.lr_multiplier  # a resumed schedule's base_lrs already hold it
        self._release_skips()
        if self.guard is not None and self.guard.skips:
            self._skips = StepSkips(self._model)
        elif self._per_step and isinstance(kwargs.get("model"), torch.nn.Module):
            self._skips = StepSkips(kwargs["model"])  # the hook reads each step's loss; nothing is skipped
        if self._per_step:
            optimizer = kwargs.get("optimizer")
            self._lr_groups = getattr(optimizer, "optimizer", optimizer)
            self._watch_logger().info(
                "lrkit doctor: this run will write %d training logs (logging_steps=%r over %d steps), fewer than a "
                "judgement takes: each step's loss is read from the model's output instead",
                logs, getattr(args, "logging_steps", None), int(getattr(state, "max_steps", 0) or 0))
        self._start_outputs(kwargs.get("model"))
        accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        fresh = saved is None and state.global_step == 0
        reading = None
        if self.initial_loss and fresh and (accumulation > 1 or _logs_every(args) > 1):
            reading = _initial_loss(kwargs.get("model"), kwargs.get("train_dataloader"), accumulation)
        if reading is not None and reading[0] > 0 and self.doctor.config.get("chance_loss") is not None:
            # the logged losses may be m times the per-item loss (see _initial_loss): chance too (a
            # resumed doctor gets its chance level, on this scale, from the checkpoint)
            if self._chance_per_item is None:  # idempotent over several train() calls
                self._chance_per_item = float(self.doctor.config["chance_loss"])
            self.doctor.set_chance_loss(self._chance_per_item * reading[1] / reading[0])
        if reading is not None and _logs_every(args) > 1:
            # the first training log averages the first logging_steps steps: a blow-up inside them
            # is invisible without the loss the run started from (its first examples, before step 1)
            self._control = control
            self._check_untrained(reading[1])
            self._watch_observe(0, reading[1])
            self._last_step = 0
        if self.guard is None and not self._per_step and getattr(args, "logging_nan_inf_filter", False):
            warnings.warn(
                "LRDoctorCallback: TrainingArguments.logging_nan_inf_filter=True replaces NaN/inf losses in the "
                "logs by a running average, so the doctor can only see a NaN through grad_norm; pass "
                "logging_nan_inf_filter=False for a reliable 'nan' verdict",
                stacklevel=2,
            )

    def _check_untrained(self, loss: float) -> None:
        """The untrained model's loss, measured: a chance level it exceeds 1.5x is no reference
        (:meth:`lrkit.doctor.Doctor.untrained_loss`)."""
        if self.doctor.untrained_loss(loss):
            self._watch_logger().info(
                "lrkit doctor: the untrained model's loss (%.4g) is far above chance level: chance is no reference "
                "for this run, and a loss falling to it is not read as a collapse", loss)

    def _refresh(self) -> None:
        """Put the callback's state on the scheduler, whose ``state_dict`` the checkpoint saves."""
        if self._sched_any is None:
            return
        setattr(self._sched_any, _KEY, {**self._checkpoint_state(), "last_step": self._last_step})

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the gradients of this step are in (and clipped); its loss came from the forward hook
        if self._skips is None:
            return
        opt, guard = self._optimizer, self.guard
        if guard is None or not guard.skips:  # only reading the step's loss (per-step mode)
            self._skips.decide(lambda loss: False, opt, self._scaler)
            return
        # the step in flight is logged as global_step + 1 (the callback's numbering of the guard's records)
        self._skips.decide(lambda loss: guard.skip(loss, lr=doctor_lr(opt.param_groups),
                                                   step=int(state.global_step) + 1), opt, self._scaler)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._take_outputs(int(state.global_step))  # every rank, every optimizer step
        if self._per_step and self._skips is not None:
            loss = self._skips.last_loss
            self._skips.last_loss = None  # read once (a step whose forward the hook missed gives none)
            if loss is not None and not self._skips.last_skipped:
                groups = self._lr_groups.param_groups if self._lr_groups is not None else None
                self._observe(int(state.global_step), loss, None if groups is None else doctor_lr(groups), None,
                              control)
        super().on_step_end(args, state, control, **kwargs)  # the state saved with a checkpoint

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._release_skips()
        self._stop_outputs()
        self.watch_speaks = bool(getattr(state, "is_world_process_zero", True))
        self._watch_speak_summary()  # the worst problem seen, even if the run recovered
        if self.guard is not None:
            self.guard.close()  # drop the snapshots (and their files); the records stay

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        # ``eval_loss`` and the ``eval_*`` metrics go to the doctor with the next training log: a
        # validation result that swings without progress is ``fluctuating``
        self._pending_val.hold(metrics)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return  # an evaluation log or the end-of-training summary
        if self._per_step:  # every step was read already: only start the next log's tally
            if self._skips is not None:
                self._skips.read_log(float(logs["loss"]), None)
            if control.should_save:
                self._refresh()
            return
        step = int(state.global_step)
        gn = logs.get("grad_norm")  # the log's last step's; an fp16 overflow the scaler skipped is unknown
        loss, gn = float(logs["loss"]), None if gn is None else scaled_grad_norm(float(gn), self._scaler)
        if self._skips is not None:  # the doctor never sees a skipped step
            loss, gn = self._skips.read_log(loss, gn)
        lr = logs.get("learning_rate")
        lr = None if lr is None else float(lr)
        if lr == 0 and self._optimizer is not None:  # the Trainer logs group 0's: frozen, say nothing of the run
            lr = doctor_lr(self._optimizer.param_groups)
        if loss is None:  # every step of this log was skipped
            if control.should_save:
                self._refresh()
            return
        self._observe(step, loss, lr, gn, control)

    def _observe(self, step: int, loss: float, lr: float | None, gn: float | None, control: Any) -> None:
        """One observation for the doctor (and the guard): a training log's, or a step's in per-step mode."""
        if self._last_step is not None and step <= self._last_step:
            return  # the same step logged twice (e.g. a resumed run)
        self._last_step = step
        if step == 1:  # the first step's loss: the untrained model's
            self._check_untrained(loss)
        val_loss, metrics = self._pending_val.take()
        metrics = self._with_outputs(metrics)  # the latest output spread read since the last log
        if world_size() > 1:  # the Trainer's logs are gathered already; this makes sure of it
            loss, gn, val_loss = rank_means([loss, gn, val_loss])
        self._control = control
        self._rollback_diagnosis = None
        try:  # each new detection is logged once (lrkit.doctor); a rollback by the guard (lrkit.guard)
            rec = self._watch_observe(step, loss, lr=lr, grad_norm=gn, val_loss=val_loss, metrics=metrics)
        except GuardGaveUp:  # the guard restored the last good state and logged an ERROR line
            self._release_skips()
            self._stop_outputs()
            self.guard.close()
            raise
        if rec is None:
            self._stop_if_asked(self.doctor.diagnosis, step, control)
        else:
            self._restart_outputs()  # the restored state is read on the next step
        if self.guard is not None and self.guard.lr_multiplier != self._applied:
            # a rollback that lowered the LR, or a lowering on probation undone (see lrkit.doctor.guard)
            self._lower_lr(self.guard.lr_multiplier / self._applied)
            self._applied = self.guard.lr_multiplier
        if control.should_save:  # this step's checkpoint comes next: it carries what was just seen
            self._refresh()

    # ------------------------------------------------------------------ helpers
    def _watch_echo(self, level: int, text: str) -> bool:
        """A detection on the Hugging Face library logger (``transformers``' handler and verbosity,
        ``transformers.logging.set_verbosity_*``), as the Trainer's own messages."""
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("transformers.trainer").log(level, "%s", text)
        return True

    def _watch_stop(self) -> bool:
        self._control.should_training_stop = True
        return True

    def _watch_lower_lr(self, factor: float) -> bool:
        sched = self._scheduler
        if self._optimizer is None or not (isinstance(getattr(sched, "base_lrs", None), list)
                                           or isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            return False
        self._lower_lr(factor)
        return True

    def _stop_if_asked(self, d: Diagnosis, step: int, control: Any) -> None:
        if d.verdict in self.stop_on and self.stopped_by is None:
            self.stopped_by = d
            control.should_training_stop = True
            self.logger.warning("lrkit doctor: stopping training at step %d (%s)", step, d.verdict)

    def _lower_lr(self, factor: float) -> None:
        """Scale the schedule by ``factor``: ``base_lrs`` (a ``ReduceLROnPlateau`` has none: it goes on
        from the groups' LR), the groups' ``initial_lr`` and ``lr``."""
        sched, groups = self._scheduler, self._optimizer.param_groups
        if isinstance(getattr(sched, "base_lrs", None), list):
            sched.base_lrs = [b * factor for b in sched.base_lrs]
        for g in groups:
            for k in ("lr", "initial_lr"):
                if k not in g:
                    continue
                if isinstance(g[k], torch.Tensor):
                    g[k].mul_(factor)  # in place: a compiled optimizer step keeps its graph
                else:
                    g[k] = g[k] * factor
        if isinstance(getattr(sched, "_last_lr", None), list):
            # what get_last_lr() -- and so the Trainer's logged learning_rate of the next step -- reports
            sched._last_lr = [_copy_lr(g["lr"]) for g in groups]


def _chance_loss(model: Any) -> float | None:
    """The chance level of a Hugging Face classifier (:mod:`lrkit.doctor.model_config`), else ``None``."""
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    cfg = getattr(inner, "config", None)
    if cfg is None or not callable(getattr(cfg, "to_dict", None)):
        return None
    return chance_loss_from_config({**cfg.to_dict(), "architectures": [type(inner).__name__]})
