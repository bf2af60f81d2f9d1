"""Skipping the update of a loss spike (a bad batch or shard): the rule, the guard's accounting, and
the PyTorch paths (lrkit's TorchTrainer under ``Guard.step``, and ``TorchDoctor`` in a plain loop)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.doctor.guard import Guard
from lrkit.doctor.spikes import CALM, LEVEL, MIN_SEEN, RECENT, SpikeFilter
from lrkit.integrations.torch.doctor import TorchDoctor
from lrkit.integrations.torch.trainer import TorchTrainer

from _torch_digits import cycled


def warm(f: SpikeFilter, n: int = 30, level: float = 1.0, lr: float = 0.1) -> None:
    for i in range(n):
        assert not f.check(level * (1.0 + 0.01 * (i % 3)), lr=lr)


# ------------------------------------------------------------------ the rule
@settings(max_examples=60, deadline=None)
@given(noise=st.floats(0.0, 0.3), seed=st.integers(0, 10_000), tau=st.floats(10, 200))
def test_healthy_noisy_decreasing_runs_skip_nothing(noise, seed, tau):
    rng = np.random.default_rng(seed)
    t = np.arange(600)
    losses = (2.3 * np.exp(-t / tau) + 0.05) * np.exp(noise * rng.standard_normal(600))
    f = SpikeFilter()
    assert not any(f.check(float(v), lr=0.1) for v in losses)
    assert f.skipped == 0


@settings(max_examples=60, deadline=None)
@given(level=st.floats(1e-3, 1e3), ratio=st.floats(10.5, 1e6))
def test_a_spike_far_above_a_steady_level_is_skipped_and_the_level_is_kept(level, ratio):
    f = SpikeFilter(factor=10.0)
    # a run that started higher than where it is now, below the spike (which must be above the start too)
    for v in np.geomspace(level * ratio / 2, level, 10):
        f.check(float(v), lr=0.1)
    warm(f, level=level)
    before = f.level()
    assert f.check(level * ratio, lr=0.1)
    assert f.level() == before  # a skipped loss does not move the level
    assert not f.check(level * 1.05, lr=0.1)  # back to normal data


def test_what_is_not_a_spike():
    f = SpikeFilter(factor=10.0)
    assert not f.check(500.0, lr=0.1)  # no level yet
    f = SpikeFilter(factor=10.0)
    warm(f)
    assert not f.check(math.nan, lr=0.1) and not f.check(math.inf, lr=0.1)  # the doctor's
    assert not f.check(9.0, lr=0.1)  # under 10x
    f = SpikeFilter(factor=10.0)
    for _ in range(MIN_SEEN + 5):
        f.check(0.5, lr=0.1)  # the run started at its level ...
    assert not f.check(4.0, lr=0.1)  # ... and 8x is under the factor; 20x but below the start: no
    g = SpikeFilter(factor=10.0)
    for v in [50.0] * 5 + [1.0] * 20:
        g.check(v, lr=0.1)
    assert not g.check(30.0, lr=0.1)  # 30x the level, but below what the model scored at the start


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(1.05, 1.0 / (1.0 - 0.7)), calm=st.integers(MIN_SEEN, 80))
def test_a_loss_climbing_at_a_steady_lr_is_never_skipped(rate, calm):
    """A run diverging at a steady LR (the loss grows by ``rate`` per step, here up to 3.3x) climbs
    through 3x its level before it reaches 10x: it is the doctor's, never skipped."""
    f = SpikeFilter(factor=10.0)
    warm(f, n=calm)
    loss = 1.0
    for _ in range(200):
        loss *= rate
        assert not f.check(loss, lr=0.1)
        if loss > 1e6:
            break
    assert f.skipped == 0


def test_a_diverging_torch_run_is_rolled_back_as_soon_as_without_skipping():
    """The README's tanh MLP on diabetes at SGD lr=0.5 diverges at a steady LR (x2-x50 a step from
    the start, far past 10x its level by the time a skip is allowed): the guard rolls it back at
    the same step with skipping on (the default) as off, and skips nothing."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)[:, None]
    rolled = {}
    for skip in (True, False):
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32, shuffle=True)
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with TorchDoctor(model, opt, skip_spikes=skip) as watch:
            for k, (xb, yb) in enumerate(b for _ in range(10) for b in loader):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                loss.backward()
                watch.after_backward(loss)
                opt.step()
                if watch.after_step(k, loss):
                    rolled[skip] = (k, watch.guard.skipped_steps)
                    break
    assert rolled[False][0] > MIN_SEEN  # detected after skipping could have begun
    assert rolled[True] == (rolled[False][0], [])


def test_a_blow_up_during_or_right_after_a_raise_is_the_lrs():
    f = SpikeFilter()
    warm(f, lr=0.1)
    assert not f.check(500.0, lr=1.0)  # the step at the raised LR
    f = SpikeFilter()
    warm(f, lr=0.1)
    for _ in range(3):  # a 3-step spike of the LR, over now: its damage shows while it is recent
        f.check(1.0, lr=3.0)
    assert not f.check(500.0, lr=0.1)
    g = SpikeFilter()
    warm(g, lr=0.1)
    for _ in range(3):
        g.check(1.0, lr=3.0)
    warm(g, n=RECENT, lr=0.1)  # the run took it in its stride
    assert g.check(500.0, lr=0.1)  # long after the raise: a spike again


def test_spikes_that_keep_coming_back_are_the_doctors():
    rng = np.random.default_rng(0)
    f = SpikeFilter()
    chaotic = np.exp(rng.uniform(-8.0, 1.0, 300))  # far too high an LR: losses from 3e-4 to 2.7
    skipped = sum(f.check(float(v), lr=0.1) for v in chaotic)
    spikes = int(np.sum(chaotic > 10 * np.median(chaotic)))
    assert spikes > 20 and skipped <= 3  # only one that happens to come out of a calm stretch
    g = SpikeFilter()
    warm(g, n=60)
    assert g.check(100.0, lr=0.1)  # out of a calm stretch: a bad batch
    warm(g, n=5)
    assert not g.check(100.0, lr=0.1)  # back within CALM steps: not a one-off
    warm(g, n=CALM)
    assert g.check(100.0, lr=0.1)  # calm again


def test_skips_in_a_row_are_capped_then_the_doctor_takes_over():
    f = SpikeFilter(max_skips=4)
    warm(f, n=60)
    assert [f.check(100.0, lr=0.1) for _ in range(8)] == [True] * 4 + [False] * 4  # then all to the doctor
    f.reset()  # a rollback: the restored state's level is learnt again first
    assert not f.check(100.0, lr=0.1)
    warm(f, n=60)
    assert f.check(100.0, lr=0.1)


def test_after_a_rollback_to_an_untrained_state_its_losses_are_no_spikes():
    f = SpikeFilter()
    for v in [30.0] * 5 + [1.1] * 60:  # the run fell from 30 to a (dead) plateau at 1.1
        f.check(v, lr=0.1)
    f.reset()  # rolled back to the start: losses around 30 again
    assert not any(f.check(30.0 + (i % 5), lr=0.01) for i in range(40))


@pytest.mark.parametrize("kw, name", [({"factor": 1.0}, "spike_factor"), ({"factor": math.nan}, "spike_factor"),
                                      ({"max_skips": 0}, "max_skips"), ({"max_skips": 2.5}, "max_skips")])
def test_bad_parameters_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        SpikeFilter(**kw)


def test_state_round_trip():
    f = SpikeFilter()
    warm(f)
    f.check(100.0, lr=0.1)
    g = SpikeFilter()
    g.load_state_dict(f.state_dict())
    assert g.state_dict() == f.state_dict() and g.level() == f.level()
    assert not g.check(100.0, lr=0.1)  # within CALM steps of the last spike, as for f
    warm(f, n=CALM)
    warm(g, n=CALM)
    assert f.check(100.0, lr=0.1) and g.check(100.0, lr=0.1)


# ------------------------------------------------------------------ the guard
class Const:
    def snapshot(self):
        return None

    def restore(self, s):
        pass


def test_guard_skip_accounting_and_held_validation(caplog):
    g = Guard(Const(), skip_spikes=True, snapshot_every=10)
    for _ in range(LEVEL):
        assert not g.skip(1.0, lr=0.1)
        g.observe(1.0, lr=0.1)
    with caplog.at_level(logging.INFO, logger="lrkit.guard"):
        assert g.skip(80.0, lr=0.1) and g.skip(90.0, lr=0.1)
    assert g.skipped_steps == [LEVEL, LEVEL + 1]
    assert (g.step_count, g.trained_steps) == (LEVEL + 2, LEVEL)
    assert "skipped the update of step 20" in caplog.text and "2 in a row" in caplog.text
    assert g.doctor.n_observations == LEVEL  # skipped steps are not the doctor's
    g._hold(0.7, None)  # what Guard.step does with a skipped step's validation result
    g.observe(1.0, lr=0.1)
    assert g.doctor.history == [] and g.doctor.n_observations == LEVEL + 1
    state = g.state_dict()
    h = Guard(Const(), skip_spikes=True, take_initial_snapshot=False)
    h.load_state_dict(state)
    assert h.skipped_steps == g.skipped_steps and h.state_summary()["skipped_steps"] == g.skipped_steps


def test_the_guard_skips_by_default_and_never_with_skip_spikes_false():
    assert Guard(Const(), take_initial_snapshot=False).skips
    g = Guard(Const(), skip_spikes=False)
    for _ in range(30):
        g.observe(1.0, lr=0.1)
    assert not g.skips and not g.skip(1e6, lr=0.1) and g.skipped_steps == []


@pytest.mark.parametrize("kw, name", [({"skip_spikes": "yes"}, "skip_spikes"), ({"skip_spikes": True, "spike_factor": 0.5}, "spike_factor"),
                                      ({"skip_spikes": True, "max_skips": 0}, "max_skips")])
def test_guard_names_bad_skip_parameters(kw, name):
    with pytest.raises(ValueError, match=name):
        Guard(Const(), **kw)


# ------------------------------------------------------------------ PyTorch
SHARD = range(120, 135)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, 8, generator=g)
    y = (X @ torch.randn(8, 3, generator=g)).argmax(1)
    return X, y


def _garbage(x, y, k):
    """Batch ``k`` of the bad shard: inputs x50, labels shuffled (a fixed permutation per step)."""
    return x * 50.0, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(k))]


def _model(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _setup(lr=0.1):
    """The model, SGD-momentum optimizer and shuffled loader every PyTorch run here starts from."""
    X, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(2))
    return model, opt, loader


def _reference(steps):
    """A plain loop that draws every batch and simply applies no update in the shard."""
    model, opt, loader = _setup()
    for k, xb, yb in cycled(loader, steps):
        if k in SHARD:
            continue
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model


def _guarded_shard_run(steps=200, **guard_kw):
    """``Guard.step`` over lrkit's ``TorchTrainer`` for ``steps`` steps, the batches of SHARD garbage."""
    model, opt, loader = _setup()
    clock = {"k": 0}

    def loss_of(m, batch):
        xb, yb = batch
        if clock["k"] in SHARD:
            xb, yb = _garbage(xb, yb, clock["k"])
        return torch.nn.functional.cross_entropy(m(xb), yb)

    trainer = TorchTrainer(model, opt, None, loader, step_fn=loss_of)
    assert trainer.skips_steps
    with Guard(trainer, snapshot_every=25, **guard_kw) as guard:
        for k in range(steps):
            clock["k"] = k
            guard.step(0.1)
    return model, guard


def test_guard_step_skips_a_bad_shard_through_torch_trainer_bitwise():
    model, guard = _guarded_shard_run()  # skip_spikes is the guard's default
    assert guard.skipped_steps == list(SHARD) and guard.interventions == []
    assert guard.trained_steps == 200 - len(SHARD)
    ref = _reference(200)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_without_skipping_the_same_shard_costs_rollbacks():
    _, guard = _guarded_shard_run(skip_spikes=False)
    assert guard.interventions and guard.skipped_steps == []


def test_torch_trainer_refuses_skip_when_step_fn_applies_the_update():
    X, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32)

    def own_step(m, batch, optimizers):
        optimizers[0].zero_grad()
        loss = torch.nn.functional.cross_entropy(m(batch[0]), batch[1])
        loss.backward()
        optimizers[0].step()
        return loss

    t = TorchTrainer(model, [opt], None, loader, step_fn=own_step)
    assert not t.skips_steps
    with pytest.raises(ValueError, match="skip="):
        t.step(0.1, skip=lambda v: False)


def _torch_doctor_loop(skip, scaler=None, steps=200, unscale_first=False):
    """A plain loop under ``TorchDoctor`` with SHARD garbage; ``unscale_first``: the loop unscales
    the scaler and clips before ``after_backward``. Returns the model, the watch and the parameters
    before and at the end of the shard."""
    model, opt, loader = _setup()
    watch = TorchDoctor(model, opt, snapshot_every=25, skip_spikes=skip, scaler=scaler)
    around = {}
    for k, xb, yb in cycled(loader, steps):
        if k in SHARD:
            xb, yb = _garbage(xb, yb, k)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        watch.after_backward(loss)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        assert not watch.after_step(k, loss) or skip is False  # skipping: no rollback
        if k in (SHARD.start - 1, SHARD.stop - 1):
            around[k] = [p.detach().clone() for p in model.parameters()]
    watch.close()
    return model, watch, around


def test_torch_doctor_skips_a_bad_shard_bitwise_and_the_doctor_never_sees_it():
    model, watch, _ = _torch_doctor_loop(skip=None)  # the default: on with the guard
    assert watch.guard.skipped_steps == list(SHARD) and watch.interventions == []
    assert watch.doctor.n_observations == 200 - len(SHARD)
    ref = _reference(200)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    _, plain, _ = _torch_doctor_loop(skip=False)
    assert plain.interventions  # the same shard without skipping: rolled back


def test_torch_doctor_skip_with_a_grad_scaler_leaves_the_model_as_it_was():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _, watch, around = _torch_doctor_loop(skip=True, scaler=scaler)
    assert watch.guard.skipped_steps == list(SHARD)
    for a, b in zip(around[SHARD.start - 1], around[SHARD.stop - 1]):
        assert torch.equal(a, b)  # nothing applied across the shard
    assert scaler.get_scale() < 2.0**10  # the scaler skipped those steps as overflows


def test_torch_doctor_skip_spikes_needs_the_guard():
    model = _model()
    with pytest.raises(ValueError, match="skip_spikes"):
        TorchDoctor(model, torch.optim.SGD(model.parameters(), lr=0.1), guard=False, skip_spikes=True)


# ------------------------------------------------------------------ the autopilot
def _autopilot_flight(skip_spikes, at=150, steps=250):
    from lrkit.autopilot.plan import make_plan
    from lrkit.autopilot.run import fly

    model, opt, loader = _setup()
    clock = {"k": -1}

    def loss_of(m, batch):
        # one training-mode call per optimizer step (eval-mode calls, e.g. the output spread's, are not steps)
        clock["k"] += int(m.training)
        xb, yb = batch
        if m.training and clock["k"] == at:
            xb, yb = _garbage(xb, yb, at)
        return torch.nn.functional.cross_entropy(m(xb), yb)

    trainer = TorchTrainer(model, opt, None, loader, step_fn=loss_of)
    plan = make_plan(family="sgd_momentum", train_steps=steps, peak_lr=0.1)
    return fly(trainer, family="sgd_momentum", train_steps=steps, plan=plan, skip_spikes=skip_spikes)


def test_the_autopilot_skips_a_bad_batch_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="lrkit.autopilot"):
        flight = _autopilot_flight(skip_spikes=True)
    kinds = [e.kind for e in flight.pilot.events]
    assert kinds.count("skip") == 1 and "rollback" not in kinds
    (ev,) = [e for e in flight.pilot.events if e.kind == "skip"]
    assert ev.step == 150 and ev.data["ratio"] >= 10 and "bad batch" in ev.message and ev in flight.pilot.interventions
    assert "skipped the update of a bad batch" in caplog.text
    state = flight.pilot.state_dict()
    assert state["skip_spikes"] is True
    off = _autopilot_flight(skip_spikes=False)
    assert "skip" not in [e.kind for e in off.pilot.events]


def test_torch_doctor_skip_after_the_user_unscaled_for_clipping_applies_nothing():
    """``scaler.unscale_(opt)`` before ``after_backward`` (to clip): the scaler has already checked
    the gradients, so they are dropped, not made infinite (an infinite gradient would be applied)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, watch, around = _torch_doctor_loop(skip=True, scaler=scaler, steps=SHARD.stop + 5, unscale_first=True)
    assert watch.guard.skipped_steps == list(SHARD)
    for a, b in zip(around[SHARD.start - 1], around[SHARD.stop - 1]):
        assert torch.equal(a, b) and torch.isfinite(a).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_torch_autopilot_skips_a_bad_batch_in_your_loop():
    from lrkit.autopilot.pilot import Autopilot
    from lrkit.autopilot.plan import make_plan
    from lrkit.integrations.torch.autopilot import TorchAutopilot

    model, opt, loader = _setup(lr=1.0)  # any LR: the autopilot sets it
    pilot = TorchAutopilot(model, opt, Autopilot(make_plan(family="sgd_momentum", train_steps=250, peak_lr=0.1)))
    skipped, before = [], None
    for k, xb, yb in cycled(loader, 250):
        if k == 150:
            xb, yb = _garbage(xb, yb, k)
            before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        if pilot.after_backward(loss):
            skipped.append(k)
        opt.step()
        assert not pilot.after_step(loss)
        if k == 150:
            assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        pilot.scheduler.step()
    assert skipped == [150]
    assert [e.kind for e in pilot.events] == ["skip"] and pilot.events[0].step == 150


def test_torch_doctor_skip_spikes_must_be_a_flag():
    model = _model()
    with pytest.raises(ValueError, match="skip_spikes must be True, False or None"):
        TorchDoctor(model, torch.optim.SGD(model.parameters(), lr=0.1), skip_spikes="yes")


def test_the_guard_keeps_the_latest_skips_and_counts_them_all(monkeypatch):
    import lrkit.doctor.guard_skips as guard_mod

    monkeypatch.setattr(guard_mod, "SKIPS_KEPT", 3)
    g = Guard(Const(), skip_spikes=True, max_skips=100)
    for _ in range(60):
        g.skip(1.0, lr=0.1) or g.observe(1.0, lr=0.1)
    for _ in range(5):
        assert g.skip(500.0, lr=0.1)
    assert g.skipped_steps == [62, 63, 64] and g.skipped_count == 5
    h = Guard(Const(), skip_spikes=True, take_initial_snapshot=False)
    h.load_state_dict(g.state_dict())
    assert h.skipped_steps == [62, 63, 64] and h.skipped_count == 5
