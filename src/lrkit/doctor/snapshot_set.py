r"""The guard's snapshots: which it keeps, where they live, and how often it can afford them.

A :class:`SnapshotSet` holds the :class:`~lrkit.doctor.snapshots.SnapshotRecord` of every
snapshot a :class:`~lrkit.doctor.guard.Guard` keeps -- the initial state, ``keep`` rolling ones
thinned towards geometric ages (:func:`~lrkit.doctor.snapshots.thin_index`) and the best one,
kept when thinning would drop it -- and the store their states live in
(:mod:`lrkit.doctor.storage`: memory, or atomic files with a manifest on disk). It decides
nothing about rollbacks (the guard does, from :meth:`pool`); it only keeps, drops and loads.

**Cost.** The time a snapshot takes (the training loop's thread waits for it) is measured; when the
median of the last five exceeds :data:`MIN_COST` (a model of real size), the snapshot period
:attr:`interval` is stretched beyond ``every`` -- at most :data:`MAX_STRETCH` times it -- so that
snapshots cost at most ``max_overhead`` of the time a step takes,

.. math::

    K = \min\big(\max(K_0,\ \lceil c / (o\, \bar t) \rceil),\ 10\,K_0\big)

(:math:`c` the median snapshot cost, :math:`o` = ``max_overhead``, :math:`\bar t` the mean step
time); it comes back to ``every`` when snapshots turn cheap again (copied into recycled memory).

**Memory.** In memory the set holds up to ``keep + 2`` states (the rolling ones, the initial and
the best one), each the size :math:`S` of the first (:func:`state_nbytes`: every array or tensor
it holds). When :math:`(k + 2)\,S` exceeds half the memory the system has available
(:func:`available_memory`, Linux's ``MemAvailable``) when the first one is stored,
:meth:`SnapshotSet.memory_warning` says so, with the remedy: ``storage="disk"`` (one state in
memory at a time, while it is written), a smaller ``keep``.

Example:
    >>> from lrkit.doctor.storage import MemoryStore
    >>> s = SnapshotSet(keep=2, every=10, tolerance=0.25, max_overhead=None, make_store=MemoryStore)
    >>> s.open(recycle=None)
    >>> for step in (0, 10, 20, 30):
    ...     s.add(SnapshotRecord(label=step, doctor={}, multiplier=1.0, best=0.0, sigma=0.1, health={}),
    ...           state=step, initial=step == 0, now=step)
    >>> [r.label for r in s.pool()]      # the initial state and the newest two
    [0, 20, 30]
    >>> s.load(s.pool(), s.pool()[-1], logger=None)
    30
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

from lrkit.doctor.snapshots import SnapshotRecord, best_snapshot, thin_index
from lrkit.doctor.storage import DiskStore, MemoryStore, SnapshotError

__all__ = ["SnapshotSet", "MIN_COST", "MAX_STRETCH", "state_nbytes", "available_memory"]

#: seconds: cheaper snapshots never stretch the period
MIN_COST = 0.05
#: the period is stretched to at most this many times ``every``
MAX_STRETCH = 10


def state_nbytes(state: Any) -> int:
    """The bytes of the arrays and tensors a snapshot state holds (anything with an integer
    ``nbytes``: NumPy, torch, JAX), found through dicts, lists, tuples and object attributes;
    each object is counted once.

    Example:
        >>> import numpy as np
        >>> w = np.zeros((100, 10))
        >>> state_nbytes({"weights": [w, w], "opt": (np.zeros(10, np.float32), 3)})
        8040
    """
    seen: set[int] = set()
    total, todo = 0, [state]
    while todo:
        obj = todo.pop()
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        n = getattr(obj, "nbytes", None)
        if isinstance(n, int) and not isinstance(n, bool):
            total += n
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
    return total


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; elsewhere the free
    physical pages), or ``None`` where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


class SnapshotSet:
    """The initial, rolling and best snapshots and their store (see the module docstring).

    Args:
        keep: the number of rolling snapshots (>= 2).
        every: the snapshot period asked for (steps).
        tolerance: as :meth:`SnapshotRecord.healthy` (which snapshot is the best one).
        max_overhead: the largest fraction of the time snapshots may take, or ``None`` (never stretch).
        make_store: builds the store when the set is opened (``MemoryStore`` or a ``DiskStore`` factory).
    """

    def __init__(self, *, keep: int, every: int, tolerance: float, max_overhead: float | None,
                 make_store: Callable[[], MemoryStore | DiskStore]) -> None:
        self.keep, self.every, self.tolerance, self.max_overhead = keep, every, tolerance, max_overhead
        self._make_store = make_store
        self.store: MemoryStore | DiskStore | None = None
        self.initial: SnapshotRecord | None = None  # the state before the first step
        self.rolling: list[SnapshotRecord] = []  # oldest first
        self.best: SnapshotRecord | None = None  # the best snapshot, when thinned out of the rolling ones
        self.interval = every
        self.costs: list[float] = []  # seconds per snapshot (the latest few)
        self.step_time = math.nan  # seconds per step (EMA), outside the snapshots

    # ------------------------------------------------------------------ store
    def open(self, recycle: Callable[[Any], Any] | None) -> None:
        """Build the store if there is none; ``recycle`` gets the states it no longer needs."""
        if self.store is None:
            self.store = self._make_store()
            self.store.on_release = recycle

    def close(self) -> None:
        """Close the store (its files go) and forget every snapshot."""
        if self.store is not None:
            self.store.on_release = None
            self.store.close()
            self.store = None
        self.rolling, self.initial, self.best = [], None, None

    @property
    def disk(self) -> DiskStore | None:
        """The store when it is on disk, else ``None``."""
        return self.store if isinstance(self.store, DiskStore) else None

    def memory_warning(self, state: Any, available: int | None = None) -> str | None:
        """A warning when ``keep + 2`` copies of ``state`` kept in memory would take more than half
        of ``available`` bytes (default :func:`available_memory`), else ``None`` (also on disk)."""
        if not isinstance(self.store, MemoryStore):
            return None
        available = available_memory() if available is None else available
        size = state_nbytes(state)
        held = (self.keep + 2) * size
        if available is None or size == 0 or held <= available / 2:
            return None
        return (f"the guard's snapshots kept in memory may take {_gib(held)} (up to {self.keep + 2} copies "
                f"of {_gib(size)}), more than half of the {_gib(available)} available; pass storage='disk' "
                f"(one copy in memory at a time, while it is written), or a smaller keep")

    # ------------------------------------------------------------------ records
    def pool(self) -> list[SnapshotRecord]:
        """Every snapshot kept, oldest first."""
        pool = ([self.initial] if self.initial is not None else []) + self.rolling
        if self.best is not None and all(self.best is not s for s in pool):
            pool.append(self.best)
        return sorted(pool, key=lambda s: s.label)

    def kind(self, rec: SnapshotRecord) -> str:
        return "initial" if rec is self.initial else ("best" if rec is self.best else "rolling")

    def add(self, rec: SnapshotRecord, state: Any, *, initial: bool, now: int) -> None:
        """Store ``state`` as ``rec``: the initial snapshot, or a rolling one (thinned at step ``now``)."""
        rec.handle = self.store.put(state)
        if initial:
            self.initial = rec
            return
        self.rolling.append(rec)
        while len(self.rolling) > self.keep:
            origin = self.initial.label if self.initial is not None else None
            i = thin_index([s.label for s in self.rolling], now=now, every=self.every, origin=origin)
            self._retire(self.rolling.pop(i))

    def _retire(self, rec: SnapshotRecord) -> None:
        """A snapshot leaves the rolling set: keep it as the best one if it is, else drop it."""
        best, _, _ = best_snapshot(self.pool() + [rec], self.tolerance)
        if best is rec:
            if self.best is not None and self.best is not rec:
                self.store.drop(self.best.handle)
            self.best = rec
        else:
            self.store.drop(rec.handle)

    def drop_newer(self, label: int) -> None:
        """Drop the rolling snapshots newer than ``label`` (suspect after a rollback to it)."""
        for snap in [s for s in self.rolling if s.label > label]:
            self.store.drop(snap.handle)
        self.rolling = [s for s in self.rolling if s.label <= label]

    def drop_best(self) -> None:
        if self.best is not None:
            self.store.drop(self.best.handle)
            self.best = None

    def adopt(self, records: list[SnapshotRecord], kinds: list[str]) -> None:
        """Take over the snapshots a manifest lists (``kinds``: initial, best or rolling)."""
        pairs = sorted(zip(records, kinds), key=lambda p: p[0].label)
        self.initial = next((r for r, k in pairs if k == "initial"), None)
        self.best = next((r for r, k in pairs if k == "best"), None)
        self.rolling = [r for r, k in pairs if k == "rolling"]

    def load(self, pool: list[SnapshotRecord], rec: SnapshotRecord, logger: logging.Logger | None) -> Any:
        """The state of ``rec``; on a missing/corrupt file: an ERROR line, ``rec`` leaves ``pool``
        and the set, ``None``."""
        try:
            return self.store.get(rec.handle)
        except SnapshotError as exc:
            (logger or logging.getLogger("lrkit.guard")).error("%s; falling back to the next good snapshot", exc)
            pool.remove(rec)
            if rec is self.initial:
                self.initial = None
            if rec is self.best:
                self.best = None
            self.rolling = [s for s in self.rolling if s is not rec]
            return None

    # ------------------------------------------------------------------ cost
    def note_step(self, seconds: float) -> None:
        """The time one training step took (outside the snapshots)."""
        self.step_time = seconds if math.isnan(self.step_time) else 0.9 * self.step_time + 0.1 * seconds

    def adapt(self, cost: float, step_time: float | None = None) -> None:
        """Stretch the period so that snapshots cost at most ``max_overhead`` of the time
        (``step_time``: the step time to compare with, default the one measured here)."""
        self.costs = (self.costs + [cost])[-5:]
        if step_time is None:
            step_time = self.step_time
        if self.max_overhead is None or math.isnan(step_time) or len(self.costs) < 2:
            return
        c = sorted(self.costs)[len(self.costs) // 2]
        if c < MIN_COST:  # cheap again (e.g. copied into recycled memory): the period comes back
            self.interval = self.every
            return
        need = math.ceil(c / (self.max_overhead * max(step_time, 1e-9)))
        self.interval = min(max(self.every, need), MAX_STRETCH * self.every)
