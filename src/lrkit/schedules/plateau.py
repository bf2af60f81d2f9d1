"""Reduce the learning rate when a metric stops improving — a pure object with immutable state.

The configuration lives in :class:`ReduceOnPlateau`; the progress lives in a
:class:`PlateauState` named tuple that :meth:`ReduceOnPlateau.update` returns anew for every
metric observation (nothing is mutated, so a state can be saved, compared, or replayed).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from lrkit.schedules import _validate as v
from lrkit.schedules.base import Schedule

__all__ = ["PlateauState", "ReduceOnPlateau", "reduce_on_plateau"]

# how far a schedule is scanned for its peak (the reference LR)
_PEAK_SCAN_STEPS = 1_000_000


class PlateauState(NamedTuple):
    """The progress of a :class:`ReduceOnPlateau` (everything that changes between metrics).

    Attributes:
        scale: the factor applied to the wrapped schedule (1.0 until the first reduction).
        best: the best metric seen so far (``inf`` / ``-inf`` before the first one).
        num_bad_epochs: consecutive observations without improvement.
        cooldown_counter: observations left in the cooldown after a reduction.
        last_epoch: the number of metrics observed so far.
    """

    scale: float
    best: float
    num_bad_epochs: int
    cooldown_counter: int
    last_epoch: int


class ReduceOnPlateau:
    r"""Scale a schedule down by ``factor`` when a metric has not improved for ``patience`` epochs.

    Improvement of a new metric :math:`m` over the best :math:`b` (``threshold`` :math:`\tau`):

    .. math::
        \text{min/rel}: m < b(1 - \tau), \quad \text{min/abs}: m < b - \tau, \quad
        \text{max/rel}: m > b(1 + \tau), \quad \text{max/abs}: m > b + \tau

    After more than ``patience`` consecutive observations without improvement (observations
    during a cooldown do not count), the LR is reduced and a cooldown of ``cooldown``
    observations starts. In LR terms, with :math:`P` the *reference LR* (below):

    .. math::
        \ell_{old} = P\,c, \quad \ell_{new} = \max(\ell_{old}\,f, \eta_{min}), \quad
        c \leftarrow \ell_{new} / P \;\; \text{if} \;\; \ell_{old} - \ell_{new} > \epsilon

    and the learning rate at optimizer step :math:`t` is

    .. math::
        \eta_t = \max\big(s(t)\, c,\; \eta_{min}\big)

    where :math:`s` is the wrapped schedule, :math:`c` the state's ``scale``, :math:`f` =
    ``factor``, :math:`\eta_{min}` = ``min_lr``, :math:`\epsilon` = ``eps``.

    **How this composes with a time-varying schedule.** The reduction is a multiplicative
    ``scale`` on the whole schedule: ``warmup(cosine(...))`` keeps its shape, and every plateau
    lowers the remaining curve by ``factor`` (a later warmup or cosine step is scaled too).
    ``min_lr`` is a floor on the final LR at every step (so it also lifts a warmup that starts
    at 0). The ``eps``/``min_lr`` test that decides whether a reduction still has an effect is
    made on the *reference LR* :math:`P` = the schedule's peak: its largest value over steps
    ``0 .. min(total_steps, 10**6)`` (the first 10**6 steps if it never ends) — for a
    constant schedule simply its LR. With ``constant(lr)`` the LR sequence is exactly torch's
    ``ReduceLROnPlateau`` on an optimizer with that LR. A non-finite metric counts as "no
    improvement", as in torch.

    Args:
        schedule: the schedule to scale, or a number (becomes :func:`constant`).
        mode: ``"min"`` (lower metric is better, e.g. a loss) or ``"max"``.
        factor: :math:`f` in (0, 1).
        patience: observations without improvement tolerated before reducing (whole number >= 0).
        threshold: :math:`\tau` (finite, >= 0).
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: observations to wait after a reduction (whole number >= 0).
        min_lr: the LR floor :math:`\eta_{min}` (finite, >= 0).
        eps: minimal effective reduction :math:`\epsilon` (finite, >= 0).

    Example:
        >>> from lrkit.schedules import constant
        >>> rop = ReduceOnPlateau(0.1, patience=1, factor=0.5)
        >>> state = rop.init()
        >>> for loss in [1.0, 0.9, 0.95, 0.97]:
        ...     state = rop.update(state, loss)
        >>> rop.lr(0, state)
        0.05
    """

    def __init__(self, schedule: Schedule | float, *, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8) -> None:
        where = "ReduceOnPlateau"
        if isinstance(schedule, Schedule):
            self.schedule: Schedule = schedule
        elif isinstance(schedule, (int, float, np.floating, np.integer)) and not isinstance(schedule, bool):
            from lrkit.schedules._basic import constant

            self.schedule = constant(float(schedule))
        else:
            raise ValueError(f"{where}: schedule must be a Schedule or a learning rate, "
                             f"got {schedule!r}")
        self.mode = v.choice(where, "mode", mode, ("min", "max"))
        self.factor = v.real(where, "factor", factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self.patience = v.nonneg_int(where, "patience", patience)
        self.threshold = v.real(where, "threshold", threshold, lo=0.0)
        self.threshold_mode = v.choice(where, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = v.nonneg_int(where, "cooldown", cooldown)
        self.min_lr = v.lr_value(where, "min_lr", min_lr)
        self.eps = v.real(where, "eps", eps, lo=0.0)
        self.reference_lr = _peak(self.schedule)

    # -- the state machine -------------------------------------------------------------------
    def init(self) -> PlateauState:
        """The state before any metric: scale 1, no best yet, no bad epochs, no cooldown."""
        worst = math.inf if self.mode == "min" else -math.inf
        return PlateauState(1.0, worst, 0, 0, 0)

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def update(self, state: PlateauState, metric: float) -> PlateauState:
        """Observe one metric (torch: ``scheduler.step(metric)``); return the next state."""
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise ValueError(f"ReduceOnPlateau.update: metric must be a number, got {metric!r}") from None
        scale, best, bad, cooldown_counter, epoch = state
        epoch += 1
        if self._is_better(current, best):
            best, bad = current, 0
        else:
            bad += 1
        if cooldown_counter > 0:
            cooldown_counter -= 1
            bad = 0
        if bad > self.patience:
            scale = self._reduced(scale)
            cooldown_counter = self.cooldown
            bad = 0
        return PlateauState(scale, best, bad, cooldown_counter, epoch)

    def _reduced(self, scale: float) -> float:
        ref = self.reference_lr
        old = ref * scale
        new = max(old * self.factor, self.min_lr)
        if old - new > self.eps:
            return new / ref
        return scale

    def lr(self, step, state: PlateauState):
        """The learning rate at optimizer step ``step`` (int or array) in ``state``."""
        base = self.schedule(step)
        out = np.maximum(np.asarray(base) * state.scale, self.min_lr)
        return float(out) if np.ndim(step) == 0 else out

    # -- saving and restoring progress ---------------------------------------------------------
    def state_dict(self, state: PlateauState) -> dict[str, Any]:
        """The progress as a plain dict (configuration is not included: it is the constructor's)."""
        return {k: (float(x) if k in ("scale", "best") else int(x))
                for k, x in state._asdict().items()}

    def load_state(self, d: dict) -> PlateauState:
        """Rebuild a :class:`PlateauState` from :meth:`state_dict` output (checked)."""
        if not isinstance(d, dict):
            raise ValueError(f"ReduceOnPlateau.load_state: expected a dict, got {type(d).__name__}")
        missing = [k for k in PlateauState._fields if k not in d]
        extra = [k for k in d if k not in PlateauState._fields]
        if missing or extra:
            raise ValueError(f"ReduceOnPlateau.load_state: keys must be {list(PlateauState._fields)}; "
                             f"missing {missing}, unexpected {extra}")
        where = "ReduceOnPlateau.load_state"
        scale = v.real(where, "scale", d["scale"], lo=0.0)
        best = d["best"]
        if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(float(best)):
            raise ValueError(f"{where}: best must be a number (inf allowed), got {best!r}")
        return PlateauState(scale, float(best), v.nonneg_int(where, "num_bad_epochs", d["num_bad_epochs"]),
                            v.nonneg_int(where, "cooldown_counter", d["cooldown_counter"]),
                            v.nonneg_int(where, "last_epoch", d["last_epoch"]))

    # -- exports (the framework is imported only when one is called) ------------------------
    def to_torch(self, optimizer, **kwargs):
        """A torch ``LRScheduler`` with these LRs; feed it ``scheduler.step(val_loss)`` once per epoch.

        On a :func:`constant` schedule its LRs are exactly torch's ``ReduceLROnPlateau``; any other
        schedule is scaled down on plateaus. ``kwargs`` go to :func:`lrkit.torch.to_torch`.

        Example::

            scheduler = reduce_on_plateau(cosine(0.1, 900), patience=2).to_torch(optimizer)
            for epoch in ...:
                ...                              # optimizer.step(); scheduler.step() per batch
                scheduler.step(val_loss)         # at the epoch end: the metric
        """
        from lrkit.integrations.torch.schedule import to_torch

        return to_torch(self, optimizer, **kwargs)

    def to_keras(self, **kwargs):
        """A Keras ``LearningRateSchedule``; pass ``callbacks=[lr.callback]`` to ``fit``.

        ``kwargs`` (``monitor``, ``method``, ...) go to :func:`lrkit.keras.to_keras`.
        """
        from lrkit.integrations.keras.schedule import to_keras

        return to_keras(self, **kwargs)

    def to_optax(self, optimizer, **kwargs):
        """An optax optimizer: ``optimizer`` on this schedule, then optax's plateau reduction.

        ``optax.chain(optimizer(learning_rate=schedule.to_optax()),
        optax.contrib.reduce_on_plateau(...))`` with the parameters translated
        (:func:`lrkit.jax.plateau_transform`); pass the metric as ``tx.update(..., value=metric)``.

        Args:
            optimizer: an optax optimizer factory taking ``learning_rate`` (``optax.adam``, or a
                ``functools.partial`` of one with its other arguments).
            kwargs: ``accumulation_size`` (for the plateau), ``method``/``table_steps`` (for the
                schedule, see :func:`lrkit.jax.to_optax`).

        Example::

            tx = reduce_on_plateau(cosine(0.1, 900), patience=2).to_optax(optax.adam)
            updates, state = tx.update(grads, state, params, value=val_loss)
        """
        from lrkit.integrations.jax.schedule import plateau_optimizer

        return plateau_optimizer(self, optimizer, **kwargs)

    def __repr__(self) -> str:
        return (f"ReduceOnPlateau({self.schedule.to_spec()}, mode={self.mode!r}, "
                f"factor={self.factor!r}, patience={self.patience!r}, threshold={self.threshold!r}, "
                f"threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown!r}, "
                f"min_lr={self.min_lr!r}, eps={self.eps!r})")


def _peak(schedule: Schedule) -> float:
    from lrkit.schedules._basic import _constant

    if getattr(schedule, "_formula", None) is _constant:
        return float(schedule.params["lr"])
    total = schedule.total_steps
    horizon = _PEAK_SCAN_STEPS if total is None else min(int(total), _PEAK_SCAN_STEPS)
    return float(np.max(schedule(np.arange(int(horizon) + 1))))


def reduce_on_plateau(schedule: Schedule | float, **kw: Any) -> ReduceOnPlateau:
    """Shorthand for :class:`ReduceOnPlateau` ``(schedule, **kw)``.

    Example:
        >>> rop = reduce_on_plateau(0.1, patience=0)
        >>> round(rop.lr(0, rop.update(rop.update(rop.init(), 1.0), 2.0)), 12)
        0.01
    """
    return ReduceOnPlateau(schedule, **kw)
