"""Plot a diagnosed run: the loss (and LR, validation loss when logged) with the onset marked."""
from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from lrkit.doctor.core import Diagnosis
from lrkit.doctor.logs import read_log

__all__ = ["plot_diagnosis"]

_COLOURS = {"healthy": "tab:green", "converged": "tab:green", "overfitting": "tab:cyan", "flat": "tab:olive",
            "fluctuating": "tab:orange", "diverging": "tab:red", "nan": "purple"}


def plot_diagnosis(records: Any, diagnosis: Diagnosis, ax: Any = None) -> Any:
    """Draw the loss curve with the problem's onset and detection marked; return ``ax``.

    The loss (and ``val_loss`` when logged) use a log y-axis when all values are positive; the
    LR, when logged, goes on a twin axis. A vertical band spans from the onset
    (``diagnosis.step``) to the detection (``diagnosis.detected_at``); the title carries the
    verdict. Non-finite losses are drawn as crosses at the top of the axis.

    Args:
        records: :class:`~lrkit.doctor.logs.LogRecords` or anything :func:`read_log` accepts.
        diagnosis: the :class:`~lrkit.doctor.core.Diagnosis` to show.
        ax: a matplotlib ``Axes`` to draw on (a new figure is made when ``None``).

    Example:
        >>> from lrkit.doctor import diagnose
        >>> log = {"step": list(range(20)), "loss": [1.0 / (t + 1) for t in range(20)]}
        >>> ax = plot_diagnosis(log, diagnose(log))
        >>> ax.get_title().startswith("healthy")
        True
    """
    import matplotlib.pyplot as plt

    if not isinstance(diagnosis, Diagnosis):
        raise ValueError(f"plot_diagnosis: diagnosis must be a Diagnosis, got {type(diagnosis).__name__}")
    records = read_log(records)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    steps = records.step
    has = records.has("loss")
    loss = records.loss
    finite = has & np.isfinite(loss)
    ax.plot(steps[finite], loss[finite], color="tab:blue", lw=1.0, label="loss")
    positive = bool(np.all(loss[finite] > 0)) if finite.any() else False
    val = records.val_loss
    if val is not None:
        vm = records.has("val_loss") & np.isfinite(val)
        if vm.any():
            ax.plot(steps[vm], val[vm], color="tab:green", marker="o", ms=3, lw=1.0, label="val_loss")
            positive = positive and bool(np.all(val[vm] > 0))
    if positive:
        ax.set_yscale("log")
    bad = has & ~np.isfinite(loss)
    if bad.any():
        top = float(np.nanmax(loss[finite])) if finite.any() else 1.0
        ax.plot(steps[bad], np.full(int(bad.sum()), top), "x", color="purple", label="non-finite loss")
    colour = _COLOURS[diagnosis.verdict]
    if diagnosis.step is not None:
        ax.axvline(diagnosis.step, color=colour, ls="--", lw=1.5, label=f"onset (step {diagnosis.step})")
        if diagnosis.detected_at is not None and diagnosis.detected_at > diagnosis.step:
            ax.axvspan(diagnosis.step, diagnosis.detected_at, color=colour, alpha=0.15, label=f"detected at {diagnosis.detected_at}")
    ax.set_xlabel(f"step ({records.step_column})")
    ax.set_ylabel("loss")
    lr = records.lr
    if lr is not None and (records.has("lr") & np.isfinite(lr)).any():
        m = records.has("lr") & np.isfinite(lr)
        ax2 = ax.twinx()
        ax2.plot(steps[m], lr[m], color="gray", lw=1.0, alpha=0.7, label="lr")
        ax2.set_ylabel("learning rate", color="gray")
        if np.all(lr[m] > 0) and lr[m].max() / lr[m].min() > 20:
            ax2.set_yscale("log")
        elif lr[m].max() == lr[m].min():
            ax2.set_ylim(0, 2 * abs(float(lr[m][0])) or 1.0)
    # the message wrapped to the figure's width (about 13 characters an inch at 9 points), three lines at most
    width = max(40, int(13 * ax.figure.get_size_inches()[0]))
    title = textwrap.shorten(f"{diagnosis.verdict}: {diagnosis.message}", width=3 * width, placeholder=" ...")
    ax.set_title(textwrap.fill(title, width=width), fontsize=9, color=colour if not diagnosis.ok else "black")
    ax.legend(loc="upper right", fontsize=8)
    return ax
