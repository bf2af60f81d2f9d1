"""plot_diagnosis draws on the given axes and marks the onset."""
import doctest

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import lrkit.report.doctor_plot as doctor_plot  # noqa: E402
from lrkit.doctor import diagnose  # noqa: E402
from lrkit.report.doctor_plot import plot_diagnosis  # noqa: E402


def test_docstring_example_runs():
    failures, tried = doctest.testmod(doctor_plot)
    assert tried > 0 and failures == 0
    plt.close("all")


def test_marks_onset_and_detection_and_uses_given_axes():
    steps = list(range(300))
    loss = [2.3 * np.exp(-t / 30) + 0.1 if t < 200 else 0.1 * 1.1 ** (t - 200) for t in steps]
    log = {"step": steps, "loss": loss, "lr": [0.3] * 300, "val_loss": [x * 1.1 if t % 50 == 49 else None for t, x in enumerate(loss)]}
    d = diagnose(log)
    fig, ax = plt.subplots()
    out = plot_diagnosis(log, d, ax=ax)
    assert out is ax
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "loss" in labels and "val_loss" in labels and f"onset (step {d.step})" in labels
    onset = next(line for line in ax.get_lines() if line.get_label().startswith("onset"))
    assert onset.get_xdata()[0] == d.step
    assert ax.get_title().startswith("diverging")
    assert len(fig.axes) == 2  # the LR on a twin axis
    plt.close(fig)


def test_nan_losses_are_drawn_as_crosses_and_bad_diagnosis_rejected():
    log = {"step": [0, 1, 2, 3], "loss": [1.0, 0.8, float("nan"), 0.5]}
    d = diagnose(log)
    ax = plot_diagnosis(log, d)
    crosses = [line for line in ax.get_lines() if line.get_label() == "non-finite loss"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [2]
    with pytest.raises(ValueError, match="diagnosis must be a Diagnosis"):
        plot_diagnosis(log, "nan")
    plt.close("all")


def test_a_long_message_is_wrapped_into_the_figure():
    log = {"step": list(range(60)), "loss": [2.0 * 0.97 ** t for t in range(60)]}
    d = diagnose(log)
    d = type(d)("flat", 0, 10, {}, (), "word " * 200)  # a message far longer than a line
    fig, ax = plt.subplots(figsize=(8, 4))
    plot_diagnosis(log, d, ax=ax)
    lines = ax.get_title().splitlines()
    assert len(lines) == 3 and all(len(line) <= 13 * 8 for line in lines) and lines[-1].endswith("...")
    assert lines[0].startswith("flat: word word")
    plt.close(fig)
