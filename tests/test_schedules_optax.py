"""Formula parity of lrkit schedules with optax schedules (``jax_enable_x64``, float64).

optax schedules are evaluated on a whole float64 array of steps. Tolerance ``rtol=1e-12`` plus
``1e-12 * base_lr`` absolute where the LR is ~0.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
pytestmark = pytest.mark.jax


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """float64 JAX for this module only (restored after, for other modules in the process)."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)

FAST = settings(max_examples=25, deadline=None)
lr_st = st.floats(1e-4, 1.0)


# One fixed array of steps for every test (all horizons stay below 3000): JAX caches its
# compiled operations by shape, so a fixed shape keeps the file fast.
STEPS = np.concatenate([np.arange(3100), [4000, 10**4, 10**6, 2 * 10**9]]).astype(np.float64)


def steps_for(horizon: int) -> np.ndarray:
    assert horizon + 30 < 3100
    return STEPS


def run(fn, t, *, scalar_only: bool = False) -> np.ndarray:
    """Evaluate an optax schedule on integer (int64) step counts, like optax's own counter.

    With *float* counts XLA turns ``count / transition_steps`` into a multiplication by the
    reciprocal, and ``exponential_decay(staircase=True)`` then steps one count late at some
    exact multiples (e.g. ``transition_steps=49`` at count 49.0); with integer counts it is
    exact. ``scalar_only`` schedules (the ``piecewise_interpolate`` family) are ``vmap``-ed.
    """
    counts = jax.numpy.asarray(t, dtype=jax.numpy.int64)
    out = np.asarray(jax.vmap(fn)(counts) if scalar_only else fn(counts))
    assert out.dtype == np.float64
    return np.broadcast_to(out, t.shape)


def same(mine, theirs, base):
    np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * base)


@FAST
@given(lr=lr_st)
def test_constant(lr):
    t = steps_for(10)
    same(S.constant(lr)(t), run(optax.constant_schedule(lr), t), lr)


@FAST
@given(lr=lr_st, end_frac=st.floats(0.0, 2.0), power=st.floats(0.1, 4.0), total=st.integers(1, 2000))
def test_polynomial_matches_polynomial_schedule(lr, end_frac, power, total):
    t = steps_for(total)
    # XLA evaluates count / total as count * (1 / total): 1 - frac can be ~1e-16 instead of 0
    # at the end, which a power p < 1 amplifies to ~(1e-16)**p; allow exactly that much.
    atol = lr * max(1e-12, 10 * (4.5e-16) ** power)
    np.testing.assert_allclose(S.polynomial(lr, total, lr * end_frac, power)(t),
                               run(optax.polynomial_schedule(lr, lr * end_frac, power, total), t),
                               rtol=1e-12, atol=atol)


@FAST
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), total=st.integers(1, 2000))
def test_linear_matches_linear_schedule(a, b, total):
    t = steps_for(total)
    same(S.linear(a, b, total)(t), run(optax.linear_schedule(a, b, total), t), 1.0)


@FAST
@given(lr=lr_st, rate=st.floats(0.01, 1.0), decay_steps=st.integers(1, 300), stair=st.booleans())
def test_exponential_matches_exponential_decay(lr, rate, decay_steps, stair):
    """Equal, except that optax's staircase can switch one step late at an exact multiple of
    ``decay_steps``: XLA computes ``count / decay_steps`` as ``count * (1 / decay_steps)``,
    e.g. 49 * (1/49) = 0.9999999999999999, floored to 0. lrkit divides exactly (NumPy)."""
    t = steps_for(2000)
    mine = S.exponential(lr, rate, decay_steps, stair)
    theirs = run(optax.exponential_decay(lr, decay_steps, rate, staircase=stair), t)
    late = np.floor(t * (1.0 / decay_steps)) != np.floor(t / decay_steps) if stair else t < 0
    same(mine(t[~late]), theirs[~late], lr)
    same(mine(t[late] - 1), theirs[late], lr)  # one stair late, never anything else


@FAST
@given(lr=lr_st, total=st.integers(1, 3000 - 40), alpha=st.sampled_from([0.0, 0.0, 0.01, 0.5]))
def test_cosine_matches_cosine_decay_schedule(lr, total, alpha):
    t = steps_for(total)
    same(S.cosine(lr, total, alpha * lr)(t), run(optax.cosine_decay_schedule(lr, total, alpha), t), lr)


@FAST
@given(peak=lr_st, start_frac=st.floats(0.0, 1.0), w=st.integers(1, 500), total=st.integers(1, 2000),
       end_frac=st.sampled_from([0.0, 0.1]))
def test_warmup_cosine_matches_warmup_cosine_decay_schedule(peak, start_frac, w, total, end_frac):
    t = steps_for(w + total)
    mine = S.warmup(S.cosine(peak, total, peak * end_frac), w, start_lr=peak * start_frac)
    assert mine.total_steps == w + total  # optax's decay_steps includes the warmup
    theirs = optax.warmup_cosine_decay_schedule(peak * start_frac, peak, w, w + total, peak * end_frac)
    same(mine(t), run(theirs, t), peak)


@FAST
@given(lr=lr_st, b1=st.integers(1, 500), b2=st.integers(1, 500), total=st.integers(1, 500))
def test_join_matches_join_schedules(lr, b1, b2, total):
    bounds = [b1, b1 + b2]
    parts = [S.linear(0.0, lr, b1), S.cosine(lr, total), S.constant(lr / 3)]
    natives = [optax.linear_schedule(0.0, lr, b1), optax.cosine_decay_schedule(lr, total),
               optax.constant_schedule(lr / 3)]
    t = steps_for(bounds[-1] + 10)
    same(S.join(parts, bounds)(t), run(optax.join_schedules(natives, bounds), t), lr)


@FAST
@given(lr=lr_st, bounds=st.lists(st.integers(1, 1000), min_size=1, max_size=5, unique=True),
       data=st.data())
def test_piecewise_constant_matches_optax_one_step_earlier(lr, bounds, data):
    """optax switches at ``count >= b`` (Keras at ``step > b``): optax ``{b: s}`` is boundary
    ``b - 1`` here, with the running product of the scales as values."""
    bounds = sorted(bounds)
    scales = data.draw(st.lists(st.floats(0.0, 2.0), min_size=len(bounds), max_size=len(bounds)))
    values = list(lr * np.cumprod([1.0, *scales]))
    t = steps_for(bounds[-1] + 5)
    theirs = optax.piecewise_constant_schedule(lr, dict(zip(bounds, scales)))
    same(S.piecewise_constant([b - 1 for b in bounds], values)(t), run(theirs, t), lr)


@FAST
@given(lr=lr_st, bounds=st.lists(st.integers(1, 1000), min_size=1, max_size=5, unique=True),
       data=st.data())
def test_piecewise_linear_matches_piecewise_interpolate_schedule(lr, bounds, data):
    bounds = sorted(bounds)
    scales = data.draw(st.lists(st.floats(0.01, 2.0), min_size=len(bounds), max_size=len(bounds)))
    values = list(lr * np.cumprod([1.0, *scales]))
    t = steps_for(bounds[-1] + 5)
    theirs = optax.piecewise_interpolate_schedule("linear", lr, dict(zip(bounds, scales)))
    same(S.piecewise_linear([0, *bounds], values)(t), run(theirs, t, scalar_only=True), lr)


@st.composite
def onecycle_match(draw):
    """torch-style one_cycle args and the optax arguments that put the phase ends in the same
    places: optax's ends are int(pct * T') and T'; torch's pT - 1 and T - 1."""
    total = draw(st.integers(20, 2000))
    k = draw(st.integers(2, total // 2 - 1))  # k = pct_start * total, a whole number
    return total, k


@FAST
@given(lr=lr_st, tk=onecycle_match(), div=st.floats(1.0, 100.0), fdiv=st.floats(1.0, 1e5))
def test_one_cycle_cos_matches_cosine_onecycle_schedule(lr, tk, div, fdiv):
    total, k = tk
    pct = k / total
    mine = S.one_cycle(lr, total, pct_start=pct, div_factor=div, final_div_factor=fdiv)
    assume(float(pct * total) - 1 == k - 1)  # torch computes the phase end in floating point
    p_opt = (k - 1 + 0.5) / (total - 1)  # int(p_opt * (total - 1)) == k - 1
    theirs = optax.cosine_onecycle_schedule(total - 1, lr, p_opt, div, fdiv)
    t = steps_for(total)
    same(mine(t), run(theirs, t, scalar_only=True), lr)


@FAST
@given(lr=lr_st, tk=onecycle_match(), div=st.floats(1.0, 100.0), fdiv=st.floats(1.0, 1e5))
def test_one_cycle_linear_three_phase_matches_linear_onecycle_schedule(lr, tk, div, fdiv):
    total, k = tk
    pct = k / total
    assume(float(pct * total) - 1 == k - 1 and float(2 * pct * total) - 2 == 2 * k - 2)
    mine = S.one_cycle(lr, total, pct_start=pct, anneal_strategy="linear", div_factor=div,
                       final_div_factor=fdiv, three_phase=True)
    n = total - 1
    theirs = optax.linear_onecycle_schedule(n, lr, (k - 1 + 0.5) / n, (2 * k - 2 + 0.5) / n, div, fdiv)
    t = steps_for(total)
    same(mine(t), run(theirs, t, scalar_only=True), lr)


# --- the same formulas, traced by JAX (what an optax export can build on) -----------------------
from test_schedules import any_schedule  # noqa: E402  (tests/ is on sys.path under pytest)


@settings(max_examples=30, deadline=None)
@given(s=any_schedule)
def test_every_schedule_evaluates_under_jax_jit(s):
    jnp = jax.numpy
    fn = jax.jit(lambda count: s.evaluate(count, xp=jnp))
    counts = jnp.asarray(STEPS[::7], dtype=jnp.int64)
    got = np.asarray(fn(counts))
    assert got.dtype == np.float64
    expected = s(STEPS[::7])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * max(1.0, float(np.max(expected))))
    scalar = jax.jit(lambda c: s.evaluate(c, xp=jnp))(jnp.asarray(123, dtype=jnp.int64))
    assert float(scalar) == pytest.approx(s(123), rel=1e-9, abs=1e-15)


def test_custom_schedule_without_xp_support_says_so():
    class Half(S.Schedule):
        name = "half"

        def _evaluate(self, steps):
            return 0.5 + 0 * steps

    np.testing.assert_array_equal(Half({}).evaluate(np.arange(3)), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="only evaluates with NumPy"):
        Half({}).evaluate(np.arange(3), xp=jax.numpy)


@pytest.mark.parametrize("make", [
    lambda d: S.step_decay(1.0, d, 0.5),
    lambda d: S.exponential(1.0, 0.5, d, staircase=True),
    lambda d: S.inverse_time(1.0, d, 1.0, staircase=True),
    lambda d: S.polynomial(1.0, d, 0.1, 2.0, cycle=True),
    lambda d: S.epochwise(S.multistep(1.0, [1, 2, 3, 5, 8]), d),
    lambda d: S.warm_restarts(1.0, d),
    lambda d: S.cyclic(0.1, 1.0, d, 2 * d, mode="triangular2"),
], ids=["step_decay", "exponential", "inverse_time", "polynomial_cycle", "epochwise",
        "warm_restarts", "cyclic"])
@pytest.mark.parametrize("d", [3, 49, 98, 1000])
def test_staircases_switch_exactly_at_multiples_under_jit(make, d):
    """XLA computes t / d as t * (1/d); lrkit corrects its floors so that no stair is late."""
    s = make(d)
    t = np.arange(30000, dtype=np.float64)
    got = np.asarray(jax.jit(lambda c: s.evaluate(c, xp=jax.numpy))(jax.numpy.asarray(t, dtype=jax.numpy.int64)))
    np.testing.assert_allclose(got, s(t), rtol=1e-12, atol=1e-15)
