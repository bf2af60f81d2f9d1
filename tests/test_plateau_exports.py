"""``ReduceOnPlateau.to_torch`` / ``.to_optax`` / ``.to_keras``: the methods the README promises.

Parity against the real libraries: torch's ``ReduceLROnPlateau`` (the LR the optimizer gets) and
``optax.contrib.reduce_on_plateau`` built by hand with the documented parameter translation (the
update that reaches the parameters), over hypothesis-drawn metric sequences and configurations.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
metrics_st = st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30)


@FAST
@given(metrics=metrics_st, factor=st.floats(0.1, 0.9), patience=st.integers(0, 3), cooldown=st.integers(0, 2),
       mode=st.sampled_from(["min", "max"]), tmode=st.sampled_from(["rel", "abs"]),
       min_lr=st.sampled_from([0.0, 1e-3]))
def test_to_torch_method_equals_torch_ReduceLROnPlateau(metrics, factor, patience, cooldown, mode, tmode, min_lr):
    torch = pytest.importorskip("torch")
    kw = dict(mode=mode, factor=factor, patience=patience, cooldown=cooldown, threshold_mode=tmode,
              threshold=0.01, min_lr=min_lr)
    p = torch.zeros(1, requires_grad=True)
    o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)
    ours = S.reduce_on_plateau(S.constant(0.1), **kw).to_torch(o1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(o2, **kw)
    assert isinstance(ours, torch.optim.lr_scheduler.LRScheduler)
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], rel=1e-12)


@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@FAST
@given(metrics=metrics_st, factor=st.floats(0.1, 0.9), patience=st.integers(0, 3), cooldown=st.integers(0, 2),
       tmode=st.sampled_from(["rel", "abs"]), constant=st.booleans())
def test_to_optax_method_equals_optax_contrib_reduce_on_plateau(metrics, factor, patience, cooldown, tmode,
                                                              constant, x64):
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
    import optax.contrib

    base = S.constant(0.1) if constant else S.cosine(0.1, len(metrics) + 5, min_lr=0.01)
    rop = S.reduce_on_plateau(base, factor=factor, patience=patience, cooldown=cooldown,
                              threshold=0.01, threshold_mode=tmode, eps=0.0)
    ours = rop.to_optax(optax.sgd)
    rel = tmode == "rel"
    theirs = optax.chain(  # the documented translation, written out with optax's own pieces
        optax.sgd(lambda count: base(int(count))),
        optax.contrib.reduce_on_plateau(factor=factor, patience=patience + 1, rtol=0.01 if rel else 0.0,
                                        atol=0.0 if rel else 0.01, cooldown=cooldown))
    params = jnp.zeros(2)
    s1, s2, ref = ours.init(params), theirs.init(params), rop.init()
    for t, m in enumerate(metrics):  # eager: one compilation per example would dominate the test
        u1, s1 = ours.update(jnp.ones(2), s1, params, value=m)
        u2, s2 = theirs.update(jnp.ones(2), s2, params, value=m)
        ref = rop.update(ref, m)
        assert float(u1[0]) == pytest.approx(float(u2[0]), rel=1e-12, abs=1e-15)
        if constant:  # and with a constant schedule, lrkit's (= torch's) plateau exactly
            assert -float(u1[0]) == pytest.approx(rop.lr(t, ref), rel=1e-12)


def test_to_optax_takes_a_partial_and_refuses_a_built_optimizer():
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    import lrkit.jax as lrkit_jax

    rop = S.reduce_on_plateau(S.constant(0.1), patience=0, factor=0.5)
    tx = rop.to_optax(functools.partial(optax.sgd, momentum=0.0))
    u, _ = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)), jnp.zeros(1), value=1.0)
    assert float(u[0]) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match=r"optimizer must be an optax optimizer factory that takes learning_rate "
                                         r"\(e\.g\. optax\.adam"):
        rop.to_optax(optax.adam(0.1))
    with pytest.raises(ValueError, match=r"use rop\.to_optax\(optax\.adam\)"):
        lrkit_jax.to_optax(rop)


def test_to_keras_method_is_the_keras_export():
    pytest.importorskip("keras")
    rop = S.reduce_on_plateau(S.warmup(S.cosine(0.1, 90), 10), patience=1, min_lr=1e-3)
    lr = rop.to_keras(monitor="loss")
    assert lr.plateau is rop and lr.callback.monitor == "loss"
    assert np.isclose(float(lr(50)), rop.lr(50, rop.init()))
