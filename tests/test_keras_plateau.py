"""Reduce-on-plateau composed with a schedule in Keras 3 (``to_keras(reduce_on_plateau(...))``).

Real Keras, torch backend (conftest), float64 so that the exported LRs can be compared *exactly*
with lrkit's own core (:meth:`ReduceOnPlateau.update` / :meth:`ReduceOnPlateau.lr`), which the
tests run independently on the same metric sequence. Checked: ``model.fit`` with warmup -> cosine
scaled down on a plateauing validation loss (the LR the optimizer reports *and* the LR it really
applied, recovered from the weight update of a linear model); the state machine over many drawn
configurations; get_config / Keras serialisation / ``model.save`` + ``load_model`` resume; the
errors a user meets (forgotten callback, missing metric, wrong schedule); the JAX backend under
``jit_compile`` in a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from lrkit.integrations.keras.schedule import LRKitSchedule, PlateauCallback, to_keras  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BATCH, N = 10, 40  # 4 optimizer steps per epoch


@pytest.fixture
def float64():
    # Keras caches its default dtype policy the first time a layer asks for it: set and restore
    # it with floatx, or the float64 layers built here would leak into later tests
    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(old_policy)


def rop_under_test(**kw):
    """Warmup, then cosine, scaled down on plateaus (with a floor that lifts the warmup's 0)."""
    cfg = dict(patience=1, factor=0.5, threshold=0.01, cooldown=1, min_lr=0.004)
    cfg.update(kw)
    return S.reduce_on_plateau(S.warmup(S.cosine(0.1, 90), 10), **cfg)


def random_task():
    """Random inputs and an unrelated random target: the validation loss soon stops improving."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((N, 3)), rng.standard_normal((N, 1))
    xv, yv = rng.standard_normal((N, 3)), rng.standard_normal((N, 1))
    return x, y, xv, yv


def linear_model(lr):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    return model


class LRSpy(keras.callbacks.Callback):
    """Per batch: the LR the optimizer reports, and the LR it applied (from dw = -lr * grad)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.read, self.applied = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.read.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.w = self.model.get_weights()[0]

    def on_train_batch_end(self, batch, logs=None):
        w1 = self.model.get_weights()[0]
        xb, yb = self.x[BATCH * batch:BATCH * (batch + 1)], self.y[BATCH * batch:BATCH * (batch + 1)]
        g = 2.0 / len(xb) * xb.T @ (xb @ self.w - yb)  # gradient of the batch's mean squared error
        self.applied.append(float(-np.sum((w1 - self.w) * g) / np.sum(g * g)))


def core_lrs(rop, metrics, steps_per_epoch=N // BATCH, state=None):
    """The pure core's LR for every step, fed one metric at each epoch end; and the last state."""
    state = rop.init() if state is None else state
    out = []
    for e, m in enumerate(metrics):
        out += [rop.lr(e * steps_per_epoch + k, state) for k in range(steps_per_epoch)]
        state = rop.update(state, m)
    return out, state


def test_fit_warmup_cosine_scaled_down_on_plateaus_equals_the_core(float64):
    rop = rop_under_test()
    lr = to_keras(rop)
    x, y, xv, yv = random_task()
    model = linear_model(lr)
    spy = LRSpy(x, y)
    hist = model.fit(x, y, validation_data=(xv, yv), batch_size=BATCH, epochs=16, verbose=0,
                     shuffle=False, callbacks=[spy, lr.callback])
    expected, state = core_lrs(rop, hist.history["val_loss"])
    # the plateau really acted: several reductions, and the min_lr floor lifted the warmup's 0
    assert state.scale <= 0.125 and expected[0] == rop.min_lr
    np.testing.assert_array_equal(spy.read, expected)           # bitwise, float64
    np.testing.assert_allclose(spy.applied, expected, rtol=1e-5)  # what the update really used
    assert lr.plateau_state == state
    assert int(model.optimizer.iterations) == 64


SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(mode=st.sampled_from(["min", "max"]), threshold_mode=st.sampled_from(["rel", "abs"]),
       threshold=st.sampled_from([0.0, 1e-4, 0.05]), factor=st.floats(0.05, 0.95),
       patience=st.integers(0, 3), cooldown=st.integers(0, 3),
       min_lr=st.sampled_from([0.0, 1e-4, 0.02]),
       metrics=st.lists(st.one_of(st.floats(-2, 2), st.just(float("nan"))), min_size=1, max_size=25))
def test_observe_is_the_core_state_machine(mode, threshold_mode, threshold, factor, patience, cooldown,
                                           min_lr, metrics):
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        rop = S.reduce_on_plateau(S.warmup(S.cosine(0.1, 200), 20), mode=mode, factor=factor,
                                  patience=patience, threshold=threshold, threshold_mode=threshold_mode,
                                  cooldown=cooldown, min_lr=min_lr)
        lr = to_keras(rop, monitor=None)
        state = rop.init()
        steps = np.array([0, 5, 20, 21, 100, 199, 200, 10_000])
        for m in metrics:
            state = rop.update(state, m)
            assert lr.observe(m) == state
            got = keras.ops.convert_to_numpy(lr(steps))
            np.testing.assert_array_equal(got, rop.lr(steps, state))
    finally:
        keras.config.set_floatx(old)


def test_float32_within_rounding_of_the_core():
    rop = rop_under_test(patience=0)
    lr = to_keras(rop, monitor=None)
    state = rop.init()
    for m in [1.0, 2.0, 3.0, 0.5, 0.6]:
        state, _ = rop.update(state, m), lr.observe(m)
    steps = np.arange(120)
    got = keras.ops.convert_to_numpy(lr(steps))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, rop.lr(steps, state), rtol=2e-7)


def test_config_round_trip_keeps_configuration_and_progress(float64):
    rop = rop_under_test(mode="max", threshold_mode="abs", patience=0, cooldown=2, eps=1e-9)
    lr = to_keras(rop, monitor="val_accuracy", method="formula")
    for m in [0.5, 0.4, 0.6, 0.6]:
        lr.observe(m)
    lr.set_multiplier(0.25)
    cfg = json.loads(json.dumps(lr.get_config()))
    assert cfg["plateau"] == {"mode": "max", "factor": 0.5, "patience": 0, "threshold": 0.01,
                              "threshold_mode": "abs", "cooldown": 2, "min_lr": 0.004, "eps": 1e-9}
    assert cfg["schedule"] == rop.schedule.to_dict() and cfg["monitor"] == "val_accuracy"
    back = LRKitSchedule.from_config(cfg)
    assert back.plateau_state == lr.plateau_state and back.multiplier == 0.25
    assert back.method == "formula" and back.callback.monitor == "val_accuracy"
    steps = np.arange(0, 150, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back(steps)), keras.ops.convert_to_numpy(lr(steps)))
    # resume equivalence: N metrics + M more == N, get_config, from_config, M more
    for m in [0.61, 0.7, 0.2, 0.2, 0.2]:
        lr.observe(m)
        back.observe(m)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(back(steps)),
                                      keras.ops.convert_to_numpy(lr(steps)))
    assert back.plateau_state == lr.plateau_state
    ser = keras.saving.serialize_keras_object(lr)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(ser)))
    assert isinstance(again, LRKitSchedule) and again.plateau_state == lr.plateau_state
    # a plain schedule's config has no plateau, and a fresh state
    plain = to_keras(S.cosine(0.1, 100)).get_config()
    assert plain["plateau"] is None and plain["monitor"] is None and plain["state"] == {"multiplier": 1.0}


def test_state_dict_round_trip_and_bad_states():
    rop = rop_under_test(patience=0, cooldown=0)
    a, b = to_keras(rop, monitor=None), to_keras(rop, monitor=None)
    for m in [1.0, 2.0, 3.0]:
        a.observe(m)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.plateau_state == a.plateau_state and b.scale == a.scale == 0.25
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(b(np.arange(100))),
                                  keras.ops.convert_to_numpy(a(np.arange(100))))
    with pytest.raises(ValueError, match=r"keys \['multiplier', 'plateau'\]"):
        b.load_state_dict({"multiplier": 1.0})
    with pytest.raises(ValueError, match="num_bad_epochs must be"):
        b.load_state_dict({"multiplier": 1.0, "plateau": dict(a.state_dict()["plateau"], num_bad_epochs=-1)})
    with pytest.raises(ValueError, match="multiplier must be a finite number >= 0"):
        b.load_state_dict({"multiplier": float("nan"), "plateau": a.state_dict()["plateau"]})
    assert b.plateau_state == a.plateau_state  # a rejected state leaves the schedule as it was


def test_model_save_and_load_resumes_the_plateau(tmp_path, float64):
    rop = rop_under_test()
    x, y, xv, yv = random_task()
    kw = dict(validation_data=(xv, yv), batch_size=BATCH, verbose=0, shuffle=False)
    lr = to_keras(rop)
    whole, spy = linear_model(lr), LRSpy(x, y)
    hist = whole.fit(x, y, epochs=16, callbacks=[spy, lr.callback], **kw)

    lr1 = to_keras(rop)
    first, spy1 = linear_model(lr1), LRSpy(x, y)
    first.fit(x, y, epochs=10, callbacks=[spy1, lr1.callback], **kw)
    assert lr1.scale < 1.0  # saved mid-run, after a reduction
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    lr2 = LRKitSchedule.of(loaded.optimizer)
    assert lr2 is not lr1 and lr2.plateau_state == lr1.plateau_state
    spy2 = LRSpy(x, y)
    hist2 = loaded.fit(x, y, epochs=6, callbacks=[spy2, lr2.callback], **kw)
    assert spy1.read + spy2.read == spy.read
    assert hist2.history["val_loss"] == hist.history["val_loss"][10:]
    assert lr2.plateau_state == lr.plateau_state


def test_forgetting_the_callback_is_an_error_not_a_silent_constant_scale():
    x, y, _, _ = random_task()
    lr = to_keras(rop_under_test())
    model = linear_model(lr)
    float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))  # reading it before fit is fine
    assert float(lr(50)) > 0                                           # and so is a direct call
    with pytest.raises(ValueError, match=r"nothing feeds it 'val_loss'.*callbacks=\[lr\.callback\]"):
        model.fit(x.astype("float32"), y.astype("float32"), batch_size=BATCH, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 1  # caught at the second step
    # monitor=None: the user feeds the plateau (a custom loop); fit without the callback is allowed
    manual = to_keras(rop_under_test(), monitor=None)
    assert manual.callback is None
    model = linear_model(manual)
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=BATCH, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 8


def test_missing_metric_and_wrong_schedule():
    x, y, xv, yv = [a.astype("float32") for a in random_task()]
    lr = to_keras(rop_under_test(), monitor="val_los")
    with pytest.raises(ValueError, match=r"monitor='val_los' is not among the epoch's logs \['loss', 'val_loss'\]"):
        linear_model(lr).fit(x, y, validation_data=(xv, yv), epochs=1, verbose=0, callbacks=[lr.callback])
    lr = to_keras(rop_under_test())
    with pytest.warns(UserWarning, match="no 'val_loss' in this epoch's logs .*validation_data"):
        linear_model(lr).fit(x, y, epochs=2, verbose=0, callbacks=[lr.callback])
    assert lr.plateau_state.last_epoch == 0  # not fed, and said so
    lr_loss = to_keras(rop_under_test(), monitor="loss")  # no validation needed
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lrkit plateau")
        linear_model(lr_loss).fit(x, y, epochs=2, verbose=0, callbacks=[lr_loss.callback])
    assert lr_loss.plateau_state.last_epoch == 2
    other = to_keras(rop_under_test())
    with pytest.raises(ValueError, match="does not use the schedule this callback feeds.*another lrkit export"):
        linear_model(lr).fit(x, y, epochs=1, verbose=0, callbacks=[other.callback])


def test_bad_arguments():
    rop = rop_under_test()
    with pytest.raises(ValueError, match="monitor='val_acc' is only used with a ReduceOnPlateau"):
        to_keras(S.cosine(0.1, 10), monitor="val_acc")
    with pytest.raises(ValueError, match="monitor must be the name of a logged metric"):
        to_keras(rop, monitor="")
    with pytest.raises(ValueError, match="has no plateau; export reduce_on_plateau"):
        to_keras(S.cosine(0.1, 10)).observe(1.0)
    with pytest.raises(ValueError, match="metric must be a number"):
        to_keras(rop).observe("low")
    with pytest.raises(ValueError, match="multiplier must be a finite number >= 0, got -1"):
        to_keras(rop).set_multiplier(-1)
    with pytest.raises(ValueError, match="plateau must be a dict with keys among"):
        LRKitSchedule(rop.schedule, plateau={"patience": 1, "verbose": True})
    with pytest.raises(ValueError, match="schedule must be an LRKitSchedule exported from a ReduceOnPlateau"):
        PlateauCallback(to_keras(S.cosine(0.1, 10)), "val_loss")
    with pytest.raises(ValueError, match="is not an lrkit export .*CosineDecay"):
        LRKitSchedule.of(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 10)))


def test_jax_backend_under_jit_applies_the_reduced_lr():
    code = textwrap.dedent("""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from lrkit import schedules as S
        from lrkit.integrations.keras.schedule import to_keras
        rop = S.reduce_on_plateau(S.warmup(S.cosine(0.05, 60), 20), patience=0, factor=0.5, threshold=0.2)
        lr = to_keras(rop, monitor="loss")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 4)).astype("float32"); y = rng.standard_normal((64, 1)).astype("float32")
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse", jit_compile=True)
        applied = []
        class Spy(keras.callbacks.Callback):
            def on_train_batch_begin(self, b, logs=None):
                self.model.jax_state_sync(); self.w = self.model.get_weights()[0].astype(float)
            def on_train_batch_end(self, b, logs=None):
                self.model.jax_state_sync(); w1 = self.model.get_weights()[0].astype(float)
                xb, yb = x[16 * b:16 * b + 16].astype(float), y[16 * b:16 * b + 16].astype(float)
                g = 2 / 16 * xb.T @ (xb @ self.w - yb)
                applied.append(-np.sum((w1 - self.w) * g) / np.sum(g * g))
        h = model.fit(x, y, batch_size=16, epochs=5, verbose=0, shuffle=False, callbacks=[lr.callback, Spy()])
        state, expected = rop.init(), []
        for e in range(5):
            expected += [rop.lr(4 * e + k, state) for k in range(4)]
            state = rop.update(state, h.history["loss"][e])
        assert state.scale <= 0.25, state
        np.testing.assert_allclose(applied[1:], expected[1:], rtol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
