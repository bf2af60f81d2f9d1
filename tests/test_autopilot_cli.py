"""`lrkit autopilot` through a subprocess: a run trained with no LR given, its report, JSON and
saved weights; one-line errors with exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from _pty import run_on_terminal

pytestmark = pytest.mark.torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

TASK = textwrap.dedent(
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def _data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 5, generator=g)
        y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
        return x, y

    def task():
        x, y = _data()
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=123.0, momentum=0.9),
                "loss_fn": torch.nn.MSELoss(),
                "train_loader": DataLoader(TensorDataset(x[:200], y[:200]), batch_size=16, shuffle=True),
                "val_loader": DataLoader(TensorDataset(x[200:], y[200:]), batch_size=64)}

    def endless():  # a stream without len(): --epochs cannot be turned into steps
        spec = task()
        loader = spec["train_loader"]

        def stream():
            while True:
                yield from loader

        spec["train_loader"] = stream()
        return spec

    def prodigy_like():  # an optimizer whose LR the autopilot cannot own
        spec = task()
        spec["optimizer"] = torch.optim.SGD(spec["model"].parameters(), lr=0.1)
        torch.optim.lr_scheduler.StepLR(spec["optimizer"], 10)
        return spec
    """
)


def lrkit(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "lrkit", "autopilot", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


@pytest.fixture()
def task_file(tmp_path):
    (tmp_path / "my_task.py").write_text(TASK)
    return tmp_path


def test_a_user_target_trains_and_reports_with_no_lr_given(task_file):
    out = lrkit("my_task.py:task", "--steps", "150", "--report", "rep", "--save", "w.pt", "--json",
                "--storage-dir", "snaps", cwd=task_file)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (task_file / "snaps").is_dir() and list((task_file / "snaps").iterdir()) == []  # the run's files went
    payload = json.loads(out.stdout)
    assert payload["train_steps"] == 150 and payload["plan"]["family"] == "sgd_momentum"
    assert 0 < payload["finder_steps"] <= 45  # the finder within 30% of the run
    assert payload["plan"]["peak_lr"] < 10  # the optimizer's lr=123 was ignored
    assert payload["final_val_loss"] < 0.1  # targets of variance ~5, noise 0.01: it learned
    page = (task_file / "rep" / "report.html").read_text()
    assert "lrkit autopilot: my_task.py:task" in page and 'id="autopilot-run"' in page
    import torch

    state = torch.load(task_file / "w.pt")
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_text_output_and_epochs(task_file):
    out = lrkit("my_task.py:task", "--epochs", "10", cwd=task_file)  # 13 batches an epoch: 130 steps
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lrkit autopilot: peak LR" in out.stdout and "over 130 steps" in out.stdout
    assert "final validation loss" in out.stdout and "interventions:" in out.stdout


def test_your_shape_and_a_peak_far_too_high_are_taken_and_watched(task_file):
    out = lrkit("my_task.py:task", "--steps", "150", "--shape", "cosine(base_lr=7, total_steps=150)",
                "--peak-lr", "5", "--json", cwd=task_file)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    plan = payload["plan"]
    assert plan["shape_source"] == "user" and plan["peak_lr"] == 5.0 and plan["auto_peak_lr"] < 0.5
    assert any(r.startswith("watch:") for r in plan["reasons"])  # far above what the finder saw train
    rollbacks = [e for e in payload["events"] if e["kind"] == "rollback"]
    assert rollbacks and "autopilot's own scale" in rollbacks[0]["message"]  # brought back, not lost
    assert payload["final_val_loss"] < 0.1


@pytest.mark.parametrize("args, message", [
    (["my_task.py:task"], "pass --steps N (optimizer steps of the run) or --epochs N"),
    (["my_task.py:task", "--steps", "0"], "--steps must be >= 1"),
    (["my_task.py:task", "--steps", "5", "--epochs", "1"], "give --steps or --epochs, not both"),
    (["my_task.py:endless", "--epochs", "2"], "--epochs needs a train_loader with a len()"),
    (["my_task.py:prodigy_like", "--steps", "50"], "scheduler"),
    (["my_task.py:task", "--steps", "50", "--save", "."], "--save must be a file name"),
    (["my_task.py:task", "--steps", "50", "--storage-dir", "my_task.py"], "--storage-dir must be a directory"),
    (["my_task.py:nope", "--steps", "50"], "has no function 'nope'"),
    (["my_task.py:task", "--steps", "50", "--peak-lr", "-1"], "--peak-lr must be a finite number > 0"),
    (["my_task.py:task", "--steps", "50", "--shape", "cosine(base_lr=1"], "--shape:"),
    (["my_task.py:task", "--steps", "50", "--shape", "nosuch(1)"], "--shape:"),
])
def test_bad_input_is_one_line_exit_2(task_file, args, message):
    out = lrkit(*args, cwd=task_file, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrkit: error:") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_progress_bar_on_a_terminal_stderr_and_pure_json_on_stdout(task_file):
    code, out, seen = run_on_terminal(
        [sys.executable, "-m", "lrkit", "autopilot", "my_task.py:task", "--steps", "60", "--json"],
        env=ENV, cwd=task_file, timeout=300)
    assert code == 0
    assert json.loads(out)["train_steps"] == 60  # stdout stays pure JSON
    assert b"finding the LR" in seen and b"training" in seen  # both phases drawn on the terminal
