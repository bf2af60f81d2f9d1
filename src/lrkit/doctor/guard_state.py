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

import hashlib
import json
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
    agree: Any
    _spikes: Any
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

    def _resume_choice(self, cands: list[SnapshotRecord]) -> SnapshotRecord | None:
        """The candidate to resume from: the newest; with ``agree``, the newest label every
        process has among its candidates (each round: the least of the processes' newest labels
        at or below the last round's, until all have it; one ``agree(..., "min")`` a round)."""
        if self.agree is None:
            return cands[-1] if cands else None
        labels = sorted(r.label for r in cands)
        bound = math.inf
        while True:
            mine = max((k for k in labels if k <= bound), default=-math.inf)
            low = float(self.agree([float(mine)], "min")[0])
            if low == -math.inf:
                return None  # some process holds nothing at or below the bound
            if low == bound:
                return next(r for r in cands if r.label == low)
            bound = low

    def _agreed_bookkeeping(self, manifest: Mapping[str, Any], rec: SnapshotRecord) -> None:
        """Several processes resumed from ``rec``: their manifests may differ by the writes a kill
        cut short. The same everywhere: keep them; else the state of ``rec`` itself -- its
        multiplier, the interventions before it, the skips before it -- and no probation."""
        text = json.dumps({k: manifest.get(k) for k in ("multiplier", "interventions", "probation", "skipped",
                                                        "spikes")}, sort_keys=True, default=str)
        digest = float(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))  # exact in a float64
        if float(self.agree([digest], "min")[0]) == float(self.agree([digest], "max")[0]):
            return
        self._multiplier = float(rec.multiplier)
        self._interventions = [i for i in self._interventions if i.step < rec.label]
        self._policy.load_state_dict(None)
        self._load_skips({"skipped": [k for k in self._skipped if k < rec.label]})
        if self._spikes is not None:
            self._spikes.reset()  # the spike filter learns the run's level afresh
        self.logger.warning("lrkit guard: the processes' manifests differed (a kill cut a write short): every "
                            "process resumes with the state of the snapshot of step %d", rec.label)

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
        """Continue a killed run: the newest readable snapshot not known to be bad. With ``agree``
        (several processes), the newest one every process can read, and the bookkeeping every
        process shares (:meth:`_agreed_bookkeeping`)."""
        recs = [SnapshotRecord.from_json(s) for s in manifest["snapshots"]]
        self._set.adopt(recs, [s.get("kind", "rolling") for s in manifest["snapshots"]])
        pool = self._set.pool()
        self._interventions = [Intervention.from_dict(i) for i in manifest.get("interventions", [])]
        self._multiplier = float(manifest["multiplier"])
        self._policy.load_state_dict(manifest.get("probation"))
        self._load_skips(manifest)
        excluded: set[int] = set()  # (several processes) labels another process could not read
        while True:
            live = [r for r in pool if r.label not in excluded]
            cands = [r for r in live if r.healthy(self.tolerance) is not False] or live[:1]
            rec = self._resume_choice(cands)
            if rec is None:
                raise SnapshotError(
                    f"lrkit guard: cannot resume run {self._set.disk.run_id}: no snapshot in {self.storage_path} "
                    "could be read" + (" by every process" if self.agree is not None else "") + " (see the ERROR lines)",
                    str(self.storage_path),
                )
            state = self._load(pool, rec)
            ok = state is not None
            if self.agree is not None:  # every process read it, or every process tries an older one
                ok = float(self.agree([1.0 if ok else 0.0], "min")[0]) == 1.0
                excluded.add(rec.label)
            if ok:
                break
        if self.agree is not None:
            self._agreed_bookkeeping(manifest, rec)
        self._set.drop_newer(rec.label)
        self._restore(rec, state)
        self._clock = rec.label
        self.resumed_from = rec.label
        self._write_manifest()
        self.logger.warning(
            "lrkit guard: resumed run %s from the snapshot of step %d (LR multiplier %.3g, %d earlier interventions)",
            self._set.disk.run_id, rec.label, self._multiplier, len(self._interventions),
        )
