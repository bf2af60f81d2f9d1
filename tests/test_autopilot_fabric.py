"""The autopilot in a Lightning Fabric loop, as Fabric's users write one: ``fabric.setup`` wraps the
model and optimizer (a ``FabricAdam``), ``fabric.backward(loss)``; the autopilot's LR reaches the
wrapped optimizer and its schedule runs to its end, and a NaN is rolled back."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
pytest.importorskip("sklearn")

import lrkit.torch as lt  # noqa: E402

STEPS = 200


def run(poison_at=None):
    from torch.utils.data import DataLoader, TensorDataset

    from _hf_digits import digits

    torch.set_num_threads(1)
    fabric = L.Fabric(accelerator="cpu", devices=1)
    x, y = digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters()))
    train, val = fabric.setup_dataloaders(DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=32, shuffle=True),
                                          DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=512))
    loss_fn = torch.nn.functional.cross_entropy
    pilot = lt.autopilot(model, optimizer, loss_fn, train, val_loader=val, train_steps=STEPS)
    lrs, done = [], 0
    while done < STEPS:
        for xb, yb in train:
            loss = loss_fn(model(xb), yb)
            if done == poison_at:
                loss = loss * float("nan")
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            pilot.after_step(loss)
            pilot.scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            done += 1
            if done == STEPS:
                break
    with torch.no_grad():
        final = sum(loss_fn(model(a), b).item() for a, b in val) / len(val)
    return pilot, optimizer, lrs, final


def test_the_autopilot_drives_a_fabric_loop():
    pilot, optimizer, lrs, final = run()
    assert type(optimizer).__name__.startswith("Fabric")
    assert max(lrs) == pytest.approx(pilot.plan.peak_lr, rel=1e-6) and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert pilot.events == [] and final < 0.5


def test_a_nan_in_a_fabric_loop_is_rolled_back():
    pilot, _, _, final = run(poison_at=100)
    assert [e.kind for e in pilot.events] == ["rollback"] and math.isfinite(final) and final < 0.6
