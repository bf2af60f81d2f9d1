"""The doctor reads what Keras' ``TensorBoard`` callback writes on TensorFlow: TF2 scalar tensors
(not the ``simple_value`` scalars of PyTorch's SummaryWriter, which read before), in ``train/`` and
``validation/``, on two clocks (``epoch_*`` at the epoch index; ``batch_*`` and
``evaluation_*_vs_iterations`` at the optimizer step). Until 2026-12-07 every such log read as "the
TensorBoard log has no scalars". The logs are written by a real ``fit`` in a TensorFlow process."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("TensorFlow is not installed (pip install tensorflow-cpu): no Keras TensorBoard log to read",
                allow_module_level=True)

from lrkit.doctor import diagnose, read_log  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")

WRITE = """
    import sys, keras, numpy as np
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target
    keras.utils.set_random_seed(0)
    for name, lr, freq in [("epochs", 1e-3, "epoch"), ("batches", 1e-3, 10), ("dead", 0.5, "epoch")]:
        m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
        m.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x[:1400], y[:1400], epochs=8, batch_size=32, validation_data=(x[1400:], y[1400:]), verbose=0,
              callbacks=[keras.callbacks.TensorBoard(f"{sys.argv[1]}/{name}", update_freq=freq)])
"""


@pytest.fixture(scope="module")
def keras_logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_tb")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITE), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_per_epoch_keras_log_reads_at_its_validations_steps(keras_logs):
    rec = read_log(keras_logs / "epochs")
    steps = rec.step
    # 44 batches per epoch (1400 / 32): each epoch dated at its validation's optimizer step
    assert steps.tolist() == [44.0 * (e + 1) for e in range(8)]
    assert np.all(np.isfinite(rec.loss)) and np.all(np.isfinite(rec.val_loss))
    assert rec.loss[-1] < rec.loss[0] and rec.val_loss[-1] < rec.val_loss[0]  # Adam at 1e-3 learns
    assert np.allclose(rec.lr, 1e-3)
    assert diagnose(rec).verdict == "healthy"


def test_a_keras_log_of_batches_reads_on_the_iteration_clock(keras_logs):
    rec = read_log(keras_logs / "batches")
    steps = rec.step
    assert np.all(np.diff(steps) > 0) and steps[0] == 10.0  # batch_loss every 10 steps, one clock
    assert len(steps) >= 8 * 44 // 10
    assert np.isfinite(rec.loss).sum() >= 8 * 44 // 10
    assert diagnose(rec).verdict in ("healthy", "converged")


def test_the_cli_reads_it_without_importing_tensorflow(keras_logs):
    code = ("import sys\nfrom lrkit.cli import main\nsys.argv = ['lrkit', 'diagnose', sys.argv[1]]\n"
            "try:\n    main()\nfinally:\n    print('tensorflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, str(keras_logs / "epochs")], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=SRC))
    assert "HEALTHY" in done.stdout and done.stdout.strip().endswith("False"), (done.stdout, done.stderr[-2000:])
    assert "absl" not in done.stderr


def test_a_network_adam_killed_in_its_first_epoch_is_stuck_not_converged(keras_logs):
    """Adam at LR 0.5: the first epoch's mean holds a blow-up (under 4x the rest), then the network sits dead
    at a constant prediction, its validation loss never better than its first evaluation. It read
    'converged' ("stop training") until 2026-12-07."""
    rec = read_log(keras_logs / "dead")
    assert rec.val_loss[-1] > 2.0, "premise: Adam at 0.5 kills this network (chance is ln 10 = 2.30)"
    d = diagnose(rec)
    assert d.verdict == "diverging" and d.step == 44, d.message
    assert d.advice[0].startswith("lower the LR about 10x")
