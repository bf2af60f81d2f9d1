"""What the framework conveniences (``tune_torch``, ``tune_keras``, ``tune_optax``) share: from a
``target`` and four small framework functions -- build a fresh task dict, make a Trainer of it,
run the range test on it, name its optimizer family -- to :func:`lrkit.tune`; one trial on any
Trainer (:func:`run_trial`) and one range test per shared study (:func:`shared_prior`). No
framework import here."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import optuna

from lrkit.tune._run import _WORKER, _open_study, _quiet_optuna, tune
from lrkit.tune._schedules import schedule_for
from lrkit.tune.prior import Prior
from lrkit.tune.pruners import DivergenceWatch
from lrkit.tune.storage import open_storage

__all__ = ["tune_target", "run_trial", "check_run", "check_spec", "shared_prior"]


def check_spec(spec: Any, *, required: tuple[str, ...], optional: tuple[str, ...], val_key: str, shape: str,
               val_hint: str | None = None) -> dict[str, Any]:
    """A ``target()``'s dict checked the same way for every framework: the ``required`` keys,
    nothing but them and the ``optional`` ones, and a validation set (``val_key``) to score
    trials by. ``shape`` and ``val_hint`` word the errors."""
    if not isinstance(spec, dict) or any(k not in spec for k in required):
        raise ValueError(f"target() must return a dict with {shape}; got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"target() returned unknown keys {unknown}; allowed: {', '.join(required + optional)}")
    if spec.get(val_key) is None:
        raise ValueError(f"target() must give {val_hint or val_key}: every trial is scored by its validation loss")
    return spec


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




def tune_target(target: Callable[..., dict], *, build: Callable[..., dict], make_trainer: Callable[[dict], Any],
                run_finder: Callable[[dict, int, int], Any], family_of: Callable[[dict], str], train_steps: int,
                n_trials: int | None = None, budget: float | None = None, schedule: Any = None,
                schedules: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None,
                eval_every: int | None = None, strategy: str = "lrkit", finder: Any = True, low: float | None = None,
                high: float | None = None, seed: int = 0, storage: Any = None, study_name: str | None = None,
                on_finder: Callable[[Any], None] | None = None, **tune_kwargs: Any):
    """``build(target, seed)`` a fresh task dict for every trial (``build(target, seed,
    batch_size=b)`` with ``batch_sizes``), ``make_trainer(spec)`` a
    :class:`~lrkit.finder.trainer.Trainer` of it, ``run_finder(spec, train_steps, seed)`` its
    range test (the ``lrkit`` strategy's prior, once per shared study; ``on_finder(result)`` is
    told), ``family_of(spec)`` its optimizer family; then :func:`lrkit.tune` over
    :func:`run_trial`."""
    every = check_run(target, train_steps, eval_every, schedule)
    first = {"batch_size": batch_sizes[0]} if batch_sizes else {}
    family = family_of(build(target, seed, **first))
    prior = tune_kwargs.pop("prior", None)
    if strategy == "lrkit" and prior is None and finder is not False:
        storage_obj = open_storage(storage, **{k: tune_kwargs[k] for k in ("heartbeat_interval", "grace_period")
                                               if k in tune_kwargs})
        storage = storage_obj if storage_obj is not None else storage

        def make_prior() -> Prior:
            result = finder if finder is not True else run_finder(build(target, seed, **first), train_steps, seed)
            if on_finder is not None:
                on_finder(result)
            return Prior.from_finder(result, low=low, high=high, family=family)

        prior = shared_prior(storage_obj, study_name, tune_kwargs.get("direction", "minimize"), make_prior)

    def objective(lr: float, trial: optuna.Trial) -> float:
        kwargs = {"batch_size": trial.params["batch_size"]} if "batch_size" in trial.params else {}
        trainer = make_trainer(build(target, seed, **kwargs))
        return run_trial(trainer, lr, trial, train_steps=train_steps, eval_every=every,
                         schedule=trial.params.get("schedule", schedule))

    return tune(objective, n_trials=n_trials, budget=budget, train_steps=train_steps, low=low, high=high,
                family=family, strategy=strategy, prior=prior, seed=seed, storage=storage, study_name=study_name,
                batch_sizes=batch_sizes, schedules=schedules, **tune_kwargs)
