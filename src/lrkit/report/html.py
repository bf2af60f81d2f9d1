"""A self-contained HTML report of an LR range test (no external resources: the plot is inline).

:func:`finder_report_html` returns the page as a string (pure, testable); :func:`write_finder_report`
writes it, with the plot also saved as a PNG next to it. The page holds: the suggestion and its
band, the classic rules side by side (each as a multiple of the suggestion), how the range test
went, the plot as a ``data:image/png;base64`` image, and the full curve as a collapsible table.
The page loads nothing from the network (no scripts, fonts or stylesheets from elsewhere).

Example:
    >>> import numpy as np
    >>> from lrkit.finder.result import FinderResult
    >>> lrs = np.geomspace(1e-4, 1, 20); loss = 2 - np.tanh(np.log10(lrs) + 2)
    >>> r = FinderResult(lrs=lrs, losses=loss, smoothed_losses=loss, suggestion=1e-2,
    ...                  method="steepest", rules={"valley": 3e-3}, band=(5e-3, 2e-2))
    >>> page = finder_report_html(r)
    >>> page.startswith("<!DOCTYPE html>"), "data:image/png;base64," in page
    (True, True)
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["finder_report_html", "write_finder_report", "html_page"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;
color:#1d2329;background:#fff;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem}
.lead{font-size:1.25rem;margin:.8rem 0} .lead b{color:#b3261e}
table{border-collapse:collapse;margin:.5rem 0} th,td{border:1px solid #d0d7de;padding:.3rem .7rem;text-align:left}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #d0d7de} .muted{color:#57606a;font-size:.9rem}
"""


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def _table(rows: list[list[Any]], header: list[str] | None = None, *, numeric_from: int = 1) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            cls = ' class="num"' if j >= numeric_from else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: str) -> str:
    """A complete HTML5 page with the report's inline stylesheet around ``body`` (trusted HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _plot_png(result: Any) -> bytes:
    import matplotlib.figure

    from lrkit.report.finder_plot import figure_png, plot_finder

    fig = matplotlib.figure.Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    plot_finder(result, ax=ax)
    return figure_png(fig)


def finder_report_html(result: Any, *, title: str = "lrkit LR finder report", png: bytes | None = None) -> str:
    """The report page of a :class:`~lrkit.finder.result.FinderResult` as one HTML string.

    Args:
        result: the finder result.
        title: the page title.
        png: the plot as PNG bytes; drawn with :func:`lrkit.report.finder_plot.plot_finder` when
            ``None``.
    """
    if png is None:
        png = _plot_png(result)
    sugg = result.suggestion
    lo, hi = result.band
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(
        f'<p class="lead">Suggested learning rate: <b id="suggestion">{html.escape(_fmt(sugg))}</b> '
        f"(method: {html.escape(result.method)}; band {html.escape(_fmt(lo))} .. {html.escape(_fmt(hi))})</p>"
    )
    rows = [["suggestion", sugg], ["band low", lo], ["band high", hi], ["method", result.method]]
    if result.batch_size is not None:
        rows.append(["batch size", result.batch_size])
    parts.append("<h2>Suggestion</h2>")
    parts.append(_table(rows, ["", "value"]))
    parts.append("<h2>Classic rules</h2>")
    rule_rows = []
    for name, lr in result.rules.items():
        ratio = (lr / sugg) if (lr is not None and sugg > 0 and math.isfinite(lr)) else None
        rule_rows.append([name, lr, None if ratio is None else f"{ratio:.2f}x"])
    parts.append(_table(rule_rows, ["rule", "learning rate", "relative to suggestion"]) if rule_rows
                 else "<p class=\"muted\">no classic rules computed</p>")
    parts.append("<h2>Range test</h2>")
    stop = result.details.get("stop_reason", "")
    first = float(result.lrs[0]) if len(result.lrs) else None
    last = float(result.lrs[-1]) if len(result.lrs) else None
    parts.append(_table([["steps recorded", f"{len(result.lrs)} of {result.num_iter}"], ["LR range", f"{_fmt(first)} .. {_fmt(last)}"],
                         ["stopped early", str(bool(result.stopped_early))], ["stop reason", stop]], ["", "value"]))
    b64 = base64.b64encode(png).decode("ascii")
    parts.append(f'<h2>Loss against learning rate</h2>\n<img id="plot" alt="LR range test plot" src="data:image/png;base64,{b64}">')
    details = {k: v for k, v in result.to_dict()["details"].items()}
    if details:
        parts.append("<h2>Details</h2>")
        parts.append(_table([[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in details.items()],
                            ["key", "value"], numeric_from=99))
    curve = [[i, float(a), float(b), float(c)] for i, (a, b, c) in
             enumerate(zip(result.lrs, result.losses, result.smoothed_losses))]
    parts.append("<details><summary>The recorded curve</summary>")
    parts.append(_table(curve, ["step", "lr", "loss", "smoothed loss"], numeric_from=0))
    parts.append("</details>")
    parts.append('<p class="muted">Generated by lrkit. The suggestion comes from a short range test: '
                 "check it on your full run.</p>")
    return html_page(title, "\n".join(parts))


def write_finder_report(result: Any, directory: str | Path, *, title: str = "lrkit LR finder report") -> Path:
    """Write ``report.html`` (self-contained) and ``finder.png`` into ``directory``; return the HTML path.

    Example:
        >>> import tempfile, numpy as np
        >>> from lrkit.finder.result import FinderResult
        >>> r = FinderResult(lrs=np.geomspace(1e-3, 1, 5), losses=[3, 2, 1, 2, 9],
        ...                  smoothed_losses=[3, 2.5, 2, 2, 4], suggestion=0.03, method="rule")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_finder_report(r, d)
        ...     path.name, sorted(p.name for p in path.parent.iterdir())
        ('report.html', ['finder.png', 'report.html'])
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"report directory {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    png = _plot_png(result)
    (directory / "finder.png").write_bytes(png)
    path = directory / "report.html"
    path.write_text(finder_report_html(result, title=title, png=png), encoding="utf-8")
    return path
