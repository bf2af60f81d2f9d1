r"""Sign ``diverging``: the loss blew up above chance level and came back only to chance.

With ``chance_loss`` :math:`c` (the loss of a model that learned nothing and predicts the
label prior: :math:`\ln K` for :math:`K` balanced classes with cross-entropy); or, without it,
with ``lr_ceiling`` when the last window trained above that LR (known to be too high, e.g. 4x the
autopilot's own peak), :math:`c` = the very first loss, taken at the initial weights (what a fresh
network scores: chance, for a classifier). A run whose LR is
far too high often blows up in its first steps and then *collapses*: its outputs stop depending
on the input, and the loss falls back from the blow-up to :math:`c` and stays there. Read without
the first steps (a log every 10 or 50 steps averages the blow-up into the first row), this looks
like a loss that decreases -- healthy -- or, once it sits still, like a flat run whose advice
would be to raise the LR. With :math:`S` the largest loss of the first window (a live callback
may have read the loss before step 1, at chance, ahead of the blow-up),
:math:`M` the current level and :math:`B` the best level (medians of ``short`` losses):

.. math::

    S \ge 1.5\,c,\qquad |M / c - 1| \le 0.1,\qquad B \ge 0.9\,c

after at least one window of observations: the run started above what a model that learned
nothing scores, and has never got clearly below it. Onset: the first step observed. A run that
starts at chance and stays there (an LR far too low) is not this sign's (``flat``), nor is one
that learned (its best is below chance).

Example:
    >>> from lrkit.doctor import Doctor
    >>> import math
    >>> doc = Doctor(window=10, chance_loss=math.log(2))
    >>> losses = [2.0, 1.2, 0.98, 0.95, 1.38, 1.17] + [0.72 + 0.02 * (-1) ** i for i in range(30)]
    >>> for i, loss in enumerate(losses):
    ...     d = doc.observe(10 * (i + 1), loss, lr=0.05)
    >>> d.verdict, round(d.evidence["level_ratio_to_chance"], 2)
    ('diverging', 1.01)
"""
from __future__ import annotations

import math

from lrkit.doctor.signs._base import Finding, Sign
from lrkit.doctor.signs.diverging import diverging_explanation

__all__ = ["AtChance"]

#: the first losses must reach this factor above chance (a blow-up, not an unlucky start)
ABOVE = 1.5
#: "at chance": the level within this relative distance of it; the best never below 1 - NEAR
NEAR = 0.1


class AtChance(Sign):
    """``diverging`` when the loss collapsed to chance level after a blow-up (module docstring)."""

    name = "at_chance"

    def check(self) -> None:
        t = self.track
        self.finding = None
        chance = self.config.get("chance_loss")
        if t.n < t.window or not t.first_window:
            return
        if chance is None:
            ceiling = self.config.get("lr_ceiling")
            if ceiling is None or not t.max_lr(t.window) > ceiling:
                return
            # above an LR known to be too high, the very first loss (initial weights: what a model
            # that learned nothing scores on this task) stands in for chance
            chance = t.first[0] + t.loss_floor
        c = chance - t.loss_floor
        if c <= 0:
            return
        start = max(t.first_window)
        level, best = math.exp(t.level), math.exp(t.best)
        if start >= ABOVE * c and abs(level / c - 1.0) <= NEAR and best >= (1.0 - NEAR) * c:
            ev = t.base_evidence()
            ev["chance_loss"] = float(chance)
            ev["start_ratio_to_chance"] = start / c
            ev["level_ratio_to_chance"] = level / c
            ev["stuck"] = 1.0
            self.finding = Finding("diverging", t.first_step, ev)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        advice, _ = diverging_explanation(self.track, self.config, finding.onset, finding.evidence)
        ev = finding.evidence
        msg = (
            f"The loss's first values reached {ev['start_ratio_to_chance']:.3g}x chance level "
            f"({ev['chance_loss']:.3g}, what a model that learned nothing scores) and have come back only to "
            f"chance ({ev['level_ratio_to_chance']:.3g}x): the LR blew the model up and it collapsed to "
            "predicting the label prior; raising the LR would be the wrong advice."
        )
        return advice, msg
