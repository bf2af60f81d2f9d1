"""LRDoctorCallback with a real keras.Model.fit (KERAS_BACKEND=torch via conftest)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _keras_faults import NaNWeightAt  # noqa: E402
from _recording import RecordingDoctor  # noqa: E402
from lrkit.collapse import WEIGHT_CHANGE  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.integrations.keras.callback import LRDoctorCallback  # noqa: E402


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


# ---------------------------------------------------------------- the guard on lrkit's Keras export
from lrkit import schedules as S  # noqa: E402
from lrkit.integrations.keras.schedule import LRKitSchedule, to_keras  # noqa: E402

BATCHES = 8  # 256 samples, batch size 32


def test_guard_lowers_an_lrkit_schedule_and_the_run_recovers(caplog):
    sched = S.warmup(S.cosine(0.8, 110), 10)  # peaks at 0.8: blows up this task (see above)
    clean = fit(make(S.warmup(S.cosine(0.03, 110), 10).to_keras()), epochs=15)
    lost = fit(make(sched.to_keras()), epochs=15)
    assert not math.isfinite(lost)
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, lr_factor=0.1)
    model = make(sched.to_keras())
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        val = fit(model, cb, epochs=15)
    assert 1 <= len(cb.interventions) <= 3 and cb.lr_multiplier <= 0.1
    assert math.isfinite(val) and val < 2 * clean, (val, clean)
    lr = LRKitSchedule.of(model.optimizer)
    assert lr.multiplier == cb.lr_multiplier  # the guard scaled the schedule itself
    # the clock was not rewound: the schedule kept its place, and every later step ran at m * s(k)
    assert int(model.optimizer.iterations) == 15 * BATCHES

    def m_at(k):  # the guard's multiplier in force at step k (set before the step after a rollback)
        return ([1.0] + [i.new_multiplier for i in cb.interventions if i.step < k])[-1]

    steps = [k for k, _, _ in cb.history]
    np.testing.assert_allclose([used for _, _, used in cb.history], [m_at(k) * sched(k) for k in steps],
                               rtol=1e-6, atol=1e-12)
    assert any("lrkit guard" in r.getMessage() for r in caplog.records)


def test_guard_with_a_plateau_schedule_and_an_injected_nan():
    # warmup, then cosine, scaled down on plateaus of the training loss -- and guarded
    rop = S.reduce_on_plateau(S.warmup(S.cosine(0.03, 110), 10), patience=1, factor=0.5, min_lr=1e-3,
                              threshold=0.5)  # an epoch that does not halve the loss is a plateau
    lr = to_keras(rop, monitor="loss")

    class Poison(keras.callbacks.Callback):  # NaN weights after the update of step 20
        done = False

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 21 and not self.done:
                self.done = True
                self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])

    # forgive_first=False: the NaN lowers the LR, so that both factors are < 1 and must compose
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=5, forgive_first=False)
    model = make(lr)
    X, y = data()
    hist = model.fit(X, y, batch_size=32, epochs=10, verbose=0, shuffle=False, callbacks=[Poison(), cb, lr.callback])
    assert [(i.verdict, i.step, i.restored_to) for i in cb.interventions] == [("nan", 21, 20)]
    assert all(np.isfinite(w).all() for w in model.get_weights())
    losses = hist.history["loss"]
    assert math.isfinite(losses[-1]) and losses[-1] < 0.2 * losses[0], losses
    # both factors compose: the plateau was fed every epoch (and reduced), the guard's m stays
    state = lr.plateau_state
    assert state.last_epoch == 10 and state.scale < 1.0
    assert lr.multiplier == cb.lr_multiplier == pytest.approx(0.1)
    k = int(model.optimizer.iterations)
    assert k == 10 * BATCHES  # not rewound by the rollback
    got = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert got == pytest.approx(cb.lr_multiplier * rop.lr(k, state), rel=1e-6)
    used = {step: lr_used for step, _, lr_used in cb.history}
    assert used[22] == pytest.approx(0.1 * used[21] * rop.schedule(22) / rop.schedule(21), rel=1e-5)


def test_guard_refuses_a_foreign_schedule_and_names_lrkit_export():
    model = make(0.01)
    model.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, 100)), loss="mse")
    hint = r"\(CosineDecay\).*lrkit.schedules.cosine\(base_lr, total_steps\).to_keras\(\)"
    with pytest.raises(ValueError, match=hint):
        fit(model, LRDoctorCallback(guard=True), epochs=1)


@pytest.mark.parametrize("kind", ["float", "lrkit"])
def test_a_second_fit_applies_the_guards_multiplier_once(kind):
    sched = S.cosine(0.8, 1000)
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    model = make(0.8 if kind == "float" else sched.to_keras())
    fit(model, cb, epochs=5)
    assert len(cb.interventions) == 1 and cb.lr_multiplier == pytest.approx(0.1)
    fit(model, cb, epochs=1)  # the same run goes on: still 0.1 x the LR, not 0.01 x
    k, _, used = cb.history[-1]
    assert used == pytest.approx(0.1 * (0.8 if kind == "float" else sched(k)), rel=1e-6)



@pytest.mark.parametrize("guard", [False, True])
def test_validation_results_reach_the_doctor_with_the_next_step(guard):
    model = make(0.01)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse", metrics=["mae"])
    doctor = RecordingDoctor()
    X, y = data(128)
    hist = model.fit(X, y, batch_size=32, epochs=3, verbose=0, shuffle=False, validation_data=data(64, seed=1),
                     callbacks=[LRDoctorCallback(guard=guard, doctor=doctor)])
    carried = doctor.carried()
    assert [s for s, _, _ in carried] == [4, 8]  # the first batch of epochs 2 and 3 (4 batches/epoch)
    assert [v for _, v, _ in carried] == pytest.approx(hist.history["val_loss"][:2], rel=1e-6)
    assert [m["val_mae"] for _, _, m in carried] == pytest.approx(hist.history["val_mae"][:2], rel=1e-6)
    # (the weight readings of the output check aside: lrkit.collapse.WEIGHT_CHANGE, every 25 steps)
    assert all(v is None and not set(m) - {WEIGHT_CHANGE} for s, v, m in doctor.seen if s not in (4, 8))


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_a_fit_killed_with_sigkill_resumes_from_its_disk_snapshots(tmp_path, backend):
    """A guarded fit on disk (a NaN rolled back at batch 25, the LR lowered), killed with SIGKILL at
    batch 47 and run again: it resumes from its newest good snapshot, at the lowered LR, with its
    interventions, from the epoch that holds the snapshot; the finished run leaves no file. On
    TensorFlow the resumed process restores before ``fit`` has built the optimizer."""
    import importlib.util
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    if backend == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install tensorflow-cpu)")
    worker = Path(__file__).parent / "_keras_guard_worker.py"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    store, out = tmp_path / "store", tmp_path / "out.json"
    first = subprocess.run([sys.executable, str(worker), str(store), str(out), "47"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr
    manifest = json.loads((store / "keras-run" / "manifest.json").read_text())
    assert manifest["multiplier"] == pytest.approx(0.1) and len(manifest["interventions"]) == 1
    second = subprocess.run([sys.executable, str(worker), str(store), str(out), "-1"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    start = next(line.split() for line in second.stdout.splitlines() if line.startswith("start"))
    resumed_from = int(start[1])
    assert 38 <= resumed_from <= 48  # within one snapshot period (10 steps) of the kill
    res = json.loads(out.read_text())
    assert res["multiplier"] == pytest.approx(0.1) and len(res["interventions"]) == 1
    assert res["epochs"][0] == resumed_from // 10 and res["epochs"][-1] == 7  # 10 batches per epoch
    assert res["steps"] == resumed_from + (8 - resumed_from // 10) * 10
    assert res["lr"] == pytest.approx(0.005) and math.isfinite(res["loss"]) and res["loss"] < 1.0
    assert not (store / "keras-run").exists()


def test_a_rollback_under_sgd_momentum_scales_the_restored_velocity():
    """Keras' SGD velocity holds the LR (v <- mu v - lr g): restored as it was, the old LR's velocity
    kept pushing a run at the edge of stability after a 10x cut, until the guard gave up. Scaled
    with the cut, the run recovers after one rollback."""
    from _keras_guard_worker import momentum_regression

    model, x, y = momentum_regression()
    # forgive_first=False: the NaN lowers the LR, so the restored velocity must be scaled
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, forgive_first=False)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=False, callbacks=[cb, NaNWeightAt(25)])
    assert [i.verdict for i in cb.interventions] == ["nan"]
    after = [loss for step, loss, _ in cb.history if step > 25]
    assert max(after[:10]) < 1.5 and float(model.evaluate(x, y, verbose=0)) < 0.5


def test_a_raise_by_a_learning_rate_scheduler_is_rolled_back_to_the_state_just_before_it():
    """The LR jumps from 0.03 to 0.8 at the first batch of epoch 3 (step 24; 8 batches an epoch):
    the callback snapshots the state before that batch and the rollback loses no step."""
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.03 if epoch < 3 else 0.8)
    model = make(0.03)
    X, y = data()
    model.fit(X, y, batch_size=32, epochs=8, verbose=0, shuffle=False, callbacks=[sched, cb])
    first = cb.interventions[0]
    assert first.restored_to == 24 and first.verified
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_callback_docstring_examples():
    import doctest

    import lrkit.integrations.keras.callback as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
