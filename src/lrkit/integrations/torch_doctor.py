r"""The LR doctor and guard inside a plain PyTorch training loop (no Trainer needed).

:class:`TorchDoctor` feeds a :class:`~lrkit.doctor.core.Doctor` from your loop and, with
``guard=True``, drives a :class:`~lrkit.doctor.guard.Guard`: on ``nan``/``diverging`` it writes the
last good snapshot of the model, the optimizer state, the ``GradScaler`` and the RNGs back **in
place** (the same tensors; the optimizer keeps its parameters) and from then on runs every
optimizer step at :math:`m \cdot \text{lr}`, where :math:`m` (``lr_multiplier``) is multiplied by
``lr_factor`` at each intervention.

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
scaler skips that step and lowers its scale; that is normal fp16 behaviour); a non-finite *loss*
still is.

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

import logging
import math
from typing import Any, Callable, Sequence

import torch

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.guard import Guard, GuardedWatch, Intervention
from lrkit.integrations.torch_state import TorchSnapshot

__all__ = ["TorchDoctor", "grad_norm"]


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


class _State:
    """snapshot()/restore() of model, optimizer, scaler, RNGs; restore keeps the current LRs."""

    def __init__(self, owner: "TorchDoctor") -> None:
        self.owner = owner

    def snapshot(self) -> TorchSnapshot:
        o = self.owner
        return TorchSnapshot.take(o.model, [o.optimizer], scaler=o.scaler, loaders=o.loaders)

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
        snapshot_every, lr_factor, max_retries, act_on, storage, storage_dir, on_intervention,
            logger: as in :class:`~lrkit.doctor.guard.Guard`.
        scaler: your ``torch.amp.GradScaler``, if any (snapshotted; its scale divides the
            gradient norm, so call :meth:`after_backward` before ``scaler.unscale_``).
        loaders: data loaders whose ``torch.Generator`` is snapshotted too (by default none: the
            loader goes on after a rollback).
        track_grad_norm: compute the global gradient norm in :meth:`after_backward` (one fused
            norm over the gradients, no host copy of them) and report it to the doctor.

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
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        scaler: Any = None,
        loaders: Sequence[Any] = (),
        storage: str = "memory",
        storage_dir: Any = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
        track_grad_norm: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"TorchDoctor: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"TorchDoctor: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(guard, bool):
            raise ValueError(f"TorchDoctor: guard must be True or False, got {guard!r}")
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise ValueError(f"TorchDoctor: scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.loaders = list(loaders)
        self.track_grad_norm = bool(track_grad_norm)
        self.doctor = doctor if doctor is not None else Doctor()
        self.guard: Guard | None = None
        if guard:
            self.guard = Guard(
                _State(self), doctor=self.doctor, snapshot_every=snapshot_every, lr_factor=lr_factor,
                max_retries=max_retries, act_on=act_on, storage=storage, storage_dir=storage_dir,
                on_intervention=on_intervention, logger=logger,
            )
        elif not isinstance(self.doctor, Doctor):
            raise ValueError(f"TorchDoctor: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        self._base: list[Any] | None = None
        self._gn: float | None = None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ the two calls
    def after_backward(self, loss: Any = None) -> float | None:
        """Call after ``loss.backward()``, before ``optimizer.step()``.

        Computes the global gradient norm (divided by the scaler's scale if a scaler was given;
        ``None`` with ``track_grad_norm=False``) and sets each param group's LR to
        ``lr_multiplier`` times its current value. ``loss`` is accepted for symmetry and unused.
        Returns the gradient norm.
        """
        gn = None
        if self.track_grad_norm:
            gn = grad_norm(self._params)
            if self.scaler is not None and self.scaler.is_enabled():
                gn = gn / float(self.scaler.get_scale())
                if not math.isfinite(gn):
                    gn = None  # the scaler skips this step and lowers its scale
        self._gn = gn
        self._base = [g["lr"] if not isinstance(g["lr"], torch.Tensor) else g["lr"].clone() for g in self.optimizer.param_groups]
        m = self.lr_multiplier
        if m != 1.0:
            self._set_lrs([b * m for b in self._base])
        return gn

    def after_step(self, step: int, loss: Any, *, val_loss: float | None = None) -> bool:
        """Call after ``optimizer.step()`` with your step number and this step's loss.

        Puts the base LRs back, feeds the doctor (loss, effective LR, gradient norm) and, when
        guarding, snapshots or rolls back. Returns ``True`` if it rolled back.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"TorchDoctor.after_step: step must be an int, got {step!r}")
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"TorchDoctor.after_step: loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
            loss = float(loss.detach().float().item())
        m = self.lr_multiplier
        if self._base is not None:
            self._set_lrs(self._base)
            lr = float(self._base[0]) * m
        elif m != 1.0:
            raise RuntimeError(
                "TorchDoctor.after_step: after_backward() was not called before optimizer.step(), so the "
                f"guard's LR multiplier {m:.3g} was not applied; call watch.after_backward(loss) every step"
            )
        else:  # after_backward was not called (allowed while the multiplier is 1)
            lr = float(self.optimizer.param_groups[0]["lr"])
        self._base = None
        gn, self._gn = self._gn, None
        if self.guard is None:
            self.doctor.observe(step, loss, lr=lr, grad_norm=gn, val_loss=val_loss)
            return False
        return self.guard.observe(loss, lr=lr, grad_norm=gn, val_loss=val_loss, step=step) is not None

    def close(self) -> None:
        """Release the guard's snapshot files (``storage="disk"``)."""
        if self.guard is not None:
            self.guard.close()

    def _set_lrs(self, values: Sequence[Any]) -> None:
        for g, v in zip(self.optimizer.param_groups, values):
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(float(v))
            else:
                g["lr"] = v
