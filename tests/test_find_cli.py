"""`lrkit find` through a subprocess: exit codes, one-line errors, JSON on stdout, user targets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lrkit.finder.range_test import plan_budget

from _pty import run_on_terminal

pytestmark = pytest.mark.torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def lrkit(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lrkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=timeout)


TASK = textwrap.dedent(
    """
    def task():
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 5, generator=g)
        y = x @ torch.randn(5, 1, generator=g)
        model = torch.nn.Linear(5, 1)
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
                "loss_fn": torch.nn.MSELoss(), "train_loader": DataLoader(TensorDataset(x, y), batch_size=16),
                "batch_size": 16}

    # the bad shapes below do not import torch, so that their tests stay fast
    def not_a_dict():
        return [1, 2]

    def missing_keys():
        return {"model": object()}

    def extra_key():
        return {"model": 1, "optimizer": 2, "loss_fn": None, "train_loader": [], "lr": 0.1}

    VALUE = 3
    """
)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "my_task.py"
    p.write_text(TASK)
    return p


def test_train_steps_keep_the_finder_within_30_percent_of_the_run():
    out = lrkit("find", "--json", "--train-steps", "300")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert (d["num_iter"], d["details"]["verify_steps"]) == plan_budget(train_steps=300) == (38, 10)
    spent = d["details"]["range_test_steps"] + d["details"]["verify_steps_used"]
    assert 40 < spent <= 90  # verification did run, and within 30% of 300 steps


@pytest.mark.slow
def test_builtin_example_json(tmp_path):
    out = lrkit("find", "--json", "--num-iter", "60")  # default: candidates verified by short runs
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    d = json.loads(lines[0])
    for key in ("suggestion", "lrs", "losses", "smoothed_losses", "method", "rules", "band", "target"):
        assert key in d, key
    assert d["target"].startswith("lrkit.examples.digits")
    assert len(d["lrs"]) == len(d["losses"]) >= 10
    assert d["lrs"][0] == 1e-7  # Adam's default range
    assert 1e-5 < d["suggestion"] < 1.0
    assert d["method"].startswith("verified") and d["details"]["verify_steps"] == 30
    assert {"steepest", "valley", "minimum_div_10"} <= set(d["rules"])
    assert out.stderr == ""  # no progress bar when --json and stderr is not a terminal

    # the same test for a run at 4x the batch size: Adam -> square-root rule, said in the output
    scaled = json.loads(lrkit("find", "--json", "--num-iter", "60", "--target-batch-size", "256").stdout)
    assert scaled["method"].endswith("+scaled")
    scaling = scaled["details"]["batch_scaling"]
    assert (scaling["from_batch_size"], scaling["to_batch_size"], scaling["rule"]) == (64, 256, "sqrt")
    assert scaled["suggestion"] == pytest.approx(2.0 * d["suggestion"], rel=1e-12)


@pytest.mark.slow
def test_user_file_target_with_plot_and_report(task_file, tmp_path):
    png = tmp_path / "out" / "curve.png"
    rep = tmp_path / "rep"
    out = lrkit("find", f"{task_file}:task", "--json", "--plot", str(png), "--report", str(rep),
                "--num-iter", "30", "--start-lr", "1e-4", "--end-lr", "10", "--verify-steps", "0")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["lrs"][0] == pytest.approx(1e-4) and d["batch_size"] == 16
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (rep / "report.html").is_file() and d["report"] == str(rep / "report.html") and d["plot"] == str(png)


@pytest.mark.slow
def test_module_target_and_text_output(task_file):
    out = lrkit("find", "my_task:task", "--num-iter", "20", "--start-lr", "1e-4", "--end-lr", "1",
                "--verify-steps", "0", cwd=task_file.parent)
    # a module name is imported from sys.path; python -m puts the cwd first
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "target: my_task:task"
    assert out.stdout.splitlines()[1].startswith("suggested LR: ")


@pytest.mark.parametrize(
    "target, message",
    [
        ("missing.py:task", "target file not found: missing.py"),
        ("{f}:nope", "has no function 'nope'; functions defined there: extra_key, missing_keys, not_a_dict, task"),
        ("{f}:VALUE", "is a int, not a function"),
        ("{f}:not_a_dict", "must return a dict with the keys model, optimizer, loss_fn, train_loader, got list"),
        ("{f}:missing_keys", "returned a dict without the key(s) optimizer, loss_fn, train_loader; required"),
        ("{f}:extra_key", "returned unknown key(s) lr; allowed for framework='torch':"),
        ("no_such_pkg.mod:f", "cannot import module 'no_such_pkg.mod'"),
        ("{f}", "TARGET must be 'path/to/file.py:function' or 'package.module:function'"),
    ],
)
def test_bad_targets_one_line_exit_2(task_file, target, message):
    out = lrkit("find", target.format(f=task_file), "--num-iter", "5")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrkit: error: "), out.stderr
    assert message in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-iter", "1"], "--num-iter must be >= 2, got 1"),
        (["--start-lr", "1", "--end-lr", "0.1"], "start_lr must be < end_lr"),
        (["--mode", "cosine"], "--mode must be 'exp' or 'linear', got 'cosine'"),
        (["--num-iter", "abc"], "Invalid value for '--num-iter'"),
        (["--train-steps", "0"], "--train-steps must be >= 1 (the length of the real run), got 0"),
    ],
)
def test_bad_options_exit_2(args, message):
    out = lrkit("find", *args)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_help_documents_the_target_contract():
    out = lrkit("find", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for word in ("path/to/file.py:function", "package.module:function", "model", "optimizer", "loss_fn",
                 "train_loader", "val_loader", "step_fn", "batch_size", "--json", "--report", '"framework"',
                 '"keras"', '"optax"', "params", "batches", "val_data"):
        assert word in text, word


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_on_a_terminal_stderr():
    code, out, seen = run_on_terminal(
        [sys.executable, "-m", "lrkit", "find", "--json", "--num-iter", "40", "--verify-steps", "0"], env=ENV)
    assert code == 0
    json.loads(out)  # stdout stays pure JSON
    assert b"LR range test" in seen  # the bar went to the terminal on stderr


USER_ERRORS = {
    "needs_arg.py": "def task(n, *, k):\n    return {}\n",
    "syntax.py": "def task(:\n    pass\n",
    "bad_import.py": "import not_a_module_xyz_lrkit\n\ndef task():\n    return {}\n",
    "raises.py": "def helper():\n    raise RuntimeError('boom in user code')\n\ndef task():\n    helper()\n",
    "bad_loader.py": textwrap.dedent("""
        import torch
        def task():
            model = torch.nn.Linear(5, 1)
            return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
                    "loss_fn": torch.nn.MSELoss(), "train_loader": [torch.randn(16, 5)] * 4}
    """),
    "bad_model.py": textwrap.dedent("""
        import torch
        def task():
            model = torch.nn.Linear(3, 1)   # the data has 5 features: the user's forward fails
            return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
                    "loss_fn": torch.nn.MSELoss(), "train_loader": [(torch.randn(16, 5), torch.randn(16, 1))] * 4}
    """),
}


@pytest.mark.parametrize("name, first_line, traceback_of", [
    ("needs_arg.py", "needs the argument(s) n, k, but TARGET is called with none", None),
    ("syntax.py", "target file {f} has a syntax error at line 1: invalid syntax", None),
    ("bad_import.py", "importing {f} failed: it imports 'not_a_module_xyz_lrkit', which is not installed", None),
    ("raises.py", "calling {f}:task() raised an exception in your code: RuntimeError: boom in user code "
                  "(the traceback of your code follows)", "in helper"),
    ("bad_loader.py", "batches must be (input, target) pairs or dicts", None),
    ("bad_model.py", "the range test failed in your model, loss or data: RuntimeError: mat1 and mat2", "forward"),
])
def test_errors_in_the_users_target_say_so_in_one_line_exit_2(tmp_path, name, first_line, traceback_of):
    f = tmp_path / name
    f.write_text(USER_ERRORS[name])
    out = lrkit("find", f"{f}:task", "--num-iter", "5", "--verify-steps", "0")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.rstrip().splitlines()
    assert lines[0].startswith("lrkit: error: ") and first_line.format(f=f) in lines[0], out.stderr
    if traceback_of is None:
        assert len(lines) == 1, out.stderr  # no traceback, no blank line from a progress bar
    else:  # the user's own exception: their traceback follows the line (lrkit's frames left out)
        assert lines[1] == "Traceback (most recent call last):" and traceback_of in out.stderr
        assert "lrkit/cli" not in out.stderr


OTHER_FRAMEWORKS = textwrap.dedent("""
    import numpy as np

    def keras_task():
        import keras
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 6)).astype("float32")
        y = (x[:, :1] * 2.0 - x[:, 1:2]).astype("float32")
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        return {"framework": "keras", "model": model, "x": x, "y": y, "batch_size": 32}

    def optax_task():
        import jax.numpy as jnp
        import optax
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 6)).astype("float32")
        y = x @ rng.standard_normal((6, 1)).astype("float32")
        batches = [(jnp.asarray(x[i:i + 32]), jnp.asarray(y[i:i + 32])) for i in range(0, 256, 32)]

        def loss_fn(params, batch):
            xb, yb = batch
            return jnp.mean((xb @ params["w"] - yb) ** 2)

        return {"framework": "jax", "loss_fn": loss_fn, "params": {"w": jnp.zeros((6, 1))},
                "optimizer": optax.sgd, "batches": batches}

    def unknown_framework():
        return {"framework": "mxnet", "model": 1}

    def keras_missing():
        return {"framework": "keras", "x": 1}
""")


@pytest.mark.parametrize("function, family", [("keras_task", "adam"), ("optax_task", "sgd")])
def test_keras_and_optax_targets(tmp_path, function, family):
    if function == "keras_task":
        pytest.importorskip("keras")
    else:
        pytest.importorskip("optax")
    f = tmp_path / "tasks.py"
    f.write_text(OTHER_FRAMEWORKS)
    out = subprocess.run([sys.executable, "-m", "lrkit", "find", f"{f}:{function}", "--json", "--num-iter", "30",
                          "--verify-steps", "0"], capture_output=True, text=True, timeout=300,
                         env={**ENV, "KERAS_BACKEND": "torch", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert payload["details"]["family"] == family and 1e-6 < payload["suggestion"] < 10
    assert payload["batch_size"] == 32 and payload["num_points"] >= 5


@pytest.mark.parametrize("function, message", [
    ("unknown_framework", "framework='mxnet'; lrkit find runs 'torch' (the default), 'keras' or 'optax'"),
    ("keras_missing", "without the key(s) model; required for framework='keras': model"),
])
def test_bad_framework_tasks(tmp_path, function, message):
    f = tmp_path / "tasks.py"
    f.write_text(OTHER_FRAMEWORKS)
    out = lrkit("find", f"{f}:{function}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


SMALL = textwrap.dedent(
    """
    def small():  # 64 examples, an MLP of 226 weights: 400 steps of 16 are 100 passes
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = (x[:, 0] > 0).long()
        model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                "loss_fn": torch.nn.CrossEntropyLoss(),
                "train_loader": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)}
    """
)


def test_many_epochs_is_said_and_can_be_turned_off(tmp_path):
    (tmp_path / "small_task.py").write_text(SMALL)
    target = f"{tmp_path / 'small_task.py'}:small"
    on = lrkit("find", target, "--json", "--train-steps", "400")
    assert on.returncode == 0, on.stderr
    d = json.loads(on.stdout)
    assert d["details"]["run_shape"]["epochs"] == pytest.approx(100.0) and d["details"]["run_shape"]["many_epochs"]
    assert any("100 passes over its 64 training examples" in w for w in d["details"]["warnings"])
    off = lrkit("find", target, "--json", "--train-steps", "400", "--no-many-epochs")
    assert off.returncode == 0, off.stderr
    d = json.loads(off.stdout)
    assert "run_shape" not in d["details"] and not any("passes" in w for w in d["details"]["warnings"])
