"""The range-test plot: loss against learning rate, the suggestion, its band and the classic rules.

Takes an ``ax`` and returns it; imports matplotlib only when called.

Example:
    >>> import numpy as np
    >>> from lrkit.finder.result import FinderResult
    >>> lrs = np.geomspace(1e-4, 1, 20); loss = 2 - np.tanh(np.log10(lrs) + 2)
    >>> r = FinderResult(lrs=lrs, losses=loss, smoothed_losses=loss, suggestion=1e-2,
    ...                  method="steepest", rules={"valley": 3e-3}, band=(5e-3, 2e-2))
    >>> ax = plot_finder(r)
    >>> ax.get_xscale()
    'log'
"""
from __future__ import annotations

import io
from typing import Any

__all__ = ["plot_finder", "figure_png"]

_RULE_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_finder(result: Any, ax: Any = None, *, show_rules: bool = True) -> Any:
    """Draw ``result`` (a :class:`~lrkit.finder.result.FinderResult`) on ``ax`` and return it.

    Raw losses are drawn faintly, the smoothed curve on top, the suggestion as a red line, the band
    :math:`[\\eta_{lo}, \\eta_{hi}]` shaded, (``show_rules``) each classic rule as a dotted line, and the
    result's warnings (a flat curve, no progress, an open edge) written in the lower left corner.
    A new figure is created when ``ax`` is ``None``.
    """
    import math

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.2))
    lrs, raw, smooth = result.lrs, result.losses, result.smoothed_losses
    ax.plot(lrs, raw, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
    ax.plot(lrs, smooth, color="tab:blue", linewidth=2, label="smoothed loss")
    lo, hi = result.band
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo > 0:
        ax.axvspan(lo, hi, color="tab:red", alpha=0.12, label=f"band {lo:.2g} .. {hi:.2g}")
    ax.axvline(result.suggestion, color="tab:red", linewidth=2,
               label=f"suggestion {result.suggestion:.3g} ({result.method})")
    if show_rules:
        for colour, (name, lr) in zip(_RULE_COLOURS, result.rules.items()):
            if lr is not None and math.isfinite(lr) and lr > 0:
                ax.axvline(lr, color=colour, linestyle=":", linewidth=1.5, label=f"{name} {lr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    if len(smooth):
        finite = smooth[[math.isfinite(v) for v in smooth]]
        raw_finite = raw[[math.isfinite(v) for v in raw]]
        if len(finite):
            low, start = min(float(finite.min()), float(raw_finite.min())), float(finite[0])
            top = start + 0.25 * max(start - low, 1e-12)
            ax.set_ylim(low - 0.05 * (top - low), top if top > low else None)
    ax.set_title("LR range test")
    warnings = list(result.details.get("warnings") or ())
    if warnings:  # a flat curve, no progress, an open edge, no verification: said on the picture too
        import textwrap

        text = "\n".join(textwrap.fill("! " + w, 70) for w in warnings)
        ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=7, color="tab:red", va="bottom", ha="left",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "tab:red"})
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return ax


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """The PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
