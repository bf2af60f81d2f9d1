"""Tasks for the finder-through-the-frameworks benchmark (``finder_frameworks.py``).

Each task is one small training run built and trained the way that framework's users do it, with
its defaults: the Hugging Face ``Trainer`` (AdamW or its ``optim="sgd"``, the default linear decay,
``logging_steps=500``), Lightning (``Trainer.fit`` with a validation loader; constant LR or a
``OneCycleLR(max_lr=self.lr)`` built in ``configure_optimizers``) and Keras ``model.fit``. A task
trains at an LR it is given, or lets a method choose it first:

The Hugging Face tasks train a tiny BERT from scratch on ``real_runs.tokens`` (a
sequence is positive when it holds a marker token) with 10% of the labels flipped, or a digits MLP
through the Trainer with ``optim="sgd"``.

* ``lrkit``: lrkit's finder as the README shows it for that framework --
  ``lrkit.transformers.find_lr(trainer)`` (it reads the run's length, batches and loss from the
  ``Trainer`` and writes ``args.learning_rate``), Lightning's ``callbacks=[lrkit.lightning.LRFinder()]``
  (it writes ``module.lr`` and rebuilds the optimizer and scheduler), and
  ``lrkit.keras.find_lr(model, x, y, batch_size=..., val_data=..., train_steps=...)`` whose
  suggestion is set as the optimizer's ``learning_rate``;
* ``lightning_tuner`` (Lightning tasks): Lightning's own ``Tuner(trainer).lr_find(...)`` with its
  defaults (100 steps from 1e-8 to 1, the steepest-slope suggestion written into ``module.lr``);
* ``autopilot`` (``autopilot_frameworks.py``): the framework's autopilot callback
  (``lrkit.transformers/lightning/keras.AutopilotCallback()``, no LR given; the Lightning module then
  returns its optimizer alone), or with ``peak=`` a fixed peak (the oracle's grid of its schedule);
* the framework's default LR is a fixed LR (``DEFAULTS``): 5e-5 for the Hugging Face
  ``TrainingArguments``, 1e-3 for Keras' Adam and 0.01 for Keras' SGD, 1e-3 for Adam in torch.

Every run ends with the validation cross-entropy of the trained model, computed the same way for
every method (the model in eval mode on the whole validation set; a non-finite loss counts as the
untrained model's). Tasks are named ``<framework>_<model>_<optimizer>``; the split into a
development and a held-out half is ``split_names`` (SHA-256 rank, as the finder's own benchmark).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

from benchmarks.real_runs import digits, tokens  # noqa: E402


@dataclass(frozen=True)
class FrameworkTask:
    name: str
    framework: str  # hf, lightning, keras
    grid: tuple[float, float]  # log10 of the oracle grid's ends (half decades between)
    default_lr: float
    train: Callable[..., dict[str, Any]]  # train(seed, lr=None, method=None, peak=None) -> {"val_loss", "lr", ...}


def _static(peak: float | None) -> dict[str, bool]:
    """The autopilot callback's arguments for a run at a fixed peak (the reference grid of
    ``autopilot_frameworks``): its schedule alone, no guard, plateau cut or restart. With them a
    peak far too high was rolled back and lowered to the autopilot's own scale, so half the grid
    measured the autopilot itself, and its best mean over those near-copies stood as the oracle."""
    if peak is None:
        return {}
    return {"guard": False, "plateau": False, "restart_on_overfit": False}


def _xent(logits: np.ndarray, y: np.ndarray) -> float:
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    out = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    return out if math.isfinite(out) else math.nan


def _noisy(ids: np.ndarray, y: np.ndarray, seed: int, rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The token task with a fraction ``rate`` of its labels flipped: a loss floor well above 0
    (entropy of the noise), so that relative regret means what it does on the other tasks."""
    flip = np.random.default_rng(seed).random(len(y)) < rate
    return ids, np.where(flip, 1 - y, y)


# ------------------------------------------------------------------------------ Hugging Face
def _hf_run(seed: int, lr: float | None, method: str | None, *, model_kind: str, accumulation: int = 1,
            peak: float | None = None) -> dict:
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    if model_kind == "bert":
        ids, y = _noisy(*tokens(1024, seed=100 + seed), seed=1100 + seed)
        vids, vy = _noisy(*tokens(256, seed=200), seed=1200)
        train_ds = [{"input_ids": torch.from_numpy(ids[i]), "labels": torch.tensor(y[i])} for i in range(len(y))]
        val_x, val_y = torch.from_numpy(vids), vy
        cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=32, num_labels=2)
        model = BertForSequenceClassification(cfg)
        epochs, batch, optim = 3, 16, "adamw_torch"

        def logits_of(m):
            return m(input_ids=val_x).logits
    else:  # a plain torch MLP on digits, the Trainer's optim="sgd"
        Xtr, ytr, Xva, yva = digits()
        train_ds = [{"pixels": torch.from_numpy(Xtr[i]), "labels": torch.tensor(ytr[i])} for i in range(len(ytr))]
        val_x, val_y = torch.from_numpy(Xva), yva

        class Clf(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                               torch.nn.ReLU(), torch.nn.Linear(128, 10))

            def forward(self, pixels, labels=None):
                logits = self.net(pixels)
                out = {"logits": logits}
                if labels is not None:
                    out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
                return out

        model = Clf()
        epochs, batch, optim = 8, 32, "sgd"

        def logits_of(m):
            return m(val_x)["logits"]
    key = "input_ids" if model_kind == "bert" else "pixels"
    val_ds = [{key: val_x[i], "labels": torch.tensor(val_y[i])} for i in range(len(val_y))]
    tmp = tempfile.mkdtemp(prefix="lrkit-ffw-hf-")
    try:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch // accumulation,
            gradient_accumulation_steps=accumulation, learning_rate=lr if lr is not None else 5e-5, optim=optim,
            save_strategy="no", eval_strategy="no", seed=seed, data_seed=seed, report_to=[], disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0, per_device_eval_batch_size=256,
        )
        callbacks: list[Any] = []
        if method == "autopilot":
            from lrkit.transformers import AutopilotCallback

            callbacks.append(AutopilotCallback(peak_lr=peak, progress=False, **_static(peak)))
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, callbacks=callbacks)
        info: dict[str, Any] = {}
        if method == "lrkit":
            import lrkit.transformers

            res = lrkit.transformers.find_lr(trainer, progress=False)
            info = {"finder_steps": int(res.details.get("cost_steps", 0) or 0), "method_detail": res.method}
        trainer.train()
        chosen = float(trainer.args.learning_rate)
        if callbacks:
            info = _plan_info(callbacks[0])
            chosen = info.pop("lr")
        steps = int(trainer.state.global_step)
        model.eval()
        with torch.no_grad():
            loss = _xent(logits_of(model).float().numpy(), val_y)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"val_loss": loss, "lr": chosen, "train_steps": steps, **info}


# ------------------------------------------------------------------------------ Lightning
def _lightning_run(seed: int, lr: float | None, method: str | None, *, kind: str, peak: float | None = None) -> dict:
    import lightning.pytorch as pl
    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    Xtr, ytr, Xva, yva = digits(_Raw() if kind == "unscaled" else None)
    if kind == "cnn":
        Xtr, Xva = Xtr.reshape(-1, 1, 8, 8), Xva.reshape(-1, 1, 8, 8)
    epochs = {"mlp": 8, "cnn": 6, "unscaled": 8}[kind]

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lr = lr if lr is not None else 1e-3
            pl.seed_everything(seed, verbose=False)
            if kind == "cnn":
                self.net = torch.nn.Sequential(
                    torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                    torch.nn.Linear(32 * 4 * 4, 10))
            else:
                self.net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                               torch.nn.ReLU(), torch.nn.Linear(128, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, b, i):
            x, y = b
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, b, i):
            x, y = b
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            if kind == "mlp":
                return torch.optim.Adam(self.parameters(), lr=self.lr)
            if kind == "unscaled":
                return torch.optim.SGD(self.parameters(), lr=self.lr)
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True)
            if method == "autopilot":  # the autopilot sets the LR itself: the user drops the scheduler
                return opt
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr,
                                                        total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    module = Module()
    g = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr)),
                                     batch_size=32, shuffle=True, generator=g)
    vdl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(Xva), torch.from_numpy(yva)),
                                      batch_size=360)
    callbacks: list[Any] = []
    finder = None
    if method == "lrkit":
        from lrkit.lightning import LRFinder

        finder = LRFinder(progress=False)
        callbacks.append(finder)
    pilot = None
    if method == "autopilot":
        from lrkit.lightning import AutopilotCallback

        pilot = AutopilotCallback(peak_lr=peak, progress=False, **_static(peak))
        callbacks.append(pilot)
    tmp = tempfile.mkdtemp(prefix="lrkit-ffw-pl-")
    try:
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                             callbacks=callbacks, default_root_dir=tmp)
        info: dict[str, Any] = {}
        if method == "lightning_tuner":
            from lightning.pytorch.tuner import Tuner

            found = Tuner(trainer).lr_find(module, train_dataloaders=dl, val_dataloaders=vdl)
            info = {"finder_steps": int(found.num_training) if found is not None else 0}
            if found is None or found.suggestion() is None:  # Lightning found nothing: the LR stays
                info["method_detail"] = "no suggestion"
        trainer.fit(module, dl, vdl)
        chosen = float(module.lr)
        if finder is not None:
            info = {"finder_steps": int(finder.result.details.get("cost_steps", 0) or 0),
                    "method_detail": finder.result.method}
        if pilot is not None:
            info = _plan_info(pilot)
            chosen = info.pop("lr")
        module.eval()
        with torch.no_grad():
            loss = _xent(module(torch.from_numpy(Xva)).numpy(), yva)
        return {"val_loss": loss, "lr": chosen, "train_steps": int(trainer.global_step), **info}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Raw:
    """Asks ``real_runs.digits`` for the raw pixel counts (0-16), as a user who skipped the scaler."""

    regime = "unscaled"


# ------------------------------------------------------------------------------ Keras
def _keras_run(seed: int, lr: float | None, method: str | None, *, kind: str, peak: float | None = None) -> dict:
    import keras

    if kind == "wine":
        from sklearn.datasets import load_wine

        X, y = load_wine(return_X_y=True)
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(X))
        tr, va = idx[:130], idx[130:]
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-8
        Xtr, Xva = ((X[tr] - mu) / sd).astype("float32"), ((X[va] - mu) / sd).astype("float32")
        ytr, yva = y[tr].astype("int64"), y[va].astype("int64")
        epochs, batch, hidden, classes = 40, 16, 64, 3
    else:
        Xtr, ytr, Xva, yva = digits()
        epochs, batch, hidden, classes = 12, 32, 128, 10
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((Xtr.shape[1],)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(classes)])
    opt = (keras.optimizers.SGD(learning_rate=lr if lr is not None else 0.01, momentum=0.9) if kind == "wine"
           else keras.optimizers.Adam(learning_rate=lr if lr is not None else 1e-3))
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = epochs * math.ceil(len(Xtr) / batch)
    info: dict[str, Any] = {}
    if method == "lrkit":
        import lrkit.keras as lk

        res = lk.find_lr(model, Xtr, ytr, batch_size=batch, val_data=(Xva, yva), train_steps=steps, progress=False)
        model.optimizer.learning_rate = res.suggestion
        info = {"finder_steps": int(res.details.get("cost_steps", 0) or 0), "method_detail": res.method}
    callbacks: list[Any] = []
    if method == "autopilot":
        from lrkit.keras import AutopilotCallback

        callbacks.append(AutopilotCallback(Xtr, ytr, batch_size=batch, val_data=(Xva, yva), peak_lr=peak,
                                           **_static(peak)))
    model.fit(Xtr, ytr, batch_size=batch, epochs=epochs, validation_data=(Xva, yva), verbose=0, callbacks=callbacks)
    chosen = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    if callbacks:
        info = _plan_info(callbacks[0])
        chosen = info.pop("lr")
    loss = _xent(keras.ops.convert_to_numpy(model(Xva, training=False)), yva)
    return {"val_loss": loss, "lr": chosen, "train_steps": steps, **info}


def _task(name: str, framework: str, grid: tuple[float, float], default_lr: float, fn: Callable, **kw: Any):
    return FrameworkTask(name, framework, grid, default_lr,
                         lambda seed, lr=None, method=None, peak=None: fn(seed, lr, method, peak=peak, **kw))


def _plan_info(cb: Any) -> dict[str, Any]:
    """What an autopilot callback's run reports: its peak, its finder's cost, its rollbacks."""
    plan = cb.plan
    return {"lr": float(plan.peak_lr), "finder_steps": int(plan.finder_cost_steps),
            "rollbacks": sum(e.kind == "rollback" for e in cb.events), "method_detail": plan.shape_source}


TASKS: dict[str, FrameworkTask] = {t.name: t for t in (
    _task("hf_bert_adamw", "hf", (-6.0, -1.0), 5e-5, _hf_run, model_kind="bert"),
    _task("hf_bert_adamw_accum4", "hf", (-6.0, -1.0), 5e-5, _hf_run, model_kind="bert", accumulation=4),
    _task("hf_mlp_sgd", "hf", (-4.0, 1.0), 5e-5, _hf_run, model_kind="mlp"),
    _task("lightning_mlp_adam", "lightning", (-5.0, 0.0), 1e-3, _lightning_run, kind="mlp"),
    _task("lightning_cnn_onecycle_sgdm", "lightning", (-4.0, 1.0), 1e-3, _lightning_run, kind="cnn"),
    _task("lightning_unscaled_sgd", "lightning", (-6.0, 0.0), 1e-3, _lightning_run, kind="unscaled"),
    _task("keras_mlp_adam", "keras", (-5.0, 0.0), 1e-3, _keras_run, kind="digits"),
    _task("keras_wine_sgdm", "keras", (-4.0, 1.0), 0.01, _keras_run, kind="wine"),
)}


def split_names() -> tuple[list[str], list[str]]:
    """The fixed split: sort the task names by the SHA-256 of their UTF-8 bytes; even ranks are
    the development half, odd ranks the held-out half."""
    ranked = sorted(TASKS, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return ranked[0::2], ranked[1::2]


DEV, HELDOUT = (tuple(h) for h in split_names())
