"""The finder's progress bar: the range test, then the verification runs; silent off a terminal."""
from __future__ import annotations

import io

import pytest

from lrkit.finder.range_test import find
from lrkit.integrations._progress import _PhasedBar, progress_bar, watched

rich_progress = pytest.importorskip("rich.progress")


class Quadratic:
    def __init__(self):
        self.w, self.steps = 1.0, 0

    def snapshot(self):
        return self.w

    def restore(self, state):
        self.w = state

    def step(self, lr):
        self.steps += 1
        self.w -= lr * 2 * self.w
        return self.w ** 2 + 0.01

    def evaluate(self):
        return None


def test_the_bar_follows_the_verification_runs():
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with rich_progress.Progress(console=console, transient=True) as bar:
        phased = _PhasedBar(bar, bar.add_task("LR range test", total=40, lr=0.0, loss=0.0))
        trainer = Quadratic()
        find(watched(trainer, phased, verify_steps=5), start_lr=1e-4, end_lr=10.0, num_iter=40, progress=phased,
             verify_steps=5)
        tasks = {t.description: t for t in bar.tasks}
    assert tasks["LR range test"].completed >= 5
    verify = tasks["verifying candidates"]
    assert verify.total == 5 * 8  # at most MAX_TRIED candidates of verify_steps each
    # every step the verification took moved it (the range test's own steps did not)
    assert verify.completed == trainer.steps - tasks["LR range test"].completed > 0


def test_silent_off_a_terminal_and_for_other_callbacks(capsys):
    with progress_bar(10) as callback:  # pytest's captured stderr is not a terminal
        assert callback is None
    assert capsys.readouterr().err == ""  # not even an empty line
    t = Quadratic()
    assert watched(t, print, verify_steps=5) is t and watched(t, None) is t
