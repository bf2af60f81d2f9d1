"""The outcome of a search: :class:`TuneResult` and one :class:`TrialRecord` per trial.

Plain data built from the Optuna study; prints nothing. It describes itself
(:meth:`TuneResult.summary`, ``__rich__``), becomes JSON (:meth:`TuneResult.to_dict`) and draws
itself (:meth:`TuneResult.plot`, matplotlib imported only then).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TuneResult", "TrialRecord"]


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


@dataclass(frozen=True)
class TrialRecord:
    """One trial.

    Attributes:
        number: Optuna's trial number. lr: the learning rate tried.
        value: the objective's value (``None`` unless complete).
        state: ``"complete"``, ``"pruned"``, ``"failed"``, ``"running"``, ``"waiting"`` or
            ``"interrupted"`` (stopped by Ctrl-C or a dead worker and queued again).
        steps: optimizer steps it spent (``train_steps`` when complete, else the last step it
            reported). params: every parameter of the trial.
        reason: why it was pruned or failed (``"doctor"``, ``"behind_best"``, ``"budget"``,
            ``"median"``, the error message, ...), else ``None``.
        diverged: the doctor saw it diverge or it returned NaN/inf.
        last_value: the last value it reported (for pruned trials).
    """

    number: int
    lr: float | None
    value: float | None
    state: str
    steps: int
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    diverged: bool = False
    last_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {"number": self.number, "lr": self.lr, "value": clean(self.value), "state": self.state,
                "steps": self.steps, "params": {k: clean(v) for k, v in self.params.items()},
                "reason": self.reason, "diverged": self.diverged, "last_value": clean(self.last_value)}


@dataclass(frozen=True, eq=False)
class TuneResult:
    """What :func:`lrkit.tune` found.

    Attributes:
        best_lr, best_value: the best complete trial's LR and value (``None`` if none completed).
        trials: every trial of the study, in order (:class:`TrialRecord`).
        study: the ``optuna.Study``.
        strategy: the strategy used. direction: ``"minimize"`` or ``"maximize"``.
        train_steps: steps of one full run (``None`` if unknown).
        run_equivalents: steps spent (trials plus the prior's range test) / ``train_steps``.
        prior: the lrkit prior as a dict, if any. best_params: every parameter of the best trial.
        recommended_lr: the LR to train with: the best complete trial's. (Fits of the valley around it
            -- a least-squares parabola in log-LR, or moving to its gentler side -- were measured and
            did worse on held-out tasks; see BENCHMARKS.md.)
        best_schedule: ``[(step, lr), ...]`` the best trial trained with when the LR changed
            during training (Ray's Population-Based Training), else ``None``.
    """

    best_lr: float | None
    best_value: float | None
    trials: list[TrialRecord]
    study: Any
    strategy: str
    direction: str = "minimize"
    train_steps: int | None = None
    run_equivalents: float | None = None
    prior: dict[str, Any] | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_schedule: list[tuple[int, float]] | None = None
    recommended_lr: float | None = None

    @property
    def n_trials(self) -> int:
        """Finished trials (complete, pruned, failed), interrupted ones not counted."""
        return sum(t.state in ("complete", "pruned", "failed") for t in self.trials)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def budget_leaders(self) -> list[tuple[TrialRecord, float]]:
        """Trials the budget stopped while ahead: each with the best complete trial's value at the
        same step (its last report at or before the step the stopped trial reached).

        The answer stays the best *complete* trial, since a run ahead at 70% of its length can
        still end behind (a higher LR falls faster first and settles higher); but a trial that
        was ahead at equal steps when the budget ran out says the search is not done: a larger
        budget may prefer it (:meth:`summary` says so). E.g. the best complete trial reported 0.20
        at step 200 and ended at 0.10, and a trial stopped by the budget at step 210 reported 0.15:
        it is listed, with 0.20.
        """
        best = self._best_frozen()
        if best is None:
            return []
        reports = sorted(best.intermediate_values.items())
        better = (lambda a, b: a < b) if self.direction == "minimize" else (lambda a, b: a > b)
        out = []
        for t in self.trials:
            if t.reason != "budget" or t.last_value is None or not math.isfinite(t.last_value):
                continue
            at = [v for s, v in reports if s <= t.steps and math.isfinite(v)]
            if at and better(t.last_value, at[-1]):
                out.append((t, at[-1]))
        return out

    def _best_frozen(self) -> Any:
        """The Optuna trial behind ``best_lr`` (``None`` without a study or a complete trial)."""
        if self.study is None or self.best_value is None:
            return None
        try:
            done = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        except Exception:  # noqa: BLE001 - a study that cannot be read (storage gone): nothing to say
            return None
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda t: t.value, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``best_lr, best_value, best_params, recommended_lr, n_trials, counts, strategy, direction,
        train_steps, run_equivalents, prior, study_name, trials, budget_leaders`` (trial numbers, see
        :meth:`budget_leaders`)."""
        return {
            "best_lr": self.best_lr, "best_value": self.best_value, "best_params": self.best_params,
            "recommended_lr": self.recommended_lr,
            "n_trials": self.n_trials, "counts": self.counts(), "strategy": self.strategy,
            "direction": self.direction, "train_steps": self.train_steps,
            "run_equivalents": None if self.run_equivalents is None else round(self.run_equivalents, 4),
            "prior": self.prior, "study_name": getattr(self.study, "study_name", None),
            "best_schedule": self.best_schedule,
            "trials": [t.to_dict() for t in self.trials],
            "budget_leaders": [t.number for t, _ in self.budget_leaders()],
        }

    def summary(self) -> str:
        """A few lines: the best LR, how many trials ended how, what went wrong."""
        c = self.counts()
        lines = [f"best LR: {_fmt(self.best_lr)}  ({self.direction[:3]} value {_fmt(self.best_value)}, "
                 f"strategy {self.strategy})"]
        parts = [f"{c.get(s, 0)} {s}" for s in ("complete", "pruned", "failed") if c.get(s)]
        if c.get("interrupted"):
            parts.append(f"{c['interrupted']} interrupted and queued again")
        lines.append(f"trials: {self.n_trials} finished" + (f" ({', '.join(parts)})" if parts else ""))
        if self.run_equivalents is not None:
            lines.append(f"compute: {self.run_equivalents:.2f} training-run equivalents "
                         f"(runs of {self.train_steps} steps)")
        failed = [t for t in self.trials if t.state == "failed"]
        if failed:
            lines.append(f"{len(failed)} trial(s) failed and the study went on: " + "; ".join(
                f"#{t.number} lr={_fmt(t.lr)}: {t.reason}" for t in failed[:3]) + (" ..." if len(failed) > 3 else ""))
        for t, theirs in self.budget_leaders()[:3]:
            lines.append(f"trial #{t.number} (lr {_fmt(t.lr)}) was ahead when the budget stopped it: {_fmt(t.last_value)} "
                         f"at step {t.steps}, the best trial {_fmt(theirs)} there; a larger budget may prefer it")
        if self.best_lr is None:
            lines.append("no trial completed: widen the range, lower the LR, or check the objective")
        return "\n".join(lines)

    def table_rows(self) -> list[tuple[str, ...]]:
        """``(number, lr, value, state, steps, reason)`` strings, one per trial."""
        return [(str(t.number), _fmt(t.lr), _fmt(t.value if t.value is not None else t.last_value),
                 t.state, str(t.steps), t.reason or "") for t in self.trials]

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"lrkit tune ({self.strategy}): best LR {_fmt(self.best_lr)}")
        for name in ("#", "lr", "value", "state", "steps", "note"):
            table.add_column(name, justify="right" if name in ("#", "lr", "value", "steps") else "left")
        for row in self.table_rows():
            style = "bold green" if self.best_lr is not None and row[0] == str(self._best_number()) else None
            table.add_row(*row, style=style)
        return table

    def _best_number(self) -> int | None:
        best = [t for t in self.trials if t.state == "complete" and t.lr == self.best_lr and t.value == self.best_value]
        return best[0].number if best else None

    def plot(self, ax: Any = None) -> Any:
        """Value against LR (log x), pruned and failed trials marked; returns the matplotlib ``ax``.

        See :func:`lrkit.report.tune_plot.plot_tune`.
        """
        from lrkit.report.tune_plot import plot_tune

        return plot_tune(self, ax=ax)
