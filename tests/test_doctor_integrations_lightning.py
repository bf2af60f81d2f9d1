"""LRDoctorCallback with a real lightning.Trainer (CPU, tiny module)."""
from __future__ import annotations

import contextlib
import logging
import math
import warnings

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from _recording import RecordingDoctor  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.doctor.guard import GuardGaveUp  # noqa: E402
from lrkit.integrations.lightning.callback import LRDoctorCallback  # noqa: E402


class Regression(pl.LightningModule):
    def __init__(self, lr, nan_at=None, scheduler=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.lr, self.nan_at, self.scheduler = lr, nan_at, scheduler
        self.used_lrs = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        opt.register_step_pre_hook(lambda o, a, k: None)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def data(n=256, seed=0):
    w = torch.randn(5, 1, generator=torch.Generator().manual_seed(123))  # one true model
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    y = X @ w + 0.1 * torch.randn(n, 1, generator=g)
    ds = torch.utils.data.TensorDataset(X, y)
    return torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def fit(module, callback=None, steps=60):
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback] if callback else [],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data())
    X, y = next(iter(data(512, seed=1)))
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(module.net(X), y)), trainer


def test_watch_only_reports_nan_and_logs_verdict():
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    val, trainer = fit(Regression(0.05, nan_at=30), cb)
    assert math.isnan(val)
    assert cb.diagnosis.verdict == "nan" and cb.diagnosis.step == 30
    assert trainer.callback_metrics["lrkit/verdict_severity"].item() == 4.0
    assert cb.interventions == [] and cb.lr_multiplier == 1.0


@pytest.mark.parametrize("forgive", [True, False])
def test_guard_rolls_back_a_nan_batch(caplog, forgive):
    clean, _ = fit(Regression(0.05))
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, forgive_first=forgive)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        val, trainer = fit(Regression(0.05, nan_at=30), cb)
    assert [i.verdict for i in cb.interventions] == ["nan"]
    assert cb.interventions[0].restored_to <= 30
    assert math.isfinite(val) and val < 2 * clean + 0.05, (val, clean)
    # a first NaN out of a healthy run keeps the LR; forgive_first=False lowers it by the default lr_factor
    assert trainer.callback_metrics["lrkit/lr_multiplier"].item() == pytest.approx(1.0 if forgive else 0.1)
    assert any("nan at step 30" in r.getMessage() for r in caplog.records)


def test_with_its_defaults_a_nan_batch_before_the_first_snapshot_keeps_the_lr():
    """``LRDoctorCallback(guard=True)`` as users write it: the first snapshot comes after 50 good
    steps, and a NaN batch at step 30 of a run that trained well until then goes back to the start
    with the LR kept (it cut the LR 10x for good before) and ends as the clean run does."""
    clean, _ = fit(Regression(0.05), steps=150)
    cb = LRDoctorCallback(guard=True)
    val, trainer = fit(Regression(0.05, nan_at=30), cb, steps=150)
    assert [(i.verdict, i.step, i.restored_to) for i in cb.interventions] == [("nan", 30, 0)]
    assert cb.lr_multiplier == 1.0
    assert math.isfinite(val) and val < 1.2 * clean + 0.01, (val, clean)


def test_guard_rescues_a_too_high_lr_with_a_step_scheduler():
    lost, _ = fit(Regression(1.5, scheduler=True))
    assert not (math.isfinite(lost) and lost < 1.0)
    module = Regression(1.5, scheduler=True)
    seen = []
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    orig_start = cb.on_train_start

    def start(trainer, pl_module):
        orig_start(trainer, pl_module)  # our hooks first, then a recorder that runs after them
        trainer.optimizers[0].register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))

    cb.on_train_start = start
    val, trainer = fit(module, cb, steps=100)
    assert 1 <= len(cb.interventions) <= 3
    assert math.isfinite(val) and val < 0.5, val  # the target variance is ~5
    # the update used m * the scheduler's LR; the scheduler itself kept its exponential decay
    sched_lr = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
    assert sched_lr == pytest.approx(1.5 * 0.98**100)
    assert seen[-1] == pytest.approx(1.5 * 0.98**99 * cb.lr_multiplier)


class OnPlateau(Regression):
    """Regression under ``ReduceLROnPlateau`` on the validation loss (Lightning's ``monitor``)."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


def test_guard_rescues_a_too_high_lr_under_reduce_on_plateau():
    """A user's ``ReduceLROnPlateau`` (it multiplies the group's LR itself, at each validation): the
    guard's multiplier applies on top of it, and the plateau goes on reducing its own LR."""
    def run(cb):
        trainer = pl.Trainer(max_steps=120, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                             enable_checkpointing=False, enable_model_summary=False,
                             callbacks=[cb] if cb else [])  # a validation per epoch of 8 steps
        module = OnPlateau(1.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, data(), data(64, seed=2))
        X, y = next(iter(data(512, seed=1)))
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(module.net(X), y)), trainer

    lost, _ = run(None)
    assert not (math.isfinite(lost) and lost < 1.0)
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    val, trainer = run(cb)
    assert 1 <= len(cb.interventions) <= 3 and cb.lr_multiplier < 1.0
    assert math.isfinite(val) and val < 0.5, val  # the target variance is ~5
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])  # restored after each step
    assert sched.get_last_lr()[0] <= 1.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="guard must be True or False"):
        LRDoctorCallback(guard=1)
    with pytest.raises(ValueError, match="doctor must be an lrkit.doctor.Doctor"):
        LRDoctorCallback(doctor="x")
    with pytest.raises(ValueError, match="snapshot_every must be an int >= 1"):
        LRDoctorCallback(guard=True, snapshot_every=0)



class WithValidation(Regression):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        err = self.net(x) - y
        self.log("val_loss", (err ** 2).mean())
        self.log("val_mae", err.abs().mean())


@pytest.mark.parametrize("guard", [False, True])
def test_validation_results_reach_the_doctor_with_the_next_step(guard):
    doctor = RecordingDoctor()
    module = WithValidation(0.01)
    seen_val = []

    class Spy(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                seen_val.append((float(trainer.callback_metrics["val_loss"]), float(trainer.callback_metrics["val_mae"])))

    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[LRDoctorCallback(guard=guard, doctor=doctor), Spy()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data(), data(64, seed=1))
    carried = doctor.carried()
    assert [s for s, _, _ in carried] == [8, 16]  # first step of epochs 2 and 3 (8 batches/epoch)
    got = [x for _, v, m in carried for x in (v, m["val_mae"])]
    assert got == pytest.approx([x for pair in seen_val[:2] for x in pair], rel=1e-6)


def test_a_run_resumed_from_its_checkpoint_keeps_the_lowered_lr_and_history(tmp_path):
    """The guard's multiplier lives in the optimizer hooks, not in any optimizer or scheduler state:
    the callback's own state in the checkpoint carries it (and the interventions, the doctor)."""
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, forgive_first=False)
    module = Regression(0.05, nan_at=30)
    _, trainer = fit(module, cb, steps=60)
    assert cb.lr_multiplier == pytest.approx(0.1) and len(cb.interventions) == 1
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10, forgive_first=False)
    module2 = Regression(0.05)
    seen = []
    orig_start = resumed.on_train_start

    def start(trainer, pl_module):
        orig_start(trainer, pl_module)
        trainer.optimizers[0].register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))

    resumed.on_train_start = start
    trainer2 = pl.Trainer(max_steps=80, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                          enable_checkpointing=False, enable_model_summary=False, callbacks=[resumed])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer2.fit(module2, data(), ckpt_path=ckpt)
    assert resumed.lr_multiplier == pytest.approx(0.1)
    assert [i.verdict for i in resumed.interventions] == ["nan"]
    assert seen and all(lr == pytest.approx(0.05 * 0.1) for lr in seen)  # 20 steps at the lowered LR
    assert resumed.doctor.n_observations == cb.doctor.n_observations + len(seen)  # the doctor went on


class RaisedAt(Regression):
    """The LR scheduler raises the LR 30x at optimizer step ``at`` (a misconfigured stage)."""

    def __init__(self, lr, at):
        super().__init__(lr)
        self.at = at

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < self.at else 30.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_a_raise_by_the_scheduler_is_rolled_back_to_the_state_just_before_it():
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    val, _ = fit(RaisedAt(0.05, at=33), cb, steps=100)
    first = cb.interventions[0]
    assert first.restored_to == 33 and first.verified  # the snapshot taken before the raised step
    assert first.new_multiplier == pytest.approx(1 / 30)
    assert math.isfinite(val) and val < 0.5, val


class ShardAt(pl.LightningModule):
    """A ReLU regression whose batches are garbage (inputs x50) for the optimizer steps in ``shard``."""

    def __init__(self, shard):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.shard = shard
        self.around = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step in self.shard:
            x = x * 50.0
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step in (self.shard.start, self.shard.stop):
            self.around[self.global_step] = [p.detach().clone() for p in self.parameters()]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _precision(fp16):
    """fp16 with a real GradScaler on the CPU (Lightning would switch "16-mixed" to bf16 there)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))] if fp16 else []


@pytest.mark.parametrize("fp16", [False, True])
def test_skip_spikes_leaves_a_bad_shard_out(fp16):
    shard = range(60, 70)
    module = ShardAt(shard)
    cb = LRDoctorCallback(guard=True, snapshot_every=20)  # skip_spikes: on with the guard by default
    trainer = pl.Trainer(max_steps=100, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[cb], plugins=_precision(fp16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data())
    assert cb.guard is not None and cb.interventions == []
    assert cb.guard.skipped_steps == list(shard)
    assert (getattr(trainer.precision_plugin, "scaler", None) is not None) == fp16
    for a, b in zip(module.around[shard.start], module.around[shard.stop]):
        assert torch.equal(a, b) and torch.isfinite(a).all()  # nothing applied across the shard
    plain = LRDoctorCallback(guard=True, skip_spikes=False, snapshot_every=20)
    trainer = pl.Trainer(max_steps=100, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[plain], plugins=_precision(fp16))
    with warnings.catch_warnings(), contextlib.suppress(GuardGaveUp):
        warnings.simplefilter("ignore")
        trainer.fit(ShardAt(shard), data())
    assert plain.interventions  # the same shard trained on: rolled back (here until the guard gave up)


def test_skip_spikes_needs_the_guard():
    with pytest.raises(ValueError, match="skip_spikes"):
        LRDoctorCallback(skip_spikes=True)
    with pytest.raises(ValueError, match="skip_spikes must be True, False or None"):
        LRDoctorCallback(guard=True, skip_spikes="yes")
    assert LRDoctorCallback().guard is None  # the default (None) asks for no guard of its own
    assert not LRDoctorCallback(guard=True, skip_spikes=False).guard.skips


class LossRecordingDoctor(Doctor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.losses = []

    def observe(self, step, loss, **kw):
        self.losses.append((step, float(loss)))
        return super().observe(step, loss, **kw)


def _fit_accumulating(callback, batch_size, k, nan_at=None, steps=40, fp16=False):
    module = Regression(0.05, nan_at=nan_at)
    loader = torch.utils.data.DataLoader(data().dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[callback],
                         accumulate_grad_batches=k, plugins=_precision(fp16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return trainer


@pytest.mark.parametrize("guard,fp16", [(False, False), (True, False), (True, True)])
def test_accumulated_micro_batches_are_read_as_one_step_with_their_mean_loss(guard, fp16):
    # accumulate_grad_batches=2 over batches of 16 trains as batches of 32 (the same shuffled order):
    # the doctor must read the same steps and losses (Lightning's outputs hold the last micro-batch's
    # loss divided by 2, and on_train_batch_end comes once per micro-batch); under fp16 AMP the losses
    # handed to backward are scaled too
    whole = LRDoctorCallback(doctor=LossRecordingDoctor(window=10), guard=guard)
    _fit_accumulating(whole, 32, 1, fp16=fp16)
    parts = LRDoctorCallback(doctor=LossRecordingDoctor(window=10), guard=guard)
    trainer = _fit_accumulating(parts, 16, 2, fp16=fp16)
    assert trainer.global_step == 40
    assert [s for s, _ in parts.doctor.losses] == [s for s, _ in whole.doctor.losses] == list(range(40))
    tolerance = 1e-2 if fp16 else 1e-4  # fp16 sums two halves otherwise rounded
    assert [v for _, v in parts.doctor.losses] == pytest.approx([v for _, v in whole.doctor.losses], rel=tolerance)


def test_a_nan_in_an_accumulated_step_is_rolled_back_at_that_step():
    cb = LRDoctorCallback(guard=True, doctor=Doctor(window=10), snapshot_every=10)
    _fit_accumulating(cb, 16, 2, nan_at=30)
    assert [(i.verdict, i.step) for i in cb.interventions] == [("nan", 30)]
    assert cb.interventions[0].restored_to <= 30


def test_the_epochs_last_accumulation_window_cut_short_reads_its_mean_loss():
    # 3 batches an epoch, accumulate_grad_batches=2: every second step is a window of one micro-batch,
    # whose loss Lightning still divides by 2; the same batch each time at a tiny LR: one loss level
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    ds = torch.utils.data.TensorDataset(x.repeat(3, 1), (x @ torch.ones(5, 1)).repeat(3, 1))
    cb = LRDoctorCallback(doctor=LossRecordingDoctor(window=10), guard=False)
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[cb],
                         accumulate_grad_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Regression(1e-6), torch.utils.data.DataLoader(ds, batch_size=32))
    losses = [v for _, v in cb.doctor.losses]
    assert len(losses) == 20 and max(losses) < 1.01 * min(losses), losses


class TwoOptimizers(pl.LightningModule):
    """Manual optimization of Muon (the weight matrices) and AdamW (the rest), Lightning's way for
    several optimizers; ``training_step`` returns its loss or, as many manual modules do, nothing."""

    def __init__(self, lr, returns_loss=True, nan_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.automatic_optimization = False
        self.lr, self.returns_loss, self.nan_at, self.batches = lr, returns_loss, nan_at, 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.batches == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        self.batches += 1
        muon, adamw = self.optimizers()
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        muon.zero_grad()
        adamw.zero_grad()
        self.manual_backward(loss)
        muon.step()
        adamw.step()
        return loss if self.returns_loss else None

    def configure_optimizers(self):
        return [torch.optim.Muon([p for p in self.net.parameters() if p.ndim == 2], lr=self.lr),
                torch.optim.AdamW([p for p in self.net.parameters() if p.ndim != 2], lr=self.lr * 0.015)]


def test_manual_optimization_of_two_optimizers_is_watched_and_rolled_back():
    module = TwoOptimizers(0.02, nan_at=60)
    cb = LRDoctorCallback(doctor=Doctor(window=10), guard=True, snapshot_every=10)
    val, _ = fit(module, cb, steps=200)  # Lightning counts both optimizers' steps: 100 batches
    assert module.batches == 100
    assert [(i.step, i.verdict) for i in cb.interventions] == [(60, "nan")]
    assert 50 <= cb.interventions[0].restored_to <= 60 and cb.lr_multiplier == 1.0  # both optimizers restored
    assert math.isfinite(val) and val < 0.2


def test_a_manual_module_that_returns_no_loss_is_told_the_doctor_saw_nothing(caplog):
    cb = LRDoctorCallback()
    with caplog.at_level(logging.WARNING, logger="lrkit"):
        fit(TwoOptimizers(0.02, returns_loss=False), cb, steps=40)
    said = [r.getMessage() for r in caplog.records if "returned no loss" in r.getMessage()]
    assert len(said) == 1 and "on any of its 20 batches" in said[0] and "manual optimization" in said[0]
