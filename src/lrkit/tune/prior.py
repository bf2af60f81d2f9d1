r"""Where lrkit's search starts and how far it looks: the :class:`Prior`.

A prior is three numbers in :math:`x = \log_{10}\eta`: the centre :math:`x_0`, the exploration
step :math:`h` (decades) and the interval :math:`[x_{lo}, x_{hi}]`. From a range test
(:class:`~lrkit.finder.result.FinderResult`) the centre is its suggestion and the interval runs
from 2 decades below to 1.5 above (the finder's worst misses on the benchmark are within a
decade); without one, the centre is the optimizer family's rule of thumb
(:func:`lrkit.scaling.default_lr`) or the middle of the range, and the step is a whole decade.

Example:
    >>> p = Prior.from_range(1e-5, 1e-1)
    >>> round(p.center, 6), p.step, (p.low, p.high)
    (0.001, 1.0, (1e-05, 0.1))
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Prior", "check_range"]


def _positive(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be a finite learning rate > 0, got {value!r}")
    return float(value)


def check_range(low: Any, high: Any) -> tuple[float, float]:
    """``(low, high)`` as floats; ``ValueError`` naming the bound unless ``0 < low < high``.

    Example:
        >>> check_range(1e-4, 1e-1)
        (0.0001, 0.1)
    """
    lo, hi = _positive("low", low), _positive("high", high)
    if lo >= hi:
        raise ValueError(f"the LR range needs low < high, got low={lo:g} >= high={hi:g}")
    return lo, hi


@dataclass(frozen=True)
class Prior:
    """Centre, step (decades) and interval of lrkit's line search, plus what it cost to learn.

    Attributes:
        center: the first LR to try. step: the exploration step in decades.
        low, high: the interval searched. source: ``"finder"``, ``"family"`` or ``"range"``.
        cost_steps: optimizer steps already spent to learn it (the range test and its
            verification runs), counted in a study's budget.
        batch_size, family: the batch size the centre was found at and the optimizer family;
            a search over batch sizes moves the centre with :func:`lrkit.scaling.scale_lr`.
    """

    center: float
    step: float
    low: float
    high: float
    source: str = "range"
    cost_steps: int = 0
    batch_size: int | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        check_range(self.low, self.high)
        _positive("center", self.center)
        if not (isinstance(self.step, (int, float)) and math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be a number of decades > 0, got {self.step!r}")
        object.__setattr__(self, "center", min(max(float(self.center), self.low), self.high))

    @classmethod
    def from_range(cls, low: float, high: float, *, family: str | None = None) -> "Prior":
        """No range test: the family's rule of thumb (if inside) or the geometric middle; step 1 decade."""
        lo, hi = check_range(low, high)
        center, source = math.sqrt(lo * hi), "range"
        if family is not None:
            from lrkit.scaling import default_lr

            guess = default_lr(family)
            if lo <= guess <= hi:
                center, source = guess, "family"
        return cls(center, 1.0, lo, hi, source, family=family)

    @classmethod
    def from_finder(cls, result: Any, *, low: float | None = None, high: float | None = None,
                    cost_steps: int | None = None, family: str | None = None) -> "Prior":
        """From a :class:`~lrkit.finder.result.FinderResult`: centre at its suggestion, step half a decade."""
        s = _positive("finder suggestion", getattr(result, "suggestion", None))
        lo = s / 100.0 if low is None else _positive("low", low)
        hi = s * 10 ** 1.5 if high is None else _positive("high", high)
        check_range(lo, hi)
        if cost_steps is None:
            cost_steps = finder_cost(result)
        return cls(s, 0.5, lo, hi, "finder", int(cost_steps), getattr(result, "batch_size", None), family)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Prior":
        return cls(**{k: d[k] for k in ("center", "step", "low", "high", "source", "cost_steps") if k in d},
                   batch_size=d.get("batch_size"), family=d.get("family"))

    def center_for(self, batch_size: int | None) -> float:
        """The centre moved to ``batch_size`` (linear rule for SGD, square root for adaptive ones).

        Example:
            >>> Prior(1e-3, 0.5, 1e-6, 1.0, batch_size=32, family="adam").center_for(128)
            0.002
        """
        if batch_size is None or self.batch_size is None or batch_size == self.batch_size:
            return self.center
        from lrkit.scaling import scale_lr

        return scale_lr(self.center, self.batch_size, int(batch_size), family=self.family or "unknown")


def finder_cost(result: Any) -> int:
    """Optimizer steps a range test spent: its recorded points plus its verification runs."""
    details = getattr(result, "details", {}) or {}
    return int(len(getattr(result, "lrs", ()))) + int(details.get("verify_steps_used", 0) or 0)
