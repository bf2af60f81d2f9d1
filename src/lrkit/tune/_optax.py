"""``tune_optax``: search the LR of a JAX/optax training run with no objective to write.

``target`` is called with no arguments and returns the dict ``lrkit find`` takes for optax:
``loss_fn`` (``loss_fn(params, batch) -> scalar``), ``params`` (the initial pytree),
``optimizer`` (a factory ``lr -> GradientTransformation`` such as ``optax.adam``, or one built with
``optax.inject_hyperparams``), ``batches`` and ``val_batches`` (required: every trial is scored by
its validation loss), and optionally ``has_aux`` or ``model_state`` (a model with state outside its
params, e.g. Flax's ``batch_stats``: see :class:`lrkit.jax.OptaxTrainer`). Every trial calls it again after seeding NumPy
and Python's ``random`` with ``seed`` (params are immutable: every LR starts from the same ones)
and trains ``train_steps`` jitted steps with :class:`lrkit.jax.OptaxTrainer`, exactly as
:func:`lrkit.tune.tune_torch` does for PyTorch. With the ``lrkit`` strategy the range test
(``find_lr_optax(..., train_steps=train_steps)``) runs first, once per shared study.

Example::

    def target():
        return {"loss_fn": loss_fn, "params": init_params, "optimizer": optax.adam,
                "batches": batches, "val_batches": val_batches}

    result = lrkit.tune.tune_optax(target, train_steps=300, budget=4)
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np

from lrkit.tune._convenience import check_spec, tune_target

__all__ = ["tune_optax"]

_REQUIRED = ("loss_fn", "params", "optimizer", "batches")
_OPTIONAL = ("val_batches", "has_aux", "model_state")


def _build(target: Callable[[], dict], seed: int) -> dict[str, Any]:
    random.seed(seed)
    np.random.seed(seed)
    return check_spec(target(), required=_REQUIRED, optional=_OPTIONAL, val_key="val_batches",
                      shape="loss_fn, params, optimizer (a factory lr -> GradientTransformation), batches and "
                            "val_batches")


def _trainer(spec: dict[str, Any]) -> Any:
    from lrkit.jax import OptaxTrainer

    return OptaxTrainer(spec["loss_fn"], spec["params"], spec["optimizer"], spec["batches"],
                        val_batches=spec["val_batches"], has_aux=spec.get("has_aux", False),
                        model_state=spec.get("model_state"))


def _finder(spec: dict[str, Any], train_steps: int, seed: int) -> Any:
    from lrkit.jax import find_lr_optax

    return find_lr_optax(spec["loss_fn"], spec["params"], spec["optimizer"], spec["batches"],
                         val_batches=spec["val_batches"], has_aux=spec.get("has_aux", False),
                         model_state=spec.get("model_state"), train_steps=train_steps, progress=False, seed=seed, many_epochs=False)


def _family(spec: dict[str, Any]) -> str:
    return _trainer(spec).family


def tune_optax(target: Callable[[], dict], *, train_steps: int, **kwargs: Any):
    """:func:`lrkit.tune` for a JAX/optax target (see the module docstring).

    Args:
        target: ``target() -> dict`` with ``loss_fn``, ``params``, ``optimizer``, ``batches``,
            ``val_batches`` (and ``has_aux`` or ``model_state``).
        train_steps: optimizer steps of one run (>= 1).
        **kwargs: as for :func:`lrkit.tune.tune_keras`.
    """
    return tune_target(target, build=_build, make_trainer=_trainer, run_finder=_finder, family_of=_family,
                       train_steps=train_steps, **kwargs)
