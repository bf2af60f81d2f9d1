"""Output paths that cannot be written are refused before any work: a finder, search or training run
that took hours must not be lost at its end to an unwritable --plot, --report, --save or --out."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

# the target records each time it is built: a refused command never builds it
TASK = textwrap.dedent(
    """
    import pathlib
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def task():
        pathlib.Path("built").write_text("the target was built")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 5, generator=g)
        y = x @ torch.randn(5, 1, generator=g)
        model = torch.nn.Linear(5, 1)
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                "loss_fn": torch.nn.MSELoss(), "train_loader": DataLoader(TensorDataset(x, y), batch_size=16)}
    """
)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "my_task.py").write_text(TASK)
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "log.csv").write_text("step,loss\n" + "".join(f"{i},{2.0 * 0.99 ** i}\n" for i in range(60)))
    return tmp_path


UNDER_A_FILE = os.path.join("a_file", "sub", "out.png")


@pytest.mark.parametrize("args, option", [
    (["find", "my_task.py:task", "--plot", UNDER_A_FILE], "--plot"),
    (["find", "my_task.py:task", "--report", "a_file"], "--report"),
    (["tune", "my_task.py:task", "--trials", "2", "--train-steps", "20", "--plot", UNDER_A_FILE,
      "--storage", "sqlite:///study.db"], "--plot"),
    (["tune", "my_task.py:task", "--trials", "2", "--train-steps", "20", "--report", os.path.join("a_file", "rep")],
     "--report"),
    (["autopilot", "my_task.py:task", "--steps", "20", "--save", os.path.join("a_file", "w.pt")], "--save"),
    (["autopilot", "my_task.py:task", "--steps", "20", "--report", "a_file"], "--report"),
    (["diagnose", "log.csv", "--plot", UNDER_A_FILE], "--plot"),
    (["demo", "--out", os.path.join("a_file", "demo")], "--out"),
])
def test_an_unwritable_output_is_refused_before_any_work(workdir, args, option):
    out = subprocess.run([sys.executable, "-m", "lrkit", *args], capture_output=True, text=True, cwd=workdir,
                         env=ENV, timeout=300)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lrkit: error: {option}") and "Traceback" not in out.stderr, lines
    assert out.stdout == ""
    assert not (workdir / "built").exists()  # the target was never built: nothing ran
    assert not (workdir / "study.db").exists()  # no study was opened


def test_the_directories_an_output_needs_are_made(workdir):
    out = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", "log.csv", "--plot", os.path.join("new", "deep", "d.png"),
                          "--report", os.path.join("new", "rep")], capture_output=True, text=True, cwd=workdir,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (workdir / "new" / "deep" / "d.png").stat().st_size > 0
    assert (workdir / "new" / "rep" / "report.html").exists()


def test_docstring_examples():
    import doctest

    import lrkit.cli._errors as errors

    result = doctest.testmod(errors)
    assert result.attempted > 0 and result.failed == 0
