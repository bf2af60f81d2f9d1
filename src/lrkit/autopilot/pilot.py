r"""The autopilot in flight: the LR of every step, the guard's and the plateau's reactions, resume.

:class:`Autopilot` is framework-free (NumPy only). It holds an
:class:`~lrkit.autopilot.plan.AutopilotPlan` and turns it into the learning rate of optimizer step
:math:`t`,

.. math::

    \eta_t = \eta_{peak}\, s(t) \cdot c_{plateau} \cdot m

with :math:`s` the plan's shape (peak 1), :math:`c_{plateau}` the plateau scale
(:class:`~lrkit.schedules.ReduceOnPlateau`, halved after validations that stall) and :math:`m` the
guard's multiplier (lowered after a rollback, see :func:`lrkit.autopilot.policy.lowered_multiplier`).

**A rollback rewinds the schedule.** The state a rollback restores was trained to a point
:math:`p` of the plan's timeline (step :math:`r` of the run); the run goes on at step
:math:`t_0 = t+1` with :math:`T - t_0` steps left. The schedule resumes at :math:`p`, its rest
compressed into the steps left,

.. math::

    s'(t) = s\Big(p + (t - t_0)\,\frac{T - p}{T - t_0}\Big),\qquad t \ge t_0,

so a run sent back to its start warms up again and still decays to the end of its budget (the
plain continuation would restart an untrained model at the peak, with no warmup, and a restored
Adam state's fresh moments); a rollback of a snapshot period or two barely changes the schedule.
A shape of the user's that jumps up (warm restarts) gets a snapshot of the state before each
jump (:meth:`lrkit.doctor.guard.Guard.before_step`, called with the next step's LR after each
observation), so a restart that breaks the run is undone without losing a step.
A framework adapter gives it an object with ``snapshot()`` / ``restore(state)`` of the training
state (:meth:`Autopilot.attach`), reports every step (:meth:`Autopilot.observe`) and sets
:meth:`Autopilot.lr` on its optimizer. Every intervention is an :class:`AutopilotEvent` with a
message in plain words, logged to ``logging.getLogger("lrkit.autopilot")``.

**Early overfitting.** With the guard, a validation loss that passes its best early in the run
while the training loss keeps falling restarts the run once from its initial state (a rollback to
the start, the schedule rewound as above) at the LR that makes the rest of the run sum to half the
LR summed up to that best point (:mod:`lrkit.autopilot.overfit`): the LR was too high for a run
this long, which the finder's short runs cannot see.

**Resume.** :meth:`Autopilot.state_dict` holds the plan, the multiplier, the plateau state, the
doctor's state, the events and the run's bounded history (:class:`~lrkit.autopilot.history.RunHistory`,
what :func:`lrkit.report.write_autopilot_report` plots) in plain JSON types; :meth:`Autopilot.from_state_dict` rebuilds the
same autopilot without running the finder again. The guard's snapshots are not saved (they are
copies of a model you checkpoint anyway): the resumed guard starts from the loaded state.

Example:
    >>> from lrkit.autopilot.plan import make_plan
    >>> from lrkit.schedules import constant
    >>> class Quadratic:                    # f(x) = x^2 by gradient descent
    ...     def __init__(self): self.x = 1.0
    ...     def snapshot(self): return self.x
    ...     def restore(self, s): self.x = s
    ...     def step(self, lr):
    ...         loss = self.x ** 2
    ...         self.x -= lr * 2 * self.x
    ...         return loss
    >>> plan = make_plan(family="sgd", train_steps=200, peak_lr=1.5, shape=constant(1.0))  # 1.5 > 1: diverges
    >>> q = Quadratic()
    >>> pilot = Autopilot(plan).attach(q)
    >>> for t in range(200):
    ...     _ = pilot.observe(t, q.step(pilot.lr(t)))
    >>> [e.kind for e in pilot.events], pilot.multiplier, q.x ** 2 < 1e-12   # kept, then lowered
    (['rollback', 'rollback'], 0.5, True)
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lrkit.autopilot import overfit, policy
from lrkit.autopilot.history import RunHistory
from lrkit.autopilot.plan import AutopilotError, AutopilotPlan
from lrkit.doctor.core import Doctor
from lrkit.doctor.guard import Guard, GuardGaveUp, Intervention
from lrkit.doctor.lr_policy import moved_on, unstable_start
from lrkit.schedules.plateau import ReduceOnPlateau

__all__ = ["Autopilot", "AutopilotEvent", "STATE_VERSION", "check_storage"]

STATE_VERSION = 1

# the guard's own log lines repeat what the autopilot's events say, in less words: keep them quiet
_GUARD_LOG = logging.getLogger("lrkit.autopilot.guard")
#: a run that ends before this fraction of its plan is said to have ended early (:meth:`Autopilot.ended`)
ENDED_EARLY = 0.95
#: training losses whose median is the level the early-overfitting rule compares
_LEVEL_WINDOW = 20
_GUARD_LOG.addHandler(logging.NullHandler())
_GUARD_LOG.propagate = False


@dataclass(frozen=True)
class AutopilotEvent:
    """One thing the autopilot did: ``kind`` is ``"plan"``, ``"rollback"``, ``"skip"``, ``"plateau"``,
    ``"resume"`` or ``"gave_up"``; ``message`` says it in words; ``data`` holds the numbers."""

    step: int
    kind: str
    message: str
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "message": self.message, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutopilotEvent":
        return cls(int(d["step"]), str(d["kind"]), str(d["message"]), dict(d.get("data") or {}))


def check_storage(storage: Any, storage_dir: Any, where: str) -> None:
    """Refuse a ``storage`` other than ``"memory"``/``"disk"``, or a ``storage_dir`` without disk
    (adapters call it before the finder runs, so a typo costs no finder run).

    Example:
        >>> check_storage("disk", "ckpt", "autopilot")
        >>> check_storage("ssd", None, "autopilot")
        Traceback (most recent call last):
        ...
        lrkit.autopilot.plan.AutopilotError: autopilot: storage must be 'memory' or 'disk', got 'ssd'
    """
    if storage not in ("memory", "disk"):
        raise AutopilotError(f"{where}: storage must be 'memory' or 'disk', got {storage!r}")
    if storage_dir is not None and storage != "disk":
        raise AutopilotError(f"{where}: storage_dir is only used with storage='disk', got storage={storage!r}")
    if storage_dir is not None and not isinstance(storage_dir, (str, os.PathLike)):
        raise AutopilotError(f"{where}: storage_dir must be a path (str or os.PathLike), got {type(storage_dir).__name__}")


def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


class Autopilot:
    """Run a plan: LR per step, guard, plateau, events, state for resume (see the module docstring).

    Args:
        plan: the :class:`~lrkit.autopilot.plan.AutopilotPlan`.
        guard: roll back and lower the LR on ``nan``/``diverging`` (default ``True``).
        plateau: halve the LR when reported validation losses stall (default ``True``).
        restart_on_overfit: with the guard, restart from the initial state at a lower LR when the
            validation loss passes its best early in the run while the training loss keeps falling
            (:mod:`lrkit.autopilot.overfit`; default ``True``; off in a resumed run, and where the
            plan already expects the run to overfit, :attr:`~lrkit.autopilot.plan.AutopilotPlan.many_epochs`).
        doctor: the :class:`~lrkit.doctor.core.Doctor` the guard drives (default
            ``Doctor(lr_ceiling=policy.lr_ceiling(plan.auto_peak_lr), reference_run=plan.finder_reference)``:
            a run whose scale is far above the autopilot's own and that stays behind the finder's best
            short run is rolled back to that scale, :mod:`lrkit.doctor.signs.behind`).
        logger: where messages go (default ``logging.getLogger("lrkit.autopilot")``).
        skip_spikes: the guard leaves out the update of a step whose loss is a spike far above the
            run's level with the LR steady -- a bad batch (:mod:`lrkit.doctor.spikes`; default
            ``True``). An adapter that knows the loss before the update asks :meth:`skip`.
        storage: where the guard keeps its snapshots (up to six states: the initial one, four
            rolling ones, the best): ``"memory"`` (default) or ``"disk"``, pickled on a background
            thread into a directory of the run under ``storage_dir`` (default a temporary one) and
            removed by :meth:`close` (or at exit) -- for a model whose copies do not fit in memory
            (a warning says so on the first snapshot when they would take more than half of the
            memory available). See :mod:`lrkit.doctor.storage`.
        storage_dir: the parent directory for ``storage="disk"``.
    """

    def __init__(self, plan: AutopilotPlan, *, guard: bool = True, plateau: bool = True,
                 doctor: Doctor | None = None, logger: logging.Logger | None = None,
                 skip_spikes: bool = True, storage: str = "memory", storage_dir: Any = None,
                 restart_on_overfit: bool = True) -> None:
        if not isinstance(plan, AutopilotPlan):
            raise AutopilotError(f"Autopilot: plan must be an AutopilotPlan (lrkit.autopilot.make_plan), "
                                 f"got {type(plan).__name__}")
        for name, flag in (("guard", guard), ("plateau", plateau), ("skip_spikes", skip_spikes),
                           ("restart_on_overfit", restart_on_overfit)):
            if not isinstance(flag, bool):
                raise AutopilotError(f"Autopilot: {name} must be True or False, got {flag!r}")
        if doctor is not None and not isinstance(doctor, Doctor):
            raise AutopilotError(f"Autopilot: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        check_storage(storage, storage_dir, "Autopilot")
        self.plan = plan
        self.storage, self.storage_dir = storage, storage_dir
        self.use_guard = guard
        self.skip_spikes = skip_spikes
        # a loss rising with the schedule's LR is not waited out above the ceiling (policy.lr_ceiling)
        self.doctor = doctor if doctor is not None else Doctor(
            lr_ceiling=policy.lr_ceiling(plan.auto_peak_lr), reference_run=plan.finder_reference)
        self.logger = logger if logger is not None else logging.getLogger("lrkit.autopilot")
        self._schedule = plan.schedule
        self._plateau = ReduceOnPlateau(plan.schedule, **policy.plateau_settings()) if plateau else None
        self._pstate = self._plateau.init() if self._plateau is not None else None
        # validation losses since the plateau rule's last reading: (step of that reading -- the
        # warmup's last step before the first --, their sum, their count)
        self._pwin: tuple[int, float, int] = (plan.warmup_steps - 1, 0.0, 0)
        self._corr = 1.0  # multiplier = guard.lr_multiplier * _corr
        self._last_rollback: int | None = None
        self._last_restored: int | None = None  # the snapshot the last rollback went back to
        self._last_step: int | None = None
        self._rewinds: list[tuple[int, float]] = []  # (t0, p): from step t0 the schedule resumes at p
        #: the run as flown (training loss and LR, bounded; validation losses): what the report plots
        self.history = RunHistory()
        self.events: list[AutopilotEvent] = []
        self.guard: Guard | None = None
        self._gave_up = False
        # the early-overfitting rule (lrkit.autopilot.overfit): summed LR and recent training losses since
        # the start, and (step, val_loss, summed LR, training level) per validation; None: the rule is off
        # (after any rollback, after its own restart, in a resumed run, whose guard starts elsewhere, and
        # where the finder already divided its answer for a run that overfits: lrkit.finder.regime)
        self._tau = 0.0
        self._recent: list[float] = []
        self._first: list[float] = []  # the first finite training losses: the run's starting level
        self.restart_on_overfit = restart_on_overfit
        self._evals: list[tuple[int, float, float, float]] | None = (
            [] if restart_on_overfit and guard and not plan.many_epochs else None)

    # ------------------------------------------------------------------ wiring
    def attach(self, state: Any, *, agree: Callable[[list[float], str], Sequence[float]] | None = None) -> "Autopilot":
        """Give the autopilot the training state to guard: an object with ``snapshot()`` and
        ``restore(state)`` (the Trainer protocol's half). Takes the first snapshot now. Returns
        ``self``. Without ``guard`` this only checks the object. ``agree``: as in
        :class:`~lrkit.doctor.guard.Guard` (a run on several processes)."""
        for name in ("snapshot", "restore"):
            if not callable(getattr(state, name, None)):
                raise AutopilotError(f"Autopilot.attach: the state must have a callable {name}(), "
                                     f"got {type(state).__name__} without it")
        if self.use_guard:
            self.close()  # attached again (a resume into the same object): the old snapshots go
            settings = policy.guard_settings(self.plan.train_steps)
            # forgive_first=False: the autopilot's own policy (policy.lowered_multiplier) decides
            # what a rollback does to the LR, as a correction on the guard's multiplier
            self.guard = Guard(state, doctor=self.doctor, on_intervention=self._on_intervention,
                               logger=_GUARD_LOG, forgive_first=False, skip_spikes=self.skip_spikes, agree=agree,
                               storage=self.storage, storage_dir=self.storage_dir, **settings)
            if self.guard.memory_warning is not None:  # the guard's own log is quiet under the autopilot
                self.logger.warning("lrkit autopilot: %s", self.guard.memory_warning)
        return self

    def close(self) -> None:
        """Drop the guard's snapshots (with ``storage="disk"``: delete their files). Call it when the
        run is over; the framework adapters do. Idempotent; the events and the history stay."""
        if self.guard is not None:
            self.guard.close()

    def ended(self, steps_trained: int) -> str | None:
        """Say, once the run is over after ``steps_trained`` optimizer steps, when that was less
        than :data:`ENDED_EARLY` of the plan: the schedule's decay was cut short, so the model ends
        at an LR well above the plan's last one (a WARNING on the autopilot's logger; the message is
        returned, ``None`` for a run that went the distance). The framework adapters call it.

        Example:
            >>> from lrkit.autopilot.plan import make_plan
            >>> pilot = Autopilot(make_plan(None, family="adam", train_steps=100, peak_lr=0.01), guard=False)
            >>> pilot.ended(100) is None, "ended after 60 of the 100 steps planned" in pilot.ended(60)
            (True, True)
        """
        T = self.plan.train_steps
        if not isinstance(steps_trained, int) or steps_trained >= ENDED_EARLY * T:
            return None
        last = self.lr(max(steps_trained - 1, 0))
        msg = (f"lrkit autopilot: the run ended after {steps_trained} of the {T} steps planned "
               f"({steps_trained / T:.0%}): the schedule's decay was cut short, its last LR {last:.3g} is "
               f"{last / self.plan.peak_lr:.0%} of the peak. An early-stopping callback may have meant it; if the "
               "data ran out (Keras fit with steps_per_epoch on arrays) or the run is shorter than its plan, pass "
               "train_steps= the steps it really takes")
        self.logger.warning("%s", msg)
        return msg

    # ------------------------------------------------------------------ the LR
    @property
    def multiplier(self) -> float:
        """The guard's factor on the plan's LR (1.0 until a rollback lowers it)."""
        g = self.guard.lr_multiplier if self.guard is not None else 1.0
        return float(g * self._corr)

    @property
    def plateau_scale(self) -> float:
        """The plateau's factor on the plan's LR (1.0 until validations stall)."""
        return float(self._pstate.scale) if self._pstate is not None else 1.0

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) with every adjustment so far."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise AutopilotError(f"Autopilot.lr: step must be an int >= 0, got {step!r}")
        return float(self._schedule(self.position(step))) * self.plateau_scale * self.multiplier

    def position(self, step: int) -> float:
        """Where optimizer step ``step`` is on the plan's timeline: ``step`` itself until a
        rollback rewinds the schedule (see the module docstring)."""
        T = self.plan.train_steps
        for t0, p in reversed(self._rewinds):
            if step >= t0:
                return p + (step - t0) * (T - p) / (T - t0) if T > t0 else float(step)
        return float(step)

    # ------------------------------------------------------------------ observing
    def observe(self, step: int, loss: float, *, lr: float | None = None, grad_norm: float | None = None,
                val_loss: float | None = None, metrics: Mapping[str, float] | None = None) -> bool:
        """Report optimizer step ``step`` (its training loss; ``val_loss`` when you validated).

        Feeds the doctor through the guard (snapshots, rollbacks) and the plateau rule. Returns
        ``True`` when the guard rolled the training state back (the adapter then re-applies
        :meth:`lr`, which the restore may have overwritten).

        Raises:
            GuardGaveUp: the guard restored one snapshot ``max_retries`` times and the run failed
                again (the state is left restored; an event says so).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise AutopilotError(f"Autopilot.observe: step must be an int >= 0, got {step!r}")
        loss = float(loss)
        lr = self.lr(step) if lr is None else float(lr)
        self._last_step = step
        if self._evals is not None:
            self._tau += lr if math.isfinite(lr) else 0.0
            self._recent = (self._recent + [loss])[-_LEVEL_WINDOW:]
            if len(self._first) < 3 and math.isfinite(loss):
                self._first.append(loss)
        self.history.add(step, loss, lr, None if val_loss is None else float(val_loss))
        rolled = False
        if self.guard is not None:
            try:
                rolled = self.guard.observe(loss, lr=lr, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics,
                                            step=max(step, self.guard.step_count)) is not None
            except GuardGaveUp as exc:
                self._event(step, "gave_up", f"step {step}: the guard gave up: {exc}", {}, logging.ERROR)
                raise
        else:
            self.doctor.observe(step, loss, lr=lr, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics)
        if rolled:
            self._evals = None
        elif val_loss is not None:
            rolled = self._overfit_check(step, float(val_loss))
            if not rolled:
                self._plateau_check(step, float(val_loss))
        if self.guard is not None and not rolled and step + 1 < self.plan.train_steps:
            # a shape that jumps up (warm restarts): the guard snapshots the state before the jump
            self.guard.before_step(self.lr(step + 1))
        return rolled

    @property
    def skips(self) -> bool:
        """Whether to ask :meth:`skip` before each update (a guard with ``skip_spikes``)."""
        return self.guard is not None and self.guard.skips

    def skip(self, step: int, loss: float) -> bool:
        """Before the update of optimizer step ``step``, with its loss: ``True`` means leave the
        update out -- the loss is a spike far above the run's level with the LR steady, a bad
        batch (:mod:`lrkit.doctor.spikes`) -- and do not :meth:`observe` the step; an event says so.
        ``False`` (always without the guard or ``skip_spikes``): apply it and observe it."""
        if not self.skips or not self.guard.skip(float(loss), lr=self.lr(step), step=max(step, self.guard.step_count)):
            return False
        ratio, row = self.guard.last_skip["ratio"], self.guard.last_skip["in_a_row"]
        self._event(step, "skip", f"step {step}: skipped the update of a bad batch: its loss {float(loss):.4g} is "
                    f"{ratio:.3g}x the run's level with the LR unchanged" + (f" ({row} in a row)" if row > 1 else ""),
                    {"loss": _finite(float(loss)), "ratio": _finite(ratio)}, logging.WARNING if row == 1 else logging.INFO)
        return True

    def _overfit_check(self, step: int, val_loss: float) -> bool:
        """The early-overfitting rule (:mod:`lrkit.autopilot.overfit`): restart from the initial
        state at a lower LR when the run passed its best validation loss early; ``True`` if it did."""
        if self._evals is None or self.guard is None or not math.isfinite(val_loss):
            return False
        finite = [x for x in self._recent if math.isfinite(x)]
        level = float(np.median(finite)) if finite else math.nan
        self._evals.append((step, val_loss, self._tau, level))
        b = overfit.overfit_restart(self._evals, self.plan.train_steps,
                                    float(np.median(self._first)) if self._first else None)
        if b is None:
            return False
        best_step, best_val, tau_b, level_b = self._evals[b]
        after = len(self._evals) - 1 - b
        self._evals = None  # once per run
        train = (f"the training loss at {level / level_b:.2g}x its level then" if level_b > 0
                 else f"the training loss at {level:.2g}")
        rec = self.guard.restart(step, verdict="overfitting", evidence={
            "best_val_loss": best_val, "best_step": float(best_step), "val_loss": val_loss,
            "train_level_at_best": level_b, "train_level": level, "summed_lr_at_best": tau_b},
            message=f"the last {overfit.AFTER} validation losses above {1 + overfit.TOLERANCE:g}x the best "
                    f"({best_val:.4g} at step {best_step}, {after} validations ago), {train}")
        old_total = self.multiplier
        t0, T = step + 1, self.plan.train_steps
        p = self.position(rec.restored_to)
        # the steps left follow the rewound schedule (module docstring): s(p + (t - t0)(T - p)/(T - t0))
        rest = float(np.sum(self._schedule(p + np.arange(T - t0, dtype=float) * (T - p) / (T - t0)))) if T > t0 else 0.0
        factor = overfit.restart_multiplier(tau_b, rest * self.plateau_scale * old_total)
        new_total = old_total * factor
        self._restored(rec, new_total)
        peak = self.plan.peak_lr * self.plateau_scale * new_total
        self._event(step, "rollback",
                    f"step {step}: overfitting early: the last {overfit.AFTER} validation losses are more than "
                    f"{overfit.TOLERANCE:.0%} above the best ({best_val:.4g} at step {best_step}, {after} "
                    f"validations ago) with {train}: at this LR the run "
                    f"passes its best point in its first {(best_step + 1) / T:.0%}. Restarted from the initial "
                    f"state with the LR x{factor:.3g} (the schedule now peaks at {peak:.3g}), so that the rest of "
                    f"the run sums to {overfit.TAU_FRACTION:g}x the LR summed up to that best point",
                    {"verdict": "overfitting", "onset": best_step, "restored_to": rec.restored_to,
                     "old_multiplier": old_total, "new_multiplier": new_total,
                     "evidence": {k: _finite(float(v)) for k, v in rec.evidence.items()}})
        return True

    def _plateau_check(self, step: int, val_loss: float) -> None:
        if self._plateau is None or step < self.plan.warmup_steps or step + 1 >= self.plan.train_steps:
            return  # in the warmup, or at the run's last step: nothing is left to train at a lowered LR
        last, total, n = self._pwin
        total, n = total + val_loss, n + 1
        if step - last < policy.plateau_gap(self.plan.train_steps):
            self._pwin = (last, total, n)  # too soon after the last reading: averaged into the next
            return
        self._pwin = (step, 0.0, 0)
        val_loss = total / n
        old = self._pstate.scale
        self._pstate = self._plateau.update(self._pstate, val_loss)
        if self._pstate.scale < old:
            means = f" (means over each 1/{policy.PLATEAU_READS} of the run)" if n > 1 else ""
            self._event(step, "plateau",
                        f"step {step}: the validation loss has not improved by 0.1% for "
                        f"{self._plateau.patience + 1} validations{means} (best {self._pstate.best:.4g}, now "
                        f"{val_loss:.4g}); LR x{self._plateau.factor:g}: the schedule now peaks at "
                        f"{self.plan.peak_lr * self._pstate.scale * self.multiplier:.3g}",
                        {"val_loss": val_loss, "best": self._pstate.best, "scale": self._pstate.scale})

    def _on_intervention(self, rec: Intervention) -> None:
        old_total = rec.old_multiplier * self._corr
        window = 2 * policy.guard_settings(self.plan.train_steps)["snapshot_every"]
        # a blow-up in the first window, or a run stuck since one, came out of no healthy stretch: not forgiven
        unstable = unstable_start(rec.evidence)
        # nor one soon after the last rollback, or back to the snapshot it restored (the guard's rule)
        last = (self._last_rollback, self._last_restored) if self._last_rollback is not None else None
        first = moved_on(rec.step, rec.restored_to, last, window) and not unstable
        auto = self.plan.auto_peak_lr
        ratio = auto / self.plan.peak_lr if auto is not None else None
        new_total = policy.lowered_multiplier(old_total, verdict=rec.verdict, first=first, auto_ratio=ratio,
                                              unstable_start=unstable)
        self._restored(rec, new_total)
        peak = self.plan.peak_lr * self.plateau_scale * new_total
        if new_total == old_total:
            what = ("kept the LR: a first problem out of a healthy run looks like a bad batch "
                    "(another one soon will lower it)")
        elif ratio is not None and math.isclose(new_total, ratio):
            what = (f"lowered the LR to the autopilot's own scale (x{new_total / old_total:.3g}): the "
                    f"schedule now peaks at {peak:.3g}")
        else:
            what = f"lowered the LR x{new_total / old_total:.3g}: the schedule now peaks at {peak:.3g}"
        onset = "" if rec.onset is None or rec.onset == rec.step else f" (began at step {rec.onset})"
        self._event(rec.step, "rollback",
                    f"step {rec.step}: {rec.verdict}{onset}; rolled back to the state before step "
                    f"{rec.restored_to} and {what}. Doctor: {rec.message}",
                    {"verdict": rec.verdict, "onset": rec.onset, "restored_to": rec.restored_to,
                     "old_multiplier": old_total, "new_multiplier": new_total,
                     "evidence": {k: _finite(float(v)) for k, v in rec.evidence.items()}})

    def _restored(self, rec: Intervention, new_total: float) -> None:
        """What every restore changes here (a guard rollback, the overfitting restart): the LR
        multiplier from now on (``new_total``, on top of the guard's ``rec.new_multiplier``), the
        schedule rewound to where the restored state was trained (module docstring), and the
        plateau's count started afresh (the restored state is older than the best validation)."""
        if self._pstate is not None:
            worst = math.inf if self._plateau.mode == "min" else -math.inf
            self._pstate = self._pstate._replace(best=worst, num_bad_epochs=0)
            self._pwin = (self._pwin[0], 0.0, 0)  # validations of the state given up
        self._corr = new_total / rec.new_multiplier
        self._last_rollback, self._last_restored = rec.step, rec.restored_to
        if rec.restored_to is not None and rec.restored_to <= rec.step:
            self._rewinds.append((rec.step + 1, self.position(rec.restored_to)))

    def _event(self, step: int, kind: str, message: str, data: dict, level: int = logging.WARNING) -> None:
        self.events.append(AutopilotEvent(step, kind, message, data))
        self.logger.log(level, "lrkit autopilot: %s", message)

    @property
    def interventions(self) -> list[AutopilotEvent]:
        """The events that changed the run (rollbacks, plateau reductions, a guard that gave up)."""
        return [e for e in self.events if e.kind in ("rollback", "skip", "plateau", "gave_up")]

    def report(self) -> str:
        """The plan and every intervention, in words."""
        lines = [self.plan.summary()]
        acts = self.interventions
        lines.append(f"interventions: {len(acts)}" + ("" if acts else " (none)"))
        lines += [f"  - {e.message}" for e in acts]
        return "\n".join(lines)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, in plain JSON types (see the module docstring)."""
        return {
            "version": STATE_VERSION,
            "plan": self.plan.to_dict(),
            "multiplier": self.multiplier,
            "last_rollback": self._last_rollback,
            "last_restored": self._last_restored,
            "last_step": self._last_step,
            "rewinds": [[t0, p] for t0, p in self._rewinds],
            "history": self.history.state(),
            "plateau": self._plateau.state_dict(self._pstate) if self._plateau is not None else None,
            "plateau_window": list(self._pwin),
            "doctor": self.doctor.state_dict(),
            "events": [e.to_dict() for e in self.events],
            "guard": self.use_guard,
            "skip_spikes": self.skip_spikes,
            "restart_on_overfit": self.restart_on_overfit,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, doctor: Doctor | None = None,
                        logger: logging.Logger | None = None, storage: str = "memory",
                        storage_dir: Any = None) -> "Autopilot":
        """The autopilot of :meth:`state_dict`, ready to go on (no finder run). Call :meth:`attach`
        with the loaded training state next. ``storage``, ``storage_dir``: as in :class:`Autopilot`
        (where snapshots go is the machine's business, not the checkpoint's)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise AutopilotError(f"Autopilot.from_state_dict: expected a state_dict() of version {STATE_VERSION}, "
                                 f"got {got!r}")
        plan = AutopilotPlan.from_dict(dict(state["plan"]))
        pilot = cls(plan, guard=bool(state["guard"]), plateau=state["plateau"] is not None, doctor=doctor,
                    logger=logger, skip_spikes=bool(state.get("skip_spikes", True)), storage=storage,
                    storage_dir=storage_dir, restart_on_overfit=bool(state.get("restart_on_overfit", True)))
        pilot._corr = float(state["multiplier"])
        pilot._last_rollback = state["last_rollback"]
        pilot._last_restored = state.get("last_restored")
        pilot._last_step = state["last_step"]
        pilot._rewinds = [(int(t0), float(p)) for t0, p in state.get("rewinds", [])]
        if state.get("history") is not None:
            pilot.history = RunHistory.from_state(state["history"])
        if pilot._plateau is not None:
            pilot._pstate = pilot._plateau.load_state(dict(state["plateau"]))
            last, total, n = state.get("plateau_window") or (plan.warmup_steps - 1, 0.0, 0)  # none before 2026-12-06
            pilot._pwin = (int(last), float(total), int(n))
        pilot.doctor.load_state_dict(state["doctor"])
        pilot._evals = None  # the resumed guard's first snapshot is not the run's start: no overfitting restart
        pilot.events = [AutopilotEvent.from_dict(e) for e in state["events"]]
        nxt = 0 if pilot._last_step is None else pilot._last_step + 1
        pilot.events.append(AutopilotEvent(nxt, "resume", f"resumed at step {nxt} (no new finder run; LR "
                                           f"multiplier {pilot.multiplier:.3g}, plateau scale {pilot.plateau_scale:.3g})"))
        return pilot
