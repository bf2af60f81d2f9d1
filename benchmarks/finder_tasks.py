"""Small real training tasks for the finder benchmark, each with a fixed budget and a Trainer.

Every task is a :class:`Task`: data tensors (train / validation), a model factory, an optimizer
factory ``make_optimizer(params, lr)``, a training budget in optimizer steps, a batch size, an LR
multiplier schedule for the real run (constant, or warmup + cosine for the transformer-style LM),
and the log grid of the oracle. :class:`TensorTrainer` implements lrkit's Trainer protocol over
in-memory tensors (no DataLoader overhead: these models take well under a millisecond a step).

Tasks (the kinds the findings in ``/work/shared/FINDINGS.md`` measured failing):

========================  ===================================================  ==============
name                      what                                                 optimizer
========================  ===================================================  ==============
digits_mlp_adam           sklearn digits, MLP 64-64-10                         Adam
mnist_mlp_sgdm            MNIST 10k test images (8k/2k), MLP 784-64-10         SGD momentum 0.9
charlm_gru_adamw          tiny-shakespeare chars, GRU 16/48, warmup + cosine   AdamW (wd 0.01)
logreg_unscaled_sgd       breast_cancer, *unscaled* features, logistic reg.    SGD
diabetes_mlp_rmsprop      diabetes regression (target / 100), MLP 10-32-1      RMSprop
wine_unscaled_adagrad     wine, *unscaled* features, MLP 13-32-3               Adagrad
finetune_digits_adam      digits MLP pre-trained on 0-4, fine-tuned on 120     Adam
                          shifted images of 0-9 (several epochs: overfits)
========================  ===================================================  ==============

MNIST and tiny-shakespeare need ``/work/shared/data``; without it those tasks are skipped with a
message (see :func:`available_tasks`).
"""
from __future__ import annotations

import copy
import gzip
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

SHARED_DATA = Path(os.environ.get("LRKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@dataclass
class Task:
    name: str
    family: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    make_model: Callable[[], nn.Module]
    make_optimizer: Callable[[list, float], torch.optim.Optimizer]
    loss_fn: Callable
    budget: int
    batch_size: int
    grid: tuple[float, float]
    schedule: Callable[[int, int], float] = field(default=lambda t, total: 1.0)
    init_state: dict | None = None  # pre-trained weights (fine-tuning)


class TensorTrainer:
    """lrkit's Trainer protocol over in-memory tensors, shuffled each epoch by a seeded generator."""

    def __init__(self, task: Task, seed: int, optimizer_factory: Callable | None = None, lr: float = 1e-3):
        self.task = task
        torch.manual_seed(seed)
        self.model = task.make_model()
        if task.init_state is not None:
            self.model.load_state_dict(task.init_state)
        factory = optimizer_factory or task.make_optimizer
        self.optimizer = factory(list(self.model.parameters()), lr)
        self.gen = torch.Generator().manual_seed(10_000 + seed)
        self.n = len(task.x_train)
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.steps = 0

    def _batch(self):
        b = self.task.batch_size
        if self.pos + b > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        return self.task.x_train[idx], self.task.y_train[idx]

    def snapshot(self):
        return copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(), self.gen.get_state(),
                              self.perm, self.pos, self.steps))

    def restore(self, state) -> None:
        m, o, g, perm, pos, steps = copy.deepcopy(state)
        self.model.load_state_dict(m)
        self.optimizer.load_state_dict(o)
        self.gen.set_state(g)
        self.perm, self.pos, self.steps = perm, pos, steps

    def step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self._batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss_fn(self.model(x), y)
        if torch.isfinite(loss):
            loss.backward()
            self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> float | None:
        self.model.eval()
        val = float(self.task.loss_fn(self.model(self.task.x_val), self.task.y_val))
        self.model.train()
        return val


def train(task: Task, lr: float, seed: int, optimizer_factory: Callable | None = None) -> tuple[float, bool]:
    """Train ``task`` for its budget at peak LR ``lr`` (times its schedule); (val loss, diverged)."""
    t = TensorTrainer(task, seed, optimizer_factory, lr)
    for i in range(task.budget):
        loss = t.step(lr * task.schedule(i, task.budget))
        if not math.isfinite(loss):
            return math.inf, True
    val = t.evaluate()
    return (val, False) if math.isfinite(val) else (math.inf, True)


def initial_val_loss(task: Task, seed: int = 0) -> float:
    return TensorTrainer(task, seed).evaluate()


# ----------------------------------------------------------------------------------------- tasks
def _split(x, y, n_val, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    va, tr = idx[:n_val], idx[n_val:]
    return x[tr], y[tr], x[va], y[va]


def _mlp(*sizes: int) -> Callable[[], nn.Module]:
    def make():
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])
    return make


def _t(a, dtype=torch.float32):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def digits_mlp_adam() -> Task:
    from sklearn.datasets import load_digits
    d = load_digits()
    xtr, ytr, xva, yva = _split(d.data / 16.0, d.target, 397)
    return Task("digits_mlp_adam", "adam", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(64, 64, 10), lambda p, lr: torch.optim.Adam(p, lr=lr), nn.functional.cross_entropy,
                budget=600, batch_size=32, grid=(1e-5, 1.0))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_mlp_sgdm() -> Task:
    root = SHARED_DATA / "mnist"
    x = _read_idx(root / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    y = _read_idx(root / "t10k-labels-idx1-ubyte.gz")
    xtr, ytr, xva, yva = _split(x, y, 2000)
    return Task("mnist_mlp_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(784, 64, 10), lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
                nn.functional.cross_entropy, budget=600, batch_size=64, grid=(1e-4, 10.0))


class _CharGRU(nn.Module):
    def __init__(self, vocab: int, emb: int = 16, hidden: int = 48):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h)


def _seq_ce(logits, y):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _warmup_cosine(t: int, total: int) -> float:
    warm = max(1, total // 10)
    if t < warm:
        return (t + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))


def charlm_gru_adamw() -> Task:
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:300_000]
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))
    seq = 24
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].reshape(n, seq)
    y = ids[1: n * seq + 1].reshape(n, seq)
    xtr, ytr, xva, yva = _split(x, y, 128)
    vocab = len(chars)
    return Task("charlm_gru_adamw", "adamw", _t(xtr, torch.long), _t(ytr, torch.long), _t(xva, torch.long),
                _t(yva, torch.long), lambda: _CharGRU(vocab),
                lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), _seq_ce,
                budget=300, batch_size=16, grid=(1e-4, 1.0), schedule=_warmup_cosine)


def logreg_unscaled_sgd() -> Task:
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    xtr, ytr, xva, yva = _split(d.data, d.target, 120)
    return Task("logreg_unscaled_sgd", "sgd", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(30, 2), lambda p, lr: torch.optim.SGD(p, lr=lr), nn.functional.cross_entropy,
                budget=500, batch_size=32, grid=(1e-9, 1e-3))


def _mse(out, y):
    return nn.functional.mse_loss(out.squeeze(-1), y)


def diabetes_mlp_rmsprop() -> Task:
    from sklearn.datasets import load_diabetes
    d = load_diabetes()
    xtr, ytr, xva, yva = _split(d.data, d.target / 100.0, 100)
    return Task("diabetes_mlp_rmsprop", "rmsprop", _t(xtr), _t(ytr), _t(xva), _t(yva),
                _mlp(10, 32, 1), lambda p, lr: torch.optim.RMSprop(p, lr=lr), _mse,
                budget=500, batch_size=32, grid=(1e-5, 1.0))


def wine_unscaled_adagrad() -> Task:
    from sklearn.datasets import load_wine
    d = load_wine()
    xtr, ytr, xva, yva = _split(d.data, d.target, 48)
    return Task("wine_unscaled_adagrad", "adagrad", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(13, 32, 3), lambda p, lr: torch.optim.Adagrad(p, lr=lr), nn.functional.cross_entropy,
                budget=500, batch_size=16, grid=(1e-4, 10.0))


def finetune_digits_adam() -> Task:
    """Pre-train on digits 0-4 (clean), fine-tune on 120 shifted, noisy images of all digits."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.reshape(-1, 8, 8) / 16.0
    y = d.target
    rng = np.random.default_rng(1)
    pre = y < 5
    make = _mlp(64, 64, 10)
    torch.manual_seed(123)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xp, yp = _t(x[pre].reshape(-1, 64)), _t(y[pre], torch.long)
    for i in range(400):
        idx = torch.randint(0, len(xp), (64,), generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        nn.functional.cross_entropy(model(xp[idx]), yp[idx]).backward()
        opt.step()
    shifted = np.roll(x, 1, axis=2) * 0.8 + 0.1 * rng.random(x.shape)
    idx = rng.permutation(len(x))
    tr, va = idx[:120], idx[120:620]
    xs = shifted.reshape(-1, 64)
    return Task("finetune_digits_adam", "adam", _t(xs[tr]), _t(y[tr], torch.long), _t(xs[va]), _t(y[va], torch.long),
                make, lambda p, lr: torch.optim.Adam(p, lr=lr), nn.functional.cross_entropy,
                budget=300, batch_size=16, grid=(1e-6, 1e-1),
                init_state={k: v.clone() for k, v in model.state_dict().items()})


ALL_TASKS = [digits_mlp_adam, mnist_mlp_sgdm, charlm_gru_adamw, logreg_unscaled_sgd, diabetes_mlp_rmsprop,
             wine_unscaled_adagrad, finetune_digits_adam]
NEEDS_SHARED = {"mnist_mlp_sgdm", "charlm_gru_adamw"}


def available_tasks(names: list[str] | None = None) -> tuple[list[Task], list[str]]:
    """Build the tasks (optionally only ``names``); returns (tasks, skip messages)."""
    tasks, skipped = [], []
    for make in ALL_TASKS:
        if names and make.__name__ not in names:
            continue
        if make.__name__ in NEEDS_SHARED and not SHARED_DATA.is_dir():
            skipped.append(f"{make.__name__}: skipped, {SHARED_DATA} not found")
            continue
        tasks.append(make())
    return tasks, skipped
