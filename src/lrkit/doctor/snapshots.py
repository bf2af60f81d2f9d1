r"""Which snapshots the guard keeps and which one it restores (pure core, no framework).

**Health of a snapshot, measured after it.** A snapshot taken before step :math:`L` holds a state
whose quality only the *following* losses show. The guard records, for every snapshot, the first
:data:`VERIFY` log-losses :math:`y_L, y_{L+1}, \dots` observed from it (and whether a non-finite
one came first), and, at the time it was taken, the best level reached so far :math:`b_L` (the
lowest running level) and the per-step noise :math:`\sigma_L` of the
log-loss (a MAD of its first differences). The level is a running median of ``LEVEL`` = 20
log-losses (of at least 5). The snapshot is **verified healthy** when its first loss was finite and

.. math::

    \operatorname{median}(y_L, \dots, y_{L+v-1}) \le b_L + \log(1 + \tau)
        + 3 \cdot 1.25\,\sigma_L \sqrt{1/v + 1/20}

(:math:`v` the number of losses seen, :math:`\tau` = ``tolerance``, default 0.25), the right-hand
margin capped at :math:`\log 1.5` (a loss 50% above the best level is never healthy, however noisy
the run was when the snapshot was taken: a network killed by a 30x LR is chaotic first, then flat):
the state it holds trained at the level the run had reached, within noise. A run that has begun to drift up
fails the test however "healthy" the doctor still said it was, and a state from before an LR was
raised passes it however early the doctor dates the onset.

**Rollback target.** The newest verified-healthy snapshot (:func:`choose_target`). Only the
losses before the doctor's onset estimate count in the verification (the problem's own losses
say nothing about the state before it), but always at least the snapshot's first loss, which is
the loss of that very state: so an onset dated too early (the doctor dated a 6x LR rise 130-180
steps before it happened) cannot send a run back past good states -- each snapshot is then
judged by its own first loss -- and a state taken while the loss was already drifting up fails
the level test however "healthy" the doctor still said it was (with the margin capped at
:math:`\log 1.5`, also a state a 30x LR degraded to 1.4x the best level while the loss was too
noisy for the noise allowance to exclude it: under the autopilot such a state, whose Adam moments
no longer let it learn, was restored and the run ended at 25x the clean run's loss). If no snapshot qualifies, the
oldest one kept (normally the initial state) is used and flagged.

**Reach with a fixed number of copies** (:func:`thin_index`). ``keep`` rolling snapshots (plus
the initial state and the best one) are thinned towards geometrically spaced ages: with a run of
:math:`T` steps so far, snapshot period :math:`K` and :math:`k` = ``keep``, the target ages are

.. math::

    a_0 = 1, \qquad a_j = K \left(T / K\right)^{(j-1)/(k-1)}, \quad j = 1, \dots, k-1

(the newest, one a period before it -- the newest is often the one a problem invalidates --
then geometric), and when one snapshot too many exists, the one whose removal brings the ages closest to the
targets (least squares in log-age) goes. A few recent snapshots and a few old ones then cover the
whole run for the memory of a ring of ``keep``.

Example:
    >>> labels = []
    >>> for step in range(10, 1001, 10):   # a snapshot every 10 steps; 4 kept beside the initial one
    ...     labels.append(step)
    ...     if len(labels) > 4:
    ...         _ = labels.pop(thin_index(labels, now=step + 1, every=10, origin=0))
    >>> labels                             # ages 1, 11, 61, 211 (and the initial state, 1001)
    [790, 940, 990, 1000]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["SnapshotRecord", "HealthTracker", "thin_index", "choose_target", "best_snapshot", "VERIFY", "SHORT"]

VERIFY = 10  # losses observed after a snapshot that verify it
SHORT = 5  # fewest losses for a level
LEVEL = 20  # running median length of the level
_MAD_TO_SD = 1.4826
_MEDIAN_EFF = 1.2533  # sd of a median / sd of a mean, for normal noise
#: however noisy the run, a state whose loss sits 50% above the best level is not healthy: a
#: network killed by a too-high LR is noisy first (a large noise margin) and flat after.
_MAX_MARGIN = math.log(1.5)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class HealthTracker:
    """The guard's own record of the loss: recent log-losses, the best level and the noise.

    Example:
        >>> h = HealthTracker()
        >>> for t in range(30):
        ...     h.add(math.exp(-t / 10))
        >>> round(h.best, 2), h.sigma < 1e-9   # the level: a median of the last 20 (t = 10..29)
        (-1.95, True)
    """

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.recent: list[float] = []
        self.best = math.inf
        #: the run's starting log-level: the median of its first :data:`SHORT` finite log-losses
        #: (``nan`` until then); kept when a state is loaded (it is the run's, not the state's)
        self.start = math.nan
        self._first: list[float] = []

    def add(self, loss: float) -> None:
        """One training loss (non-finite losses are not part of the level)."""
        if not math.isfinite(loss):
            return
        y = math.log(max(loss, 1e-300))
        self.recent = (self.recent + [y])[-self.size:]
        if math.isnan(self.start):
            self._first.append(y)
            if len(self._first) >= SHORT:
                self.start, self._first = _median(self._first), []
        if len(self.recent) >= SHORT:
            self.best = min(self.best, self.level)

    @property
    def level(self) -> float:
        """The running level: the median of the last ``LEVEL`` log-losses (``nan`` before any)."""
        return _median(self.recent[-LEVEL:])

    @property
    def sigma(self) -> float:
        """Per-step noise sd of the log-loss (MAD of first differences / sqrt 2); 0 before 4 losses."""
        y = self.recent
        if len(y) < 4:
            return 0.0
        d = [b - a for a, b in zip(y[:-1], y[1:])]
        m = _median(d)
        return _MAD_TO_SD * _median([abs(x - m) for x in d]) / math.sqrt(2.0)

    def state(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "best": None if math.isinf(self.best) else self.best,
                "start": None if math.isnan(self.start) else self.start}

    def load(self, s: dict[str, Any]) -> None:
        self.recent = [float(v) for v in s["recent"]]
        self.best = math.inf if s["best"] is None else float(s["best"])
        if s.get("start") is not None and math.isnan(self.start):  # a resumed run learns its start back
            self.start = float(s["start"])


@dataclass
class SnapshotRecord:
    """What the guard knows about one snapshot (the state itself lives in a store).

    Attributes:
        label: the guard step this state precedes.
        doctor: the doctor's ``state_dict()`` when it was taken.
        multiplier: the LR multiplier in force then.
        best: :math:`b_L`, the best log-level before it (``inf``: none yet).
        sigma: :math:`\\sigma_L`, the per-step log-loss noise then.
        health: the guard's :class:`HealthTracker` state then.
        post: the first :data:`VERIFY` finite log-losses observed from this state.
        post_bad: the first loss from this state was non-finite.
        pre, pre_steps: for a snapshot taken before a sudden LR raise, the (up to :data:`VERIFY`)
            log-losses of the healthy steps that led to it and their steps: every loss from the
            state on is trained at the raised LR, so these speak for it too (see :meth:`healthy`).
        val: the first validation loss observed within :data:`VERIFY` steps of it, if any.
        restores: how many times it has been restored.
        lr: the LR the run was training at when it was taken, if known.
        trained: the steps of training the state holds (its label less the steps earlier
            rollbacks undid; ``None``: the label, as in records saved before it was kept).
        handle: the store's key for the state.
        nbytes: the stored size (disk), for the manifest.
    """

    label: int
    doctor: dict[str, Any]
    multiplier: float
    best: float = math.inf
    sigma: float = 0.0
    health: dict[str, Any] = field(default_factory=dict)
    post: list[float] = field(default_factory=list)
    post_steps: list[int] = field(default_factory=list)
    post_bad: bool = False
    pre: list[float] = field(default_factory=list)
    pre_steps: list[int] = field(default_factory=list)
    val: float | None = None
    restores: int = 0
    handle: Any = None
    nbytes: int = 0
    closed: bool = False  # no more losses are attributed to it (restored, or a NaN came)
    lr: float | None = None  # the LR the run was at when it was taken (None: not known)
    trained: int | None = None  # steps of training in the state (None: its label)

    @property
    def trained_steps(self) -> int:
        """The steps of training the state holds (the label when that was not recorded)."""
        return self.label if self.trained is None else self.trained

    def record(self, step: int, loss: float, val_loss: float | None = None) -> None:
        """Attribute the loss of ``step`` (and its validation loss) to this snapshot's verification."""
        if self.closed or step < self.label or self.post_bad or len(self.post) >= VERIFY:
            if val_loss is not None and self.val is None and self.label <= step < self.label + VERIFY and not self.closed:
                self.val = float(val_loss) if math.isfinite(val_loss) else None
            return
        if not math.isfinite(loss):
            # the state itself gave a non-finite loss: bad; a later one ends its verification (the
            # state had finite losses, the NaN came from later updates or data)
            if self.post:
                self.closed = True
            else:
                self.post_bad = True
            return
        self.post.append(math.log(max(loss, 1e-300)))
        self.post_steps.append(int(step))
        if val_loss is not None and self.val is None and math.isfinite(val_loss):
            self.val = float(val_loss)

    @property
    def level(self) -> float:
        """Median log-loss after it (``nan`` before any)."""
        return _median(self.post)

    def healthy(self, tolerance: float, until: int | None = None,
                reference: tuple[float, float] | None = None) -> bool | None:
        """``True`` verified healthy, ``False`` not, ``None`` no loss seen from it yet.

        ``until``: judge only the losses of steps before it (the onset of a problem), but always
        the first one (the state's own loss); with ``pre`` losses (a snapshot before a raise), those
        of steps before ``until`` join them, so that one noisy first loss does not decide alone.
        ``reference``: ``(best log-level, per-step noise)`` to judge against where stricter than
        the snapshot's own (see :func:`choose_target`).
        """
        if self.post_bad:
            return False
        post = self.post
        if until is not None:
            post = [y for k, y in zip(self.post_steps, self.post) if k < until] or post[:1]
            post = [y for k, y in zip(self.pre_steps, self.pre) if k < until] + post
        if not post:
            return None
        best, sigma = self.best, self.sigma
        if reference is not None:
            best, sigma = min(best, reference[0]), min(sigma, reference[1])
        if math.isinf(best):
            return True
        # 3 sd of the difference of two medians (of the post losses, and of LEVEL losses)
        margin = math.log1p(tolerance) + 3.0 * _MEDIAN_EFF * sigma * math.sqrt(1.0 / len(post) + 1.0 / LEVEL)
        return _median(post) <= best + min(margin, _MAX_MARGIN)

    def cut(self, until: int) -> None:
        """Keep only the verification losses of steps before ``until`` (at least the first one) and
        stop recording: what is judged from now on is what was seen before the problem."""
        keep = max(1, sum(1 for k in self.post_steps if k < until))
        self.post, self.post_steps = self.post[:keep], self.post_steps[:keep]
        self.closed = True

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "doctor": self.doctor, "multiplier": self.multiplier,
            "best": None if math.isinf(self.best) else self.best, "sigma": self.sigma, "health": self.health,
            "post": list(self.post), "post_steps": list(self.post_steps), "post_bad": self.post_bad,
            "pre": list(self.pre), "pre_steps": list(self.pre_steps), "val": self.val, "restores": self.restores,
            "handle": self.handle if isinstance(self.handle, (str, int)) else None, "nbytes": self.nbytes,
            "lr": self.lr, "trained": self.trained,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SnapshotRecord":
        return cls(
            label=int(d["label"]), doctor=d["doctor"], multiplier=float(d["multiplier"]),
            best=math.inf if d["best"] is None else float(d["best"]), sigma=float(d["sigma"]),
            health=d["health"], post=[float(v) for v in d["post"]],
            post_steps=[int(v) for v in d.get("post_steps", [])], post_bad=bool(d["post_bad"]),
            pre=[float(v) for v in d.get("pre", [])], pre_steps=[int(v) for v in d.get("pre_steps", [])],
            val=d["val"], restores=int(d["restores"]), handle=d["handle"], nbytes=int(d.get("nbytes", 0)),
            lr=None if d.get("lr") is None else float(d["lr"]),
            trained=None if d.get("trained") is None else int(d["trained"]),
        )


def thin_index(labels: Sequence[int], *, now: int, every: int, origin: int | None) -> int:
    """Index of the rolling snapshot to drop (see the module docstring); never the newest.

    ``labels``: the rolling snapshots' steps, oldest first (one more than are kept). ``origin``:
    the step of the initial snapshot kept beside them (``None`` without one: then the oldest
    rolling snapshot itself should reach back to the start).
    """
    n = len(labels)
    keep = n - 1
    span = max(now - (origin if origin is not None else labels[0]), every)
    denom = keep - 1 if origin is not None else max(keep - 2, 1)
    # ages, newest first: the newest just taken, the next one period before it, then geometric
    targets = [1.0] + [every * (span / every) ** (j / denom) for j in range(keep - 1)]
    best_i, best_cost = 0, math.inf
    for i in range(n - 1):
        ages = sorted(max(now - lab, 1) for j, lab in enumerate(labels) if j != i)
        cost = sum((math.log(a) - math.log(t)) ** 2 for a, t in zip(ages, targets))
        if cost < best_cost:
            best_i, best_cost = i, cost
    return best_i


def choose_target(pool: Sequence[SnapshotRecord], tolerance: float, onset: int | None = None,
                  reference: tuple[float, float] | None = None,
                  lr_ceiling: float | None = None) -> tuple[SnapshotRecord, bool]:
    """The newest verified-healthy snapshot of ``pool`` (oldest first), and ``True``; else the
    oldest snapshot and ``False``. Losses from ``onset`` on (the problem) do not count against a
    snapshot, except its first one. A snapshot taken after the onset has nothing but that first
    loss to speak for it: with ``reference`` (the doctor's best log-level and the per-step noise
    when it was reached) it is judged against that best with that noise where they are stricter
    than its own -- the noise of a run going wrong is part of what went wrong, not a licence for
    the states it passed through. With ``lr_ceiling`` (an LR known to be too high for the run),
    snapshots taken while the LR was above it are passed over when any other is left: a state
    trained at an LR known not to train (and an optimizer state shaped by it: Adam's second
    moments stay inflated for about a thousand steps) is no state to go back to."""
    if lr_ceiling is not None:
        pool = [r for r in pool if r.lr is None or r.lr <= lr_ceiling] or list(pool)
    for rec in reversed(pool):
        late = onset is not None and rec.label > onset
        if rec.healthy(tolerance, until=onset, reference=reference if late else None):
            return rec, True
    return pool[0], False


def best_snapshot(pool: Sequence[SnapshotRecord], tolerance: float) -> tuple[SnapshotRecord | None, str, float]:
    """The best verified-healthy snapshot: lowest validation loss if any snapshot has one, else
    lowest median training loss after it. Returns ``(record, "val_loss" | "train_loss", value)``;
    ``(None, "", nan)`` if none is verified."""
    good = [r for r in pool if r.healthy(tolerance)]
    with_val = [r for r in good if r.val is not None]
    if with_val:
        r = min(with_val, key=lambda r: (r.val, -r.label))
        return r, "val_loss", float(r.val)
    if good:
        r = min(good, key=lambda r: (r.level, -r.label))
        return r, "train_loss", math.exp(r.level)
    return None, "", math.nan
