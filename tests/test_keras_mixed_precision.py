"""Keras mixed precision as its users turn it on (``keras.mixed_precision.set_global_policy``):
under ``mixed_float16`` ``compile`` wraps the optimizer in a ``LossScaleOptimizer``. The finder
leaves weights and optimizer variables (the loss scale included) bitwise as they were, the guard
rolls a NaN back, and the autopilot flies ``fit``."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _keras_faults import NaNWeightAt  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.integrations.keras.autopilot import AutopilotCallback  # noqa: E402
from lrkit.integrations.keras.callback import LRDoctorCallback  # noqa: E402
from lrkit.integrations.keras.trainer import find_lr_keras  # noqa: E402


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(before)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
                              keras.layers.Activation("linear", dtype="float32")])  # float32 logits, as advised
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _state(model):
    return [np.array(keras.ops.convert_to_numpy(v.value), copy=True)
            for v in [*model.weights, *model.optimizer.variables]]


def test_the_finder_guard_and_autopilot_under_mixed_precision(policy):
    x, y = _digits()
    model = _model()
    assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == (policy == "mixed_float16")
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # optimizer built, loss scale moving
    before = _state(model)
    result = find_lr_keras(model, x[:1400], y[:1400], batch_size=32, train_steps=200, progress=False)
    assert 1e-4 < result.suggestion < 1.0
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, _state(model)))

    model = _model()
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=[cb, NaNWeightAt(60)])
    assert [i.verdict for i in cb.interventions] == ["nan"]
    assert float(model.evaluate(x[1400:], y[1400:], verbose=0)) < 1.5

    model = _model()
    pilot = AutopilotCallback(x[:1400], y[:1400], batch_size=32)
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=3, verbose=0, callbacks=[pilot])
    assert pilot.plan.peak_lr > 1e-3 and float(model.evaluate(x[1400:], y[1400:], verbose=0)) < 0.6
