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

import math
import time
import random
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from lrkit.tune._run import _WORKER, _open_study, _quiet_optuna, tune
from lrkit.tune._schedules import schedule_for
from lrkit.tune.prior import Prior
from lrkit.tune.pruners import DivergenceWatch
from lrkit.tune.storage import open_storage

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


def check_run(target: Any, train_steps: Any, eval_every: Any, schedule: Any) -> int:
    """The arguments every framework's convenience takes, checked before anything is built;
    returns the steps between validation reports (default a tenth of the run)."""
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
        raise ValueError(f"train_steps must be an integer >= 1 (the optimizer steps of one run), got {train_steps!r}")
    every = max(1, train_steps // 10) if eval_every is None else eval_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
    if not callable(target):
        raise ValueError(f"target must be a function returning the task dict, got {type(target).__name__}")
    schedule_for(schedule, 1.0, train_steps)  # a bad schedule fails here, before any training
    return every


def run_trial(trainer: Any, lr: float, trial: Any, *, train_steps: int, eval_every: int, schedule: Any = None) -> float:
    """One trial on any :class:`~lrkit.finder.trainer.Trainer` (``step(lr)``, ``evaluate()``): the LR
    of step ``t`` follows the schedule at peak ``lr``, every loss goes to the doctor (a diverging
    trial stops at once), the validation loss is reported every ``eval_every`` steps for the pruner
    and returned at the end."""
    sched = schedule_for(schedule, lr, train_steps)
    watch = DivergenceWatch(trial)
    value = math.nan
    for step in range(train_steps):
        lr_t = float(sched(step))
        loss = trainer.step(lr_t)
        watch.observe(step, loss, lr=lr_t)
        done = step + 1
        if done % eval_every == 0 or done == train_steps:
            value = float(trainer.evaluate())
            trial.report(value, done)
            if not math.isfinite(value):
                trial.set_user_attr("lrkit_diverged", True)
                trial.set_user_attr("lrkit_pruned_by", "doctor")
                raise optuna.TrialPruned(f"validation loss {value} at step {done}")
            if done < train_steps and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {done}")
    return value


#: seconds a worker waits after claiming the range test before it reads the claim back (a claim
#: written at the same moment by another worker lands meanwhile; the last one wins).
CLAIM_SETTLE = 1.0
#: seconds between two looks of a waiting worker for the claimant's prior.
CLAIM_POLL = 1.0
#: a claim older than this with no prior yet is taken over (its worker died mid-range test).
CLAIM_TIMEOUT = 3600.0


def shared_prior(storage: Any, study_name: str | None, direction: str, make_prior: Callable[[], Prior]) -> Prior:
    """One range test per study: the first worker on a fresh shared study runs it
    (``make_prior()``) and stores its prior with the study; the others wait for it and reuse it.

    Without storage or a study name there is nothing to share: ``make_prior()``. The claim is a
    study user attribute (``lrkit_prior_claim``: worker and time), written, then read back after
    :data:`CLAIM_SETTLE` seconds: of workers claiming at once the last write wins and only its
    worker proceeds (best effort: a worker whose write lands more than :data:`CLAIM_SETTLE` after
    another's read-back runs a second range test, and the first prior stored wins). A claim
    older than :data:`CLAIM_TIMEOUT` with no prior is taken over (its worker died).
    """
    if storage is None or study_name is None:
        return make_prior()
    with _quiet_optuna():  # a study of the other direction is refused here, before any range test
        study = _open_study(storage, study_name, direction, None, None)
    while True:
        saved = study.user_attrs.get("lrkit_prior")
        if saved:
            return Prior.from_dict(saved)
        claim = study.user_attrs.get("lrkit_prior_claim")
        now = time.time()
        if claim is None or now - float(claim.get("time", 0.0)) > CLAIM_TIMEOUT:
            mine = {"worker": _WORKER, "time": now}
            study.set_user_attr("lrkit_prior_claim", mine)
            time.sleep(CLAIM_SETTLE)
            if study.user_attrs.get("lrkit_prior_claim") == mine:
                prior = make_prior()
                if not study.user_attrs.get("lrkit_prior"):
                    study.set_user_attr("lrkit_prior", prior.to_dict())
                return Prior.from_dict(study.user_attrs["lrkit_prior"])
            continue
        time.sleep(CLAIM_POLL)


def run_finder(target: Callable[..., dict], *, train_steps: int, seed: int, **kwargs: Any) -> Any:
    """The range test on a fresh build of the target (``lrkit.torch.find_lr`` sized by ``train_steps``)."""
    from lrkit.torch import find_lr

    spec = build_target(target, seed, **kwargs)
    return find_lr(spec["model"], spec["optimizer"], spec["loss_fn"], spec["train_loader"],
                   val_loader=spec["val_loader"], step_fn=spec.get("step_fn"), batch_size=spec.get("batch_size"),
                   accumulation_steps=spec.get("accumulation_steps", 1), grad_clip_norm=spec.get("grad_clip_norm"),
                   amp=spec.get("amp", False), train_steps=train_steps, progress=False, seed=seed)


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
    every = check_run(target, train_steps, eval_every, schedule)
    from lrkit.scaling import optimizer_family

    first_kwargs = {"batch_size": batch_sizes[0]} if batch_sizes else {}
    probe = build_target(target, seed, **first_kwargs)
    family = optimizer_family(probe["optimizer"])
    del probe
    prior = tune_kwargs.pop("prior", None)
    if strategy == "lrkit" and prior is None and finder is not False:
        storage_obj = open_storage(storage, **{k: tune_kwargs[k] for k in ("heartbeat_interval", "grace_period")
                                               if k in tune_kwargs})
        storage = storage_obj if storage_obj is not None else storage

        def make_prior() -> Prior:
            result = finder if finder is not True else run_finder(target, train_steps=train_steps, seed=seed,
                                                                  **first_kwargs)
            if on_finder is not None:
                on_finder(result)
            return Prior.from_finder(result, low=low, high=high, family=family)

        prior = shared_prior(storage_obj, study_name, tune_kwargs.get("direction", "minimize"), make_prior)

    def objective(lr: float, trial: optuna.Trial) -> float:
        kwargs = {"batch_size": trial.params["batch_size"]} if "batch_size" in trial.params else {}
        spec = build_target(target, seed, **kwargs)
        return train_trial(spec, lr, trial, train_steps=train_steps, eval_every=every,
                           schedule=trial.params.get("schedule", schedule))

    return tune(objective, n_trials=n_trials, budget=budget, train_steps=train_steps, low=low, high=high,
                family=family, strategy=strategy, prior=prior, seed=seed, storage=storage, study_name=study_name,
                batch_sizes=batch_sizes, schedules=schedules, **tune_kwargs)
