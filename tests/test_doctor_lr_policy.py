"""The guard's LR policy on its own (pure core): property tests over its inputs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.doctor.lr_policy import PROBATION_FACTOR, LRPolicy

steps = st.integers(0, 10_000)


@settings(max_examples=200, deadline=None)
@given(step=steps, back=st.integers(0, 500), interval=st.integers(1, 100), gamma=st.floats(0.01, 0.9),
       r=st.floats(1.5, 1e4), forgive=st.booleans(), untried=st.booleans())
def test_a_held_raise_is_always_undone(step, back, interval, gamma, r, forgive, untried):
    p = LRPolicy(gamma, forgive)
    target = max(0, step - back)
    got = p.factor(step=step, onset=step, target=target, untried=untried, interval=interval, held_raise=r,
                   last=None, multiplier=1.0)
    assert got == min(1 / r, 1 / 1.5) and p.probation is None


@settings(max_examples=200, deadline=None)
@given(step=steps, back=st.integers(0, 500), onset_back=st.integers(-50, 500), interval=st.integers(1, 100),
       gamma=st.floats(0.01, 0.9), untried=st.booleans())
def test_the_factor_is_one_or_gamma_and_a_run_that_never_trained_is_never_forgiven(
        step, back, onset_back, interval, gamma, untried):
    p = LRPolicy(gamma)
    target = max(0, step - back)
    onset = step - onset_back
    got = p.factor(step=step, onset=onset, target=target, untried=untried, interval=interval, held_raise=None,
                   last=None, multiplier=1.0)
    assert got in (1.0, gamma)
    assert (got == 1.0) == (not untried and onset >= target)
    assert LRPolicy(gamma, forgive_first=False).factor(
        step=step, onset=onset, target=target, untried=untried, interval=interval, held_raise=None, last=None,
        multiplier=1.0) == gamma


@settings(max_examples=100, deadline=None)
@given(interval=st.integers(1, 50), gamma=st.floats(0.01, 0.9), wait=st.integers(0, 400))
def test_a_recovery_ramps_monotonically_back_to_the_level_before_the_trouble(interval, gamma, wait):
    p = LRPolicy(gamma)
    assert p.factor(step=100, onset=100, target=90, untried=False, interval=interval, held_raise=None,
                    last=None, multiplier=1.0) == 1.0
    # the second problem right after the forgiven one: a halving on probation (gamma when milder)
    cut = max(gamma, PROBATION_FACTOR)
    assert p.factor(step=101, onset=101, target=90, untried=False, interval=interval, held_raise=None,
                    last=(100, 90, True), multiplier=1.0) == cut
    m, seen = cut, [cut]
    for s in range(102, 102 + wait + 8 * interval):
        new = p.tick(s, multiplier=m, healthy_since=lambda label: s >= 102 + wait)
        if new is not None:
            m = new
            seen.append(m)
    assert seen == sorted(seen) and m == 1.0 and p.recoveries and p.recoveries[0] >= 102 + wait
    state = p.state_dict()
    q = LRPolicy(gamma)
    q.load_state_dict(state)
    assert q.state_dict() == state


def test_a_held_raise_during_probation_ends_it():
    """Undoing a raise knows its cause: a pending probation must not later bring back a level from
    before the raise."""
    p = LRPolicy(0.1)
    common = dict(onset=100, target=90, untried=False, interval=10, multiplier=1.0)
    assert p.factor(step=100, held_raise=None, last=None, **common) == 1.0
    assert p.factor(step=104, held_raise=None, last=(100, 90, True), **common) == 0.5 and p.probation
    assert p.factor(step=110, held_raise=30.0, last=(104, 90, False), **common) == 1 / 30
    assert p.probation is None
    assert p.tick(200, multiplier=0.5 / 30, healthy_since=lambda label: True) is None and not p.recoveries


def test_a_nan_at_an_untried_start_is_kept_once_per_run_and_that_survives_a_checkpoint():
    common = dict(onset=8, target=0, untried=True, interval=50, held_raise=None, multiplier=1.0)
    p = LRPolicy(0.1)
    assert p.factor(step=8, last=None, evidence_free=True, **common) == 1.0 and p.start_forgiven
    back = LRPolicy(0.1)
    back.load_state_dict(p.state_dict())
    for q in (p, back):  # the second one from the untried start is the LR: cut, whatever its evidence
        assert q.factor(step=12, last=(8, 0, True), evidence_free=True, **common) == 0.1
    assert LRPolicy(0.1).factor(step=8, last=None, evidence_free=False, **common) == 0.1  # a blow-up first
    assert LRPolicy(0.1, forgive_first=False).factor(step=8, last=None, evidence_free=True, **common) == 0.1
    old = LRPolicy(0.1)
    old.load_state_dict({"pending": None, "ramp": None, "recovered_at": None, "closed": False, "recoveries": []})
    assert not old.start_forgiven  # a state saved before the flag existed
