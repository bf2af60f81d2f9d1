"""``lrkit.lightning.LRFinder``: a real ``lightning.Trainer.fit`` with the callback -- the LR is found at
fit start on the module's own ``training_step``, written into ``model.lr``, the optimizer *and* its
scheduler are rebuilt from it, training starts from the untouched weights, and no warning is raised."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lrkit.lightning import LRFinder  # noqa: E402

pytestmark = [pytest.mark.torch]


class Regression(pl.LightningModule):
    def __init__(self, lr: float = 1e-4, total_steps: int = 40) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr_seen = None
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.steps = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)  # would warn outside the fit loop
        return {"loss": loss}

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=self.hparams.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                       generator=torch.Generator().manual_seed(1))


class FirstStep(pl.Callback):
    """The weights and the LR schedule the first real training step sees."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            self.weights = [p.detach().clone() for p in pl_module.parameters()]
            sched = trainer.lr_scheduler_configs[0].scheduler
            self.max_lr = sched.optimizer.param_groups[0]["max_lr"]
            self.optimizer = trainer.optimizers[0]


def test_finder_callback_writes_the_lr_and_rebuilds_the_schedule(tmp_path):
    torch.manual_seed(0)
    model = Regression()
    initial = [p.detach().clone() for p in model.parameters()]
    finder, first = LRFinder(num_iter=40, verify_steps=3, progress=False), FirstStep()
    trainer = pl.Trainer(max_steps=40, callbacks=[finder, first], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu", gradient_clip_val=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=loader())
    about_us = [str(w.message) for w in caught if "log" in str(w.message) or "scheduler" in str(w.message)
                or "lrkit" in w.filename]
    assert not about_us  # no self.log warning, no scheduler warning
    result = finder.result
    assert result is not None and finder.lr_attribute == "lr"
    assert model.hparams.lr == result.suggestion != 1e-4
    assert first.max_lr == pytest.approx(result.suggestion)  # OneCycleLR was built again from the new LR
    assert all(torch.equal(a, b) for a, b in zip(first.weights, initial))  # training started untouched
    assert result.details["range_test_steps"] >= 5 and trainer.global_step == 40


def test_bad_use_is_explained(tmp_path):
    with pytest.raises(ValueError, match="step_fn come from the LightningModule and the Trainer"):
        LRFinder(step_fn=lambda m, b: 0)

    class NoLR(Regression):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.net = torch.nn.Linear(6, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_steps=2, callbacks=[LRFinder(progress=False)], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="has no 'lr' or 'learning_rate'"):
        trainer.fit(NoLR(), train_dataloaders=loader())


def test_the_trainers_epochs_reach_the_finder_and_a_model_smaller_than_its_data_is_left_alone(tmp_path):
    # 160 examples in batches of 16, 30 epochs: 30 passes; 129 parameters for 160 examples cannot fit
    # every one, so the many-epoch regime (lrkit.finder.regime) does not apply
    torch.manual_seed(0)
    model = Regression(total_steps=300)
    finder = LRFinder(progress=False)
    trainer = pl.Trainer(max_epochs=30, callbacks=[finder], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader())
    shape = finder.result.details["run_shape"]
    assert shape["epochs"] == pytest.approx(30.0) and shape["params_per_example"] == pytest.approx(129 / 160)
    assert shape["many_epochs"] is False and "many_epochs_factor" not in finder.result.details


class FrozenFirst(Regression):
    """The first layer frozen by an LR of 0 in its param group (no scheduler)."""

    def training_step(self, batch, batch_idx):
        self.steps.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": self.net[0].parameters(), "lr": 0.0},
                                {"params": self.net[2].parameters(), "lr": self.hparams.lr}], momentum=0.9)


def test_a_group_frozen_at_lr_0_stays_frozen_through_the_finder(tmp_path):
    """The finder ramps the groups above 0 and leaves a group at LR 0 there (before, a first group at
    0 read as "a warmup from 0" and every group was ramped from the module's LR: the frozen layer
    trained during the test, and the suggestion was for a different model)."""
    torch.manual_seed(0)
    model = FrozenFirst()
    frozen = [p.detach().clone() for p in model.net[0].parameters()]
    finder = LRFinder(num_iter=30, verify_steps=3, progress=False)
    trainer = pl.Trainer(max_steps=10, callbacks=[finder], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader())
    ramp = [lrs for lrs in model.steps if lrs[1] > 0]
    assert len(ramp) >= 30 and all(lrs[0] == 0.0 for lrs in model.steps)
    assert all(torch.equal(a, b) for a, b in zip(model.net[0].parameters(), frozen))
    assert model.hparams.lr == finder.result.suggestion


def val_loader(seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]),
                                       batch_size=32)


class WithVal(Regression):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))


@pytest.mark.parametrize("how", ["fit", "module", "off", "none"])
def test_the_verification_runs_are_scored_on_the_fits_validation_loader(tmp_path, how):
    """As the autopilot's finder: on the first validation loader of fit (passed to it or a module's
    val_dataloader), which on_fit_start comes before Lightning loads; with none, or validation off,
    on a fixed sample of training batches."""
    torch.manual_seed(0)
    model = WithVal(total_steps=300)
    if how == "module":
        model.val_dataloader = lambda: val_loader()
    finder = LRFinder(progress=False)
    trainer = pl.Trainer(max_steps=300, callbacks=[finder], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu", limit_val_batches=0 if how == "off" else 1.0, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=val_loader() if how in ("fit", "off") else None)
    d = finder.result.details
    assert d["score"] == ("evaluate()" if how in ("fit", "module") else "sample_loss()")
    if how in ("fit", "module"):  # the untrained model's validation loss (training_step's MSE, eval mode)
        torch.manual_seed(0)
        fresh = WithVal(total_steps=300).eval()
        with torch.no_grad():
            want = sum(float(torch.nn.functional.mse_loss(fresh.net(x), y)) for x, y in val_loader()) / 2
        assert d["start_score"] == pytest.approx(want, rel=1e-5)
