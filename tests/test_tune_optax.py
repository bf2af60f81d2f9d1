"""``lrkit.tune.tune_optax``: LR search over a JAX/optax run with no objective to write."""
from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from lrkit.tune import tune_optax  # noqa: E402

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 8)).astype(np.float32)
W = rng.normal(size=8).astype(np.float32)
Y = X @ W + 0.1 * rng.normal(size=512).astype(np.float32)
BATCHES = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 384, 32)]
VAL = [(X[384:], Y[384:])]
CALLS: list[int] = []


def loss_fn(params, batch):
    xb, yb = batch
    return jnp.mean((xb @ params["w"] - yb) ** 2)


def target():
    CALLS.append(1)
    return {"loss_fn": loss_fn, "params": {"w": jnp.zeros(8)}, "optimizer": optax.sgd,
            "batches": BATCHES, "val_batches": VAL}


def test_a_grid_over_fresh_runs_picks_the_lr_that_trains_best():
    CALLS.clear()
    r = tune_optax(target, train_steps=60, n_trials=3, strategy="grid", values=[1e-5, 0.05, 50.0])
    assert sorted(t.lr for t in r.trials) == pytest.approx([1e-5, 0.05, 50.0])
    assert r.best_lr == pytest.approx(0.05) and r.best_value < 0.1  # noise 0.1**2: trained
    (blown,) = [t for t in r.trials if t.lr == pytest.approx(50.0)]
    assert blown.state != "complete"
    assert len(CALLS) >= 4  # the family probe and one fresh build per trial


def test_the_lrkit_strategy_runs_the_optax_range_test_and_counts_it():
    r = tune_optax(target, train_steps=150, budget=2)
    assert r.prior is not None and r.prior["cost_steps"] > 0
    assert math.isfinite(r.best_value) and r.best_value < 0.5


def test_a_target_without_validation_batches_is_refused():
    with pytest.raises(ValueError, match="must give val_batches"):
        tune_optax(lambda: {**target(), "val_batches": None}, train_steps=10, n_trials=1)
