"""Formula parity of lrkit schedules with ``keras.optimizers.schedules`` (Keras 3, torch backend).

Keras is run with ``floatx = float64`` and called one scalar step at a time: that path computes
in float64 for every schedule (``CosineDecay`` called on an *array* of steps silently computes
in float32, and ``PiecewiseConstantDecay`` does not accept arrays at all). Tolerance:
``rtol=1e-12`` plus an absolute ``1e-12 * base_lr`` where the LR is ~0 — except
``CosineDecayRestarts`` with a non-integer ``t_mul`` (see that test).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
ks = keras.optimizers.schedules

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FAST = settings(max_examples=25, deadline=None)
lr_st = st.floats(1e-4, 1.0)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(old)


def steps_for(horizon: int) -> np.ndarray:
    """Every step up to just past the horizon, plus a few far-away ones."""
    return np.concatenate([np.arange(horizon + 30), [horizon + 1000, 10**6, 10**8]]).astype(np.float64)


def keras_lrs(sched, steps) -> np.ndarray:
    out = np.array([float(keras.ops.convert_to_numpy(sched(np.float64(t)))) for t in steps])
    assert keras.ops.convert_to_numpy(sched(np.float64(1.0))).dtype == np.float64
    return out


def same(mine, theirs, base):
    np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * base)


@FAST
@given(lr=lr_st, decay_steps=st.integers(1, 300), rate=st.floats(0.01, 1.0), stair=st.booleans())
def test_exponential_matches_exponentialdecay(lr, decay_steps, rate, stair):
    t = steps_for(800)
    mine = S.exponential(lr, gamma=rate, decay_steps=decay_steps, staircase=stair)(t)
    same(mine, keras_lrs(ks.ExponentialDecay(lr, decay_steps, rate, staircase=stair), t), lr)


@FAST
@given(lr=lr_st, step_size=st.integers(1, 300), gamma=st.floats(0.01, 1.0))
def test_step_decay_is_staircase_exponentialdecay(lr, step_size, gamma):
    t = steps_for(800)
    same(S.step_decay(lr, step_size, gamma)(t),
         keras_lrs(ks.ExponentialDecay(lr, step_size, gamma, staircase=True), t), lr)


@FAST
@given(bounds=st.lists(st.integers(0, 1000), min_size=1, max_size=5, unique=True),
       data=st.data())
def test_piecewise_constant_matches_piecewiseconstantdecay(bounds, data):
    bounds = sorted(bounds)
    values = data.draw(st.lists(st.floats(0.0, 1.0), min_size=len(bounds) + 1,
                                max_size=len(bounds) + 1))
    t = steps_for(bounds[-1] + 1)
    same(S.piecewise_constant(bounds, values)(t),
         keras_lrs(ks.PiecewiseConstantDecay(bounds, values), t), 1.0)


@FAST
@given(lr=lr_st, total=st.integers(1, 800), end_frac=st.floats(0.0, 2.0),
       power=st.floats(0.1, 4.0), cycle=st.booleans())
def test_polynomial_matches_polynomialdecay(lr, total, end_frac, power, cycle):
    """Equal to 1e-12 up to step 10**5. Far out with ``cycle=True``, Keras computes
    ``1 - t / horizon``, which loses digits to cancellation (t = 1e8: ~1e-8 relative);
    lrkit computes ``(horizon - t) / horizon``, exact — checked against rational arithmetic."""
    from fractions import Fraction

    end = lr * end_frac
    t = steps_for(3 * total if cycle else total)
    mine = S.polynomial(lr, total, end, power, cycle)(t)
    theirs = keras_lrs(ks.PolynomialDecay(lr, total, end, power=power, cycle=cycle), t)
    near = t < 10**5
    same(mine[near], theirs[near], lr)
    np.testing.assert_allclose(mine[~near], theirs[~near], rtol=1e-6, atol=1e-12 * lr)
    for step in t[~near].astype(int):
        horizon = total * max(1, -(-step // total)) if cycle else total
        remaining = float(Fraction(horizon - min(step, horizon), horizon))
        exact = (lr - end) * remaining**power + end
        assert S.polynomial(lr, total, end, power, cycle)(int(step)) == pytest.approx(exact, rel=1e-14, abs=1e-15)


@FAST
@given(lr=lr_st, decay_steps=st.integers(1, 300), rate=st.floats(0.0, 5.0), stair=st.booleans())
def test_inverse_time_matches_inversetimedecay(lr, decay_steps, rate, stair):
    t = steps_for(800)
    same(S.inverse_time(lr, decay_steps, rate, stair)(t),
         keras_lrs(ks.InverseTimeDecay(lr, decay_steps, rate, staircase=stair), t), lr)


@FAST
@given(lr=lr_st, total=st.integers(1, 1500), alpha=st.sampled_from([0.0, 0.0, 0.01, 0.5]))
def test_cosine_matches_cosinedecay(lr, total, alpha):
    t = steps_for(total)
    same(S.cosine(lr, total, min_lr=alpha * lr)(t),
         keras_lrs(ks.CosineDecay(lr, total, alpha=alpha), t), lr)


@FAST
@given(peak=lr_st, start_frac=st.floats(0.0, 1.0), w=st.integers(1, 300), total=st.integers(1, 1000),
       alpha=st.sampled_from([0.0, 0.1]))
def test_warmup_cosine_matches_cosinedecay_with_warmup(peak, start_frac, w, total, alpha):
    start = peak * start_frac
    t = steps_for(w + total)
    mine = S.warmup(S.cosine(peak, total, min_lr=alpha * peak), w, start_lr=start)(t)
    theirs = keras_lrs(ks.CosineDecay(start, total, alpha=alpha, warmup_target=peak,
                                      warmup_steps=w), t)
    same(mine, theirs, peak)


@settings(max_examples=15, deadline=None)
@given(lr=lr_st, first=st.integers(1, 150), t_mul=st.sampled_from([1.0, 2.0, 3.0]),
       m_mul=st.floats(0.3, 1.0), alpha=st.sampled_from([0.0, 0.1]))
def test_warm_restarts_matches_cosinedecayrestarts(lr, first, t_mul, m_mul, alpha):
    t = np.arange(1200, dtype=np.float64)
    mine = S.warm_restarts(lr, first, t_mul, min_lr=alpha * lr, m_mul=m_mul)(t)
    same(mine, keras_lrs(ks.CosineDecayRestarts(lr, first, t_mul=t_mul, m_mul=m_mul, alpha=alpha), t),
         lr)


@settings(max_examples=10, deadline=None)
@given(lr=lr_st, first=st.integers(1, 150), t_mul=st.floats(1.1, 2.5))
def test_warm_restarts_fractional_t_mul_matches_away_from_restarts(lr, first, t_mul):
    """With a fractional ``t_mul`` the restart steps are not integers, and Keras finds the cycle
    with ``floor(log(...)/log(t_mul))`` without correction: within ~1e-9 of a restart the two
    can pick neighbouring cycles. Everywhere else the values agree to 1e-9."""
    t = np.arange(1200, dtype=np.float64)
    mine = S.warm_restarts(lr, first, t_mul)(t)
    theirs = keras_lrs(ks.CosineDecayRestarts(lr, first, t_mul=t_mul), t)
    i = np.floor(np.log1p(t * (t_mul - 1) / first) / np.log(t_mul))
    starts = first * (t_mul ** np.array([i, i + 1]) - 1) / (t_mul - 1)
    away = np.min(np.abs(t - starts), axis=0) > 1e-6
    np.testing.assert_allclose(mine[away], theirs[away], rtol=1e-9, atol=1e-12 * lr)
