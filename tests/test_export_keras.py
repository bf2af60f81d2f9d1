"""The Keras 3 export (``lrkit.integrations.keras.schedule``), torch backend (conftest).

Checked: equality with the core in float64 (table exact, formula within 1e-15 of the peak),
float32 within 1e-6 of the peak; a real ``keras.optimizers.SGD`` training a tiny model uses
``s(iterations)``; ``get_config``/``from_config`` and Keras serialisation round trips; parity
with Keras's native schedules through the export; the jax backend in a subprocess; errors.
"""
from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lrkit import schedules as S

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
from _export_cases import every_constructor  # noqa: E402

from lrkit.integrations.keras import schedule as keras_schedule  # noqa: E402
from lrkit.integrations.keras.schedule import LRKitSchedule, to_keras  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SCHEDULES = every_constructor()
STEPS = np.concatenate([np.arange(3200), [5000, 10**5, 10**6]])
ks = keras.optimizers.schedules


@pytest.fixture
def float64():
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(old)


def np_of(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float64_equals_core(name, float64):
    s = SCHEDULES[name]
    expected = s(STEPS)
    auto = to_keras(s)
    got = np_of(auto(STEPS))
    assert got.dtype == np.float64
    if s.total_steps is not None:
        assert auto.method == "table"
        np.testing.assert_array_equal(got, expected)
    formula = np_of(to_keras(s, method="formula")(STEPS))
    np.testing.assert_allclose(formula, expected, rtol=0, atol=1e-15 * expected.max())
    part = np_of(to_keras(s, method="table", table_steps=1000)(STEPS))
    np.testing.assert_array_equal(part[:1000], expected[:1000])
    np.testing.assert_allclose(part, expected, rtol=0, atol=1e-15 * expected.max())


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float32_within_1e6_of_the_peak(name):
    assert keras.config.floatx() == "float32"
    s = SCHEDULES[name]
    got = np_of(to_keras(s)(STEPS))
    assert got.dtype == np.float32
    expected = s(STEPS)
    err = np.max(np.abs(got - expected)) / np.max(expected)
    if s.total_steps is not None:  # a table: correctly rounded
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        assert err <= 1e-6
    else:  # the formula in float32 (rounded constants; see the module docstring)
        assert err <= 1e-5


@pytest.mark.parametrize("name", ["warmup", "one_cycle", "exponential"])
def test_sgd_trains_a_tiny_model_with_the_schedule(name):
    s = SCHEDULES[name]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    opt = keras.optimizers.SGD(learning_rate=to_keras(s))
    model.compile(optimizer=opt, loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append((int(opt.iterations), float(opt.learning_rate)))

    x = np.linspace(-1, 1, 96, dtype="float32").reshape(32, 3)
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[Record()])
    assert [k for k, _ in seen] == list(range(24))
    np.testing.assert_allclose([lr for _, lr in seen], s(np.arange(24)), rtol=1e-6, atol=1e-9)
    assert float(opt.learning_rate) == pytest.approx(s(24), rel=1e-6)


def test_config_round_trips(float64):
    s = SCHEDULES["warmup"]
    lr = to_keras(s, method="formula")
    cfg = lr.get_config()
    assert json.loads(json.dumps(cfg)) == cfg and cfg["schedule"] == s.to_dict()
    back = LRKitSchedule.from_config(cfg)
    assert back.schedule == s and back.method == "formula"
    ser = keras.saving.serialize_keras_object(lr)
    assert ser["registered_name"] == "lrkit>LRKitSchedule"
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(ser)))
    assert isinstance(again, LRKitSchedule)
    np.testing.assert_array_equal(np_of(again(STEPS)), np_of(lr(STEPS)))
    opt = keras.optimizers.SGD(learning_rate=to_keras(s))
    opt2 = keras.optimizers.SGD.from_config(opt.get_config())
    assert isinstance(opt2._learning_rate, LRKitSchedule) and opt2._learning_rate.schedule == s


def _cmp(ours, native, steps=range(0, 1500, 7), base=1.0):
    a = np.array([float(ours(k)) for k in steps])
    b = np.array([float(native(k)) for k in steps])
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * base)


def test_parity_with_keras_native_schedules(float64):
    lr = 0.1
    _cmp(to_keras(S.cosine(lr, 1000, lr * 0.01)), ks.CosineDecay(lr, 1000, alpha=0.01), base=lr)
    _cmp(to_keras(S.warmup(S.cosine(lr, 900, lr * 0.01), 100)),
         ks.CosineDecay(0.0, 900, alpha=0.01, warmup_target=lr, warmup_steps=100), base=lr)
    for stair in (False, True):
        _cmp(to_keras(S.exponential(lr, 0.5, 130, staircase=stair)),
             ks.ExponentialDecay(lr, 130, 0.5, staircase=stair), base=lr)
        _cmp(to_keras(S.inverse_time(lr, 50, 0.3, staircase=stair)),
             ks.InverseTimeDecay(lr, 50, 0.3, staircase=stair), base=lr)
    _cmp(to_keras(S.piecewise_constant([100, 700], [lr, lr / 10, lr / 100])),
         ks.PiecewiseConstantDecay([100, 700], [lr, lr / 10, lr / 100]), base=lr)
    for cycle in (False, True):
        _cmp(to_keras(S.polynomial(lr, 600, 1e-3, power=2.0, cycle=cycle)),
             ks.PolynomialDecay(lr, 600, 1e-3, power=2.0, cycle=cycle), base=lr)
    _cmp(to_keras(S.warm_restarts(lr, 100, 2, min_lr=lr * 0.01, m_mul=0.8)),
         ks.CosineDecayRestarts(lr, 100, t_mul=2.0, m_mul=0.8, alpha=0.01), base=lr)


def test_jax_backend_in_a_subprocess():
    code = textwrap.dedent("""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from lrkit import schedules as S
        from lrkit.integrations.keras.schedule import to_keras
        s = S.warmup(S.cosine(0.1, 30), 10)
        for method in ("table", "formula"):
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            opt = keras.optimizers.SGD(learning_rate=to_keras(s, method=method))
            model.compile(optimizer=opt, loss="mse", jit_compile=True)
            x = np.ones((20, 2), "float32"); y = np.zeros((20, 1), "float32")
            model.fit(x, y, batch_size=2, epochs=1, verbose=0)   # traced under jax.jit
            assert int(opt.iterations) == 10
            assert abs(float(opt.learning_rate) - s(10)) <= 1e-7, (method, float(opt.learning_rate))
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        to_keras(SCHEDULES["cosine"], method="exact")
    with pytest.raises(ValueError, match="monitor='loss' is only used with a ReduceOnPlateau"):
        to_keras(SCHEDULES["cosine"], monitor="loss")
    assert to_keras(S.reduce_on_plateau(0.1)).callback is not None  # see test_keras_plateau.py
    with pytest.raises(ValueError, match="unknown schedule 'cosinus'"):
        LRKitSchedule.from_config({"schedule": {"name": "cosinus", "params": {}},
                                   "method": "auto", "table_steps": None})


def test_schedule_hook_and_docstring_examples():
    assert isinstance(SCHEDULES["cosine"].to_keras(), LRKitSchedule)
    res = doctest.testmod(keras_schedule)
    assert res.attempted > 0 and res.failed == 0
