"""What the examples share: sizes (small under LRKIT_EXAMPLE_SMALL=1, as the tests run them) and data.

The data is scikit-learn's bundled digits (8x8 images, 10 classes; nothing is downloaded),
standardised and split 80/20.
"""
from __future__ import annotations

import os

import numpy as np

#: ``LRKIT_EXAMPLE_SMALL=1``: a few steps of everything (the test suite runs every example so)
SMALL = os.environ.get("LRKIT_EXAMPLE_SMALL", "") not in ("", "0")
EPOCHS = 2 if SMALL else 10
FINDER_STEPS = 30 if SMALL else 100
BATCH = 64


def digits(dtype: str = "float32"):
    """``(x_train, y_train, x_val, y_val)`` as NumPy arrays (labels are int64)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(dtype)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    if SMALL:
        x, y = x[:640], y[:640]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]
