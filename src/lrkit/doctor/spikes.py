r"""Skip the update of a batch whose loss is a spike far above the run's level: a bad batch, not a bad LR.

A loss that jumps to many times the run's recent level in one step, while the LR held steady, is
the batch's doing: inputs from a corrupt shard, a batch of garbage or mis-scaled data. One update
on it can wreck a healthy model; the guard then rolls back and the steps since its last snapshot
are lost, and a shard of such batches does it again and again. Not applying that update keeps the
model as it was (large-scale trainers skip such steps too). The loss of a step is known before its
update, so the caller asks first (:meth:`SpikeFilter.check`) and applies the update only when told.

With :math:`m` the median of the last :data:`LEVEL` log-losses that were trained on and
:math:`\ell_0` the median of the first :data:`FIRST` of them, a step's loss :math:`\ell_t` is a
*spike* when

.. math::

    \log \ell_t - m \ge \log(\text{factor}) \quad\text{and}\quad \ell_t > \ell_0

(by default ten times the level, and above what the model scored at the start of the run: a hard
batch of a trained model is not a spike). A spike's update is skipped when it comes out of a calm
stretch -- none of the :data:`CALM` steps before it was a spike -- or continues a run of skips:
a corrupt batch, or a shard of them. Not skipped, and left to the doctor:

* a loss that is not finite: NaN and inf are the doctor's (a NaN written into a weight makes every
  loss NaN and needs a rollback, not skips);
* spikes that keep coming back between normal losses, as in a run at far too high an LR: after
  the first, none comes out of a calm stretch;
* a spike the losses were already climbing towards (the last loss trained on is :data:`STEADY`
  times the level or more): a run diverging at a steady LR, whose every later loss would be a
  spike too;
* a spike during or right after an LR raise: an LR of this step or of the last :data:`RECENT`
  steps is 1.5x or more the median LR of the last :data:`LEVEL` steps trained (held, or a spike of
  a few steps already over): the doctor and guard must see it to undo the raise;
* anything before :data:`MIN_SEEN` losses were trained on, or since a rollback (the restored
  state's level is learnt again: :meth:`SpikeFilter.reset`);
* spikes after ``max_skips`` skips in a row: when every batch is a spike the model is broken (or
  the data is, for good), and the doctor takes over -- the guard rolls back as before.

Pure Python: the guard owns one (``Guard(skip_spikes=True)``, its default) and its adapters ask it.

Example:
    >>> f = SpikeFilter(factor=10.0, max_skips=3)
    >>> [f.check(1.0 - 0.01 * i, lr=0.1) for i in range(12)].count(True)   # a healthy run: nothing skipped
    0
    >>> f.check(500.0, lr=0.1), f.check(400.0, lr=0.1)                       # garbage batches
    (True, True)
    >>> f.check(0.85, lr=0.1), f.skipped                                     # back to normal data
    (False, 2)
    >>> f.check(500.0, lr=0.1)                                               # but spikes that come back are the doctor's
    False
    >>> g = SpikeFilter()
    >>> [g.check(1.0, lr=0.1) for _ in range(60)].count(True), g.check(500.0, lr=1.0)   # after a 10x raise: the LR's
    (0, False)
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

__all__ = ["SpikeFilter", "LEVEL", "FIRST", "MIN_SEEN", "SPIKE_FACTOR", "CALM", "RECENT", "STEADY"]

#: the run's level: the median of this many of the last log-losses trained on (and their LRs)
LEVEL = 20
#: the start's level: the median of the first this many losses trained on
FIRST = 5
#: no skip before this many losses were trained on (since the start or a rollback)
MIN_SEEN = 10
#: default spike threshold: this many times the run's level
SPIKE_FACTOR = 10.0
#: a skip starts only out of this many steps without a spike
CALM = 50
#: a skip needs the last loss trained on under this many times the level: a loss already climbing
#: towards the spike is the run diverging, not a bad batch
STEADY = 3.0
#: an LR this many times the recent median is a raise: its blow-ups are not skipped ...
RAISE = 1.5
#: ... during it and for this many steps after it
RECENT = 10


def _median(xs: Any) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class SpikeFilter:
    """Decides, before each update, whether the batch's loss is a spike to skip (see the module docstring).

    Args:
        factor: a loss this many times the run's level (and above its start's) is a spike; > 1.
        max_skips: the most updates skipped in a row; an int >= 1.
    """

    def __init__(self, factor: float = SPIKE_FACTOR, max_skips: int = 50) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor > 1):
            raise ValueError(f"spike_factor must be a finite number > 1, got {factor!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_skips must be an int >= 1, got {max_skips!r}")
        self.factor = float(factor)
        self.max_skips = max_skips
        self._first: list[float] = []  # the first FIRST losses trained on (the run's start: kept by reset)
        #: updates skipped in all
        self.skipped = 0
        self.reset()

    def reset(self) -> None:
        """Forget the level (a rollback restored an earlier state: its level is learnt again)."""
        self._recent: deque[float] = deque(maxlen=LEVEL)  # log-losses trained on
        self._lrs: deque[float] = deque(maxlen=LEVEL)  # their LRs (when given)
        self._seen_lrs: deque[float] = deque(maxlen=RECENT + 1)  # the LRs of the last steps checked
        self._spiked: deque[bool] = deque(maxlen=CALM)  # whether each of the last steps checked was a spike
        #: updates skipped in a row now
        self.in_a_row = 0
        #: the last skip's loss over the run's level (for the message)
        self.last_ratio = math.nan

    def level(self) -> float:
        """The run's level: the median of the last :data:`LEVEL` losses trained on (``nan`` before any)."""
        return math.exp(_median(self._recent)) if self._recent else math.nan

    def check(self, loss: float, *, lr: float | None = None) -> bool:
        """``True``: skip this step's update (it is counted); ``False``: train on it (its loss
        joins the level)."""
        loss = float(loss)
        if lr is not None and math.isfinite(lr) and lr > 0:
            self._seen_lrs.append(float(lr))
        if not math.isfinite(loss):
            self.in_a_row = 0
            return False  # the doctor's: NaN/inf
        spike = self._is_spike(loss)
        streak = self.in_a_row > 0
        skip = spike and self._steady() and (self.in_a_row < self.max_skips if streak else not any(self._spiked))
        self._spiked.append(spike)
        if skip:
            self.skipped += 1
            self.in_a_row += 1
            return True
        self.in_a_row = 0
        if loss > 0:
            self._recent.append(math.log(loss))
            if len(self._first) < FIRST:
                self._first.append(loss)
        if lr is not None and math.isfinite(lr) and lr > 0:
            self._lrs.append(float(lr))
        return False

    def _steady(self) -> bool:
        """The last loss trained on was at the run's level (under :data:`STEADY` times it): the
        spike came out of nowhere. Unchanged through a run of skips (nothing is trained)."""
        return self._recent[-1] < _median(self._recent) + math.log(STEADY)

    def _is_spike(self, loss: float) -> bool:
        if len(self._recent) < MIN_SEEN or loss <= 0:  # no level yet (LEVEL >= MIN_SEEN)
            return False
        if self._lrs and self._seen_lrs and max(self._seen_lrs) >= RAISE * _median(self._lrs):
            return False  # during or right after a raise: the LR's doing
        ratio = loss / self.level()
        if ratio < self.factor or loss <= _median(self._first):
            return False
        self.last_ratio = ratio
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON types, for a guard's checkpoint."""
        return {"recent": list(self._recent), "lrs": list(self._lrs), "first": list(self._first),
                "skipped": self.skipped, "spiked": list(self._spiked)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        self.reset()
        self._recent.extend(float(v) for v in state.get("recent", ()))
        self._lrs.extend(float(v) for v in state.get("lrs", ()))
        self._spiked.extend(bool(v) for v in state.get("spiked", ()))
        self._first = [float(v) for v in state.get("first", ())][:FIRST]
        self.skipped = int(state.get("skipped", 0))
