"""The search plot: each trial's validation value against its learning rate.

Complete trials are dots (the best one a star), pruned trials crosses at the last value they
reported, trials the doctor stopped or that failed are red triangles along the top edge (they have
no usable value). The value axis turns logarithmic when the
values span more than a factor of 10. Takes an ``ax`` and returns it; imports matplotlib only when called.

Example:
    >>> from lrkit.tune.result import TrialRecord, TuneResult
    >>> trials = [TrialRecord(0, 1e-3, 0.5, "complete", 100), TrialRecord(1, 1e-1, None, "failed", 3),
    ...           TrialRecord(2, 1e-4, None, "pruned", 50, last_value=0.9)]
    >>> r = TuneResult(1e-3, 0.5, trials, None, "lrkit")
    >>> ax = plot_tune(r)
    >>> ax.get_xscale()
    'log'
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["plot_tune", "tune_png"]


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def plot_tune(result: Any, ax: Any = None) -> Any:
    """Draw a :class:`~lrkit.tune.result.TuneResult` on ``ax`` (a new figure if ``None``); return ``ax``."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.2))
    trials = [t for t in result.trials if t.lr is not None and t.state != "interrupted"]
    done = sorted((t for t in trials if t.state == "complete" and _finite(t.value)), key=lambda t: t.lr)
    pruned = [t for t in trials if t.state == "pruned" and not t.diverged and _finite(t.last_value)]
    bad = [t for t in trials if t not in done and t not in pruned and t.state in ("pruned", "failed", "complete")]
    values = [t.value for t in done] + [t.last_value for t in pruned]
    if done:
        ax.plot([t.lr for t in done], [t.value for t in done], "o", color="tab:blue", label=f"complete ({len(done)})")
    if pruned:
        ax.plot([t.lr for t in pruned], [t.last_value for t in pruned], "x", color="tab:orange", markersize=8,
                mew=2, label=f"pruned, last value ({len(pruned)})")
    log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 10
    if log_y:  # a diverging trial's loss would squash the valley
        ax.set_yscale("log")
        lo, hi = min(values), max(values)
        top = hi * 1.6
        ax.set_ylim(lo / 1.3, top * 1.3)
    elif values:
        lo, hi = min(values), max(values)
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
        top = hi + 0.15 * span
        ax.set_ylim(lo - 0.1 * span, top + 0.1 * span)
    else:
        top = 1.0
    if bad:
        ax.plot([t.lr for t in bad], [top] * len(bad), "v", color="tab:red", markersize=9,
                label=f"diverged or failed ({len(bad)})")
    if result.best_lr is not None and _finite(result.best_value):
        ax.plot([result.best_lr], [result.best_value], "*", color="tab:green", markersize=16,
                label=f"best {result.best_lr:.3g}")
        ax.axvline(result.best_lr, color="tab:green", alpha=0.4)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation " + ("metric" if result.direction == "maximize" else "loss"))
    spent = f", {result.run_equivalents:.2f} run-equivalents" if result.run_equivalents is not None else ""
    ax.grid(True, which="both", alpha=0.3)
    # The legend sits in one row above the axes, under the title: inside it covered trials (a pruned
    # one at a low LR sits exactly where "best" looks for room).
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=max(1, len(handles)), frameon=False, handletextpad=0.3, columnspacing=1.2)
    ax.set_title(f"lrkit tune ({result.strategy}): {result.n_trials} trials{spent}", pad=24)
    return ax


def tune_png(result: Any) -> bytes:
    """The plot of ``result`` as PNG bytes (a fresh figure, no pyplot state)."""
    import matplotlib.figure

    from lrkit.report.finder_plot import figure_png

    fig = matplotlib.figure.Figure(figsize=(8, 4.5))
    plot_tune(result, fig.add_subplot(1, 1, 1))
    return figure_png(fig)


def tune_report_html(result: Any, *, title: str = "lrkit tune report", png: bytes | None = None,
                     seed: int | None = None, extra: dict | None = None) -> str:
    """A self-contained HTML page: the best LR, the plot inline, every trial in a table; ``seed``
    and ``extra`` (e.g. the storage) go to the table of what produced it."""
    import base64
    import html

    png = tune_png(result) if png is None else png
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in result.table_rows()
    )
    summary = "<br>".join(html.escape(line) for line in result.summary().splitlines())
    body = (f"<p class=\"lead\">{summary}</p>\n"
            f"<img alt=\"validation value against LR\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">\n"
            "<h2>Trials</h2>\n<table><tr><th>#</th><th>lr</th><th>value</th><th>state</th><th>steps</th>"
            f"<th>note</th></tr>{rows}</table>")
    from lrkit.report import sections
    from lrkit.report.html import report_page

    lr = getattr(result, "recommended_lr", None) or result.best_lr
    parts = [body]
    if lr is not None:  # how to apply it, and what produced the page (shared with the other commands)
        parts.append(sections.apply_section(float(lr), "torch"))
    parts.append(sections.run_section(seed=seed, extra=extra))
    return report_page(title, parts)
