"""Keras in fresh processes: what a user meets the day after (load a saved model; retry a fit).

* A model saved with an lrkit schedule loads back with ``keras.saving.load_model`` in a new
  process after a plain ``import lrkit`` (before or after ``import keras``), and not without it —
  so the test would fail if the registration went away.
* On the JAX backend, after the documented "forgot ``lr.callback``" error, the model keeps its
  weights and the next ``fit(callbacks=[lr.callback])`` trains as if the failed call had not
  happened (it used to fail with ``TypeError: 'NoneType' object is not callable``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytestmark = [pytest.mark.keras]

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(code: str, backend: str = "torch", timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


SAVE = """
    import sys, numpy as np, keras
    from lrkit import schedules as S
    from lrkit.keras import to_keras
    lr = to_keras(S.reduce_on_plateau(S.warmup(S.cosine(0.1, 90), 10), patience=0, factor=0.5), monitor="loss")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((32, 3)), rng.standard_normal((32, 1)), epochs=3, verbose=0, callbacks=[lr.callback])
    model.save(sys.argv[1])
    print(lr.plateau_state.last_epoch, lr.scale)
"""

LOAD = """
    import sys
    {imports}
    model = keras.saving.load_model(sys.argv[1])
    lr = model.optimizer._learning_rate
    print(type(lr).__name__, lr.plateau_state.last_epoch, lr.scale)
"""


def test_saved_schedule_loads_in_a_fresh_process_after_import_lrkit(tmp_path):
    path = str(tmp_path / "m.keras")
    saved = subprocess.run([sys.executable, "-c", textwrap.dedent(SAVE), path], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1",
                                                 PYTHONPATH=SRC))
    assert saved.returncode == 0, saved.stderr[-2000:]
    epochs, scale = saved.stdout.split()
    for imports in ("import lrkit, keras", "import keras, lrkit"):
        code = textwrap.dedent(LOAD.format(imports=imports))
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONPATH=SRC))
        assert out.returncode == 0, (imports, out.stderr[-2000:])
        assert out.stdout.split() == ["LRKitSchedule", epochs, scale], imports  # the progress came back too
    # the control: without `import lrkit` Keras cannot know the class (what the registration fixes)
    code = textwrap.dedent(LOAD.format(imports="import keras"))
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONPATH=SRC))
    assert out.returncode != 0 and "Could not locate class 'LRKitSchedule'" in out.stderr


def test_import_lrkit_does_not_import_keras():
    out = run("import sys, lrkit; print('keras' in sys.modules)")
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_jax_backend_recovers_after_the_forgotten_callback_error():
    pytest.importorskip("jax")
    out = run("""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from lrkit import schedules as S
        from lrkit.keras import to_keras

        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 4)).astype("float32"); y = rng.standard_normal((64, 1)).astype("float32")
        rop = S.reduce_on_plateau(S.cosine(0.05, 60), patience=0, factor=0.5, threshold=0.5)

        def model_with(lr):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
            return model

        lr = to_keras(rop, monitor="loss")
        model = model_with(lr)
        w0 = model.get_weights()[0].copy()
        try:
            model.fit(x, y, batch_size=16, epochs=2, verbose=0)
            raise SystemExit("no error")
        except ValueError as exc:
            assert "nothing feeds it 'loss'" in str(exc), exc
        np.testing.assert_array_equal(model.get_weights()[0], w0)   # nothing lost, nothing trained
        assert int(model.optimizer.iterations) == 0
        retry = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[lr.callback])

        fresh_lr = to_keras(rop, monitor="loss")
        fresh = model_with(fresh_lr)
        clean = fresh.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[fresh_lr.callback])
        assert retry.history["loss"] == clean.history["loss"], (retry.history, clean.history)
        np.testing.assert_array_equal(model.get_weights()[0], fresh.get_weights()[0])
        assert lr.plateau_state == fresh_lr.plateau_state and lr.scale < 1, (lr.plateau_state, fresh_lr.plateau_state)
        print("ok")
    """, backend="jax")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
