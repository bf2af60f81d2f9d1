"""The optax export (``lrkit.integrations.jax.schedule``) under ``jax.jit``.

Checked: exact equality with the core in float64 (``jax_enable_x64``) for the table method,
a few ulps for the formula; float32 within 1e-6 of the peak LR; real optax optimizers in a
jitted loop; parity with optax's native schedules *through the export*; the plateau
transformation against lrkit's ``ReduceOnPlateau``; errors.
"""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrkit import schedules as S
from lrkit.schedules.base import Schedule

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy
from lrkit.integrations.jax import schedule as optax_schedule  # noqa: E402
from lrkit.integrations.jax.schedule import plateau_transform, to_optax  # noqa: E402
from _export_cases import every_constructor  # noqa: E402

pytestmark = pytest.mark.jax
FAST = settings(max_examples=10, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SCHEDULES = every_constructor()
N = 3200
STEPS = np.concatenate([np.arange(N), [5000, 10**5, 10**6]])


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture
def x32():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", old)


def jit_eval(fn, steps=STEPS) -> np.ndarray:
    return np.asarray(jax.jit(fn)(jnp.asarray(steps)))


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float64_equals_core(name, x64):
    s = SCHEDULES[name]
    expected = s(STEPS)
    auto = to_optax(s)
    got = jit_eval(auto)
    assert got.dtype == np.float64
    if s.total_steps is not None:  # a table: the core's own float64 values
        assert auto.method == "table"
        np.testing.assert_array_equal(got, expected)
    else:
        assert auto.method == "formula"
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    formula = jit_eval(to_optax(s, method="formula"))
    np.testing.assert_allclose(formula, expected, rtol=1e-12, atol=1e-15)
    # a table that stops early is continued by the formula
    part = to_optax(s, method="table", table_steps=1000)
    got = jit_eval(part)
    np.testing.assert_array_equal(got[:1000], expected[:1000])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float32_within_1e6_of_the_peak(name, x32):
    s = SCHEDULES[name]
    got = jit_eval(to_optax(s))
    assert got.dtype == np.float32
    expected = s(STEPS)
    err = np.max(np.abs(got - expected)) / np.max(expected)
    if s.total_steps is not None:
        assert err <= 1e-6
        # a table is correctly rounded: the float32 nearest to the core's value
        np.testing.assert_array_equal(got, expected.astype(np.float32))
    else:  # the formula in float32 (rounded constants, gamma**t): see the module docstring
        assert err <= 1e-5


def test_eager_scalar_counts_and_negative_counts(x64):
    s = SCHEDULES["warmup"]
    lr = to_optax(s)
    assert float(lr(0)) == s(0) and float(lr(jnp.int32(150))) == s(150)
    assert float(lr(-3)) == s(0)  # documented: negative counts are step 0
    assert float(lr(10**7)) == s(10**7)


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["warmup", "one_cycle", "exponential", "cyclic"])
def test_optax_sgd_in_a_jitted_loop_uses_the_schedule(name, x64):
    s = SCHEDULES[name]
    tx = optax.sgd(learning_rate=to_optax(s))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)

    @jax.jit
    def update(params, state):
        grads = {"w": jnp.ones(3)}
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    used = []
    for _ in range(300):
        params, state, updates = update(params, state)
        used.append(-float(updates["w"][0]))
    if s.total_steps is not None:  # a table: exactly the core's values
        np.testing.assert_array_equal(used, s(np.arange(300)))
    else:  # the formula: a few ulps
        np.testing.assert_allclose(used, s(np.arange(300)), rtol=1e-12)

    inj = optax.inject_hyperparams(optax.adam)(learning_rate=to_optax(s))
    st_ = inj.init(params)
    step = jax.jit(lambda st_: inj.update({"w": jnp.ones(3)}, st_, params)[1])
    for t in range(50):
        st_ = step(st_)
        # inject_hyperparams reads the LR of the count *before* the update
        assert float(st_.hyperparams["learning_rate"]) == pytest.approx(s(t), rel=1e-12)


# -- parity with optax's native schedules, through the export ---------------------------------
def _cmp(ours, theirs, steps=np.arange(1500)):
    a, b = jit_eval(ours, steps), jit_eval(theirs, steps)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@FAST
@given(lr=st.floats(1e-4, 1.0), T=st.integers(1, 1000), alpha=st.floats(0.0, 1.0))
def test_native_cosine_linear_polynomial(lr, T, alpha, x64):
    _cmp(to_optax(S.cosine(lr, T, lr * alpha)), optax.cosine_decay_schedule(lr, T, alpha))
    _cmp(to_optax(S.linear(lr, lr * alpha, T)), optax.linear_schedule(lr, lr * alpha, T))
    _cmp(to_optax(S.polynomial(lr, T, lr * alpha, power=2.0)),
         optax.polynomial_schedule(lr, lr * alpha, 2.0, T))


@FAST
@given(lr=st.floats(1e-4, 1.0), d=st.integers(1, 300), rate=st.floats(0.3, 1.0), stair=st.booleans())
def test_native_exponential_decay(lr, d, rate, stair, x64):
    steps = np.arange(1500)
    ours = jit_eval(to_optax(S.exponential(lr, rate, d, staircase=stair)), steps)
    theirs = jit_eval(optax.exponential_decay(lr, d, rate, staircase=stair), steps)
    close = np.isclose(ours, theirs, rtol=1e-12, atol=1e-15)
    # Under jit, XLA computes optax's floor(count / d) as floor(count * (1/d)), which is one step
    # late at some multiples of d (e.g. d=237: 237 * (1/237) < 1). lrkit's staircase is exact
    # there; every other step agrees.
    bad = steps[~close]
    assert stair or bad.size == 0
    assert np.all(bad % d == 0)
    np.testing.assert_allclose(ours[bad], lr * rate ** (bad // d), rtol=1e-12)


@FAST
@given(lr=st.floats(1e-4, 1.0),
       bounds=st.lists(st.integers(1, 1400), min_size=1, max_size=4, unique=True),
       scales=st.lists(st.floats(0.1, 2.0), min_size=4, max_size=4))
def test_native_piecewise_constant(lr, bounds, scales, x64):
    bounds = sorted(bounds)
    # optax switches at count >= b with a multiplicative scale; lrkit (Keras convention)
    # after step b: optax boundary b is lrkit boundary b - 1 with the accumulated value
    values = [lr]
    for sc in scales[:len(bounds)]:
        values.append(values[-1] * sc)
    ours = to_optax(S.piecewise_constant([b - 1 for b in bounds], values))
    theirs = optax.piecewise_constant_schedule(lr, dict(zip(bounds, scales[:len(bounds)])))
    _cmp(ours, theirs)


@FAST
@given(init=st.floats(0.0, 1e-3), peak=st.floats(2e-3, 1.0), w=st.integers(1, 200),
       T=st.integers(1, 800), end=st.floats(0.0, 1e-3))
def test_native_warmup_cosine_join_and_sgdr(init, peak, w, T, end, x64):
    ours = S.warmup(S.cosine(peak, T, end), w, start_lr=init)
    _cmp(to_optax(ours), optax.warmup_cosine_decay_schedule(init, peak, w, w + T, end))
    lin, cos = S.linear(init, peak, w), S.cosine(peak, T, end)
    _cmp(to_optax(S.join([lin, cos], [w])),
         optax.join_schedules([optax.linear_schedule(init, peak, w),
                               optax.cosine_decay_schedule(peak, T, end / peak)], [w]))
    cycle = dict(init_value=init, peak_value=peak, warmup_steps=w, decay_steps=w + T, end_value=end)
    sgdr = optax.sgdr_schedule([cycle] * 3)
    k = w + T
    _cmp(to_optax(S.join([ours] * 3, [k, 2 * k])), sgdr, np.arange(3 * k + 10))


# -- reduce on plateau -------------------------------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# subnormal metrics left out: XLA on the CPU flushes them to zero (1e-311 * 0.99 is 0 there, not in
# NumPy), a difference of the backends' arithmetic, not of the plateau rule (found by hypothesis)
@given(metrics=st.lists(st.floats(0.0, 10.0, allow_subnormal=False), min_size=1, max_size=25),
       factor=st.floats(0.1, 0.9), patience=st.integers(0, 3), cooldown=st.integers(0, 2),
       tmode=st.sampled_from(["rel", "abs"]), min_lr=st.sampled_from([0.0, 0.01]))
def test_plateau_transform_matches_lrkit(metrics, factor, patience, cooldown, tmode, min_lr, x64):
    rop = S.reduce_on_plateau(S.constant(0.1), factor=factor, patience=patience,
                              cooldown=cooldown, threshold=0.01, threshold_mode=tmode,
                              min_lr=min_lr, eps=0.0)
    tx = optax.chain(optax.sgd(to_optax(rop.schedule)), plateau_transform(rop))
    params = jnp.zeros(2)
    state = tx.init(params)
    ref = rop.init()
    for m in metrics:  # eager: one jit compilation per example would dominate the test
        # optax applies the scale decided by this metric to this very update
        updates, state = tx.update(jnp.ones(2), state, params, value=m)
        ref = rop.update(ref, m)
        assert -float(updates[0]) == pytest.approx(rop.lr(0, ref), rel=1e-12)
    assert float(state[1].scale) == pytest.approx(ref.scale, rel=1e-12)


def test_plateau_errors():
    with pytest.raises(ValueError, match="only minimises; got mode='max'"):
        plateau_transform(S.reduce_on_plateau(0.1, mode="max"))
    with pytest.raises(ValueError, match="got threshold=0"):
        plateau_transform(S.reduce_on_plateau(0.1, threshold=0.0))
    with pytest.raises(ValueError, match="pass to_optax\\(rop.schedule\\)"):
        to_optax(S.reduce_on_plateau(0.1))


# -- a schedule that only evaluates with NumPy, and argument errors ------------------------------
class NumpyOnly(Schedule):
    name = "numpy_only"

    def __init__(self, total):
        super().__init__({"total": total}, total)

    def _evaluate(self, steps):
        return 0.1 * np.exp(-np.minimum(steps, self.total_steps or np.inf) / 300.0)


def test_numpy_only_schedule_uses_a_table(x64):
    s = NumpyOnly(1000)
    got = jit_eval(to_optax(s))
    np.testing.assert_array_equal(got, s(STEPS))
    with pytest.raises(ValueError, match="no traceable formula.*method='table'"):
        to_optax(s, method="formula")
    with pytest.raises(ValueError, match="neither a full table nor a traced formula"):
        to_optax(NumpyOnly(None))
    with pytest.raises(ValueError, match="does not reach the end"):
        to_optax(NumpyOnly(None), method="table", table_steps=10)
    with pytest.raises(ValueError, match="does not reach the end"):
        to_optax(s, method="table", table_steps=10)
    s_inf = NumpyOnly(None)
    with pytest.raises(ValueError, match="never ends"):
        to_optax(s_inf, method="table")


def test_bad_arguments():
    s = SCHEDULES["cosine"]
    with pytest.raises(ValueError, match="method must be one of 'auto', 'table', 'formula', got 'lut'"):
        to_optax(s, method="lut")
    with pytest.raises(ValueError, match="table_steps must be a whole number >= 1 or None, got 0"):
        to_optax(s, table_steps=0)
    with pytest.raises(ValueError, match="only used with method='table'"):
        to_optax(s, method="formula", table_steps=10)
    with pytest.raises(ValueError, match="schedule must be an lrkit Schedule"):
        to_optax(lambda c: 0.1)


def test_schedule_hook_and_docstring_examples():
    assert SCHEDULES["cosine"].to_optax().method == "table"
    res = doctest.testmod(optax_schedule)
    assert res.attempted > 0 and res.failed == 0
