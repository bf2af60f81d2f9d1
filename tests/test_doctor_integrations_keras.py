"""LRDoctorCallback with a real keras.Model.fit (KERAS_BACKEND=torch via conftest)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lrkit.doctor import Doctor  # noqa: E402
from lrkit.integrations.keras_callback import LRDoctorCallback  # noqa: E402


def data(n=256, seed=0):
    w = np.random.default_rng(123).standard_normal((5, 1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)).astype("float32")
    y = (X @ w + 0.1 * rng.standard_normal((n, 1))).astype("float32")
    return X, y


def make(lr, schedule=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    rate = keras.optimizers.schedules.ExponentialDecay(lr, 10, 0.9) if schedule else lr
    model.compile(optimizer=keras.optimizers.SGD(rate, momentum=0.9), loss="mse")
    return model


def fit(model, cb=None, epochs=6, x=None):
    X, y = data() if x is None else x
    model.fit(X, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False, callbacks=[cb] if cb else [])
    Xv, yv = data(512, seed=1)
    return float(model.evaluate(Xv, yv, verbose=0))


def test_per_batch_losses_are_recovered_and_logs_untouched():
    class Spy(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append(dict(logs))

    model = make(0.01)
    cb, spy = LRDoctorCallback(), Spy()
    X, y = data(100)  # batches of 32, 32, 32, 4: the running mean is weighted by batch size
    model.fit(X, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[cb, spy])
    losses = np.array([h[1] for h in cb.history]).reshape(2, 4)
    sizes = np.array([32, 32, 32, 4])
    running = np.cumsum(losses * sizes, axis=1) / np.cumsum(sizes)  # the trackers restart each epoch
    np.testing.assert_allclose(running.ravel(), [d["loss"] for d in spy.logs], rtol=1e-5)
    assert all(set(d) == {"loss"} for d in spy.logs)  # nothing added to the user's logs
    assert [h[2] for h in cb.history] == pytest.approx([0.01] * 8)
    assert [h[0] for h in cb.history] == list(range(8))


def test_too_high_lr_watch_only_is_lost_and_diagnosed():
    model = make(0.8)
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    val = fit(model, cb)
    assert not (math.isfinite(val) and val < 1.0)
    assert cb.diagnosis.verdict in ("nan", "diverging")
    assert cb.interventions == []


def test_too_high_lr_guarded_recovers(caplog):
    clean = fit(make(0.03), epochs=15)
    lost = fit(make(0.8), epochs=15)
    assert not math.isfinite(lost)
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, lr_factor=0.1)
    model = make(0.8)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        val = fit(model, cb, epochs=15)
    assert 1 <= len(cb.interventions) <= 3
    # tolerance: the guarded run lost a few steps to the rollback and trains at 0.8 * m (m <= 0.1),
    # not at 0.03; on this task runs at 0.03-0.08 end within 2x of each other
    assert math.isfinite(val) and val < 2 * clean, (val, clean)
    lr_now = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr_now == pytest.approx(0.8 * cb.lr_multiplier, rel=1e-6)
    assert any("lrkit guard" in r.getMessage() for r in caplog.records)


def test_rollback_restores_weights_and_optimizer_state():
    X, y = data()
    X = X.copy()
    X[100, 0] = np.nan  # batch 3 of each epoch is corrupt
    snaps = {}

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = len(snaps)
            snaps[step] = [w.copy() for w in self.model.get_weights()]

    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=2, max_retries=10)
    model = make(0.01)
    restored = []

    def check(rec):
        restored.append([w.copy() for w in model.get_weights()])
        assert all(np.array_equal(a, b) for a, b in zip(restored[-1], snaps[rec.restored_to - 1]))

    cb.guard.on_intervention = check
    model.fit(X, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[Recorder(), cb])
    assert len(cb.interventions) == 1 and cb.interventions[0].step == 3 and restored
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_guard_refuses_a_schedule_with_a_clear_error():
    model = make(0.01, schedule=True)
    with pytest.raises(ValueError, match="learning_rate is a LearningRateSchedule.*guard=False"):
        fit(model, LRDoctorCallback(guard=True), epochs=1)
    cb = LRDoctorCallback()  # watching a scheduled run works
    fit(make(0.01, schedule=True), cb, epochs=1)
    assert cb.history[-1][2] < 0.01


def test_guard_follows_a_learning_rate_scheduler_callback():
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1.5 * 0.5**epoch)
    model = make(1.5)
    X, y = data()
    model.fit(X, y, batch_size=32, epochs=4, verbose=0, shuffle=False, callbacks=[sched, cb])
    assert len(cb.interventions) >= 1
    m = cb.lr_multiplier
    assert cb.history[-1][2] == pytest.approx(1.5 * 0.5**3 * m, rel=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="guard must be True or False"):
        LRDoctorCallback(guard="yes")
    with pytest.raises(ValueError, match="lr_factor must be a number in"):
        LRDoctorCallback(guard=True, lr_factor=2.0)
