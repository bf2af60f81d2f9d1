r"""A Keras model's optimizer variables, built first where ``fit`` has not built them yet, and the
host copies of weights and optimizer variables that the guard's snapshots hold (shared by the finder's
trainer and the doctor's and autopilot's callbacks), and their restore.

**Frozen weights are fingerprinted, not copied.** A LoRA fine-tune (``layer.enable_lora(rank)``,
KerasHub's ``backbone.enable_lora``) or a frozen backbone (``base.trainable = False``) keeps most of
its weights non-trainable, and no training step changes them: copying them into each of the guard's
snapshots would cost the model's size several times over. A non-trainable variable of two or more
dimensions (a kernel, an embedding table) is kept as :class:`Fingerprint` -- :data:`SAMPLE` evenly
spaced values -- and checked instead of written back. One-dimensional non-trainable variables
(BatchNormalization's moving statistics, which do change, a frozen bias, a seed state) are copied
as before. A fingerprinted variable seen changing between two snapshots is copied in full from
then on (:class:`FrozenWeights`); a restore to a snapshot taken before that was seen names it and
warns (its value cannot go back).
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import keras
import numpy as np

from lrkit.doctor.fingerprints import StillParts, same_fingerprint

__all__ = ["SAMPLE", "Fingerprint", "FrozenWeights", "host_copies", "moved_since", "optimizer_variables",
           "restore_host_copies", "warn_moved"]

#: values of a fingerprinted variable kept in a snapshot
SAMPLE = 256


class Fingerprint(NamedTuple):
    """A frozen variable left out of a snapshot: its shape and :data:`SAMPLE` of its values."""

    shape: tuple[int, ...]
    sample: np.ndarray


def _fingerprint(v: Any) -> Fingerprint:
    shape = tuple(int(d) for d in v.shape)
    n = int(np.prod(shape))
    idx = np.arange(0, n, max(1, n // SAMPLE))[:SAMPLE]
    picked = keras.ops.take(keras.ops.reshape(v.value, (-1,)), keras.ops.convert_to_tensor(idx))
    return Fingerprint(shape, np.array(keras.ops.convert_to_numpy(picked), dtype=np.float64, copy=True))


def _same(a: Fingerprint, b: Fingerprint) -> bool:
    return a.shape == b.shape and same_fingerprint(a.sample, b.sample)


class FrozenWeights:
    """Which of a model's weights the next snapshot fingerprints (see the module docstring)."""

    def __init__(self) -> None:
        self._parts = StillParts()

    @property
    def moving(self) -> set[str]:
        """The paths of the frozen weights seen changing: copied in full from then on."""
        return self._parts.moving

    def left_out(self, variables: list[Any]) -> dict[str, Fingerprint]:
        """The fingerprints of the variables to leave out of a snapshot taken now, by path."""
        now = {v.path: _fingerprint(v) for v in variables
               if not v.trainable and len(v.shape) >= 2 and v.path not in self.moving}
        still = self._parts.still({path: f.sample for path, f in now.items()})
        return {path: now[path] for path in still}


def moved_since(variables: list[Any], saved: list[Any]) -> list[str]:
    """The paths of the fingerprinted variables whose values are no longer those of ``saved``."""
    return [v.path for v, s in zip(variables, saved) if isinstance(s, Fingerprint) and not _same(_fingerprint(v), s)]


def warn_moved(moved: list[str]) -> None:
    if moved:
        warnings.warn(
            f"lrkit: {len(moved)} frozen weight(s) changed since this snapshot, which kept only a fingerprint of "
            f"them ({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}); they keep their current values",
            RuntimeWarning, stacklevel=3)


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


def host_copies(model: Any, frozen: FrozenWeights | None = None) -> tuple[list[Any], list[np.ndarray]]:
    """NumPy copies of ``model.weights`` (the frozen ones :class:`FrozenWeights` leaves out as
    fingerprints, with ``frozen``) and of every optimizer variable, the optimizer built first."""
    left = frozen.left_out(model.weights) if frozen is not None else {}
    weights = [left[v.path] if v.path in left else np.array(keras.ops.convert_to_numpy(v.value), copy=True)
               for v in model.weights]
    opt = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in optimizer_variables(model)]
    return weights, opt


def restore_host_copies(model: Any, state: tuple[list[np.ndarray], list[np.ndarray]], *,
                        keep_iteration: bool = False) -> None:
    """Put :func:`host_copies` back: the weights and every optimizer variable but the LR, which the
    callback that rolls back sets itself (and, with ``keep_iteration``, the iteration counter: the clock
    of a schedule that goes on through a rollback, as the guard's does). A snapshot that does not match
    the optimizer's variables one for one raises (``zip(strict=True)``) instead of restoring part of it."""
    weights, opt = state
    variables = model.weights
    if len(variables) != len(weights):
        raise ValueError(f"the snapshot holds {len(weights)} weights and the model has {len(variables)}")
    warn_moved(moved_since(variables, weights))
    for v, w in zip(variables, weights):
        if not isinstance(w, Fingerprint):
            v.assign(w)
    for v, saved in zip(optimizer_variables(model), opt, strict=True):
        if v.path.endswith("learning_rate") or (keep_iteration and v.path.endswith("iteration")):
            continue
        v.assign(saved)
