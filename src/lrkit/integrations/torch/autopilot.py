r"""The LR autopilot for a plain PyTorch loop: a real ``LRScheduler`` plus one call per step.

:func:`autopilot` runs the finder (``find_lr(..., train_steps=T)``, at most 30% of the run),
decides the plan (:func:`lrkit.autopilot.make_plan`: peak LR and warmup-then-decay shape for the
optimizer family and run length) and returns a :class:`TorchAutopilot`::

    pilot = lrkit.torch.autopilot(model, optimizer, loss_fn, train_loader, train_steps=3000,
                                  val_loader=val_loader)
    for step, (x, y) in zip(range(3000), cycle(train_loader)):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        pilot.after_step(loss)          # doctor + guard: may roll the model back in place
        pilot.scheduler.step()          # a torch LRScheduler, as usual

The optimizer's own LR is ignored (only the ratios between its param groups are kept:
group :math:`g` gets :math:`r_g\,\eta_t` with :math:`r_g` = its LR / the first group's above 0; a
group at LR 0 stays frozen).

**The guard.** :meth:`TorchAutopilot.after_step` reports the loss (and the gradient norm, when the
gradients are still there) to the doctor; on ``nan``/``diverging`` the model, the optimizer state,
the ``GradScaler`` and the RNGs go back **in place** to the last good snapshot and the LR is lowered
(:func:`lrkit.autopilot.policy.lowered_multiplier`); the clock goes on (the scheduler keeps its
place, the loader goes on with the next batch). A network that dies -- every input getting the
same output, measured on the training forward every ``check_outputs_every`` steps -- is rolled
back too (:mod:`lrkit.doctor.signs.dead`). With a ``GradScaler`` (pass it as ``scaler=``) a step
whose fp16 gradients overflowed, which the scaler skips, is no NaN of the run
(:mod:`lrkit.integrations.torch.amp`). Pass ``val_loss=`` when you validate: a stalled
validation loss halves the LR. Every intervention is logged to ``lrkit.autopilot`` and kept in
:attr:`TorchAutopilot.events`.

**A bad batch skipped** (optional). Call ``pilot.after_backward(loss)`` between
``loss.backward()`` and ``optimizer.step()``: a loss that is a spike far above the run's level
with the LR steady (:mod:`lrkit.doctor.spikes`) has its gradients dropped there, so
``optimizer.step()`` changes nothing (with a ``GradScaler`` not yet unscaled: made non-finite, so
the scaler skips the step) and ``after_step`` reports nothing for that step; an event says so.
Without the call the bad batch is trained on and, if it breaks the run, rolled back. With gradient
accumulation call it once per update, after the last micro-batch's backward (Accelerate: when
``accelerator.sync_gradients``), with the mean loss of the update's micro-batches. Under
``torch.distributed`` (call it on every rank) the decision is taken on the loss averaged over
the ranks, so all of them skip the same steps.

**Checkpoints.** ``pilot.state_dict()`` (the same as ``pilot.scheduler.state_dict()``) holds the
plan, the step, the multiplier, the plateau and doctor state. Resume with
``lrkit.torch.autopilot(model, optimizer, ..., resume=state)`` after loading the model and the
optimizer: no second finder run, the same schedule, the same guard state.

Refused with the reason (:class:`lrkit.autopilot.AutopilotError`): an optimizer that already has
a torch LR scheduler attached, a learning-rate-free optimizer (Prodigy, D-Adaptation), a
Schedule-Free one, an unknown run length (no ``train_steps`` and a loader without ``len()``).
A model that does not train at any LR stops with :class:`lrkit.autopilot.NotTrainable` before
training.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(512, 8); y = x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
    >>> loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    >>> model = torch.nn.Linear(8, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=123.0)      # any LR: the autopilot sets it
    >>> pilot = autopilot(model, opt, torch.nn.MSELoss(), loader, epochs=10, progress=False)
    >>> for epoch in range(10):
    ...     for xb, yb in loader:
    ...         opt.zero_grad()
    ...         loss = torch.nn.functional.mse_loss(model(xb), yb)
    ...         loss.backward()
    ...         opt.step()
    ...         _ = pilot.after_step(loss)
    ...         pilot.scheduler.step()
    >>> pilot.plan.train_steps, loss.item() < 0.05, pilot.events == []
    (160, True, True)
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import torch
from torch.optim.lr_scheduler import LRScheduler

from lrkit.autopilot.pilot import Autopilot, AutopilotEvent, check_storage
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.integrations.torch.dist import rank_agree, rank_means, world_size
from lrkit.integrations.torch.amp import scaled_grad_norm
from lrkit.integrations.torch.doctor import drop_gradients, grad_norm, loss_value
from lrkit.integrations.torch.outputs import SpreadProbe, check_every_arg
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot
from lrkit.integrations.torch.groups import group_lr, reference_lr, set_group_lr
from lrkit.schedules.base import Schedule

__all__ = ["AutopilotScheduler", "TorchAutopilot", "autopilot", "check_no_scheduler"]


def check_no_scheduler(optimizer: torch.optim.Optimizer, where: str = "autopilot") -> None:
    """Refuse an optimizer that a torch LR scheduler already drives (two owners of one LR).

    A torch ``LRScheduler`` wraps ``optimizer.step`` and writes ``initial_lr`` into the param
    groups; either sign is enough.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> _ = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
        >>> check_no_scheduler(opt)
        Traceback (most recent call last):
        ...
        lrkit.autopilot.plan.AutopilotError: autopilot: this SGD already has a torch LR scheduler attached (StepLR, CosineAnnealingLR, ...), and the autopilot sets the LR itself; build the optimizer afresh without a scheduler, or pass your schedule's shape as shape=lrkit.schedules.... and let the autopilot set its scale
    """
    if hasattr(optimizer.step, "_wrapped_by_lr_sched") or any("initial_lr" in g for g in optimizer.param_groups):
        raise AutopilotError(
            f"{where}: this {type(optimizer).__name__} already has a torch LR scheduler attached (StepLR, "
            "CosineAnnealingLR, ...), and the autopilot sets the LR itself; build the optimizer afresh "
            "without a scheduler, or pass your schedule's shape as shape=lrkit.schedules.... and let the "
            "autopilot set its scale")


class _TorchState(RecyclingState):
    """snapshot()/restore() of model, optimizer, scaler and RNGs, written back in place."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler

    def snapshot(self) -> TorchSnapshot:
        return self._take(self.model, [self.optimizer], scaler=self.scaler)

    def restore(self, state: TorchSnapshot) -> None:
        state.restore(self.model, [self.optimizer], scaler=self.scaler)


def _length(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for an iterable without one (a DataLoader over an
    ``IterableDataset`` without ``__len__`` raises ``TypeError``)."""
    try:
        return int(len(loader))
    except TypeError:
        return None


def _group_ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each group's LR over the first one's above 0, as the finder kept them (a group at LR 0
    stays frozen); all 1 when no group has an LR above 0 (nothing to keep)."""
    lrs = [group_lr(g) for g in optimizer.param_groups]
    ref = reference_lr(lrs)
    return [1.0] * len(lrs) if ref is None else [lr / ref if math.isfinite(lr) else 1.0 for lr in lrs]


class AutopilotScheduler(LRScheduler):
    r"""A ``torch.optim.lr_scheduler.LRScheduler`` that sets the autopilot's LR of every step.

    After ``k`` calls of :meth:`step` group ``g`` holds :math:`r_g \cdot` ``pilot.lr(k)`` (the
    plan's LR with the guard's and the plateau's factors). Like lrkit's other torch schedulers it
    does not call ``LRScheduler.__init__`` (no ``initial_lr``, ``optimizer.step`` is not patched).
    :meth:`state_dict` holds the whole autopilot (plan, step, multiplier, plateau, doctor), so a
    framework that checkpoints its schedulers resumes the autopilot with them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, pilot: Autopilot, *, step: int = 0,
                 state: Any = None) -> None:
        self.optimizer = optimizer
        self.pilot = pilot
        self._state = state
        self._ratios = _group_ratios(optimizer)
        self._count = int(step)
        self.apply()

    @property
    def step_count(self) -> int:
        """The index of the optimizer step whose LR is set (``step()`` calls so far, plus the start)."""
        return self._count

    @property
    def last_epoch(self) -> int:  # torch's name; here it counts optimizer steps
        return self._count

    @property
    def base_lrs(self) -> list[float]:
        return [self.pilot.plan.peak_lr * r for r in self._ratios]

    def step(self, epoch: Any = None) -> None:  # type: ignore[override]
        """Move to the next optimizer step and set its LR (call it after ``optimizer.step()``)."""
        if epoch is not None:
            raise AutopilotError(f"AutopilotScheduler.step() takes no argument (it counts optimizer steps), "
                                 f"got {epoch!r}; report validation losses with pilot.after_step(loss, val_loss=...)")
        self._count += 1
        self.apply()

    def apply(self) -> None:
        """Write the LR of the current step into the param groups (after a rollback too)."""
        lr = self.pilot.lr(self._count)
        for g, r in zip(self.optimizer.param_groups, self._ratios):
            set_group_lr(g, lr * r)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [self.pilot.lr(self._count) * r for r in self._ratios]

    def state_dict(self) -> dict[str, Any]:
        """``{"step": k, "autopilot": pilot.state_dict()}`` (plain types)."""
        return {"step": self._count, "autopilot": self.pilot.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take over the autopilot of ``state_dict`` (no finder run) and set the LR of its step."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"step", "autopilot"}:
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise AutopilotError(f"AutopilotScheduler.load_state_dict: expected the keys ['autopilot', 'step'] "
                                 f"of AutopilotScheduler.state_dict(), got {got}")
        old = self.pilot
        old.close()
        self.pilot = Autopilot.from_state_dict(state_dict["autopilot"], logger=old.logger, storage=old.storage,
                                               storage_dir=old.storage_dir)
        if self._state is not None:
            self.pilot.attach(self._state, agree=rank_agree)
        self._count = int(state_dict["step"])
        self.apply()

    def __repr__(self) -> str:
        return f"AutopilotScheduler(peak_lr={self.pilot.plan.peak_lr:.3g}, step={self._count})"


class TorchAutopilot:
    """What :func:`autopilot` returns: :attr:`scheduler` (an ``LRScheduler``) and :meth:`after_step`.

    Attributes:
        scheduler: the :class:`AutopilotScheduler`.
        finder: the :class:`~lrkit.finder.result.FinderResult` (``None`` after a resume).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, pilot: Autopilot, *,
                 finder: Any = None, scaler: Any = None, step: int = 0, track_grad_norm: bool = True,
                 check_outputs_every: int = 25) -> None:
        self.model, self.optimizer, self.finder = model, optimizer, finder
        self._state = _TorchState(model, optimizer, scaler)
        pilot.attach(self._state, agree=rank_agree)  # under torch.distributed: the ranks' mean timings
        self.scheduler = AutopilotScheduler(optimizer, pilot, step=step, state=self._state)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._next = int(step)
        self.track_grad_norm = bool(track_grad_norm)
        self._skipping = False  # after_backward held this step's update back (a loss spike)
        self._closed = False
        check_every_arg("check_outputs_every", check_outputs_every)
        self._probe = SpreadProbe(model, check_outputs_every) if check_outputs_every else None

    @property
    def pilot(self) -> Autopilot:
        return self.scheduler.pilot

    @property
    def plan(self) -> AutopilotPlan:
        """The :class:`~lrkit.autopilot.AutopilotPlan` (peak LR, schedule, reasons)."""
        return self.pilot.plan

    @property
    def events(self) -> list[AutopilotEvent]:
        """Every intervention (and a resume), with its message."""
        return self.pilot.events

    def lr(self, step: int | None = None) -> float:
        """The LR of the first param group above 0 at ``step`` (default: the current step): the run's LR."""
        ratios = self.scheduler._ratios
        ratio = next((r for r in ratios if r > 0), ratios[0])
        return self.pilot.lr(self.scheduler.step_count if step is None else step) * ratio

    def after_backward(self, loss: Any) -> bool:
        """Optional, after ``loss.backward()`` and before ``optimizer.step()``: ``True`` when this
        step's loss is a spike (a bad batch) whose gradients were dropped, so that the step changes
        nothing (see the module docstring)."""
        if not self.pilot.skips:
            return False
        if self.pilot.skip(self._next, loss_value(loss)):
            drop_gradients(self._params, self._state.scaler, self.optimizer)
            self._skipping = True
        return self._skipping

    def after_step(self, loss: Any, *, val_loss: float | None = None,
                   metrics: Mapping[str, float] | None = None) -> bool:
        """Report the step just taken (call it after ``optimizer.step()``). Returns ``True`` when the
        guard rolled model and optimizer back (in place; the LR is re-applied). Under
        ``torch.distributed`` call it on every rank at every step: the loss, the gradient norm and
        ``val_loss`` are averaged over the ranks (``val_loss`` over those that give one), so every
        rank takes the same decisions and the replicas stay identical; ``metrics`` are read as
        each rank gives them."""
        probed = self._probe.take(self._next) if self._probe is not None else {}
        if self._skipping:  # after_backward held this update back: nothing trained, nothing to report
            self._skipping = False
            self._next += 1
            return False
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise AutopilotError(f"TorchAutopilot.after_step: loss must be a scalar, got shape {tuple(loss.shape)}")
            loss = float(loss.detach().float().item())
        if isinstance(val_loss, torch.Tensor):
            val_loss = float(val_loss.detach().float().item())
        # after scaler.step(): unscaled; an fp16 overflow the scaler skipped reads as unknown
        gn = scaled_grad_norm(grad_norm(self._params), self._state.scaler) if self.track_grad_norm else None
        gn = gn if gn else None
        if world_size() > 1:  # every rank reads the same numbers, so all take the same decisions
            loss, gn, val_loss = rank_means([loss, gn, val_loss])
        step = self._next
        self._next += 1
        if probed:
            metrics = {**(metrics or {}), **probed}
        rolled = self.pilot.observe(step, float(loss), lr=self.lr(), grad_norm=gn, val_loss=val_loss, metrics=metrics)
        if rolled:
            self.scheduler.apply()
            if self._probe is not None:
                self._probe.restart()
        return rolled

    def state_dict(self) -> dict[str, Any]:
        """The autopilot's checkpoint (= ``scheduler.state_dict()``), for ``resume=``."""
        return self.scheduler.state_dict()

    def report(self) -> str:
        """The plan and every intervention, in words."""
        return self.pilot.report()

    def close(self) -> None:
        """The run is over: drop the guard's snapshots (``storage="disk"``: their files), and say so
        when it ended before 95% of its plan (:meth:`lrkit.autopilot.Autopilot.ended`). Also
        ``with lrkit.torch.autopilot(...) as pilot:``. Idempotent."""
        if not self._closed:
            self._closed = True
            self.pilot.ended(self._next)
        self.pilot.close()
        if self._probe is not None:
            self._probe.close()

    def __enter__(self) -> "TorchAutopilot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def autopilot(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor] | None,
    train_loader: Any,
    *,
    train_steps: int | None = None,
    epochs: int | None = None,
    val_loader: Any = None,
    shape: Schedule | None = None,
    peak_lr: float | None = None,
    guard: bool = True,
    plateau: bool = True,
    restart_on_overfit: bool = True,
    resume: Mapping[str, Any] | None = None,
    scaler: Any = None,
    accumulation_steps: int = 1,
    step_fn: Callable[..., Any] | None = None,
    device: Any = None,
    progress: bool = False,
    logger: logging.Logger | None = None,
    seed: int = 0,
    check_outputs_every: int = 25,
    storage: str = "memory",
    storage_dir: Any = None,
) -> TorchAutopilot:
    """Find the LR, plan the schedule and guard the run of a plain PyTorch loop (module docstring).

    Args:
        model, optimizer, loss_fn, train_loader: as for :func:`lrkit.torch.find_lr` (the finder
            runs on them and leaves them exactly as they were).
        train_steps: optimizer steps of the whole run; or ``epochs`` with a loader that has a
            ``len()`` (``epochs * ceil(len(train_loader) / accumulation_steps)``).
        val_loader: validation batches for the finder's candidate runs (recommended).
        shape: your own schedule shape (its scale is ignored: the autopilot sets it).
        peak_lr: fix the peak LR yourself (the finder still runs: the guard falls back to its answer).
        guard, plateau, restart_on_overfit: see :class:`lrkit.autopilot.Autopilot` (the last:
            restart a run that overfits early from its start at a lower LR, once).
        resume: a ``pilot.state_dict()`` from a checkpoint: no finder run, the same plan and state.
        scaler, accumulation_steps, step_fn, device: as for :func:`lrkit.torch.find_lr`.
        progress: show the finder's progress bar.
        logger: where the autopilot's messages go (default ``lrkit.autopilot``).
        seed: seed of the finder's own randomness.
        check_outputs_every: every this many steps the spread of the model's outputs over the
            batch is measured on the training forward (a hook; 0 = never): a network whose outputs
            stopped depending on its inputs is dead (:mod:`lrkit.doctor.signs.dead`), and the guard
            rolls it back.
        storage, storage_dir: where the guard keeps its snapshots: ``"memory"`` or ``"disk"``
            (a model whose copies do not fit in memory; see :class:`lrkit.autopilot.Autopilot`).
            Call :meth:`TorchAutopilot.close` at the end of the run (or use ``with``) to delete them.

    Raises:
        AutopilotError: a scheduler already attached, a learning-rate-free or Schedule-Free
            optimizer, an unknown run length, a bad argument.
        NotTrainable: the finder's curve is flat (the model does not train at any LR).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise AutopilotError(f"autopilot: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    family = check_optimizer(optimizer)
    check_no_scheduler(optimizer)
    check_every_arg("check_outputs_every", check_outputs_every)
    check_storage(storage, storage_dir, "autopilot")
    if resume is not None:
        if not isinstance(resume, Mapping) or "autopilot" not in resume or "step" not in resume:
            raise AutopilotError("autopilot: resume must be the dict of pilot.state_dict() saved with your checkpoint")
        pilot = Autopilot.from_state_dict(resume["autopilot"], logger=logger, storage=storage,
                                          storage_dir=storage_dir)
        return TorchAutopilot(model, optimizer, pilot, scaler=scaler, step=int(resume["step"]),
                              check_outputs_every=check_outputs_every)
    per_epoch = None
    if train_steps is None:
        n = _length(train_loader)
        per_epoch = None if n is None else max(1, math.ceil(n / max(1, accumulation_steps)))
    steps = resolve_train_steps(train_steps, epochs=epochs, steps_per_epoch=per_epoch)
    from lrkit.integrations.torch.trainer import find_lr

    result = find_lr(model, optimizer, loss_fn, train_loader, val_loader=val_loader, train_steps=steps,
                     accumulation_steps=accumulation_steps, scaler=scaler, step_fn=step_fn, device=device,
                     progress=progress, seed=seed)
    plan = make_plan(result, family=family, train_steps=steps, shape=shape, peak_lr=peak_lr)
    pilot = Autopilot(plan, guard=guard, plateau=plateau, logger=logger, storage=storage, storage_dir=storage_dir,
                      restart_on_overfit=restart_on_overfit)
    pilot.logger.info("%s", plan.summary())
    return TorchAutopilot(model, optimizer, pilot, finder=result, scaler=scaler,
                          check_outputs_every=check_outputs_every)
