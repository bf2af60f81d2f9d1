"""The LR range test and its suggestion, on the framework-free :class:`Trainer` protocol.

``run_range_test`` ramps the LR and records the loss; ``find`` adds the suggestion and returns a
:class:`FinderResult`. Framework adapters (``lrkit.integrations.torch.trainer.find_lr``) build a
Trainer and call ``find``. NumPy only.
"""
from __future__ import annotations

from lrkit.finder.range_test import RangeTestRecord, find, lr_ramp, run_range_test
from lrkit.finder.result import FinderResult
from lrkit.finder.suggest import Suggestion, classic_suggestions
from lrkit.finder.trainer import Trainer

# `suggest` (the function) stays in `lrkit.finder.suggest`: re-exporting it here would shadow
# the submodule of the same name. `lrkit.suggest` is the function.
__all__ = [
    "FinderResult",
    "RangeTestRecord",
    "Suggestion",
    "Trainer",
    "classic_suggestions",
    "find",
    "lr_ramp",
    "run_range_test",
]
