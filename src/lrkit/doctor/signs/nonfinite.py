"""Sign ``nan``: the loss, the gradient norm or the validation loss is not finite.

Immediate and sticky (non-finite weights do not heal): only ``Doctor.reset`` or
``Doctor.load_state_dict`` clear it. The Doctor asks :meth:`NonFinite.test` before the
:class:`~lrkit.doctor.signs.Track` sees the step (a non-finite loss has no log).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lrkit.doctor.signs._base import Finding, Sign, fmt_lr, scaled

__all__ = ["NonFinite"]


class NonFinite(Sign):
    """``nan`` at the first step with a non-finite loss, gradient norm or validation loss.

    Example:
        >>> from lrkit.doctor import Doctor
        >>> doc = Doctor(window=5)
        >>> doc.observe(0, 1.0).verdict, doc.observe(1, float("inf")).verdict, doc.observe(2, 1.0).verdict
        ('healthy', 'nan', 'nan')
    """

    name = "nonfinite"

    def reset(self) -> None:
        super().reset()
        self.step: int | None = None
        self.what = ""

    def test(self, step: int, loss: float, gn: float | None, vl: float | None, rising_since: int | None) -> bool:
        """Raise ``nan`` if one of the values is not finite; ``True`` when raised."""
        bad = None
        if not math.isfinite(loss):
            bad = f"loss is {loss}"
        elif gn is not None and not math.isfinite(gn):
            bad = f"gradient norm is {gn}"
        elif vl is not None and not math.isfinite(vl):
            bad = f"validation loss is {vl}"
        if bad is None:
            return False
        self.step, self.what = step, bad
        ev = self.track.base_evidence()
        ev["loss"] = loss
        if gn is not None:
            ev["grad_norm"] = gn
        if vl is not None:
            ev["val_loss"] = vl
        if rising_since is not None:
            ev["rising_since_step"] = float(rising_since)
        self.finding = Finding("nan", step, ev)
        return True

    def explain(self, finding: Finding, step: int) -> tuple[tuple[str, ...], str]:
        t = self.track
        advice = (
            scaled(t.lr, 10, "lower", t.lr_peak),
            "clip gradients (e.g. max norm 1.0)",
            "add warmup" if t.n < 2 * t.window else "check the data and the loss for inf/NaN (e.g. log(0), division by zero)",
            "with fp16, use bf16 or a loss scaler",
        )
        msg = f"the {self.what} at step {self.step}" + (f" (LR {fmt_lr(t.lr)})" if t.lr is not None else "")
        return advice, msg[0].upper() + msg[1:] + "."

    def state_dict(self) -> dict[str, Any]:
        return {"nan_step": self.step, "nan_what": self.what}

    def load_state_dict(self, s: Mapping[str, Any]) -> None:
        super().load_state_dict(s)
        self.step, self.what = s.get("nan_step"), s.get("nan_what", "")
