r"""``lrkit.tune(objective, ...)``: a learning-rate search on Optuna.

The objective trains at one learning rate and returns the validation loss (or a metric with
``direction="maximize"``); it may report intermediate values so that bad trials stop early::

    def objective(lr, trial):
        model, opt = make(lr)
        for step in range(1, 301):
            train_step(model, opt)
            if step % 30 == 0:
                trial.report(val_loss(model), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return val_loss(model)

    result = lrkit.tune(objective, budget=4, train_steps=300, low=1e-5, high=1.0)

How long it searches: ``n_trials`` finished trials, or ``budget`` training-run equivalents with
``train_steps`` (a complete trial costs ``train_steps``, a pruned or failed one the last step it
reported; the prior's range test counts too):

.. math::

    \text{spent} = \frac{c_{prior} + \sum_{\text{trials}} c_i}{T} \le \text{budget}.

The study stops starting trials once the target is reached (or less than a tenth of a run is left),
and a running trial is pruned at the last report before the one that would take it over the budget. Both count the whole study, so running the same call
again on the same storage continues an interrupted search instead of starting another.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import socket
import sys
import warnings
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrkit.tune.prior import Prior, check_range
from lrkit.tune.pruners import BudgetPruner, ChainPruner, make_pruner, trial_cost
from lrkit.tune.result import TrialRecord, TuneResult
from lrkit.tune.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, open_storage
from lrkit.tune.strategies import LR, STRATEGIES, grid_points, make_sampler, retried_numbers

__all__ = ["tune", "load_result"]

_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def _check_count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _resolve_range(low: Any, high: Any, family: str | None, values: Sequence[float] | None,
                   finder: Any) -> tuple[float, float]:
    if values is not None:
        try:
            vals = [float(v) for v in values] if not isinstance(values, (str, bytes)) else []
        except (TypeError, ValueError):
            vals = []
        if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
            raise ValueError(f"values must be a non-empty list of finite learning rates > 0, got {values!r}")
        lo, hi = min(vals), max(vals)
        return (lo, hi) if lo < hi else (lo, lo * (1 + 1e-9))
    if low is not None or high is not None:
        if low is None or high is None:
            if finder is None and family is None:
                raise ValueError("give both low and high (or a family or a finder result to fill the other in)")
        if low is not None and high is not None:
            return check_range(low, high)
    if finder is not None:
        p = Prior.from_finder(finder, low=low, high=high)
        return p.low, p.high
    from lrkit.scaling import lr_range

    lo, hi = lr_range(family or "unknown")
    return check_range(low if low is not None else lo, high if high is not None else hi)


def _spent_steps(trials: Sequence[FrozenTrial], train_steps: int, skip: int | None = None) -> int:
    superseded = retried_numbers(trials)
    return sum(trial_cost(t, train_steps) for t in trials
               if t.number != skip and t.number not in superseded)


def _finished(trials: Sequence[FrozenTrial]) -> int:
    superseded = retried_numbers(trials)
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and t.number not in superseded for t in trials)


@contextlib.contextmanager
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _open_study(storage: Any, study_name: str | None, direction: str, sampler: Any, pruner: Any) -> optuna.Study:
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=study_name is not None)
    except optuna.exceptions.DuplicatedStudyError:  # pragma: no cover - load_if_exists handles it
        raise ValueError(f"study {study_name!r} already exists") from None
    existing = study.direction.name.lower()
    if existing != direction:
        raise ValueError(f"study {study_name!r} exists with direction={existing}, not {direction}; "
                         f"pass direction={existing!r} or another study name")
    return study


def tune(
    objective: Callable[[float, optuna.Trial], float],
    *,
    n_trials: int | None = None,
    budget: float | None = None,
    train_steps: int | None = None,
    low: float | None = None,
    high: float | None = None,
    family: str | None = None,
    strategy: str = "lrkit",
    values: Sequence[float] | None = None,
    finder: Any = None,
    prior: Prior | None = None,
    pruner: Any = "auto",
    direction: str = "minimize",
    storage: Any = None,
    study_name: str | None = None,
    seed: int | None = 0,
    batch_sizes: Sequence[int] | None = None,
    schedules: Sequence[Any] | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_start: Callable[[optuna.Study], None] | None = None,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> TuneResult:
    """Search the learning rate that makes ``objective`` best.

    Args:
        objective: ``objective(lr, trial) -> float``; ``trial`` is Optuna's ``Trial``
            (``trial.report(value, step)``, ``trial.should_prune()``, ``trial.params``). An
            objective that raises or returns NaN/inf fails that trial; the study goes on.
        n_trials: stop after this many finished trials in the study (complete, pruned, failed).
        budget: stop after this many training-run equivalents (needs ``train_steps``). One of the
            two is needed, except by ``grid`` and ``log``, which without either try each of their
            points once (every combination with ``batch_sizes``/``schedules``).
        train_steps: optimizer steps of one full run.
        low, high: the LR range (``0 < low < high``); default from the finder result or
            :func:`lrkit.scaling.lr_range` of ``family``.
        family: the optimizer family (``"adam"``, ``"sgd_momentum"``, ... see
            :data:`lrkit.scaling.FAMILIES`), for default ranges and the prior's centre.
        strategy: ``"lrkit"`` (default), ``"tpe"``, ``"random"``, ``"log"`` or ``"grid"``
            (:mod:`lrkit.tune.strategies`).
        values: the LRs of the ``grid`` strategy (or of ``log``); refused with any other strategy.
        finder: a :class:`~lrkit.finder.result.FinderResult` to start from (``lrkit`` strategy);
            its range test's steps count in the budget.
        prior: a :class:`~lrkit.tune.prior.Prior` instead of ``finder``.
        pruner: ``"auto"``, ``"lrkit"``, ``"doctor"``, ``"median"``, ``"halving"``,
            ``"hyperband"``, ``"none"`` or an ``optuna.pruners.BasePruner`` (see
            :func:`lrkit.tune.pruners.make_pruner`).
        direction: ``"minimize"`` (a loss) or ``"maximize"`` (a metric).
        storage: ``None`` (in memory), a database URL (``sqlite:///study.db``,
            ``postgresql://...``), ``journal:PATH``, or an Optuna storage.
        study_name: the study to create or continue (needed to continue one in a storage).
        seed: seed of the samplers' randomness.
        batch_sizes: also search the batch size among these (``trial.params["batch_size"]``);
            the ``lrkit`` strategy runs one line search per batch size, each started at the
            prior's centre moved by :func:`lrkit.scaling.scale_lr`.
        schedules: also search the schedule family among these names
            (``trial.params["schedule"]``, see :func:`lrkit.tune._schedules.schedule_for`).
        callbacks: Optuna callbacks ``(study, frozen_trial)`` run after every trial (progress).
        on_start: called with the study once it exists (and holds its prior), before the first
            trial (e.g. to start more worker processes on the same storage).
        heartbeat_interval, grace_period: seconds; a database storage fails a trial whose worker
            has been silent for ``grace_period`` and queues it again.

    Returns:
        A :class:`~lrkit.tune.result.TuneResult` (``best_lr``, ``best_value``, ``trials``, ``study``).

    Raises:
        ValueError: a bad argument (an ``objective`` that cannot take ``(lr, trial)`` included), an
            unreachable storage, or a study that exists with another direction.
            ``KeyboardInterrupt`` propagates after the running trial is queued again.

    Warns:
        RuntimeWarning: every trial failed (there is no best LR); the first failure's reason.

    Example:
        >>> import math
        >>> r = tune(lambda lr, trial: (math.log10(lr) + 2.5) ** 2, n_trials=6, low=1e-5, high=1.0)
        >>> 1e-3 < r.best_lr < 1e-2, len(r.trials)
        (True, 6)
    """
    n_trials, train_steps = _checked_args(objective, strategy, direction, n_trials, train_steps, budget, family,
                                          values)
    lo, hi = _resolve_range(low, high, family, values, finder)
    if strategy == "lrkit" and prior is None:
        prior = Prior.from_finder(finder, low=lo, high=hi) if finder is not None else Prior.from_range(lo, hi, family=family)

    storage_obj = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    chain = ChainPruner(make_pruner(pruner, strategy, train_steps=train_steps))
    with _quiet_optuna():
        probe = _open_study(storage_obj, study_name, direction, None, None)
        saved = probe.user_attrs.get("lrkit_prior")
        if strategy == "lrkit":
            if saved is not None:
                prior = Prior.from_dict(saved)  # every worker and every resumption searches alike
            else:
                probe.set_user_attr("lrkit_prior", prior.to_dict())
        prior_cost = prior.cost_steps if prior is not None else 0
        limit = budget * train_steps if budget is not None else math.inf

        def spent(study: optuna.Study, skip: int | None = None) -> float:
            return prior_cost + _spent_steps(study.get_trials(deepcopy=False), train_steps or 0, skip)

        if budget is not None:
            chain.pruners.append(("budget", BudgetPruner(limit, spent)))
        extra = _extra_space(batch_sizes, schedules)
        if n_trials is None and budget is None:  # grid or log: every point once
            n_trials = len(grid_points(strategy, lo, hi, values)) * math.prod(len(v) for v in extra.values())
        sampler = make_sampler(strategy, low=lo, high=hi, seed=seed, prior=prior, values=values, extra=extra)
        study = _open_study(storage_obj, probe.study_name, direction, sampler, chain)

        def done(study_: optuna.Study) -> bool:
            trials = study_.get_trials(deepcopy=False)
            if n_trials is not None and _finished(trials) >= n_trials:
                return True
            return budget is not None and spent(study_) > limit - max(1.0, 0.1 * (train_steps or 0))

        def stopper(study_: optuna.Study, frozen: FrozenTrial) -> None:
            if done(study_):
                study_.stop()

        if on_start is not None:
            on_start(study)
        if not done(study):
            study.optimize(_wrap(objective, lo, hi, chain, extra), n_trials=None, catch=(),
                           callbacks=[stopper, *callbacks], gc_after_trial=False)
    result = load_result(study, strategy=strategy, train_steps=train_steps, prior=prior)
    failed = [r for r in result.trials if r.state == "failed"]
    if failed and len(failed) == len(result.trials):
        warnings.warn(f"every trial of the study failed ({len(failed)}), so there is no best LR; the first "
                      f"failure: {failed[0].reason} (result.trials[i].reason has each)", RuntimeWarning,
                      stacklevel=_outside_lrkit())
    return result


def _checked_args(objective: Any, strategy: str, direction: str, n_trials: Any, train_steps: Any, budget: Any,
                  family: str | None, values: Any = None) -> tuple[int | None, int | None]:
    """:func:`tune`'s arguments checked (one clear error naming the first bad one); ``(n_trials, train_steps)``."""
    if not callable(objective):
        raise ValueError(f"objective must be a function objective(lr, trial) -> float, got {type(objective).__name__}")
    _check_signature(objective)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if values is not None and strategy not in ("grid", "log"):
        raise ValueError(f"values lists the LRs of strategy='grid' (or 'log'), got strategy={strategy!r}: pass "
                         "strategy='grid' to try exactly those values, or drop values")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    n_trials = _check_count("n_trials", n_trials, 1)
    train_steps = _check_count("train_steps", train_steps, 1)
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"budget must be a number of training-run equivalents > 0, got {budget!r}")
        if train_steps is None:
            raise ValueError("budget needs train_steps (the optimizer steps of one full run)")
    if n_trials is None and budget is None and strategy not in ("grid", "log"):
        raise ValueError("say how long to search: n_trials=N or budget=RUNS with train_steps=STEPS "
                         "(strategy='grid' or 'log' without either tries every point once)")
    if family is not None:
        from lrkit.scaling import FAMILIES

        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return n_trials, train_steps


def _outside_lrkit() -> int:
    """The ``stacklevel`` that makes a warning of the caller name the first frame outside lrkit
    (``lrkit.tune(...)`` and the framework conveniences reach :func:`tune` through lrkit frames)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _check_signature(objective: Callable) -> None:
    """``objective`` can be called as ``objective(lr, trial)``: said before the first trial, not
    as the same failure recorded in every trial."""
    try:
        sig = inspect.signature(objective)
    except (TypeError, ValueError):  # a builtin or extension callable: nothing to read
        return
    try:
        sig.bind(1e-3, None)
    except TypeError as exc:
        name = getattr(objective, "__name__", type(objective).__name__)
        raise ValueError(f"objective must accept (lr, trial), as objective(lr, trial) -> float; {name}{sig}: "
                         f"{exc}") from None


_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _extra_space(batch_sizes: Sequence[int] | None, schedules: Sequence[Any] | None) -> dict[str, list]:
    extra: dict[str, list] = {}
    if batch_sizes is not None:
        bs = list(batch_sizes)
        if not bs or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bs):
            raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1, got {batch_sizes!r}")
        extra["batch_size"] = bs
    if schedules is not None:
        from lrkit.tune._schedules import SCHEDULE_FAMILIES

        sch = list(schedules)
        bad = [x for x in sch if x not in SCHEDULE_FAMILIES]
        if not sch or bad:
            raise ValueError(f"schedules must be a non-empty list of {', '.join(SCHEDULE_FAMILIES)}, got {schedules!r}")
        extra["schedule"] = sch
    return extra


def _wrap(objective: Callable, lo: float, hi: float, chain: ChainPruner,
          extra: dict[str, list]) -> Callable[[optuna.Trial], float]:
    def run(trial: optuna.Trial) -> float:
        _first_heartbeat(trial)
        for name, choices in extra.items():  # before the LR: the lrkit line search depends on them
            trial.suggest_categorical(name, choices)
        lr = trial.suggest_float(LR, lo, hi, log=True)
        trial.set_user_attr("lrkit_worker", _WORKER)
        try:
            value = objective(lr, trial)
        except optuna.TrialPruned:
            reason = trial.user_attrs.get("lrkit_pruned_by") or chain.reason(trial.number) or "objective"
            trial.set_user_attr("lrkit_pruned_by", reason)
            if reason == "doctor":
                trial.set_user_attr("lrkit_diverged", True)
            raise
        except KeyboardInterrupt:
            _requeue(trial)
            raise
        except Exception as exc:  # the user's objective failed: record it, fail the trial, go on
            trial.set_user_attr("lrkit_error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300])
            return math.nan
        try:
            value = float(value)
        except (TypeError, ValueError):
            trial.set_user_attr("lrkit_error", f"objective returned {type(value).__name__}, not a number")
            return math.nan
        if not math.isfinite(value):
            trial.set_user_attr("lrkit_error", f"objective returned {value}")
            trial.set_user_attr("lrkit_diverged", True)
        return value

    return run


def _first_heartbeat(trial: optuna.Trial) -> None:
    """Record the trial's first heartbeat now, before the objective runs. Optuna's heartbeat thread
    records it when it is first scheduled, which on a loaded machine can come after the objective
    has started; a worker killed in between leaves a RUNNING trial with no heartbeat, which is never
    found stale: its LR would never be tried again."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = trial.study._storage
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial._trial_id)


def _requeue(trial: optuna.Trial) -> None:
    """Queue an interrupted trial again with the same parameters (Optuna's retry callback)."""
    from lrkit.tune.storage import _retry_callback

    frozen = trial.study._storage.get_trial(trial._trial_id)
    _retry_callback()(trial.study, frozen)


def load_result(study: optuna.Study, *, strategy: str | None = None, train_steps: int | None = None,
                prior: Prior | None = None) -> TuneResult:
    """A :class:`TuneResult` from a study (e.g. one loaded from a storage)."""
    trials = study.get_trials(deepcopy=False)
    superseded = retried_numbers(trials)
    records = []
    for t in trials:
        state = "interrupted" if t.number in superseded else _STATE.get(t.state, t.state.name.lower())
        reason = t.user_attrs.get("lrkit_pruned_by") if t.state == TrialState.PRUNED else t.user_attrs.get("lrkit_error")
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        records.append(TrialRecord(
            number=t.number, lr=t.params.get(LR), value=t.value if t.state == TrialState.COMPLETE else None,
            state=state, steps=trial_cost(t, train_steps or 0) if (train_steps or t.state != TrialState.COMPLETE) else 0,
            params=dict(t.params), reason=reason, diverged=bool(t.user_attrs.get("lrkit_diverged")), last_value=last,
        ))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [r for r in records if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    best = (max if maximize else min)(complete, key=lambda r: r.value) if complete else None
    # the best complete trial's LR: neither fit of the valley around it measured (a least-squares
    # parabola in log-LR; the expected-loss minimiser of an asymmetric V, better on the development
    # half only) beat it on the held-out half (BENCHMARKS.md, tune)
    recommended = best.lr if best else None
    run_eq = None
    if train_steps:
        cost = (prior.cost_steps if prior is not None else 0) + sum(r.steps for r in records if r.state != "interrupted")
        run_eq = cost / train_steps
    return TuneResult(
        best_lr=best.lr if best else None, best_value=best.value if best else None, trials=records, study=study,
        strategy=strategy or study.user_attrs.get("lrkit_strategy", "?"),
        direction="maximize" if maximize else "minimize", train_steps=train_steps, run_equivalents=run_eq,
        prior=prior.to_dict() if prior is not None else None, best_params=dict(best.params) if best else {},
        recommended_lr=recommended,
    )
