"""Learning-rate search on Optuna: ``lrkit.tune(objective, ...)`` and framework conveniences.

An integration-level package (it imports Optuna); the rest of lrkit does not import it. The
package itself is callable -- ``lrkit.tune(...)`` is :func:`lrkit.tune._run.tune` whether Python
resolved ``lrkit.tune`` to the function (lazy export) or to this package (after
``import lrkit.tune``).

Example:
    >>> import math, lrkit
    >>> r = lrkit.tune(lambda lr, trial: (math.log10(lr) + 3) ** 2, n_trials=5, low=1e-6, high=1.0)
    >>> round(math.log10(r.best_lr))
    -3
"""
import sys
import types

from lrkit.tune._run import load_result, tune
from lrkit.tune.prior import Prior
from lrkit.tune.pruners import PRUNERS, BehindBestPruner, DivergenceWatch, DoctorPruner
from lrkit.tune.result import TrialRecord, TuneResult
from lrkit.tune.strategies import STRATEGIES, LrkitSampler

__all__ = ["tune", "load_result", "TuneResult", "TrialRecord", "Prior", "STRATEGIES", "PRUNERS",
           "LrkitSampler", "DoctorPruner", "DivergenceWatch", "BehindBestPruner", "tune_torch"]


def __getattr__(name: str):
    if name == "tune_torch":
        from lrkit.tune.torch import tune_torch

        return tune_torch
    raise AttributeError(f"module 'lrkit.tune' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``lrkit.tune`` is both this package and the function :func:`tune`."""

    def __call__(self, *args, **kwargs):
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
