"""Lightning: the LRFinder callback sets model.lr at fit start; an lrkit schedule; the doctor callback.

Run: python examples/lightning_module.py   (LRKIT_EXAMPLE_SMALL=1 for a short version)
"""
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lrkit.torch as lt
from lrkit import schedules as S
from lrkit.lightning import LRDoctorCallback, LRFinder

from _common import BATCH, EPOCHS, FINDER_STEPS, digits


class DigitsMLP(pl.LightningModule):
    def __init__(self, lr: float = 1e-3, total_steps: int = 1000):
        super().__init__()
        self.lr, self.total_steps = lr, total_steps
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        # self.lr is the finder's suggestion by the time fit() calls this for the real run
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        warm = self.total_steps // 10
        schedule = S.warmup(S.cosine(self.lr, self.total_steps - warm), warmup_steps=warm)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": lt.to_torch(schedule, optimizer), "interval": "step"}}


torch.manual_seed(0)
xt, yt, xv, yv = (torch.from_numpy(a) for a in digits())
train = DataLoader(TensorDataset(xt, yt), batch_size=BATCH, shuffle=True)
val = DataLoader(TensorDataset(xv, yv), batch_size=256)
model = DigitsMLP(total_steps=EPOCHS * len(train))
finder, doctor = LRFinder(num_iter=FINDER_STEPS, progress=False), LRDoctorCallback(guard=True)
trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[finder, doctor], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(model, train, val)
print(finder.result.summary())
print(f"trained {trainer.global_step} steps at peak LR {model.lr:.3g}: val accuracy "
      f"{float(trainer.callback_metrics['val_acc']):.3f}; doctor: {doctor.diagnosis.verdict}")
