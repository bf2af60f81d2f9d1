"""A small built-in task: an MLP on scikit-learn's 8x8 digits (bundled with scikit-learn, no download).

The 1797 images (64 features, 10 classes) are split once with a seeded permutation into 1437
training and 360 validation examples and standardised with the training mean and standard
deviation (:math:`x' = (x - \\mu_{train}) / \\sigma_{train}`, :math:`\\sigma = 1` for constant
pixels). The model is ``Linear(64, hidden) -> ReLU -> Linear(hidden, 10)`` trained with
cross-entropy.

Everything is deterministic given ``seed`` and does not touch the global RNGs: model initialisation
runs under ``torch.random.fork_rng`` and the training loader shuffles with its own
``torch.Generator``.

Example:
    >>> task = digits_task(batch_size=64, seed=0)
    >>> len(task.train_loader.dataset), len(task.val_loader.dataset)
    (1437, 360)
    >>> out = train(task, 3e-3, steps=60)
    >>> out["val_accuracy"] > 0.8
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsTask", "digits_task", "train", "evaluate"]

_N_VAL = 360


def _load_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    x_tr, y_tr, x_va, y_va = x[_N_VAL:], y[_N_VAL:], x[:_N_VAL], y[:_N_VAL]
    mu = x_tr.mean(axis=0)
    sd = x_tr.std(axis=0)
    sd[sd == 0] = 1.0
    return (x_tr - mu) / sd, y_tr, (x_va - mu) / sd, y_va


@dataclass
class DigitsTask:
    """The digits task: data, factories for fresh models/optimizers, and one ready-made pair.

    Attributes:
        batch_size: training batch size.
        seed: seed of the split, the model initialisation and the shuffling.
        hidden: width of the hidden layer.
        optimizer_name: ``"adam"`` or ``"sgd"`` (SGD with momentum 0.9).
        model, optimizer: a model from :meth:`make_model` and its optimizer from
            :meth:`make_optimizer` (default LR), ready for :func:`lrkit.find_lr`.
        loss_fn: ``torch.nn.CrossEntropyLoss()``.
        train_loader, val_loader: ``DataLoader`` of ``(x, y)`` pairs; the training one shuffles
            with its own seeded generator.
    """

    batch_size: int
    seed: int
    hidden: int
    optimizer_name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    loss_fn: Callable[..., torch.Tensor] = field(default_factory=torch.nn.CrossEntropyLoss)
    model: torch.nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    train_loader: DataLoader = field(init=False)
    val_loader: DataLoader = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.make_model()
        self.optimizer = self.make_optimizer(self.model)
        self.train_loader = self.make_train_loader()
        self.val_loader = DataLoader(TensorDataset(self.x_val, self.y_val), batch_size=256)

    @property
    def default_lr(self) -> float:
        """1e-3 for Adam, 1e-2 for SGD (the rules of thumb of :mod:`lrkit.scaling`)."""
        from lrkit.scaling import default_lr

        return default_lr("adam" if self.optimizer_name == "adam" else "sgd_momentum")

    def make_model(self) -> torch.nn.Module:
        """A freshly initialised MLP (the same weights for the same ``seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return torch.nn.Sequential(
                torch.nn.Linear(64, self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, 10)
            )

    def make_optimizer(self, model: torch.nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam, or SGD with momentum 0.9, over ``model``'s parameters (``lr`` default: :attr:`default_lr`)."""
        lr = self.default_lr if lr is None else lr
        if self.optimizer_name == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def make_train_loader(self) -> DataLoader:
        """A shuffling training loader with its own generator seeded by ``seed``."""
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=self.batch_size,
                          shuffle=True, generator=gen)

    def as_target(self) -> dict[str, Any]:
        """The dict a ``lrkit find`` target function returns."""
        return {"model": self.model, "optimizer": self.optimizer, "loss_fn": self.loss_fn,
                "train_loader": self.train_loader, "val_loader": self.val_loader,
                "batch_size": self.batch_size}


def digits_task(batch_size: int = 64, seed: int = 0, hidden: int = 64, optimizer: str = "adam") -> DigitsTask:
    """Build the digits task (see the module docstring).

    Args:
        batch_size: training batch size, an integer >= 1.
        seed: an integer seed for the split, initialisation and shuffling.
        hidden: hidden width, an integer >= 1.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
    """
    for name, value in (("batch_size", batch_size), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    x_tr, y_tr, x_va, y_va = _load_arrays(seed)
    return DigitsTask(batch_size, seed, hidden, optimizer, torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                      torch.from_numpy(x_va), torch.from_numpy(y_va))


def evaluate(task: DigitsTask, model: torch.nn.Module) -> tuple[float, float]:
    """(validation loss, validation accuracy) of ``model`` on the task's validation split."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(task.x_val)
        loss = float(torch.nn.functional.cross_entropy(logits, task.y_val))
        acc = float((logits.argmax(dim=1) == task.y_val).float().mean())
    model.train(was_training)
    return loss, acc


def _make_schedule(schedule: Any, lr: float, steps: int) -> Callable[[int], float]:
    if schedule is None or schedule == "constant":
        return lambda step: lr
    if callable(schedule):
        return schedule
    from lrkit import schedules

    if schedule == "one_cycle":
        return schedules.one_cycle(max_lr=lr, total_steps=steps)
    if schedule == "warmup_cosine":
        warm = max(1, steps // 10)
        return schedules.warmup(schedules.cosine(base_lr=lr, total_steps=steps - warm), warmup_steps=warm)
    raise ValueError(
        f"schedule must be None, 'constant', 'one_cycle', 'warmup_cosine' or a callable step -> lr, got {schedule!r}"
    )


def train(task: DigitsTask, lr: float, *, steps: int, schedule: Any = None) -> dict[str, Any]:
    """Train a fresh model of ``task`` for ``steps`` optimizer steps at peak learning rate ``lr``.

    The LR of step :math:`t` is :math:`\\eta_t = s(t)` where :math:`s` is the schedule: constant
    ``lr`` (``None``), ``"one_cycle"`` (``lrkit.schedules.one_cycle(max_lr=lr, total_steps=steps)``),
    ``"warmup_cosine"`` (10% linear warmup then cosine to 0), a :class:`lrkit.schedules.Schedule`
    or any callable ``step -> lr``. The run is deterministic given ``task.seed`` and leaves the
    global RNGs alone. Training stops early if the loss becomes NaN/inf (``diverged=True``); a
    diverged run reports ``val_loss = inf`` and the accuracy of the model as it was left.

    Returns:
        ``{"val_loss", "val_accuracy", "train_losses", "diverged", "lr", "steps"}``.

    Example:
        >>> r = train(digits_task(), 1e-3, steps=20)
        >>> len(r["train_losses"]), r["diverged"]
        (20, False)
    """
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    sched = _make_schedule(schedule, float(lr), steps)
    model = task.make_model()
    opt = task.make_optimizer(model, lr=float(lr))
    loader = task.make_train_loader()
    losses: list[float] = []
    diverged = False
    it = iter(loader)
    step = 0
    while step < steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        for group in opt.param_groups:
            group["lr"] = float(sched(step))
        opt.zero_grad(set_to_none=True)
        loss = task.loss_fn(model(x), y)
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    val_loss, val_acc = evaluate(task, model)  # accuracy of the model as it is, even after divergence
    if not math.isfinite(val_loss):
        diverged = True
        val_loss = math.inf
    return {"val_loss": val_loss, "val_accuracy": val_acc, "train_losses": losses, "diverged": diverged,
            "lr": float(lr), "steps": steps}
