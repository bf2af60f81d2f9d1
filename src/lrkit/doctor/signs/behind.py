r"""Sign ``diverging``: trained above the LR ceiling and still behind a short run at an LR known to train.

Needs two facts about the run, both from the LR finder (the autopilot passes them):
``lr_ceiling`` (an LR known to be too high) and ``reference_run`` :math:`(k, R, \text{kind})`:
starting from this model's initial state, :math:`k` steps at an LR below the ceiling reached the
loss :math:`R` -- a validation loss (``kind="val"``) or the mean training loss of the last
steps (``kind="train"``). With :math:`B` the best the run has done so far (its lowest validation
loss, or its best training-loss level :math:`e^{b_t}`), the run is behind when

.. math::

    n \ge \max(4k,\ W),\qquad \max_{\text{last } W} \eta > \eta_{ceil},\qquad B > 1.25\,R

(with ``kind="val"``: at least two validation losses seen). Four times the steps at a higher LR
and still 25% worse than :math:`k` steps at the known one: the LR above the ceiling is what holds
the run back, whatever shape its curve has -- a network a 30x LR damaged in its first steps can
sit on a noisy level at twice its healthy loss that neither blows up nor stays flat, so no other
sign speaks (seen on diabetes/RMSprop). A *good* LR above the ceiling (the ceiling is an estimate)
passes the reference within a few :math:`k` steps and never shows this. Verdict ``diverging``
with evidence ``stuck`` (a guard goes back to a state from before the onset) and onset the first
step seen above the ceiling.

Example:
    >>> from lrkit.doctor import Doctor
    >>> doc = Doctor(window=10, lr_ceiling=0.1, reference_run=(10, 0.4, "train"))
    >>> for t in range(60):
    ...     d = doc.observe(t, 0.9 + 0.05 * (-1) ** t, lr=1.0)
    >>> d.verdict, round(d.evidence["behind_reference"], 2), d.evidence["stuck"]
    ('diverging', 2.12, 1.0)
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Observation, Sign, validation_loss
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["BehindReference", "BEHIND", "PATIENCE_RUNS"]

#: behind: the run's best this factor above the reference's loss
BEHIND = 1.25
#: judged only after this many times the reference's steps
PATIENCE_RUNS = 4


class BehindReference(Sign):
    """``diverging`` when a run above ``lr_ceiling`` is still behind ``reference_run`` (module docstring)."""

    name = "behind_reference"

    def reset(self) -> None:
        super().reset()
        self.best_val = math.inf
        self.n_val = 0
        self.above_since: int | None = None  # the first step seen above the ceiling

    def observe(self, obs: Observation) -> None:
        ref = self.config.get("reference_run")
        ceiling = self.config.get("lr_ceiling")
        if ref is None or ceiling is None:
            return
        if self.above_since is None and obs.lr is not None and obs.lr > ceiling:
            self.above_since = obs.step
        val = validation_loss(obs)
        if val is not None and math.isfinite(val):
            self.best_val = min(self.best_val, float(val))
            self.n_val += 1

    def check(self) -> None:
        self.finding = None
        ref = self.config.get("reference_run")
        ceiling = self.config.get("lr_ceiling")
        t = self.track
        if ref is None or ceiling is None or self.above_since is None:
            return
        steps, loss, kind = int(ref[0]), float(ref[1]), str(ref[2])
        if t.n < max(PATIENCE_RUNS * steps, t.window) or not t.max_lr(t.window) > ceiling:
            return
        if kind == "val":
            if self.n_val < 2:
                return
            best = self.best_val
        else:
            best = math.exp(t.best) + t.loss_floor
        if not best > BEHIND * loss:
            return
        ev = t.base_evidence()
        ev.update(reference_loss=loss, reference_steps=float(steps), run_best=best,
                  behind_reference=best / loss, lr_over_ceiling=t.max_lr(t.window) / ceiling, stuck=1.0)
        self.finding = Finding("diverging", self.above_since, ev)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        advice, _ = diverging_explanation(self.track, self.config, finding.onset, finding.evidence)
        ev = finding.evidence
        what = "validation loss" if str(self.config["reference_run"][2]) == "val" else "training loss"
        msg = (f"Since step {finding.onset} the LR has been above the ceiling known to train (now "
               f"{ev['lr_over_ceiling']:.3g}x it), and after {self.track.n} steps the best {what} is "
               f"{ev['run_best']:.4g}, {ev['behind_reference']:.3g}x what {int(ev['reference_steps'])} steps "
               f"at an LR below the ceiling reached ({ev['reference_loss']:.4g}): the LR is holding the "
               "run back (a network damaged by it, or one it cannot settle).")
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {"behind_best_val": None if math.isinf(self.best_val) else self.best_val,
                "behind_n_val": self.n_val, "behind_above_since": self.above_since}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        self.reset()
        v = s.get("behind_best_val")
        self.best_val = math.inf if v is None else float(v)
        self.n_val = int(s.get("behind_n_val", 0))
        self.above_since = s.get("behind_above_since")
