r"""Sign ``fluctuating`` of the training loss: spikes far above the best that come back.

Checked at the window checks once ``W`` losses are in. In the last ``W`` steps at least a
fraction ``spike_frac`` of losses are *spikes*,

.. math::

    y_i - \max\big(b_t, \operatorname{median}(y_{t-W+1..t})\big) > \max(\log\rho,\; z\,\sigma/2)
    \quad\text{and}\quad \ell_i - e^{b_t} > r \cdot L_0,

in at least two separate episodes (a steady rise is one episode: that is diverging), the level
:math:`m_t` has come back below the diverging threshold, and the window made no significant
progress: the median of its first half minus the median of its second half is below
:math:`\max(\log(1 + \text{progress\_tol}),\ 2 \cdot 1.2533\,\sigma\sqrt{2/W})`.
Onset: the first spike in the window.

Losses logged while the LR was at least 1.5 times its value at the best level (a warm restart,
a cyclical schedule) are not counted as spikes unless they exceed :math:`\rho L_0` (worse than
the untrained model): a schedule that raises the LR raises the loss with it.

Also **fluctuating**: two or more ``diverging`` episodes of :class:`~lrkit.doctor.signs.LossRise`
within the last ``4 W`` steps that each ended with the level back within a factor :math:`\rho`
of the best (loss spikes that come back); onset: the first of them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from lrkit.doctor.signs._base import MEDIAN_EFF, Finding, Sign, Track, finding_from, finding_state, scaled
from lrkit.doctor.signs.diverging import LossRise

__all__ = ["LossSpikes"]


class LossSpikes(Sign):
    """``fluctuating`` when the loss keeps spiking and coming back without progress.

    Reads the recovered episodes of the :class:`~lrkit.doctor.signs.LossRise` sign it is given.
    """

    name = "loss_spikes"

    def __init__(self, track: Track, config: Mapping[str, Any], rise: LossRise) -> None:
        self.rise = rise
        super().__init__(track, config)

    def check(self) -> None:
        t = self.track
        W = t.window
        self.finding = None
        recent = [e for e in self.rise.recovered if e[1] >= t.n - 4 * W]
        if len(recent) >= 2:
            ev = t.base_evidence()
            ev["recovered_episodes"] = float(len(recent))
            self.finding = Finding("fluctuating", recent[0][0], ev)
            return
        if t.n < W or math.isinf(t.best):
            return
        y, steps = t.y.ordered()
        L0 = t.initial_level()
        sig = t.sigma
        spike_margin = max(math.log(t.diverge_ratio), t.noise_z * sig / 2.0)
        thr = max(t.best, float(np.median(y))) + spike_margin
        spikes = (y > thr) & (np.exp(y) - math.exp(t.best) > t.min_rise * L0)
        lrs, _ = t.lrs.ordered()
        with np.errstate(invalid="ignore"):
            raised = lrs >= 1.5 * t.best_lr  # nan (no LR logged) compares False
        # a spike while a schedule has the LR well above its level at the best is the schedule's,
        # unless the loss is worse than the untrained model
        spikes &= ~raised | (np.exp(y) > t.diverge_ratio * L0)
        frac = float(spikes.mean())
        h = W // 2
        progress = float(np.median(y[:h]) - np.median(y[h:]))
        prog_thr = max(math.log1p(self.config["progress_tol"]), 2 * MEDIAN_EFF * sig * math.sqrt(2.0 / W))
        ev = t.base_evidence()
        ev["spike_fraction"] = frac
        ev["window_log_progress"] = progress
        dm = np.diff(y)
        signs = np.sign(dm[dm != 0])
        ev["osc_index"] = float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0
        # separate spike episodes (runs of consecutive spikes); a steady rise is one episode
        episodes = int(spikes[0]) + int(np.sum(spikes[1:] & ~spikes[:-1]))
        ev["spike_episodes"] = float(episodes)
        level_back = t.level - t.best <= max(math.log(t.diverge_ratio), t.noise_z * MEDIAN_EFF * sig / math.sqrt(t.short))
        if frac >= self.config["spike_frac"] and episodes >= 2 and level_back and progress < prog_thr:
            self.finding = Finding("fluctuating", int(steps[int(np.argmax(spikes))]), ev)

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        ev = finding.evidence
        advice = (
            scaled(self.track.lr, 3, "lower", self.track.lr_peak),
            "use a decaying schedule (e.g. cosine) or a larger batch",
            "clip gradients (e.g. max norm 1.0)",
        )
        if "recovered_episodes" in ev:
            msg = (
                f"The loss is fluctuating: it rose far above its best and came back "
                f"{ev['recovered_episodes']:.0f} times in the last {4 * self.track.window} steps."
            )
        else:
            msg = (
                f"The loss is fluctuating without progress: {100 * ev.get('spike_fraction', 0):.0f}% of the last "
                f"{self.track.window} steps spiked far above its best."
            )
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {"spikes_finding": finding_state(self.finding)}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.finding = finding_from(s.get("spikes_finding"))
