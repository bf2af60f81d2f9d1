"""Small real training tasks for the finder benchmark (and the tuning benchmark), split once into halves.

The interface (what another benchmark needs):

* :class:`Task` -- data tensors (train / validation), a model factory, an optimizer factory
  ``make_optimizer(params, lr)``, the loss, the real run's length ``budget`` (optimizer steps),
  its batch size, its LR multiplier schedule ``schedule(step, budget)`` (constant, warmup +
  cosine, steps), optional gradient clipping, the oracle's LR range ``grid``, and whether the
  finder is given the validation set (``finder_val``).
* :func:`train` ``(task, lr, seed) -> (final validation loss, diverged)`` -- one real run at peak
  LR ``lr``; ``report(step, val_loss)`` is called every tenth of the run when given (return
  ``True`` from it to stop the run early, e.g. a pruned trial).
* :class:`TensorTrainer` -- lrkit's Trainer protocol over the same in-memory tensors (no
  DataLoader overhead: these models take well under a millisecond a step).
* :func:`available_tasks` -- build tasks by name; :func:`halves` / :data:`DEV` /
  :data:`HELDOUT` -- the fixed development / held-out split (:func:`split_names`: tasks sorted by
  the SHA-256 of their name, even ranks to development, odd ranks held out; written down once,
  never chosen by looking at results).

Every task trains in about a second on one CPU thread.

=========================  ===================================================  ==============
name                       what (regime)                                        optimizer
=========================  ===================================================  ==============
digits_mlp_adam            sklearn digits, MLP 64-64-10                         Adam
mnist_mlp_sgdm             MNIST 10k test images (8k/2k), MLP 784-64-10         SGD momentum 0.9
charlm_gru_adamw           tiny-shakespeare chars, GRU 16/48, warmup + cosine   AdamW (wd 0.01)
logreg_unscaled_sgd        breast_cancer, *unscaled* features, logistic reg.    SGD
diabetes_mlp_rmsprop       diabetes regression (target / 100), MLP 10-32-1      RMSprop
wine_unscaled_adagrad      wine, *unscaled* features, MLP 13-32-3               Adagrad
finetune_digits_adam       digits MLP pre-trained on 0-4, fine-tuned on 120     Adam
                           shifted images of 0-9 (several epochs: overfits)
logreg_fullbatch_sgd       breast_cancer unscaled, *full batch*, no val for     SGD
                           the finder (ill-conditioned, deterministic steps)
linreg_edge_sgd            noisy ill-conditioned linear regression: the best    SGD
                           LR sits close to the stability edge
finetune_mnist_adamw       MNIST MLP pre-trained on 0-4, fine-tuned on 300      AdamW (wd 0.01)
                           images of 0-9 for ~40 epochs (overfits)
mnist_cnn_sgdm             MNIST 14x14, small CNN                               SGD momentum 0.9
moons_mlp_adadelta         two moons (noise 0.3), MLP 2-32-32-2                 Adadelta
sparse_text_adagrad        generated Zipf bag-of-words, logistic regression     Adagrad
digits_mlp_adafactor       digits MLP (family unknown to lrkit.scaling)         Adafactor
mnist_mlp_adam_bigbatch    MNIST MLP, batch 1024, 150 steps                     Adam
digits_labelnoise_sgdm     digits MLP, 30% of training labels random            SGD momentum 0.9
charlm_transformer_adamw   tiny-shakespeare, 1-layer transformer, warmup+cosine AdamW (wd 0.01)
digits_bn_step_sgdm        MLP with BatchNorm, weight decay, step schedule      SGD momentum, wd
diabetes_clip_sgd          diabetes MLP regression, gradient clipping (norm 1)  SGD
heavytail_mlp_adam         regression with Student-t (df 2.5) target noise      Adam
digits_mlp_adamw_short     a 90-step run, no validation set for the finder      AdamW
=========================  ===================================================  ==============

MNIST and tiny-shakespeare need ``/work/shared/data``; without it those tasks are skipped with a
message (see :func:`available_tasks`).

Example:
    >>> dev, heldout = split_names()
    >>> len(dev) + len(heldout) == len(ALL_TASKS) and not set(dev) & set(heldout)
    True
"""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lrkit.collapse import output_spread
from lrkit.finder.search import FirstBatches

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
    clip: float | None = None  # gradient clipping (max global norm) in every step, finder included
    finder_val: bool = True  # the finder sees the validation set (else evaluate() returns None)

    def definition(self) -> dict:
        """The parts of the definition beyond name, budget, batch size and grid (for cache keys)."""
        extra = {}
        if self.clip is not None:
            extra["clip"] = self.clip
        if not self.finder_val:
            extra["finder_val"] = False
        name = getattr(self.schedule, "__name__", "")
        if name != "<lambda>":
            extra["schedule"] = name
        return extra


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
        # every group keeps its ratio to the first group's LR (1 for every task here; a combined
        # Muon + AdamW of benchmarks/finder_muon.py has two)
        first = float(self.optimizer.param_groups[0]["lr"])
        self.ratios = [float(g["lr"]) / first for g in self.optimizer.param_groups]
        self.gen = torch.Generator().manual_seed(10_000 + seed)
        self.n = len(task.x_train)
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.steps = 0
        self._sample = FirstBatches()  # the first batches drawn (sample_loss), as TorchTrainer's

    def _batch(self):
        b = self.task.batch_size
        if self.pos + b > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        x, y = self.task.x_train[idx], self.task.y_train[idx]
        self._sample.offer((x, y), len(x))
        return x, y

    def snapshot(self):
        return copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(), self.gen.get_state(),
                              self.perm, self.pos, self.steps))

    def restore(self, state) -> None:
        m, o, g, perm, pos, steps = copy.deepcopy(state)
        self.model.load_state_dict(m)
        self.optimizer.load_state_dict(o)
        self.gen.set_state(g)
        self.perm, self.pos, self.steps = perm, pos, steps

    #: ``step(lr, skip=...)`` can leave an update out (the guard's ``skip_spikes``)
    skips_steps = True

    def step(self, lr: float, skip=None) -> float:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio
        x, y = self._batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss_fn(self.model(x), y)
        if skip is not None and torch.isfinite(loss) and skip(float(loss.detach())):
            self.steps += 1
            return float(loss.detach())
        if torch.isfinite(loss):
            loss.backward()
            if self.task.clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.task.clip)
            self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def data_shape(self) -> dict:
        """The Trainer protocol's optional shape of the data (as ``TorchTrainer``'s)."""
        return {"steps_per_epoch": self.n / self.task.batch_size, "examples": self.n,
                "parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}

    @torch.no_grad()
    def val_loss(self) -> float:
        """The validation loss (eval mode), whatever the finder is allowed to see."""
        self.model.eval()
        val = float(self.task.loss_fn(self.model(self.task.x_val), self.task.y_val))
        self.model.train()
        return val

    @torch.no_grad()
    def sample_loss(self) -> float | None:
        """The protocol's optional fixed-sample loss, as ``TorchTrainer.sample_loss``: the mean loss
        (eval mode) over the first training batches drawn (up to 256 examples or 8 batches)."""
        sample = self._sample.read()
        if not sample:
            return None
        self.model.eval()
        total = sum(float(self.task.loss_fn(self.model(x), y)) for x, y in sample)
        self.model.train()
        return total / len(sample)

    def evaluate(self) -> float | None:
        """The Trainer protocol's validation: ``None`` when the task hides it from the finder."""
        return self.val_loss() if self.task.finder_val else None

    @torch.no_grad()
    def output_spread(self) -> float | None:
        """The protocol's optional collapse check, as ``TorchTrainer``'s: the spread of the model's
        outputs over the validation inputs (the first training batch's when the task hides them)."""
        x = self.task.x_val if self.task.finder_val else self.task.x_train[:self.task.batch_size]
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return output_spread(out.float().numpy())


def train(task: Task, lr: float, seed: int, optimizer_factory: Callable | None = None,
          report: Callable[[int, float], bool | None] | None = None) -> tuple[float, bool]:
    """Train ``task`` for its budget at peak LR ``lr`` (times its schedule); (val loss, diverged).

    ``report(step, val_loss)``, when given, is called after every tenth of the budget (steps
    ``budget // 10, 2 * budget // 10, ...``; the last call is at ``budget``); if it returns ``True``
    the run stops there and its last validation loss is returned.
    """
    t = TensorTrainer(task, seed, optimizer_factory, lr)
    marks = {max(1, (k * task.budget) // 10) for k in range(1, 11)} if report is not None else set()
    for i in range(task.budget):
        loss = t.step(lr * task.schedule(i, task.budget))
        if not math.isfinite(loss):
            return math.inf, True
        if i + 1 in marks:
            val = t.val_loss()
            if not math.isfinite(val):
                return math.inf, True
            if report(i + 1, val):
                return val, False
    val = t.val_loss()
    return (val, False) if math.isfinite(val) else (math.inf, True)


def initial_val_loss(task: Task, seed: int = 0) -> float:
    """The validation loss of the untrained (or pre-trained) model: the benchmark's cap."""
    return TensorTrainer(task, seed).val_loss()


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


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    root = SHARED_DATA / "mnist"
    x = _read_idx(root / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    y = _read_idx(root / "t10k-labels-idx1-ubyte.gz")
    return x, y


def mnist_mlp_sgdm() -> Task:
    x, y = _mnist()
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


@functools.lru_cache(maxsize=1)
def _shakespeare() -> tuple[np.ndarray, int]:
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:300_000]
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text)), len(chars)


def charlm_gru_adamw() -> Task:
    ids, vocab = _shakespeare()
    seq = 24
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].reshape(n, seq)
    y = ids[1: n * seq + 1].reshape(n, seq)
    xtr, ytr, xva, yva = _split(x, y, 128)
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


def logreg_fullbatch_sgd() -> Task:
    """Full-batch gradient descent on unscaled breast-cancer features (condition number ~1e7)."""
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    xtr, ytr, xva, yva = _split(d.data, d.target, 120, seed=3)
    return Task("logreg_fullbatch_sgd", "sgd", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(30, 2), lambda p, lr: torch.optim.SGD(p, lr=lr), nn.functional.cross_entropy,
                budget=300, batch_size=len(xtr), grid=(1e-9, 1e-3), finder_val=False)


def linreg_edge_sgd() -> Task:
    """Noisy linear regression, feature scales 0.3..3: slow directions want the LR near the edge."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2400, 20)) * np.geomspace(0.3, 3.0, 20)
    w = rng.standard_normal(20)
    y = x @ w + 0.5 * rng.standard_normal(2400)
    xtr, ytr, xva, yva = _split(x, y, 400)
    return Task("linreg_edge_sgd", "sgd", _t(xtr), _t(ytr), _t(xva), _t(yva),
                _mlp(20, 1), lambda p, lr: torch.optim.SGD(p, lr=lr), _mse,
                budget=400, batch_size=16, grid=(1e-4, 1.0))


def finetune_mnist_adamw() -> Task:
    """MLP pre-trained on MNIST 0-4, fine-tuned with AdamW on 300 images of 0-9 (~40 epochs)."""
    x, y = _mnist()
    make = _mlp(784, 128, 10)
    torch.manual_seed(321)
    model = make()
    pre = np.flatnonzero(y[:5000] < 5)
    xp, yp = _t(x[pre]), _t(y[pre], torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(5)
    for _ in range(300):
        idx = torch.randint(0, len(xp), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xp[idx]), yp[idx]).backward()
        opt.step()
    rest = np.random.default_rng(2).permutation(np.arange(5000, len(x)))
    tr, va = rest[:300], rest[300:1800]
    return Task("finetune_mnist_adamw", "adamw", _t(x[tr]), _t(y[tr], torch.long), _t(x[va]), _t(y[va], torch.long),
                make, lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), nn.functional.cross_entropy,
                budget=400, batch_size=32, grid=(1e-6, 1e-1),
                init_state={k: v.clone() for k, v in model.state_dict().items()})


class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(h.flatten(1))


def mnist_cnn_sgdm() -> Task:
    """A one-conv CNN on 14x14 MNIST with SGD + momentum, validated by the finder."""
    x, y = _mnist()
    x = x.reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    xtr, ytr, xva, yva = _split(x[:5000], y[:5000], 1000, seed=4)
    return Task("mnist_cnn_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _SmallCNN, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), nn.functional.cross_entropy,
                budget=300, batch_size=32, grid=(1e-4, 10.0))


def moons_mlp_adadelta() -> Task:
    from sklearn.datasets import make_moons
    x, y = make_moons(n_samples=1200, noise=0.3, random_state=0)
    xtr, ytr, xva, yva = _split(x, y, 400)
    return Task("moons_mlp_adadelta", "adadelta", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(2, 32, 32, 2), lambda p, lr: torch.optim.Adadelta(p, lr=lr), nn.functional.cross_entropy,
                budget=400, batch_size=32, grid=(1e-3, 100.0))


def sparse_text_adagrad() -> Task:
    """Generated bag-of-words documents (Zipf word frequencies), logistic regression with Adagrad."""
    rng = np.random.default_rng(11)
    vocab, n = 500, 2400
    freq = 1.0 / np.arange(1, vocab + 1)
    words = rng.choice(vocab, size=(n, 20), p=freq / freq.sum())
    x = np.zeros((n, vocab))
    np.add.at(x, (np.repeat(np.arange(n), 20), words.ravel()), 1.0)
    w = rng.standard_normal(vocab) * (rng.random(vocab) < 0.2) * 2.0
    y = (x @ w + rng.standard_normal(n) > 0).astype(np.int64)
    xtr, ytr, xva, yva = _split(x, y, 600)
    return Task("sparse_text_adagrad", "adagrad", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(vocab, 2), lambda p, lr: torch.optim.Adagrad(p, lr=lr), nn.functional.cross_entropy,
                budget=300, batch_size=32, grid=(1e-4, 10.0))


def _digits(seed: int = 0):
    from sklearn.datasets import load_digits
    d = load_digits()
    return _split(d.data / 16.0, d.target, 397, seed=seed)


def digits_mlp_adafactor() -> Task:
    """torch.optim.Adafactor: a family lrkit.scaling does not know ("unknown")."""
    xtr, ytr, xva, yva = _digits(seed=5)
    return Task("digits_mlp_adafactor", "unknown", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(64, 64, 10), lambda p, lr: torch.optim.Adafactor(p, lr=lr), nn.functional.cross_entropy,
                budget=400, batch_size=32, grid=(1e-5, 10.0))


def mnist_mlp_adam_bigbatch() -> Task:
    x, y = _mnist()
    xtr, ytr, xva, yva = _split(x, y, 2000, seed=6)
    return Task("mnist_mlp_adam_bigbatch", "adam", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(784, 64, 10), lambda p, lr: torch.optim.Adam(p, lr=lr), nn.functional.cross_entropy,
                budget=150, batch_size=1024, grid=(1e-5, 1.0))


def digits_labelnoise_sgdm() -> Task:
    """30% of the training labels replaced by random ones; validation labels clean."""
    xtr, ytr, xva, yva = _digits(seed=7)
    rng = np.random.default_rng(8)
    flip = rng.random(len(ytr)) < 0.3
    ytr = np.where(flip, rng.integers(0, 10, len(ytr)), ytr)
    return Task("digits_labelnoise_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(64, 128, 10), lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
                nn.functional.cross_entropy, budget=600, batch_size=32, grid=(1e-4, 10.0))


class _CharTransformer(nn.Module):
    def __init__(self, vocab: int, seq: int, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        self.block = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.block(h, src_mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))


def charlm_transformer_adamw() -> Task:
    ids, vocab = _shakespeare()
    seq = 32
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].reshape(n, seq)
    y = ids[1: n * seq + 1].reshape(n, seq)
    xtr, ytr, xva, yva = _split(x, y, 128, seed=9)
    return Task("charlm_transformer_adamw", "adamw", _t(xtr, torch.long), _t(ytr, torch.long), _t(xva, torch.long),
                _t(yva, torch.long), lambda: _CharTransformer(vocab, seq),
                lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), _seq_ce,
                budget=300, batch_size=16, grid=(1e-5, 1.0), schedule=_warmup_cosine)


def _bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))


def _step_schedule(t: int, total: int) -> float:
    return 1.0 if t < total // 2 else (0.1 if t < (3 * total) // 4 else 0.01)


def digits_bn_step_sgdm() -> Task:
    xtr, ytr, xva, yva = _digits(seed=10)
    return Task("digits_bn_step_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _bn_mlp, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=5e-4),
                nn.functional.cross_entropy, budget=500, batch_size=32, grid=(1e-4, 10.0), schedule=_step_schedule)


def diabetes_clip_sgd() -> Task:
    """Plain SGD with gradient clipping at norm 1: high LRs are tamed rather than divergent."""
    from sklearn.datasets import load_diabetes
    d = load_diabetes()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    xtr, ytr, xva, yva = _split(x, d.target / 100.0, 100, seed=12)
    return Task("diabetes_clip_sgd", "sgd", _t(xtr), _t(ytr), _t(xva), _t(yva),
                _mlp(10, 32, 1), lambda p, lr: torch.optim.SGD(p, lr=lr), _mse,
                budget=500, batch_size=32, grid=(1e-4, 10.0), clip=1.0)


def heavytail_mlp_adam() -> Task:
    """Nonlinear regression whose targets carry Student-t (df 2.5) noise: rare huge residuals."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2000, 8))
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * rng.standard_t(2.5, 2000)
    xtr, ytr, xva, yva = _split(x, y, 500)
    return Task("heavytail_mlp_adam", "adam", _t(xtr), _t(ytr), _t(xva), _t(yva),
                _mlp(8, 32, 1), lambda p, lr: torch.optim.Adam(p, lr=lr), _mse,
                budget=400, batch_size=32, grid=(1e-5, 1.0))


def digits_mlp_adamw_short() -> Task:
    """A 90-step run: verification runs have only a few steps; no validation set for the finder."""
    xtr, ytr, xva, yva = _digits(seed=14)
    return Task("digits_mlp_adamw_short", "adamw", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(64, 64, 10), lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
                nn.functional.cross_entropy, budget=90, batch_size=32, grid=(1e-5, 1.0), finder_val=False)


ALL_TASKS = [digits_mlp_adam, mnist_mlp_sgdm, charlm_gru_adamw, logreg_unscaled_sgd, diabetes_mlp_rmsprop,
             wine_unscaled_adagrad, finetune_digits_adam, logreg_fullbatch_sgd, linreg_edge_sgd,
             finetune_mnist_adamw, mnist_cnn_sgdm, moons_mlp_adadelta, sparse_text_adagrad, digits_mlp_adafactor,
             mnist_mlp_adam_bigbatch, digits_labelnoise_sgdm, charlm_transformer_adamw, digits_bn_step_sgdm,
             diabetes_clip_sgd, heavytail_mlp_adam, digits_mlp_adamw_short]
NEEDS_SHARED = {"mnist_mlp_sgdm", "charlm_gru_adamw", "finetune_mnist_adamw", "mnist_cnn_sgdm",
                "mnist_mlp_adam_bigbatch", "charlm_transformer_adamw"}


def split_names() -> tuple[list[str], list[str]]:
    """The fixed split: (development names, held-out names).

    Rule: sort every task name by the SHA-256 of its UTF-8 bytes; even ranks (0, 2, ...) form the
    development half, odd ranks the held-out half. Design only on the first; run the second only
    to report.
    """
    ranked = sorted((make.__name__ for make in ALL_TASKS), key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return ranked[0::2], ranked[1::2]


DEV, HELDOUT = (tuple(h) for h in split_names())


def available_tasks(names: list[str] | None = None) -> tuple[list[Task], list[str]]:
    """Build the tasks (optionally only ``names``, in ``ALL_TASKS`` order); returns (tasks, skip messages)."""
    known = {make.__name__ for make in ALL_TASKS}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise ValueError(f"unknown task name(s) {unknown}; known: {sorted(known)}")
    tasks, skipped = [], []
    for make in ALL_TASKS:
        if names and make.__name__ not in names:
            continue
        if make.__name__ in NEEDS_SHARED and not SHARED_DATA.is_dir():
            skipped.append(f"{make.__name__}: skipped, {SHARED_DATA} not found")
            continue
        tasks.append(make())
    return tasks, skipped


def halves(half: str = "both") -> tuple[list[Task], list[str]]:
    """Build the tasks of one half: ``"dev"``, ``"heldout"`` or ``"both"``; returns (tasks, skips)."""
    if half not in ("dev", "heldout", "both"):
        raise ValueError(f"half must be 'dev', 'heldout' or 'both', got {half!r}")
    names = list(DEV if half == "dev" else HELDOUT if half == "heldout" else DEV + HELDOUT)
    return available_tasks(names)
