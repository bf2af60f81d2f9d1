"""The autopilot's pure core: shapes, plan, flat-curve refusal, guard/plateau policy, resume."""
from __future__ import annotations

import doctest
import importlib
import json
import logging
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S
from lrkit.autopilot import (
    Autopilot,
    AutopilotError,
    AutopilotPlan,
    NotTrainable,
    check_optimizer,
    check_trainable,
    default_shape,
    fly,
    make_plan,
    resolve_train_steps,
)
from lrkit.autopilot import policy
from lrkit.finder.result import FinderResult
from lrkit.scaling import FAMILIES

from _toy_trainers import Dying

FAMS = [f for f in FAMILIES if f != "lr_free"]


@pytest.mark.parametrize("name", ["lrkit.autopilot", "lrkit.autopilot.policy", "lrkit.autopilot.plan",
                                  "lrkit.autopilot.pilot", "lrkit.autopilot.run"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMS), steps=st.integers(1, 200_000))
def test_default_shape_warms_up_then_decays_to_zero(family, steps):
    s = default_shape(family, steps)
    v = s(np.arange(steps))
    w = policy.warmup_steps(family, steps)
    assert s.total_steps == steps
    assert np.all(v > 0) and math.isclose(v.max(), 1.0)
    assert w <= policy.MAX_WARMUP and w <= math.ceil(0.05 * steps)
    if w > 1:
        assert np.all(np.diff(v[:w]) > 0) and v[w - 1] == 1.0 and math.isclose(v[0], 1.0 / w)
    assert np.all(np.diff(v[max(w - 1, 0):]) <= 1e-15)  # never rises after the peak
    assert s(steps) == 0.0                                # ends at zero
    if family in ("adagrad", "adadelta") and steps >= 10:
        assert v[int(0.7 * steps)] == 1.0                 # held, then a late cooldown only
    elif steps >= 100:
        assert abs(v[steps // 2] - 0.5) < 0.05            # linear decay


def _curve(drop: float = 1.0, n: int = 40) -> FinderResult:
    lrs = np.geomspace(1e-5, 1.0, n)
    losses = 2.0 - drop * np.tanh(np.log10(lrs) + 3) * 0.5 - drop * 0.5
    return FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-3, method="verified")


def test_plan_peak_is_the_finders_answer_times_the_shape_factor():
    plan = make_plan(_curve(), family="adamw", train_steps=1000)
    factor = policy.peak_factor(default_shape("adamw", 1000), 1000)
    assert plan.peak_lr == pytest.approx(1e-3 * factor)
    assert plan.auto_peak_lr == plan.peak_lr and plan.finder_lr == 1e-3
    assert max(plan.schedule(np.arange(1000))) == pytest.approx(plan.peak_lr)
    assert any("Ma & Yarats" in r for r in plan.reasons)


def test_user_shape_scale_is_ignored_and_constant_gets_the_finders_answer():
    a = make_plan(_curve(), family="sgd", train_steps=300, shape=S.cosine(5.0, 300))
    b = make_plan(_curve(), family="sgd", train_steps=300, shape=S.cosine(0.01, 300))
    steps = np.arange(300)
    np.testing.assert_allclose(a.schedule(steps), b.schedule(steps), rtol=1e-12)
    assert a.shape_source == "user"
    c = make_plan(_curve(), family="sgd", train_steps=300, shape=S.constant(42.0))
    np.testing.assert_allclose(c.schedule(steps), 1e-3)


def test_peak_lr_given_by_the_user_is_used_and_the_finder_kept_as_fallback():
    plan = make_plan(_curve(), family="adam", train_steps=500, peak_lr=0.3)
    assert plan.peak_lr == 0.3 and plan.auto_peak_lr < 0.01
    assert any("given by you" in r for r in plan.reasons)


def test_plan_round_trips_through_json():
    plan = make_plan(_curve(), family="adagrad", train_steps=777, shape=None)
    back = AutopilotPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    steps = np.arange(800)
    np.testing.assert_array_equal(plan.schedule(steps), back.schedule(steps))
    assert back.reasons == plan.reasons and back.warmup_steps == plan.warmup_steps


def test_flat_curve_is_refused_before_training():
    flat = _curve(drop=0.0)
    with pytest.raises(NotTrainable, match="does not train at any learning rate"):
        make_plan(flat, family="adam", train_steps=100)


def test_flat_curve_with_an_improving_candidate_is_a_pretrained_model_not_a_dead_one():
    lrs = np.geomspace(1e-5, 1.0, 30)
    losses = np.full(30, 0.5)
    cands = [{"lr": 1e-3, "score": 0.45, "steps": 10, "rejected": None}]
    short = FinderResult(lrs=lrs[:8], losses=losses[:8], smoothed_losses=losses[:8], suggestion=1e-4,
                         method="verified", details={"candidates": [dict(cands[0], steps=1, score=None)]})
    check_trainable(short)   # 8 points and 1-step candidates: not enough evidence to refuse
    ok = FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-4, method="verified",
                      details={"candidates": cands, "start_score": 0.5})
    check_trainable(ok)
    dead = FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-4, method="verified",
                        details={"candidates": [dict(cands[0], score=0.4999)], "start_score": 0.5})
    with pytest.raises(NotTrainable, match="none of the 1 candidate LRs"):
        check_trainable(dead)


def test_a_model_too_slow_for_the_short_runs_is_not_refused_when_its_loss_answers_the_weights():
    """A transformer trained from scratch sits at chance for more steps than a candidate run has
    (the finder's benchmark through the Trainer: a tiny BERT, 6-step candidates): no candidate
    improves, but high LRs make it worse -- its loss depends on its weights. It trains at the
    finder's unverified answer; a loss that no LR moves is still refused."""
    lrs = np.geomspace(1e-7, 1.0, 25)
    losses = np.full(25, 0.6931)
    flat = {"steps": 6, "score": None, "start": 0.6931}
    cands = [dict(flat, lr=1e-4, rejected="no improvement", final=0.6932),
             dict(flat, lr=1e-3, rejected="no improvement", final=0.6933),
             dict(flat, lr=1e-2, rejected="no improvement", final=0.7057),   # 1.8% up: still flat
             dict(flat, lr=0.1, rejected="no improvement", final=2.03)]      # worse: the weights moved it
    late = FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-3,
                        method="unverified(no progress)", details={"candidates": cands, "start_score": 0.6931})
    check_trainable(late)
    frozen = FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-3,
                          method="unverified(no progress)", details={"candidates": cands[:3], "start_score": 0.6931})
    with pytest.raises(NotTrainable, match="none of the 3 candidate LRs"):
        check_trainable(frozen)
    # the same flat candidates, scored on a validation set that six steps do not move, but a range
    # test whose loss rose at its high LRs (a tiny BERT through the Trainer): the loss answers the weights
    rising = losses.copy()
    rising[-5:] = [0.70, 0.75, 0.85, 1.0, 1.3]
    seen = FinderResult(lrs=lrs, losses=rising, smoothed_losses=rising, suggestion=1e-3,
                        method="unverified(no progress)", details={"candidates": cands[:3], "start_score": 0.6931})
    check_trainable(seen)
    slight = rising.copy()
    slight[-5:] = np.minimum(slight[-5:], 0.6931 * 1.09)  # up 9%: within a flat curve's wobble
    with pytest.raises(NotTrainable, match="none of the 3 candidate LRs"):
        check_trainable(FinderResult(lrs=lrs, losses=slight, smoothed_losses=slight, suggestion=1e-3,
                                     method="unverified(no progress)",
                                     details={"candidates": cands[:3], "start_score": 0.6931}))


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "AdamWScheduleFree", "SGDScheduleFree"])
def test_learning_rate_free_and_schedule_free_optimizers_are_refused_with_the_reason(name):
    with pytest.raises(AutopilotError, match="learning-rate-free|Schedule-Free"):
        check_optimizer(name)


def test_unknown_run_length_says_what_to_pass():
    with pytest.raises(AutopilotError, match="pass train_steps=N"):
        resolve_train_steps(None)
    with pytest.raises(AutopilotError, match="train_steps must be a whole number"):
        resolve_train_steps(0)
    with pytest.raises(AutopilotError, match="family must be one of"):
        make_plan(_curve(), family="adamm", train_steps=10)


class Quadratic:
    """f(x) = x^2 by gradient descent, with optional faults injected by the (never rewound) clock."""

    def __init__(self, nan_at=(), spike_at=()):
        self.x, self.clock, self.nan_at, self.spike_at = 1.0, 0, set(nan_at), set(spike_at)

    def snapshot(self):
        return self.x

    def restore(self, s):
        self.x = s

    def step(self, lr):
        t, self.clock = self.clock, self.clock + 1
        if t in self.nan_at:
            return math.nan
        loss = self.x ** 2 + 1e-3
        self.x -= lr * 2 * self.x
        return loss

    def evaluate(self):
        return self.x ** 2 + 1e-3


def _run(pilot, q, steps, start=0):
    lrs = []
    for t in range(start, start + steps):
        lrs.append(pilot.lr(t))
        pilot.observe(t, q.step(lrs[-1]))
    return lrs


def test_first_isolated_nan_keeps_the_lr_and_a_second_soon_after_lowers_it():
    plan = make_plan(family="sgd", train_steps=400, peak_lr=0.1, shape=S.constant(1.0))
    q = Quadratic(nan_at=(100, 110))
    pilot = Autopilot(plan, plateau=False).attach(q)
    _run(pilot, q, 400)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [100, 110]
    assert rollbacks[0].data["new_multiplier"] == 1.0 and "bad batch" in rollbacks[0].message
    assert rollbacks[1].data["new_multiplier"] == 0.5 and "lowered the LR x0.5" in rollbacks[1].message
    assert pilot.multiplier == 0.5


class HarderFrom:
    """A loss that falls to a floor, until the clock reaches ``at``: from then on every step at an
    LR above ``edge`` multiplies it by 1.03 (the run's stability edge moved below the LR: a slow
    climb, slower than a snapshot window), and a step below it lets it fall again."""

    def __init__(self, at, edge):
        self.loss, self.clock, self.at, self.edge = 1.0, 0, at, edge

    def snapshot(self):
        return self.loss

    def restore(self, s):
        self.loss = s

    def step(self, lr):
        t, self.clock = self.clock, self.clock + 1
        if t >= self.at and lr > self.edge:
            self.loss *= 1.03
        else:
            self.loss = max(0.97 * self.loss, 0.1)
        return self.loss


def test_a_problem_that_comes_back_to_the_same_snapshot_is_not_forgiven_twice():
    """After a rollback the run climbs again, slowly, from the same state: the guard finds nothing
    healthy since and restores the same snapshot. That is the LR, however long the climb took (a
    bad batch would have let the run pass the point it failed at): the second rollback lowers the
    LR instead of keeping it until the guard gives up."""
    plan = make_plan(family="sgd", train_steps=400, peak_lr=0.1, shape=S.constant(1.0))
    q = HarderFrom(at=150, edge=0.07)
    pilot = Autopilot(plan, plateau=False).attach(q)
    _run(pilot, q, 400)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert len(rollbacks) == 2, [e.message for e in pilot.events]
    assert rollbacks[1].step - rollbacks[0].step > 2 * policy.guard_settings(400)["snapshot_every"]
    assert rollbacks[1].data["restored_to"] == rollbacks[0].data["restored_to"]
    assert rollbacks[0].data["new_multiplier"] == 1.0  # a first problem out of a healthy run: kept
    assert rollbacks[1].data["new_multiplier"] == 0.5 and "lowered the LR x0.5" in rollbacks[1].message
    assert pilot.multiplier == 0.5 and q.loss < 0.2


def test_a_user_scale_30x_too_high_comes_back_to_the_autopilots_scale_in_one_rollback():
    good = make_plan(_curve(), family="sgd", train_steps=300, shape=S.constant(1.0))
    assert good.peak_lr == pytest.approx(1e-3)
    bad = make_plan(_curve(), family="sgd", train_steps=300, shape=S.constant(1.0), peak_lr=30.0)
    # quadratic: lr 30 diverges at once; the autopilot's own 1e-3 is stable
    q = Quadratic()
    pilot = Autopilot(bad, plateau=False).attach(q)
    caught = []
    logging.getLogger("lrkit.autopilot").addHandler(h := _ListHandler(caught))
    try:
        lrs = _run(pilot, q, 300)
    finally:
        logging.getLogger("lrkit.autopilot").removeHandler(h)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert len(rollbacks) == 1 and "autopilot's own scale" in rollbacks[0].message
    assert lrs[-1] == pytest.approx(1e-3) and math.isfinite(q.x)
    assert any("rolled back" in m for m in caught)      # every intervention is in the log


class _ListHandler(logging.Handler):
    def __init__(self, out):
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record):
        self.out.append(record.getMessage())


def test_plateau_halves_the_lr_after_three_stalled_validations_never_during_warmup():
    plan = make_plan(_curve(), family="adam", train_steps=1000)
    pilot = Autopilot(plan, guard=False)
    for t in range(0, 40, 10):  # warmup (50 steps): ignored
        pilot.observe(t, 1.0, val_loss=1.0)
    assert pilot.plateau_scale == 1.0
    for t, v in zip(range(100, 400, 50), [0.9, 0.8, 0.8, 0.8, 0.8]):  # one per twentieth of the run: each read
        pilot.observe(t, 1.0, val_loss=v)
    assert pilot.plateau_scale == 0.5
    assert [e.kind for e in pilot.events] == ["plateau"]
    assert pilot.lr(500) == pytest.approx(0.5 * plan.schedule(500))
    for t, v in zip(range(960, 1000, 13), [0.8, 0.8, 0.8, 0.8]):  # a stall whose third comes at the last step (999)
        pilot.observe(t, 1.0, val_loss=v)
    assert pilot.plateau_scale == 0.5 and [e.kind for e in pilot.events] == ["plateau"]  # nothing left to lower


def test_plateau_reads_validations_every_step_as_means_over_each_twentieth_of_the_run():
    """Validations every step (an eval every few steps) are averaged until 1/20 of the run has passed:
    noise that leaves three single validations in a row short of the best does not halve the LR while
    the mean improves; a real stall still does, after three readings; a resume mid-window reads the same."""
    plan = make_plan(_curve(), family="adam", train_steps=1000)  # warmup 50 steps
    pilot = Autopilot(plan, guard=False)
    for t in range(0, 600):  # improving 0.5% per twentieth of the run under +-2% alternating noise
        pilot.observe(t, 1.0, val_loss=1.0 - 1e-4 * t + (0.02 if t % 2 else -0.02))
    assert pilot.plateau_scale == 1.0 and pilot.events == []
    copy = Autopilot.from_state_dict(json.loads(json.dumps(pilot.state_dict())))
    for p in (pilot, copy):
        for t in range(600, 1000):  # stalled at 0.9
            p.observe(t, 1.0, val_loss=0.9)
    cuts = [e for e in pilot.events if e.kind == "plateau"]
    assert pilot.plateau_scale == 0.5 and len(cuts) == 1 and cuts[0].step >= 750
    assert "means over each 1/20 of the run" in cuts[0].message
    assert [(e.kind, e.step) for e in copy.events if e.kind != "resume"] == [("plateau", cuts[0].step)]
    # without the averaging the same noise halves the LR over and over (the rule reads every validation)
    every = Autopilot(plan, guard=False)
    import lrkit.autopilot.policy as policy

    old, policy.PLATEAU_READS = policy.PLATEAU_READS, 1000
    try:
        for t in range(0, 600):
            every.observe(t, 1.0, val_loss=1.0 - 1e-4 * t + (0.02 if t % 2 else -0.02))
    finally:
        policy.PLATEAU_READS = old
    assert len([e for e in every.events if e.kind == "plateau"]) > 10


def test_resume_from_state_dict_continues_exactly_without_a_finder():
    plan = make_plan(family="sgd", train_steps=600, peak_lr=1.2, shape=S.cosine(1.0, 600))
    q1 = Quadratic(nan_at=(50, 60))
    full = Autopilot(plan).attach(q1)
    lrs_full = _run(full, q1, 600)

    q2 = Quadratic(nan_at=(50, 60))
    first = Autopilot(plan).attach(q2)
    lrs_a = _run(first, q2, 300)
    saved = json.loads(json.dumps(first.state_dict()))   # plain JSON types
    x_saved, clock = q2.x, q2.clock
    q3 = Quadratic(nan_at=(50, 60))
    q3.x, q3.clock = x_saved, clock
    resumed = Autopilot.from_state_dict(saved).attach(q3)
    lrs_b = _run(resumed, q3, 300, start=300)
    assert lrs_a + lrs_b == lrs_full
    assert q3.x == q1.x
    assert [e.kind for e in resumed.events] == [e.kind for e in full.events] + ["resume"]


def test_fly_on_a_trainer_counts_the_finder_in_its_compute():
    class Noisy(Quadratic):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(0)
            self.x = 3.0

        def snapshot(self):
            return (self.x, self.rng.bit_generator.state)

        def restore(self, s):
            self.x, state = s
            self.rng.bit_generator.state = state

        def step(self, lr):
            g = 2 * self.x + 0.1 * self.rng.standard_normal()
            loss = self.x ** 2 + 1e-3
            self.x -= lr * g
            return loss

    flight = fly(Noisy(), family="sgd", train_steps=300)
    assert flight.final_val_loss < 0.01
    assert 0 < flight.pilot.plan.finder_cost_steps <= 0.3 * 300
    assert flight.compute_steps == 300 + flight.pilot.plan.finder_cost_steps


def test_a_rollback_rewinds_the_schedule_into_the_steps_left():
    """A scale 30x too high sends the run back to its start: it warms up again and still decays to
    the end of its budget; a NaN sends it back one snapshot period: the schedule barely moves. The
    rewind survives a resume."""
    T = 300
    for peak, nan_at in ((30.0, ()), (None, (150,))):  # None: the autopilot's own peak
        plan = make_plan(_curve(), family="adam", train_steps=T, peak_lr=peak)
        assert plan.warmup_steps > 0
        q = Quadratic(nan_at=nan_at)
        pilot = Autopilot(plan, plateau=False).attach(q)
        lrs = _run(pilot, q, T)
        (rb,) = [e for e in pilot.events if e.kind == "rollback"]
        t0, r, m = rb.step + 1, rb.data["restored_to"], pilot.multiplier
        assert r < t0 - 1 and (r == 0) == (peak == 30.0)
        # from t0 the schedule resumes where the restored state was trained, compressed into the steps left
        for t in (t0, t0 + 1, 200, T - 1):
            assert lrs[t] == pytest.approx(m * plan.schedule(r + (t - t0) * (T - r) / (T - t0)))
        assert lrs[T - 1] < 0.01 * max(lrs[t0:])
        if r == 0:  # back at the start: the warmup again, up to the autopilot's own peak
            assert lrs[t0] < lrs[t0 + 2] < lrs[t0 + 4]
            assert max(lrs[t0:]) == pytest.approx(plan.auto_peak_lr, rel=0.05)
        assert [pilot.position(t) for t in range(t0)] == list(range(t0))  # the steps before it keep their place
        resumed = Autopilot.from_state_dict(json.loads(json.dumps(pilot.state_dict())))
        assert [resumed.lr(t) for t in range(T)] == [pilot.lr(t) for t in range(T)]


def test_a_blow_up_at_the_start_is_not_forgiven_and_cuts_the_lr_a_decade():
    """A run killed at its start and stuck: no healthy stretch came before, so no 'bad batch'
    forgiveness, and the LR is cut 10x (not halved: past the start's stability edge by an unknown
    factor) on a rollback to the initial state; at 0.3 it then trains."""
    plan = make_plan(family="sgd", train_steps=400, peak_lr=3.0, shape=S.constant(1.0))
    t = Dying(rate=0.02)
    pilot = Autopilot(plan, plateau=False).attach(t)
    lrs = _run(pilot, t, 400)
    (rb,) = [e for e in pilot.events if e.kind == "rollback"]
    assert rb.data["restored_to"] == 0 and rb.data["new_multiplier"] == pytest.approx(0.1)
    assert "x0.1" in rb.message and "bad batch" not in rb.message
    assert lrs[-1] == pytest.approx(0.3) and not t.dead


def test_a_warm_restart_shape_gets_a_snapshot_before_each_restart():
    """A user's shape that jumps up (warm restarts every 100 steps): the guard snapshots the state
    before each restart (every 70 steps, off the snapshot period), so a restart that breaks the run
    is undone without losing a step; the autopilot's own warmup-then-decay shape takes none outside
    the periodic ones."""
    T = 400
    restarts = S.warm_restarts(1.0, first_cycle_steps=70, min_lr=0.01)
    plan = make_plan(_curve(), family="sgd", train_steps=T, peak_lr=0.1, shape=restarts)
    q = Quadratic()
    pilot = Autopilot(plan, plateau=False).attach(q)
    labels = set()
    for t in range(T):
        pilot.observe(t, q.step(pilot.lr(t)))
        labels |= set(pilot.guard.snapshot_steps)
    assert pilot.guard.snapshot_interval % 7 != 0
    assert {70, 140, 210, 280, 350} <= labels and pilot.events == []

    own = make_plan(_curve(), family="sgd", train_steps=T)
    q = Quadratic()
    pilot = Autopilot(own, plateau=False).attach(q)
    every = pilot.guard.snapshot_interval
    labels = set()
    for t in range(T):
        pilot.observe(t, q.step(pilot.lr(t)))
        labels |= set(pilot.guard.snapshot_steps)
    assert all(s % every == 0 for s in labels), (every, sorted(labels))


class _Big:
    """A state of 80 kB on a machine that says 100 kB are free."""

    def __init__(self):
        self.w = np.zeros(10_000)

    def snapshot(self):
        return self.w.copy()

    def restore(self, s):
        self.w = s

    def memory_available(self):
        return 100_000


def test_the_guards_memory_warning_reaches_the_autopilots_log_and_disk_storage_is_quiet(caplog, tmp_path):
    plan = make_plan(_curve(), family="adamw", train_steps=1000)
    with caplog.at_level(logging.WARNING, logger="lrkit.autopilot"):
        Autopilot(plan).attach(_Big())
    said = [r.getMessage() for r in caplog.records if r.name == "lrkit.autopilot"]
    assert len(said) == 1 and said[0].startswith("lrkit autopilot: the guard's snapshots kept in memory")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lrkit.autopilot"):
        pilot = Autopilot(plan, storage="disk", storage_dir=tmp_path).attach(_Big())
        path = pilot.guard.storage_path
        assert os.path.isdir(path) and os.path.dirname(path) == str(tmp_path)
        pilot.close()
    assert caplog.records == [] and not os.path.exists(path)
    with pytest.raises(AutopilotError, match="storage_dir is only used with storage='disk'"):
        Autopilot(plan, storage_dir=tmp_path)
