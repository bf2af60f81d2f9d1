"""Every examples/autopilot_<framework>.py runs to the end at a small size."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "torch": ("torch",),
    "lightning": ("lightning",),
    "transformers": ("transformers",),
    "keras": ("keras",),
    "jax": ("jax", "optax"),
}


@pytest.mark.slow
@pytest.mark.parametrize("framework", sorted(EXAMPLES))
def test_example_runs(framework, tmp_path):
    script = ROOT / "examples" / f"autopilot_{framework}.py"
    assert script.exists(), f"{script.name} is missing"
    for module in EXAMPLES[framework]:
        pytest.importorskip(module)
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", KERAS_BACKEND="torch")
    report = ["--report", str(tmp_path / "report")]  # write_autopilot_report takes every framework's autopilot
    out = subprocess.run([sys.executable, str(script), "--steps", "60", *report], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "lrkit autopilot: peak LR" in text, text[-2000:]
    assert "final validation loss" in text
    page = (tmp_path / "report" / "report.html").read_text()
    assert "lrkit autopilot" in page and 'id="autopilot-run"' in page and "steps flown" in page


@pytest.mark.slow
def test_the_torch_example_flies_muon_and_adamw_as_one_optimizer():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "autopilot_torch.py"), "--steps", "200",
                          "--optimizer", "muon"], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "(muon)" in text.split("lrkit autopilot: peak LR", 1)[1].splitlines()[0], text[-2000:]
    final = float(text.split("final validation loss ", 1)[1].split()[0])
    assert final < 0.35, text[-2000:]  # 0.25 here; the untrained model is at 2.3

