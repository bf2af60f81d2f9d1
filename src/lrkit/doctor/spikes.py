r"""Skip the update of a batch whose loss is a spike far above the run's level: a bad batch, not a bad LR.

A loss that jumps to many times the run's recent level in one step, while the LR held steady, is
the batch's doing: inputs from a corrupt shard, a batch of garbage or mis-scaled data. One update
on it can wreck a healthy model; the guard then rolls back and the steps since its last snapshot
are lost, and a shard of such batches does it again and again. Not applying that update keeps the
model as it was (large-scale trainers skip such steps too). The loss of a step is known before its
update, so the caller asks first (:meth:`SpikeFilter.check`) and applies the update only when told.

With :math:`m` the median of the last :data:`LEVEL` log-losses that were trained on,
:math:`\sigma = 1.4826\,\mathrm{MAD}` their spread and :math:`\ell_0` the median of the first
:data:`FIRST` of them, the update of a step with loss :math:`\ell_t` is skipped when

.. math::

    \log \ell_t - m \ge \max(\log(\text{factor}),\ 6\sigma) \quad\text{and}\quad \ell_t > \ell_0

(by default ten times the level and six noise widths above it -- a run whose losses already swing
by decades, as one at far too high an LR does, has no spikes to skip: the doctor must see it --
and above what the model scored at the start of the run: a hard batch of a trained model is not
a spike), unless

* the loss is not finite: NaN and inf go to the doctor (a NaN written into a weight makes every
  loss NaN and needs a rollback, not skips);
* fewer than :data:`MIN_SEEN` losses have been trained on (there is no level yet);
* an LR of this step or of the last :data:`RECENT` steps is 1.5x or more the median LR of the
  last :data:`LEVEL` steps trained: a blow-up during or right after a raise (held, or a spike of a
  few steps already over) is the LR's doing, and the doctor and guard must see it to undo it;
* ``max_skips`` updates in a row were skipped already: when every batch is a spike the model is
  broken (or the data is, for good), and the doctor takes over -- the guard rolls back as before.
  Skipping resumes only after a loss that is no spike (or a rollback).

Pure Python: the guard owns one (``Guard(skip_spikes=True)``) and its adapters ask it.

Example:
    >>> f = SpikeFilter(factor=10.0, max_skips=3)
    >>> [f.check(1.0 - 0.01 * i, lr=0.1) for i in range(12)].count(True)   # a healthy run: nothing skipped
    0
    >>> f.check(500.0, lr=0.1), f.check(400.0, lr=0.1)                       # garbage batches
    (True, True)
    >>> f.check(0.85, lr=0.1), f.skipped                                     # back to normal data
    (False, 2)
    >>> f.check(500.0, lr=1.0)                                               # after a 10x raise: the LR's doing
    False
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

__all__ = ["SpikeFilter", "LEVEL", "FIRST", "MIN_SEEN", "SPIKE_FACTOR"]

#: the run's level: the median of this many of the last log-losses trained on (and their LRs)
LEVEL = 20
#: the start's level: the median of the first this many losses trained on
FIRST = 5
#: no skip before this many losses were trained on
MIN_SEEN = 10
#: default spike threshold: this many times the run's level
SPIKE_FACTOR = 10.0
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
        self._recent: deque[float] = deque(maxlen=LEVEL)  # log-losses trained on
        self._lrs: deque[float] = deque(maxlen=LEVEL)  # their LRs (when given)
        self._seen_lrs: deque[float] = deque(maxlen=RECENT + 1)  # the LRs of the last steps checked, skipped or not
        self._first: list[float] = []  # the first FIRST losses trained on
        self._seen = 0
        #: updates skipped in all / in a row now
        self.skipped = 0
        self.in_a_row = 0
        self._capped = False  # max_skips reached: every loss goes to the doctor until one is no spike
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
            return False  # the doctor's: NaN/inf
        spike = self._is_spike(loss, lr)
        if spike and not self._capped:
            if self.in_a_row < self.max_skips:
                self.skipped += 1
                self.in_a_row += 1
                return True
            self._capped = True  # a run of spikes this long: the doctor's
        self._capped = self._capped and spike
        self.in_a_row = 0
        if loss > 0:
            self._recent.append(math.log(loss))
            if len(self._first) < FIRST:
                self._first.append(loss)
        if lr is not None and math.isfinite(lr) and lr > 0:
            self._lrs.append(float(lr))
        self._seen += 1
        return False

    def _is_spike(self, loss: float, lr: float | None) -> bool:
        if self._seen < MIN_SEEN or len(self._recent) < MIN_SEEN or loss <= 0:
            return False
        if self._lrs and self._seen_lrs and max(self._seen_lrs) >= RAISE * _median(self._lrs):
            return False  # during or right after a raise: the LR's doing
        m = _median(self._recent)
        sigma = 1.4826 * _median([abs(y - m) for y in self._recent])
        ratio = loss / math.exp(m)
        if math.log(ratio) < max(math.log(self.factor), 6.0 * sigma) or loss <= _median(self._first):
            return False
        self.last_ratio = ratio
        return True

    def reset_streak(self) -> None:
        """A rollback restored an earlier state: the next spikes start a new streak."""
        self.in_a_row = 0
        self._capped = False

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON types, for a guard's checkpoint."""
        return {"recent": list(self._recent), "lrs": list(self._lrs), "first": list(self._first),
                "seen": self._seen, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        self._recent = deque((float(v) for v in state.get("recent", ())), maxlen=LEVEL)
        self._lrs = deque((float(v) for v in state.get("lrs", ())), maxlen=LEVEL)
        self._first = [float(v) for v in state.get("first", ())][:FIRST]
        self._seen = int(state.get("seen", len(self._recent)))
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = 0
        self._capped = False
