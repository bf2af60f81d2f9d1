"""Train a digits classifier with Lightning without choosing a learning rate.

``configure_optimizers`` returns a bare optimizer (its LR is ignored, no scheduler); the
``AutopilotCallback`` finds the LR, plans warmup-then-decay for the run and guards it. Run::

    python examples/autopilot_lightning.py            # 600 steps
    python examples/autopilot_lightning.py --steps 150
"""
from __future__ import annotations

import argparse
import logging

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lrkit.lightning import AutopilotCallback


class Digits(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters())      # no LR, no scheduler: the autopilot sets them


def data():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=32, shuffle=True, generator=g),
            DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=512))


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the run")
    ap.add_argument("--report", metavar="DIR", help="write DIR/report.html (self-contained) at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    train, val = data()
    pilot = AutopilotCallback()                       # train_steps from Trainer(max_steps=...)
    trainer = pl.Trainer(max_steps=args.steps, callbacks=[pilot], val_check_interval=max(1, args.steps // 10),
                         check_val_every_n_epoch=None, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Digits(), train, val)
    final = float(trainer.validate(trainer.lightning_module, val, verbose=False)[0]["val_loss"])
    print(pilot.pilot.report())
    if args.report:  # the plan, the run as flown, every intervention
        from lrkit.report.autopilot_report import write_autopilot_report

        print(f"report: {write_autopilot_report(pilot, args.report, seed=0)}")
    print(f"final validation loss {final:.4f} after {args.steps} steps "
          f"(+{pilot.plan.finder_cost_steps} finder steps)")
    return final


if __name__ == "__main__":
    main()
