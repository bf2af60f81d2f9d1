"""``tune_keras``: search the LR of a Keras 3 ``model.fit``-style run with no objective to write.

``target`` is called with no arguments and returns a dict with a freshly built and compiled
``model`` (any optimizer; its LR is what is searched) and its data as
:func:`lrkit.keras.find_lr_keras` takes it: ``x``, ``y`` (or ``dataset``), ``batch_size`` and
``val_data`` (``(x_val, y_val)``; required: every trial is scored by the validation loss). Every
trial seeds Keras (``keras.utils.set_random_seed(seed)``) and calls ``target()`` again -- a fresh
model and optimizer with the same initial weights for every LR -- and trains ``train_steps``
steps with :class:`lrkit.keras.KerasTrainer`, the LR following the schedule family at peak
:math:`\\eta`, exactly as :func:`lrkit.tune.tune_torch` does for PyTorch (the doctor stops a
diverging trial at once; the validation loss is reported every ``eval_every`` steps for the
pruner and is the trial's value).

With the ``lrkit`` strategy the range test runs first (``find_lr_keras(...,
train_steps=train_steps)``, at most 30% of a run, counted in the budget), once per shared study.

Example::

    def target():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
        model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
        return {"model": model, "x": x, "y": y, "batch_size": 32, "val_data": (x_val, y_val)}

    result = lrkit.tune.tune_keras(target, train_steps=300, budget=4)
    result.best_lr
"""
from __future__ import annotations

from typing import Any, Callable

import optuna

from lrkit.tune._run import tune
from lrkit.tune._torch import check_run, run_trial, shared_prior
from lrkit.tune.prior import Prior
from lrkit.tune.storage import open_storage

__all__ = ["tune_keras"]

_KEYS = ("x", "y", "dataset", "batch_size", "val_data")


def _build(target: Callable[[], dict], seed: int) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(seed)
    spec = target()
    if not isinstance(spec, dict) or "model" not in spec:
        raise ValueError("target() must return a dict with 'model' (compiled) and its data "
                         f"({', '.join(_KEYS)}); got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"model", *_KEYS})
    if unknown:
        raise ValueError(f"target() returned unknown keys {unknown}; allowed: model, {', '.join(_KEYS)}")
    if spec.get("val_data") is None:
        raise ValueError("target() must give val_data=(x_val, y_val): every trial is scored by its validation loss")
    return spec


def _trainer(spec: dict[str, Any]) -> Any:
    from lrkit.keras import KerasTrainer

    return KerasTrainer(spec["model"], spec.get("x"), spec.get("y"), dataset=spec.get("dataset"),
                        batch_size=spec.get("batch_size"), val_data=spec["val_data"])


def tune_keras(
    target: Callable[[], dict],
    *,
    train_steps: int,
    n_trials: int | None = None,
    budget: float | None = None,
    schedule: Any = None,
    eval_every: int | None = None,
    strategy: str = "lrkit",
    finder: Any = True,
    low: float | None = None,
    high: float | None = None,
    seed: int = 0,
    storage: Any = None,
    study_name: str | None = None,
    **tune_kwargs: Any,
):
    """:func:`lrkit.tune` for a Keras 3 target (see the module docstring).

    Args:
        target: ``target() -> dict`` with ``model`` (compiled) and ``x``/``y`` or ``dataset``,
            ``batch_size``, ``val_data``.
        train_steps: training steps of one run (>= 1).
        n_trials, budget, schedule, eval_every, strategy, low, high, seed, storage, study_name,
            **tune_kwargs: as for :func:`lrkit.tune.tune_torch`.
        finder: ``True`` runs the range test first for the ``lrkit`` strategy; a
            ``FinderResult`` is used as is; ``False`` starts from the optimizer family's rule of thumb.
    """
    every = check_run(target, train_steps, eval_every, schedule)
    from lrkit import scaling
    from lrkit.integrations.keras.trainer import _unwrap

    probe = _build(target, seed)
    family = scaling.optimizer_family(_unwrap(probe["model"].optimizer))
    del probe
    prior = tune_kwargs.pop("prior", None)
    if strategy == "lrkit" and prior is None and finder is not False:
        storage_obj = open_storage(storage, **{k: tune_kwargs[k] for k in ("heartbeat_interval", "grace_period")
                                               if k in tune_kwargs})
        storage = storage_obj if storage_obj is not None else storage

        def make_prior() -> Prior:
            from lrkit.keras import find_lr_keras

            if finder is not True:
                return Prior.from_finder(finder, low=low, high=high, family=family)
            spec = _build(target, seed)
            result = find_lr_keras(spec["model"], spec.get("x"), spec.get("y"), dataset=spec.get("dataset"),
                                   batch_size=spec.get("batch_size"), val_data=spec["val_data"],
                                   train_steps=train_steps, progress=False, seed=seed)
            return Prior.from_finder(result, low=low, high=high, family=family)

        prior = shared_prior(storage_obj, study_name, tune_kwargs.get("direction", "minimize"), make_prior)

    def objective(lr: float, trial: optuna.Trial) -> float:
        spec = _build(target, seed)
        return run_trial(_trainer(spec), lr, trial, train_steps=train_steps, eval_every=every,
                         schedule=trial.params.get("schedule", schedule))

    return tune(objective, n_trials=n_trials, budget=budget, train_steps=train_steps, low=low, high=high,
                family=family, strategy=strategy, prior=prior, seed=seed, storage=storage, study_name=study_name,
                **tune_kwargs)
