"""The autopilot's run history (bounded, resumable) and its HTML report."""
from __future__ import annotations

import doctest
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrkit.autopilot.history as history_mod
import lrkit.report.autopilot_report as report_mod
from lrkit import schedules as S
from lrkit.autopilot import Autopilot, make_plan
from lrkit.autopilot.history import RunHistory
from lrkit.report.autopilot_report import autopilot_report_html, history_records, write_autopilot_report
from test_autopilot_core import Quadratic  # f(x) = x^2 by gradient descent, NaN losses injected by its clock


@pytest.mark.parametrize("module", [history_mod, report_mod])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(2, 64), n=st.integers(0, 3000), val_every=st.integers(1, 50))
def test_history_keeps_at_most_capacity_rows_evenly_spaced(capacity, n, val_every):
    h = RunHistory(capacity)
    for t in range(n):
        h.add(t, 1.0 / (t + 1), 0.01 * (t % 7), val_loss=float(t) if t % val_every == 0 else None)
    assert len(h) <= capacity and h.seen == n
    stride = h.stride
    assert stride & (stride - 1) == 0  # a power of two
    assert h.steps == list(range(0, n, stride))  # every stride-th step from the first
    assert n == 0 or n - 1 - h.steps[-1] < stride  # up to the end
    assert stride == 1 or n > capacity  # thinned only when it had to be
    assert all(h.losses[i] == 1.0 / (s + 1) for i, s in enumerate(h.steps))
    assert len(h.val_steps) <= capacity and all(v == s for s, v in zip(h.val_steps, h.val_losses))
    back = RunHistory.from_state(json.loads(json.dumps(h.state())))
    assert back.state() == h.state()


def test_history_rejects_a_capacity_that_cannot_thin():
    with pytest.raises(ValueError, match="capacity must be an int >= 2, got 1"):
        RunHistory(1)


def _flown(steps=300, nan_at=(100, 110)):
    plan = make_plan(family="sgd", train_steps=steps, peak_lr=0.1, shape=S.cosine(1.0, steps))
    q = Quadratic(nan_at=nan_at)
    pilot = Autopilot(plan).attach(q)
    lrs = []
    for t in range(steps):
        lrs.append(pilot.lr(t))
        pilot.observe(t, q.step(lrs[-1]), val_loss=q.x ** 2 + 1e-3 if t % 50 == 49 else None)
    return pilot, lrs


def test_the_report_shows_the_plan_the_run_as_flown_and_every_intervention(tmp_path):
    pilot, lrs = _flown()
    kinds = [e.kind for e in pilot.interventions]
    assert kinds[:2] == ["rollback", "rollback"]
    rec = history_records(pilot)
    # the LR the plot draws is the LR each step used: lowered after the second rollback
    assert np.allclose(rec.columns["lr"][rec.has("lr")], lrs)
    assert rec.has("val_loss").sum() == 6 and rec.has("loss").sum() == 300
    path = write_autopilot_report(pilot, tmp_path / "out")
    page = path.read_text()
    assert path.name == "report.html" and sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    assert re.search(rf'id="n-interventions">{len(kinds)}<', page)
    for e in pilot.events:
        assert e.message.replace("'", "&#x27;") in page
    for reason in pilot.plan.reasons:
        assert reason.replace("'", "&#x27;") in page
    imgs = re.findall(r'<img id="autopilot-run"[^>]*src="([^"]{40})', page)
    assert imgs and imgs[0].startswith("data:image/png;base64,")  # self-contained
    assert "http://" not in page and "https://" not in page.replace("https://github.com", "")


def test_a_resumed_run_reports_the_whole_run_and_a_framework_object_works_too(tmp_path):
    pilot, _ = _flown()
    resumed = Autopilot.from_state_dict(json.loads(json.dumps(pilot.state_dict())))
    assert resumed.history.state() == pilot.history.state()

    class Callback:  # what the framework adapters are: something holding the pilot as .pilot
        def __init__(self, p):
            self.pilot = p

    page = autopilot_report_html(Callback(resumed))
    assert "300 steps flown" in page and "resume" in page


def test_a_clean_run_reads_green_and_the_page_names_its_seed():
    """Nothing wrong: the lead's intervention count and verdict are green (class "ok"), not the
    red of a problem; the seed the run used is in the run table; the shape reads at 4 digits."""
    pilot, _ = _flown(steps=60, nan_at=())
    assert not pilot.interventions and pilot.doctor.diagnosis.verdict == "healthy"
    page = autopilot_report_html(pilot, seed=7)
    assert 'id="n-interventions" class="ok">0<' in page and '<b id="verdict" class="ok">healthy</b>' in page
    assert re.search(r"<td>seed</td>\s*<td>7</td>", page)
    warm = make_plan(family="adam", train_steps=300, peak_lr=0.1)  # warmup 15 of 300: 1/15 = 0.0666...
    page = autopilot_report_html(Autopilot(warm))
    assert "0.06667" in page and "0.0666666" not in page


def test_bad_input_names_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="expected an lrkit Autopilot or a framework autopilot holding one"):
        autopilot_report_html(object())

    class NotStarted:
        pilot = None

    with pytest.raises(ValueError, match="before training started"):
        autopilot_report_html(NotStarted())
    pilot, _ = _flown(steps=60, nan_at=())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_autopilot_report(pilot, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"  # nothing the user had is lost
