"""``lrkit.tune.tune_keras``: LR search over a Keras 3 model with no objective to write."""
from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = [pytest.mark.keras]

from lrkit.tune import tune_keras  # noqa: E402


def _data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype("float32")
    return X[:320], y[:320], X[320:480], y[320:480]


X, Y, XV, YV = _data()
BUILT: list[np.ndarray] = []


def target():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    BUILT.append(np.asarray(model.get_weights()[0]).copy())
    return {"model": model, "x": X, "y": Y, "batch_size": 32, "val_data": (XV, YV)}


def test_a_grid_over_fresh_models_picks_the_lr_that_trains_best():
    BUILT.clear()
    r = tune_keras(target, train_steps=60, n_trials=3, strategy="grid", values=[1e-5, 0.1, 100.0])
    assert sorted(t.lr for t in r.trials) == pytest.approx([1e-5, 0.1, 100.0])
    assert r.best_lr == pytest.approx(0.1)  # 1e-5 barely moves in 60 steps of SGD, 100 blows up
    (blown,) = [t for t in r.trials if t.lr == pytest.approx(100.0)]
    assert blown.state != "complete"  # stopped by the doctor, not trained to the end
    assert math.isfinite(r.best_value)
    # every trial (and the family probe) built a fresh model with the same initial weights
    assert len(BUILT) >= 4 and all(np.array_equal(BUILT[0], w) for w in BUILT)


def test_the_lrkit_strategy_runs_the_keras_range_test_and_counts_it():
    r = tune_keras(target, train_steps=120, budget=2)
    assert r.prior is not None and r.prior["cost_steps"] > 0  # the range test ran and is in the budget
    assert len(r.trials) >= 1 and math.isfinite(r.best_value)


def test_bad_targets_are_refused_with_what_to_return():
    with pytest.raises(ValueError, match="must give val_data"):
        tune_keras(lambda: {"model": target()["model"], "x": X, "y": Y}, train_steps=10, n_trials=1)
    with pytest.raises(ValueError, match="unknown keys \\['loader'\\]"):
        tune_keras(lambda: {**target(), "loader": None}, train_steps=10, n_trials=1)
    with pytest.raises(ValueError, match="train_steps must be an integer >= 1"):
        tune_keras(target, train_steps=0, n_trials=1)
