"""Real framework runs for the doctor's held-out benchmark (see ``doctor_real_runs.py``).

Each :class:`RunSpec` is one small training run with a real framework, logged the way that
framework logs by default:

* ``hf``: a Hugging Face ``Trainer`` fine-tuning a tiny BERT classifier built from a
  ``BertConfig`` (2 layers, hidden 64; no hub download) on a synthetic token task (a sequence is
  positive when it holds a marker token). Variant ``a``: ``logging_steps=10``, evaluation and a
  checkpoint every epoch (``checkpoint-N/trainer_state.json``); variant ``b``: ``logging_steps=1``,
  no evaluation, ``trainer.save_state()`` at the end (``trainer_state.json``); variant ``d``: the
  Trainer's own defaults, ``logging_steps=500`` over these 192-step runs (no training loss in any
  ``trainer_state.json``), with an evaluation and a checkpoint every epoch.
* ``lightning``: an MLP (3 hidden ReLU layers of 128, Adam) on scikit-learn digits. Variant ``a``: Lightning's default logger
  (TensorBoard, ``lightning_logs/version_0``) with the default ``log_every_n_steps=50`` and a
  validation every epoch; variant ``b``: ``CSVLogger`` (``metrics.csv``), ``log_every_n_steps=1``
  and gradient norms logged with ``lightning.pytorch.utilities.grad_norm`` (as Lightning's docs
  show), no validation.
* variant ``c`` (Hugging Face and Lightning): as ``a``, with gradient accumulation over
  :data:`ACCUMULATION` micro-batches of a quarter of the batch (``gradient_accumulation_steps``,
  ``accumulate_grad_batches``): the same optimizer steps, the logged losses averaged over them.
* ``keras``: ``model.fit`` of an MLP on digits with ``keras.callbacks.CSVLogger`` (one row per
  epoch) and the ``History`` saved as JSON. Variant ``a``: with ``validation_data``; ``b``: without.
* ``torch``: a plain PyTorch loop on digits writing with ``torch.utils.tensorboard.SummaryWriter``
  into one shared ``runs/`` folder (one sub-directory per run), tags as in PyTorch's TensorBoard
  docs: ``Loss/train`` every step, ``Loss/test`` and ``Accuracy/test`` every epoch (variant ``a``);
  variant ``b``: ``Loss/train`` as the mean of every 10 steps (the tutorial's ``running_loss``),
  no test tags.

Regimes (the ground truth): ``good`` LR; ``unscaled`` (the good LR on the raw, unstandardised
inputs: a healthy run whose untrained model scores far above chance; not for the token task);
``too_low`` (about 1000x below good: the run stays
flat); ``too_high`` (the run blows up); ``spiking`` (the good LR with a few steps at 300x it,
mid-run); ``nan`` (the good LR until mid-run, then a NaN LR: the weights are poisoned).

**The split, fixed here once:** seed 0 runs are the development half, seed 1 runs the held-out
half. The two seeds also use different LRs within each regime (``LRS``), so the held-out half is
not the development half re-seeded.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lrkit.doctor.guard import GuardGaveUp

os.environ.setdefault("KERAS_BACKEND", "torch")

FRAMEWORKS = ("hf", "lightning", "keras", "torch")
REGIMES = ("good", "unscaled", "too_low", "too_high", "spiking", "nan")
#: regimes of healthy runs (false alarms are counted on them; the guard must not harm them)
HEALTHY = ("good", "unscaled")
VARIANTS = ("a", "b", "c", "d")
#: the variant ``c`` (gradient accumulation) exists for the frameworks that have it built in
ACCUMULATING = ("hf", "lightning")
#: the variant ``d`` (the Trainer's default logging) is the Hugging Face Trainer's
DEFAULT_LOGGING = ("hf",)
#: micro-batches per optimizer step in variant ``c``
ACCUMULATION = 4
SEEDS = (0, 1)
#: verdicts that count as a correct diagnosis of each regime
EXPECTED: dict[str, tuple[str, ...]] = {
    "good": ("healthy", "converged", "overfitting"),
    "unscaled": ("healthy", "converged", "overfitting"),
    "too_low": ("flat",),
    "too_high": ("diverging", "fluctuating", "nan"),
    "spiking": ("diverging", "fluctuating", "nan"),
    "nan": ("nan",),
}
#: verdicts that are not an alarm (a healthy run may end with them)
QUIET = ("healthy", "converged", "overfitting")
#: (framework, regime) -> LR for seed 0 (development) and seed 1 (held-out)
LRS: dict[str, dict[str, tuple[float, float]]] = {
    "hf": {"good": (1e-3, 2e-3), "too_low": (1e-6, 2e-6), "too_high": (0.1, 0.3)},
    "lightning": {"good": (1e-3, 2e-3), "too_low": (2e-6, 1e-6), "too_high": (0.3, 1.0)},
    "keras": {"good": (1e-3, 2e-3), "too_low": (2e-6, 1e-6), "too_high": (0.3, 1.0)},
    "torch": {"good": (1e-3, 2e-3), "too_low": (2e-6, 1e-6), "too_high": (0.3, 1.0)},
}
SPIKE_FACTOR = 300.0
SPIKE_STEPS = 3


@dataclass(frozen=True)
class RunSpec:
    framework: str
    regime: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.variant}-{self.regime}-s{self.seed}"

    @property
    def half(self) -> str:
        """The fixed split: seed 0 is development, seed 1 is held out."""
        return "dev" if self.seed % 2 == 0 else "heldout"

    @property
    def lr(self) -> float:
        table = LRS[self.framework]
        key = self.regime if self.regime in table else "good"
        return table[key][self.seed % 2]

    def lr_factor(self, step: int, total: int) -> float:
        """The multiplier of the run's LR at ``step`` (spikes and NaN injections mid-run)."""
        mid = int(total * 0.45)
        if self.regime == "spiking" and mid <= step < mid + SPIKE_STEPS:
            return SPIKE_FACTOR
        if self.regime == "nan" and step >= mid:
            return math.nan
        return 1.0


def all_specs() -> list[RunSpec]:
    """Every run; ``unscaled`` only where the inputs have a scale (not the token task)."""
    return [RunSpec(f, r, v, s) for f in FRAMEWORKS for v in VARIANTS for r in REGIMES for s in SEEDS
            if not (f == "hf" and r == "unscaled") and (v != "c" or f in ACCUMULATING)
            and (v != "d" or f in DEFAULT_LOGGING)]


# ------------------------------------------------------------------------------ data
def digits(spec: RunSpec | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scikit-learn digits, split 1437/360 (fixed split): standardised, or the raw pixel counts
    (0-16, as a user who skipped the scaler feeds them) for an ``unscaled`` run."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    if spec is None or spec.regime != "unscaled":
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    tr, va = idx[:1437], idx[1437:]
    return X[tr].astype(np.float32), y[tr].astype(np.int64), X[va].astype(np.float32), y[va].astype(np.int64)


def tokens(n: int, seed: int, length: int = 16, vocab: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic text task: a sequence is positive when it holds the marker token 7."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, vocab, size=(n, length))
    y = rng.integers(0, 2, size=n)
    pos = rng.integers(1, length, size=n)
    ids[y == 1, pos[y == 1]] = 7
    ids[:, 0] = 2  # [CLS]
    return ids.astype(np.int64), y.astype(np.int64)


# ------------------------------------------------------------------------------ results
@dataclass
class RunResult:
    name: str
    final_accuracy: float  # validation accuracy at the end (NaN outputs count as wrong)
    steps: int
    live_verdict: str  # the watcher's worst verdict during the run
    live_step: int | None
    live_final: str  # the watcher's diagnosis at the end
    interventions: int = 0
    gave_up: bool = False
    seconds: float = 0.0


def _live(cb: Any) -> tuple[str, int | None, str]:
    """(worst verdict, its onset, final verdict) of a watcher."""
    from lrkit.doctor import SEVERITY

    final = cb.diagnosis.verdict
    worst = getattr(cb, "worst", None)
    if worst is not None:
        return worst.verdict, worst.step, final
    hist = list(getattr(cb, "detections", None) or cb.doctor.history)
    if not hist:
        return final, None, final
    d = max(hist, key=lambda h: SEVERITY.get(h.verdict, 0))
    return d.verdict, d.step, final


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    logits = np.asarray(logits, dtype=np.float64)
    ok = np.all(np.isfinite(logits), axis=1)
    pred = np.argmax(np.nan_to_num(logits, nan=-np.inf), axis=1)
    return float(np.mean(ok & (pred == y)))


# ------------------------------------------------------------------------------ torch
def _torch_mlp(seed: int):
    import torch

    torch.manual_seed(seed)
    layers: list[Any] = [torch.nn.Linear(64, 128), torch.nn.ReLU()]
    for _ in range(2):
        layers += [torch.nn.Linear(128, 128), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(128, 10))


def run_torch(spec: RunSpec, out: Path, guard: bool) -> RunResult:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from lrkit.torch import TorchDoctor

    Xtr, ytr, Xva, yva = digits(spec)
    Xtr_t, ytr_t, Xva_t, yva_t = map(torch.from_numpy, (Xtr, ytr, Xva, yva))
    model = _torch_mlp(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    epochs, batch = 6, 32
    per_epoch = math.ceil(len(Xtr) / batch)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: spec.lr_factor(s, total))
    watch = TorchDoctor(model, opt, guard=guard)
    writer = SummaryWriter(log_dir=str(out)) if out is not None else None
    gen = torch.Generator().manual_seed(spec.seed)
    try:
        _torch_loop(spec, model, opt, sched, watch, writer, gen, Xtr_t, ytr_t, Xva_t, yva_t, epochs, batch, per_epoch)
        gave_up = False
    except GuardGaveUp:  # the guard left the model at the best state it saw
        gave_up = True
    if writer is not None:
        writer.close()
    with torch.no_grad():
        acc = _accuracy(model(Xva_t).numpy(), yva)
    v, s, f = _live(watch)
    return RunResult(spec.name, acc, total, v, s, f, len(watch.interventions), gave_up)


def _torch_loop(spec, model, opt, sched, watch, writer, gen, Xtr_t, ytr_t, Xva_t, yva_t, epochs, batch, per_epoch):
    import torch

    step, running = 0, 0.0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr_t), generator=gen)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(Xtr_t[idx]), ytr_t[idx])
            loss.backward()
            watch.after_backward(loss)
            opt.step()
            val = {}
            if spec.variant == "a" and i == per_epoch - 1:
                val = _torch_eval(model, Xva_t, yva_t)
            watch.after_step(step, loss, val_loss=val.get("loss"),
                             metrics={"val_accuracy": val["acc"]} if val else None)
            sched.step()
            if writer is not None:
                if spec.variant == "a":
                    writer.add_scalar("Loss/train", loss.item(), step)
                else:
                    running += loss.item()
                    if (step + 1) % 10 == 0:
                        writer.add_scalar("Loss/train", running / 10, step)
                        running = 0.0
            step += 1
        if writer is not None and spec.variant == "a":
            val = _torch_eval(model, Xva_t, yva_t)
            writer.add_scalar("Loss/test", val["loss"], step - 1)
            writer.add_scalar("Accuracy/test", val["acc"], step - 1)


def _torch_eval(model, X, y) -> dict[str, float]:
    import torch

    with torch.no_grad():
        logits = model(X)
        return {"loss": float(torch.nn.functional.cross_entropy(logits, y)), "acc": _accuracy(logits.numpy(), y.numpy())}


# ------------------------------------------------------------------------------ lightning
def run_lightning(spec: RunSpec, out: Path, guard: bool) -> RunResult:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities import grad_norm

    from lrkit.lightning import LRDoctorCallback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    Xtr, ytr, Xva, yva = digits(spec)
    accum = ACCUMULATION if spec.variant == "c" else 1
    tb = spec.variant in ("a", "c")  # TensorBoard, validation per epoch
    epochs, batch = 8, 32 // accum
    per_epoch = math.ceil(len(Xtr) / batch)
    total = epochs * math.ceil(per_epoch / accum)  # optimizer steps

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _torch_mlp(spec.seed)

        def training_step(self, b, i):
            x, y = b
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def on_before_optimizer_step(self, optimizer):
            if spec.variant == "b":
                self.log_dict(grad_norm(self, norm_type=2))

        def validation_step(self, b, i):
            x, y = b
            logits = self.net(x)
            self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=spec.lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: spec.lr_factor(s, total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    pl.seed_everything(spec.seed, verbose=False)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                     generator=torch.Generator().manual_seed(spec.seed))
    vdl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(Xva), torch.from_numpy(yva)),
                                      batch_size=360)
    cb = LRDoctorCallback(guard=guard, log_verdict=False)
    root = out if out is not None else Path(os.devnull)
    if out is None:
        logger: Any = False
    elif tb:
        logger = TensorBoardLogger(save_dir=str(root), name="lightning_logs", version=0)
    else:
        logger = CSVLogger(save_dir=str(root), name="lightning_logs", version=0)
    kw: dict[str, Any] = {} if tb else {"log_every_n_steps": 1}
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=1.0 if tb else 0, num_sanity_val_steps=0,
                         accumulate_grad_batches=accum,
                         default_root_dir=str(root) if out is not None else None, **kw)
    module = Module()
    gave_up = False
    try:
        trainer.fit(module, dl, vdl if tb else None)
    except GuardGaveUp:
        gave_up = True
    with torch.no_grad():
        acc = _accuracy(module.net(torch.from_numpy(Xva)).numpy(), yva)
    v, s, f = _live(cb)
    return RunResult(spec.name, acc, int(trainer.global_step), v, s, f, len(cb.interventions), gave_up)


# ------------------------------------------------------------------------------ keras
def run_keras(spec: RunSpec, out: Path, guard: bool) -> RunResult:
    import keras

    from lrkit.keras import LRDoctorCallback

    Xtr, ytr, Xva, yva = digits(spec)
    epochs, batch = 12, 32
    per_epoch = math.ceil(len(Xtr) / batch)
    total = epochs * per_epoch
    keras.utils.set_random_seed(spec.seed)
    model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(128, activation="relu") for _ in range(3)]
                             + [keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=spec.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class Fault(keras.callbacks.Callback):  # the spike / NaN injection, per batch
        def __init__(self) -> None:
            super().__init__()
            self.step = 0

        def on_train_batch_begin(self, batch_idx, logs=None):
            f = spec.lr_factor(self.step, total)
            if f != 1.0 or spec.regime in ("spiking", "nan"):
                self.model.optimizer.learning_rate = spec.lr * f
            self.step += 1

    cbs: list[Any] = [Fault()] if spec.regime in ("spiking", "nan") else []
    doc = LRDoctorCallback(guard=guard)
    cbs.append(doc)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cbs.append(keras.callbacks.CSVLogger(str(out / "training.log.csv")))
    gave_up = False
    try:
        hist = model.fit(Xtr, ytr, batch_size=batch, epochs=epochs, verbose=0, callbacks=cbs,
                         validation_data=(Xva, yva) if spec.variant == "a" else None)
    except GuardGaveUp:
        gave_up, hist = True, None
    if out is not None and hist is not None:
        (out / "history.json").write_text(json.dumps({k: [float(x) for x in v] for k, v in hist.history.items()}))
    acc = _accuracy(keras.ops.convert_to_numpy(model.predict(Xva, verbose=0)), yva)
    v, s, f = _live(doc)
    return RunResult(spec.name, acc, epochs * per_epoch, v, s, f, len(doc.interventions), gave_up)


# ------------------------------------------------------------------------------ hugging face
def run_hf(spec: RunSpec, out: Path, guard: bool) -> RunResult:
    import tempfile

    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from lrkit.transformers import LRDoctorCallback

    transformers.logging.set_verbosity_error()
    ids, y = tokens(1024, seed=100 + spec.seed)
    vids, vy = tokens(256, seed=200)

    class DS(torch.utils.data.Dataset):
        def __init__(self, ids, y):
            self.ids, self.y = torch.from_numpy(ids), torch.from_numpy(y)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.y[i]}

    torch.manual_seed(spec.seed)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(cfg)
    accum = ACCUMULATION if spec.variant == "c" else 1
    epochs, batch = 3, 16 // accum
    total = epochs * math.ceil(1024 / (batch * accum))  # optimizer steps
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    linear = lambda s: max(0.0, 1 - s / total)  # noqa: E731  the Trainer's default linear decay
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear(s) * spec.lr_factor(s, total))
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="lrkit-hf-")
        outdir = Path(tmp)
    else:
        outdir = out
    a = spec.variant in ("a", "c", "d")  # an evaluation and a checkpoint per epoch
    logging_steps = {"a": 10, "b": 1, "c": 10, "d": 500}[spec.variant]  # d: the Trainer's default
    args = TrainingArguments(
        output_dir=str(outdir), num_train_epochs=epochs, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        per_device_eval_batch_size=256, learning_rate=spec.lr, logging_steps=logging_steps,
        eval_strategy="epoch" if a else "no", save_strategy="epoch" if a and out is not None else "no",
        save_only_model=True, seed=spec.seed, report_to=[], disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0,
    )
    cb = LRDoctorCallback(guard=guard)
    trainer = Trainer(model=model, args=args, train_dataset=DS(ids, y), eval_dataset=DS(vids, vy),
                      optimizers=(opt, sched), callbacks=[cb])
    gave_up = False
    try:
        trainer.train()
    except GuardGaveUp:
        gave_up = True
    if out is not None:
        if not a:
            trainer.save_state()
        for ck in sorted(outdir.glob("checkpoint-*")):  # keep a checkpoint's trainer state and model config
            for f in ck.iterdir():
                if f.name not in ("trainer_state.json", "config.json"):
                    f.unlink() if f.is_file() else shutil.rmtree(f)
    model.eval()
    with torch.no_grad():
        acc = _accuracy(model(input_ids=torch.from_numpy(vids)).logits.numpy(), vy)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    v, s, f = _live(cb)
    return RunResult(spec.name, acc, int(trainer.state.global_step), v, s, f, len(cb.interventions), gave_up)


RUNNERS: dict[str, Callable[[RunSpec, Path | None, bool], RunResult]] = {
    "hf": run_hf, "lightning": run_lightning, "keras": run_keras, "torch": run_torch,
}


def log_path(spec: RunSpec) -> str:
    """Where the run's logs sit under ``benchmarks/real_runs/`` (what ``diagnose`` is given)."""
    if spec.framework == "torch":
        return f"torch/runs/{spec.name}"
    if spec.framework == "lightning":
        return f"lightning/{spec.name}/lightning_logs/version_0" + ("" if spec.variant != "b" else "/metrics.csv")
    if spec.framework == "keras":
        return f"keras/{spec.name}/training.log.csv"
    return f"hf/{spec.name}" + ("" if spec.variant != "b" else "/trainer_state.json")


def run(spec: RunSpec, out: Path | None, guard: bool) -> RunResult:
    """Train ``spec`` once (logs written under ``out`` when given), single-threaded."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = RUNNERS[spec.framework](spec, out, guard)
    res.seconds = time.perf_counter() - t0
    return res


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    return {**asdict(spec), "name": spec.name, "half": spec.half, "lr": spec.lr,
            "expected": list(EXPECTED[spec.regime]), "log": log_path(spec)}
