"""lrkit.torch.autopilot: a real LRScheduler plus a per-step hook, refusals, faults, resume."""
from __future__ import annotations

import doctest
import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, IterableDataset, TensorDataset  # noqa: E402

import lrkit.integrations.torch.trainer as torch_trainer  # noqa: E402
import lrkit.torch as lt  # noqa: E402
from lrkit.autopilot import AutopilotError, NotTrainable  # noqa: E402
from _torch_digits import one_thread  # noqa: E402,F401 - autouse: one torch thread per test




def test_docstring_examples():
    import lrkit.integrations.torch.autopilot as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _digits(n_train=600):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[1400:], y[1400:])
    return DataLoader(train, batch_size=32, shuffle=False), DataLoader(val, batch_size=256)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _val(model, loader):
    with torch.no_grad():
        return float(np.mean([torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]))


def _train(model, opt, pilot, loader, val_loader, steps, start=0, fault=None, trace=None):
    it = 0
    while True:
        for x, y in loader:
            if it < start:
                it += 1
                continue
            if it >= start + steps:
                return
            if fault is not None:
                x = fault(it, x)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            val = _val(model, val_loader) if (it + 1) % 50 == 0 else None
            pilot.after_step(loss, val_loss=val)
            pilot.scheduler.step()
            if trace is not None:
                trace.append(opt.param_groups[0]["lr"])
            it += 1


def test_trains_digits_with_no_lr_given_and_counts_the_finder():
    loader, val = _digits()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=55.0)   # absurd on purpose: ignored
    start = _val(model, val)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200)
    assert isinstance(pilot.scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert _val(model, val) == start                        # the finder left the model as it was
    assert 1e-4 < pilot.plan.peak_lr < 1e-1
    assert 0 < pilot.plan.finder_cost_steps <= 0.3 * 200
    _train(model, opt, pilot, loader, val, 200)
    assert _val(model, val) < 0.5 * start
    assert [e for e in pilot.events if e.kind == "rollback"] == []
    assert "peak LR" in pilot.report()
    assert pilot.pilot.restart_on_overfit is True
    model2 = _model()
    off = lt.autopilot(model2, torch.optim.Adam(model2.parameters()), torch.nn.functional.cross_entropy, loader,
                       train_steps=200, restart_on_overfit=False)
    assert off.pilot.restart_on_overfit is False


def test_a_short_run_gets_a_peak_that_trains_and_is_told_what_the_finder_cost():
    """40 steps: no room for verification runs, a 12-step range test over seven decades whose first
    losses are noise. Its steepest point once made the plan's peak 2e-7 for Adam (no learning at all);
    the rule now stays within 3.5 decades of the loss minimum. 3 steps: the smallest range test (10
    steps) costs more than the run, and the plan and the finder say so."""
    torch.manual_seed(0)
    x = torch.randn(300, 8)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    for steps in (40, 3):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.Adam(model.parameters())
        pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=steps,
                             progress=False)
        assert pilot.plan.peak_lr > 1e-4, steps
        if steps == 3:
            assert "the finder cost 10 steps (333% of the run)" in pilot.plan.summary()
            assert any(w.startswith("the finder took 10 steps, 333% of the 3-step run")
                       for w in pilot.finder.details["warnings"])


def test_param_group_ratios_are_kept():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters(), "lr": 0.01}])
    from lrkit.autopilot import Autopilot, make_plan
    from lrkit.schedules import constant

    pilot = Autopilot(make_plan(family="sgd", train_steps=10, peak_lr=0.5, shape=constant(1.0)))
    ap = lt.TorchAutopilot(torch.nn.Sequential(a, b), opt, pilot)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
    assert "initial_lr" not in opt.param_groups[0] and ap.scheduler.get_last_lr() == pytest.approx([0.5, 0.05])



def test_a_first_param_group_frozen_at_lr_0_stays_frozen_and_the_rest_train():
    """A group at LR 0 (a frozen backbone) is left at 0 by the finder and the autopilot; the ratios
    are taken to the first group above 0, whose LR is the finder's and the plan's, and the doctor
    reads that one. Before, the finder refused the optimizer (group 0 had to be above 0)."""
    loader, val = _digits()
    model = _model()
    frozen = [p.detach().clone() for p in model[0].parameters()]
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0},
                            {"params": model[2].parameters(), "lr": 1e-3}])
    start = _val(model, val)
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=150)
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), frozen))
    seen = []
    pilot.pilot.doctor.observe = lambda step, loss, lr=None, **kw: seen.append(lr)  # what the doctor is told
    pilot.pilot.guard = None
    _train(model, opt, pilot, loader, val, 150)
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), frozen))  # never moved
    assert opt.param_groups[0]["lr"] == 0.0
    assert [pilot.plan.schedule(t) for t in (10, 100)] == pytest.approx([seen[10], seen[100]])
    assert _val(model, val) < 0.8 * start  # the head trained
    assert 1e-4 < pilot.finder.suggestion == pilot.plan.finder_lr < 1.0  # an Adam LR for the head


def test_an_optimizer_with_no_lr_above_0_is_refused_naming_the_groups():
    loader, _ = _digits()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match=r"finite LRs >= 0, one of them above 0.*got \[0.0\]"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=100)

def test_refuses_an_optimizer_with_a_scheduler_attached():
    loader, _ = _digits(64)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    with pytest.raises(AutopilotError, match="already has a torch LR scheduler attached"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=100)


@pytest.mark.parametrize("make", [
    lambda p: __import__("prodigyopt").Prodigy(p, lr=1.0),
    lambda p: __import__("dadaptation").DAdaptAdam(p, lr=1.0),
    lambda p: __import__("schedulefree").AdamWScheduleFree(p, lr=1e-3),
])
def test_refuses_learning_rate_free_optimizers_with_the_reason(make):
    loader, _ = _digits(64)
    model = _model()
    try:
        opt = make(model.parameters())
    except ImportError as exc:  # pragma: no cover - dev extra installs them
        pytest.skip(str(exc))
    with pytest.raises(AutopilotError, match="learning-rate-free|Schedule-Free"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=100)


def test_unknown_run_length_is_a_clear_error():
    class Stream(IterableDataset):
        def __iter__(self):
            for _ in range(1000):
                yield torch.randn(64), torch.tensor(1)

    model = _model()
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(AutopilotError, match=r"pass train_steps=N .*epochs=2 was given but the data has no len"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, DataLoader(Stream(), batch_size=8), epochs=2)
    with pytest.raises(AutopilotError, match=r"pass train_steps=N"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, DataLoader(Stream(), batch_size=8))


def test_a_model_that_does_not_train_is_refused_before_training():
    loader, val = _digits(256)
    model = _model()
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    model[2].weight.requires_grad_(False)   # logits stay 0 whatever the LR
    model[2].bias.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NotTrainable, match="does not train at any learning rate"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_nan_batch_mid_run_is_rolled_back_in_place_and_logged(caplog):
    loader, val = _digits()
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200)

    def fault(it, x):
        return x * math.nan if it == 120 else x

    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        _train(model, opt, pilot, loader, val, 200, fault=fault)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert [e.step for e in rollbacks] == [120] and "bad batch" in rollbacks[0].message
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _val(model, val) < 0.6
    assert any("rolled back" in r.getMessage() for r in caplog.records)


def test_checkpoint_resume_is_the_uninterrupted_run_and_runs_no_finder(monkeypatch):
    loader, val = _digits()

    def start():
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        return model, opt

    model, opt = start()
    pilot = lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=160)
    plan_state = pilot.state_dict()
    trace_full: list[float] = []
    _train(model, opt, pilot, loader, val, 160, trace=trace_full)
    # the premise: no rollback (one after the resume may only reach back to the checkpoint, whose
    # snapshots it holds, where the uninterrupted run could go further back)
    assert not [e for e in pilot.events if e.kind == "rollback"]

    model2, opt2 = start()
    pilot2 = lt.autopilot(model2, opt2, None, None, resume=plan_state)     # same plan, from step 0
    trace: list[float] = []
    _train(model2, opt2, pilot2, loader, val, 80, trace=trace)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "autopilot": pilot2.state_dict()}, buf)

    def no_finder(*a, **k):
        raise AssertionError("the finder ran again on resume")

    monkeypatch.setattr(torch_trainer, "find_lr", no_finder)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model3, opt3 = start()
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    pilot3 = lt.autopilot(model3, opt3, torch.nn.functional.cross_entropy, loader, resume=ckpt["autopilot"])
    _train(model3, opt3, pilot3, loader, val, 80, start=80, trace=trace)
    assert trace == trace_full
    for a, b in zip(model.parameters(), model3.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert pilot3.events[-1].kind == "resume"


def test_disk_snapshots_roll_back_as_memory_ones_do_and_go_when_closed(tmp_path):
    """storage="disk": the same rollback, bitwise the same run, the files there during the run
    and gone after `with`."""
    import os

    loader, val = _digits()
    runs, listed = {}, []
    for storage in ("memory", "disk"):
        model = _model()
        opt = torch.optim.Adam(model.parameters())
        where = {"storage_dir": tmp_path} if storage == "disk" else {}
        with lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=200,
                          storage=storage, **where) as pilot:
            def fault(it, x):
                if it == 150 and storage == "disk":
                    listed.extend(os.listdir(pilot.pilot.guard.storage_path))
                return x * math.nan if it == 120 else x

            _train(model, opt, pilot, loader, val, 200, fault=fault)
        runs[storage] = ([e.step for e in pilot.events if e.kind == "rollback"], [p.detach().clone() for p in model.parameters()])
    assert runs["memory"][0] == runs["disk"][0] == [120]
    assert all(torch.equal(a, b) for a, b in zip(runs["memory"][1], runs["disk"][1]))
    assert "manifest.json" in listed and any(n.endswith(".pkl") for n in listed)
    assert os.listdir(tmp_path) == []


def test_a_bad_storage_is_refused_before_the_finder_runs(monkeypatch):
    loader, val = _digits()
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    monkeypatch.setattr(torch_trainer, "find_lr", lambda *a, **k: pytest.fail("the finder ran"))
    with pytest.raises(AutopilotError, match="storage must be 'memory' or 'disk', got 'ssd'"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=200, storage="ssd")
    with pytest.raises(AutopilotError, match="storage_dir is only used with storage='disk'"):
        lt.autopilot(model, opt, torch.nn.functional.cross_entropy, loader, train_steps=200, storage_dir="x")


def test_closing_a_run_that_stopped_short_of_its_plan_says_so_once(caplog):
    train, val = _digits()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        with lt.autopilot(model, opt, torch.nn.functional.cross_entropy, train, val_loader=val, train_steps=200,
                          restart_on_overfit=False) as pilot:
            _train(model, opt, pilot, train, val, 80)  # stopped at 40% of the plan
        pilot.close()  # idempotent: said once
    said = [r.getMessage() for r in caplog.records if "the run ended after" in r.getMessage()]
    assert len(said) == 1 and "after 80 of the 200 steps planned (40%)" in said[0], said
    caplog.clear()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        with lt.autopilot(model, opt, torch.nn.functional.cross_entropy, train, train_steps=60) as pilot:
            _train(model, opt, pilot, train, val, 60)  # the whole plan: nothing said
    assert not [r for r in caplog.records if "the run ended after" in r.getMessage()]
