"""The torch export (``lrkit.integrations.torch.schedule``) driving real optimizers.

What is checked: exact float64 equality with the core for every constructor; resume
equivalence through ``torch.save``/``torch.load`` for every constructor (and a plateau
schedule); parity with torch's native schedulers through the export (rtol 1e-6); plateau
parity with ``ReduceLROnPlateau``; group ratios; tensor LRs updated in place with no
``torch.compile`` recompilation; errors; per-step cost vs torch's native scheduler.
"""
from __future__ import annotations

import doctest
import io
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S
from _export_cases import every_constructor

torch = pytest.importorskip("torch")
from lrkit.integrations.torch import schedule as torch_schedule  # noqa: E402
from lrkit.integrations.torch.schedule import LRKitScheduler, to_torch  # noqa: E402

pytestmark = pytest.mark.torch
FAST = settings(max_examples=15, deadline=None)
native = torch.optim.lr_scheduler


SCHEDULES = every_constructor()


def test_every_constructor_is_covered():
    assert set(SCHEDULES) == set(S.SCHEDULE_CONSTRUCTORS)


def _model_opt(lr=0.1, groups=1, momentum=0.9, dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(3, 3, dtype=dtype) for _ in range(groups)])
    pgs = [{"params": m.parameters(), "lr": lr * (i + 1)} for i, m in enumerate(model)]
    return model, torch.optim.SGD(pgs, lr=lr, momentum=momentum)


def _train(model, opt, sched, n: int, start: int = 0) -> list[float]:
    """n optimizer steps with step-dependent gradients; the LR used at each step."""
    used = []
    params = list(model.parameters())
    for k in range(start, start + n):
        for p in params:
            p.grad = torch.sin(p.detach() + 0.01 * k)
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_equals_core_exactly(name):
    s = SCHEDULES[name]
    n = 5000  # crosses two evaluation blocks and every horizon above
    _, opt = _model_opt()
    sched = to_torch(s, opt)
    got = []
    for _ in range(n):
        got.append(opt.param_groups[0]["lr"])
        sched.step()
    expected = s(np.arange(n))
    np.testing.assert_array_equal(np.asarray(got), expected)
    # scalar calls of the core give the very same floats
    assert [s(t) for t in (0, 1, 2047, 2048, 4999)] == [got[t] for t in (0, 1, 2047, 2048, 4999)]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resume_equals_uninterrupted_run(name):
    s = SCHEDULES[name]
    N, M = 1300, 900
    model, opt = _model_opt(groups=2)
    sched = to_torch(s, opt)
    lrs_full = _train(model, opt, sched, N + M)
    params_full = [p.detach().clone() for p in model.parameters()]

    model, opt = _model_opt(groups=2)
    sched = to_torch(s, opt)
    lrs = _train(model, opt, sched, N)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["sched"] == {"step": N}  # progress only, no configuration

    model2, opt2 = _model_opt(groups=2)
    sched2 = to_torch(s, opt2)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    lrs += _train(model2, opt2, sched2, M, start=N)
    assert lrs == lrs_full
    for a, b in zip(params_full, model2.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_state_dict_round_trip_rejects_foreign_dicts():
    _, opt = _model_opt()
    sched = to_torch(SCHEDULES["cosine"], opt)
    with pytest.raises(ValueError, match="keys must be"):
        sched.load_state_dict({"last_epoch": 3, "base_lrs": [0.1]})
    with pytest.raises(ValueError, match="step must be a whole number >= 0, got -1"):
        sched.load_state_dict({"step": -1})


# --------------------------------------------------------------------------------------------
def test_is_a_real_lr_scheduler_and_leaves_the_optimizer_alone():
    _, opt = _model_opt(groups=2)
    step_before = opt.step
    keys_before = [set(g) for g in opt.param_groups]
    sched = to_torch(SCHEDULES["cosine"], opt)
    assert isinstance(sched, native.LRScheduler) and isinstance(sched, LRKitScheduler)
    assert [set(g) for g in opt.param_groups] == keys_before  # no "initial_lr"
    assert opt.step == step_before  # optimizer.step is not wrapped
    assert sched.get_last_lr() == [0.1, 0.2]
    assert sched.last_epoch == sched.step_count == 0


@FAST
@given(ratios=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 10.0)), min_size=1, max_size=5),
       base=st.floats(1e-4, 1.0), total=st.integers(1, 500))
def test_group_ratios_are_kept(ratios, base, total):
    ps = [torch.zeros(1, requires_grad=True) for _ in range(len(ratios) + 1)]
    lr0 = 0.37
    opt = torch.optim.SGD([{"params": [ps[0]], "lr": lr0}]
                          + [{"params": [p], "lr": lr0 * r} for p, r in zip(ps[1:], ratios)], lr=lr0)
    s = S.cosine(base, total)
    sched = to_torch(s, opt)
    for t in range(0, total + 3):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == s(t)
        np.testing.assert_allclose(lrs[1:], [s(t) * r for r in ratios], rtol=1e-14, atol=0)
        sched.step()


def test_explicit_group_scales_and_per_group_schedules():
    ps = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [p]} for p in ps], lr=0.0)
    with pytest.raises(ValueError, match="first param group's lr must be > 0"):
        to_torch(SCHEDULES["cosine"], opt)
    frozen = torch.optim.SGD([{"params": [ps[0]], "lr": 0.0}, {"params": [ps[1]], "lr": 0.3}])
    fs = to_torch(SCHEDULES["cosine"], frozen)  # a frozen first group stays at 0; the next gets s(t)
    for t in range(1, 4):
        fs.step()
        assert [g["lr"] for g in frozen.param_groups] == [0.0, SCHEDULES["cosine"](t)]
    sched = to_torch(SCHEDULES["cosine"], opt, group_scales=[1.0, 0.25])
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [SCHEDULES["cosine"](1),
                                                   SCHEDULES["cosine"](1) * 0.25]
    a, b = SCHEDULES["warmup"], SCHEDULES["cyclic"]
    sched = to_torch([a, b], opt)
    for t in range(3000):
        assert [g["lr"] for g in opt.param_groups] == [a(t), b(t)]
        sched.step()
    assert sched.state_dict() == {"step": 3000}


def test_bad_arguments_raise_valueerror_naming_the_parameter():
    _, opt = _model_opt(groups=2)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        to_torch(SCHEDULES["cosine"], object())
    with pytest.raises(ValueError, match=r"one per param group \(2\), got 3"):
        to_torch([SCHEDULES["cosine"]] * 3, opt)
    with pytest.raises(ValueError, match="schedule must be a Schedule"):
        to_torch(0.1, opt)
    with pytest.raises(ValueError, match=r"group_scales\[1\] must be a finite number >= 0, got -1"):
        to_torch(SCHEDULES["cosine"], opt, group_scales=[1.0, -1])
    with pytest.raises(ValueError, match="one number per param group"):
        to_torch(SCHEDULES["cosine"], opt, group_scales=[1.0])
    sched = to_torch(SCHEDULES["cosine"], opt)
    with pytest.raises(ValueError, match="no plateau schedule, got metric=5"):
        sched.step(5)


# --------------------------------------------------------------------------------------------
def _run_native(make, lr, n):
    """LRs of steps 0..n-1 of a native torch scheduler stepping a real optimizer."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sch = make(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
    return np.asarray(out)


def _run_export(s, n, lr=0.5):
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sch = s.to_torch(opt)  # through the Schedule hook
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return np.asarray(out)


def _close(ours, theirs, scale):
    err = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-3 * scale)
    assert err.max() <= 1e-6, (err.argmax(), ours[err.argmax()], theirs[err.argmax()])


@FAST
@given(lr=st.floats(1e-4, 1.0), T=st.integers(2, 600), ratio=st.floats(0.0, 0.5))
def test_cosine_vs_CosineAnnealingLR(lr, T, ratio):
    eta_min = lr * ratio
    n = T + 1  # torch turns back up after T_max; lrkit holds
    _close(_run_export(S.cosine(lr, T, eta_min), n),
           _run_native(lambda o: native.CosineAnnealingLR(o, T, eta_min), lr, n), lr)


@FAST
@given(lr=st.floats(1e-4, 1.0), size=st.integers(1, 50), gamma=st.floats(0.1, 1.0))
def test_step_decay_vs_StepLR_and_exponential_vs_ExponentialLR(lr, size, gamma):
    _close(_run_export(S.step_decay(lr, size, gamma), 400),
           _run_native(lambda o: native.StepLR(o, size, gamma), lr, 400), lr)
    g = max(gamma, 0.97)
    _close(_run_export(S.exponential(lr, g), 400),
           _run_native(lambda o: native.ExponentialLR(o, g), lr, 400), lr)


@FAST
@given(lr=st.floats(1e-4, 1.0), ms=st.lists(st.integers(1, 300), min_size=1, max_size=4, unique=True))
def test_multistep_vs_MultiStepLR(lr, ms):
    ms = sorted(ms)
    _close(_run_export(S.multistep(lr, ms, 0.5), 350),
           _run_native(lambda o: native.MultiStepLR(o, ms, 0.5), lr, 350), lr)


@FAST
@given(lr=st.floats(1e-3, 1.0), T=st.integers(20, 600), pct=st.floats(0.1, 0.45),
       strategy=st.sampled_from(["cos", "linear"]), three=st.booleans())
def test_one_cycle_vs_OneCycleLR(lr, T, pct, strategy, three):
    s = S.one_cycle(lr, T, pct_start=pct, anneal_strategy=strategy, three_phase=three)
    ours = _run_export(s, T)
    theirs = _run_native(lambda o: native.OneCycleLR(o, lr, total_steps=T, pct_start=pct,
                                                     anneal_strategy=strategy, three_phase=three,
                                                     cycle_momentum=False), lr, T)
    _close(ours, theirs, lr)


@FAST
@given(lo=st.floats(1e-4, 0.01), hi=st.floats(0.02, 1.0), up=st.integers(1, 60),
       down=st.one_of(st.none(), st.integers(1, 60)),
       mode=st.sampled_from(["triangular", "triangular2", "exp_range"]), gamma=st.floats(0.99, 1.0))
def test_cyclic_vs_CyclicLR(lo, hi, up, down, mode, gamma):
    g = gamma if mode == "exp_range" else 1.0
    s = S.cyclic(lo, hi, up, down, mode=mode, gamma=g)
    theirs = _run_native(lambda o: native.CyclicLR(o, lo, hi, up, down, mode=mode, gamma=g,
                                                   cycle_momentum=False), lo, 500)
    _close(_run_export(s, 500), theirs, hi)


@FAST
@given(lr=st.floats(1e-4, 1.0), T0=st.integers(1, 50), mult=st.integers(1, 3))
def test_warm_restarts_vs_CosineAnnealingWarmRestarts(lr, T0, mult):
    _close(_run_export(S.warm_restarts(lr, T0, mult, min_lr=lr / 100), 600),
           _run_native(lambda o: native.CosineAnnealingWarmRestarts(o, T0, mult, lr / 100), lr, 600),
           lr)


# --------------------------------------------------------------------------------------------
metric_st = st.lists(st.floats(0.0, 10.0), min_size=1, max_size=60)


@FAST
@given(metrics=metric_st, factor=st.floats(0.1, 0.9), patience=st.integers(0, 4),
       cooldown=st.integers(0, 3), mode=st.sampled_from(["min", "max"]),
       tmode=st.sampled_from(["rel", "abs"]), min_lr=st.sampled_from([0.0, 1e-3]))
def test_plateau_on_constant_equals_ReduceLROnPlateau(metrics, factor, patience, cooldown, mode,
                                                      tmode, min_lr):
    kw = dict(mode=mode, factor=factor, patience=patience, cooldown=cooldown,
              threshold_mode=tmode, threshold=0.01, min_lr=min_lr)
    p = torch.zeros(1, requires_grad=True)
    o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)
    ours = to_torch(S.reduce_on_plateau(S.constant(0.1), **kw), o1)
    theirs = native.ReduceLROnPlateau(o2, **kw)
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], rel=1e-12)


def test_plateau_composes_with_warmup_cosine_as_documented_and_resumes():
    base = S.warmup(S.cosine(0.1, 900), 100)
    rop = S.reduce_on_plateau(base, patience=0, factor=0.5, min_lr=1e-4)
    spe, epochs = 100, 10
    metrics = [1.0, 0.8, 0.9, 0.95, 0.7, 0.75, 0.76, 0.77, 0.5, 0.6]

    def run(sched, opt, epoch_range, state):
        for e in epoch_range:
            for _ in range(spe):
                t = sched.step_count
                assert opt.param_groups[0]["lr"] == rop.lr(t, state)
                sched.step()
            sched.step(metrics[e])  # once per epoch: scale changes, time does not advance
            assert sched.step_count == (e + 1) * spe
            state = rop.update(state, metrics[e])
            assert sched.plateau_state == state
        return state

    _, opt = _model_opt()
    sched = to_torch(rop, opt)
    state = run(sched, opt, range(epochs), rop.init())
    assert state.scale == 0.5**6  # patience 0: reduced after 0.9, 0.95, 0.75, 0.76, 0.77, 0.6
    # resume after 4 epochs
    _, opt = _model_opt()
    sched = to_torch(rop, opt)
    st4 = run(sched, opt, range(4), rop.init())
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    _, opt2 = _model_opt()
    sched2 = to_torch(rop, opt2)
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.step_count == 4 * spe and sched2.plateau_state == st4
    assert opt2.param_groups[0]["lr"] == rop.lr(4 * spe, st4)
    assert run(sched2, opt2, range(4, epochs), st4) == state
    with pytest.raises(ValueError, match="metric must be a number"):
        sched2.step("high")


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    lambda ps, lr: torch.optim.AdamW(ps, lr=lr),
    lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
])
def test_tensor_lr_is_updated_in_place(make):
    p = torch.zeros(3, requires_grad=True)
    lr_t = torch.tensor(0.01, dtype=torch.float64)
    opt = make([p], lr_t)
    s = SCHEDULES["warmup"]
    sched = to_torch(s, opt)
    assert opt.param_groups[0]["lr"] is lr_t
    for t in range(300):
        assert opt.param_groups[0]["lr"] is lr_t and lr_t.item() == s(t)
        last = sched.get_last_lr()[0]
        assert isinstance(last, torch.Tensor) and last is not lr_t and last.item() == s(t)
        p.grad = torch.ones(3)
        opt.step()
        sched.step()


def _compiled_run(backend: str, steps: int = 10):
    import torch._dynamo as dynamo

    dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    s = S.cosine(0.01, steps)
    sched = to_torch(s, opt)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    @torch.compile(backend=backend, fullgraph=False)
    def opt_step():
        opt.step()

    frames = []
    lrs = []
    with dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"].item())
            opt_step()
            sched.step()
            frames.append(dynamo.utils.counters["stats"]["unique_graphs"])
    return s, lrs, frames


def test_compiled_optimizer_step_does_not_recompile_when_lr_changes():
    s, lrs, frames = _compiled_run("eager")
    # the LR really changed at every step, and no graph was compiled after the first step
    np.testing.assert_allclose(lrs, s(np.arange(10)).astype(np.float32), rtol=1e-7)
    assert len(set(lrs)) == 10
    assert frames[0] >= 1 and frames[-1] == frames[0]


def test_control_a_float_lr_does_recompile():
    """The check above is sensitive: with a plain float LR dynamo guards on its value."""
    import torch._dynamo as dynamo

    dynamo.reset()
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = to_torch(S.cosine(0.01, 10), opt)

    @torch.compile(backend="eager")
    def opt_step():
        opt.step()

    with dynamo.config.patch(error_on_recompile=True), pytest.raises(dynamo.exc.RecompileError):
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            opt_step()
            sched.step()


@pytest.mark.slow
def test_compiled_optimizer_step_does_not_recompile_inductor():
    s, lrs, frames = _compiled_run("inductor")
    assert len(set(lrs)) == 10 and frames[-1] == frames[0]


# --------------------------------------------------------------------------------------------
# Speed is measured in benchmarks/bench_schedules.py (BENCHMARKS.md). What makes it fast is tested
# here: the schedule is evaluated in vectorised blocks, not once per step and per group.
@pytest.mark.parametrize("groups", [1, 100])
def test_step_evaluates_the_schedule_in_blocks_not_per_step_or_group(groups, monkeypatch):
    sched = S.cosine(0.1, 10**6)
    calls = []
    original = type(sched)._evaluate

    def counting(self, t, *args, **kwargs):
        calls.append(np.size(t))
        return original(self, t, *args, **kwargs)

    monkeypatch.setattr(type(sched), "_evaluate", counting)
    ps = [torch.zeros(1, requires_grad=True) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": [p]} for p in ps], lr=0.1)
    lr_sched = to_torch(sched, opt)
    for _ in range(3000):
        lr_sched.step()
    assert len(calls) <= 4, calls  # 3001 steps (with step 0) in blocks of thousands of steps
    assert sum(calls) >= 3000
    monkeypatch.undo()
    want = sched(np.arange(3001))[-1]
    assert all(g["lr"] == pytest.approx(want, rel=1e-15) for g in opt.param_groups)


def test_docstring_examples_run():
    res = doctest.testmod(torch_schedule, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0
