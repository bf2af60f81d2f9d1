"""Export an lrkit :class:`~lrkit.schedules.Schedule` to a PyTorch LR scheduler.

:func:`to_torch` returns a :class:`LRKitScheduler`, a real subclass of
``torch.optim.lr_scheduler.LRScheduler`` that sets the optimizer's learning rates to exactly
the values of the schedule (computed in float64 by NumPy, block by block).

Conventions:

* **The scheduler counts optimizer steps.** At construction the LR of step 0 is set; every
  ``scheduler.step()`` (called after ``optimizer.step()``) moves to the next step and sets its
  LR. After ``k`` calls the optimizer holds ``schedule(k)``.
* **Several parameter groups.** With one schedule, group ``g`` gets
  :math:`\\eta^{(g)}_t = r_g\\, s(t)` where :math:`r_g` = (the group's LR) / (the first group's
  LR) when the scheduler is built — discriminative LRs keep their ratios and the first group
  gets exactly ``s(t)`` (if its LR is 0 -- a frozen group -- it stays at 0, and the first group
  above 0 gets ``s(t)``). Pass ``group_scales=[...]`` to give the ratios explicitly, or a list
  of schedules (one per group) for independent schedules.
* **Checkpoints.** ``state_dict()`` holds progress only (``{"step": k}`` and, for a plateau
  schedule, its :class:`~lrkit.schedules.PlateauState`); the configuration is the code that
  built the scheduler. Rebuild the optimizer and the scheduler as at the start of the run,
  then call ``optimizer.load_state_dict`` and ``scheduler.load_state_dict``: the run continues
  with exactly the LRs of an uninterrupted run. Nothing is written into the param groups but
  ``"lr"`` (no ``initial_lr``), and ``optimizer.step`` is not patched.
* **Tensor learning rates** (``torch.optim.Adam(params, lr=torch.tensor(1e-3))``) are updated
  in place with ``fill_`` so a ``torch.compile``'d ``optimizer.step`` is not recompiled when
  the LR changes. The value is rounded to the tensor's dtype.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrkit.integrations.torch.groups import group_lr, reference_lr
from lrkit.schedules.base import Schedule
from lrkit.schedules.plateau import ReduceOnPlateau

__all__ = ["LRKitScheduler", "to_torch"]

#: steps evaluated at once by NumPy (the cached block)
_BLOCK = 2048


class LRKitScheduler(LRScheduler):
    r"""A ``torch.optim.lr_scheduler.LRScheduler`` driven by lrkit schedules.

    Build it with :func:`to_torch`. With ``t`` the number of :meth:`step` calls so far (the
    optimizer-step index, see :attr:`step_count`), group ``g`` holds

    .. math::
        \eta^{(g)}_t = r_g \, s_g(t) \qquad\text{or, for a plateau schedule,}\qquad
        \eta^{(g)}_t = r_g \max\big(s(t)\, c,\; \eta_{min}\big)

    where :math:`s_g` is the group's schedule, :math:`r_g` its scale and :math:`c` the
    plateau scale (see :class:`~lrkit.schedules.ReduceOnPlateau`).

    It does not call ``LRScheduler.__init__``: that would write ``initial_lr`` into every
    param group, wrap ``optimizer.step`` and take an extra step. ``isinstance(sched,
    LRScheduler)``, :meth:`get_last_lr`, :meth:`state_dict`/:meth:`load_state_dict` and
    ``optimizer`` work as torch documents them; :attr:`last_epoch` is the step count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules: Sequence[Schedule],
                 scales: Sequence[float], plateau: ReduceOnPlateau | None = None) -> None:
        # LRScheduler.__init__ is deliberately not called (see the class docstring).
        self.optimizer = optimizer
        self._schedules = list(schedules)
        self._scales = [float(r) for r in scales]
        self._plateau = plateau
        self._pstate = plateau.init() if plateau is not None else None
        self._single = len(self._schedules) == 1
        self._n_groups = len(optimizer.param_groups)
        self._scan_groups(optimizer.param_groups)
        self._count = 0
        self._block_start = 0
        self._block: list = []
        self._apply()

    # -- progress ---------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """The index ``t`` of the optimizer step whose LR is set (``step()`` calls so far)."""
        return self._count

    @property
    def last_epoch(self) -> int:  # torch's name; here it counts optimizer steps
        """Same as :attr:`step_count` (torch's attribute name; it counts optimizer steps)."""
        return self._count

    @property
    def base_lrs(self) -> list[float]:
        """The LR of each group at step 0 (torch's attribute name)."""
        return self._values_at(0)

    @property
    def plateau_state(self):
        """The current :class:`~lrkit.schedules.PlateauState`, or ``None``."""
        return self._pstate

    def step(self, metric: float | None = None) -> None:  # type: ignore[override]
        """Advance one optimizer step, or observe a metric (plateau schedules only).

        * ``step()``: move to the next optimizer step and set its LR. Call it after every
          ``optimizer.step()``.
        * ``step(metric)``: only for a schedule built from
          :class:`~lrkit.schedules.ReduceOnPlateau`. Feeds the metric (e.g. the validation
          loss, once per epoch) to the plateau state and re-sets the LR of the *current* step
          with the new scale; it does **not** advance time — the wrapped schedule counts
          optimizer steps, which ``step()`` does. With a constant schedule, calling only
          ``step(val_loss)`` once per epoch gives exactly torch's ``ReduceLROnPlateau``.

        Raises:
            ValueError: a metric for a schedule that is not a plateau schedule, or a metric
                that is not a number.
        """
        if metric is None:
            self._count += 1
        else:
            if self._plateau is None:
                raise ValueError(
                    f"step(metric): this scheduler has no plateau schedule, got metric={metric!r}; "
                    f"call step() once per optimizer step (torch's deprecated step(epoch) is not "
                    f"supported), or build it from reduce_on_plateau(...) to feed metrics")
            if isinstance(metric, torch.Tensor):
                metric = metric.item()
            self._pstate = self._plateau.update(self._pstate, metric)
        self._apply()

    def _fill(self, start: int) -> None:
        steps = np.arange(start, start + _BLOCK, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if self._single:
                block = np.asarray(self._schedules[0](steps), dtype=np.float64)
            else:
                block = np.stack([s(steps) for s in self._schedules], axis=1)
        bad = np.flatnonzero(~np.isfinite(block).reshape(len(steps), -1).all(axis=1))
        if bad.size:
            value = block[bad[0]]
            raise ValueError(f"to_torch: the schedule gives the learning rate {value} at step {start + int(bad[0])}; "
                             f"a learning rate must be a finite number")
        self._block = block.tolist()
        self._block_start = start

    def _scan_groups(self, groups) -> None:
        """Note which groups hold tensor LRs, and whether the fast path applies."""
        if len(groups) != self._n_groups:
            raise ValueError(f"the optimizer now has {len(groups)} param groups but the scheduler "
                             f"was built for {self._n_groups}; build a new scheduler after "
                             f"optimizer.add_param_group")
        self._first_group = groups[0]
        self._tensor = [isinstance(g["lr"], torch.Tensor) for g in groups]
        # fast path: one schedule, every ratio exactly 1, plain float LRs, no plateau
        self._uniform = (self._single and self._plateau is None and not any(self._tensor)
                         and all(r == 1.0 for r in self._scales))

    def _apply(self) -> None:
        i = self._count - self._block_start
        if i >= len(self._block) or i < 0:
            self._fill(self._count)
            i = 0
        v = self._block[i]
        groups = self.optimizer.param_groups
        if groups[0] is not self._first_group or len(groups) != self._n_groups:
            # optimizer.load_state_dict replaces the group dicts: look at them again
            self._scan_groups(groups)
        if self._uniform:
            for g in groups:
                g["lr"] = v
            return
        for g, lr, is_tensor in zip(groups, self._row(v), self._tensor):
            if is_tensor:
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _row(self, v) -> list[float]:
        """Per-group LRs from the block entry ``v`` (a float, or one float per group)."""
        if self._plateau is not None:
            v = max(v * self._pstate.scale, self._plateau.min_lr)
        if self._single:
            return [v * r for r in self._scales]
        return list(v)

    def _values_at(self, t: int) -> list[float]:
        steps = np.array([t], dtype=np.float64)
        if self._single:
            return self._row(float(self._schedules[0](steps)[0]))
        return self._row([float(s(steps)[0]) for s in self._schedules])

    # -- what torch asks of a scheduler ----------------------------------------------------
    def get_last_lr(self) -> list[float | torch.Tensor]:
        """The LRs now set on the groups (tensor LRs as copies), like torch's ``get_last_lr``."""
        return [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """The LRs of the current step, computed from the schedules (floats, float64)."""
        return self._values_at(self._count)

    def state_dict(self) -> dict[str, Any]:
        """Progress only: ``{"step": t}``, plus ``"plateau"`` (a dict) for plateau schedules."""
        d: dict[str, Any] = {"step": self._count}
        if self._plateau is not None:
            d["plateau"] = self._plateau.state_dict(self._pstate)
        return d

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore progress from :meth:`state_dict` and set the LRs of that step.

        Raises:
            ValueError: missing or unexpected keys, or a negative/non-integer step.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"load_state_dict: expected a dict from state_dict(), "
                             f"got {type(state_dict).__name__}")
        expected = {"step"} | ({"plateau"} if self._plateau is not None else set())
        if set(state_dict) != expected:
            raise ValueError(f"load_state_dict: keys must be {sorted(expected)}, got "
                             f"{sorted(state_dict)} (a state_dict from a torch scheduler or from a "
                             f"scheduler with{'out' if self._plateau is not None else ''} a plateau "
                             f"schedule does not fit)")
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"load_state_dict: step must be a whole number >= 0, got {step!r}")
        if self._plateau is not None:
            self._pstate = self._plateau.load_state(dict(state_dict["plateau"]))
        self._count = int(step)
        self._apply()

    def __repr__(self) -> str:
        specs = ", ".join(s.to_spec() for s in self._schedules)
        return f"LRKitScheduler([{specs}], step={self._count})"


def to_torch(schedule: Schedule | ReduceOnPlateau | Sequence[Schedule],
             optimizer: torch.optim.Optimizer, *,
             group_scales: Sequence[float] | None = None) -> LRKitScheduler:
    r"""A ``torch.optim.lr_scheduler.LRScheduler`` that sets ``schedule``'s LRs on ``optimizer``.

    .. math::
        \eta^{(g)}_t = r_g\, s(t), \qquad r_g = \frac{\text{lr of group } g}{\text{lr of group } 0}
        \;\;\text{(at construction, unless } \texttt{group\_scales} \text{ is given)}

    where :math:`t` is the number of ``scheduler.step()`` calls so far. The first group's LR
    given to the optimizer only serves the ratios; the LR used is the schedule's. LRs are
    evaluated in float64 by NumPy, so ``optimizer.param_groups[0]["lr"] == schedule(t)``
    exactly.

    Args:
        schedule: a :class:`~lrkit.schedules.Schedule`; a list of schedules, one per param
            group (no ratios are applied then); or a
            :class:`~lrkit.schedules.ReduceOnPlateau` (see :meth:`LRKitScheduler.step` for how
            ``step(metric)`` and ``step()`` split the work).
        optimizer: a ``torch.optim.Optimizer``. Build the scheduler from the freshly built
            optimizer (before ``optimizer.load_state_dict`` when resuming) so the ratios are
            the ones you configured.
        group_scales: :math:`r_g` for every group (finite, >= 0), instead of the ratios of the
            optimizer's LRs. Required when every group's LR is 0.

    Returns:
        A :class:`LRKitScheduler`; the LR of step 0 is already set.

    Raises:
        ValueError: a wrong type or length of ``schedule``/``group_scales``, a first group with
            LR <= 0 (without ``group_scales``), or a non-finite/negative scale.

    Example:
        >>> import torch
        >>> from lrkit.schedules import cosine
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = to_torch(cosine(base_lr=0.1, total_steps=100), opt)
        >>> for _ in range(50):
        ...     opt.step(); sched.step()
        >>> round(opt.param_groups[0]["lr"], 6), sched.state_dict()
        (0.05, {'step': 50})
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"to_torch: optimizer must be a torch.optim.Optimizer, "
                         f"got {type(optimizer).__name__}")
    groups = optimizer.param_groups
    n = len(groups)
    plateau = None
    if isinstance(schedule, ReduceOnPlateau):
        plateau = schedule
        schedules = [schedule.schedule]
    elif isinstance(schedule, Schedule):
        schedules = [schedule]
    elif isinstance(schedule, (list, tuple)) and schedule and all(isinstance(s, Schedule) for s in schedule):
        if len(schedule) != n:
            raise ValueError(f"to_torch: a list of schedules needs one per param group ({n}), "
                             f"got {len(schedule)}")
        if group_scales is not None:
            raise ValueError("to_torch: group_scales applies to a single schedule; with a list of "
                             f"schedules put the scale into each schedule, got group_scales={group_scales!r}")
        schedules = list(schedule)
    else:
        raise ValueError(f"to_torch: schedule must be a Schedule, a list of {n} Schedules or a "
                         f"ReduceOnPlateau, got {schedule!r}")

    if len(schedules) > 1:
        scales = [1.0] * n
    elif group_scales is not None:
        if isinstance(group_scales, (str, bytes)) or not hasattr(group_scales, "__len__") \
                or len(group_scales) != n:
            raise ValueError(f"to_torch: group_scales must have one number per param group ({n}), "
                             f"got {group_scales!r}")
        scales = []
        for i, r in enumerate(group_scales):
            if isinstance(r, bool) or not isinstance(r, Real) or not math.isfinite(r) or r < 0:
                raise ValueError(f"to_torch: group_scales[{i}] must be a finite number >= 0, got {r!r}")
            scales.append(float(r))
    else:
        lrs = [group_lr(g) for g in groups]
        ref = reference_lr(lrs)  # a group at LR 0 (frozen) keeps scale 0
        if ref is None or any(not (math.isfinite(lr) and lr >= 0) for lr in lrs):
            raise ValueError(f"to_torch: the first param group's lr must be > 0 to derive the "
                             f"groups' LR ratios (or, with frozen groups at 0 first, a later one), got {lrs}; "
                             f"pass group_scales=[...] (one number per group, e.g. [1.0] * {n})")
        scales = [lr / ref for lr in lrs]
    return LRKitScheduler(optimizer, schedules, scales, plateau)
