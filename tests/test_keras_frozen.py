"""Keras snapshots fingerprint the frozen weights (a LoRA fine-tune with ``layer.enable_lora``, a
frozen backbone) instead of copying them; BatchNormalization's moving statistics (non-trainable, but
moving) are still copied; a frozen weight changed in place is noticed and copied from then on."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _keras_faults import NaNWeightAt  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.doctor.snapshot_set import state_nbytes  # noqa: E402
from lrkit.integrations.keras._state import Fingerprint, FrozenWeights, host_copies, restore_host_copies  # noqa: E402
from lrkit.integrations.keras.callback import LRDoctorCallback  # noqa: E402


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype("float32")[:1024], d.target[:1024].astype("int64")


def lora_model(width=512):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(10)])
    model.layers[0].enable_lora(4)
    model.layers[2].enable_lora(4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _values(model):
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in model.weights}


def _frozen_paths(model):
    return [v.path for v in model.weights if not v.trainable and len(v.shape) >= 2]


def test_frozen_kernels_are_fingerprinted_and_the_rest_restored_bitwise():
    model = lora_model()
    x, y = _digits()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # Adam's slots and the moving statistics move
    frozen = FrozenWeights()
    snap = host_copies(model, frozen)
    assert sorted(p for p, w in zip([v.path for v in model.weights], snap[0]) if isinstance(w, Fingerprint)) == \
        sorted(_frozen_paths(model)) and len(_frozen_paths(model)) == 2
    full = host_copies(model)  # without FrozenWeights: every weight copied, as before
    assert state_nbytes(snap) < 0.25 * state_nbytes(full)
    before = _values(model)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert any(not np.array_equal(before[p], v) for p, v in _values(model).items() if "moving_mean" in p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no frozen weight moved: no warning
        restore_host_copies(model, snap)
    after = _values(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)  # moving statistics included


def test_a_frozen_weight_changed_in_place_is_caught_and_copied_from_then_on():
    model = lora_model(64)
    frozen = FrozenWeights()
    first = host_copies(model, frozen)
    # the first layer's kernel, frozen by enable_lora (its .kernel adds the adapter); changed by hand, as an EMA would
    kernel = next(v for v in model.weights if v.path == _frozen_paths(model)[0])
    kernel.assign(keras.ops.convert_to_numpy(kernel.value) * 0.5)
    second = host_copies(model, frozen)
    assert frozen.moving == {kernel.path}
    index = [v.path for v in model.weights].index(kernel.path)
    assert isinstance(first[0][index], Fingerprint) and not isinstance(second[0][index], Fingerprint)
    kernel.assign(keras.ops.convert_to_numpy(kernel.value) * 0.5)
    restore_host_copies(model, second)
    assert np.array_equal(keras.ops.convert_to_numpy(kernel.value), second[0][index])
    with pytest.warns(RuntimeWarning, match=r"1 frozen weight\(s\) changed since this snapshot.*/dense_\d+/kernel"):
        restore_host_copies(model, first)


def test_the_guard_rolls_back_a_nan_in_a_lora_fine_tune_and_never_touches_the_frozen_kernels():
    model = lora_model()
    x, y = _digits()
    frozen = {p: v for p, v in _values(model).items() if p in _frozen_paths(model)}
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    nan_in_adapter = NaNWeightAt(45, lambda model: model.layers[0].lora_kernel_a)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=[cb, nan_in_adapter])
    assert [i.verdict for i in cb.interventions] == ["nan"]
    after = _values(model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert all(np.array_equal(frozen[p], after[p]) for p in frozen)
    clean = lora_model()
    clean.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    assert float(model.evaluate(x, y, verbose=0)) < 1.1 * float(clean.evaluate(x, y, verbose=0))


def test_the_finder_and_the_autopilot_on_a_lora_fine_tune():
    from lrkit.integrations.keras.autopilot import AutopilotCallback
    from lrkit.integrations.keras.trainer import find_lr_keras

    model = lora_model(128)
    x, y = _digits()
    before = _values(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = find_lr_keras(model, x, y, batch_size=32, train_steps=96, progress=False)
    assert result.suggestion > 0
    assert all(np.array_equal(before[p], v) for p, v in _values(model).items())  # left as it was, bitwise
    pilot = AutopilotCallback(x, y, batch_size=32)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[pilot])
    assert pilot.plan.peak_lr > 0
    assert all(np.array_equal(before[p], v) for p, v in _values(model).items() if p in _frozen_paths(model))


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_fingerprints_on_the_other_backends(backend):
    # the backend is fixed at Keras' import: the two tests above run again in a process of their own
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          str(Path(__file__)), "-k", "fingerprinted or changed_in_place"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
