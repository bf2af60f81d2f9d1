r"""What a guard's rollback does to the LR: keep it, lower it, lower it on probation, bring it back.

Pure core (no framework, no NumPy needed); :class:`~lrkit.doctor.guard.Guard` asks
:meth:`LRPolicy.factor` at every rollback and :meth:`LRPolicy.tick` after every healthy step.
With :math:`K` the guard's snapshot period, a rollback multiplies the LR multiplier :math:`m` by

.. math::

    c = \begin{cases}
      1/r & \text{the LR was raised } r \text{ times and held since the restored snapshot} \\
      1 & \text{a first problem (below)} \\
      \gamma_p = \max(\gamma, 1/2) & \text{a second problem right after a forgiven one (probation, below)} \\
      \gamma & \text{otherwise}
    \end{cases}

A **first problem** is one out of a run that has shown it trains at this LR: the restored
snapshot is not an *untried* start (the initial state, unless the run trained a healthy stretch
from it before the problem, by the guard's reading, ``Guard._untried``: a run that fails before it
trained at this LR points at the LR), the doctor's onset is not before it (a run "unstable since
its start" is the LR), and there was no rollback yet or the run has moved on since the last one
(the snapshot is newer than the last one restored and more than :math:`2K` steps have passed).
A bad batch, a NaN written into a weight, a corrupt shard are one-off faults: a 10x lower LR would
cost the rest of the run for nothing. Every forgiven rollback lands on a strictly newer snapshot,
so a run cannot loop.

**A NaN at an untried start.** A NaN out of a start with no blow-up before it (``evidence_free``:
the guard's reading) is as likely a bad batch as the LR, and the evidence is one replay away: the
first such rollback keeps the LR (once per run, :attr:`LRPolicy.start_forgiven`, and the guard does
not count it against ``max_retries``); a second problem from the untried start gets
:math:`\gamma` as before, so a hopeless LR reaches the same lowest LR before the guard gives up,
one short replay later.

**Probation.** A second problem right after a forgiven one is ambiguous: a bad stretch of data
hits twice as surely as a too-high LR. So that lowering is a halving (:data:`PROBATION_FACTOR`,
as the autopilot's second problem; :math:`\gamma` when that is milder), not a tenth -- a 10x lower
LR through a corrupt shard of a run still learning fast cost MNIST 10-16% of its final loss on the
guard benchmark's development half, a halving 4-10% -- and it is on probation: once the run has trained
:math:`2K` steps past it and a snapshot taken since is verified healthy, :math:`m` ramps back
geometrically over :math:`2K` steps to its value before the trouble (at once, a 10x jump meets a
state that sharpened at the lower LR: on MNIST it blew up again). A problem during probation
lowers further and restarts its clock (a 10x lower LR that still blows up points at the data); a
problem within :math:`4K` steps of a recovery means the LR was the cause after all: lowered for
good, and no probation is granted again. A lowering with direct evidence (a held raise, a run
that never reached a healthy snapshot) is never undone, and undoing a held raise ends a pending
probation (its level "before the trouble" no longer holds). ``forgive_first=False``: :math:`c=\gamma`
on every rollback without a held raise, no probation.

Example:
    >>> p = LRPolicy(lr_factor=0.1)
    >>> first = dict(step=100, onset=100, target=90, untried=False, interval=10)
    >>> p.factor(**first, held_raise=None, last=None, multiplier=1.0)     # a bad batch: keep
    1.0
    >>> p.factor(**{**first, "step": 104}, held_raise=None, last=(100, 90, True), multiplier=1.0)  # again: halve
    0.5
    >>> healthy = lambda label: True          # a snapshot newer than the target is verified healthy
    >>> p.tick(110, multiplier=0.5, healthy_since=healthy) is None, p.recoveries   # not 2K yet
    (True, [])
    >>> p.tick(130, multiplier=0.5, healthy_since=healthy) is None, p.recoveries   # probation over
    (True, [130])
    >>> [round(p.tick(s, multiplier=0.5, healthy_since=healthy), 3) for s in (131, 140, 149)]
    [0.536, 0.732, 1.0]
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["LRPolicy", "PROBATION_FACTOR", "moved_on", "unstable_start"]

#: the cut of a lowering on probation (a second problem right after a forgiven one), unless
#: ``lr_factor`` is milder: a halving, as the autopilot's own policy does for a second problem
PROBATION_FACTOR = 0.5


def unstable_start(evidence: Mapping[str, Any]) -> bool:
    """The doctor dates a blow-up to the run's first window (``early_max_ratio``) or finds the run
    stuck since one (``stuck``): evidence against the LR from the start, which no rollback to the
    start forgives (the guard's untried start, the autopilot's decade cut ask this).

    Example:
        >>> unstable_start({"early_max_ratio": 9.0}), unstable_start({"stuck": 1.0}), unstable_start({"lr": 0.1})
        (True, True, False)
    """
    return "early_max_ratio" in evidence or bool(evidence.get("stuck"))


def moved_on(step: int, target: int | None, last: tuple[int, int | None] | None, window: int) -> bool:
    """The run has moved on since the last rollback: there was none (``last is None``), or it was
    more than ``window`` steps before ``step`` and ``target``, the snapshot this rollback restores,
    is newer than the one it restored (``last = (step, restored_to)``; an unknown label does not
    count against it). A problem that sends the run back to the same snapshot is the LR coming back,
    however slowly it climbed. The guard's first-problem rule and the autopilot's both ask this.

    Example:
        >>> moved_on(300, 270, None, 60), moved_on(300, 270, (200, 150), 60), moved_on(300, 150, (200, 150), 60)
        (True, True, False)
    """
    if last is None:
        return True
    last_step, last_target = last
    newer = target is None or last_target is None or target > last_target
    return step - last_step > window and newer


class LRPolicy:
    """The guard's LR decisions and the state they need (see the module docstring).

    Args:
        lr_factor: :math:`\\gamma`, in (0, 1).
        forgive_first: keep the LR on a first problem and put an ambiguous lowering on probation.
    """

    def __init__(self, lr_factor: float, forgive_first: bool = True) -> None:
        self.lr_factor = float(lr_factor)
        self.forgive_first = bool(forgive_first)
        self.probation: dict[str, Any] | None = None  # {"multiplier": before it, "label", "at", "until"}
        self.ramp: dict[str, Any] | None = None  # a recovery under way: {"from", "to", "start", "steps"}
        self.recovered_at: int | None = None
        self.closed = False  # a recovery was followed by trouble: the LR was the cause, no more probation
        #: a NaN at an untried start was forgiven (once per run)
        self.start_forgiven = False
        #: the steps at which a lowering on probation started to be undone
        self.recoveries: list[int] = []
        #: what the last call changed, in words (for the guard's log line), or ``None``
        self.note: str | None = None

    def factor(self, *, step: int, onset: int, target: int, untried: bool, interval: int,
               held_raise: float | None, last: tuple[int, int, bool] | None, multiplier: float,
               evidence_free: bool = False) -> float:
        """The factor for a rollback at ``step`` (doctor's ``onset``) to the snapshot labelled
        ``target`` (``untried``: the run's initial state, and no healthy stretch trained from it before
        the problem), ``interval`` = :math:`K`.
        ``held_raise``: :math:`r` if the LR was raised and held since the target, else ``None``.
        ``last``: the previous rollback's ``(step, restored_to, kept_the_lr)``, or ``None``.
        ``evidence_free``: at an untried start, a problem with no evidence against the LR (a NaN
        with no blow-up before it): kept once per run (see the module docstring)."""
        self.ramp = None  # a recovery under way stops where it is
        if held_raise is not None and held_raise >= 1.5:
            self.probation = None  # the cause is known; the level "before the trouble" no longer holds
            return min(1.0 / held_raise, 1.0 / 1.5)
        if not self.forgive_first:
            return self.lr_factor
        if self.probation is not None:  # trouble again on probation: lower further, the clock restarts
            self.probation.update(label=target, at=step, until=step + 2 * interval)
            return self.lr_factor
        if self.recovered_at is not None and step - self.recovered_at <= 4 * interval:
            self.closed = True  # the LR went back up and the trouble came back: it was the LR
            return self.lr_factor
        if untried and evidence_free and not self.start_forgiven:
            self.start_forgiven = True  # one replay tells a bad batch from the LR
            return 1.0
        if not untried and onset >= target and moved_on(step, target, last[:2] if last else None, 2 * interval):
            return 1.0
        if not self.closed and not untried and last is not None and last[2]:
            # the second problem right after a forgiven one: a bad stretch of data or the LR
            self.probation = {"multiplier": multiplier, "label": target, "at": step, "until": step + 2 * interval}
            return max(self.lr_factor, PROBATION_FACTOR)
        return self.lr_factor

    def tick(self, step: int, *, multiplier: float, healthy_since: Callable[[int], bool]) -> float | None:
        """After a step without rollback: the new multiplier if it changes, else ``None``.
        ``healthy_since(label)``: a snapshot newer than ``label`` is verified healthy."""
        self.note = None
        p = self.probation
        if p is not None:
            if step < p["until"] or not healthy_since(p["label"]):
                return None
            self.probation = None
            self.recovered_at = step
            self.recoveries.append(step)
            steps = p["until"] - p["at"]
            self.ramp = {"from": multiplier, "to": p["multiplier"], "start": step, "steps": steps}
            self.note = (f"healthy for {step - p['at']} steps since the LR was lowered at a second problem; LR "
                         f"multiplier back {multiplier:.3g} -> {p['multiplier']:.3g} over the next {steps} steps "
                         "(a bad stretch of data, not the LR; if trouble comes back soon it is lowered for good)")
            return None  # the ramp starts with the next step
        r = self.ramp
        if r is None:
            return None
        u = min(1.0, (step - r["start"] + 1) / r["steps"])
        if u >= 1.0:
            self.ramp = None
            return float(r["to"])
        return float(r["from"] * (r["to"] / r["from"]) ** u)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the guard's manifest and framework checkpoints."""
        return {"pending": self.probation, "ramp": self.ramp, "recovered_at": self.recovered_at,
                "closed": self.closed, "recoveries": list(self.recoveries), "start_forgiven": self.start_forgiven}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state_dict` (``None`` or ``{}``: a fresh policy, as in older files)."""
        state = state or {}
        self.probation = dict(state["pending"]) if state.get("pending") else None
        self.ramp = dict(state["ramp"]) if state.get("ramp") else None
        self.recovered_at = state.get("recovered_at")
        self.closed = bool(state.get("closed", False))
        self.recoveries = list(state.get("recoveries", []))
        self.start_forgiven = bool(state.get("start_forgiven", False))
