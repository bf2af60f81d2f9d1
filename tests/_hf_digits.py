"""A Hugging Face ``Trainer``'s view of the digits: a dataset of dict rows and a small classifier
whose ``forward`` returns its loss (shared by the tests that train through the real Trainer)."""
from __future__ import annotations

import torch


class Clf(torch.nn.Module):
    """A 64-32-10 ReLU MLP (seeded): ``forward(pixels, labels)`` returns ``{"loss", "logits"}``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, pixels, labels=None):
        logits = self.net(pixels)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class Rows(torch.utils.data.Dataset):
    """``{"pixels": x[i], "labels": y[i]}`` rows."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "labels": self.y[i]}


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits scaled to [0, 1] (float32) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
