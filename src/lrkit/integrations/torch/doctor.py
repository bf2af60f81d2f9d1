r"""The LR doctor and guard inside a plain PyTorch training loop (no Trainer needed).

:class:`TorchDoctor` feeds a :class:`~lrkit.doctor.core.Doctor` from your loop and, with
``guard=True``, drives a :class:`~lrkit.doctor.guard.Guard`: on ``nan``/``diverging`` it writes the
last good snapshot of the model, the optimizer state, the ``GradScaler`` and the RNGs back **in
place** (the same tensors; the optimizer keeps its parameters) and from then on runs every
optimizer step at :math:`m \cdot \text{lr}`, where :math:`m` (``lr_multiplier``) is multiplied by
``lr_factor`` when an intervention lowers the LR (a first problem out of a healthy run keeps it:
``forgive_first``, see :mod:`lrkit.doctor.guard`).

Two calls per step::

    watch = TorchDoctor(model, optimizer, snapshot_every=50)
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        watch.after_backward(loss)        # grad norm; param-group LRs set to m * lr
        optimizer.step()
        rolled_back = watch.after_step(step, loss)   # param-group LRs back to lr; doctor; guard
        scheduler.step()                  # optional, any torch LR scheduler

**Crash-safe, resumable** (``storage="disk"``): snapshots are written atomically, in the
background, into a directory of this run under ``storage_dir`` with a manifest, and removed when
the ``with`` block ends (also on an exception). A process killed with ``kill -9`` and started
again with the same ``run_id`` and ``resume=True`` continues from its newest good snapshot::

    with TorchDoctor(model, optimizer, storage="disk", storage_dir="ckpt", run_id="exp1",
                     resume=True, loaders=[loader]) as watch:
        for step in range(watch.start_step, total_steps):   # 0, or where the killed run was
            ...                                            # the two calls, as above

(Set your LR scheduler to ``watch.start_step`` too, e.g. build it with ``last_epoch``.)

**LR schedulers.** ``after_backward`` reads each param group's LR (whatever you or your scheduler
set: the *base* LR) and sets it to :math:`m \cdot \text{base}`; ``after_step`` writes the base LR
back. So between ``after_step`` and the next ``after_backward`` the groups hold exactly what the
scheduler computed, and chainable schedulers (``ExponentialLR``, ``StepLR``, ...) compute from
their own values, never from the scaled ones. Call ``after_backward`` after your scheduler/LR
update of that step and before ``optimizer.step()``.

**What a rollback rewinds.** Model parameters and buffers, gradients, optimizer state (momenta,
Adam moments and step counts), the scaler and the RNG states go back to the snapshot. The
*clock* does not: the LR scheduler is not touched (it keeps its place), the param groups keep the
current base LR, and your data loader goes on with the next batch (so a corrupt batch is not
replayed). With a ``GradScaler`` a non-finite gradient norm is not reported to the doctor (the
scaler skips that step and lowers its scale; that is normal fp16 behaviour) unless the scale has
fallen below 1 (:mod:`lrkit.integrations.torch.amp`); a non-finite *loss* still is.

**Stability probe** (``stability_probe=StabilityProbe(batches, loss_fn=...)``, opt-in). When the
doctor's verdict turns ``diverging`` or ``fluctuating``, :func:`~lrkit.integrations.torch.hessian.stability_report`
runs on the probe's batches at the LR in force (:math:`m \cdot \text{lr}`): :attr:`TorchDoctor.diagnosis`
then carries ``lambda_max``, ``sharpness_ratio``, ``stability_limit`` and ``stability_headroom`` in
its evidence, its message is :func:`~lrkit.integrations.torch.hessian.explain`'s paragraph ("lr x
lambda_max = 0.6 x 4 = 2.4, the stability limit is 2 ...") and, when the LR is at or beyond the
limit, its advice names the largest stable LR. With ``every=N`` a healthy (or flat) run is probed
every ``N`` steps, and :meth:`TorchDoctor.stability` probes on demand: both report the headroom
``limit / (lr * lambda_max)``. Every report is kept in :attr:`TorchDoctor.stability_reports`.

*With the guard, the probe runs after the rollback*, on the restored last-good state, at the LR
that failed (the report also gives the headroom at the lowered LR), and its explanation is added
to the :class:`~lrkit.doctor.guard.Intervention` (:attr:`TorchDoctor.interventions`, and what
``on_intervention`` receives). Not on the bad state, because: (1) after a ``nan`` it has no
Hessian; (2) by the time a divergence is detected the weights have moved far from where it began,
and their curvature says little about the onset -- on a small tanh network at 2x too high an LR,
lambda_max was 7.2 at the last good state and 3.6e5 at detection, which would name an LR 5e4
times too small as "stable"; (3) the restored state is the one the run goes on from, so the same
probe says whether the lowered LR is within the limit. When the guard kept the LR (a first problem
out of a healthy run looks like a bad batch: ``forgive_first``) but the probe puts the restored
state beyond its limit at that LR, the LR is the cause after all and the guard lowers it
(:meth:`~lrkit.doctor.guard.Guard.lower_lr`). Without the guard (and on ``fluctuating``,
which the guard does not act on by default) the probe measures the state at detection: right for
an oscillating run or a slow rise, only qualitative after a blow-up (the explanation then says
so). A ``nan`` without rollback is not probed (non-finite weights have no curvature), and an
automatic probe that meets a non-finite loss logs a warning and attaches nothing instead of
ending the run.

*The probe does not change the training.* Model parameters and buffers, gradients, optimizer
state, the scaler, the param-group LRs and the torch/NumPy/Python RNGs (and the generators of the
``loaders`` and of a loader given as probe batches) are snapshotted with
:class:`~lrkit.integrations.torch.state.TorchSnapshot` before the probe and written back, bit for bit,
after it (this costs one copy of the state on the CPU per probe). The model stays in its mode:
the curvature of the training loss (dropout on, BatchNorm on batch statistics) is what matters
for stability. At construction the probe's loss is computed once on its first batch (and the
state put back), so a wrong loss function fails there and not at the first problem.

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> watch = TorchDoctor(model, opt, snapshot_every=10)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> for step in range(40):
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(x), y)
    ...     loss.backward()
    ...     _ = watch.after_backward(loss)
    ...     opt.step()
    ...     _ = watch.after_step(step, loss)
    >>> watch.diagnosis.verdict, watch.interventions
    ('healthy', [])
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.watch import check_actions
from lrkit.doctor.guard import Guard
from lrkit.doctor.guarded_watch import GuardedWatch, watch_skip_spikes
from lrkit.doctor.interventions import Intervention
from lrkit.integrations.torch.hessian import (
    StabilityProbe,
    _check_batches,
    _check_one_setting,
    _headroom_verdict,
    _NonFiniteCurvature,
    explain,
    with_stability,
)
from lrkit.integrations.torch.amp import scaled_grad_norm
from lrkit.integrations.torch.dist import rank, rank_agree, rank_mean, rank_means, world_size
from lrkit.integrations.torch.groups import check_guardable, doctor_lr, set_group_lr
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot
from lrkit.integrations.torch.outputs import SpreadProbe, check_every_arg

__all__ = ["TorchDoctor", "StabilityProbe", "grad_norm"]

_GN_MIN_COST = 0.005  # seconds: a cheaper gradient norm is measured every step
_GN_BUDGET = 0.005  # the largest fraction of the step time the gradient norm may take
_GN_MAX_EVERY = 20
_PROBED = ("diverging", "fluctuating")  # verdicts that run the probe (without a rollback)
_QUIET = ("healthy", "flat")  # verdicts under which `every` probes the headroom


def grad_norm(parameters: Sequence[torch.Tensor] | Any) -> float:
    r"""The global L2 norm of the gradients, :math:`\lVert g\rVert_2 = \sqrt{\sum_p \lVert g_p\rVert_2^2}`
    (parameters without a gradient are skipped; 0.0 if none has one).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> grad_norm([p])
        5.0
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, 2.0).item())


def scalar_loss(loss: Any, where: str) -> float:
    """A step's loss as a float (a scalar tensor is read once); ``where`` names the call in the error."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"{where}: loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
        return float(loss.detach().float().item())
    return float(loss)


def loss_value(loss: Any) -> float:
    """The loss a skip is decided on (:func:`scalar_loss`); under ``torch.distributed`` its mean
    over the ranks (:func:`~lrkit.integrations.torch.dist.rank_mean`), so that every rank skips
    the same steps and the replicas stay identical. Every rank must call it at the same step."""
    return rank_mean(scalar_loss(loss, "after_backward"))


def drop_gradients(params: Sequence[torch.Tensor], scaler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Leave the coming ``optimizer.step()`` nothing to apply: the gradients are removed (every
    torch optimizer passes over a parameter without one). With an enabled ``GradScaler`` that has
    not checked this step's gradients yet, one is kept and made infinite instead: the scaler then
    skips the step (it insists on finding a gradient to check). Once the loop has called
    ``scaler.unscale_`` (to clip, say) the check is done, and removing them all is what skips."""
    with_grad = [p for p in params if p.grad is not None]
    if scaler is not None and scaler.is_enabled() and with_grad and not _unscaled(scaler, optimizer):
        keep = with_grad[0]
        keep.grad.fill_(math.inf)
        with_grad = with_grad[1:]
    for p in with_grad:
        p.grad = None


def _unscaled(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` was called this step (its inf check is then recorded)."""
    try:
        from torch.amp.grad_scaler import OptState

        state = scaler._per_optimizer_states.get(id(optimizer))  # a defaultdict: .get does not create
        return state is not None and state["stage"] is OptState.UNSCALED
    except (AttributeError, ImportError, KeyError, TypeError):
        return False


class _State(RecyclingState):
    """snapshot()/restore() of model, optimizer, scaler, RNGs; restore keeps the current LRs."""

    def __init__(self, owner: "TorchDoctor") -> None:
        self.owner = owner

    def snapshot(self) -> TorchSnapshot:
        # after optimizer.step(): the gradients are spent (zero_grad comes next), so they are not
        # copied; CUDA tensors are copied without stalling the loop (see TorchSnapshot.take)
        o = self.owner
        return self._take(o.model, [o.optimizer], scaler=o.scaler, loaders=o.loaders, grads=False, non_blocking=True)

    def restore(self, state: TorchSnapshot) -> None:
        o = self.owner
        lrs = [g["lr"] if not isinstance(g["lr"], torch.Tensor) else g["lr"].clone() for g in o.optimizer.param_groups]
        state.restore(o.model, [o.optimizer], scaler=o.scaler, loaders=o.loaders)
        o._set_lrs(lrs)


class TorchDoctor(GuardedWatch):
    r"""Watch (and guard) a plain PyTorch loop: see the module docstring.

    Args:
        model: the ``nn.Module`` being trained.
        optimizer: its ``torch.optim.Optimizer``.
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``True``); with
            ``False`` only the doctor runs and :meth:`after_step` always returns ``False``.
        doctor: a :class:`~lrkit.doctor.core.Doctor` (default ``Doctor()``).
        snapshot_every, lr_factor, forgive_first, max_retries, act_on, storage, storage_dir, on_intervention,
            logger, keep, max_overhead, run_id, resume, sync_writes, skip_spikes, spike_factor, max_skips: as in
            :class:`~lrkit.doctor.guard.Guard`; ``skip_spikes`` defaults to on with the guard
            (``None``: ``guard``). Pass the loss to :meth:`after_backward` and a batch whose loss is
            a spike far above the run's level, with the LR unchanged, has its gradients dropped
            there, so ``optimizer.step()`` leaves the model and the optimizer state as they were
            (with a ``GradScaler`` that has not unscaled them yet: made non-finite, so the scaler
            skips the step and lowers its scale, as it does for an overflow). Under
            ``torch.distributed`` the decision is taken on the loss averaged over the ranks (one
            scalar ``all_reduce`` per step), so every rank skips the same steps.
            The stability probe logs to ``logger`` too (default
            ``logging.getLogger("lrkit.stability")``). With ``storage="disk"``, a ``run_id`` and
            ``resume=True``, a run killed with ``kill -9`` and started again with the same
            arguments is restored here, in the constructor, to its newest good snapshot (model,
            optimizer, scaler, RNGs, loaders' generators, LR multiplier, doctor):
            :attr:`start_step` is then the step to continue from. Under ``torch.distributed`` each
            rank keeps its snapshots under ``<run_id>.rank<r>``, and all resume from the newest
            snapshot every rank can read (a kill can leave one rank a write ahead of another), so
            they continue from the same step with identical replicas.
        scaler: your ``torch.amp.GradScaler``, if any (snapshotted; its scale divides the
            gradient norm, so call :meth:`after_backward` before ``scaler.unscale_``).
        loaders: data loaders whose ``torch.Generator`` is snapshotted too (by default none: the
            loader goes on after a rollback).
        track_grad_norm: compute the global gradient norm in :meth:`after_backward` (one fused
            norm over the gradients, no host copy of them) and report it to the doctor. When one
            norm takes more than 5 ms (a large model), it is computed only every ``k`` steps
            (``k`` <= 20) so that it stays under 0.5% of the step time.
        on_converged, on_overfitting: ``"stop"`` (sets :attr:`should_stop`: end your loop when it
            is true), ``"lower_lr"`` (multiplies the LR by ``plateau_factor``, default 0.1, in the
            param groups and in the base LRs of ``schedulers``, so a ``LambdaLR`` or cosine schedule
            follows the lowered LR) or ``None``: what to do when the doctor's informational
            ``converged`` / ``overfitting`` note appears (see :mod:`lrkit.doctor.watch`).
        schedulers: your LR schedulers on ``optimizer`` (for ``"lower_lr"``).
        stability_probe: a :class:`~lrkit.integrations.torch.hessian.StabilityProbe` (the
            batches and the loss) to explain problems with the curvature (see the module
            docstring); ``None`` (default) for none. Needs one LR and one set of
            hyper-parameters for all param groups.
        check_outputs_every: on the first step and then every this many steps, the spread of the
            model's outputs over the batch is read on the training forward (a forward hook; 0 =
            never): a network whose outputs stopped depending on its inputs is ``diverging``
            (:mod:`lrkit.doctor.signs.dead`) and the guard rolls it back. Under
            ``torch.distributed`` with the guard, the ranks agree on it like on the loss.

    Raises:
        GuardGaveUp: from :meth:`after_step`, when a snapshot was restored ``max_retries``
            times and the run failed again (the model is left restored to it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        guard: bool = True,
        doctor: Doctor | None = None,
        snapshot_every: int = 50,
        lr_factor: float = 0.1,
        forgive_first: bool = True,
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        scaler: Any = None,
        loaders: Sequence[Any] = (),
        storage: str = "memory",
        storage_dir: Any = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
        track_grad_norm: bool = True,
        stability_probe: StabilityProbe | None = None,
        keep: int = 4,
        max_overhead: float | None = 0.01,
        run_id: str | None = None,
        resume: bool = False,
        sync_writes: bool = False,
        skip_spikes: bool | None = None,
        spike_factor: float = 10.0,
        max_skips: int | None = None,
        on_converged: str | None = None,
        on_overfitting: str | None = None,
        plateau_factor: float = 0.1,
        schedulers: Sequence[Any] = (),
        check_outputs_every: int = 25,
    ) -> None:
        self.watch_on = check_actions("TorchDoctor", on_converged, on_overfitting, plateau_factor)
        self.plateau_factor = plateau_factor
        self.schedulers = list(schedulers)
        #: set when ``on_converged``/``on_overfitting="stop"`` fired: end your loop when it is true.
        self.should_stop = False
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"TorchDoctor: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"TorchDoctor: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(guard, bool):
            raise ValueError(f"TorchDoctor: guard must be True or False, got {guard!r}")
        check_every_arg("TorchDoctor: check_outputs_every", check_outputs_every)
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise ValueError(f"TorchDoctor: scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        if stability_probe is not None:
            if not isinstance(stability_probe, StabilityProbe):
                raise ValueError(
                    "TorchDoctor: stability_probe must be a StabilityProbe(batches, loss_fn=...) or None, got "
                    f"{stability_probe!r}"
                )
            try:
                _check_one_setting(optimizer)
            except ValueError as exc:
                raise ValueError(f"TorchDoctor: stability_probe: {exc}") from None
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.loaders = list(loaders)
        self.track_grad_norm = bool(track_grad_norm)
        self.doctor = doctor if doctor is not None else Doctor()
        self.guard: Guard | None = None
        skip_spikes = watch_skip_spikes("TorchDoctor", skip_spikes, guard)
        if guard:
            check_guardable(optimizer, "TorchDoctor")
            if storage == "disk" and isinstance(run_id, str) and world_size() > 1:
                run_id = f"{run_id}.rank{rank()}"  # every rank keeps (and resumes) its own snapshots
            self.guard = Guard(
                _State(self), doctor=self.doctor, snapshot_every=snapshot_every, lr_factor=lr_factor,
                forgive_first=forgive_first, max_retries=max_retries, act_on=act_on, storage=storage,
                storage_dir=storage_dir, on_intervention=on_intervention, logger=logger, keep=keep, max_overhead=max_overhead,
                run_id=run_id, resume=resume, sync_writes=sync_writes, skip_spikes=skip_spikes,
                spike_factor=spike_factor, max_skips=max_skips, agree=rank_agree,
            )
        elif not isinstance(self.doctor, Doctor):
            raise ValueError(f"TorchDoctor: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        self._base: list[Any] | None = None
        self._lr_used = math.nan  # the first group's LR of the step in flight (after_backward to after_step)
        self._skipping = False  # the step in flight had its update skipped (a loss spike)
        self._gn: float | None = None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._outputs = (SpreadProbe(model, check_outputs_every, agree=guard or self.watch_on, weights=True)
                         if check_outputs_every else None)
        self.stability_probe = stability_probe
        #: every probe's report (:func:`~lrkit.integrations.torch.hessian.stability_report`'s dict
        #: plus ``step``, the last step observed, and ``trigger``: the verdict, ``"every"`` or
        #: ``"on demand"``; after a rollback also ``restored_to``, ``lr_after_rollback`` and
        #: ``headroom_after_rollback``), oldest first.
        self.stability_reports: list[dict[str, Any]] = []
        self._attached: tuple[tuple[str, int | None], dict[str, Any]] | None = None  # (diagnosis key, report)
        # the problem episodes probed, as the doctor's history tells them apart: (verdict, onset)
        self._probed: dict[tuple[str, int | None], dict[str, Any] | None] = {}  # (verdict, onset) -> its report
        self._explained: dict[int, Intervention] = {}  # intervention index -> the record with the probe
        self._n_steps = 0
        self._gn_every = 1  # the gradient norm is measured every this many steps (see _space_grad_norm)
        self._step_time = math.nan
        self._t_step: float | None = None
        self._last_step: int | None = None
        self._log = logger if logger is not None else logging.getLogger("lrkit.stability")
        self.watch_logger = logger
        self._user_on_intervention: Callable[[Intervention], Any] | None = None
        if stability_probe is not None:
            if self.guard is not None:
                self._user_on_intervention = self.guard.on_intervention  # validated by the Guard
                self.guard.on_intervention = self._on_intervention
            self._check_probe_loss()

    @property
    def start_step(self) -> int:
        """The step your loop starts (or, after ``resume``, continues) from: 0 for a new run."""
        return self.guard.step_count if self.guard is not None else 0

    @property
    def trained_steps(self) -> int:
        """The steps of training the model holds: the guard's :attr:`~lrkit.doctor.guard.Guard.trained_steps`
        (the steps run less those its rollbacks undid; without a guard, the steps run). Loop
        ``while watch.trained_steps < total_steps`` to train the undone steps again."""
        if self.guard is not None:
            return self.guard.trained_steps
        return self._n_steps

    # ------------------------------------------------------------------ the two calls
    def after_backward(self, loss: Any = None) -> float | None:
        """Call after ``loss.backward()``, before ``optimizer.step()``.

        Computes the global gradient norm (divided by the scaler's scale if a scaler was given;
        ``None`` with ``track_grad_norm=False``) and sets each param group's LR to
        ``lr_multiplier`` times its current value; with the guard, an LR raised suddenly since the
        last step gets a snapshot of the state before the step
        (:meth:`~lrkit.doctor.guard.Guard.before_step`). ``loss``: this step's loss, read only with
        ``skip_spikes=True``, where a spike far above the run's level has this step's gradients
        dropped (:meth:`~lrkit.doctor.guard.Guard.skip`; ``optimizer.step()`` then changes nothing
        and :meth:`after_step` does not report the step to the doctor). Returns the gradient norm.
        """
        gn = None
        if self.track_grad_norm and self._n_steps % self._gn_every == 0:
            t0 = time.perf_counter()
            gn = grad_norm(self._params)
            self._space_grad_norm(time.perf_counter() - t0)
            if self.scaler is not None and self.scaler.is_enabled():
                gn = gn / float(self.scaler.get_scale())  # non-finite: read in after_step (lrkit.integrations.torch.amp)
        self._gn = gn
        self._base = [g["lr"] if not isinstance(g["lr"], torch.Tensor) else g["lr"].clone() for g in self.optimizer.param_groups]
        m = self.lr_multiplier
        if m != 1.0:
            self._set_lrs([b * m for b in self._base])
        # one conversion a step (a tensor LR on a GPU syncs); None: a group without an LR (unknown)
        self._lr_used = None if self._base[0] is None else float(self._base[0]) * m
        if self.guard is not None:  # a sudden raise: a snapshot of the state before it
            self.guard.before_step(self._lr_used)
            if loss is not None and self.guard.skips and self.guard.skip(loss_value(loss), lr=self._lr_used):
                self._skipping = True
                drop_gradients(self._params, self.scaler, self.optimizer)
        return gn

    def _space_grad_norm(self, cost: float) -> None:
        """On a large model the norm (one pass over every gradient) costs more than 5 ms: then it
        is measured only every ``k`` steps, ``k`` chosen to keep it under 0.5% of the step time
        (the loss still reaches the doctor every step; a NaN gradient shows in the next loss)."""
        if cost < _GN_MIN_COST or math.isnan(self._step_time):
            return
        self._gn_every = max(1, min(_GN_MAX_EVERY, math.ceil(cost / (_GN_BUDGET * self._step_time))))

    def after_step(
        self, step: int, loss: Any, *, val_loss: float | None = None, metrics: Mapping[str, float] | None = None
    ) -> bool:
        """Call after ``optimizer.step()`` with your step number and this step's loss.

        Puts the base LRs back, feeds the doctor (loss, effective LR, gradient norm, and
        ``val_loss``/``metrics`` when you evaluated at this step, e.g. ``{"val_accuracy": 0.93}``:
        a validation result that swings without progress is ``fluctuating``) and, when guarding,
        snapshots or rolls back. Returns ``True`` if it rolled back.

        Under ``torch.distributed``, with the guard or an ``on_converged``/``on_overfitting``
        action, call it on every rank at every step: the loss, the gradient norm and ``val_loss``
        the doctor reads are averaged over the ranks (``val_loss`` over those that give one; one
        ``all_reduce`` of six numbers), so every rank reaches the same verdicts and rolls back at
        the same steps to the same snapshot with the same LR, and the replicas stay identical.
        ``metrics`` are read as each rank gives them: pass values already reduced over the ranks.
        A doctor that only watches (``guard=False``, no action) reads its own rank's numbers and
        may be called on one rank alone.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"TorchDoctor.after_step: step must be an int, got {step!r}")
        if isinstance(loss, torch.Tensor):
            loss = scalar_loss(loss, "TorchDoctor.after_step")
        if self._n_steps == 0 and self.start_step == 0:  # the untrained model's loss: is chance a reference?
            self.doctor.untrained_loss(float(loss))
        m = self.lr_multiplier
        if self._base is not None:
            self._set_lrs(self._base)
            lr = self._lr_used
        elif m != 1.0:
            raise RuntimeError(
                "TorchDoctor.after_step: after_backward() was not called before optimizer.step(), so the "
                f"guard's LR multiplier {m:.3g} was not applied; call watch.after_backward(loss) every step"
            )
        else:  # after_backward was not called (allowed while the multiplier is 1)
            lr = doctor_lr(self.optimizer.param_groups)
        self._base = None
        gn, self._gn = scaled_grad_norm(self._gn, self.scaler), None  # an fp16 overflow the scaler skipped: unknown
        self._n_steps += 1
        now = time.perf_counter()
        if self._t_step is not None:
            dt = now - self._t_step
            self._step_time = dt if math.isnan(self._step_time) else 0.9 * self._step_time + 0.1 * dt
        self._t_step = now
        self._last_step = step
        probed = self._outputs.take(step) if self._outputs is not None else {}
        if probed:
            metrics = {**(metrics or {}), **probed}
        if self._skipping:  # the guard held this update back (a loss spike): nothing trained, nothing to observe
            self._skipping = False
            return False
        if world_size() > 1 and (self.guard is not None or self.watch_on):
            # every rank reads the same numbers, so all take the same decisions
            loss, gn, val_loss = rank_means([loss, gn, val_loss])
        # each new detection is recorded (detections, worst) and logged once (lrkit.doctor)
        rolled = self._watch_observe(step, loss, lr=lr, grad_norm=gn, val_loss=val_loss, metrics=metrics) is not None
        if rolled:
            self._attached = None  # the doctor went back to the snapshot's state
            if self._outputs is not None:
                self._outputs.restart()
        elif self.stability_probe is not None:
            self._probe_after_step(step)
        return rolled

    def close(self) -> None:
        """Drop the guard's snapshots (and files) and remove the outputs' forward hook; idempotent."""
        super().close()
        if self._outputs is not None:
            self._outputs.close()
            self._outputs = None

    # ------------------------------------------------------------------ the stability probe
    @property
    def diagnosis(self) -> Diagnosis:
        """The doctor's latest :class:`~lrkit.doctor.core.Diagnosis`; with the stability probe's
        numbers in its evidence and its explanation in the message when a probe belongs to it (the
        one run when this problem was detected, or the latest ``every``/on-demand probe)."""
        d = self.doctor.diagnosis
        if self._attached is not None and self._attached[0] == _key(d):
            return _explained(d, self._attached[1])
        return d

    @property
    def interventions(self) -> list[Intervention]:
        """The guard's :class:`~lrkit.doctor.guard.Intervention` records (empty without a guard);
        with a stability probe, each carries the probe's numbers and explanation."""
        return [self._explained.get(i, rec) for i, rec in enumerate(super().interventions)]

    def stability(self, batches: Any = None) -> dict[str, Any]:
        """Run the stability probe now and return its report (the headroom question).

        The probe measures the current state at the LR in force (the param groups' LR times
        :attr:`lr_multiplier`) on ``batches`` (default: the probe's own; a list of batches or a
        loader), leaves the training exactly as it was, is added to :attr:`stability_reports`
        and attached to the current :attr:`diagnosis`.

        Returns:
            :func:`~lrkit.integrations.torch.hessian.stability_report`'s dict with ``step`` and
            ``trigger="on demand"``; ``report["headroom"]`` is ``limit / (lr * lambda_max)``.

        Example:
            >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]]); y = torch.zeros(2, 1)   # H = 2/n X^T X = diag(1, 4)
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> probe = StabilityProbe([(X, y)], loss_fn=torch.nn.functional.mse_loss)
            >>> r = TorchDoctor(model, opt, stability_probe=probe).stability()
            >>> round(r["lambda_max"], 3), round(r["headroom"], 3), r["verdict"]   # 2 / (0.1 * 4)
            (4.0, 5.0, 'headroom 5x')
        """
        if self.stability_probe is None:
            raise ValueError(
                "TorchDoctor.stability: this TorchDoctor has no stability probe; build it with "
                "stability_probe=StabilityProbe(batches, loss_fn=...)"
            )
        if batches is not None:
            _check_batches(batches, "TorchDoctor.stability")
        report = self._probe("on demand", self._effective_lrs(), batches=batches)  # not quiet: never None
        self._attached = (_key(self.doctor.diagnosis), report)
        return report

    def _effective_lrs(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._base is not None:  # between after_backward and after_step: already scaled
            return [float(g["lr"]) for g in groups]
        return [float(g["lr"]) * self.lr_multiplier for g in groups]

    def _probe_after_step(self, step: int) -> None:
        d = self.doctor.diagnosis
        key = _key(d)
        if self._attached is not None and self._attached[0] != key:
            self._attached = None  # a new verdict: an older probe no longer belongs to it
        every = self.stability_probe.every
        report = None
        if d.verdict in _PROBED:
            episode = (d.verdict, d.step)  # an episode seen again after another verdict is not new:
            if episode not in self._probed:  # probed once, its report attached again when it returns
                self._probed[episode] = self._probe(d.verdict, self._effective_lrs(), quiet=True)
                report = self._probed[episode]
            elif self._attached is None and self._probed[episode] is not None:
                self._attached = (key, self._probed[episode])
        elif d.verdict in _QUIET and every is not None and self._n_steps % every == 0:
            report = self._probe("every", self._effective_lrs(), quiet=True)
        if report is not None:
            self._attached = (key, report)
            self._log.info("lrkit stability probe at step %d: %s", step, _explained(d, report).message)

    def _on_intervention(self, rec: Intervention) -> None:
        """The guard rolled back: probe the restored state at the LR that failed (see the module
        docstring), attach the explanation to the record, then call the user's callback."""
        old = [float(g["lr"]) * rec.old_multiplier for g in self.optimizer.param_groups]
        report = self._probe(rec.verdict, old, quiet=True)
        hr = None if report is None else report["headroom"]
        if world_size() > 1:  # every rank lowers the LR alike: on the ranks' mean headroom
            hr = rank_means([hr])[0]
            if report is not None:
                report["headroom"] = hr
        if rec.new_multiplier == rec.old_multiplier and hr is not None and hr < 1:
            # the guard forgave a first problem, but the restored state is beyond its stability
            # limit at the LR that failed: the LR is the cause, not a bad batch
            rec = self.guard.lower_lr(f"the stability probe puts the restored state beyond its limit "
                                      f"at the LR that failed (headroom {hr:.3g})")
        if report is not None:
            scale = rec.new_multiplier / rec.old_multiplier
            report["restored_to"] = rec.restored_to
            report["lr_after_rollback"] = report["lr"] * scale
            report["headroom_after_rollback"] = None if hr is None else hr / scale
            d = Diagnosis(rec.verdict, rec.onset, rec.step, dict(rec.evidence), (), rec.message)
            text = explain(d, report)
            what = "preconditioned sharpness" if report.get("preconditioned") else "lambda_max"
            text += (
                f" The guard restored the snapshot of step {rec.restored_to} (where this was measured) and lowered "
                f"the LR to {report['lr_after_rollback']:.3g}: lr x {what} = {report['sharpness_ratio'] * scale:.3g}"
                + ("." if hr is None else f" ({_headroom_verdict(report['headroom_after_rollback'])}).")
            )
            ev = dict(with_stability(d, report).evidence)
            if hr is not None:
                ev["stability_headroom_after_rollback"] = float(report["headroom_after_rollback"])
            rec = dataclasses.replace(rec, evidence=ev, message=text)
            self._explained[len(self.guard.interventions) - 1] = rec
            self._log.info("lrkit stability probe at step %d: %s", rec.step, text)
        if self._user_on_intervention is not None:
            self._user_on_intervention(rec)

    def _probe(self, trigger: str, lrs: list[float], *, batches: Any = None, quiet: bool = False) -> dict[str, Any] | None:
        """One probe at the LRs ``lrs``, with the whole training state put back bitwise after it.

        ``quiet`` (the automatic probes): a non-finite loss or curvature logs a warning and
        returns ``None`` instead of raising.
        """
        probe = self.stability_probe
        src = probe.batches if batches is None else batches
        loaders = self.loaders + ([src] if not isinstance(src, (list, tuple)) else [])
        snap = TorchSnapshot.take(self.model, [self.optimizer], scaler=self.scaler, loaders=loaders)
        try:
            self._set_lrs(lrs)
            report = probe.report(self.model, self.optimizer, batches)
        except _NonFiniteCurvature as exc:
            if not quiet:
                raise
            self._log.warning("lrkit stability probe (%s, step %s) skipped: %s", trigger, self._last_step, exc)
            return None
        finally:
            snap.restore(self.model, [self.optimizer], scaler=self.scaler, loaders=loaders)
        report["step"] = self._last_step
        report["trigger"] = trigger
        self.stability_reports.append(report)
        return report

    def _check_probe_loss(self) -> None:
        """Compute the probe's loss on its first batch once (state put back), to fail early."""
        probe = self.stability_probe
        src = probe.batches
        loaders = self.loaders + ([src] if not isinstance(src, tuple) else [])
        snap = TorchSnapshot.take(self.model, [self.optimizer], scaler=self.scaler, loaders=loaders)
        try:
            first = src[0] if isinstance(src, tuple) else next(iter(src), None)
            if first is None:
                raise ValueError(f"TorchDoctor: stability_probe's loader ({type(src).__name__}) yielded no batch")
            with torch.enable_grad():
                loss = probe.batch_loss(self.model, first)
            ok = isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad
        finally:
            snap.restore(self.model, [self.optimizer], scaler=self.scaler, loaders=loaders)
        if not ok:
            got = (
                f"a tensor of shape {tuple(loss.shape)}" + ("" if loss.requires_grad else " that does not require grad")
                if isinstance(loss, torch.Tensor)
                else type(loss).__name__
            )
            fn = "loss_fn(model(x), y)" if probe.loss_fn is not None else "step_fn(model, batch)"
            raise ValueError(
                f"TorchDoctor: stability_probe's {fn} must return a scalar tensor that depends on the model's "
                f"parameters (no .item(), no .detach()), got {got} on its first batch"
            )

    # ------------------------------------------------------------------ on_converged / on_overfitting
    def _watch_stop(self) -> bool:
        self.should_stop = True
        return True

    def _watch_lower_lr(self, factor: float) -> bool:
        from lrkit.integrations.torch.lower import scale_lrs

        scale_lrs(self.optimizer, self.schedulers, factor)
        return True

    def _set_lrs(self, values: Sequence[Any]) -> None:
        for g, v in zip(self.optimizer.param_groups, values):
            set_group_lr(g, v)


def _key(d: Diagnosis) -> tuple[str, int | None]:
    """What identifies one problem episode of the doctor (its verdict and first detection)."""
    return (d.verdict, d.detected_at)


def _explained(d: Diagnosis, report: dict[str, Any]) -> Diagnosis:
    """``d`` with the probe's numbers in its evidence, :func:`explain`'s paragraph as its message
    and, for a problem at or beyond the stability limit (headroom below 1.25, but not below 0.1: a
    state that far beyond has blown up and its number is no LR to use), the largest stable LR in
    its advice."""
    out = dataclasses.replace(with_stability(d, report), message=explain(d, report))
    hr = report.get("headroom")
    if d.verdict != "healthy" and hr is not None and 0.1 <= hr < 1.25:
        what = "preconditioned sharpness" if report.get("preconditioned") else "lambda_max"
        tip = (
            f"keep the LR below {report['lr'] * hr:.3g}, where lr x {what} stays under the stability limit "
            f"{report['limit']:.3g} of the current curvature"
        )
        out = dataclasses.replace(out, advice=(*d.advice[:1], tip, *d.advice[1:]))
    return out
