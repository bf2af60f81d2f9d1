r"""Where an optax optimizer keeps its learning rate, and how lrkit sets it.

optax keeps hyperparameters out of the state unless the optimizer is built with
``optax.inject_hyperparams``; then the state holds ``hyperparams["learning_rate"]`` (an
``optax.InjectStatefulHyperparamsState``), a *slot* the finder overwrites at every step. A factory
``lr -> GradientTransformation`` is wrapped with ``inject_hyperparams`` here; a transformation the
user built must hold at least one slot. Several slots (``optax.multi_transform`` groups) keep
their ratios to the first, like PyTorch's param groups.

Example:
    >>> import jax.numpy as jnp, optax
    >>> state = optax.inject_hyperparams(optax.adam)(learning_rate=0.1).init({"w": jnp.zeros(2)})
    >>> [float(s.hyperparams["learning_rate"]) for s in lr_slots(with_lr(state, 0.5, (1.0,)))]
    [0.5]
    >>> infer_family(optax.adam, []), infer_family(lambda lr: optax.adam(lr), [])
    ('adam', 'unknown')
"""
from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lrkit import scaling
from lrkit.integrations.jax.accumulation import as_transformation, unwrapped

__all__ = ["CACHE_SIZE", "PLACEHOLDER_LR", "cached_factory", "call_factory", "check_slots", "factory_name",
           "infer_family", "is_lr_slot", "lr_slots", "with_lr"]

#: the LR a factory is built with before the test overwrites it (any positive value would do).
PLACEHOLDER_LR = 1e-3
#: built optimizers and compiled steps kept for reuse across calls (each holds its loss_fn and
#: optimizer alive); the optax trainer's caches use it too.
CACHE_SIZE = 16

_INJECT_STATES = tuple(
    cls for cls in (getattr(optax, "InjectStatefulHyperparamsState", None),
                    getattr(optax, "InjectHyperparamsState", None))
    if cls is not None
)


# -- the learning rate inside the optimizer state ----------------------------------------------
def is_lr_slot(node: Any) -> bool:
    """An inject_hyperparams state holding a ``learning_rate``."""
    return (isinstance(node, _INJECT_STATES) and isinstance(node.hyperparams, dict)
            and "learning_rate" in node.hyperparams)


def lr_slots(opt_state: Any) -> list[Any]:
    """The outermost inject_hyperparams states with a ``learning_rate``, in pytree order."""
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=is_lr_slot)
    return [leaf for leaf in leaves if is_lr_slot(leaf)]


def with_lr(opt_state: Any, lr: Any, ratios: tuple[float, ...]) -> Any:
    """``opt_state`` with the k-th injected learning rate set to ``lr * ratios[k]`` (traceable)."""
    leaves, treedef = jax.tree_util.tree_flatten(opt_state, is_leaf=is_lr_slot)
    out, k = [], 0
    for leaf in leaves:
        if is_lr_slot(leaf):
            old = leaf.hyperparams["learning_rate"]
            new = jnp.asarray(lr * ratios[k], dtype=jnp.result_type(old))
            leaf = leaf._replace(hyperparams={**leaf.hyperparams, "learning_rate": new})
            k += 1
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def check_slots(slots: list[Any], where: str) -> None:
    if not slots:
        raise ValueError(
            f"{where} has no injectable learning rate: build it with optax.inject_hyperparams, e.g. "
            "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), or pass the factory itself "
            "(optax.adam, or lambda lr: ...) as optimizer_factory"
        )
    for slot in slots:
        if "learning_rate" in (getattr(slot, "hyperparams_states", None) or {}):
            raise ValueError(
                f"{where} gives learning_rate as a schedule; inject_hyperparams recomputes it from the step "
                "count at every update, so the range test cannot set it. Build the optimizer with a "
                "constant learning_rate for the test (the suggestion is the peak LR to give your schedule)"
            )
        if lr_slots(slot.inner_state):
            raise ValueError(
                f"{where} nests inject_hyperparams inside inject_hyperparams; the inner learning_rate is "
                "the one used and the outer one is ignored. Pass the inner optimizer (or its factory) only"
            )


# -- building the optimizer -------------------------------------------------------------------
def call_factory(factory: Callable[[float], Any]) -> tuple[Any, Any]:
    """``factory(lr)`` as given, and wrapped with inject_hyperparams (which one is used needs params)."""
    tx = as_transformation(factory(PLACEHOLDER_LR))
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"optimizer_factory(lr) must return an optax GradientTransformation (or an optax.MultiSteps), "
            f"got {type(tx).__name__}"
        )

    def inner(learning_rate):  # no functools.wraps: inject_hyperparams reads this signature
        return as_transformation(factory(learning_rate))

    return tx, optax.inject_hyperparams(inner)(learning_rate=PLACEHOLDER_LR)


cached_factory = functools.lru_cache(maxsize=CACHE_SIZE)(call_factory)


def factory_name(optimizer_factory: Any) -> str:
    """A short name of the optimizer the user passed, for messages."""
    if isinstance(optimizer_factory, (optax.GradientTransformation, optax.MultiSteps)):
        return f"this {type(optimizer_factory).__name__}"
    return getattr(optimizer_factory, "__name__", None) or type(optimizer_factory).__name__


def infer_family(optimizer_factory: Any, slots: list[Any]) -> str:
    """The scaling family of the optimizer, from the factory's name (``"unknown"`` if not recognisable)."""
    optimizer_factory = unwrapped(optimizer_factory)
    if isinstance(optimizer_factory, optax.GradientTransformation):
        # optax.inject_hyperparams(optax.adam)(...) keeps optax.adam in its init closure as
        # `inner_factory`; anything else (a chain, a custom transformation) stays unknown.
        init = optimizer_factory.init
        inner = None
        if isinstance(init, types.FunctionType):
            inner = inspect.getclosurevars(init).nonlocals.get("inner_factory")
        family = scaling.optimizer_family(inner) if callable(inner) else "unknown"
    else:
        family = scaling.optimizer_family(optimizer_factory) if callable(optimizer_factory) else "unknown"
    if family == "sgd" and slots:
        momentum = slots[0].hyperparams.get("momentum")
        if momentum is not None and float(momentum) > 0:
            family = "sgd_momentum"
    return family
