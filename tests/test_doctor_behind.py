"""Behind a known short run: a run trained far above the LR ceiling that is still worse than what a
short run at an LR known to train reached is diverging (lrkit.doctor.signs.behind), and the
autopilot brings a user scale that damaged the network back to its own."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lrkit import schedules as S
from lrkit.autopilot import Autopilot, AutopilotError, make_plan
from lrkit.autopilot.plan import AutopilotPlan, finder_reference
from lrkit.doctor import Doctor
from lrkit.finder.result import FinderResult
from tests._toy_trainers import Damaged


def feed(doc, losses, lrs, vals=None):
    d = None
    for t, (loss, lr) in enumerate(zip(losses, lrs)):
        d = doc.observe(t, float(loss), lr=float(lr), val_loss=None if vals is None else vals.get(t))
    return d


def damaged_losses(n=120, seed=0):
    """Learns for 5 steps, one spike at step 5, then a noisy level of 1.0 (0.3 is what it learns to)."""
    rng = np.random.default_rng(seed)
    head = list(2.3 * np.exp(-0.05 * np.arange(5)) + 0.3) + [10.0]
    return np.array(head + list(np.exp(0.1 * rng.standard_normal(n - 6))))


@pytest.mark.parametrize("seed", range(4))
def test_a_run_above_the_ceiling_still_behind_the_reference_is_diverging_from_its_first_step_above(seed):
    losses = damaged_losses(seed=seed)
    lrs = [0.001] * 3 + [1.0] * (len(losses) - 3)  # above the ceiling from step 3 on
    doc = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "train"))
    verdicts = [doc.observe(t, float(v), lr=lrs[t]).verdict for t, v in enumerate(losses)]
    first = verdicts.index("diverging")
    assert first == 4 * 16 - 1  # judged once 4x the reference's steps are in (steps 0..63), then at once
    d = doc.diagnosis
    assert d.step == 3 and d.evidence["stuck"] == 1.0 and d.evidence["behind_reference"] > 1.25
    assert "above the ceiling" in d.message and d.advice[0].startswith("lower the LR")


@pytest.mark.parametrize("case", ["no ceiling", "no reference", "below the ceiling", "ahead of the reference"])
def test_the_sign_speaks_only_with_both_facts_above_the_ceiling_and_behind(case):
    losses = damaged_losses()
    lrs = [1.0] * len(losses)
    kw = {"lr_ceiling": 0.01, "reference_run": (16, 0.5, "train")}
    if case == "no ceiling":
        kw.pop("lr_ceiling")
    elif case == "no reference":
        kw.pop("reference_run")
    elif case == "below the ceiling":
        lrs = [0.005] * len(losses)
    else:
        kw["reference_run"] = (16, 0.9, "train")  # the run's best level (~0.85) is not 25% behind 0.9
    doc = Doctor(window=20, **kw)
    feed(doc, losses, lrs)
    assert not any("behind_reference" in h.evidence for h in doc.history)
    assert doc.signs["behind_reference"].finding is None


def test_a_good_lr_above_the_ceiling_that_passes_the_reference_is_left_alone():
    rng = np.random.default_rng(1)
    good = 2.3 * np.exp(-np.arange(200) / 15) * np.exp(0.05 * rng.standard_normal(200)) + 0.1
    doc = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "train"))
    assert feed(doc, good, [1.0] * 200).verdict == "healthy"


def test_with_a_validation_reference_it_compares_validation_losses_and_needs_two():
    losses = damaged_losses(n=150)
    lrs = [1.0] * len(losses)
    one = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "val"))
    assert feed(one, losses, lrs, vals={100: 1.0}).verdict != "diverging"  # one validation: not yet
    two = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "val"))
    d = feed(two, losses, lrs, vals={60: 1.1, 100: 1.0})
    assert d.verdict == "diverging" and d.evidence["run_best"] == 1.0
    ok = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.9, "val"))  # 1.0 is within 25% of 0.9
    feed(ok, losses, lrs, vals={60: 1.1, 100: 1.0})
    assert ok.signs["behind_reference"].finding is None


def test_its_state_resumes_and_a_bad_reference_is_one_clear_error():
    losses, lrs = damaged_losses(), [1.0] * 120
    a = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "val"))
    vals = {30: 1.2, 50: 1.1}
    feed(a, losses[:55], lrs[:55], vals)
    b = Doctor(window=20, lr_ceiling=0.01, reference_run=(16, 0.5, "val"))
    b.load_state_dict(a.state_dict())
    assert b.signs["behind_reference"].state_dict() == a.signs["behind_reference"].state_dict()
    assert b.signs["behind_reference"].n_val == 2 and b.signs["behind_reference"].above_since == 0
    for bad in [(0, 0.5, "val"), (16, math.nan, "val"), (16, 0.5, "test"), (16, 0.5), 0.5]:
        with pytest.raises(ValueError, match=r"reference_run must be None or \(steps, loss, kind\)"):
            Doctor(reference_run=bad)


def _result(score=0.5, steps=16, scored_by="mean training loss, last third"):
    lrs = np.geomspace(1e-5, 1.0, 40)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3) * 0.5 - 0.5
    details = {"score": scored_by, "candidates": [
        {"lr": 0.004, "score": None, "steps": 3, "rejected": "non-finite loss"},
        {"lr": 0.002, "score": score, "steps": steps}, {"lr": 0.0006, "score": score * 1.3, "steps": steps}]}
    return FinderResult(lrs=lrs, losses=losses, smoothed_losses=losses, suggestion=1e-3, method="verified",
                        details=details)


def test_the_plan_carries_the_finders_best_short_run_and_older_plans_still_load():
    assert finder_reference(_result().details) == (16, 0.5, "train")
    assert finder_reference(_result(scored_by="evaluate()").details) == (16, 0.5, "val")
    assert finder_reference({"candidates": []}) is None and finder_reference(None) is None
    plan = make_plan(_result(), family="sgd", train_steps=300, shape=S.constant(1.0))
    assert plan.finder_reference == (16, 0.5, "train")
    d = plan.to_dict()
    assert AutopilotPlan.from_dict(d) == plan
    d.pop("finder_reference")  # a plan saved before the reference existed
    assert AutopilotPlan.from_dict(d).finder_reference is None
    for bad in ([0, 0.5, "val"], [16, None, "val"], [16, 0.5, "test"], [16, 0.5]):  # the doctor's own check
        with pytest.raises(AutopilotError, match="finder_reference must be"):
            AutopilotPlan.from_dict({**d, "finder_reference": bad})
    assert Autopilot(plan).doctor.config["reference_run"] == (16, 0.5, "train")
    assert not any(r.startswith("watch:") for r in plan.reasons)  # the autopilot's own peak: nothing to say
    hot = make_plan(_result(), family="sgd", train_steps=300, shape=S.constant(1.0), peak_lr=0.03)
    watch = [r for r in hot.reasons if r.startswith("watch:")]
    assert len(watch) == 1 and "0.5 training loss in 16 steps" in watch[0] and "after 64 steps" in watch[0]


def test_a_user_scale_that_damaged_the_network_is_rolled_back_to_the_autopilots_own():
    # the autopilot's own peak is 1e-3 (ceiling 4e-3); the user's 0.03 damages the toy network
    plan = make_plan(_result(score=0.5), family="sgd", train_steps=400, shape=S.constant(1.0), peak_lr=0.03)
    net = Damaged(edge=0.01)
    pilot = Autopilot(plan, plateau=False).attach(net)
    for t in range(400):
        pilot.observe(t, net.step(pilot.lr(t)))
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert len(rollbacks) == 1 and "autopilot's own scale" in rollbacks[0].message
    assert 4 * 16 <= rollbacks[0].step < 4 * 16 + 10 and "16 steps at an LR below the ceiling reached" in rollbacks[0].message
    assert not net.damaged and net.evaluate() < 0.35  # trained at its own scale from a healthy state
    # without the reference only the 200-step "stuck" rule catches it, 130 steps of the run later
    plain = Damaged(edge=0.01)
    blind = Autopilot(plan, plateau=False, doctor=Doctor(lr_ceiling=4e-3)).attach(plain)
    for t in range(400):
        blind.observe(t, plain.step(blind.lr(t)))
    assert [e.step for e in blind.events if e.kind == "rollback"] == [199]


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(5, 60), tau=st.floats(5, 80), floor=st.floats(0.01, 0.5), noise=st.floats(0.0, 0.3),
       over=st.floats(1.5, 100), seed=st.integers(0, 10_000))
def test_a_run_that_gets_to_the_reference_is_never_called_behind(steps, tau, floor, noise, over, seed):
    """Whatever the reference's length, the run's speed, floor and noise, and however far above the
    ceiling: a run whose level reaches the reference's loss within 4x its steps is not behind it
    (the reference is what the run's own curve shows at that length, 25% above its floor)."""
    rng = np.random.default_rng(seed)
    n = max(8 * steps, 120)
    t = np.arange(n)
    clean = 2.3 * np.exp(-t / tau) + floor
    ref = float(clean[min(4 * steps, n - 1) // 2]) * 1.0  # the run is there by half the patience
    losses = clean * np.exp(noise * rng.standard_normal(n))
    doc = Doctor(window=20, lr_ceiling=1.0, reference_run=(steps, ref, "train"))
    for i, loss in enumerate(losses):
        doc.observe(i, float(loss), lr=over)
    assert not any("behind_reference" in h.evidence for h in doc.history)
