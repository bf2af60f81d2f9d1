"""The LR autopilot: train with no learning rate given (NumPy only; frameworks have thin doors).

finder -> plan -> guard, as one framework-free pipeline over the Trainer protocol:

* :func:`make_plan` turns a :class:`~lrkit.finder.result.FinderResult`, the optimizer family and
  the run length into an :class:`AutopilotPlan` (peak LR, schedule shape, reasons); the choices
  and their evidence are in :mod:`lrkit.autopilot.policy`;
* :class:`Autopilot` runs a plan: the LR of every step, rollbacks and a lower LR on divergence,
  a plateau reduction when validation stalls, a message for every intervention, and
  ``state_dict()`` / ``from_state_dict()`` to resume without a second finder run;
* :func:`fly` does all of it on any Trainer (``snapshot``, ``restore``, ``step(lr)``, ``evaluate``).

Framework entry points: ``lrkit.torch.autopilot`` (an ``LRScheduler`` plus a per-step hook),
``lrkit.lightning.AutopilotCallback``, ``lrkit.transformers.AutopilotCallback``,
``lrkit.keras.AutopilotCallback``, ``lrkit.jax.autopilot``.

Example:
    >>> from lrkit.autopilot import default_shape
    >>> default_shape("adamw", 1000).to_spec()
    'piecewise_linear(steps=[0, 49, 1000], lrs=[0.02, 1.0, 0.0])'
"""
from lrkit.autopilot.pilot import Autopilot, AutopilotEvent
from lrkit.autopilot.plan import (
    AutopilotError,
    AutopilotPlan,
    NotTrainable,
    check_optimizer,
    check_trainable,
    make_plan,
    resolve_train_steps,
)
from lrkit.autopilot.policy import default_shape
from lrkit.autopilot.run import Flight, fly, plan_for

__all__ = [
    "Autopilot",
    "AutopilotError",
    "AutopilotEvent",
    "AutopilotPlan",
    "Flight",
    "NotTrainable",
    "check_optimizer",
    "check_trainable",
    "default_shape",
    "fly",
    "make_plan",
    "plan_for",
    "resolve_train_steps",
]
