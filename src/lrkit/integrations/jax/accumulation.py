r"""Gradient accumulation with ``optax.MultiSteps``, as lrkit counts it.

``optax.MultiSteps(opt, every_k_schedule=k)`` is optax's way to train with a batch larger than
fits in memory: its ``update`` is called on every micro-batch, averages the gradients, and only
every ``k``-th call updates the parameters (the calls in between return zero updates). lrkit
counts **optimizer updates**, as it does for PyTorch's ``accumulation_steps`` and the Hugging Face
Trainer's ``gradient_accumulation_steps``: one step of the finder trains ``k`` micro-batches and
returns their mean loss, ``train_steps`` is the run's number of updates (``len(batches) / k`` for
a list of micro-batches), and the autopilot watches one step per update.

The state tells where a run is: :class:`optax.MultiStepsState` counts the micro-batches of the
update being accumulated (``mini_step``, back to 0 when an update was made) and the updates made
(``gradient_step``).

Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=3)
    >>> params = {"w": jnp.zeros(2)}
    >>> micro_batches_per_update(tx, params), micro_batches_per_update(optax.sgd(0.1), params)
    (3, 1)
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> accumulates(state), update_completed(state)
    (True, False)
"""
from __future__ import annotations

from typing import Any

import jax
import optax

__all__ = ["accumulates", "as_transformation", "micro_batches_per_update", "unwrapped", "update_completed"]

#: the most micro-batches one update may take before lrkit stops waiting for it.
MAX_MICRO_BATCHES = 4096


def as_transformation(tx: Any) -> Any:
    """``tx`` as an optax ``GradientTransformation``: a ``MultiSteps`` (which is not one) through
    its ``gradient_transformation()``; anything else as it is."""
    return tx.gradient_transformation() if isinstance(tx, optax.MultiSteps) else tx


def unwrapped(tx: Any) -> Any:
    """The optimizer a ``MultiSteps`` accumulates for (``tx.inner_opt``, repeatedly); ``tx`` otherwise."""
    while isinstance(tx, optax.MultiSteps):
        tx = tx.inner_opt
    return tx


def _states(opt_state: Any) -> list[Any]:
    is_state = lambda node: isinstance(node, optax.MultiStepsState)  # noqa: E731
    return [leaf for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=is_state) if is_state(leaf)]


def accumulates(opt_state: Any) -> bool:
    """Whether ``opt_state`` holds a ``MultiSteps`` state (the optimizer accumulates gradients)."""
    return bool(_states(opt_state))


def update_completed(opt_state: Any) -> bool:
    """After a call of ``update``: whether it made an update (every ``MultiSteps`` in the state is
    at the start of a new accumulation); always ``True`` for an optimizer that does not accumulate.
    Reads the counters from the device."""
    return all(int(s.mini_step) == 0 for s in _states(opt_state))


def micro_batches_per_update(tx: Any, params: Any) -> int:
    """How many calls of ``update`` make the first update of ``tx`` (``k`` of a
    ``MultiSteps(opt, every_k_schedule=k)``; 1 for an optimizer that does not accumulate), found by
    stepping a fresh state on zero gradients (nothing of the caller's is touched).

    Raises:
        ValueError: no update after :data:`MAX_MICRO_BATCHES` calls (e.g. a ``should_skip_update_fn``
            that rejects zero gradients).
    """
    tx = as_transformation(tx)
    state = tx.init(params)
    if not accumulates(state):
        return 1
    zeros = jax.tree_util.tree_map(lambda p: jax.numpy.zeros_like(p), params)
    update = jax.jit(tx.update)
    for calls in range(1, MAX_MICRO_BATCHES + 1):
        _, state = update(zeros, state, params)
        if update_completed(state):
            return calls
    raise ValueError(f"the optimizer's optax.MultiSteps made no update in {MAX_MICRO_BATCHES} calls; lrkit "
                     "counts one step per update and cannot train with it")
