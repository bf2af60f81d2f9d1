"""Which frozen parts of a model a guard's snapshots may keep as fingerprints instead of copies.

The framework adapters (:mod:`lrkit.integrations.torch.frozen`, :mod:`lrkit.integrations.keras._state`)
leave out of a snapshot the parts no training step should change -- a LoRA fine-tune's base model,
a frozen backbone -- and keep a fingerprint of each: a few evenly spaced values. A part whose
fingerprint changed between two snapshots is changed by something after all (an EMA "teacher"
updated in place): from then on it is copied in full. This module keeps that record, the same for
every framework; the adapters take the fingerprints.

Example:
    >>> import numpy as np
    >>> parts = StillParts()
    >>> sorted(parts.still({"base": np.ones(3), "teacher": np.zeros(3)}))
    ['base', 'teacher']
    >>> sorted(parts.still({"base": np.ones(3), "teacher": np.full(3, 0.5)})), sorted(parts.moving)
    (['base'], ['teacher'])
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["StillParts", "same_fingerprint"]


def same_fingerprint(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two fingerprints are the same values (a NaN is never the same: a part that holds one
    is copied)."""
    return a.shape == b.shape and bool(np.array_equal(a, b))


class StillParts:
    """The record of which parts have stayed still between a run's snapshots."""

    def __init__(self) -> None:
        self._marks: dict[str, np.ndarray] = {}
        self.moving: set[str] = set()  # seen changing: copied in full from then on

    def still(self, now: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Of the fingerprints taken for a snapshot now (of parts not :attr:`moving`), those that
        may stand for their parts: every one unchanged since the last snapshot or new; a changed
        one moves its part to :attr:`moving`."""
        out: dict[str, np.ndarray] = {}
        for name, sample in now.items():
            before = self._marks.get(name)
            if before is not None and not same_fingerprint(before, sample):
                self.moving.add(name)
                continue
            out[name] = sample
        self._marks = out
        return out
