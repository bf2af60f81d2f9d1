"""The guard's persistence: :class:`PersistsGuard`, mixed into :class:`~lrkit.doctor.guard.Guard`.

Two ways a run outlives its process. A framework's own checkpoint carries :meth:`~PersistsGuard.state_dict`
(plain JSON types: the LR multiplier, the clock, the interventions, the doctor's state, the probation
and the skips; no snapshot -- the checkpoint's weights become the guard's first one). With
``storage="disk"`` the guard also keeps a **manifest** next to its snapshot files, rewritten
atomically after every snapshot (:meth:`~PersistsGuard._write_manifest`); a process killed with
``kill -9`` and started again with the same ``run_id`` and ``resume=True`` finds it and continues
from the newest readable snapshot not known to be bad (:meth:`~PersistsGuard._resume`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from lrkit.doctor.interventions import Intervention
from lrkit.doctor.snapshots import SnapshotRecord
from lrkit.doctor.storage import SnapshotError

__all__ = ["PersistsGuard"]


class PersistsGuard:
    """Mixin: the guard's checkpoint state, manifest and resume. The host is a
    :class:`~lrkit.doctor.guard.Guard` (its multiplier, clock, records, doctor, policy, snapshot set,
    skip state and ``_load``/``_restore``)."""

    _multiplier: float
    _clock: int
    _trained: int
    _started: bool
    _interventions: list[Intervention]
    doctor: Any
    logger: Any
    tolerance: float
    snapshot_every: int
    resumed_from: int | None
    _policy: Any
    _set: Any
    _skipped: Any

    def state_dict(self) -> dict[str, Any]:
        """The guard's state without its snapshots, in plain JSON types: the LR multiplier, the
        clock, the interventions and the doctor's state -- what a framework's own checkpoint
        carries (Lightning's callback state, the ``Trainer``'s scheduler) so that a resumed run keeps
        its lowered LR and its history; the checkpoint's weights become its first snapshot.

        Example:
            >>> from lrkit.doctor.guard import Guard
            >>> class T:
            ...     def snapshot(self): return None
            ...     def restore(self, s): pass
            >>> g = Guard(T(), take_initial_snapshot=False)
            >>> sorted(g.state_dict())
            ['clock', 'doctor', 'format', 'interventions', 'multiplier', 'probation', 'skipped', 'spikes', 'trained']
        """
        return {
            "format": 1,
            "multiplier": self._multiplier,
            "clock": self._clock,
            "trained": self._trained,
            "interventions": [i.to_dict() for i in self._interventions],
            "doctor": self.doctor.state_dict(),
            "probation": self._policy.state_dict(),
            **self._skips_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (before :meth:`start`, which then snapshots the state the
        framework restored as the run's first). A mapping of another shape is refused."""
        if not isinstance(state, Mapping) or state.get("format") != 1 or not {
                "multiplier", "clock", "interventions", "doctor"} <= set(state):
            raise ValueError(f"Guard.load_state_dict: not a Guard.state_dict() (format 1), got {state!r:.200}")
        if self._started:
            raise ValueError("Guard.load_state_dict: the guard has started; load its state before start()")
        m = float(state["multiplier"])
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"Guard.load_state_dict: multiplier must be a finite number > 0, got {m!r}")
        self._multiplier = m
        self._clock = int(state["clock"])
        self._trained = int(state.get("trained", self._clock))  # a state saved before it was kept: no rollback counted
        self._interventions = [Intervention.from_dict(i) for i in state["interventions"]]
        self.doctor.load_state_dict(state["doctor"])
        self._policy.load_state_dict(state.get("probation"))
        self._load_skips(state)

    def state_summary(self) -> Mapping[str, Any]:
        """A JSON-ready summary: multiplier, clock, snapshot steps and interventions."""
        return {
            "lr_multiplier": self._multiplier,
            "step_count": self._clock,
            "trained_steps": self._trained,
            "snapshot_steps": self.snapshot_steps,
            "snapshot_interval": self._set.interval,
            "interventions": [i.to_dict() for i in self._interventions],
            "skipped_steps": list(self._skipped),
            "verdict": self.doctor.diagnosis.verdict,
        }

    def _write_manifest(self) -> None:
        store = self._set.disk
        if store is None:
            return
        store.write_manifest({
            "format": 1,
            "run_id": store.run_id,
            "pid": os.getpid(),
            "clock": self._clock,
            "multiplier": self._multiplier,
            "snapshot_every": self.snapshot_every,
            "snapshots": [{**s.to_json(), "kind": self._set.kind(s)} for s in self._set.pool()],
            "interventions": [i.to_dict() for i in self._interventions],
            "probation": self._policy.state_dict(),
            **self._skips_state(),
        })

    def _resume(self, manifest: Mapping[str, Any]) -> None:
        """Continue a killed run: the newest readable snapshot not known to be bad."""
        recs = [SnapshotRecord.from_json(s) for s in manifest["snapshots"]]
        self._set.adopt(recs, [s.get("kind", "rolling") for s in manifest["snapshots"]])
        pool = self._set.pool()
        self._interventions = [Intervention.from_dict(i) for i in manifest.get("interventions", [])]
        self._multiplier = float(manifest["multiplier"])
        self._policy.load_state_dict(manifest.get("probation"))
        self._load_skips(manifest)
        while pool:
            cands = [r for r in pool if r.healthy(self.tolerance) is not False] or pool[:1]
            rec = cands[-1]
            state = self._load(pool, rec)
            if state is not None:
                break
        else:
            raise SnapshotError(
                f"lrkit guard: cannot resume run {self._set.disk.run_id}: no snapshot in {self.storage_path} "
                "could be read (see the ERROR lines)", str(self.storage_path),
            )
        self._set.drop_newer(rec.label)
        self._restore(rec, state)
        self._clock = rec.label
        self.resumed_from = rec.label
        self._write_manifest()
        self.logger.warning(
            "lrkit guard: resumed run %s from the snapshot of step %d (LR multiplier %.3g, %d earlier interventions)",
            self._set.disk.run_id, rec.label, self._multiplier, len(self._interventions),
        )
