"""The parts every guarded watcher shares: the flag and doctor check, held validation results, and
the read-only state (diagnosis, interventions, LR multiplier, close / context manager).

:class:`GuardedWatch` is mixed into :class:`~lrkit.integrations.torch.doctor.TorchDoctor` and the
Lightning, Keras and Hugging Face callbacks, on top of :class:`~lrkit.doctor.watch.SpeakingWatch`
(detections, the worst one, the summary); the guard itself is :class:`~lrkit.doctor.guard.Guard`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from lrkit.doctor.core import Diagnosis, Doctor
from lrkit.doctor.interventions import Intervention
from lrkit.doctor.watch import SpeakingWatch

if TYPE_CHECKING:  # pragma: no cover
    from lrkit.doctor.guard import Guard

__all__ = ["GuardedWatch", "PendingValidation", "watch_doctor", "watch_skip_spikes"]


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


def watch_skip_spikes(who: str, skip_spikes: Any, guard: Any) -> bool:
    """The ``skip_spikes`` a watcher takes: ``None`` is on with the guard; ``True`` needs the guard.

    Example:
        >>> watch_skip_spikes("MyCallback", None, True), watch_skip_spikes("MyCallback", None, False)
        (True, False)
    """
    if skip_spikes is None:
        return bool(guard)
    if not isinstance(skip_spikes, bool):
        raise ValueError(f"{who}: skip_spikes must be True, False or None (on with the guard), got {skip_spikes!r}")
    if skip_spikes and not guard:
        raise ValueError(f"{who}: skip_spikes=True needs guard=True (the guard decides the skips)")
    return skip_spikes


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


class GuardedWatch(SpeakingWatch):
    """Read-only state shared by every watcher that owns a ``doctor`` and an optional ``guard``
    (:class:`~lrkit.integrations.torch.doctor.TorchDoctor` and the Lightning and Keras callbacks);
    :class:`~lrkit.doctor.watch.SpeakingWatch` adds ``detections``, ``worst`` and the summary.

    Subclasses set ``self.doctor`` (a :class:`Doctor`) and ``self.guard`` (a :class:`Guard` or
    ``None``).
    """

    doctor: Doctor
    guard: "Guard | None"

    def _init_watch(self, who: str, state: Any, *, guard: bool, doctor: Doctor | None, logger: Any,
                    on_converged: Any, on_overfitting: Any, plateau_factor: Any, **guard_kwargs: Any) -> None:
        """The set-up every callback shares: the checked ``doctor``, the logger, the actions on
        ``converged``/``overfitting``, and (``guard=True``) a :class:`~lrkit.doctor.guard.Guard` over
        ``state`` (the framework's snapshot/restore) taking ``guard_kwargs``; the callback's first
        batch is its initial snapshot (``take_initial_snapshot=False``). ``skip_spikes`` is off
        unless given: only a callback whose hooks see a step's loss before its update can skip."""
        from lrkit.doctor.guard import Guard
        from lrkit.doctor.watch import check_actions

        self.doctor = watch_doctor(who, guard, doctor)
        self.watch_logger = logger
        self.watch_on = check_actions(who, on_converged, on_overfitting, plateau_factor)
        self.plateau_factor = float(plateau_factor)
        self.guard = None
        if guard:
            guard_kwargs.setdefault("skip_spikes", False)
            self.guard = Guard(state, doctor=self.doctor, logger=logger, take_initial_snapshot=False, **guard_kwargs)

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


    def _checkpoint_state(self) -> dict[str, Any]:
        """What a framework checkpoint carries for this watcher: the doctor's state, and the guard's
        (multiplier, clock, interventions; its doctor's state included) when there is one."""
        state: dict[str, Any] = {"doctor": self.doctor.state_dict()}
        if self.guard is not None:
            state["guard"] = self.guard.state_dict()
        return state

    def _load_checkpoint_state(self, saved: Mapping[str, Any]) -> None:
        """Continue from :meth:`_checkpoint_state` (before the guard starts)."""
        if self.guard is not None and "guard" in saved:
            self.guard.load_state_dict(saved["guard"])  # the doctor's state with it
        elif "doctor" in saved:
            self.doctor.load_state_dict(saved["doctor"])

    def close(self) -> None:
        """Drop the guard's snapshots and remove its files (``storage="disk"``); idempotent."""
        if self.guard is not None:
            self.guard.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
