"""`lrkit demo`: the main job runs end to end on the built-in example."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.mark.slow
def test_demo_json_reports_the_runs_and_writes_the_pictures(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lrkit", "demo", "--out", str(tmp_path), "--steps", "60", "--seeds", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    lo, hi = summary["band"]
    assert summary["suggestion"] > 0 and lo <= summary["suggestion"] <= hi
    assert summary["default_lr"] == 1e-3
    assert 10 <= summary["finder_steps"] <= 20  # planned from --steps 60: a 10-step ramp, 5 checks of 2 steps
    for run in ("at_suggestion", "at_default"):
        assert 0.0 <= summary[run]["val_accuracy"] <= 1.0 and summary[run]["runs"] == 1
    # the autopilot trained it too, with no LR given: its own finder (counted) and its peak
    ap = summary["autopilot"]
    assert ap["runs"] == 1 and 0.0 <= ap["val_accuracy"] <= 1.0 and ap["peak_lr"] > 0
    assert 10 <= ap["finder_steps"] <= 18 and ap["val_loss"] < 2.3  # better than chance (ln 10)
    assert ap["rollbacks"] == 0 and ap["plateau_halvings"] >= 0  # a healthy run: nothing to roll back
    # the suggestion trains the example at least about as well as the rule of thumb
    assert summary["at_suggestion"]["val_loss"] <= summary["at_default"]["val_loss"] * 1.1
    for path in summary["files"].values():
        assert (tmp_path / path.split(str(tmp_path) + "/", 1)[1]).stat().st_size > 1000
    # the page shows what the terminal shows: training at the suggestion vs the default, and the schedules
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Training at the suggestion vs the default" in page and 'id="schedules"' in page
    assert f"suggested {summary['at_suggestion']['lr']:.4g}" in page and "How to apply it (torch)" in page


def test_demo_rejects_an_unknown_optimizer_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lrkit", "demo", "--out", str(tmp_path), "--optimizer", "lbfgs"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["lrkit: error: --optimizer must be 'adam' or 'sgd', got 'lbfgs'"]
