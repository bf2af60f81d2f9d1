r"""Sign ``diverging`` (too high, held): the LR was raised and held, and the loss got worse and stayed worse.

A run whose logged LR jumps by a factor :math:`r \ge 1.5` in one step at step :math:`s` and then
stays exactly there (a raise by hand, a misconfigured stage of a schedule: no schedule decays,
and no warmup, which keeps rising, holds its LR constant) is judged after :math:`H = 2W` held
steps: with :math:`m_s` the loss level (median of ``short`` log-losses) when the LR was raised and
:math:`m_t` the level now,

.. math::

    m_t - m_s > \max\big(\log 1.1,\; z\,\sigma_s\big)

(worse by 10% and by more than the noise of two levels) is ``diverging`` with onset :math:`s`,
even when the rise stays below the factor :math:`\rho` of :class:`LossRise` (a learning rate too
high to train well is not always one that blows up).

The validation loss, when it is observed, is the second witness -- often the first to show the
harm, since a raised LR can keep the training loss falling while the model it trains generalises
worse. With :math:`v_-` the median of the last three validation losses before the raise and
:math:`v_+` the median of the last (up to) three since it (at least two),

.. math::

    v_+ > 1.1\, v_-

is ``diverging`` with onset :math:`s` as well, without waiting for the :math:`2W` held steps: each
validation loss averages a whole set, so two of them are evidence a batch loss is not. The evidence names the raise
(``lr_rise`` = :math:`r`) and the guard's remedy is to undo it: the LR multiplier is divided by
:math:`r` (back to the LR that trained), not cut tenfold. A change of the LR ends the episode;
a loss that comes back below the margin clears the finding.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import (
    Finding, Observation, Sign, finding_from, finding_state, median, validation_loss,
)

__all__ = ["RaisedAndHeld", "RISE", "WORSE"]

#: a one-step LR jump of at least this factor starts watching.
RISE = 1.5
#: the level must be this factor above the level at the raise (and above the noise).
WORSE = 1.1
#: validation losses in each median (before the raise, and since it)
VAL_LEVEL = 3


class RaisedAndHeld(Sign):
    """``diverging`` when a held LR raise made the loss worse (see the module docstring).

    State: the LR before and after the raise, its step, the level then, the held steps.

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=10)
        >>> for t in range(200):
        ...     lr = 0.1 if t < 100 else 0.3
        ...     loss = 1.0 / (1 + t / 20) if t < 100 else 0.17 + 0.05 * min(1.0, (t - 100) / 10)
        ...     d = doc.observe(t, loss, lr=lr)
        >>> d.verdict, d.step, round(d.evidence["lr_rise"], 2)
        ('diverging', 100, 3.0)
    """

    name = "lr_held"

    def reset(self) -> None:
        super().reset()
        self.prev_lr: float | None = None
        self.raised_lr: float | None = None
        self.before_lr = math.nan
        self.raise_step: int | None = None
        self.level_before = math.nan
        self.held = 0
        self.val_recent: list[float] = []  # the last validation losses (before a raise, or since it)
        self.val_before = math.nan

    def observe(self, obs: Observation) -> None:
        t = self.track
        lr = obs.lr
        v = validation_loss(obs)
        if v is not None and not math.isfinite(v):
            v = None  # non-finite validation: the nan sign's, not evidence of a level
        if lr is None:
            return
        if self.raised_lr is not None and lr != self.raised_lr:
            self.raised_lr, self.raise_step, self.finding = None, None, None  # the LR moved: no longer held
            self.val_recent = []
        if self.raised_lr is None:
            if self.prev_lr is not None and self.prev_lr > 0 and lr >= RISE * self.prev_lr and t.n >= t.window:
                self.raised_lr, self.before_lr, self.raise_step = lr, self.prev_lr, obs.step
                self.level_before, self.held = t.level, 0
                self.val_before = median(self.val_recent) if self.val_recent else math.nan
                self.val_recent = []
        else:
            self.held += 1
        if v is not None:
            self.val_recent = (self.val_recent + [v])[-VAL_LEVEL:]
        if self.raised_lr is not None:
            self._judge()
        self.prev_lr = lr

    def _judge(self) -> None:
        """Worse since the raise: the training level after ``2W`` held steps, or the validation level."""
        t = self.track
        ev = {}
        if self.held >= 2 * t.window:
            excess = t.level - self.level_before
            margin = max(math.log(WORSE), t.noise_z * t.sigma_short() * math.sqrt(2.0))
            if excess > margin:
                ev["loss_ratio_to_before_rise"] = math.exp(excess)
        if len(self.val_recent) >= 2 and self.val_before > 0:
            ratio = median(self.val_recent) / self.val_before
            if ratio > WORSE:
                ev["val_loss_ratio_to_before_rise"] = ratio
        if ev:
            full = t.base_evidence()
            full.update(lr_rise=self.raised_lr / self.before_lr, lr_before_rise=self.before_lr, **ev)
            self.finding = Finding("diverging", self.raise_step, full)
        elif self.held >= 2 * t.window or len(self.val_recent) >= 2:
            self.finding = None

    def held_raise(self) -> tuple[int, float] | None:
        """``(step, r)`` of an LR raise by ``r`` that is still held now (whatever the loss says), else
        ``None``: what the guard undoes when the run diverges under it."""
        if self.raised_lr is None or self.raise_step is None or not self.before_lr > 0:
            return None
        return self.raise_step, self.raised_lr / self.before_lr

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        ev = finding.evidence
        advice = (
            f"go back to the LR before step {finding.onset} ({ev['lr_before_rise']:.3g}): it was raised "
            f"{ev['lr_rise']:.3g}x and held",
            "if the raise was a schedule's, lower its peak",
        )
        worse = []
        if "loss_ratio_to_before_rise" in ev:
            worse.append(f"the loss has been {ev['loss_ratio_to_before_rise']:.3g}x worse since")
        if "val_loss_ratio_to_before_rise" in ev:
            worse.append(f"the validation loss is {ev['val_loss_ratio_to_before_rise']:.3g}x what it was before")
        msg = (f"The LR was raised {ev['lr_rise']:.3g}x at step {finding.onset} and held, and "
               f"{' and '.join(worse)}: too high to train well.")
        return advice, msg

    def state_dict(self) -> dict[str, Any]:
        return {"held_prev_lr": self.prev_lr, "held_raised_lr": self.raised_lr,
                "held_before_lr": None if math.isnan(self.before_lr) else self.before_lr,
                "held_raise_step": self.raise_step,
                "held_level_before": None if math.isnan(self.level_before) else self.level_before,
                "held_steps": self.held, "held_finding": finding_state(self.finding),
                "held_val_recent": list(self.val_recent),
                "held_val_before": None if math.isnan(self.val_before) else self.val_before}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.prev_lr = s.get("held_prev_lr")
        self.raised_lr = s.get("held_raised_lr")
        self.before_lr = math.nan if s.get("held_before_lr") is None else float(s["held_before_lr"])
        self.raise_step = s.get("held_raise_step")
        self.level_before = math.nan if s.get("held_level_before") is None else float(s["held_level_before"])
        self.held = int(s.get("held_steps", 0))
        self.finding = finding_from(s.get("held_finding"))
        self.val_recent = [float(x) for x in s.get("held_val_recent", [])]
        self.val_before = math.nan if s.get("held_val_before") is None else float(s["held_val_before"])
