"""The autopilot's early-overfitting restart (lrkit.autopilot.overfit)."""
from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S
from lrkit.autopilot import Autopilot, make_plan, overfit


def test_docstring_examples():
    result = doctest.testmod(overfit)
    assert result.attempted > 0 and result.failed == 0


class Flow:
    """A run along the gradient flow: its state is the summed LR tau; the training loss falls as
    exp(-tau), the validation loss is lowest at tau = 2 and climbs after it (overfitting)."""

    def __init__(self):
        self.tau, self.restores = 0.0, 0

    def snapshot(self):
        return self.tau

    def restore(self, s):
        self.tau, self.restores = s, self.restores + 1

    def step(self, lr):
        loss = math.exp(-self.tau) + 1e-3
        self.tau += lr
        return loss

    def evaluate(self):
        return 0.1 + 0.1 * math.log(max(self.tau, 1e-9) / 2.0) ** 2


def _fly(pilot, trainer, steps, every, start=0):
    lrs = []
    for t in range(start, start + steps):
        lrs.append(pilot.lr(t))
        loss = trainer.step(lrs[-1])
        val = trainer.evaluate() if (t + 1) % every == 0 else None
        pilot.observe(t, loss, val_loss=val)
    return lrs


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_run_past_its_best_validation_early_restarts_once_with_the_summed_lr_halved(storage, tmp_path):
    T = 400
    plan = make_plan(family="sgd", train_steps=T, peak_lr=0.2, shape=S.constant(1.0))  # tau = 2 at step 10
    flow = Flow()
    pilot = Autopilot(plan, storage=storage, storage_dir=tmp_path if storage == "disk" else None).attach(flow)
    lrs = _fly(pilot, flow, T, every=40)
    restarts = [e for e in pilot.events if e.kind == "rollback"]
    assert len(restarts) == 1 and restarts[0].data["verdict"] == "overfitting"
    ev = restarts[0]
    assert "overfitting early" in ev.message and "Restarted from the initial state" in ev.message
    assert ev.step == 159  # best validation at step 39 (the first), then 3 more, each higher
    assert flow.restores == 1
    rec = pilot.guard.interventions[-1]
    assert (rec.verdict, rec.restored_to, rec.new_multiplier) == ("overfitting", 0, rec.old_multiplier)
    assert rec.retry == 0  # not counted against the guard's max_retries
    assert min(pilot.guard.snapshot_steps) == 0 and all(s > 159 for s in pilot.guard.snapshot_steps if s)
    tau_best = ev.data["evidence"]["summed_lr_at_best"]
    assert tau_best == pytest.approx(0.2 * 40)
    # the rest of the run sums to half the LR summed up to the best validation, from the initial state
    assert sum(lrs[160:]) == pytest.approx(overfit.TAU_FRACTION * tau_best, rel=1e-6)
    assert flow.tau == pytest.approx(overfit.TAU_FRACTION * tau_best, rel=1e-6)
    # ... which ends nearer the best point than the run that went on would have
    assert flow.evaluate() < 0.1 + 0.1 * math.log(0.2 * T / 2.0) ** 2
    pilot.close()


def test_a_healthy_run_and_a_late_rise_are_left_alone():
    T = 400
    plan = make_plan(family="sgd", train_steps=T, peak_lr=0.004, shape=S.constant(1.0))  # tau reaches 1.6 < 2
    flow = Flow()
    pilot = Autopilot(plan).attach(flow)
    lrs = _fly(pilot, flow, T, every=40)
    assert flow.restores == 0 and not pilot.events and lrs == [0.004] * T
    # the best point passed after a third of the run: the rise shows only after half of it
    plan = make_plan(family="sgd", train_steps=T, peak_lr=2.0 / 150, shape=S.constant(1.0))
    flow = Flow()
    pilot = Autopilot(plan, plateau=False).attach(flow)
    _fly(pilot, flow, T, every=40)
    assert flow.restores == 0 and not [e for e in pilot.events if e.kind == "rollback"]


def test_a_rising_validation_loss_with_a_training_loss_that_does_not_fall_is_not_overfitting():
    evals = [(39, 0.5, 4.0, 1.0), (79, 0.6, 8.0, 0.95), (119, 0.65, 12.0, 0.9), (159, 0.7, 16.0, 0.85)]
    assert overfit.overfit_restart(evals, 400) is None           # training level fell 15% < 20%
    drop = [(s, v, tau, lvl * 0.5 if s > 39 else lvl) for s, v, tau, lvl in evals]
    assert overfit.overfit_restart(drop, 400) == 0
    noisy = [drop[0], drop[1], (119, 0.51, 12.0, 0.45), drop[3]]  # one within 5% of the best
    assert overfit.overfit_restart(noisy, 400) is None
    assert overfit.overfit_restart(drop, 300) is None           # step 160 of 300: past half the run
    slow = [drop[0], (79, 0.51, 8.0, 0.5), (119, 0.58, 12.0, 0.5), (159, 0.64, 16.0, 0.45), (199, 0.7, 20.0, 0.4)]
    assert overfit.overfit_restart(slow, 400) == 0               # a slow rise: the last three count
    negative = [(s, v - 1.0, tau, lvl) for s, v, tau, lvl in slow]   # an NLL below zero: ratios mean nothing
    assert overfit.overfit_restart(negative, 400) is None
    jumpy = [drop[0], (79, 0.6, 8.0, 0.5), (119, 0.52, 12.0, 0.5), (159, 0.7, 16.0, 0.45), (199, 0.55, 20.0, 0.4)]
    assert overfit.overfit_restart(jumpy, 400) is None           # no higher than the validations' own swings


def test_a_training_set_already_fit_needs_no_further_fall():
    # the training loss at 1e-5 of a start of 1.1 when the validation loss was best, noisy since
    evals = [(29, 0.16, 4.0, 2e-5), (59, 0.158, 8.0, 5e-6), (89, 0.174, 11.0, 1e-5), (119, 0.18, 13.0, 3e-5),
             (149, 0.183, 15.0, 4e-5)]
    assert overfit.overfit_restart(evals, 300) is None                   # no fall, no start given
    assert overfit.overfit_restart(evals, 300, start_level=1.1) == 1     # under 0.1% of the start
    assert overfit.overfit_restart(evals, 300, start_level=0.01) is None  # 0.4% of this start: not fit


def test_healthy_runs_with_noisy_validation_losses_are_rarely_restarted():
    # converged runs whose validation loss swings 5% from one validation to the next (30 of them, as
    # a Keras run validated every epoch), the training loss falling all along: the worst case
    rng = np.random.default_rng(0)
    fired = 0
    for _ in range(300):
        tau, floor, evals = rng.uniform(10, 500), rng.uniform(0.05, 1.0), []
        for k in range(30):
            s = int((k + 1) * 1000 / 30) - 1
            v = floor * (1 + 3 * np.exp(-s / tau)) * np.exp(0.05 * rng.standard_normal())
            evals.append((s, float(v), float(s), 2.0 * math.exp(-2 * s / tau)))
            if overfit.overfit_restart(evals, 1000, start_level=2.0) is not None:
                fired += 1
                break
    assert fired <= 9  # 3%; without the noise term 10% of such runs were restarted


@settings(max_examples=200, deadline=None)
@given(vals=st.lists(st.floats(0.01, 10.0), min_size=4, max_size=12),
       levels=st.lists(st.floats(1e-4, 10.0), min_size=12, max_size=12))
def test_the_rule_fires_only_on_a_best_followed_by_three_higher_validations_and_a_falling_training_loss(vals, levels):
    evals = [(10 * (k + 1) - 1, v, float(k + 1), levels[k]) for k, v in enumerate(vals)]
    b = overfit.overfit_restart(evals, 10_000)
    best = int(np.argmin(vals))
    if b is not None:
        assert b == best and len(vals) - 1 - best >= overfit.AFTER
        assert min(vals[-overfit.AFTER:]) > vals[best] * (1 + overfit.TOLERANCE)
        assert levels[len(vals) - 1] < (1 - overfit.TRAIN_DROP) * levels[best]
    if all(a >= c for a, c in zip(vals, vals[1:])):   # never rising: never overfitting
        assert b is None


def test_no_restart_without_a_guard_after_a_rollback_or_in_a_resumed_run():
    T = 400
    plan = make_plan(family="sgd", train_steps=T, peak_lr=0.2, shape=S.constant(1.0))
    flow = Flow()
    unguarded = Autopilot(plan, guard=False)
    _fly(unguarded, flow, T, every=40)
    assert flow.restores == 0 and not [e for e in unguarded.events if e.kind == "rollback"]

    flow = Flow()
    first = Autopilot(plan).attach(flow)
    _fly(first, flow, 100, every=40)
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = Autopilot.from_state_dict(saved).attach(flow)
    _fly(resumed, flow, T - 100, every=40, start=100)
    assert not [e for e in resumed.events if e.kind == "rollback"]

    class NanOnce(Flow):
        clock = 0

        def step(self, lr):  # a NaN at the 6th step only (the clock is never rewound)
            loss, self.clock = super().step(lr), self.clock + 1
            return math.nan if self.clock == 6 else loss
    flow = NanOnce()
    pilot = Autopilot(plan).attach(flow)
    _fly(pilot, flow, T, every=40)
    kinds = [e.data.get("verdict") for e in pilot.events if e.kind == "rollback"]
    assert kinds == ["nan"]  # the guard's rollback turned the overfitting rule off


def test_a_run_resumed_after_its_restart_goes_on_exactly_as_the_uninterrupted_one():
    T = 400
    plan = make_plan(family="sgd", train_steps=T, peak_lr=0.2, shape=S.linear(1.0, 0.0, T))
    full_flow = Flow()
    full = Autopilot(plan).attach(full_flow)
    lrs_full = _fly(full, full_flow, T, every=40)
    assert [e.data["verdict"] for e in full.events if e.kind == "rollback"] == ["overfitting"]

    flow = Flow()
    first = Autopilot(plan).attach(flow)
    lrs_a = _fly(first, flow, 250, every=40)             # past the restart (step 159)
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = Autopilot.from_state_dict(saved).attach(flow)
    lrs_b = _fly(resumed, flow, T - 250, every=40, start=250)
    assert lrs_a + lrs_b == pytest.approx(lrs_full, rel=1e-12)
    assert flow.tau == pytest.approx(full_flow.tau, rel=1e-12)


def _finder_result(many: bool):
    from lrkit.finder.result import FinderResult

    lrs = np.geomspace(1e-5, 1.0, 40)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3)
    details = {"run_shape": {"epochs": 40.0, "params_per_example": 3.0, "examples": 100.0, "many_epochs": many}}
    if many:
        details["many_epochs_factor"] = 5.0
    return FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=0.2, method="verified",
                        details=details)


def test_a_plan_whose_finder_expected_the_overfitting_makes_no_restart_a_users_scale_does():
    T = 400
    own = make_plan(_finder_result(True), family="sgd", train_steps=T, shape=S.constant(1.0))
    assert own.many_epochs and any("many epochs" in r and "40 passes" in r for r in own.reasons)
    back = type(own).from_dict(json.loads(json.dumps(own.to_dict())))
    assert back.many_epochs is True
    flow = Flow()
    pilot = Autopilot(own).attach(flow)
    _fly(pilot, flow, T, every=40)
    assert flow.restores == 0 and not [e for e in pilot.events if e.kind == "rollback"]
    # the same scale from a finder that did not expect it, or given by the user: the rule is on
    plain = make_plan(_finder_result(False), family="sgd", train_steps=T, shape=S.constant(1.0))
    user = make_plan(_finder_result(True), family="sgd", train_steps=T, shape=S.constant(1.0), peak_lr=0.2)
    for plan in (plain, user):
        assert not plan.many_epochs and plan.peak_lr == own.peak_lr
        flow = Flow()
        pilot = Autopilot(plan).attach(flow)
        _fly(pilot, flow, T, every=40)
        assert [e.data["verdict"] for e in pilot.events if e.kind == "rollback"] == ["overfitting"]
    # a plan saved before the field existed reads as False; a bad value is refused by name
    old = own.to_dict()
    del old["many_epochs"]
    assert type(own).from_dict(old).many_epochs is False
    with pytest.raises(Exception, match="many_epochs must be true or false"):
        type(own).from_dict({**own.to_dict(), "many_epochs": "yes"})
