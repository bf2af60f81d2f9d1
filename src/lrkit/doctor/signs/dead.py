r"""Sign ``diverging``: the network died -- every input now gets the same output.

Too large a step can kill a network instead of blowing its loss up: its ReLUs switch off (or its
units saturate) and its output stops depending on the input. The loss then settles at what a
constant prediction scores -- a plateau, or even a *decrease* where the untrained model scored
far worse (unscaled inputs) -- so no sign of the loss alone can tell it from a run that learned a
little and stalled, and the run trains on, dead, to its end. The framework adapters measure the
relative spread of the model's outputs over a batch every so often
(:func:`lrkit.collapse.output_spread`, reported as the metric ``output_spread``: a live model is
at 0.2-1.2 on the benchmark tasks, a dead one at 0 up to rounding). With :math:`s_k` the
measurements,

.. math::

    s_{k-1} \le \epsilon,\quad s_k \le \epsilon,\quad \exists\, j < k-1:\ s_j > \epsilon,
    \qquad \epsilon = 10^{-6}\ (:data:`lrkit.collapse.COLLAPSED`)

-- two measurements in a row collapsed after one that was live (a model that *starts* collapsed, a
zero-initialised head, is not dead until it has lived) -- is ``diverging`` with evidence
``stuck``: its onset is the step of the last live measurement, so the guard rolls back to a state
from no later than that (every state after it may be the dead one) and lowers the LR.

Example:
    >>> from lrkit.doctor import Doctor
    >>> doc = Doctor(window=10)
    >>> for step in range(60):
    ...     spread = {} if step % 10 else {"output_spread": 0.5 if step < 30 else 0.0}
    ...     d = doc.observe(step, 2.0 - 0.01 * min(step, 30), lr=0.5, metrics=spread)
    >>> d.verdict, d.step, d.evidence["output_spread"]
    ('diverging', 20, 0.0)
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.collapse import COLLAPSED, OUTPUT_SPREAD
from lrkit.doctor.signs._base import Finding, Observation, Sign, finding_from, finding_state
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["Dead", "DEAD_CHECKS"]

#: collapsed measurements in a row that make a dead network
DEAD_CHECKS = 2


class Dead(Sign):
    """``diverging`` when the model's outputs stopped depending on its inputs (module docstring).

    State: the step of the last live measurement, the collapsed ones since (count and first step).
    """

    name = "dead"

    def reset(self) -> None:
        super().reset()
        self.last_live: int | None = None
        self.collapsed = 0
        self.first_collapsed: int | None = None

    def observe(self, obs: Observation) -> None:
        value = obs.metrics.get(OUTPUT_SPREAD)
        if value is None or not math.isfinite(value):
            return
        if value > COLLAPSED:
            self.last_live, self.collapsed, self.first_collapsed, self.finding = obs.step, 0, None, None
            return
        if self.last_live is None:
            return  # collapsed from the start (a zero-initialised head): not a death
        self.collapsed += 1
        if self.first_collapsed is None:
            self.first_collapsed = obs.step
        if self.collapsed >= DEAD_CHECKS:
            ev = self.track.base_evidence()
            ev.update(output_spread=float(value), last_live_step=float(self.last_live),
                      first_collapsed_step=float(self.first_collapsed), stuck=1.0)
            self.finding = Finding("diverging", self.last_live, ev)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        advice, _ = diverging_explanation(self.track, self.config, finding.onset, finding.evidence)
        ev = finding.evidence
        msg = (
            f"The network died: since step {int(ev['first_collapsed_step'])} every input gets the same output "
            f"(output spread {ev['output_spread']:.2g}; it was live at step {finding.onset}). Too large a step "
            "switched its units off; the loss sits at what a constant prediction scores, and training on "
            "cannot bring it back."
        )
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {"dead": {"last_live": self.last_live, "collapsed": self.collapsed,
                         "first_collapsed": self.first_collapsed, "finding": finding_state(self.finding)}}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        self.reset()
        d = s.get("dead")
        if d:
            self.last_live = None if d["last_live"] is None else int(d["last_live"])
            self.collapsed = int(d["collapsed"])
            self.first_collapsed = None if d["first_collapsed"] is None else int(d["first_collapsed"])
            self.finding = finding_from(d["finding"])
