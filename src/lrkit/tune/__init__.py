"""Learning-rate search on Optuna: ``lrkit.tune(objective, ...)`` and framework conveniences.

An integration-level package (it imports Optuna); the rest of lrkit does not import it. The
package itself is callable: ``lrkit.tune(objective, ...)`` runs :func:`lrkit.tune._run.tune`, and
``lrkit.tune.tune_torch``, ``lrkit.tune.Prior``, ... are its neighbours.

Example:
    >>> import math, lrkit
    >>> r = lrkit.tune(lambda lr, trial: (math.log10(lr) + 3) ** 2, n_trials=5, low=1e-6, high=1.0)
    >>> round(math.log10(r.best_lr))
    -3
"""
import sys
import types

from lrkit.tune._run import load_result
from lrkit.tune._run import tune as _tune
from lrkit.tune.prior import Prior
from lrkit.tune.pruners import PRUNERS, BehindBestPruner, DivergenceWatch, DoctorPruner
from lrkit.tune.result import TrialRecord, TuneResult
from lrkit.tune.strategies import STRATEGIES, LrkitSampler

__all__ = ["tune", "load_result", "TuneResult", "TrialRecord", "Prior", "STRATEGIES", "PRUNERS",
           "LrkitSampler", "DoctorPruner", "DivergenceWatch", "BehindBestPruner", "tune_torch", "tune_keras", "tune_optax", "tune_ray"]


def __getattr__(name: str):
    if name == "tune_torch":
        from lrkit.tune._torch import tune_torch

        return tune_torch
    if name == "tune_keras":
        from lrkit.tune._keras import tune_keras

        return tune_keras
    if name == "tune_optax":
        from lrkit.tune._optax import tune_optax

        return tune_optax
    if name == "tune_ray":
        from lrkit.tune._ray import tune_ray

        return tune_ray
    raise AttributeError(f"module 'lrkit.tune' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``lrkit.tune`` is both this package and the function :func:`tune`."""

    def __call__(self, *args, **kwargs):
        return _tune(*args, **kwargs)

    __call__.__doc__ = _tune.__doc__


sys.modules[__name__].__class__ = _CallablePackage
# ``from lrkit.tune import tune`` and ``lrkit.tune`` are this callable package, so that
# ``lrkit.tune.tune_torch`` and friends are reachable whichever way it was imported.
tune = sys.modules[__name__]
