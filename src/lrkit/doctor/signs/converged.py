r"""Sign ``converged`` (informational): the monitored validation metric stopped improving.

The early-stopping signal, with ``patience`` and ``min_delta`` exactly as in Keras'
``EarlyStopping``: each evaluation :math:`v_k` of the monitored value (``converge_monitor``, by default the validation
loss: ``val_loss``, or a metric named ``eval_loss``, ``valid_loss``, ... as in
:data:`~lrkit.doctor.signs._base.VALIDATION_LOSS_NAMES`; a named metric's direction from
:func:`~lrkit.doctor.signs.metric_swing.metric_mode` or ``metric_modes``) is an *improvement* when

.. math::

    v_k < v^* - \delta \ (\text{lower is better}) \qquad\text{or}\qquad v_k > v^* + \delta \ (\text{higher is better})

with :math:`v^*` the best value so far (:math:`\pm\infty` before the first evaluation) and
:math:`\delta` = ``converge_min_delta`` :math:`\ge 0` (an absolute change). The wait counts
evaluations since the last improvement; **converged** when ``wait >= converge_patience`` (the
epoch Keras would stop at). ``patience`` counts evaluations of the monitored value: epochs
when validation runs once per epoch, as in Keras. Non-finite values are skipped (they are the
``nan`` sign's business). Onset: the step of the best evaluation; the finding clears when the
metric improves again.

Informational: the verdict never triggers a rollback (``Guard`` cannot act on it); a callback
may stop training or lower the LR on it (``Diagnosis.converged``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Observation, Sign, validation_loss
from lrkit.doctor.signs.metric_swing import metric_mode

__all__ = ["Converged"]


class Converged(Sign):
    """``converged`` when the monitored validation metric has not improved for ``patience``
    evaluations (Keras ``EarlyStopping`` semantics; see the module docstring).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=5, converge_patience=3)
        >>> for epoch, v in enumerate([1.0, 0.8, 0.7, 0.71, 0.70, 0.72]):
        ...     d = doc.observe(epoch, 1.0 / (epoch + 1), val_loss=v)
        >>> d.verdict, d.step, d.converged, d.evidence["converged_wait"]
        ('converged', 2, True, 3.0)
    """

    name = "converged"

    def reset(self) -> None:
        super().reset()
        monitor = self.config["converge_monitor"]
        self.monitor = "validation loss" if monitor is None else str(monitor)
        self.mode = "min" if monitor is None else metric_mode(self.monitor, self.config["metric_modes"])
        if self.mode == "ignore":
            self.mode = "min" if "loss" in self.monitor.lower() else "max"
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_step: int | None = None
        self.wait = 0
        self.evaluations = 0

    def _value(self, obs: Observation) -> float | None:
        if self.config["converge_monitor"] is None:
            return validation_loss(obs)
        if self.monitor == "val_loss" and obs.val_loss is not None:
            return obs.val_loss
        return obs.metrics.get(self.monitor)

    def _improved(self, v: float) -> bool:
        delta = abs(self.config["converge_min_delta"])
        return v < self.best - delta if self.mode == "min" else v > self.best + delta

    def observe(self, obs: Observation) -> None:
        v = self._value(obs)
        if v is None or not math.isfinite(v):
            return
        self.evaluations += 1
        self.wait += 1
        if self._improved(v):
            self.best, self.best_step, self.wait = v, obs.step, 0
            self.finding = None
            return
        if self.wait >= self.config["converge_patience"] and self.evaluations > 1:
            ev = {
                "converged_best": self.best,
                "converged_wait": float(self.wait),
                "converged_patience": float(self.config["converge_patience"]),
                "converged_min_delta": float(self.config["converge_min_delta"]),
                "converged_last": v,
            }
            self.finding = Finding("converged", self.best_step, ev)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        ev = finding.evidence
        advice = (
            "stop training (early stopping) and keep the weights of the best evaluation",
            "or lower the LR (e.g. 10x) to fine-tune further",
        )
        what = "The validation loss" if self.config["converge_monitor"] is None else repr(self.monitor)
        msg = (
            f"{what} has not improved by more than {ev['converged_min_delta']:.3g} for "
            f"{ev['converged_wait']:.0f} evaluations (best {ev['converged_best']:.4g} at step {finding.onset}): "
            "training has converged."
        )
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {
            "converged_best": None if math.isinf(self.best) else self.best,
            "converged_best_step": self.best_step,
            "converged_wait": self.wait,
            "converged_evaluations": self.evaluations,
            "converged_evidence": None if self.finding is None else dict(self.finding.evidence),
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        if s.get("converged_best") is not None:
            self.best = float(s["converged_best"])
        self.best_step = s.get("converged_best_step")
        self.wait = int(s.get("converged_wait", 0))
        self.evaluations = int(s.get("converged_evaluations", 0))
        ev = s.get("converged_evidence")
        if ev is not None:
            self.finding = Finding("converged", self.best_step, {k: float(v) for k, v in ev.items()})
