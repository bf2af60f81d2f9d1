"""`lrkit tune`: the built-in example, a TARGET, JSON, plot and report, continuing a study, bad input."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def lrkit(*args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lrkit", "tune", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_builtin_example_json_plot_report(tmp_path):
    r = lrkit("--budget", "2", "--train-steps", "60", "--json", "--plot", str(tmp_path / "t.png"),
              "--report", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"best_lr", "best_value", "n_trials", "trials", "run_equivalents", "prior"} <= set(out)
    assert out["target"].startswith("lrkit.examples.digits") and out["strategy"] == "lrkit"
    assert out["run_equivalents"] <= 2.0 + 1e-9 and out["prior"]["source"] == "finder"
    assert out["n_trials"] == len([t for t in out["trials"] if t["state"] in ("complete", "pruned", "failed")])
    best = min((t for t in out["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    assert out["best_lr"] == best["lr"] and 1e-4 < out["best_lr"] < 1.0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in page and "best LR" in page
    assert "How to apply it" in page and "version: lrkit" in page and "lrkit tune" in page  # the shared sections
    assert page.count("<h1>") == 1 and re.search(r"<td>seed</td>\s*<td>0</td>", page)  # one title; the seed run
    assert "lrkit tune" not in r.stderr  # no progress bar with --json / off a terminal


def test_same_command_again_continues_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--strategy", "log", "--low", "1e-4", "--high", "1e-1", "--train-steps", "40", "--storage", url,
            "--study", "cont", "--json"]
    first = lrkit(*args, "--trials", "2")
    assert first.returncode == 0, first.stderr
    second = lrkit(*args, "--trials", "4")
    assert second.returncode == 0, second.stderr
    lrs = [t["lr"] for t in json.loads(second.stdout)["trials"]]
    assert sorted(lrs) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])  # the 2 old trials kept, 2 new ones
    assert [t["lr"] for t in json.loads(first.stdout)["trials"]] == lrs[:2]
    text = lrkit(*args[:-1], "--trials", "4")  # a third time: nothing left to do, the table again
    assert text.returncode == 0 and "4 finished" in text.stdout and "run the same command to continue" in text.stdout


def test_a_failing_trial_fails_alone_and_the_summary_says_so(tmp_path):
    (tmp_path / "task.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def task():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(256, 8, generator=g); y = x @ torch.randn(8, 1, generator=g)
            model = torch.nn.Linear(8, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)

            def step_fn(model, batch):
                if opt.param_groups[0]["lr"] > 0.05:
                    raise RuntimeError("this LR is not allowed here")
                xb, yb = batch
                return torch.nn.functional.mse_loss(model(xb), yb)

            loader = DataLoader(TensorDataset(x, y), batch_size=32)
            return {"model": model, "optimizer": opt, "loss_fn": None, "step_fn": step_fn,
                    "train_loader": loader, "val_loader": loader}
    """))
    r = lrkit(f"{tmp_path / 'task.py'}:task", "--strategy", "grid", "--values", "1e-3,1e-2,1e-1",
              "--train-steps", "20")  # no --trials: the grid, once
    assert r.returncode == 0, r.stderr
    assert "trials: 3 finished" in r.stdout
    assert "1 trial(s) failed and the study went on" in r.stdout
    assert "RuntimeError: this LR is not allowed here" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--low", "1e-2", "--high", "1e-3"], "--low must be below --high"),
    (["--low", "-1e-3"], "--low must be a learning rate > 0"),
    (["--strategy", "grid", "--values", "1e-3,-2"], "--values must be comma-separated learning rates > 0"),
    (["--values", "1e-3,1e-2"], "--values goes with --strategy grid (or log), got --strategy lrkit"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot be reached"),
    (["--storage", "nowhere/x.db"], "does not exist"),
    (["--strategy", "bayes"], "--strategy must be one of"),
    (["--trials", "2", "--budget", "3"], "not both"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, monkeypatch, capsys):
    # in-process (these fail before any training): lrkit's own entry point, exit code and stderr
    from lrkit.cli import main

    monkeypatch.setattr(sys, "argv", ["lrkit", "tune", *args, "--train-steps", "20"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("lrkit: error:") and message in err and len(err.strip().splitlines()) == 1


def test_a_study_with_another_direction_is_refused(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(storage=url, study_name="acc", direction="maximize")
    r = lrkit("--storage", url, "--study", "acc", "--trials", "1", "--train-steps", "20")
    assert r.returncode == 2 and "exists with direction=maximize" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_local_workers_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    # enough trials that the first worker is still busy when the second has imported torch and
    # joined (with 8 short trials an idle machine finished them all before the second one started)
    r = lrkit("--strategy", "random", "--trials", "30", "--train-steps", "300", "--workers", "2", "--storage", url,
              "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_trials"] >= 30
    import optuna

    study = optuna.load_study(study_name="lrkit-tune", storage=url)
    workers = {t.user_attrs.get("lrkit_worker") for t in study.trials}
    assert len(workers) == 2
