r"""Sign ``overfitting`` (informational): the validation loss rises while the training loss falls.

At each evaluation of the validation loss :math:`v_k` (``val_loss``, or a metric named
``eval_loss``, ``valid_loss``, ... as in :data:`~lrkit.doctor.signs._base.VALIDATION_LOSS_NAMES`; on a log scale, :math:`u_k = \log v_k`)
the training loss level :math:`m` of that step is recorded (:class:`~lrkit.doctor.signs.Track`).
With :math:`k^*` the best (lowest) evaluation so far,

.. math::

    \operatorname{median}(u_{k-2..k}) - u_{k^*} > \log(1 + \tau)
    \quad\text{and}\quad m_k < m_{k^*} \quad\text{and}\quad k - k^* \ge 3

(:math:`\tau` = ``overfit_tol``, default 0.1): the last three validation losses sit more than
10% above the best one, at least three evaluations after it, while the training loss is lower
than it was at the best evaluation. Onset: the first evaluation after the best. The finding
clears when the validation loss comes back (or the training loss stops falling).

Informational: the verdict never triggers a rollback (``Guard`` cannot act on it); a callback
may stop training or lower the LR on it (``Diagnosis.overfitting``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Observation, Sign, median, validation_loss

__all__ = ["Overfitting"]


class Overfitting(Sign):
    """``overfitting`` when the validation loss rose more than ``overfit_tol`` above its best while
    the training loss kept falling (see the module docstring).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=5)
        >>> val = [1.0, 0.8, 0.7, 0.75, 0.82, 0.9, 1.0]
        >>> for epoch, v in enumerate(val):
        ...     d = doc.observe(epoch, 1.0 * 0.7 ** epoch, val_loss=v)
        >>> d.verdict, d.step, d.overfitting
        ('overfitting', 3, True)
    """

    name = "overfitting"

    def reset(self) -> None:
        super().reset()
        self.best = math.inf  # log of the best validation loss
        self.best_level = math.nan  # training loss level at that evaluation
        self.best_index = -1
        self.index = -1  # evaluations seen - 1
        self.after_best: int | None = None  # step of the first evaluation after the best
        self.recent: list[float] = []  # last 3 log validation losses

    def observe(self, obs: Observation) -> None:
        v = validation_loss(obs)
        if v is None or not math.isfinite(v) or v <= 0:
            return
        u = math.log(v)
        self.index += 1
        self.recent = (self.recent + [u])[-3:]
        level = self.track.level
        if u < self.best:
            self.best, self.best_level, self.best_index, self.after_best = u, level, self.index, None
            self.finding = None
            return
        if self.after_best is None:
            self.after_best = obs.step
        rise = median(self.recent) - self.best
        if (
            self.index - self.best_index >= 3
            and rise > math.log1p(self.config["overfit_tol"])
            and level < self.best_level
        ):
            ev = {
                "overfit_val_ratio_to_best": math.exp(rise),
                "overfit_best_val_loss": math.exp(self.best),
                "overfit_train_ratio": math.exp(level - self.best_level),
                "overfit_evaluations_since_best": float(self.index - self.best_index),
            }
            self.finding = Finding("overfitting", self.after_best, ev)
        else:
            self.finding = None

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        ev = finding.evidence
        advice = (
            "stop training (early stopping) and keep the weights of the best evaluation",
            "regularise (weight decay, dropout, data augmentation) or get more data",
            "or lower the LR / decay it sooner",
        )
        msg = (
            f"Overfitting: the validation loss is {ev['overfit_val_ratio_to_best']:.3g}x its best "
            f"({ev['overfit_best_val_loss']:.4g}) while the training loss fell to "
            f"{ev['overfit_train_ratio']:.3g}x its level at that evaluation."
        )
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {
            "overfit_best": None if math.isinf(self.best) else self.best,
            "overfit_best_level": None if math.isnan(self.best_level) else self.best_level,
            "overfit_best_index": self.best_index,
            "overfit_index": self.index,
            "overfit_after_best": self.after_best,
            "overfit_recent": list(self.recent),
            "overfit_evidence": None if self.finding is None else dict(self.finding.evidence),
        }

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        if s.get("overfit_best") is not None:
            self.best = float(s["overfit_best"])
        if s.get("overfit_best_level") is not None:
            self.best_level = float(s["overfit_best_level"])
        self.best_index = int(s.get("overfit_best_index", -1))
        self.index = int(s.get("overfit_index", -1))
        self.after_best = s.get("overfit_after_best")
        self.recent = [float(x) for x in s.get("overfit_recent", [])]
        ev = s.get("overfit_evidence")
        if ev is not None:
            self.finding = Finding("overfitting", self.after_best, {k: float(v) for k, v in ev.items()})
