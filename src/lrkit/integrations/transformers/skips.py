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
step's gradients are dropped. The next training log still averages that step's loss in, so the
callback takes it out again before the doctor reads the log (:func:`loss_without`).

A model that returns no loss (a custom ``compute_loss``, label smoothing: the ``Trainer`` pops the
labels) gives the hook nothing, and nothing is skipped.

Example:
    >>> loss_without(logged=2.0, steps=4, skipped=[5.0])   # (4 * 2.0 - 5.0) / 3
    1.0
    >>> loss_without(logged=2.0, steps=1, skipped=[2.0]) is None   # every step of the log skipped
    True
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import torch

__all__ = ["StepLoss", "loss_without"]


class StepLoss:
    """A forward hook on ``model`` that collects the loss of each training forward pass until :meth:`take`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._losses: list[float] = []
        self._summed = False
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: Mapping[str, Any], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, prediction, the initial loss: not a training step
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        self._losses.append(float(loss.detach().float().item()))
        self._summed = kwargs.get("num_items_in_batch") is not None

    def take(self) -> float | None:
        """The loss of the step whose micro-batches ran since the last call (``None``: none seen)."""
        losses, self._losses = self._losses, []
        if not losses:
            return None
        return math.fsum(losses) if self._summed else math.fsum(losses) / len(losses)

    def remove(self) -> None:
        self._handle.remove()
        self._losses = []


def loss_without(logged: float, steps: int, skipped: Sequence[float]) -> float | None:
    r"""The mean training loss of a log of ``steps`` steps without the ``skipped`` steps' losses,
    :math:`(n\bar\ell - \sum_s \ell_s) / (n - k)`; ``None`` when every step was skipped. A result
    that is not a positive finite number (the log and the hook disagree on scale) leaves the log as
    it was."""
    k = len(skipped)
    if k == 0:
        return logged
    if steps <= k:
        return None
    out = (logged * steps - math.fsum(skipped)) / (steps - k)
    return out if math.isfinite(out) and out > 0 else logged
