r"""Skipping a bad batch's update under the Hugging Face ``Trainer``: the step's loss, read before the update.

A ``TrainerCallback`` is not handed a step's loss, but the model computes it: a forward hook on
the model (:class:`StepLoss`) reads the ``loss`` of each training forward pass (a ``ModelOutput``
or a mapping holding one; evaluation and ``no_grad`` passes are ignored). Over the micro-batches
of one optimizer step the step's loss is

.. math::

    \ell = \sum_i \ell_i \ \text{(the model divided by the step's token count,
    ``num_items_in_batch``)} \qquad\text{else}\qquad \ell = \frac{1}{m}\sum_{i=1}^{m} \ell_i ,

which is what the ``Trainer`` adds to its running loss for that step. In ``on_pre_optimizer_step``
(after the gradients are clipped, before ``optimizer.step()``) the guard decides on it; a skipped
step's gradients are dropped. The next training log still averages that step's loss in, so for a
log that covers a skipped step the doctor is given the mean of the hook's losses of the steps that
were trained instead (:func:`log_loss`): subtracting the skipped loss from the log's mean would
leave float32 rounding of the garbage loss in place of a converged run's tiny one.

A model that returns no loss (a custom ``compute_loss``, label smoothing: the ``Trainer`` pops the
labels) gives the hook nothing, and nothing is skipped.

Example:
    >>> log_loss(logged=0.1091, trained=[2e-9, 0.0], skipped=[1.091])   # the log holds a skipped step
    1e-09
    >>> log_loss(logged=0.25, trained=[0.2, 0.3], skipped=[]) # no skip: the log as it is
    0.25
    >>> log_loss(logged=2.0, trained=[], skipped=[2.0]) is None   # every step of the log skipped
    True
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch

from lrkit.integrations.torch.dist import rank_means, world_size
from lrkit.integrations.torch.doctor import drop_gradients

__all__ = ["HoldsStepSkips", "StepLoss", "StepSkips", "log_loss"]


class StepLoss:
    """A forward hook on ``model`` that collects the loss of each training forward pass until
    :meth:`take` (kept on its device until then: one host sync per optimizer step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._losses: list[torch.Tensor] = []
        self._summed = False
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: Mapping[str, Any], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, prediction, the initial loss: not a training step
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        self._losses.append(loss.detach())
        self._summed = kwargs.get("num_items_in_batch") is not None

    def take(self) -> float | None:
        """The loss of the step whose micro-batches ran since the last call (``None``: none seen);
        under ``torch.distributed`` its mean over the ranks that saw one (every rank must call it
        at the same point)."""
        losses = [float(t.float().item()) for t in self._losses]
        self._losses = []
        step = (math.fsum(losses) if self._summed else math.fsum(losses) / len(losses)) if losses else None
        if world_size() > 1:  # DDP: every rank decides on the mean over the ranks, so all skip alike
            step = rank_means([step])[0]
        return step

    def remove(self) -> None:
        self._handle.remove()
        self._losses = []


def log_loss(logged: float, trained: Sequence[float], skipped: Sequence[float]) -> float | None:
    """The training loss a log stands for, as the doctor should read it: ``logged`` when no step of
    it was skipped, else the mean of the ``trained`` steps' losses (``None``: every step skipped)."""
    if not skipped:
        return logged
    return math.fsum(trained) / len(trained) if trained else None


class StepSkips:
    """What a ``TrainerCallback`` keeps to skip bad batches: the hook, and the losses of the steps
    trained and skipped since the last training log. ``decide`` in ``on_pre_optimizer_step``,
    ``read_log`` in ``on_log``, ``remove`` when training ends (or fails)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._loss = StepLoss(model)
        self._trained: list[float] = []
        self._skipped: list[float] = []
        #: the last optimizer step's update was left out
        self.last_skipped = False
        #: the last optimizer step's loss as :meth:`decide` read it (``None``: none seen)
        self.last_loss: float | None = None

    def decide(self, ask: Callable[[float], bool], optimizer: torch.optim.Optimizer, scaler: Any) -> bool:
        """Ask ``ask(loss)`` with the step's loss; ``True``: its gradients were dropped."""
        loss = self.last_loss = self._loss.take()
        self.last_skipped = loss is not None and bool(ask(loss))
        if self.last_skipped:
            drop_gradients([p for g in optimizer.param_groups for p in g["params"]], scaler, optimizer)
            self._skipped.append(loss)
        elif loss is not None:
            self._trained.append(loss)
        return self.last_skipped

    def read_log(self, logged: float, grad_norm: float | None) -> tuple[float | None, float | None]:
        """The log's loss and gradient norm as the doctor should read them (:func:`log_loss`; the
        norm is the last step's: dropped when that step was skipped). Starts the next log."""
        loss = log_loss(logged, self._trained, self._skipped)
        self._trained, self._skipped = [], []
        return loss, None if self.last_skipped else grad_norm

    def remove(self) -> None:
        self._loss.remove()


class HoldsStepSkips:
    """Mixin for a ``TrainerCallback`` that owns a :class:`StepSkips` in ``_skips`` (``None`` without)."""

    _skips: StepSkips | None = None

    def _release_skips(self) -> None:
        """Take the hook off the model (training ended, or failed)."""
        if self._skips is not None:
            self._skips.remove()
            self._skips = None
