"""The autopilot's report: the plan and why, the run as flown with every intervention marked.

One self-contained HTML page (the figure inline) from an :class:`~lrkit.autopilot.pilot.Autopilot`
or any framework adapter holding one as ``.pilot`` (``lrkit.torch.autopilot(...)``, the Lightning,
Hugging Face and Keras callbacks, ``lrkit.jax.autopilot(...)``):

* the plan: peak LR, schedule, the finder's answer and cost, and the reasons for each choice;
* the run: the training loss (and validation loss) on a log axis, the LR actually used on a twin
  axis -- the schedule, rewound and lowered by rollbacks, cut by plateaus -- with a dashed line at
  every intervention, and the doctor's verdict on the run now;
* every intervention in words, as logged.

Example:
    >>> import tempfile
    >>> from lrkit.autopilot import Autopilot, make_plan
    >>> from lrkit.schedules import constant
    >>> pilot = Autopilot(make_plan(family="sgd", train_steps=100, peak_lr=0.1, shape=constant(1.0)), guard=False)
    >>> for t in range(100):
    ...     _ = pilot.observe(t, 1.0 / (1 + t))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_autopilot_report(pilot, d)
    ...     "peak LR 0.1" in path.read_text()
    True
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from lrkit.autopilot.pilot import Autopilot
from lrkit.doctor.logs import LogRecords
from lrkit.report.sections import esc, figure_section, fmt, run_section, table, verdict_tag

__all__ = ["autopilot_report_html", "write_autopilot_report", "history_records"]

_KIND_COLOURS = {"rollback": "#cf222e", "skip": "#0969da", "plateau": "#bf8700", "gave_up": "#8250df",
                 "resume": "#57606a"}


def _pilot(obj: Any) -> Autopilot:
    pilot = obj if isinstance(obj, Autopilot) else getattr(obj, "pilot", None)
    if not isinstance(pilot, Autopilot):
        raise ValueError("autopilot report: expected an lrkit Autopilot or a framework autopilot holding one "
                         f"as .pilot (lrkit.torch.autopilot, the callbacks), got {type(obj).__name__}"
                         + ("" if pilot is not None or not hasattr(obj, "pilot") else " before training started"))
    return pilot


def history_records(pilot: Any) -> LogRecords:
    """The run as the autopilot recorded it, as :class:`~lrkit.doctor.logs.LogRecords` (``step``,
    ``loss``, ``lr``, ``val_loss``: what ``lrkit diagnose`` and :func:`~lrkit.report.doctor_plot.plot_diagnosis`
    read)."""
    h = _pilot(pilot).history
    steps = np.array(sorted(set(h.steps) | set(h.val_steps)), dtype=float)
    index = {int(s): i for i, s in enumerate(steps)}
    cols = {name: np.full(len(steps), np.nan) for name in ("loss", "lr", "val_loss")}
    present = {name: np.zeros(len(steps), dtype=bool) for name in cols}
    for name, xs, values in (("loss", h.steps, h.losses), ("lr", h.steps, h.lrs), ("val_loss", h.val_steps, h.val_losses)):
        for s, v in zip(xs, values):
            cols[name][index[s]] = v
            present[name][index[s]] = True
    return LogRecords(columns={"step": steps, **cols}, source="autopilot", present=present)


def _short_floats(text: str) -> str:
    """Long decimals in ``text`` at 4 significant digits (a schedule's repr, for reading).

    Example:
        >>> _short_floats("lrs=[0.06666666666666667, 1.0, 0.0]")
        'lrs=[0.06667, 1.0, 0.0]'
    """
    return re.sub(r"\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.4g}", text)


def _plan_section(pilot: Autopilot) -> str:
    plan = pilot.plan
    rows = [["family", plan.family], ["train steps", plan.train_steps], ["peak LR", plan.peak_lr],
            ["the autopilot's own peak", plan.auto_peak_lr], ["finder's answer (constant LR)", plan.finder_lr],
            ["finder's cost (steps)", plan.finder_cost_steps], ["warmup steps", plan.warmup_steps],
            ["schedule shape", f"{_short_floats(repr(plan.shape))} ({plan.shape_source})"],
            ["LR multiplier now", pilot.multiplier], ["plateau scale now", pilot.plateau_scale]]
    reasons = "".join(f"<li>{esc(r)}</li>" for r in plan.reasons)
    return ("<h2>The plan</h2>\n" + table(rows, ["", "value"], numeric_from=99, table_id="plan")
            + (f'\n<h3>Why</h3>\n<ul id="reasons">{reasons}</ul>' if reasons else ""))


def _run_figure(pilot: Autopilot, records: LogRecords) -> str:
    events = pilot.interventions

    def draw(ax: Any) -> None:
        from lrkit.report.doctor_plot import plot_diagnosis

        plot_diagnosis(records, pilot.doctor.diagnosis, ax=ax)
        seen: set[str] = set()
        for e in events:
            ax.axvline(e.step, color=_KIND_COLOURS.get(e.kind, "#57606a"), ls="--", lw=1.2,
                       label=None if e.kind in seen else e.kind)
            seen.add(e.kind)
        if events:
            ax.legend(fontsize=8, loc="upper right")

    note = ("Training loss (and validation loss) on the left axis, the LR actually used on the right; dashed "
            "lines mark the interventions listed below.")
    if len(records) < pilot.history.seen:
        note += f" Every {pilot.history.stride}th step of {pilot.history.seen} is drawn."
    return figure_section("The run", draw, alt="the run with the interventions marked", img_id="autopilot-run",
                          size=(8, 4.5), note=note)


def _sections(pilot: Any, command: str | None, seed: int | None = None) -> list[str]:
    p = _pilot(pilot)
    records = history_records(p)
    acts = p.interventions
    n = p.history.seen
    ok_if_none = "" if acts else ' class="ok"'
    lead = (f'<p class="lead">Peak LR {esc(fmt(p.plan.peak_lr))} over {p.plan.train_steps} steps ({esc(p.plan.family)}); '
            f"{n} steps flown, <b id=\"n-interventions\"{ok_if_none}>{len(acts)}</b> "
            f"intervention{'s' if len(acts) != 1 else ''}; the doctor now: {verdict_tag(p.doctor.diagnosis.verdict)}.</p>")
    parts = [lead, _plan_section(p)]
    if len(records):
        parts.append(_run_figure(p, records))
    rows = [[e.step, e.kind, e.message] for e in p.events]
    parts.append("<h2>Everything the autopilot did</h2>\n"
                 + (table(rows, ["step", "what", "in words"], numeric_from=99, table_id="events") if rows
                    else '<p id="events">Nothing: the plan was flown as made.</p>'))
    parts.append(run_section(command=command, seed=seed))
    return parts


def autopilot_report_html(pilot: Any, *, title: str = "lrkit autopilot", command: str | None = None,
                          seed: int | None = None) -> str:
    """The page (a string) for ``pilot``: see the module docstring."""
    from lrkit.report.html import report_page

    return report_page(title, _sections(pilot, command, seed))


def write_autopilot_report(pilot: Any, directory: str | Path, *, title: str = "lrkit autopilot",
                           command: str | None = None, seed: int | None = None) -> Path:
    """Write the self-contained ``report.html`` for ``pilot`` into ``directory`` (created if
    needed) and return its path."""
    from lrkit.report.html import write_report

    return write_report(directory, title, _sections(pilot, command, seed))
