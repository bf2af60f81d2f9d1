"""`lrkit schedule SPEC`: through a real subprocess (exit codes, stderr, stdout JSON)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from lrkit import schedules as S


def lrkit(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "lrkit", "schedule", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def test_json_equals_torch_cosineannealinglr():
    torch = pytest.importorskip("torch")
    r = lrkit("cosine(base_lr=0.1, total_steps=100)", "--steps", "100", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["steps"] == 100 and len(out["lrs"]) == 100
    assert out["spec"] == "cosine(base_lr=0.1, total_steps=100, min_lr=0.0)"
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(100):
            expected.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
    np.testing.assert_allclose(out["lrs"], expected, rtol=1e-6, atol=1e-12)


def test_json_nested_spec_matches_the_python_api():
    spec = "warmup(schedule=multistep(base_lr=0.1, milestones=[30, 80]), warmup_steps=10, mode='cosine')"
    r = lrkit(spec, "--steps", "120", "--json")
    assert r.returncode == 0, r.stderr
    lrs = json.loads(r.stdout)["lrs"]
    expected = S.warmup(S.multistep(0.1, [30, 80]), 10, mode="cosine")(np.arange(120))
    np.testing.assert_array_equal(lrs, expected)


def test_table_is_the_default_output():
    r = lrkit("one_cycle(max_lr=0.1, total_steps=1000)")
    assert r.returncode == 0, r.stderr
    assert "one_cycle(max_lr=0.1, total_steps=1000" in r.stdout
    assert "total_steps: 1000" in r.stdout and "learning rate" in r.stdout
    assert len(r.stdout.splitlines()) <= 20


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "lr.png"
    r = lrkit("cyclic(base_lr=0.001, max_lr=0.01, step_size_up=50)", "--steps", "400", "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,needle", [
    (["cosin(base_lr=0.1)", "--steps", "5"], "unknown schedule 'cosin'; known schedules:"),
    (["cosine(base_lr=0.1, total_step=5)"], "unknown parameter 'total_step'"),
    (["cosine(base_lr=-1, total_steps=5)"], "base_lr must be a finite learning rate >= 0, got -1"),
    (["cosine(base_lr=0.1, total_steps=5", "--steps", "5"], "cannot parse"),
    (["cosine(base_lr=0.1, total_steps=5)", "--steps", "0"], "--steps must be a whole number >= 1"),
    (["cosine(base_lr=0.1, total_steps=5)", "--steps", "-3"], "--steps must be a whole number >= 1"),
    (["constant(lr=0.1)"], "constant has no end: pass --steps N"),
    (["__import__('os').system('echo hacked')"], "unsupported call"),
    (["cosine(base_lr=0.1, total_steps=5)", "--plot", "lr.txt"], "--plot: expected a .png file name"),
    (["scale(constant(lr=1e300), factor=1e300)", "--steps", "3"],
     "gives the learning rate inf at step 0; a learning rate must be a finite number"),
    (["scale(" * 1000 + "constant(0.1)" + ", factor=1)" * 1000, "--steps", "2"],
     "nests 1001 calls or lists inside one another; at most 100 are accepted"),
    (["scale(" * 150 + "constant(0.1)" + ", factor=1)" * 150, "--steps", "2"], "at most 100 are accepted"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = lrkit(*args)
    assert r.returncode == 2
    assert r.stdout == "" and "hacked" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrkit: error: ")
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_plot_function_takes_and_returns_ax():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from lrkit.report.schedule_plot import plot_schedule

    ax = Figure().add_subplot()
    s = S.warmup(S.cosine(0.1, 90), 10)
    assert plot_schedule(s, ax, steps=50, color="red") is ax
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), s(np.arange(50)))
    assert s.plot(Figure().add_subplot()).lines[0].get_xdata().size == 101  # total_steps + 1
    with pytest.raises(ValueError, match="steps"):
        plot_schedule(s, ax, steps=0)


def test_deep_dicts_and_non_finite_exports_are_refused():
    deep = S.constant(0.1).to_dict()
    for _ in range(150):
        deep = {"name": "scale", "params": {"schedule": deep, "factor": 1.0}}
    with pytest.raises(ValueError, match="nests more than 100 schedules inside one another"):
        S.from_dict(deep)
    pytest.importorskip("torch")
    import torch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="gives the learning rate inf at step 0; a learning rate must be a finite"):
        S.scale(S.cosine(1e300, 10), factor=1e300).to_torch(opt)


def test_version_is_the_packages():
    import re
    from pathlib import Path

    import lrkit

    r = subprocess.run([sys.executable, "-m", "lrkit", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == f"lrkit {lrkit.__version__}\n" and r.stderr == ""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == lrkit.__version__
