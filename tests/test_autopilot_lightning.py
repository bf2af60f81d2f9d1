"""lrkit.lightning.AutopilotCallback: no LR in configure_optimizers, refusals, checkpoint resume."""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lrkit.integrations.torch.trainer as torch_trainer  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402
from lrkit.lightning import AutopilotCallback  # noqa: E402
from _overfit import check_planned_and_restarted  # noqa: E402
from _wine import check_death_answered, unscaled_wine  # noqa: E402
from _torch_digits import one_thread  # noqa: E402,F401 - autouse: one torch thread per test




class Net(pl.LightningModule):
    def __init__(self, with_scheduler=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        self.with_scheduler = with_scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0, momentum=0.9)   # the LR is ignored
        if self.with_scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 10)]
        return opt


class LRTrace(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    return (DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32),
            DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=400))


def _trainer(max_steps, callbacks, tmp_path=None, **kw):
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                      enable_checkpointing=tmp_path is not None, default_root_dir=tmp_path, **kw)


def test_fits_with_no_lr_and_plans_from_max_steps():
    train, val = _data()
    cb, trace = AutopilotCallback(restart_on_overfit=False), LRTrace()
    model = Net()
    _trainer(150, [cb, trace], val_check_interval=20).fit(model, train, val)
    assert cb.pilot.restart_on_overfit is False  # passed through (the default is covered by the other tests)
    assert cb.plan.train_steps == 150 and cb.plan.family == "sgd_momentum"
    assert 0 < cb.plan.finder_cost_steps <= 45
    assert trace.lrs[0] == pytest.approx(cb.plan.schedule(0)) and max(trace.lrs) == pytest.approx(cb.plan.peak_lr)
    assert trace.lrs[-1] < 0.05 * cb.plan.peak_lr                      # decayed to ~0 at the end
    with torch.no_grad():
        x, y = next(iter(val))
        assert torch.nn.functional.cross_entropy(model.net(x), y) < 1.0


def test_refuses_a_scheduler_from_configure_optimizers():
    train, _ = _data()
    with pytest.raises(AutopilotError, match="also returned an LR scheduler"):
        _trainer(20, [AutopilotCallback()]).fit(Net(with_scheduler=True), train)


def test_a_run_bounded_by_max_time_only_is_asked_for_its_length():
    train, _ = _data()
    with pytest.raises(AutopilotError, match=r"no max_epochs: a run bounded by max_time only\): pass "
                                             r"AutopilotCallback\(train_steps=N\)"):
        _trainer(-1, [AutopilotCallback()], max_epochs=-1, max_time={"seconds": 30}).fit(Net(), train)


def test_a_20_step_run_gets_a_peak_that_trains():
    # a 10-step range test over seven decades once made this plan's peak 3e-5 for AdamW (at chance after
    # 20 steps); a ramp that short now answers at least the optimizer's rule of thumb
    train, _ = _data()
    cb = AutopilotCallback()
    _trainer(20, [cb]).fit(Net(), train)
    assert cb.finder.method == "rule(short ramp)" and cb.plan.peak_lr >= 0.01  # sgd's rule of thumb, 0.01


def test_resume_from_a_lightning_checkpoint_runs_no_finder_and_continues_the_schedule(tmp_path, monkeypatch):
    train, val = _data()
    full = LRTrace()
    _trainer(120, [AutopilotCallback(train_steps=120), full]).fit(Net(), train)

    first = LRTrace()
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(60, [AutopilotCallback(train_steps=120), first, ckpt_cb], tmp_path).fit(Net(), train)

    def no_finder(*a, **k):
        raise AssertionError("the finder ran again on resume")

    monkeypatch.setattr(torch_trainer, "find_lr", no_finder)
    second, cb = LRTrace(), AutopilotCallback(train_steps=120)
    _trainer(120, [cb, second], tmp_path).fit(Net(), train, ckpt_path=str(tmp_path / "last.ckpt"))
    assert first.lrs + second.lrs == pytest.approx(full.lrs, rel=1e-12)
    assert cb.events[-1].kind == "resume" and cb.finder is None


class BadBatchNet(Net):
    """Net whose training batch at optimizer step ``at`` is garbage (inputs x50, labels shuffled);
    records the parameters around it."""

    def __init__(self, at):
        super().__init__()
        self.at, self.around = at, {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.at and self.trainer.training:
            x, y = x * 50.0, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
        return super().training_step((x, y), batch_idx)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step in (self.at, self.at + 1):
            self.around[self.global_step] = [p.detach().clone() for p in self.parameters()]


@pytest.mark.parametrize("skip_spikes", [True, False])
def test_a_bad_batch_is_skipped_and_said(skip_spikes):
    train, val = _data()
    cb = AutopilotCallback(skip_spikes=skip_spikes)
    model = BadBatchNet(at=100)
    _trainer(150, [cb], val_check_interval=20).fit(model, train, val)
    skips = [e for e in cb.events if e.kind == "skip"]
    unchanged = all(torch.equal(a, b) for a, b in zip(model.around[100], model.around[101]))
    if skip_spikes:
        assert [e.step for e in skips] == [100] and unchanged and "bad batch" in skips[0].message
    else:
        assert skips == [] and not unchanged


class _WineNet(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)  # calls the child: no forward of its own

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1.0)


@pytest.mark.parametrize("every", [25, 0])
def test_a_network_that_dies_is_rolled_back_and_its_probe_taken_off(every):
    x, y = map(torch.from_numpy, unscaled_wine())  # an LR too high kills the ReLUs in a few steps
    train = DataLoader(TensorDataset(x[:130], y[:130]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    model = _WineNet()
    cb = AutopilotCallback(peak_lr=1.0, check_outputs_every=every)
    _trainer(200, [cb]).fit(model, train)
    died = [e for e in cb.events if "network died" in e.message]
    with torch.no_grad():
        val = torch.nn.functional.cross_entropy(model.net(x[130:]), y[130:]).item()
    if every:
        assert died and "lowered the LR" in died[0].message
        assert val < 0.9
    else:  # unmeasured, the same run ends at the constant prediction's loss
        assert not died and val > 1.0
    assert not model.net._forward_hooks and not model._forward_hooks


class _WineFixedLR(_WineNet):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@pytest.mark.parametrize("every", [25, 0])
def test_the_doctor_callbacks_guard_rolls_back_a_network_that_dies(every):
    from lrkit.lightning import LRDoctorCallback

    x, y = map(torch.from_numpy, unscaled_wine())
    train = DataLoader(TensorDataset(x[:130], y[:130]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    model = _WineFixedLR()
    model.lr = 0.3  # a constant LR far too high for unscaled inputs: the network dies within a few steps
    cb = LRDoctorCallback(guard=True, snapshot_every=10, check_outputs_every=every, log_verdict=False)
    _trainer(200, [cb]).fit(model, train)
    check_death_answered(cb.interventions, model.net, x[130:], y[130:], probed=bool(every))
    assert not model.net._forward_hooks


class _Listing(pl.Callback):
    """What the autopilot's guard directory holds at step 100."""

    def __init__(self, cb):
        self.cb, self.names = cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 100:
            self.names = os.listdir(self.cb.pilot.guard.storage_path)


def test_disk_snapshots_live_in_storage_dir_during_the_fit_and_go_at_its_end(tmp_path):
    train, val = _data()
    cb = AutopilotCallback(storage="disk", storage_dir=tmp_path / "snaps")
    listing = _Listing(cb)
    _trainer(150, [cb, listing], val_check_interval=20).fit(Net(), train, val)
    assert "manifest.json" in listing.names and any(n.endswith(".pkl") for n in listing.names)
    assert os.listdir(tmp_path / "snaps") == []
    with pytest.raises(AutopilotError, match="AutopilotCallback: storage must be 'memory' or 'disk'"):
        AutopilotCallback(storage="Disk")


def test_a_run_that_overfits_early_is_restarted_at_a_lower_lr():
    # 60 training digits for 300 steps of 16 (75 epochs), validated every 4 epochs. The autopilot's
    # own scale expects the overfitting (the finder divides its answer for many epochs,
    # lrkit.finder.regime); at the scale it would take without that (5x), the run fits them within a
    # few epochs and the validation loss climbs from there, and the early-overfitting restart steps in
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)

    def run(**kw):
        train = DataLoader(TensorDataset(x[:60], y[:60]), batch_size=16, shuffle=True,
                           generator=torch.Generator().manual_seed(0))
        val = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=400)
        cb, model = AutopilotCallback(**kw), Net()
        _trainer(300, [cb], check_val_every_n_epoch=4).fit(model, train, val)
        with torch.no_grad():
            return cb, float(torch.nn.functional.cross_entropy(model.net(x[1400:]), y[1400:]))

    check_planned_and_restarted(run, 0.8)


class StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_a_run_stopped_well_short_of_its_plan_is_said(caplog):
    train, _ = _data()
    cb = AutopilotCallback(restart_on_overfit=False)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        _trainer(150, [cb, StopAt(60)]).fit(Net(), train)
    said = [r.getMessage() for r in caplog.records if "the run ended after" in r.getMessage()]
    assert len(said) == 1 and "after 60 of the 150 steps planned (40%)" in said[0], said


def test_accumulated_micro_batches_are_planned_and_watched_as_one_step(monkeypatch):
    # accumulate_grad_batches=2 over batches of 16 trains as batches of 32: the same plan, and the guard
    # reads the same losses (Lightning's outputs hold the last micro-batch's loss, divided by 2)
    from lrkit.autopilot.pilot import Autopilot

    seen = []
    observe = Autopilot.observe

    def recording(self, step, loss, **kw):
        seen[-1].append((step, loss))
        return observe(self, step, loss, **kw)

    monkeypatch.setattr(Autopilot, "observe", recording)
    x, y = _data()[0].dataset.tensors
    plans = []
    for batch, k in ((32, 1), (16, 2)):
        seen.append([])
        cb = AutopilotCallback(guard=True, plateau=False)
        trainer = _trainer(60, [cb], accumulate_grad_batches=k)
        trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=batch))
        assert trainer.global_step == 60
        plans.append(cb.plan)
    assert plans[1].peak_lr == pytest.approx(plans[0].peak_lr, rel=1e-6)
    assert plans[1].finder_cost_steps == plans[0].finder_cost_steps
    whole, parts = seen
    assert [s for s, _ in parts[:10]] == [s for s, _ in whole[:10]] == list(range(10))
    assert [v for _, v in parts[:10]] == pytest.approx([v for _, v in whole[:10]], rel=1e-4)
