"""Write real Weights & Biases runs (offline) the way each framework's users log them, in a process of
their own (``wandb.init`` starts a service and wraps the console):

    python tests/_wandb_runs.py KIND DIR

KIND: ``script`` (``wandb.log`` by hand: a healthy run and one that goes NaN), ``resumed`` (runs
killed and resumed under the same id), ``trainer`` (the
Hugging Face ``Trainer`` with ``report_to="wandb"``: a tiny BERT classifier that saves a checkpoint
and the digits MLP that does not), ``lightning`` (``WandbLogger``) or ``keras`` (``fit`` with
``WandbMetricsLogger``, on the torch backend). Everything is written under DIR (``wandb/`` and the
output directories), as from a script run in DIR.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def script() -> None:
    import wandb

    for name, nan_at in (("good", None), ("broken", 60)):
        run = wandb.init(project="digits", name=name, config={"lr": 0.1})
        for t in range(100):
            loss = 2.3 * 0.96**t + 0.05
            row = {"train_loss": math.nan if nan_at is not None and t >= nan_at else loss, "lr": 0.1}
            if t % 20 == 19:
                row["val_loss"] = loss * 1.1
            run.log(row)
        run.finish()


def resumed() -> None:
    """Two runs killed and resumed with ``wandb.init(id=..., resume="allow")``: one stepped by a logger's
    step metric and resumed from its checkpoint of step 40 after logging step 59 (it logs 40-59 again,
    and goes NaN at 90), one by ``wandb.log`` alone (offline, W&B's ``_step`` starts again at 0)."""
    import wandb

    for name, step_key, first, second in (("long", "train/global_step", range(60), range(40, 100)),
                                          ("plain", None, range(60), range(60, 110))):
        for part in (first, second):
            run = wandb.init(project="digits", name=name, id=f"{name}-id", resume="allow")
            for t in part:
                row = {"train_loss": math.nan if name == "long" and t >= 90 else 2.3 * 0.97**t + 0.05}
                if step_key:
                    row[step_key] = t
                run.log(row)
            run.finish()


def trainer() -> None:
    import torch
    from transformers import Trainer, TrainingArguments

    from _hf_digits import Clf, Rows, Tokens, digits, tiny_bert

    torch.set_num_threads(1)
    x, y = digits()

    bert = tiny_bert()
    for name, model, ds, lr, save in (("digits", Clf(), Rows(x[:1024], y[:1024]), 3e-3, "no"),
                                      ("bert", bert, Tokens(), 1e-3, "steps")):
        args = TrainingArguments(output_dir=name, run_name=name, max_steps=64, learning_rate=lr, save_steps=64,
                                 per_device_train_batch_size=32, logging_steps=4, report_to="wandb", use_cpu=True,
                                 save_strategy=save, disable_tqdm=True, eval_strategy="steps", eval_steps=16)
        Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds).train()
        import wandb

        wandb.finish()


def lightning() -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from _hf_digits import digits

    torch.set_num_threads(1)
    x, y = digits()

    class Digits(pl.LightningModule):
        def __init__(self, lr):
            super().__init__()
            torch.manual_seed(0)
            self.lr = lr
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, batch, _):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    load = torch.utils.data.DataLoader
    for name, lr in (("calm", 0.05), ("absurd", 40.0)):
        logger = WandbLogger(project="digits", name=name)
        trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=5,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        trainer.fit(Digits(lr), load(torch.utils.data.TensorDataset(x[:1400], y[:1400]), batch_size=32,
                                     shuffle=True),
                    load(torch.utils.data.TensorDataset(x[1400:], y[1400:]), batch_size=512))
        logger.experiment.finish()


def keras_fit() -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import wandb
    from wandb.integration.keras import WandbMetricsLogger

    from _hf_digits import digits

    x, y = (t.numpy() for t in digits())
    for freq, epochs in (("epoch", 12), ("batch", 4)):  # the logger's default; every batch
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        run = wandb.init(project="digits", name=f"keras-{freq}")
        model.fit(x[:1400], y[:1400], validation_data=(x[1400:], y[1400:]), epochs=epochs, batch_size=32,
                  verbose=0, callbacks=[WandbMetricsLogger(log_freq=freq)])
        run.finish()


if __name__ == "__main__":
    kind, where = sys.argv[1], Path(sys.argv[2])
    where.mkdir(parents=True, exist_ok=True)
    os.chdir(where)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off")
    {"script": script, "resumed": resumed, "trainer": trainer, "lightning": lightning, "keras": keras_fit}[kind]()
