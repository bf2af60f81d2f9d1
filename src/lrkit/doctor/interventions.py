"""What a guard did: each rollback as an :class:`Intervention`, and :class:`GuardGaveUp` when it stops.

Plain data (pure core), shared by :class:`~lrkit.doctor.guard.Guard`, the watchers and the
autopilot; JSON round trip with :meth:`Intervention.to_dict` / :meth:`Intervention.from_dict`.

Example:
    >>> rec = Intervention(step=40, verdict="nan", onset=40, evidence={"loss": float("nan")},
    ...                    old_multiplier=1.0, new_multiplier=0.1, restored_to=25, before_onset=True, retry=1)
    >>> Intervention.from_dict(rec.to_dict()).restored_to, rec.to_dict()["evidence"]
    (25, {'loss': None})
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from lrkit.doctor.core import Diagnosis

__all__ = ["Intervention", "GuardGaveUp"]


@dataclass(frozen=True)
class Intervention:
    """One rollback.

    Attributes:
        step: the guard step at which the problem was detected.
        verdict: the doctor's verdict (``"nan"``, ``"diverging"``, ...).
        onset: the step where the doctor says the problem began.
        evidence: the doctor's numbers behind the verdict.
        old_multiplier: the LR multiplier in force when it went wrong.
        new_multiplier: the multiplier from now on (``old_multiplier`` times the factor the guard chose:
            ``lr_factor``, 1 for a first problem, ``1/r`` for a held raise).
        restored_to: the guard step the restored snapshot was taken before.
        before_onset: ``True`` if that snapshot precedes the doctor's onset.
        retry: how many times this snapshot has now been restored (1 = first time).
        message: the doctor's message.
        verified: ``True`` if the restored snapshot was verified healthy by the losses after it
            (see the module docstring); ``False``: none was, the oldest kept one was used.
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
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite evidence becomes ``None``)."""
        out = asdict(self)
        out["evidence"] = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in self.evidence.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Intervention":
        """The record :meth:`to_dict` wrote."""
        ev = {k: (math.nan if v is None else float(v)) for k, v in d["evidence"].items()}
        return cls(**{**d, "evidence": ev})


class GuardGaveUp(RuntimeError):
    """Raised when a snapshot has been restored ``max_retries`` times and the run failed again.

    The trainer has been restored to the best snapshot seen before raising. Attributes:
    ``diagnosis`` (the last :class:`~lrkit.doctor.core.Diagnosis`), ``interventions`` (all of
    them), ``restored_to`` (the guard step of the state the trainer is left in), ``best_by``
    (``"val_loss"``, ``"train_loss"``, or ``""`` when no snapshot was verified and the last
    target was restored) and ``best_value`` (that loss).
    """

    def __init__(self, message: str, diagnosis: Diagnosis, interventions: list[Intervention], restored_to: int,
                 best_by: str = "", best_value: float = math.nan):
        super().__init__(message)
        self.diagnosis = diagnosis
        self.interventions = list(interventions)
        self.restored_to = restored_to
        self.best_step = restored_to
        self.best_by = best_by
        self.best_value = best_value
