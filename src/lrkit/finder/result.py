"""The result of an LR range test: the curve, the suggestion, the classic rules, and the band.

:class:`FinderResult` is plain data (NumPy arrays, floats, dicts). It prints nothing; it knows how to
describe itself (:meth:`FinderResult.summary`, ``repr``, ``__rich__`` for a table in a terminal or
notebook without the core importing rich), how to become JSON (:meth:`FinderResult.to_dict`,
:meth:`FinderResult.to_json`) and how to draw itself (:meth:`FinderResult.plot`, matplotlib imported
only then).

The band :math:`[\\eta_{lo}, \\eta_{hi}]` is the suggestion method's uncertainty: learning rates it
considers about as good as the suggestion :math:`\\eta^*`, with
:math:`\\eta_{lo} \\le \\eta^* \\le \\eta_{hi}` in the usual case. With verification it is the
spread of the short candidate runs that scored within noise of the best, carried to the full run
like the suggestion and widened by what short runs cannot know
(:data:`lrkit.finder.suggest.FULL_RUN_SPREAD`): about an 80% interval for the full run's best LR
(BENCHMARKS.md: a grid oracle's LR inside it in 56 of 60 held-out runs).

Example:
    >>> import numpy as np
    >>> r = FinderResult(lrs=np.array([1e-3, 1e-2, 1e-1]), losses=np.array([2.0, 1.5, 3.0]),
    ...                  smoothed_losses=np.array([2.0, 1.7, 2.2]), suggestion=1e-2, method="steepest",
    ...                  rules={"steepest": 1e-2, "valley": None}, band=(5e-3, 2e-2))
    >>> r.to_dict()["suggestion"]
    0.01
    >>> print(r.summary().splitlines()[0])
    suggested LR: 0.01  (method: steepest, band 0.005 .. 0.02)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FinderResult"]


def _jsonable(value: Any) -> Any:
    """Plain-JSON version of ``value``: arrays to lists, NumPy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


#: what a verification's candidates were scored by (``details["score"]``): the trainer's
#: ``evaluate()``, its ``sample_loss()``, or the runs' own last training losses
SCORED_BY_VALIDATION, SCORED_BY_SAMPLE, SCORED_BY_TRAINING_LOSSES = (
    "evaluate()", "sample_loss()", "mean training loss, last third")
#: what the verification runs were scored on (``details["score"]``), in words
SCORED_ON = {
    SCORED_BY_VALIDATION: "the validation set",
    SCORED_BY_SAMPLE: "a fixed sample of the first training batches (no validation set given: pass one for a "
                      "score the runs have not trained on)",
    SCORED_BY_TRAINING_LOSSES: "their own last training losses (no validation set given: pass one)",
}


@dataclass(frozen=True, eq=False)
class FinderResult:
    """The outcome of :func:`lrkit.find_lr` (or :func:`lrkit.finder.range_test.find`).

    Attributes:
        lrs: learning rate of every recorded step of the range test.
        losses: raw training loss of every recorded step.
        smoothed_losses: bias-corrected EMA of ``losses``.
        suggestion: the suggested learning rate.
        method: the name of the method that produced ``suggestion``.
        rules: the classic rules' suggestions for comparison (``"steepest"``, ``"valley"``,
            ``"minimum_div_10"``, ... as returned by :func:`lrkit.finder.suggest.suggest`;
            ``None`` where a rule found nothing).
        band: ``(lo, hi)``, where the method places the full run's best learning rate (see above).
        details: method-specific information (JSON-ready values).
        stopped_early: the test stopped on divergence before ``num_iter`` steps.
        num_iter: the number of steps planned.
        batch_size: the batch size of the range test, if known.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestion: float
    method: str
    rules: dict[str, float | None] = field(default_factory=dict)
    band: tuple[float, float] = (math.nan, math.nan)
    details: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    num_iter: int = 0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        lrs = np.asarray(self.lrs, dtype=np.float64)
        losses = np.asarray(self.losses, dtype=np.float64)
        smoothed = np.asarray(self.smoothed_losses, dtype=np.float64)
        if not (lrs.ndim == losses.ndim == smoothed.ndim == 1 and len(lrs) == len(losses) == len(smoothed)):
            raise ValueError(
                "lrs, losses and smoothed_losses must be 1-D arrays of the same length, got shapes "
                f"{lrs.shape}, {losses.shape} and {smoothed.shape}"
            )
        object.__setattr__(self, "lrs", lrs)
        object.__setattr__(self, "losses", losses)
        object.__setattr__(self, "smoothed_losses", smoothed)
        object.__setattr__(self, "suggestion", float(self.suggestion))
        object.__setattr__(self, "band", (float(self.band[0]), float(self.band[1])))

    # -- data ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Keys: ``suggestion``, ``method``, ``band`` (``[lo, hi]``), ``rules``, ``lrs``, ``losses``,
        ``smoothed_losses``, ``stopped_early``, ``num_iter``, ``num_points``, ``batch_size``,
        ``details``. Non-finite numbers become ``null``.
        """
        return _jsonable(
            {
                "suggestion": self.suggestion,
                "method": self.method,
                "band": list(self.band),
                "rules": dict(self.rules),
                "lrs": self.lrs,
                "losses": self.losses,
                "smoothed_losses": self.smoothed_losses,
                "stopped_early": self.stopped_early,
                "num_iter": self.num_iter,
                "num_points": len(self.lrs),
                "batch_size": self.batch_size,
                "details": dict(self.details),
            }
        )

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a strict JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    # -- text ------------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str]]:
        rows = [("suggested LR", _fmt(self.suggestion)), ("method", self.method),
                ("band", f"{_fmt(self.band[0])} .. {_fmt(self.band[1])}")]
        rows += [(f"rule: {name}", _fmt(lr)) for name, lr in self.rules.items()]
        unc = self.details.get("uncertainty") or {}
        if unc.get("band_decades") is not None or unc.get("rules_spread_decades") is not None:
            def dec(v: Any) -> str:
                return "-" if v is None else f"{v:.2f}"

            rows.append(("uncertainty", f"band {dec(unc.get('band_decades'))} decades, "
                         f"classic rules disagree by {dec(unc.get('rules_spread_decades'))} decades"))
        stop = self.details.get("stop_reason")
        rows.append(("range test", f"{len(self.lrs)}/{self.num_iter} steps, "
                     f"lr {_fmt(self.lrs[0] if len(self.lrs) else None)} .. "
                     f"{_fmt(self.lrs[-1] if len(self.lrs) else None)}"
                     + (f" ({stop})" if stop else "")))
        cost = self.details.get("cost_steps")
        if cost is not None:
            used = int(self.details.get("verify_steps_used") or 0)
            budget = (self.details.get("grid") or {}).get("budget_steps")
            rows.append(("cost", f"{cost} optimizer steps (range test {cost - used}, verification {used}"
                         + (f" of at most {budget}" if budget is not None else "") + ")"))
        scored = SCORED_ON.get(self.details.get("score"))
        if scored is not None and self.details.get("candidates"):
            rows.append(("verification", f"{len(self.details['candidates'])} short runs of "
                         f"{self.details.get('verify_steps', '?')} steps, scored on {scored}"))
        plan = self.details.get("budget") or {}
        if plan and not plan.get("sized_by_train_steps"):
            rows.append(("budget", f"at most {plan['max_steps']} steps, not sized to your run; pass train_steps= "
                         "(the length of your run) to keep the finder within 30% of it"))
        if self.batch_size is not None:
            rows.append(("batch size", str(self.batch_size)))
        shape = self.details.get("run_shape") or {}
        if shape.get("epochs") is not None or shape.get("params_per_example") is not None:
            parts = ([f"{shape['epochs']:.3g} passes over the training set"] if shape.get("epochs") is not None else [])
            if shape.get("params_per_example") is not None:
                parts.append(f"{shape['params_per_example']:.3g} trainable parameters per example")
            factor = self.details.get("many_epochs_factor")
            rows.append(("run", ", ".join(parts) + (f" (many epochs: the answer divided by a further {factor:g})"
                                                    if factor else "")))
        for text in self.details.get("warnings") or ():
            rows.append(("warning", text))
        if self.details.get("family") == "unknown":
            rows.append(("optimizer family", "unknown (the widest range and generic caps were used); "
                         "name it with family='adam' or another of lrkit.scaling.FAMILIES"))
        return rows

    def summary(self) -> str:
        """A few lines of text: the suggestion, its band, the classic rules, how the test went."""
        lines = [f"suggested LR: {_fmt(self.suggestion)}  (method: {self.method}, "
                 f"band {_fmt(self.band[0])} .. {_fmt(self.band[1])})"]
        if self.rules:
            lines.append("classic rules: " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.rules.items()))
        lines += [f"{key}: {value}" for key, value in self._rows()[3 + len(self.rules):]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        rules = ", ".join(f"{k}={_fmt(v)}" for k, v in self.rules.items())
        return (f"FinderResult(suggestion={_fmt(self.suggestion)}, method={self.method!r}, "
                f"band=({_fmt(self.band[0])}, {_fmt(self.band[1])}), rules={{{rules}}}, "
                f"points={len(self.lrs)}/{self.num_iter}, stopped_early={self.stopped_early})")

    def __rich__(self) -> Any:
        """A rich ``Table`` (rich is imported only when a rich console asks for it)."""
        from rich.table import Table

        table = Table(title="lrkit LR finder", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for key, value in self._rows():
            table.add_row(key, value)
        return table

    # -- plot ------------------------------------------------------------------------------
    def plot(self, ax: Any = None, *, show_rules: bool = True) -> Any:
        """Loss against LR (log x), suggestion marked, band shaded; returns the matplotlib ``ax``.

        See :func:`lrkit.report.finder_plot.plot_finder`.
        """
        from lrkit.report.finder_plot import plot_finder

        return plot_finder(self, ax=ax, show_rules=show_rules)
