"""A loss that stops changing at all is not an LR too low (lrkit.doctor.signs.flat, FROZEN_REL):
a Keras run blown up in its first epoch, logged once per epoch, then bit-for-bit stuck."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lrkit.doctor import diagnose, read_log


def epochs(first: float, rest: float, n: int = 12, wobble: float = 1e-7) -> dict[str, list[float]]:
    """Per-epoch rows: ``first``, then ``rest`` repeated to ``wobble`` (an epoch mean summed in another order)."""
    loss = [first] + [rest * (1 + wobble * ((-1) ** e)) for e in range(1, n)]
    return {"epoch": list(range(n)), "loss": loss, "accuracy": [0.097] * n}


def test_moved_then_frozen_is_diverging_not_flat():
    d = diagnose(epochs(14.29, 14.549266))
    assert d.verdict == "diverging" and d.step == 0
    assert "stopped changing at all" in d.message and d.advice[0].startswith("lower the LR")
    assert all("raise" not in a for a in d.advice)
    assert "same order every epoch" in d.message  # the one healthy run that reads the same, named


def test_frozen_from_the_first_row_stays_flat_with_the_gradients_to_check_first():
    d = diagnose(epochs(2.302585, 2.302585))
    assert d.verdict == "flat" and "has not changed at all" in d.message
    assert d.advice[0].startswith("check that gradients reach the parameters") and d.advice[1].startswith("raise")


@pytest.mark.parametrize("scale", [1e-5, 1e-4])
def test_a_slow_loss_is_not_frozen(scale):
    """An LR too low still moves the loss in its sixth digit: flat, advised to raise the LR first."""
    n = 12
    loss = [2.302585 * (1 - scale * e) for e in range(n)]
    d = diagnose({"epoch": list(range(n)), "loss": loss})
    assert d.verdict == "flat" and d.advice[0].startswith("raise the LR") and "changed at all" not in d.message


def test_keras_fit_blown_up_in_its_first_epoch(tmp_path):
    """The real thing: SGD at LR 30 on the digits through Keras fit, its CSVLogger read back."""
    keras = pytest.importorskip("keras")
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.SGD(30.0), "sparse_categorical_crossentropy", metrics=["accuracy"])
    log = tmp_path / "training.log.csv"
    history = model.fit(x[:1500], y[:1500], validation_data=(x[1500:], y[1500:]), epochs=10, batch_size=32,
                        verbose=0, callbacks=[keras.callbacks.CSVLogger(str(log))])
    losses = np.array(history.history["loss"])
    assert np.all(np.isfinite(losses)) and losses[-1] > 4 * math.log(10)  # dead: far above chance
    assert np.ptp(np.log(losses[-4:])) < 1e-6  # and no longer changing
    for source in (log, history):
        v = diagnose(read_log(source))
        assert v.verdict == "diverging" and v.advice[0].startswith("lower the LR"), (source, v.message)
