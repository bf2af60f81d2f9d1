"""TorchDoctor in real PyTorch loops: NaN injection, a too-high LR, bitwise rollback, schedulers."""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits

from _recording import RecordingDoctor
from lrkit.doctor import Doctor
from lrkit.doctor.guard import GuardGaveUp
from lrkit.integrations.torch.doctor import TorchDoctor, grad_norm


def digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1400], y[:1400], X[1400:], y[1400:]


def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)[:, None]
    return X[:350], y[:350], X[350:], y[350:]


def train(task, lr, *, steps=300, guard=None, nan_at=None, seed=0, on_step=None, scheduler=None, **kw):
    """A plain loop; returns (validation loss, watch)."""
    Xtr, ytr, Xva, yva = task()
    torch.manual_seed(seed)
    if task is digits:
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        loss_fn = torch.nn.functional.cross_entropy
    else:
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        loss_fn = torch.nn.functional.mse_loss
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = scheduler(opt) if scheduler else None
    watch = TorchDoctor(model, opt, guard=guard, **kw) if guard is not None else None
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(Xtr), (32 if task is diabetes else 64,), generator=g)
        xb = Xtr[idx].clone()
        if step == nan_at:
            xb[0, 0] = float("nan")  # a corrupt batch
        opt.zero_grad()
        loss = loss_fn(model(xb), ytr[idx])
        loss.backward()
        if watch:
            watch.after_backward(loss)
        opt.step()
        if watch:
            rolled = watch.after_step(step, loss)
            if on_step:
                on_step(step, model, opt, rolled, watch)
        if sched:
            sched.step()
    with torch.no_grad():
        val = float(loss_fn(model(Xva), yva))
    return val, watch


def test_nan_batch_guarded_run_matches_clean_run(caplog):
    clean, _ = train(digits, 0.1)
    lost, _ = train(digits, 0.1, nan_at=150)
    assert math.isnan(lost)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        guarded, watch = train(digits, 0.1, nan_at=150, guard=True, snapshot_every=20)
    assert [i.verdict for i in watch.interventions] == ["nan"]
    rec = watch.interventions[0]
    assert rec.step == 150 and rec.restored_to <= 150 and rec.before_onset
    # tolerance: the guarded run loses <= 40 steps and runs its last 150 at 0.3x the LR
    assert guarded < 1.25 * clean + 0.05, (guarded, clean)
    assert any("nan at step 150" in r.getMessage() for r in caplog.records)


def test_trained_steps_are_the_steps_the_model_holds():
    _, watch = train(digits, 0.1, nan_at=150, guard=True, snapshot_every=20)
    (rec,) = watch.interventions
    assert watch.start_step == 300 and watch.trained_steps == 300 - (151 - rec.restored_to)
    _, only = train(digits, 0.1, steps=40, guard=False)  # watching only: every step run is held
    assert only.trained_steps == 40


def test_too_high_lr_guarded_run_recovers():
    clean, _ = train(diabetes, 0.03)
    lost, _ = train(diabetes, 1.0)
    assert math.isnan(lost)
    guarded, watch = train(diabetes, 1.0, guard=True, snapshot_every=20)
    assert 1 <= len(watch.interventions) <= 3
    assert all(i.verdict in ("diverging", "nan") for i in watch.interventions)
    assert watch.lr_multiplier <= 0.3
    assert guarded < 1.25 * clean, (guarded, clean)  # clean: a good LR for this task


def test_rollback_restores_the_snapshot_bitwise():
    """Record model + optimizer state after every step; after the rollback the live state equals,
    bit for bit, the state recorded right before the restored step."""
    history = {}

    def on_step(step, model, opt, rolled, watch):
        if rolled:
            rec = watch.interventions[-1]
            want_model, want_opt = history[rec.restored_to - 1]
            for k, v in model.state_dict().items():
                assert torch.equal(v, want_model[k]), k
            got_opt = opt.state_dict()
            for pid, st in want_opt["state"].items():
                for k, v in st.items():
                    assert torch.equal(got_opt["state"][pid][k], v), (pid, k)
            assert got_opt["param_groups"][0]["lr"] == 0.1  # the base LR, not rewound
            on_step.checked = True
        history[step] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))

    on_step.checked = False
    train(digits, 0.1, steps=200, nan_at=120, guard=True, snapshot_every=10, on_step=on_step)
    assert on_step.checked


def test_scheduler_sees_its_own_lrs_and_optimizer_the_scaled_ones():
    seen = []

    def hook(opt, args, kwargs):
        seen.append(opt.param_groups[0]["lr"])

    def sched(opt):
        opt.register_step_pre_hook(hook)
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)

    _, watch = train(diabetes, 0.1, steps=120, nan_at=60, guard=True, snapshot_every=10, scheduler=sched)
    assert len(watch.interventions) == 1
    m = watch.interventions[0].new_multiplier
    expected = [0.1 * 0.99**t * (1.0 if t <= 60 else m) for t in range(120)]
    assert seen == pytest.approx(expected, rel=1e-12)  # chainable ExponentialLR never compounded m


def test_watch_only_mode_reports_and_never_rolls_back():
    val, watch = train(digits, 0.1, steps=100, nan_at=50, guard=False)
    assert math.isnan(val)
    assert watch.guard is None and watch.interventions == [] and watch.lr_multiplier == 1.0
    assert watch.diagnosis.verdict == "nan" and watch.diagnosis.step == 50


def test_gives_up_on_persistent_nan():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = TorchDoctor(model, opt, doctor=Doctor(window=10), snapshot_every=5, max_retries=2)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(GuardGaveUp) as exc:
        for step in range(50):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y) * (float("nan") if step >= 3 else 1.0)
            loss.backward()
            watch.after_backward(loss)
            opt.step()
            watch.after_step(step, loss)
    assert torch.isfinite(model.weight).all()  # left restored to the last good snapshot
    # a first NaN at the untried start is replayed once for free (kept LR, retry 0); then the default
    # lr_factor 0.1 twice, max_retries=2 restores of the start, and the guard gives up
    kept, *cuts = exc.value.interventions
    assert (kept.new_multiplier, kept.retry) == (1.0, 0) and [c.retry for c in cuts] == [1, 2]
    assert watch.lr_multiplier == pytest.approx(0.01)


def test_grad_norm_and_errors():
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([1.0, 2.0, 2.0])
    assert grad_norm([p, q]) == pytest.approx(3.0)
    assert grad_norm([q]) == 0.0
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        TorchDoctor(object(), opt)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        TorchDoctor(model, object())
    with pytest.raises(ValueError, match="guard must be True or False"):
        TorchDoctor(model, opt, guard="yes")
    watch = TorchDoctor(model, opt)
    with pytest.raises(ValueError, match="step must be an int"):
        watch.after_step(1.5, 1.0)
    with pytest.raises(ValueError, match="loss must be a scalar"):
        watch.after_step(0, torch.ones(3))


def test_grad_scaler_norm_is_unscaled_and_scaler_state_is_rolled_back():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    watch = TorchDoctor(model, opt, scaler=scaler, doctor=Doctor(window=10), snapshot_every=5)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    scales = {}
    for step in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == 25:
            loss = loss * float("nan")
        scaler.scale(loss).backward()
        gn = watch.after_backward(loss)
        if step == 0:
            ref = grad_norm(list(model.parameters())) / 1024.0
            assert gn == pytest.approx(ref)  # reported in unscaled units
        scaler.step(opt)
        scaler.update()
        rolled = watch.after_step(step, loss)
        scales[step] = scaler.get_scale()
        if rolled:
            rec = watch.interventions[-1]
            assert scaler.get_scale() == scales[rec.restored_to - 1]  # the scaler went back too
    assert [i.verdict for i in watch.interventions] == ["nan"]
    assert torch.isfinite(model.weight).all()


def test_guard_over_torch_trainer_rolls_back_a_poisoned_weight():
    """The core Guard driving the TorchTrainer adapter: a weight set to NaN after one step is
    undone, the run goes on at 0.3x the LR and ends like a clean one."""
    from lrkit.doctor.guard import Guard
    from lrkit.integrations.torch.trainer import TorchTrainer

    Xtr, ytr, Xva, yva = diabetes()

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True, generator=g)
        val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xva, yva), batch_size=256)
        return model, TorchTrainer(model, opt, torch.nn.functional.mse_loss, train, val_loader=val)

    model, clean = make()
    for _ in range(200):
        clean.step(0.03)
    clean_val = clean.evaluate()
    model, trainer = make()
    guard = Guard(trainer, snapshot_every=20)
    for i in range(200):
        guard.step(0.03)
        if i == 100:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
    assert [r.verdict for r in guard.interventions] == ["nan"]
    assert guard.interventions[0].restored_to <= 100
    val = trainer.evaluate()
    assert math.isfinite(val) and val < 1.2 * clean_val + 0.05, (val, clean_val)


@pytest.mark.parametrize("guard", [False, True])
def test_validation_results_reach_the_doctor(guard):
    Xtr, ytr, Xva, yva = digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = RecordingDoctor()
    watch = TorchDoctor(model, opt, guard=guard, doctor=doctor)
    evaluated = {}
    for step in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xtr[step::40]), ytr[step::40])
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        kw = {}
        if step % 10 == 9:
            with torch.no_grad():
                out = model(Xva)
            kw = {"val_loss": float(torch.nn.functional.cross_entropy(out, yva)),
                  "metrics": {"val_accuracy": float((out.argmax(1) == yva).float().mean())}}
            evaluated[step] = (kw["val_loss"], kw["metrics"]["val_accuracy"])
        watch.after_step(step, loss, **kw)
    carried = {s: (v, m["val_accuracy"]) for s, v, m in doctor.carried()}
    assert carried == evaluated and sorted(carried) == [9, 19, 29, 39]


def test_an_lr_raised_by_the_scheduler_is_rolled_back_to_the_state_just_before_the_raise():
    """A scheduler raises the LR 30x at step 113, between two periodic snapshots: after_backward
    sees the raised LR before optimizer.step() and snapshots the state; the rollback restores it
    bit for bit and undoes the raise."""
    history = {}

    def on_step(step, model, opt, rolled, watch):
        if rolled and not hasattr(on_step, "rec"):
            on_step.rec = rec = watch.interventions[-1]
            want = history[rec.restored_to - 1]
            for k, v in model.state_dict().items():
                assert torch.equal(v, want[k]), k
        history[step] = copy.deepcopy(model.state_dict())

    raise_lr = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 113 else 30.0)  # noqa: E731
    _, watch = train(diabetes, 0.03, steps=200, guard=True, snapshot_every=25, max_overhead=None,
                     scheduler=raise_lr, on_step=on_step)
    rec = on_step.rec
    assert rec.restored_to == 113 and rec.verified
    assert rec.new_multiplier == pytest.approx(1 / 30)


def _gaussian_nll_run(doctor=None, steps=1500):
    """Diabetes regression with a learned variance (torch's GaussianNLLLoss): the loss goes negative."""
    Xtr, ytr, _, _ = diabetes()
    ytr = ytr[:, 0] * 0.05 + Xtr[:, 2]  # a nearly deterministic target, so the variance can shrink far
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    crit = torch.nn.GaussianNLLLoss()
    watch = TorchDoctor(model, opt, guard=True, doctor=doctor)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        i = torch.randint(0, len(Xtr), (32,), generator=g)
        out = model(Xtr[i])
        loss = crit(out[:, 0], ytr[i], torch.nn.functional.softplus(out[:, 1]) + 1e-4)
        opt.zero_grad()
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
        losses.append(float(loss.detach()))
    return watch, losses


def test_a_loss_that_goes_negative_is_not_silently_unwatched_and_the_named_bound_works(caplog):
    with caplog.at_level(logging.WARNING):
        watch, losses = _gaussian_nll_run()
    first_negative = next(i for i, v in enumerate(losses) if v < 0)
    assert min(losses) < -1.0 and 0 < first_negative < len(losses) // 2
    said = [r.getMessage() for r in caplog.records if "skipped (training goes on" in r.getMessage()]
    assert len(said) == 1 and f"at step {first_negative}" in said[0] and "Doctor(loss_floor=F)" in said[0]
    assert "0.5*log(eps)" in said[0]
    skipped = sum(v < 0 for v in losses)
    assert f"Not watched: {skipped} steps from step {first_negative}" in watch.summary()
    # the bound the message names: GaussianNLLLoss clamps the variance at eps=1e-6 (ours is >= 1e-4)
    watch2, losses2 = _gaussian_nll_run(doctor=Doctor(loss_floor=0.5 * math.log(1e-6)))
    assert losses2 == losses  # the watch changed nothing in the run
    assert watch2.doctor.n_observations == len(losses) and "Not watched" not in watch2.summary()
    assert watch2.doctor.diagnosis.verdict == "healthy" and not watch2.guard.interventions
