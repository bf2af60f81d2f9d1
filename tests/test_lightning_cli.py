"""lrkit's Lightning callbacks configured the way LightningCLI users configure callbacks: by class
path and init arguments (jsonargparse reads their signatures; an annotation it cannot resolve would
make them unusable there)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse: pip install 'lightning[pytorch-extra]'")
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lrkit.lightning import AutopilotCallback, LRDoctorCallback  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self, hidden: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters())  # no LR: the autopilot sets it


class Digits(pl.LightningDataModule):
    def setup(self, stage=None):
        from _hf_digits import digits

        x, y = digits()
        self.train_set = torch.utils.data.TensorDataset(x[:1400], y[:1400])
        self.val_set = torch.utils.data.TensorDataset(x[1400:], y[1400:])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=32, shuffle=True,
                                           generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_set, batch_size=256)


def test_the_callbacks_from_a_lightningcli_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"""
trainer:
  max_steps: 90
  val_check_interval: 30
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: lrkit.lightning.AutopilotCallback
      init_args:
        restart_on_overfit: false
        check_outputs_every: 10
    - class_path: lrkit.lightning.LRDoctorCallback
      init_args:
        guard: false
        snapshot_every: 20
""")
    cli = LightningCLI(Net, Digits, args=["fit", "--config", str(config)], save_config_callback=None)
    pilot = next(c for c in cli.trainer.callbacks if isinstance(c, AutopilotCallback))
    doctor = next(c for c in cli.trainer.callbacks if isinstance(c, LRDoctorCallback))
    assert pilot.restart_on_overfit is False and pilot.check_outputs_every == 10  # the config's arguments
    assert pilot.plan.train_steps == 90 and pilot.plan.peak_lr > 0 and cli.trainer.global_step == 90
    assert doctor.guard is None and doctor.doctor.n_observations == 90
