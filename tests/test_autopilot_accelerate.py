"""The autopilot in a Hugging Face Accelerate loop, as Accelerate's users write one: model, optimizer
and loaders through ``accelerator.prepare``, the autopilot's scheduler prepared too, gradient
accumulation by ``accelerator.accumulate``; ``pilot.after_step`` once per optimizer update (when
``accelerator.sync_gradients``), and ``pilot.after_backward`` then too, before the step, with the
update's mean loss (a bad batch's update skipped). Accumulating 4 micro-batches of 8 plans and trains as batches of 32."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")
pytest.importorskip("sklearn")

import lrkit.torch as lt  # noqa: E402

STEPS = 300


def run(k: int, *, poison_at: int | None = None, bad_at: int | None = None):
    from torch.utils.data import DataLoader, TensorDataset

    from _hf_digits import digits

    torch.set_num_threads(1)
    acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=k)
    x, y = digits()
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=32 // k, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=512)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer, train, val = acc.prepare(model, optimizer, train, val)
    loss_fn = torch.nn.functional.cross_entropy
    pilot = lt.autopilot(model, optimizer, loss_fn, train, val_loader=val, train_steps=STEPS, accumulation_steps=k)
    scheduler = acc.prepare(pilot.scheduler)
    lrs, done, parts, unchanged = [], 0, [], None
    while done < STEPS:
        for xb, yb in train:
            with acc.accumulate(model):
                if done == bad_at and not parts:  # one bad micro-batch: inputs x50, labels scrambled
                    xb, yb = xb * 50.0, yb.roll(1)
                    before = [p.detach().clone() for p in model.parameters()]
                loss = loss_fn(model(xb), yb)
                if done == poison_at:
                    loss = loss * float("nan")
                acc.backward(loss)
                parts.append(loss.detach())
                if bad_at is not None and acc.sync_gradients:  # once per update, with its mean loss
                    pilot.after_backward(torch.stack(parts).mean())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if acc.sync_gradients:
                if done == bad_at:
                    unchanged = all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
                pilot.after_step(torch.stack(parts).mean() if bad_at is not None else loss)
                parts = []
                lrs.append(optimizer.param_groups[0]["lr"])
                done += 1
                if done == STEPS:
                    break
    model.eval()
    with torch.no_grad():
        final = sum(loss_fn(model(a), b).item() for a, b in val) / len(val)
    return (pilot, lrs, final) if bad_at is None else (pilot, final, unchanged)


@pytest.fixture(scope="module")
def plain():
    return run(1)


def test_the_autopilot_drives_an_accelerate_loop(plain):
    pilot, lrs, final = plain
    assert type(pilot.plan.peak_lr) is float and pilot.plan.train_steps == STEPS
    assert max(lrs) == pytest.approx(pilot.plan.peak_lr, rel=1e-6) and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert pilot.events == [] and final < 0.5


def test_accumulating_micro_batches_plans_and_trains_as_their_batch(plain):
    pilot, lrs, final = plain
    acc_pilot, acc_lrs, acc_final = run(4)
    assert acc_pilot.plan.peak_lr == pytest.approx(pilot.plan.peak_lr, rel=0.05)
    assert len(acc_lrs) == STEPS and acc_lrs[-1] == pytest.approx(0.0, abs=1e-9)  # the schedule steps per update
    assert acc_final == pytest.approx(final, rel=0.25)


def test_a_nan_in_an_accelerate_loop_is_rolled_back(plain):
    pilot, lrs, final = run(1, poison_at=150)
    assert [e.kind for e in pilot.events] == ["rollback"]
    assert math.isfinite(final) and final < 0.5


def test_a_bad_micro_batch_skips_its_whole_update(plain):
    # after_backward once per update (on sync), with the mean loss of its micro-batches: a spike out
    # of one bad micro-batch drops the whole update's gradients, and nothing is rolled back
    _, clean_final = plain[0], plain[2]
    pilot, final, unchanged = run(4, bad_at=150)
    assert [(e.kind, e.step) for e in pilot.events] == [("skip", 150)]
    assert unchanged  # the update changed no weight
    assert final == pytest.approx(clean_final, rel=0.25)
