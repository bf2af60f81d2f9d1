"""A Keras callback that writes NaN into one weight before a given batch of ``fit`` (a blow-up the
guard must roll back), shared by the Keras guard tests."""
from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np


class NaNWeightAt(keras.callbacks.Callback):
    """Before batch ``at`` (counted over the whole fit), ``weight(model)`` is filled with NaN
    (default: the first layer's kernel)."""

    def __init__(self, at: int, weight: Callable[[Any], Any] = lambda model: model.layers[0].kernel) -> None:
        super().__init__()
        self.at, self.weight, self.batches = at, weight, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.batches == self.at:
            w = self.weight(self.model)
            w.assign(np.full(w.shape, np.nan, dtype="float32"))

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
