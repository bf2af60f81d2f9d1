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


def check_death_answered(interventions, net, x_val, y_val, probed: bool) -> None:
    """A guard watching a run whose LR kills the network: with the output probe on (``probed``) the
    death is caught and the run rolled back to a state from no later than its onset, ending with a
    live validation loss (< 0.9); without it, nothing is caught and the run ends at the constant
    prediction's loss (> 1.0, three classes)."""
    import torch

    died = [r for r in interventions if "network died" in r.message]
    with torch.no_grad():
        val = torch.nn.functional.cross_entropy(net(x_val), y_val).item()
    if probed:
        assert died and died[0].restored_to <= died[0].onset
        assert val < 0.9
    else:
        assert not died and val > 1.0
