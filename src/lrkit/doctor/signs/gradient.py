r"""Sign ``diverging`` from the gradient norm: an explosion of the global gradient norm.

**Diverging** when, for ``patience`` consecutive steps, the median gradient norm of the last
``s`` steps exceeds ``grad_ratio`` times its reference, the median of the first ``s`` gradient
norms. Onset: the step after the best loss level's median window centre.
"""
from __future__ import annotations

from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Observation, Sign, median
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["GradientExplosion"]


class GradientExplosion(Sign):
    """``diverging`` when the gradient norm exploded (see the module docstring).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=10)
        >>> for t in range(40):
        ...     d = doc.observe(t, 1.0 / (1 + t), grad_norm=1.0 if t < 30 else 100.0)
        >>> d.verdict, d.evidence["grad_norm_ratio"] > 10
        ('diverging', True)
    """

    name = "gradient"

    def reset(self) -> None:
        super().reset()
        self.count = 0
        self.onset: int | None = None

    def observe(self, obs: Observation) -> None:
        t = self.track
        ev = None
        if t.gn.n >= t.short and t.gn_first:
            ref = median(t.gn_first)
            cur = median(t.gn.last(t.short))
            if ref > 0 and cur > self.config["grad_ratio"] * ref:
                ev = t.base_evidence()
                ev["grad_norm_ratio"] = cur / ref
        if ev is None:
            self.count, self.onset, self.finding = 0, None, None
            return
        self.count += 1
        if self.count == 1:
            self.onset = obs.step if t.best_center_step is None else min(t.best_center_step + 1, obs.step)
        self.finding = Finding("diverging", self.onset, ev) if self.count >= self.config["patience"] else None

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        return diverging_explanation(self.track, self.config, finding.onset, finding.evidence)

    def state_dict(self) -> dict[str, Any]:
        return {"grad_count": self.count, "grad_onset": self.onset,
                "grad_evidence": None if self.finding is None else dict(self.finding.evidence)}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.count = int(s.get("grad_count", 0))
        self.onset = s.get("grad_onset")
        ev = s.get("grad_evidence")
        if ev is not None:
            self.finding = Finding("diverging", self.onset, {k: float(v) for k, v in ev.items()})
