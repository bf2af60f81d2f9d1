"""The Trainer protocol: what the range test, the candidate checks and the guard drive.

A framework adapter (``lrkit.integrations.torch.TorchTrainer``, the Keras and optax ones) or a
user's own ten-line class implements it. The core never imports a framework.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Trainer"]


@runtime_checkable
class Trainer(Protocol):
    """One training step at a given LR, plus snapshot/restore of everything it changes.

    ``step(lr)`` runs one optimizer update with learning rate ``lr`` (param groups keep their
    ratios to the first group's LR) on the next batch (loaders are cycled) and returns the
    training loss of that batch as a float (may be ``nan``/``inf``).
    ``snapshot()`` returns an opaque state; ``restore(state)`` puts model, optimizer, scaler,
    data position and RNG states back bitwise. ``evaluate()`` returns a validation loss, or
    ``None`` if no validation data was given.

    Optional: ``recycle(state)`` -- a :class:`~lrkit.doctor.guard.Guard` hands back each state it
    will never read again, so that the next ``snapshot()`` may reuse its memory (``None``: let go).
    ``output_spread()`` -- how much the model's outputs on a batch vary over its examples
    (:func:`lrkit.collapse.output_spread`; ``None`` if unknown): the finder rejects a
    candidate whose model gives every input the same output.
    ``data_shape()`` -- ``{"steps_per_epoch", "examples", "parameters"}``, each ``None`` when unknown:
    optimizer steps per pass over the training set, training examples, trainable parameters
    (:func:`lrkit.finder.regime.run_shape` turns them and ``train_steps`` into the run's shape).
    ``input_sample()`` -- some of the model's inputs (an array, or a list/tuple/dict of them; ``None``
    if unknown): the finder warns when float inputs were never standardised
    (:mod:`lrkit.finder.inputs`).
    ``candidate_snapshot()`` -- the state each verification run starts from, when it should
    differ from ``snapshot()`` (``TorchTrainer``'s starts a loss scaler at the scale the range
    test settled on); the finder still ends on a ``snapshot()`` of its own.
    """

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...

    def step(self, lr: float) -> float: ...

    def evaluate(self) -> float | None: ...
