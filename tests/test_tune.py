"""lrkit.tune: strategies, pruning, budget accounting, failures, storage errors and resumption."""
from __future__ import annotations

import math
import warnings

import pytest

optuna = pytest.importorskip("optuna")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lrkit.tune import Prior, load_result, tune  # noqa: E402
from lrkit.tune._linesearch import next_point, parabola_vertex  # noqa: E402
from lrkit.tune.strategies import grid_values  # noqa: E402


def bowl(center: float, width: float = 1.0):
    """Validation loss as a smooth valley in log10-LR with its minimum at 10**center."""
    return lambda lr, trial: 1.0 + ((math.log10(lr) - center) / width) ** 2


def test_lrkit_tune_is_the_function_and_the_package():
    import lrkit.tune.strategies  # noqa: F401  (binds the package as lrkit.tune)

    r = lrkit.tune(bowl(-2.0), n_trials=4, low=1e-5, high=1.0)
    assert r.best_lr is not None and callable(lrkit.tune)


@settings(max_examples=40, deadline=None)
@given(center=st.floats(-5.5, -0.5), offset=st.floats(-2.0, 2.0), skew=st.floats(0.3, 3.0))
def test_line_search_finds_a_valley_anywhere_in_the_range(center, offset, skew):
    # an asymmetric valley (steeper above the optimum, as with LRs), the start up to 2 decades off:
    # within 0.15 decade of the optimum in 10 trials
    start = min(max(center + offset, -6.0), 0.0)
    def f(x):
        d = x - center
        return d * d * (skew if d > 0 else 1.0)

    finished = []
    for _ in range(10):
        x = next_point(finished, [], [], x0=start, h=0.5, lo=-6.0, hi=0.0)
        if x is None:
            break
        assert -6.0 <= x <= 0.0 and all(abs(x - p) >= 0.5 / 8 - 1e-12 for p, _ in finished)
        finished.append((x, f(x)))
    best = min(finished, key=lambda p: p[1])[0]
    assert abs(best - center) < 0.15


def test_line_search_stays_below_a_diverged_lr_and_steps_down_after_failures():
    x = next_point([(-3.0, 1.0), (-3.5, 1.2)], [-2.5], [], x0=-3.0, h=0.5, lo=-6, hi=0, diverged=[-2.5])
    assert -3.0 < x < -2.5  # between the best and the diverged point, never at or above it
    assert next_point([], [-3.0], [], x0=-3.0, h=0.5, lo=-6, hi=0) == -3.5


def test_parabola_vertex_is_exact_on_a_parabola_and_refuses_a_cap():
    assert parabola_vertex(-2, 4 + 1, 0, 0 + 1, 1, 1 + 1) == 0.0
    assert parabola_vertex(-1, 0.0, 0, 1.0, 1, 0.0) is None


def test_recommended_lr_is_the_best_complete_trials():
    r = tune(lambda lr, trial: (math.log10(lr) + 2.5) ** 2 + 0.1 * (math.log10(lr) + 2.5) ** 3,
             n_trials=8, low=1e-6, high=1.0, family="adam")
    assert r.recommended_lr == r.best_lr and r.best_value == min(t.value for t in r.trials if t.value is not None)


def test_grid_and_log_strategies_try_exactly_their_points():
    seen = []

    def obj(lr, trial):
        seen.append(lr)
        return abs(math.log10(lr) + 2)

    r = tune(obj, n_trials=3, strategy="grid", values=[1e-3, 3e-3, 1e-2])
    assert sorted(seen) == [1e-3, 3e-3, 1e-2] and r.best_lr == 1e-2
    seen.clear()
    tune(obj, n_trials=4, strategy="log", low=1e-4, high=1e-1)
    assert sorted(seen) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert grid_values(1e-3, 1e-2) == [0.001, 0.00316227766017, 0.01]


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_are_reproducible_and_stay_in_range(strategy):
    runs = [tune(bowl(-3.0), n_trials=5, strategy=strategy, low=1e-6, high=1e-1, seed=3) for _ in range(2)]
    lrs = [[t.lr for t in r.trials] for r in runs]
    assert lrs[0] == lrs[1] and all(1e-6 <= lr <= 1e-1 for lr in lrs[0])


def test_finder_result_places_the_search():
    from lrkit.finder.result import FinderResult
    import numpy as np

    fr = FinderResult(lrs=np.geomspace(1e-6, 1, 30), losses=np.ones(30), smoothed_losses=np.ones(30),
                      suggestion=2e-3, method="rule", band=(1e-3, 4e-3))
    r = tune(bowl(-2.5), n_trials=5, finder=fr, train_steps=100)
    assert r.trials[0].lr == pytest.approx(2e-3)
    assert r.prior["source"] == "finder" and r.prior["cost_steps"] == 30
    assert abs(math.log10(r.best_lr) + 2.5) < 0.2


def reporting(center, steps=100, every=10, blow_up_above=None):
    def obj(lr, trial):
        x = math.log10(lr)
        for s in range(every, steps + 1, every):
            v = 1 + (x - center) ** 2 + 1.0 / s
            if blow_up_above is not None and x > blow_up_above:
                v = 2.0 * 3 ** (s / every)
            trial.report(v, s)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1 + (x - center) ** 2
    return obj


def test_budget_counts_complete_runs_and_pruned_steps_and_is_not_exceeded():
    r = tune(reporting(-3.0, blow_up_above=-2.2), budget=3, train_steps=100, low=1e-6, high=1.0)
    spent = sum(t.steps for t in r.trials)
    assert spent <= 300 and r.run_equivalents == pytest.approx(spent / 100)
    pruned = [t for t in r.trials if t.state == "pruned"]
    assert all(t.steps < 100 for t in pruned)
    assert sum(t.steps == 100 for t in r.trials if t.state == "complete") == sum(t.state == "complete" for t in r.trials)


def test_doctor_prunes_a_diverging_trial_at_once_and_marks_it():
    r = tune(reporting(-3.0, blow_up_above=-2.2), n_trials=6, strategy="grid", values=[1e-3, 1e-2, 1e-1],
             train_steps=100, pruner="doctor")
    by_lr = {t.lr: t for t in r.trials}
    for lr in (1e-2, 1e-1):
        assert by_lr[lr].state == "pruned" and by_lr[lr].reason == "doctor" and by_lr[lr].diverged
        assert by_lr[lr].steps <= 60
    assert by_lr[1e-3].state == "complete" and r.best_lr == 1e-3


def test_a_failing_or_nan_objective_fails_that_trial_and_the_study_goes_on():
    def obj(lr, trial):
        if lr > 0.05:
            raise RuntimeError("out of memory at this batch size")
        if lr > 0.005:
            return float("nan")
        return 1.0 - lr

    r = tune(obj, n_trials=3, strategy="grid", values=[1e-3, 1e-2, 1e-1])
    states = {t.lr: (t.state, t.reason) for t in r.trials}
    assert states[1e-1] == ("failed", "RuntimeError: out of memory at this batch size")
    assert states[1e-2] == ("failed", "objective returned nan")
    assert r.best_lr == 1e-3 and "2 trial(s) failed and the study went on" in r.summary()


@pytest.mark.parametrize("kwargs, match", [
    (dict(low=1e-2, high=1e-3), "low < high"),
    (dict(low=-1e-3, high=1e-2), "low must be a finite learning rate > 0"),
    (dict(low=0.0, high=1.0), "low must be"),
    (dict(strategy="bayes"), "strategy must be one of"),
    (dict(budget=4), "budget needs train_steps"),
    (dict(n_trials=0), "n_trials must be an integer >= 1"),
    (dict(strategy="grid", values=[1e-3, -1.0]), "values must be a non-empty list of finite learning rates > 0"),
    (dict(strategy="grid", values="1e-3,1e-2"), "values must be a non-empty list"),
    (dict(values=[1e-3, 1e-2]), "values lists the LRs of strategy='grid'"),
    (dict(strategy="tpe", n_trials=None), "say how long to search"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    kw = dict(n_trials=2, low=1e-4, high=1e-1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tune(bowl(-2), **kw)


def test_an_objective_that_cannot_take_lr_and_trial_is_refused_before_any_trial():
    calls = []

    def one_arg(lr):
        calls.append(lr)
        return 1.0

    with pytest.raises(ValueError, match=r"objective must accept \(lr, trial\).*one_arg\(lr\)"):
        tune(one_arg, n_trials=2, low=1e-4, high=1e-1)
    assert calls == []
    tune(lambda lr, trial, extra=1: 1.0, n_trials=1, low=1e-4, high=1e-1)  # defaults are fine
    tune(lambda *args: 1.0, n_trials=1, low=1e-4, high=1e-1)


def test_a_study_whose_every_trial_failed_warns_with_the_first_reason():
    with pytest.warns(RuntimeWarning, match=r"every trial of the study failed \(2\).*ZeroDivisionError") as rec:
        r = tune(lambda lr, trial: 1 / 0, n_trials=2, low=1e-4, high=1e-1)
    assert r.best_lr is None and rec[0].filename == __file__  # it names the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tune(lambda lr, trial: 1 / 0 if lr > 1e-2 else 1.0, n_trials=2, strategy="grid", values=[1e-3, 0.1])


def test_grid_and_log_without_a_length_try_each_point_once_and_resume(tmp_path):
    seen = []

    def obj(lr, trial):
        seen.append((lr, trial.params.get("batch_size")))
        return abs(math.log10(lr) + 2)

    r = tune(obj, strategy="grid", values=[1e-2, 1e-3, 1e-2, 1e-1])
    assert sorted(lr for lr, _ in seen) == [1e-3, 1e-2, 1e-1] and r.n_trials == 3
    seen.clear()
    tune(obj, strategy="log", low=1e-4, high=1e-1)
    assert sorted(lr for lr, _ in seen) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    seen.clear()
    tune(obj, strategy="grid", values=[1e-3, 1e-2], batch_sizes=[16, 64])
    assert sorted(seen) == [(1e-3, 16), (1e-3, 64), (1e-2, 16), (1e-2, 64)]
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    seen.clear()
    tune(obj, n_trials=2, strategy="grid", values=[1e-4, 1e-3, 1e-2], storage=url, study_name="g")
    r = tune(obj, strategy="grid", values=[1e-4, 1e-3, 1e-2], storage=url, study_name="g")
    assert sorted(lr for lr, _ in seen) == [1e-4, 1e-3, 1e-2] and r.n_trials == 3  # the rest, once


def test_unreachable_storage_and_wrong_direction_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot be reached"):
        tune(bowl(-2), n_trials=1, low=1e-4, high=1e-1,
             storage="postgresql://nobody@127.0.0.1:1/none", study_name="s")
    with pytest.raises(ValueError, match="does not exist"):
        tune(bowl(-2), n_trials=1, low=1e-4, high=1e-1, storage=str(tmp_path / "no" / "x.db"), study_name="s")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tune(bowl(-2), n_trials=1, low=1e-4, high=1e-1, storage=url, study_name="s")
    with pytest.raises(ValueError, match="exists with direction=minimize"):
        tune(bowl(-2), n_trials=2, low=1e-4, high=1e-1, storage=url, study_name="s", direction="maximize")


def test_sqlite_study_continues_and_ctrl_c_requeues_the_running_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def obj(lr, trial):
        calls.append(lr)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return abs(math.log10(lr) + 2.5)

    values = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    with pytest.raises(KeyboardInterrupt):
        tune(obj, n_trials=5, strategy="grid", values=values, storage=url, study_name="g")
    interrupted_lr = calls[2]
    r = tune(obj, n_trials=5, strategy="grid", values=values, storage=url, study_name="g")
    assert calls[3] == interrupted_lr  # the interrupted LR runs first after resuming
    complete = [t.lr for t in r.trials if t.state == "complete"]
    assert sorted(complete) == values and r.n_trials == 5  # none lost, none repeated
    assert [t.state for t in r.trials].count("interrupted") == 1
    again = tune(obj, n_trials=5, strategy="grid", values=values, storage=url, study_name="g")
    assert len(calls) == 6 and again.n_trials == 5  # nothing left to do


def test_lrkit_prior_is_stored_with_the_study_so_workers_search_alike(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    tune(bowl(-2), n_trials=2, prior=Prior(1e-3, 0.5, 1e-6, 1.0, "finder", 40), storage=url, study_name="p")
    r = tune(bowl(-2), n_trials=4, low=1e-6, high=1.0, storage=url, study_name="p")  # no prior given
    assert r.prior["center"] == 1e-3 and r.prior["cost_steps"] == 40
    study = optuna.load_study(study_name="p", storage=url)
    assert load_result(study).n_trials == 4


def test_maximize_direction_finds_the_peak():
    r = tune(lambda lr, t: -((math.log10(lr) + 1.5) ** 2), n_trials=7, low=1e-5, high=1.0, direction="maximize")
    assert abs(math.log10(r.best_lr) + 1.5) < 0.2


def test_behind_the_best_prunes_only_a_trial_that_is_not_catching_up():
    from optuna.distributions import FloatDistribution
    from lrkit.tune.pruners import BehindBestPruner

    study = optuna.create_study(pruner=BehindBestPruner(100))
    study.add_trial(optuna.create_trial(params={"lr": 1e-2}, distributions={"lr": FloatDistribution(1e-5, 1, log=True)},
                                        value=1.0, intermediate_values={s: 1.0 + 1.0 / s for s in range(10, 101, 10)}))
    closing, stuck = study.ask(), study.ask()
    for s, gap in ((20, 0.8), (30, 0.5), (40, 0.3)):  # a lower LR: behind, but the gap shrinks
        closing.report((1.0 + 1.0 / s) * (1 + gap), s)
    assert not closing.should_prune()
    for s, gap in ((20, 0.5), (30, 0.5), (40, 0.5)):
        stuck.report((1.0 + 1.0 / s) * (1 + gap), s)
    assert stuck.should_prune()


def test_behind_the_best_measures_gaps_near_zero_against_the_way_the_best_moved():
    """A negative log-likelihood that falls through zero: 0.05 behind a best at -0.02 is 2.5x in
    ratio but a few percent of the best trial's fall (1.8 -> -0.02); a trial a unit behind is pruned."""
    from optuna.distributions import FloatDistribution
    from lrkit.tune.pruners import BehindBestPruner

    study = optuna.create_study(pruner=BehindBestPruner(100))
    best = {s: 2.0 - 2.02 * s / 100 for s in range(10, 101, 10)}  # 1.798 ... 0.182, -0.02
    study.add_trial(optuna.create_trial(params={"lr": 1e-2}, distributions={"lr": FloatDistribution(1e-5, 1, log=True)},
                                        value=best[100], intermediate_values=best))
    close, far = study.ask(), study.ask()
    for s in (80, 90, 100):
        close.report(best[s] + 0.05, s)
        far.report(best[s] + 1.0, s)
    assert not close.should_prune()
    assert far.should_prune()


def test_a_lost_race_to_create_the_tables_is_told_from_other_database_errors():
    """Workers opening a fresh database together race to create Optuna's tables; the loser sees a
    unique violation (tested for real in test_tune_postgres) or "relation ... already exists" (a
    ProgrammingError): both mean open again. Any other SQL error is reported, not retried."""
    import sqlalchemy.exc

    from lrkit.tune.storage import _lost_creation_race

    def err(cls, msg):
        return cls("CREATE TABLE studies (...)", {}, Exception(msg))

    assert _lost_creation_race(err(sqlalchemy.exc.ProgrammingError, 'relation "studies" already exists'))
    assert _lost_creation_race(err(sqlalchemy.exc.IntegrityError, 'duplicate key value violates unique constraint'))
    assert not _lost_creation_race(err(sqlalchemy.exc.ProgrammingError, 'permission denied for schema public'))


@pytest.mark.parametrize("name", ["lrkit.tune", "lrkit.tune._run", "lrkit.tune.strategies", "lrkit.tune.prior",
                                  "lrkit.tune._linesearch", "lrkit.tune.pruners", "lrkit.tune.storage",
                                  "lrkit.tune._schedules"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _curves(start: dict, slope: dict):
    """An objective whose value at step s is start[lr] - slope[lr] * s, reported every 10 steps."""
    def obj(lr, trial):
        key = min(start, key=lambda k: abs(math.log(k / lr)))
        v = start[key]
        for s in range(10, 101, 10):
            v = start[key] - slope[key] * s
            trial.report(v, s)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return v
    return obj


@pytest.mark.parametrize("ahead", [True, False])
def test_a_trial_the_budget_stopped_while_ahead_is_named_and_the_answer_stays_the_complete_one(ahead):
    """Grid 0.1 then 0.01, 1.7 runs: the second trial is stopped by the budget at step 70. Ahead of
    the first at step 70 (it was there at 0.72), it is named in the summary and the JSON; behind,
    not; either way the answer is the complete trial's LR."""
    slope = {0.1: 0.004, 0.01: 0.005 if ahead else 0.001}
    r = tune(_curves({0.1: 1.0, 0.01: 0.9}, slope), strategy="grid", values=[0.1, 0.01], budget=1.7,
             train_steps=100, pruner="none")
    first, second = r.trials
    assert first.state == "complete" and second.reason == "budget" and second.steps == 70
    assert r.best_lr == pytest.approx(0.1)
    leaders = r.budget_leaders()
    if ahead:
        assert [(t.number, v) for t, v in leaders] == [(1, pytest.approx(1.0 - 0.004 * 70))]
        assert "trial #1 (lr 0.01) was ahead when the budget stopped it" in r.summary()
        assert r.to_dict()["budget_leaders"] == [1]
    else:
        assert leaders == [] and "was ahead" not in r.summary() and r.to_dict()["budget_leaders"] == []
