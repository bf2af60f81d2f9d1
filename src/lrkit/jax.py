"""Everything lrkit does for JAX/optax, in one place.

Example::

    import lrkit.jax as lj
    result = lj.find_lr(loss_fn, params, optax.adam, batches, train_steps=3000)
    lr = lj.to_optax(schedule)                         # a jit-able optax schedule
    pilot = lj.autopilot(loss_fn, params, optax.adamw, batches, train_steps=3000)  # no LR to choose
"""
from lrkit.integrations.jax.autopilot import OptaxAutopilot, autopilot
from lrkit.integrations.jax.schedule import OptaxSchedule, plateau_transform, to_optax
from lrkit.integrations.jax.trainer import OptaxSnapshot, OptaxTrainer, find_lr_optax

find_lr = find_lr_optax

__all__ = [
    "OptaxAutopilot",
    "OptaxSchedule",
    "OptaxSnapshot",
    "OptaxTrainer",
    "autopilot",
    "find_lr",
    "find_lr_optax",
    "plateau_transform",
    "to_optax",
]
