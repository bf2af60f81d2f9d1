"""What the framework conveniences (``tune_keras``, ``tune_optax``) share: from a ``target`` and
three small framework functions -- build a fresh task dict, make a Trainer of it, run the range
test on it -- to :func:`lrkit.tune` (no framework import here)."""
from __future__ import annotations

from typing import Any, Callable

import optuna

from lrkit.tune._run import tune
from lrkit.tune._torch import check_run, run_trial, shared_prior
from lrkit.tune.prior import Prior
from lrkit.tune.storage import open_storage

__all__ = ["tune_target"]


def tune_target(target: Callable[[], dict], *, build: Callable[[Callable[[], dict], int], dict],
                make_trainer: Callable[[dict], Any], run_finder: Callable[[dict, int, int], Any],
                family_of: Callable[[dict], str], train_steps: int, n_trials: int | None = None,
                budget: float | None = None, schedule: Any = None, eval_every: int | None = None,
                strategy: str = "lrkit", finder: Any = True, low: float | None = None, high: float | None = None,
                seed: int = 0, storage: Any = None, study_name: str | None = None, **tune_kwargs: Any):
    """``build(target, seed)`` a fresh task dict for every trial, ``make_trainer(spec)`` a
    :class:`~lrkit.finder.trainer.Trainer` of it, ``run_finder(spec, train_steps, seed)`` its
    range test (the ``lrkit`` strategy's prior, once per shared study), ``family_of(spec)`` its
    optimizer family; then :func:`lrkit.tune` over :func:`~lrkit.tune._torch.run_trial`."""
    every = check_run(target, train_steps, eval_every, schedule)
    family = family_of(build(target, seed))
    prior = tune_kwargs.pop("prior", None)
    if strategy == "lrkit" and prior is None and finder is not False:
        storage_obj = open_storage(storage, **{k: tune_kwargs[k] for k in ("heartbeat_interval", "grace_period")
                                               if k in tune_kwargs})
        storage = storage_obj if storage_obj is not None else storage

        def make_prior() -> Prior:
            result = finder if finder is not True else run_finder(build(target, seed), train_steps, seed)
            return Prior.from_finder(result, low=low, high=high, family=family)

        prior = shared_prior(storage_obj, study_name, tune_kwargs.get("direction", "minimize"), make_prior)

    def objective(lr: float, trial: optuna.Trial) -> float:
        trainer = make_trainer(build(target, seed))
        return run_trial(trainer, lr, trial, train_steps=train_steps, eval_every=every,
                         schedule=trial.params.get("schedule", schedule))

    return tune(objective, n_trials=n_trials, budget=budget, train_steps=train_steps, low=low, high=high,
                family=family, strategy=strategy, prior=prior, seed=seed, storage=storage, study_name=study_name,
                **tune_kwargs)
