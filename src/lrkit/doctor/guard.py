r"""The LR guard: roll a run back to its last good state and lower the LR when it blows up.

A :class:`Guard` wraps anything with ``snapshot()`` / ``restore(state)`` (the
:class:`~lrkit.finder.trainer.Trainer` protocol) and a :class:`~lrkit.doctor.core.Doctor`.
Two ways to drive it:

* ``guard.step(lr)`` -- the guard runs ``trainer.step(lr * guard.lr_multiplier)`` itself;
* ``guard.observe(loss, lr=..., grad_norm=...)`` -- your loop (or a framework callback) ran the
  step and reports its loss; the guard only watches, snapshots and restores. The framework
  adapters (:mod:`lrkit.integrations.torch.doctor`, ``lightning``, ``keras_callback``) use this.

After every observation the doctor gives a verdict. On a verdict in ``act_on`` (``nan`` and
``diverging`` by default) the guard *intervenes*:

.. math::

    \theta \leftarrow \theta_{L^\*},\qquad
    \text{doctor} \leftarrow \text{doctor}_{L^\*},\qquad
    m \leftarrow m \cdot \gamma

with :math:`\theta_{L}` the trainer state snapshotted just before step :math:`L`, :math:`m` the
LR multiplier (:attr:`Guard.lr_multiplier`, starts at 1) and :math:`\gamma` = ``lr_factor``.

**Which snapshot is "last good".** The doctor detects a divergence some steps after it began
(it needs ``patience`` steps above a threshold) and then estimates the *onset* step :math:`o`,
which can lie a whole window back. A snapshot taken while the doctor still said "healthy" may
therefore already hold a state that is going bad. The guard takes a snapshot after every
``snapshot_every`` (= :math:`K`) *consecutive* steps with a ``healthy`` or ``flat`` verdict
(counted since the last snapshot or rollback; never during ``fluctuating``), and keeps **two**
rolling ones -- the newer (:math:`L_1`) and the one before it (:math:`L_0 \le L_1 - K`) -- plus
the initial state :math:`L_{init}` (``keep_initial=True``). On trouble it restores

.. math::

    L^\* = \max\{L \in \{L_{init}, L_0, L_1\} : L < o\}

(strictly before the onset: the loss of step :math:`o` was computed on :math:`\theta_o`, which is
suspect), or the oldest kept snapshot if none precedes the onset (the record then says
``before_onset=False``). A ``nan`` has its onset at the non-finite step itself. So a snapshot is
used only if it precedes the first bad loss; the older rolling one covers a detection that lagged
more than ``K`` steps, and the initial state a run the doctor finds was bad from its first steps
(it blew up early and then sat "flat": the doctor reclassifies that as ``diverging`` with the
onset at the start). Rolling snapshots after the restored one are dropped.

**Clock.** Steps are counted by the guard (every :meth:`Guard.step` / :meth:`Guard.observe` is one
step, :attr:`Guard.step_count`), and a rollback does *not* rewind this clock: the model goes
back, time goes on (your schedule keeps its place, the doctor keeps receiving increasing steps).
Whether the *data* is replayed is up to the trainer's ``restore`` (``TorchTrainer`` restores its
loader's generator and so replays the same batches; the framework callbacks let the loader go
on). With replay, a batch that is itself broken (NaN in the data) comes back after every
rollback and the guard gives up after ``max_retries``: by design, since a lower LR cannot fix
bad data.

**Bounded retries.** Each snapshot may be restored at most ``max_retries`` times; one more
problem before a newer snapshot has been taken raises :class:`GuardGaveUp` (a ``RuntimeError``),
after restoring the last good snapshot once more, so the state you are left with is that good one.

**Storage.** ``"memory"`` keeps the trainer's snapshot objects; ``"disk"`` pickles each one to a
file in ``storage_dir`` (a temporary directory by default; removed by :meth:`Guard.close`) and
keeps only the path in memory -- for large models. The trainer's state must then be picklable
*and* restore correctly after unpickling (``TorchTrainer``'s and ``TorchDoctor``'s snapshots do,
data loaders' generators included).

Example:
    >>> class Quadratic:            # a 1-D quadratic trained by gradient descent: f = x^2
    ...     def __init__(self): self.x = 1.0
    ...     def snapshot(self): return self.x
    ...     def restore(self, s): self.x = s
    ...     def evaluate(self): return None
    ...     def step(self, lr):
    ...         loss = self.x ** 2
    ...         self.x -= lr * 2 * self.x
    ...         return loss
    >>> import logging
    >>> guard = Guard(Quadratic(), snapshot_every=5, lr_factor=0.8, logger=logging.getLogger("doc"))
    >>> losses = [guard.step(1.2) for _ in range(200)]  # lr * 2 = 2.4 > 2: diverges, is caught
    >>> len(guard.interventions), round(guard.lr_multiplier, 3), guard.interventions[0].restored_to
    (1, 0.8, 0)
    >>> guard.trainer.x ** 2 < 1e-6                       # then converges at 0.96 (x factor -0.92)
    True
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lrkit.doctor.core import Diagnosis, Doctor

__all__ = ["Guard", "GuardGaveUp", "Intervention"]

_GOOD = ("healthy", "flat")  # verdicts under which a snapshot may be taken


@dataclass(frozen=True)
class Intervention:
    """One rollback.

    Attributes:
        step: the guard step at which the problem was detected.
        verdict: the doctor's verdict (``"nan"``, ``"diverging"``, ...).
        onset: the step where the doctor says the problem began.
        evidence: the doctor's numbers behind the verdict.
        old_multiplier: the LR multiplier in force when it went wrong.
        new_multiplier: the multiplier from now on (``old_multiplier * lr_factor``).
        restored_to: the guard step the restored snapshot was taken before.
        before_onset: ``True`` if that snapshot precedes the onset (see the module docstring).
        retry: how many times this snapshot has now been restored (1 = first time).
        message: the doctor's message.
    """

    step: int
    verdict: str
    onset: int | None
    evidence: dict[str, float]
    old_multiplier: float
    new_multiplier: float
    restored_to: int
    before_onset: bool
    retry: int
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite evidence becomes ``None``)."""
        ev = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in self.evidence.items()}
        return {
            "step": self.step,
            "verdict": self.verdict,
            "onset": self.onset,
            "evidence": ev,
            "old_multiplier": self.old_multiplier,
            "new_multiplier": self.new_multiplier,
            "restored_to": self.restored_to,
            "before_onset": self.before_onset,
            "retry": self.retry,
            "message": self.message,
        }


class GuardGaveUp(RuntimeError):
    """Raised when a snapshot has been restored ``max_retries`` times and the run failed again.

    The trainer has been restored to that snapshot before raising. Attributes: ``diagnosis``
    (the last :class:`~lrkit.doctor.core.Diagnosis`), ``interventions`` (all of them) and
    ``restored_to`` (the guard step of the restored snapshot).
    """

    def __init__(self, message: str, diagnosis: Diagnosis, interventions: list[Intervention], restored_to: int):
        super().__init__(message)
        self.diagnosis = diagnosis
        self.interventions = list(interventions)
        self.restored_to = restored_to


def watch_doctor(who: str, guard: Any, doctor: Any) -> Doctor:
    """Check the ``guard`` flag and ``doctor`` every watcher takes; return the doctor to use.

    Example:
        >>> watch_doctor("MyCallback", False, None).n_observations
        0
    """
    if not isinstance(guard, bool):
        raise ValueError(f"{who}: guard must be True or False, got {guard!r}")
    if doctor is not None and not isinstance(doctor, Doctor):
        raise ValueError(f"{who}: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
    return doctor if doctor is not None else Doctor()


class PendingValidation:
    """Validation results held until the next training step is observed.

    Frameworks validate between training steps, while :meth:`Doctor.observe` takes a validation
    result together with a step's training loss. A watcher :meth:`hold` s the results whose names
    start with one of ``prefixes`` (the newest validation replaces the previous one) and
    :meth:`take` s them with the next step: the first of ``loss_names`` present is the
    ``val_loss``, the rest are ``metrics``.

    Example:
        >>> pending = PendingValidation(prefixes=("val_",), loss_names=("val_loss",))
        >>> pending.hold({"loss": 0.3, "val_loss": 0.5, "val_accuracy": 0.9, "val_note": "n/a"})
        >>> pending.take()
        (0.5, {'val_accuracy': 0.9})
        >>> pending.take()
        (None, None)
    """

    def __init__(self, *, prefixes: tuple[str, ...], loss_names: tuple[str, ...]) -> None:
        self.prefixes = tuple(prefixes)
        self.loss_names = tuple(loss_names)
        self._held: dict[str, float] = {}

    def hold(self, results: Mapping[str, Any] | None, convert: Callable[[Any], Any] = float) -> None:
        """Keep the numeric results named with a prefix (``convert`` turns a framework tensor into
        something ``float`` takes); text and booleans are skipped."""
        held: dict[str, float] = {}
        for name, value in (results or {}).items():
            if not name.startswith(self.prefixes) or isinstance(value, (str, bool)):
                continue
            try:
                held[name] = float(convert(value))
            except (TypeError, ValueError, RuntimeError):
                continue
        self._held = held

    def take(self) -> tuple[float | None, dict[str, float] | None]:
        """``(val_loss, metrics)`` of the held results (``None`` for what there is not); forgets them."""
        held, self._held = self._held, {}
        val_loss = next((held.pop(n) for n in self.loss_names if n in held), None)
        return val_loss, (held or None)


class GuardedWatch:
    """Read-only state shared by every watcher that owns a ``doctor`` and an optional ``guard``
    (:class:`~lrkit.integrations.torch.doctor.TorchDoctor` and the Lightning and Keras callbacks).

    Subclasses set ``self.doctor`` (a :class:`Doctor`) and ``self.guard`` (a :class:`Guard` or
    ``None``).
    """

    doctor: Doctor
    guard: "Guard | None"

    @property
    def diagnosis(self) -> Diagnosis:
        """The doctor's latest :class:`Diagnosis`."""
        return self.doctor.diagnosis

    @property
    def interventions(self) -> list[Intervention]:
        """The guard's :class:`Intervention` records (empty without a guard)."""
        return self.guard.interventions if self.guard is not None else []

    @property
    def lr_multiplier(self) -> float:
        """The factor applied to the LRs after rollbacks (1.0 without a guard)."""
        return self.guard.lr_multiplier if self.guard is not None else 1.0


@dataclass
class _Snap:
    label: int  # the guard step this state precedes
    payload: Any  # the trainer state, or a file path on disk
    doctor: dict[str, Any]
    multiplier: float
    restores: int = 0
    on_disk: bool = False


class Guard:
    r"""Watch a run with a :class:`~lrkit.doctor.core.Doctor`; on ``nan``/``diverging`` restore the
    last good snapshot and multiply the LR by ``lr_factor`` (see the module docstring).

    Args:
        trainer: an object with ``snapshot() -> state`` and ``restore(state)``; for
            :meth:`step` also ``step(lr) -> float`` (the :class:`~lrkit.finder.trainer.Trainer`
            protocol).
        doctor: the :class:`~lrkit.doctor.core.Doctor` to use (a fresh ``Doctor()`` by default).
            The guard drives it: do not feed it yourself.
        snapshot_every: ``K``, take a snapshot every ``K`` steps while the verdict is healthy
            (or flat). An int >= 1 (default 50). Smaller = less lost on a rollback, more copies.
        lr_factor: :math:`\gamma`, the LR multiplier is multiplied by this on each intervention;
            in (0, 1) (default 0.1: "lower the LR about 10x", as the doctor advises).
        max_retries: how many times one snapshot may be restored; an int >= 1 (default 3).
        act_on: the verdicts that trigger a rollback; a subset of ``{"nan", "diverging",
            "fluctuating"}`` (default ``("nan", "diverging")``).
        storage: ``"memory"`` or ``"disk"`` (pickle the snapshots into ``storage_dir``).
        storage_dir: directory for ``storage="disk"`` (created if missing; default a new
            temporary directory, removed by :meth:`close`). Only with ``storage="disk"``.
        on_intervention: called with each :class:`Intervention` after the rollback.
        logger: where the WARNING line of each intervention goes (default
            ``logging.getLogger("lrkit.guard")``).
        take_initial_snapshot: snapshot the trainer now (step 0). Adapters that build the guard
            before the model exists pass ``False`` and call :meth:`start` later.
        keep_initial: also keep the very first snapshot for the whole run (default ``True``):
            the fallback when the doctor places the onset before both rolling snapshots (e.g. a
            run that blew up in its first steps and sat "flat" and dead since). One more copy of
            the state; pass ``False`` to keep only the two rolling snapshots.
    """

    def __init__(
        self,
        trainer: Any,
        *,
        doctor: Doctor | None = None,
        snapshot_every: int = 50,
        lr_factor: float = 0.1,
        max_retries: int = 3,
        act_on: tuple[str, ...] = ("nan", "diverging"),
        storage: str = "memory",
        storage_dir: str | os.PathLike[str] | None = None,
        on_intervention: Callable[[Intervention], Any] | None = None,
        logger: logging.Logger | None = None,
        take_initial_snapshot: bool = True,
        keep_initial: bool = True,
    ) -> None:
        for name in ("snapshot", "restore"):
            if not callable(getattr(trainer, name, None)):
                raise ValueError(
                    f"Guard: trainer must have a callable {name}() (the Trainer protocol), "
                    f"got {type(trainer).__name__} without it"
                )
        if doctor is None:
            doctor = Doctor()
        elif not isinstance(doctor, Doctor):
            raise ValueError(f"Guard: doctor must be an lrkit.doctor.Doctor or None, got {type(doctor).__name__}")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"Guard: snapshot_every must be an int >= 1, got {snapshot_every!r}")
        if (
            isinstance(lr_factor, bool)
            or not isinstance(lr_factor, (int, float))
            or not math.isfinite(lr_factor)
            or not 0 < lr_factor < 1
        ):
            raise ValueError(f"Guard: lr_factor must be a number in (0, 1), got {lr_factor!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"Guard: max_retries must be an int >= 1, got {max_retries!r}")
        act = tuple(act_on) if isinstance(act_on, (tuple, list, set, frozenset)) else None
        allowed = ("nan", "diverging", "fluctuating")
        if not act or any(v not in allowed for v in act):
            raise ValueError(f"Guard: act_on must be a non-empty subset of {allowed}, got {act_on!r}")
        if storage not in ("memory", "disk"):
            raise ValueError(f"Guard: storage must be 'memory' or 'disk', got {storage!r}")
        if storage_dir is not None and storage != "disk":
            raise ValueError(f"Guard: storage_dir is only used with storage='disk', got storage={storage!r}")
        if on_intervention is not None and not callable(on_intervention):
            raise ValueError(f"Guard: on_intervention must be callable or None, got {type(on_intervention).__name__}")
        self.trainer = trainer
        self.doctor = doctor
        self.snapshot_every = snapshot_every
        self.lr_factor = float(lr_factor)
        self.max_retries = max_retries
        self.act_on = act
        self.storage = storage
        self.on_intervention = on_intervention
        self.logger = logger if logger is not None else logging.getLogger("lrkit.guard")
        self._own_dir = False
        self._dir: str | None = None
        if storage == "disk":
            if storage_dir is None:
                self._dir = tempfile.mkdtemp(prefix="lrkit-guard-")
                self._own_dir = True
            else:
                self._dir = os.fspath(storage_dir)
                os.makedirs(self._dir, exist_ok=True)
        self._multiplier = 1.0
        self._clock = 0
        self.keep_initial = bool(keep_initial)
        self._initial: _Snap | None = None  # the state before the first step (keep_initial=True)
        self._snaps: list[_Snap] = []  # the rolling snapshots, oldest first, at most two
        self._interventions: list[Intervention] = []
        self._last_rolled_back = False
        self._serial = 0
        self._since = 0  # good steps since the last snapshot or rollback
        if take_initial_snapshot:
            self.start()

    # ------------------------------------------------------------------ public state
    @property
    def lr_multiplier(self) -> float:
        """Multiply your schedule's LR by this (``guard.step`` does it for you)."""
        return self._multiplier

    @property
    def step_count(self) -> int:
        """The number of the next step (the guard's clock; never rewound by a rollback)."""
        return self._clock

    @property
    def interventions(self) -> list[Intervention]:
        """Every rollback so far, in order."""
        return list(self._interventions)

    @property
    def diagnosis(self) -> Diagnosis:
        """The doctor's latest verdict."""
        return self.doctor.diagnosis

    @property
    def rolled_back(self) -> bool:
        """``True`` if the last :meth:`step`/:meth:`observe` ended with a rollback."""
        return self._last_rolled_back

    @property
    def snapshot_steps(self) -> list[int]:
        """The guard steps of the snapshots currently kept (oldest first)."""
        return [s.label for s in self._pool()]

    # ------------------------------------------------------------------ driving
    def start(self) -> None:
        """Take the first snapshot (the state before step :attr:`step_count`). Idempotent."""
        if not self._snaps and self._initial is None:
            self._take(initial=self.keep_initial)

    def step(self, lr: float) -> float:
        """Run ``trainer.step(lr * lr_multiplier)``, feed the doctor, maybe roll back.

        Returns the loss the trainer returned for this step (``nan`` if it blew up; check
        :attr:`rolled_back`).
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"Guard.step: lr must be a finite number >= 0, got {lr!r}")
        if not callable(getattr(self.trainer, "step", None)):
            raise ValueError(f"Guard.step: the trainer ({type(self.trainer).__name__}) has no step(lr) method")
        self.start()
        eff = lr * self._multiplier
        loss = self.trainer.step(eff)
        self.observe(loss, lr=eff)
        return float(loss)

    def observe(
        self,
        loss: float,
        *,
        lr: float | None = None,
        grad_norm: float | None = None,
        val_loss: float | None = None,
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> Intervention | None:
        """Report the loss of one step that was run outside the guard.

        ``val_loss`` and ``metrics`` are passed to :meth:`lrkit.doctor.core.Doctor.observe`
        (validation results computed at this step, if any).

        ``lr`` is the LR actually used (after the multiplier). ``step`` is your number for this
        step (strictly increasing; default: the guard's clock, :attr:`step_count`); the clock
        jumps to ``step + 1`` so that records use your numbering. Snapshots are taken and
        rollbacks done here. Returns the :class:`Intervention` if it rolled back, else ``None``.

        Raises:
            GuardGaveUp: a snapshot was restored ``max_retries`` times and the run failed again
                (the trainer is left restored to it).
        """
        self.start()
        if step is None:
            step = self._clock
        else:
            if isinstance(step, bool) or not isinstance(step, int) or step < self._clock:
                raise ValueError(
                    f"Guard.observe: step must be an int >= {self._clock} (the next step), got {step!r}"
                )
            if self._clock == 0 and step > 0:  # the initial snapshot precedes the first step, whatever its number
                for snap in self._pool():
                    snap.label = step
        self._clock = step + 1
        self._last_rolled_back = False
        d = self.doctor.observe(step, loss, lr=lr, grad_norm=grad_norm, val_loss=val_loss, metrics=metrics)
        if d.verdict in self.act_on:
            rec = self._intervene(step, d)
            self._last_rolled_back = True
            return rec
        self._since = self._since + 1 if d.verdict in _GOOD else 0
        if self._since >= self.snapshot_every:
            self._take()
        return None

    def close(self) -> None:
        """Delete the snapshot files (and the temporary directory the guard created)."""
        for s in self._pool():
            self._drop(s)
        self._snaps = []
        self._initial = None
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _pool(self) -> list[_Snap]:
        return ([self._initial] if self._initial is not None else []) + self._snaps

    def _take(self, initial: bool = False) -> None:
        state = self.trainer.snapshot()
        snap = _Snap(self._clock, state, self.doctor.state_dict(), self._multiplier)
        if self.storage == "disk":
            self._serial += 1
            path = os.path.join(str(self._dir), f"snapshot-{self._serial}.pkl")
            with open(path, "wb") as fh:
                pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
            snap.payload, snap.on_disk = path, True
        self._since = 0
        if initial:
            self._initial = snap
            return
        self._snaps.append(snap)
        while len(self._snaps) > 2:
            self._drop(self._snaps.pop(0))

    @staticmethod
    def _drop(s: _Snap) -> None:
        if s.on_disk and isinstance(s.payload, str) and os.path.exists(s.payload):
            os.remove(s.payload)

    def _load(self, s: _Snap) -> Any:
        if not s.on_disk:
            return s.payload
        with open(s.payload, "rb") as fh:
            return pickle.load(fh)

    def _restore(self, s: _Snap) -> None:
        self.trainer.restore(self._load(s))
        self.doctor.load_state_dict(s.doctor)
        self._since = 0

    def _intervene(self, step: int, d: Diagnosis) -> Intervention:
        onset = d.step if d.step is not None else step
        pool = self._pool()
        before = [s for s in pool if s.label < onset]
        target = before[-1] if before else pool[0]
        # rolling snapshots newer than the one restored are suspect (at/after the onset): drop them
        for snap in self._snaps:
            if snap.label > target.label:
                self._drop(snap)
        self._snaps = [snap for snap in self._snaps if snap.label <= target.label and snap is not target] + (
            [target] if target is not self._initial else []
        )
        if target.restores >= self.max_retries:
            self._restore(target)
            msg = (
                f"lrkit guard gave up at step {step}: {d.verdict} again after restoring the snapshot of "
                f"step {target.label} {target.restores} times (max_retries={self.max_retries}); the LR "
                f"multiplier is {self._multiplier:.3g}. The trainer is restored to step {target.label}. "
                f"Last diagnosis: {d.message}"
            )
            self.logger.error(msg)
            raise GuardGaveUp(msg, d, self._interventions, target.label)
        self._restore(target)
        target.restores += 1
        old = self._multiplier
        self._multiplier = old * self.lr_factor
        rec = Intervention(
            step=step,
            verdict=d.verdict,
            onset=d.step,
            evidence=dict(d.evidence),
            old_multiplier=old,
            new_multiplier=self._multiplier,
            restored_to=target.label,
            before_onset=target.label < onset,
            retry=target.restores,
            message=d.message,
        )
        self._interventions.append(rec)
        self.logger.warning(
            "lrkit guard: %s at step %d (onset %s); restored the snapshot of step %d%s and lowered "
            "the LR multiplier %.3g -> %.3g (retry %d of %d)",
            d.verdict, step, d.step, target.label, "" if rec.before_onset else " (taken after the onset)",
            old, self._multiplier, rec.retry, self.max_retries,
        )
        if self.on_intervention is not None:
            self.on_intervention(rec)
        return rec

    def state_summary(self) -> Mapping[str, Any]:
        """A JSON-ready summary: multiplier, clock, snapshot steps and interventions."""
        return {
            "lr_multiplier": self._multiplier,
            "step_count": self._clock,
            "snapshot_steps": self.snapshot_steps,
            "interventions": [i.to_dict() for i in self._interventions],
            "verdict": self.doctor.diagnosis.verdict,
        }

