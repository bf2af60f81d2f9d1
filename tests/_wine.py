"""The three-class wine data, unscaled (features from 0.1 to 1680): a learning rate too high for it
kills a ReLU network's units within a few steps, the case the dead-network sign is for."""
from __future__ import annotations

import numpy as np


def unscaled_wine() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 features never scaled and int64 labels, in one fixed shuffled order (the
    first 130 rows for training, the other 48 for validation in the tests that use it)."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm].astype("float32"), y[perm].astype("int64")
