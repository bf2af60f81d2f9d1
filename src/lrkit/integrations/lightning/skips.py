"""Lightning's AMP plumbing for the callbacks: skipping a bad batch's update (the step's loss
before its update, and the update dropped) and reading a step's gradient norm under the fp16 scaler.

Lightning hands each micro-batch's loss to ``on_before_backward`` (already divided by
``accumulate_grad_batches``, and scaled under fp16 AMP); their sum, unscaled, is the optimizer
step's mean loss (times k over their number for the epoch's last window, when it is cut short). ``on_before_optimizer_step`` (after Lightning's AMP unscaling and clipping) is
where the guard decides; with several processes on the loss averaged over them
(:func:`~lrkit.integrations.torch.dist.rank_means`, as the callbacks' observations), so that every
rank skips the same steps. A skipped step's gradients are dropped
(:func:`~lrkit.integrations.torch.doctor.drop_gradients`): the optimizer step that follows
changes nothing.
"""
from __future__ import annotations

from typing import Any

import torch

from lrkit.integrations.torch.amp import scaled_grad_norm
from lrkit.integrations.torch.dist import rank_means
from lrkit.integrations.torch.doctor import drop_gradients

__all__ = ["StepLossSum", "drop_step", "amp_scaler", "step_grad_norm"]


def amp_scaler(trainer: Any) -> Any:
    """Lightning's AMP ``GradScaler`` (``precision="16-mixed"``), ``None`` without one."""
    return getattr(trainer.precision_plugin, "scaler", None)


def step_grad_norm(trainer: Any, gn: float | None) -> float | None:
    """The gradient norm measured in ``on_before_optimizer_step`` as the doctor should read it once
    the step is over (the scaler updated): an fp16 overflow the scaler skipped is unknown
    (:func:`~lrkit.integrations.torch.amp.scaled_grad_norm`)."""
    return scaled_grad_norm(gn, amp_scaler(trainer))


class StepLossSum:
    """The loss of the optimizer step in flight, summed from ``on_before_backward``. The losses
    stay on their device until :meth:`take`: one host sync per optimizer step, after the backward
    passes were queued, not one per micro-batch before each."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []

    def add(self, trainer: Any, loss: torch.Tensor) -> None:
        """Add a micro-batch's loss (as ``on_before_backward`` receives it)."""
        self._parts.append(loss.detach())

    def take(self, trainer: Any, pl_module: Any) -> float:
        """The step's loss (the mean over the ranks with several processes); starts the next sum."""
        parts, self._parts = self._parts, []
        scaler = amp_scaler(trainer)
        # Lightning's AMP hands over the scaled loss; the scale changes only after the optimizer step
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None
        loss = 0.0
        for part in parts:
            value = float(part.float())
            loss += value / scale if scale is not None else value
        k = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        if parts and k > 1 and len(parts) < k and getattr(pl_module, "automatic_optimization", True):
            # the epoch's last window, cut short: Lightning still divides each part by k
            loss *= k / len(parts)
        if trainer.world_size > 1:  # every rank decides on the same (mean) loss, as the callbacks observe
            loss = float(rank_means([loss], device=pl_module.device)[0])
        return loss


def drop_step(trainer: Any, optimizer: torch.optim.Optimizer) -> None:
    """Leave the coming optimizer step nothing to apply (Lightning's AMP scaler, if any, included)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    drop_gradients(params, amp_scaler(trainer), optimizer)
