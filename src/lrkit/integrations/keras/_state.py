"""A Keras model's optimizer variables, built first where ``fit`` has not built them yet, and the
host copies of weights and optimizer variables that the guard's snapshots hold (shared by the finder's
trainer and the doctor's and autopilot's callbacks), and their restore."""
from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = ["optimizer_variables", "host_copies", "restore_host_copies"]


def optimizer_variables(model: Any) -> list[Any]:
    """``model.optimizer.variables``, the optimizer built first if it is not yet.

    On the TensorFlow backend ``fit`` builds the optimizer inside its first traced step, after the
    callbacks' ``on_train_begin`` and first ``on_train_batch_begin``: a snapshot taken there held the
    iteration counter and the LR but no slot (SGD's momentum, Adam's moments), and a rollback to it
    kept the diverged run's momentum. Built here as Keras builds it before a first step
    (``optimizer.build(model.trainable_variables)``, as ``Trainer._symbolic_build`` does), the slots
    start at their initial values and are in every snapshot; a snapshot read back from disk into a
    fresh process meets them too.
    """
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    return list(opt.variables)


def host_copies(model: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """NumPy copies of ``model.get_weights()`` and of every optimizer variable, the optimizer built first."""
    weights = [np.array(w, copy=True) for w in model.get_weights()]
    opt = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in optimizer_variables(model)]
    return weights, opt


def restore_host_copies(model: Any, state: tuple[list[np.ndarray], list[np.ndarray]], *,
                        keep_iteration: bool = False) -> None:
    """Put :func:`host_copies` back: the weights and every optimizer variable but the LR, which the
    callback that rolls back sets itself (and, with ``keep_iteration``, the iteration counter: the clock
    of a schedule that goes on through a rollback, as the guard's does). A snapshot that does not match
    the optimizer's variables one for one raises (``zip(strict=True)``) instead of restoring part of it."""
    weights, opt = state
    model.set_weights(weights)
    for v, saved in zip(optimizer_variables(model), opt, strict=True):
        if v.path.endswith("learning_rate") or (keep_iteration and v.path.endswith("iteration")):
            continue
        v.assign(saved)
