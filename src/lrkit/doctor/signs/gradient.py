r"""Sign ``diverging`` from the gradient norm: an explosion of the gradient norm while the loss
is getting worse.

The gradient norm is judged against a robust *running* reference, not the first steps: real
initial gradient norms are often tiny (0.06 for a freshly initialised small transformer) and
rise tenfold as a normal sign of learning. With the gradient norms :math:`g` of the last ``W``
steps (``W`` = ``window``, ``s`` = ``short``),

.. math::

    g_\text{ref} = \operatorname{median}(g_{t-W+1..t-s}) \quad\text{(the reference, at least s values)},\qquad
    g_\text{cur} = \operatorname{median}(g_{t-s+1..t})

an explosion is :math:`g_\text{cur} > \kappa\,g_\text{ref}` (:math:`\kappa` = ``grad_ratio``).
It is **never** a verdict alone: the loss must be getting worse too, its level above its best by

.. math::

    m_t - b_t > \max\big(\log 1.25,\ 6\,\sigma_s\big)

(:math:`m_t, b_t, \sigma_s` of :class:`~lrkit.doctor.signs.Track`), a lower bar than
:class:`~lrkit.doctor.signs.LossRise`'s, so that an explosion is caught before the loss doubles
but a gradient norm that rises while the loss is at or near its best is no alarm. **Diverging**
when both hold for ``patience`` consecutive steps. Onset: the step after the best loss level's
median window centre (the loss began rising there).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Observation, Sign, Track, grad_reference
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["GradientExplosion", "grad_reference", "loss_getting_worse"]

WORSE_RATIO = 1.25  # the loss level above its best by at least this factor ...
WORSE_Z = 6.0  # ... and this many noise sds of the level: the run is getting worse


def loss_getting_worse(track: Track) -> bool:
    """The loss level is above its best by ``max(log 1.25, 6 sigma_s)``: the run is getting worse."""
    if math.isinf(track.best) or math.isnan(track.level):
        return False
    return track.level - track.best > max(math.log(WORSE_RATIO), WORSE_Z * track.sigma_short())


class GradientExplosion(Sign):
    """``diverging`` when the gradient norm exploded against its running reference *and* the loss
    is getting worse (see the module docstring).

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=10)
        >>> for t in range(40):   # the loss at its best while the gradient norm rises 100x: no alarm
        ...     d = doc.observe(t, 1.0 / (1 + t), grad_norm=0.01 * 1.2 ** t)
        >>> d.verdict
        'healthy'
        >>> for t in range(40, 50):   # it explodes and the loss rises by half: diverging
        ...     d = doc.observe(t, 0.04, grad_norm=1e4)
        >>> first = doc.history[0]
        >>> first.verdict, first.evidence["grad_norm_ratio"] > 10
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
        ref_cur = grad_reference(t) if t.gn.n and loss_getting_worse(t) else None  # the cheap test first
        if ref_cur is not None:
            ref, cur = ref_cur
            if ref > 0 and cur > self.config["grad_ratio"] * ref:
                ev = t.base_evidence()
                ev["grad_norm_ratio"] = cur / ref
                ev["grad_norm_reference"] = ref
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
