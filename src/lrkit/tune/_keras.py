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

from lrkit.tune._convenience import check_spec, tune_target

__all__ = ["tune_keras"]

_KEYS = ("x", "y", "dataset", "batch_size", "val_data")


def _build(target: Callable[[], dict], seed: int) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(seed)
    return check_spec(target(), required=("model",), optional=_KEYS, val_key="val_data",
                      shape=f"'model' (compiled) and its data ({', '.join(_KEYS)})",
                      val_hint="val_data=(x_val, y_val)")


def _trainer(spec: dict[str, Any]) -> Any:
    from lrkit.keras import KerasTrainer

    return KerasTrainer(spec["model"], spec.get("x"), spec.get("y"), dataset=spec.get("dataset"),
                        batch_size=spec.get("batch_size"), val_data=spec["val_data"])


def _finder(spec: dict[str, Any], train_steps: int, seed: int) -> Any:
    from lrkit.keras import find_lr_keras

    return find_lr_keras(spec["model"], spec.get("x"), spec.get("y"), dataset=spec.get("dataset"),
                         batch_size=spec.get("batch_size"), val_data=spec["val_data"], train_steps=train_steps,
                         progress=False, seed=seed, many_epochs=False)  # the trials see any overfitting


def _family(spec: dict[str, Any]) -> str:
    from lrkit import scaling
    from lrkit.integrations.keras.trainer import _unwrap

    return scaling.optimizer_family(_unwrap(spec["model"].optimizer))


def tune_keras(target: Callable[[], dict], *, train_steps: int, **kwargs: Any):
    """:func:`lrkit.tune` for a Keras 3 target (see the module docstring).

    Args:
        target: ``target() -> dict`` with ``model`` (compiled) and ``x``/``y`` or ``dataset``,
            ``batch_size``, ``val_data``.
        train_steps: training steps of one run (>= 1).
        **kwargs: ``n_trials``, ``budget``, ``schedule``, ``eval_every``, ``strategy``, ``finder``
            (``True``: the range test first for the ``lrkit`` strategy; a ``FinderResult``;
            ``False``), ``low``, ``high``, ``seed``, ``storage``, ``study_name`` and the rest of
            :func:`lrkit.tune`'s arguments, as for :func:`lrkit.tune.tune_torch`.
    """
    return tune_target(target, build=_build, make_trainer=_trainer, run_finder=_finder, family_of=_family,
                       train_steps=train_steps, **kwargs)
