"""The search plot: every trial drawn, and the legend never covers one."""
from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from lrkit.report.tune_plot import plot_tune  # noqa: E402
from lrkit.tune.result import TrialRecord, TuneResult  # noqa: E402


def _result() -> TuneResult:
    # a pruned trial at the top left, where a legend placed inside the axes used to sit
    trials = [TrialRecord(0, 7.5e-4, None, "pruned", 50, last_value=0.95), TrialRecord(1, 4.2e-3, 0.072, "complete", 100),
              TrialRecord(2, 7.5e-3, 0.07, "complete", 100), TrialRecord(3, 1e-2, None, "pruned", 60, last_value=0.08),
              TrialRecord(4, 1.4e-2, 0.073, "complete", 100), TrialRecord(5, 1.0, None, "failed", 3)]
    return TuneResult(7.5e-3, 0.07, trials, None, "lrkit")


def test_every_kind_of_trial_is_in_the_legend_and_the_legend_is_outside_the_axes():
    import matplotlib.pyplot as plt

    ax = plot_tune(_result())
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["complete (3)", "pruned, last value (2)", "diverged or failed (1)", "best 0.0075"]
    renderer = fig.canvas.get_renderer()
    box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y0 >= area.y1 - 0.1 * box.height  # above the data area (its frameless padding aside)
    points = [ax.transData.transform(xy) for line in ax.get_lines() for xy in line.get_xydata()
              if line.get_linestyle() in ("None", "")]  # the trials' markers, not the best LR's line
    assert len(points) == 7  # six trials and the star
    assert not any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for x, y in points)
    title = ax.title.get_window_extent(renderer)
    assert title.y0 >= box.y1 - 0.1 * box.height  # and under the title, not over it
    plt.close(fig)
