"""Keras on its default backend, TensorFlow, where ``fit`` and lrkit's steps run as traced
``tf.function``s: what differs from the eager torch backend the other Keras tests run on.

* ``fit`` builds the optimizer inside its first traced step, after the callbacks' first
  ``on_train_batch_begin``: the guard's first snapshot must still hold the optimizer's slots, or a
  rollback to it keeps a diverged run's momentum and the run diverges again at the lowered LR (three
  rollbacks and a 1000x LR cut where one rollback and 10x recover).
* A traced step keeps drawing unseeded noise from the global ``SeedGenerator`` it captured: a
  finder restore must reach that one for its runs to replay.
* The autopilot flies a ``fit`` with no LR given.

Each runs in its own process with ``KERAS_BACKEND=tensorflow`` (the backend is fixed at Keras'
import, and this process runs Keras on torch).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("keras")
if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("TensorFlow is not installed (pip install tensorflow-cpu)", allow_module_level=True)
pytestmark = [pytest.mark.keras]

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_tf(code: str, timeout: int = 600) -> str:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_a_rollback_to_the_first_snapshot_restores_the_optimizer_slots_fit_had_not_built():
    out = run_tf("""
        import keras, numpy as np
        from lrkit.doctor import Doctor
        from lrkit.keras import LRDoctorCallback
        assert keras.backend.backend() == "tensorflow"
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 5)).astype("float32")
        y = (x @ rng.standard_normal((5, 1)) + 0.1 * rng.standard_normal((256, 1))).astype("float32")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.8, momentum=0.9), loss="mse")
        assert not model.optimizer.built  # fit builds it in its first traced step
        cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
        model.fit(x, y, batch_size=32, epochs=5, verbose=0, shuffle=False, callbacks=[cb])
        print(len(cb.interventions), cb.lr_multiplier, float(model.evaluate(x, y, verbose=0)))
    """)
    n, multiplier, loss = out.split()
    # one rollback at 10x lower recovers; with the slots left out of the first snapshot it took three
    assert int(n) == 1 and float(multiplier) == pytest.approx(0.1)
    assert float(loss) < 1.0


def test_the_finder_replays_unseeded_noise_from_the_generator_its_traced_step_captured():
    out = run_tf("""
        import keras, numpy as np
        from lrkit.integrations.keras.trainer import KerasTrainer
        from keras.src.backend.common import global_state

        class Noisy(keras.layers.Layer):
            def call(self, x, training=False):
                return x + 0.5 * keras.random.normal(keras.ops.shape(x)) if training else x

        assert global_state.get_global_attribute("global_seed_generator") is None
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), Noisy(), keras.layers.Dense(3)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((64, 8)).astype("float32"), rng.integers(0, 3, 64)
        t = KerasTrainer(model, x, y, batch_size=16)
        state = t.snapshot()
        first = [t.step(1e-3) for _ in range(3)]
        t.restore(state)
        again = [t.step(1e-3) for _ in range(3)]
        t.restore(state)
        print(first == again, global_state.get_global_attribute("global_seed_generator") is None)
    """)
    # the same noise after the restore, and no global generator left behind where there was none
    assert out.split() == ["True", "True"]


def test_find_lr_keras_leaves_weights_optimizer_and_rngs_bitwise_and_the_autopilot_flies_fit():
    out = run_tf("""
        import random, keras, numpy as np
        from sklearn.datasets import load_digits
        import lrkit.keras as lk
        d = load_digits()
        x, y = (d.data / 16.0).astype("float32"), d.target
        keras.utils.set_random_seed(0)

        def model():
            m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dropout(0.1), keras.layers.Dense(10)])
            m.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return m

        m = model()
        before = [w.copy() for w in m.get_weights()]
        py, nps = random.getstate(), np.random.get_state()
        res = lk.find_lr(m, x[:1400], y[:1400], val_data=(x[1400:], y[1400:]), train_steps=300, progress=False)
        same = all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
        rngs = random.getstate() == py and all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), nps))
        print(same, rngs, not m.optimizer.built or int(m.optimizer.iterations) == 0, 1e-5 < res.suggestion < 1.0)

        m = model()
        cb = lk.AutopilotCallback(x[:1400], y[:1400], batch_size=32, val_data=(x[1400:], y[1400:]),
                                  restart_on_overfit=False)
        m.fit(x[:1400], y[:1400], batch_size=32, epochs=6, verbose=0, callbacks=[cb])
        lr_end = float(keras.ops.convert_to_numpy(m.optimizer.learning_rate))
        print(cb.plan.train_steps, lr_end < 0.05 * cb.plan.peak_lr, float(m.evaluate(x[1400:], y[1400:], verbose=0)))
    """)
    first, second = out.strip().splitlines()[-2:]
    assert first.split() == ["True", "True", "True", "True"]
    steps, decayed, val = second.split()
    # the plan covers the fit (6 epochs of 44 batches), its schedule ran down to its end, the model learned
    assert int(steps) == 6 * 44 and decayed == "True" and float(val) < 0.35
