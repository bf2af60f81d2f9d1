"""Formula parity of lrkit schedules with ``torch.optim.lr_scheduler`` (float64).

Two torch forms are compared:

* the **closed form** ``_get_closed_form_lr()`` (set ``last_epoch = t`` and ask), where torch
  has one — tolerance ``rtol=1e-12`` (plus ``1e-12 * base_lr`` absolute where the LR is ~0);
* the **chainable form** (``scheduler.step()`` and ``get_last_lr()``), which multiplies ratios
  step after step and so accumulates rounding error — tolerance ``rtol=1e-6``, absolute
  ``1e-9 * base_lr``. CosineAnnealingWarmRestarts, CyclicLR and OneCycleLR recompute from
  integer counters each step, so their chainable form is compared with ``rtol=1e-10``.

Past the end: torch's CosineAnnealingLR follows the cosine back up after ``T_max`` and
OneCycleLR raises after ``total_steps``; lrkit holds the last value, so those comparisons stop at
the horizon (the hold itself is tested).

Resume: a torch scheduler rebuilt with ``last_epoch`` (after writing ``initial_lr`` and the LR of
step ``k`` into the param group, as torch requires) continues with lrkit's values — see
``RESUMABLE`` for torch's two conventions.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

torch = pytest.importorskip("torch")
lrs_mod = torch.optim.lr_scheduler

pytestmark = pytest.mark.torch

FAST = settings(max_examples=25, deadline=None)
lr_st = st.floats(1e-4, 1.0)


def _opt(lr: float):
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return torch.optim.SGD([p], lr=lr)


def chain(make, lr: float, n: int) -> np.ndarray:
    """LRs of steps 0..n-1 from torch's chainable form."""
    opt = _opt(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        out = [sched.get_last_lr()[0]]
        for _ in range(n - 1):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr()[0])
    return np.asarray(out, dtype=np.float64)


def closed(make, lr: float, n: int) -> np.ndarray:
    """LRs of steps 0..n-1 from torch's ``_get_closed_form_lr``."""
    opt = _opt(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
    out = []
    for t in range(n):
        sched.last_epoch = t
        out.append(float(sched._get_closed_form_lr()[0]))
    return np.asarray(out)


def ours(schedule, n: int) -> np.ndarray:
    return schedule(np.arange(n))


def check(schedule, make, lr, n, *, chain_rtol=1e-6, has_closed=True):
    mine = ours(schedule, n)
    if has_closed:
        np.testing.assert_allclose(mine, closed(make, lr, n), rtol=1e-12, atol=1e-12 * lr)
    np.testing.assert_allclose(mine, chain(make, lr, n), rtol=chain_rtol, atol=1e-9 * lr)


# --- closed-form families ----------------------------------------------------------------------
@FAST
@given(lr=lr_st, step_size=st.integers(1, 300), gamma=st.floats(0.05, 1.0))
def test_step_decay_matches_steplr(lr, step_size, gamma):
    check(S.step_decay(lr, step_size, gamma),
          lambda o: lrs_mod.StepLR(o, step_size=step_size, gamma=gamma), lr, 2000)


@FAST
@given(lr=lr_st, ms=st.lists(st.integers(1, 1500), min_size=1, max_size=5, unique=True),
       gamma=st.floats(0.05, 1.0))
def test_multistep_matches_multisteplr(lr, ms, gamma):
    ms = sorted(ms)
    check(S.multistep(lr, ms, gamma), lambda o: lrs_mod.MultiStepLR(o, milestones=ms, gamma=gamma),
          lr, 2000)


@FAST
@given(lr=lr_st, gamma=st.floats(0.99, 1.0))
def test_exponential_matches_exponentiallr(lr, gamma):
    check(S.exponential(lr, gamma), lambda o: lrs_mod.ExponentialLR(o, gamma=gamma), lr, 2000)


@FAST
@given(lr=lr_st, total=st.integers(1, 1500), power=st.floats(0.1, 4.0))
def test_polynomial_matches_polynomiallr(lr, total, power):
    check(S.polynomial(lr, total, end_lr=0.0, power=power),
          lambda o: lrs_mod.PolynomialLR(o, total_iters=total, power=power), lr, total + 1,
          chain_rtol=1e-5)


@FAST
@given(lr=lr_st, sf=st.floats(0.01, 1.0), ef=st.floats(0.01, 1.0), total=st.integers(1, 1500))
def test_linear_matches_linearlr(lr, sf, ef, total):
    check(S.linear(lr * sf, lr * ef, total),
          lambda o: lrs_mod.LinearLR(o, start_factor=sf, end_factor=ef, total_iters=total),
          lr, total + 200)


@FAST
@given(lr=lr_st, total=st.integers(1, 2000), min_frac=st.sampled_from([0.0, 0.0, 0.01, 0.3]))
def test_cosine_matches_cosineannealinglr(lr, total, min_frac):
    eta_min = lr * min_frac
    # torch follows the cosine back up after T_max, so compare on 0..T_max (lrkit then holds)
    mine = ours(S.cosine(lr, total, eta_min), total + 1)
    make = lambda o: lrs_mod.CosineAnnealingLR(o, T_max=total, eta_min=eta_min)  # noqa: E731
    np.testing.assert_allclose(mine, closed(make, lr, total + 1), rtol=1e-12, atol=1e-12 * lr)
    np.testing.assert_allclose(mine, chain(make, lr, total + 1), rtol=1e-6, atol=1e-9 * lr)


# --- counter-based families (no closed form in torch; chainable form is exact arithmetic) ------
@FAST
@given(lr=lr_st, t0=st.integers(1, 200), mult=st.integers(1, 3), min_frac=st.sampled_from([0.0, 0.1]))
def test_warm_restarts_matches_cosineannealingwarmrestarts(lr, t0, mult, min_frac):
    eta_min = lr * min_frac
    mine = ours(S.warm_restarts(lr, t0, mult, min_lr=eta_min), 3000)
    theirs = chain(lambda o: lrs_mod.CosineAnnealingWarmRestarts(o, T_0=t0, T_mult=mult,
                                                                   eta_min=eta_min), lr, 3000)
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12 * lr)


@FAST
@given(base=st.floats(1e-4, 0.1), span=st.floats(1.0, 20.0), up=st.integers(1, 300),
       down=st.one_of(st.none(), st.integers(1, 300)),
       mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
       gamma=st.floats(0.99, 1.0))
def test_cyclic_matches_cycliclr(base, span, up, down, mode, gamma):
    gamma = gamma if mode == "exp_range" else 1.0
    max_lr = base * span
    mine = ours(S.cyclic(base, max_lr, up, down, mode=mode, gamma=gamma), 2500)
    assert np.all(np.isfinite(mine)) and np.all(mine >= base * (1 - 1e-12))
    # torch's triangular2 computes 2 ** (cycle - 1) and overflows past ~1024 cycles: compare before
    n = 2500 if mode != "triangular2" else min(2500, 1000 * (up + (down or up)))
    theirs = chain(lambda o: lrs_mod.CyclicLR(o, base_lr=base, max_lr=max_lr, step_size_up=up,
                                              step_size_down=down, mode=mode, gamma=gamma,
                                              cycle_momentum=False), base, n)
    np.testing.assert_allclose(mine[:n], theirs, rtol=1e-10, atol=1e-12 * max_lr)


@st.composite
def one_cycle_args(draw):
    total = draw(st.integers(10, 2000))
    three = draw(st.booleans())
    pct = draw(st.floats(0.05, 0.45 if three else 0.95))
    if pct * total <= 1.0 or (three and 2 * pct * total - 2 <= pct * total - 1):
        pct = 0.3
    return dict(total_steps=total, pct_start=pct, three_phase=three,
                anneal_strategy=draw(st.sampled_from(["cos", "linear"])),
                div_factor=draw(st.floats(1.0, 100.0)), final_div_factor=draw(st.floats(1.0, 1e5)))


@FAST
@given(lr=lr_st, a=one_cycle_args())
def test_one_cycle_matches_onecyclelr(lr, a):
    mine = ours(S.one_cycle(lr, **a), a["total_steps"])
    theirs = chain(lambda o: lrs_mod.OneCycleLR(o, max_lr=lr, cycle_momentum=False, **a), lr,
                   a["total_steps"])
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12 * lr)
    # past the end torch raises; lrkit holds the last value
    s = S.one_cycle(lr, **a)
    assert s(a["total_steps"] + 5) == s(a["total_steps"] - 1)


# --- warmup = SequentialLR([LinearLR, CosineAnnealingLR]) ----------------------------------------
@FAST
@given(lr=lr_st, w=st.integers(1, 300), total=st.integers(1, 1500), sf=st.floats(0.001, 1.0),
       min_frac=st.sampled_from([0.0, 0.05]))
def test_warmup_cosine_matches_sequentiallr(lr, w, total, sf, min_frac):
    eta_min = lr * min_frac
    sched = S.warmup(S.cosine(lr, total, eta_min), w, start_lr=lr * sf)

    def make(o):
        return lrs_mod.SequentialLR(o, [lrs_mod.LinearLR(o, start_factor=sf, end_factor=1.0,
                                                         total_iters=w),
                                        lrs_mod.CosineAnnealingLR(o, T_max=total, eta_min=eta_min)],
                                    milestones=[w])

    n = w + total + 1
    np.testing.assert_allclose(ours(sched, n), chain(make, lr, n), rtol=1e-6, atol=1e-9 * lr)


# --- inverse_sqrt / WSD against transformers (which builds torch LambdaLR) ------------------------
@FAST
@given(lr=lr_st, w=st.integers(1, 500))
def test_inverse_sqrt_matches_transformers(lr, w):
    tf = pytest.importorskip("transformers.optimization")
    mine = ours(S.inverse_sqrt(lr, w), 3000)
    theirs = chain(lambda o: tf.get_inverse_sqrt_schedule(o, num_warmup_steps=w), lr, 3000)
    np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * lr)


@FAST
@given(lr=lr_st, total=st.integers(2, 1500), data=st.data(),
       decay=st.sampled_from(["linear", "cosine", "1-sqrt"]), min_frac=st.sampled_from([0.0, 0.1]))
def test_wsd_matches_transformers(lr, total, data, decay, min_frac):
    tf = pytest.importorskip("transformers.optimization")
    d = data.draw(st.integers(1, total))
    w = data.draw(st.integers(0, total - d))
    mine = ours(S.warmup_stable_decay(lr, total, w, d, decay=decay, min_lr=lr * min_frac), total + 50)
    theirs = chain(lambda o: tf.get_wsd_schedule(o, num_warmup_steps=w, num_decay_steps=d,
                                                 num_training_steps=total, decay_type=decay,
                                                 min_lr_ratio=min_frac), lr, total + 50)
    np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * lr)


# --- resume: last_epoch=k ----------------------------------------------------------------------
# torch 2.13 has two resume conventions. "advance" schedulers (StepLR, MultiStepLR, CyclicLR,
# OneCycleLR), built with last_epoch=k on a group whose LR is that of step k, compute step k+1
# at construction. "load" schedulers (ExponentialLR, CosineAnnealingLR, PolynomialLR, LinearLR)
# keep the group's LR at construction (``_is_initial``) and count it as step last_epoch + 1, so
# a group holding step k's LR is resumed with last_epoch=k-1. Both must continue with lrkit's
# values.
RESUMABLE = [
    ("StepLR", "advance", lambda: S.step_decay(0.1, 7, 0.5),
     lambda o, e: lrs_mod.StepLR(o, 7, 0.5, last_epoch=e)),
    ("MultiStepLR", "advance", lambda: S.multistep(0.1, [5, 40, 90], 0.3),
     lambda o, e: lrs_mod.MultiStepLR(o, [5, 40, 90], 0.3, last_epoch=e)),
    ("CyclicLR", "advance", lambda: S.cyclic(0.1, 0.4, 9, 13, mode="triangular2"),
     lambda o, e: lrs_mod.CyclicLR(o, 0.1, 0.4, 9, 13, mode="triangular2", cycle_momentum=False,
                                   last_epoch=e)),
    ("OneCycleLR", "advance", lambda: S.one_cycle(0.1, 120, 0.25),
     lambda o, e: lrs_mod.OneCycleLR(o, 0.1, total_steps=120, pct_start=0.25, cycle_momentum=False,
                                     last_epoch=e)),
    ("ExponentialLR", "load", lambda: S.exponential(0.1, 0.97),
     lambda o, e: lrs_mod.ExponentialLR(o, 0.97, last_epoch=e)),
    ("CosineAnnealingLR", "load", lambda: S.cosine(0.1, 120, 0.001),
     lambda o, e: lrs_mod.CosineAnnealingLR(o, T_max=120, eta_min=0.001, last_epoch=e)),
    ("PolynomialLR", "load", lambda: S.polynomial(0.1, 110, power=2.0),
     lambda o, e: lrs_mod.PolynomialLR(o, total_iters=110, power=2.0, last_epoch=e)),
    ("LinearLR", "load", lambda: S.linear(0.01, 0.1, 60),
     lambda o, e: lrs_mod.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=60,
                                   last_epoch=e)),
]


@pytest.mark.parametrize("name,kind,mine,make", RESUMABLE, ids=[r[0] for r in RESUMABLE])
@pytest.mark.parametrize("k", [1, 6, 7, 40, 99])
def test_resume_with_last_epoch(name, kind, mine, make, k):
    sched = mine()
    opt = _opt(sched(k))
    group = opt.param_groups[0]
    group["initial_lr"] = 0.1
    if name == "OneCycleLR":  # OneCycleLR only writes these when last_epoch == -1
        group["initial_lr"], group["max_lr"] = 0.1 / 25.0, 0.1
        group["min_lr"] = group["initial_lr"] / 1e4
    first = k + 1 if kind == "advance" else k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched = make(opt, k if kind == "advance" else k - 1)
        got = [torch_sched.get_last_lr()[0]]
        for _ in range(15):
            opt.step()
            torch_sched.step()
            got.append(torch_sched.get_last_lr()[0])
    np.testing.assert_allclose(got, sched(np.arange(first, first + 16)), rtol=1e-9, atol=1e-12)


# --- ReduceLROnPlateau -------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(lr=lr_st, mode=st.sampled_from(["min", "max"]), tmode=st.sampled_from(["rel", "abs"]),
       factor=st.floats(0.05, 0.95), patience=st.integers(0, 4), cooldown=st.integers(0, 3),
       threshold=st.sampled_from([0.0, 1e-4, 0.01, 0.1]),
       min_frac=st.sampled_from([0.0, 1e-3, 0.2]), eps=st.sampled_from([1e-8, 1e-3, 0.0]),
       metrics=st.lists(st.one_of(st.floats(-10, 10), st.sampled_from([0.0, 1.0, float("nan"),
                                                                          float("inf")])),
                        min_size=1, max_size=80))
def test_reduce_on_plateau_matches_torch(lr, mode, tmode, factor, patience, cooldown, threshold,
                                         min_frac, eps, metrics):
    kw = dict(mode=mode, factor=factor, patience=patience, threshold=threshold,
              threshold_mode=tmode, cooldown=cooldown, min_lr=lr * min_frac, eps=eps)
    opt = _opt(lr)
    theirs = lrs_mod.ReduceLROnPlateau(opt, **kw)
    rop = S.ReduceOnPlateau(S.constant(lr), **kw)
    state = rop.init()
    for m in metrics:
        theirs.step(m)
        state = rop.update(state, m)
        assert rop.lr(0, state) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        assert state.num_bad_epochs == theirs.num_bad_epochs
        assert state.cooldown_counter == theirs.cooldown_counter
        assert state.best == theirs.best
        assert state.last_epoch == theirs.last_epoch
