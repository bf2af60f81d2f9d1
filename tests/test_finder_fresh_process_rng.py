"""The first ``find_lr`` call of a process leaves every RNG bitwise as it went in.

A library imported lazily during the call (rich for the progress bar, say) may draw on Python's
``random`` when it is imported, so this can only be seen in a fresh interpreter: each test starts
one, records Python's, NumPy's and the framework's RNG states, runs the finder once (progress bar
on, verification on, as a user calls it) and compares.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

CHECK = """
    import pickle, random
    import numpy as np
    def states():
        return (pickle.dumps(random.getstate()), pickle.dumps(np.random.get_state()), framework_state())
    before = states()
    result = run_finder()
    after = states()
    names = ("python random", "numpy", FRAMEWORK)
    changed = [n for n, a, b in zip(names, before, after) if a != b]
    assert result.suggestion > 0
    print("CHANGED:" + ",".join(changed))
"""

TORCH = """
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from lrkit import find_lr
    FRAMEWORK = "torch"
    def framework_state():
        return bytes(torch.get_rng_state().numpy())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g); y = x @ torch.randn(8, 1, generator=g)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    def run_finder():
        return find_lr(model, opt, torch.nn.MSELoss(), loader, train_steps=300, progress=True)
"""

KERAS = """
    import numpy as np, keras
    from lrkit.keras import find_lr_keras
    FRAMEWORK = "keras (torch backend)"
    def framework_state():
        import torch
        return bytes(torch.get_rng_state().numpy())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32"); y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    def run_finder():
        return find_lr_keras(model, x, y, batch_size=32, train_steps=300, progress=True)
"""

OPTAX = """
    import jax, jax.numpy as jnp, numpy as np, optax
    from lrkit.jax import find_lr_optax
    FRAMEWORK = "jax (no global RNG: params)"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32); y = x @ rng.normal(size=8).astype(np.float32)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    params = {"w": jnp.zeros(8)}
    def framework_state():
        return np.asarray(params["w"]).tobytes()
    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] - yb) ** 2)
    def run_finder():
        return find_lr_optax(loss_fn, params, optax.sgd, batches, train_steps=300, progress=True)
"""


def _run(setup: str) -> str:
    code = textwrap.dedent(setup) + textwrap.dedent(CHECK)
    env = dict(os.environ, KERAS_BACKEND="torch", JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("CHANGED:")][-1]
    return line[len("CHANGED:"):]


@pytest.mark.parametrize("framework, setup", [("torch", TORCH), ("keras", KERAS), ("optax", OPTAX)])
def test_first_call_in_a_fresh_process_leaves_every_rng_as_it_was(framework, setup):
    pytest.importorskip({"torch": "torch", "keras": "keras", "optax": "optax"}[framework])
    if framework == "optax":
        pytest.importorskip("jax")
    changed = _run(setup)
    assert changed == "", f"find_lr ({framework}) changed these RNG states in a fresh process: {changed}"
