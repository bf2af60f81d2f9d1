"""The model's output spread under the Hugging Face ``Trainer`` (:mod:`lrkit.doctor.signs.dead`).

A ``TrainerCallback`` sees the ``Trainer``'s logs, not the model's outputs: :class:`ProbesOutputs`
puts a :class:`~lrkit.integrations.torch.outputs.SpreadProbe` on the model (a forward hook that
reads ``.logits`` on the first step and every ``check_outputs_every`` optimizer steps), keeps its
latest reading, and hands it to the doctor with the next training log as the metric
``output_spread``; after a rollback the restored state is read on the next step.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lrkit.integrations.torch.outputs import SpreadProbe

__all__ = ["ProbesOutputs"]


class ProbesOutputs:
    """Mixin for a ``TrainerCallback`` with a ``check_outputs_every`` attribute (0: no probe)."""

    check_outputs_every: int = 25
    _outputs: SpreadProbe | None = None
    _spread: dict[str, float] = {}

    def _start_outputs(self, model: Any) -> None:
        """Probe ``model`` from its next forward on (any probe before it is taken off)."""
        self._stop_outputs()
        if self.check_outputs_every and isinstance(model, torch.nn.Module):
            self._outputs = SpreadProbe(model, self.check_outputs_every, weights=True)

    def _stop_outputs(self) -> None:
        """Take the hook off the model (training ended, or failed)."""
        if self._outputs is not None:
            self._outputs.close()
        self._outputs, self._spread = None, {}

    def _take_outputs(self, step: int) -> None:
        """At every optimizer step's end, on every rank: keep the reading of optimizer step ``step``."""
        if self._outputs is not None:
            self._spread = self._outputs.take(step) or self._spread

    def _with_outputs(self, metrics: Mapping[str, float] | None) -> Mapping[str, float] | None:
        """``metrics`` with the latest reading since the last log (then forgotten)."""
        if not self._spread:
            return metrics
        merged, self._spread = {**(metrics or {}), **self._spread}, {}
        return merged

    def _restart_outputs(self) -> None:
        """After a rollback: read the restored state on the next step."""
        if self._outputs is not None:
            self._outputs.restart()
