"""The whole autopilot over the framework-free Trainer protocol: finder, plan, guarded run.

:func:`plan_for` runs the finder on any :class:`~lrkit.finder.trainer.Trainer` within its budget
(at most 30% of the run, :func:`lrkit.finder.range_test.plan_budget`) and returns the
:class:`~lrkit.autopilot.plan.AutopilotPlan`; :func:`fly` also trains: ``trainer.step(lr)`` for
every step with the autopilot's LR, the guard watching, ``trainer.evaluate()`` every
``eval_every`` steps for the plateau rule. The framework entry points (``lrkit.torch.autopilot``,
the Lightning, Hugging Face and Keras callbacks, ``lrkit.jax.autopilot``) do the same inside each
framework's own loop.

Example:
    >>> class Quadratic:                     # a ten-line Trainer: gradient descent on (x - 3)^2
    ...     def __init__(self): self.x = 0.0
    ...     def snapshot(self): return self.x
    ...     def restore(self, s): self.x = s
    ...     def step(self, lr):
    ...         loss = (self.x - 3) ** 2 + 0.1
    ...         self.x -= lr * 2 * (self.x - 3)
    ...         return loss
    ...     def evaluate(self): return (self.x - 3) ** 2 + 0.1
    >>> flight = fly(Quadratic(), family="sgd", train_steps=300)
    >>> flight.final_val_loss < 0.1 + 1e-6           # converged to the minimum 0.1
    True
    >>> [e.kind for e in flight.pilot.interventions]  # then the validation loss stalls: LR halved
    ['plateau', 'plateau']
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from lrkit import scaling
from lrkit.autopilot.pilot import Autopilot, check_storage
from lrkit.autopilot.plan import AutopilotPlan, check_optimizer, make_plan, resolve_train_steps
from lrkit.collapse import OUTPUT_SPREAD, check_every_arg
from lrkit.finder.range_test import find, plan_budget, plan_verify_budget
from lrkit.finder.regime import trainer_shape
from lrkit.schedules.base import Schedule

__all__ = ["Flight", "fly", "plan_for"]


def plan_for(trainer: Any, *, family: str, train_steps: int, shape: Schedule | None = None,
             peak_lr: float | None = None, start_lr: float | None = None, end_lr: float | None = None,
             batch_size: int | None = None, seed: int = 0) -> tuple[AutopilotPlan, Any]:
    """Run the finder on ``trainer`` (state restored afterwards) and decide the plan.

    Returns:
        ``(plan, finder_result)``.

    Raises:
        AutopilotError: a learning-rate-free family or a bad argument.
        NotTrainable: the finder's curve is flat.
    """
    check_optimizer(family)
    train_steps = resolve_train_steps(train_steps)
    lo, hi = scaling.lr_range(family)
    num_iter, verify_steps = plan_budget(train_steps=train_steps)
    run = trainer_shape(trainer, train_steps)  # data_shape() is optional in the Trainer protocol
    result = find(trainer, start_lr=lo if start_lr is None else start_lr, end_lr=hi if end_lr is None else end_lr,
                  num_iter=num_iter, verify_steps=verify_steps, family=family, batch_size=batch_size, rng_seed=seed,
                  verify_budget=plan_verify_budget(train_steps, num_iter), train_steps=train_steps, **run)
    return make_plan(result, family=family, train_steps=train_steps, shape=shape, peak_lr=peak_lr), result


@dataclass
class Flight:
    """What :func:`fly` did: the autopilot (plan, events), the finder result, the losses."""

    pilot: Autopilot
    finder: Any
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float | None:
        return self.val_losses[-1][1] if self.val_losses else None

    @property
    def compute_steps(self) -> int:
        """Optimizer steps spent in all: the finder's plus the run's."""
        return self.pilot.plan.finder_cost_steps + len(self.losses)


def fly(trainer: Any, *, family: str, train_steps: int, shape: Schedule | None = None,
        peak_lr: float | None = None, eval_every: int | None = None, guard: bool = True,
        plateau: bool = True, plan: AutopilotPlan | None = None, logger: logging.Logger | None = None,
        seed: int = 0, skip_spikes: bool = True, check_outputs_every: int = 25, storage: str = "memory",
        storage_dir: Any = None, restart_on_overfit: bool = True) -> Flight:
    """Finder, plan and the guarded run on one Trainer (see the module docstring).

    Args:
        trainer: ``snapshot()``, ``restore(state)``, ``step(lr) -> loss``, ``evaluate() -> float | None``.
        family: the optimizer family (:data:`lrkit.scaling.FAMILIES`).
        train_steps: optimizer steps of the run.
        shape, peak_lr: as in :func:`~lrkit.autopilot.plan.make_plan`.
        eval_every: validate every this many steps (default: a tenth of the run) and at the end.
        guard, plateau, skip_spikes, restart_on_overfit: as in :class:`~lrkit.autopilot.pilot.Autopilot`
            (a bad batch's update is left out when the trainer's ``step`` can do it: ``skips_steps``,
            as lrkit's ``TorchTrainer``).
        plan: a plan decided earlier (the finder is then not run).
        seed: seed of the finder's own randomness.
        check_outputs_every: with a trainer that has ``output_spread()`` (lrkit's torch and Keras
            trainers), the spread of the model's outputs is measured before the first step, then
            before every this many steps and right after a rollback (0 = never): a network whose
            outputs stopped depending on its inputs is dead (:mod:`lrkit.doctor.signs.dead`) and
            the guard rolls it back.
        storage, storage_dir: where the guard keeps its snapshots (as in
            :class:`~lrkit.autopilot.pilot.Autopilot`); they are dropped when the run ends.

    Raises:
        GuardGaveUp: the guard gave up (the trainer is left at its last good state).
    """
    train_steps = resolve_train_steps(train_steps)
    check_every_arg("fly: check_outputs_every", check_outputs_every)
    check_storage(storage, storage_dir, "fly")
    finder = None
    if plan is None:
        plan, finder = plan_for(trainer, family=family, train_steps=train_steps, shape=shape, peak_lr=peak_lr,
                                seed=seed)
    every = eval_every if eval_every is not None else max(1, train_steps // 10)
    pilot = Autopilot(plan, guard=guard, plateau=plateau, logger=logger, skip_spikes=skip_spikes, storage=storage,
                      storage_dir=storage_dir, restart_on_overfit=restart_on_overfit).attach(trainer)
    flight = Flight(pilot, finder)
    try:
        _fly_steps(trainer, pilot, flight, train_steps, every, check_outputs_every)
    finally:
        pilot.close()  # the snapshots (their files on disk) go; events and records stay
    return flight


def _fly_steps(trainer: Any, pilot: Autopilot, flight: Flight, train_steps: int, every: int,
               check_outputs_every: int) -> None:
    """The guarded run of :func:`fly`, step by step, into ``flight``."""
    ask = pilot.skips and getattr(trainer, "skips_steps", False)  # a bad batch's update left out
    spread = getattr(trainer, "output_spread", None) if check_outputs_every else None
    measured: dict[str, float] = {}  # the spread of the state before step t, for step t's observation
    due = callable(spread)
    for t in range(train_steps):
        if due or (callable(spread) and t % check_outputs_every == 0):
            v = spread()
            measured, due = ({OUTPUT_SPREAD: float(v)} if v is not None else measured), False
        before = pilot.guard.skipped_count if ask else 0
        if ask:
            loss = float(trainer.step(pilot.lr(t), skip=lambda v: pilot.skip(t, v)))
        else:
            loss = float(trainer.step(pilot.lr(t)))
        flight.losses.append(loss)
        val = None
        if (t + 1) % every == 0 or t + 1 == train_steps:
            v = trainer.evaluate()
            val = None if v is None else float(v)
        if ask and pilot.guard.skipped_count > before:
            if val is not None:
                flight.val_losses.append((t, val))
            continue
        rolled = pilot.observe(t, loss, val_loss=val if val is not None and math.isfinite(val) else None,
                               metrics=measured or None)
        measured, due = {}, rolled and callable(spread)  # a restored state is measured before its next step
        if val is not None and not rolled:
            flight.val_losses.append((t, val))
    if flight.losses and (not flight.val_losses or flight.val_losses[-1][0] != train_steps - 1):
        v = trainer.evaluate()  # the last step was rolled back: validate the state we end with
        if v is not None:
            flight.val_losses.append((train_steps - 1, float(v)))
