"""``tune_torch``: search the LR of a PyTorch training run with no objective to write.

``target`` is the function ``lrkit find TARGET`` takes: called with no arguments it returns a
dict with ``model``, ``optimizer``, ``loss_fn``, ``train_loader`` and ``val_loader`` (plus the
optional ``step_fn``, ``batch_size``, ``accumulation_steps``, ``grad_clip_norm``, ``amp``). Every
trial calls it again, after seeding ``torch``, ``numpy`` and ``random`` with ``seed`` -- a fresh
model and optimizer with the same initial weights for every LR -- and trains ``train_steps``
optimizer steps with :class:`lrkit.torch.TorchTrainer`, the LR of step :math:`t` following the
schedule family at peak LR :math:`\\eta` (:func:`lrkit.tune._schedules.schedule_for`). Every
training loss goes to the doctor (:class:`~lrkit.tune.pruners.DivergenceWatch`: a diverging trial
stops at once) and the validation loss is reported ``eval_every`` steps (default a tenth of the
run) for the pruner. The value is the final validation loss.

With the ``lrkit`` strategy the range test runs first (``lrkit.torch.find_lr(...,
train_steps=train_steps)``, at most 30% of a run, counted in the budget) unless a ``finder``
result is passed or the study already holds a prior.

With ``batch_sizes`` the target is called as ``target(batch_size=b)``.

Example::

    from lrkit.examples.digits import digits_task
    result = lrkit.tune.tune_torch(lambda: digits_task().as_target(), train_steps=300, budget=4)
    result.best_lr
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np

from lrkit.tune._convenience import run_trial, shared_prior, tune_target  # noqa: F401 - run_trial, shared_prior re-exported

__all__ = ["tune_torch", "build_target", "train_trial", "run_trial", "builtin_target", "shared_prior"]

REQUIRED = ("model", "optimizer", "loss_fn", "train_loader", "val_loader")
OPTIONAL = ("step_fn", "batch_size", "accumulation_steps", "grad_clip_norm", "amp")


def builtin_target(seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The built-in example's target dict (an MLP on scikit-learn's digits; ``kwargs`` such as
    ``batch_size`` go to :func:`lrkit.examples.digits.digits_task`). Importable by name, so that
    Ray workers can unpickle it."""
    from lrkit.examples.digits import digits_task

    return digits_task(seed=seed, **kwargs).as_target()


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_target(target: Callable[..., dict], seed: int, **kwargs: Any) -> dict[str, Any]:
    """Call ``target`` after seeding the RNGs; check the dict (``ValueError`` naming what is missing)."""
    _seed(seed)
    spec = target(**kwargs)
    if not isinstance(spec, dict):
        raise ValueError(f"the target must return a dict with the keys {', '.join(REQUIRED)}, got {type(spec).__name__}")
    missing = [k for k in REQUIRED if k not in spec or (k != "loss_fn" and spec[k] is None)]
    if missing:
        raise ValueError(f"the target's dict has no {', '.join(missing)}; tuning needs {', '.join(REQUIRED)} "
                         "(the validation loss is what the search minimises)")
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"the target's dict has unknown key(s) {', '.join(map(str, unknown))}; "
                         f"allowed: {', '.join(REQUIRED + OPTIONAL)}")
    return spec


def _trainer(spec: dict[str, Any]) -> Any:
    from lrkit.torch import TorchTrainer

    return TorchTrainer(spec["model"], spec["optimizer"], spec["loss_fn"], spec["train_loader"],
                        val_loader=spec["val_loader"], step_fn=spec.get("step_fn"),
                        accumulation_steps=spec.get("accumulation_steps", 1), amp=spec.get("amp", False),
                        grad_clip_norm=spec.get("grad_clip_norm"))


def train_trial(spec: dict[str, Any], lr: float, trial: Any, *, train_steps: int, eval_every: int,
                schedule: Any = None) -> float:
    """Train the target's model ``train_steps`` steps at peak LR ``lr``; report and return val loss."""
    return run_trial(_trainer(spec), lr, trial, train_steps=train_steps, eval_every=eval_every, schedule=schedule)


def finder_on(spec: dict[str, Any], train_steps: int, seed: int) -> Any:
    """The range test on a built target (``lrkit.torch.find_lr`` sized by ``train_steps``)."""
    from lrkit.torch import find_lr

    return find_lr(spec["model"], spec["optimizer"], spec["loss_fn"], spec["train_loader"],
                   val_loader=spec["val_loader"], step_fn=spec.get("step_fn"), batch_size=spec.get("batch_size"),
                   accumulation_steps=spec.get("accumulation_steps", 1), grad_clip_norm=spec.get("grad_clip_norm"),
                   amp=spec.get("amp", False), train_steps=train_steps, progress=False, seed=seed,
                   many_epochs=False)  # the prior only places full-run trials, which see any overfitting


def run_finder(target: Callable[..., dict], *, train_steps: int, seed: int, **kwargs: Any) -> Any:
    """The range test on a fresh build of the target."""
    return finder_on(build_target(target, seed, **kwargs), train_steps, seed)


def tune_torch(
    target: Callable[..., dict],
    *,
    train_steps: int,
    n_trials: int | None = None,
    budget: float | None = None,
    schedule: Any = None,
    schedules: Sequence[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    eval_every: int | None = None,
    strategy: str = "lrkit",
    finder: Any = True,
    low: float | None = None,
    high: float | None = None,
    seed: int = 0,
    storage: Any = None,
    study_name: str | None = None,
    on_finder: Callable[[Any], None] | None = None,
    **tune_kwargs: Any,
):
    """:func:`lrkit.tune` for a PyTorch target (see the module docstring).

    Args:
        target: ``target() -> dict`` (``target(batch_size=b)`` with ``batch_sizes``).
        train_steps: optimizer steps of one run (>= 1).
        n_trials, budget: how long to search (as for :func:`lrkit.tune`).
        schedule: the schedule family of every run (``"constant"``, ``"warmup_cosine"``, ...).
        schedules: search the schedule family too, among these.
        batch_sizes: search the batch size too, among these.
        eval_every: steps between validation reports (default ``max(1, train_steps // 10)``).
        strategy, low, high, storage, study_name, seed, **tune_kwargs: as for :func:`lrkit.tune`.
        finder: ``True`` runs the range test first for the ``lrkit`` strategy; a
            ``FinderResult`` is used as is; ``False`` starts from the optimizer family's rule of thumb.
        on_finder: called with the ``FinderResult`` after the range test (progress display).
    """
    from lrkit.scaling import optimizer_family

    return tune_target(target, build=build_target, make_trainer=_trainer, run_finder=finder_on,
                       family_of=lambda spec: optimizer_family(spec["optimizer"]), train_steps=train_steps,
                       n_trials=n_trials, budget=budget, schedule=schedule, schedules=schedules,
                       batch_sizes=batch_sizes, eval_every=eval_every, strategy=strategy, finder=finder, low=low,
                       high=high, seed=seed, storage=storage, study_name=study_name, on_finder=on_finder,
                       **tune_kwargs)
