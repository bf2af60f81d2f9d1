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


class Tokens(torch.utils.data.Dataset):
    """256 rows of 8 random token ids (of 50) labelled ``i % 3``: text for a tiny BERT classifier."""

    def __len__(self):
        return 256

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 50, (8,), generator=g), "labels": torch.tensor(i % 3)}


def tiny_bert():
    """A one-layer BERT with three labels whose configuration names its architecture, as a model
    from ``from_pretrained`` does (a model built from a bare config has none)."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                                                    architectures=["BertForSequenceClassification"]))
