"""The digits in a plain PyTorch loop (shared by the tests of optimizers lrkit must take as they
are: combined, 8-bit): loaders, a seeded MLP, a training loop with a fault and a per-step hook."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from _hf_digits import digits


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for each test of a module that imports this fixture (timings and sums as on CI)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def loaders(n_train: int = 640) -> tuple[DataLoader, DataLoader]:
    """(train: the first ``n_train`` digits in batches of 32, in order; val: the last 397 in one batch)."""
    x, y = digits()
    return (DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=32),
            DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=400))


def net(seed: int = 0) -> torch.nn.Module:
    """A seeded 64-32-10 ReLU MLP."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def val_loss(model: torch.nn.Module, loader: DataLoader) -> float:
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]
    return sum(losses) / len(losses)


def cycled(loader, steps: int):
    """``(step, x, y)`` for ``steps`` steps, the loader started again when it runs out."""
    it = iter(loader)
    for k in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        yield k, x, y


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, n: int,
          fault: Callable | None = None, after: Callable | None = None) -> None:
    """``n`` steps over ``loader`` (cycled); ``fault(step, x) -> x`` changes a batch, ``after(loss)``
    runs after each update."""
    for step, x, y in cycled(loader, n):
        if fault is not None:
            x = fault(step, x)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if after is not None:
            after(loss)
