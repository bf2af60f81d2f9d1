"""A guarded Keras ``fit`` on disk, for the kill -9 test (run as a subprocess by
tests/test_doctor_integrations_keras.py).

Usage: python _keras_guard_worker.py STORAGE_DIR OUT_JSON DIE_AT_BATCH (-1: never)

A NaN is written into a weight before global batch 25 (the guard rolls back and lowers the LR);
the process SIGKILLs itself after global batch DIE_AT_BATCH. Prints ``start <resumed_from>``;
writes the final state to OUT_JSON.
"""
from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lrkit.doctor import Doctor  # noqa: E402
from lrkit.integrations.keras.callback import LRDoctorCallback  # noqa: E402


class Faults(keras.callbacks.Callback):
    def __init__(self, die_at: int):
        super().__init__()
        self.die_at, self.batches, self.epochs = die_at, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.batches == 25 and self.die_at >= 0:  # the first run only: a transient fault
            w = self.model.layers[0].kernel
            w.assign(np.full(w.shape, np.nan, dtype="float32"))

    def on_train_batch_end(self, batch, logs=None):
        if self.batches == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.batches += 1


def momentum_regression() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A seeded tanh MLP compiled with SGD(0.05, momentum 0.9) on a linear regression (10 batches of
    32 per epoch): the run this worker and the in-process momentum test guard."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 5)).astype("float32")
    y = (x @ rng.standard_normal((5, 1))).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), loss="mse")
    return model, x, y


def main() -> None:
    storage_dir, out, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model, x, y = momentum_regression()
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, storage="disk",
                          storage_dir=storage_dir, run_id="keras-run", resume=True,
                          sync_writes=True, forgive_first=False)  # a kill loses at most one period: no write in flight
    faults = Faults(die_at)
    orig = cb.on_train_begin

    def begin(logs=None):
        orig(logs)
        print("start", cb.guard.resumed_from, cb.lr_multiplier, flush=True)

    cb.on_train_begin = begin
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=False, callbacks=[cb, faults])
    with open(out, "w") as fh:
        json.dump({"epochs": faults.epochs, "multiplier": cb.lr_multiplier, "steps": cb._step,
                   "interventions": [i.to_dict() for i in cb.interventions],
                   "loss": float(model.evaluate(x, y, verbose=0)),
                   "lr": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))}, fh)


if __name__ == "__main__":
    main()
