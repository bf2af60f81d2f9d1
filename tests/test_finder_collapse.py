"""The finder rejects a candidate whose model gives every input the same output (a dead network)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.collapse import COLLAPSED, output_spread
from lrkit.finder.suggest import suggest


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 6), seed=st.integers(0, 10_000), shift=st.floats(-50, 50))
def test_spread_is_zero_for_a_constant_prediction_and_ignores_a_logit_shift(n, d, seed, shift):
    rng = np.random.default_rng(seed)
    row = rng.normal(size=d)
    assert output_spread(np.tile(row, (n, 1))) < COLLAPSED
    y = rng.normal(size=(n, d)) * 3
    s = output_spread(y)
    assert s is not None and s > 0.01
    if d > 1:  # softmax logits are defined up to a per-example shift
        assert output_spread(y + shift) == pytest.approx(s, rel=1e-6)
    assert output_spread(y[:1]) is None and output_spread(np.full((n, d), np.nan)) is None


class DyingNet:
    """Starts at loss 20 (unscaled inputs); at an LR of 0.3 or more it dies within two steps and sits
    at the constant prediction's loss 1.1 -- better, after ten steps, than the 2.9 the best live LR
    reaches by then (a live model goes on to 0.2). ``output_spread`` says which."""

    def __init__(self):
        self.t, self.dead, self.lr_sum = 0, False, 0.0

    def snapshot(self):
        return copy.deepcopy((self.t, self.dead, self.lr_sum))

    def restore(self, s):
        self.t, self.dead, self.lr_sum = copy.deepcopy(s)

    def loss(self):
        if self.dead:
            return 1.1
        return 0.2 + 19.8 * math.exp(-2.0 * self.lr_sum)

    def step(self, lr):
        self.t += 1
        if lr >= 0.3 and self.t >= 2:
            self.dead = True
        self.lr_sum += min(lr, 0.1)
        return self.loss()

    def evaluate(self):
        return self.loss()

    def output_spread(self):
        return 0.0 if self.dead else 0.8


def test_a_dead_candidate_does_not_win_the_finder():
    lrs = np.geomspace(1e-4, 10, 60)
    losses = np.array([20.0 * math.exp(-i / 30) for i in range(60)])  # a range test falling to its end
    alive = suggest(lrs, losses, trainer=DyingNet(), family="adagrad", verify_steps=10, verify_budget=80)
    assert alive.lr < 0.3
    rejected = [c for c in alive.details["candidates"] if c["rejected"]]
    assert any("collapsed" in c["rejected"] for c in rejected)
    assert all(c["lr"] >= 0.3 for c in rejected if "collapsed" in c["rejected"])
    assert any("same output" in w for w in alive.details["warnings"])

    class NoCheck(DyingNet):  # the same trainer without the optional method: the dead LR wins
        output_spread = None

    blind = suggest(lrs, losses, trainer=NoCheck(), family="adagrad", verify_steps=10, verify_budget=80)
    best = min((c for c in blind.details["candidates"] if c["score"] is not None), key=lambda c: c["score"])
    assert best["lr"] >= 0.3 and blind.lr > alive.lr


torch = pytest.importorskip("torch")


def test_torch_trainer_measures_the_spread_of_the_models_outputs():
    from lrkit.integrations.torch.trainer import TorchTrainer

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = TorchTrainer(model, opt, torch.nn.functional.cross_entropy, batches, val_loader=batches[:1])
    assert trainer.output_spread() > 0.05
    with torch.no_grad():  # every ReLU off: the output is the last layer's bias for every input
        model[0].bias.fill_(-100.0)
    assert trainer.output_spread() < COLLAPSED
    assert model.training  # the check leaves the model's mode as it was


def test_torch_trainer_reads_a_hugging_face_style_output():
    from lrkit.integrations.torch.trainer import TorchTrainer

    class Out:
        def __init__(self, logits, loss):
            self.logits, self.loss = logits, loss

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, input, labels):
            logits = self.lin(input)
            return Out(logits, torch.nn.functional.cross_entropy(logits, labels))

    torch.manual_seed(0)
    batches = [{"input": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}]
    model = Model()
    trainer = TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, batches)
    assert trainer.output_spread() > 0.05  # no val_loader: the next training batch


def test_find_lr_on_unscaled_wine_does_not_answer_an_lr_that_kills_the_network():
    # the development task wine_unscaled_adagrad's seed 5: LRs from 0.3 up kill the MLP within its
    # 16-step candidate runs, whose loss then sits at the three-class chance loss, below the live runs'
    from sklearn.datasets import load_wine

    from lrkit.integrations.torch.trainer import find_lr

    d = load_wine()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(d.data))
    x = torch.tensor(d.data[idx], dtype=torch.float32)
    y = torch.tensor(d.target[idx])
    xtr, ytr, xva, yva = x[48:], y[48:], x[:48], y[:48]
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=16, shuffle=True,
                                         generator=gen)
    val = [(xva, yva)]
    res = find_lr(model, opt, torch.nn.functional.cross_entropy, loader, val_loader=val, train_steps=500,
                  progress=False)
    dead = [c for c in res.details["candidates"] if c["rejected"] and "collapsed" in c["rejected"]]
    alive = [c for c in res.details["candidates"] if c["score"] is not None]
    assert alive and dead and all(c["lr"] > res.suggestion for c in dead)
    for lr in [c["lr"] for c in dead][:1]:  # a rejected LR really kills the network in a real run
        m = copy.deepcopy(model)
        o = torch.optim.Adagrad(m.parameters(), lr=lr)
        for i in range(16):
            xb, yb = xtr[(16 * i) % 128:(16 * i) % 128 + 16], ytr[(16 * i) % 128:(16 * i) % 128 + 16]
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(xb), yb).backward()
            o.step()
        with torch.no_grad():
            assert output_spread(m(xva).numpy()) < COLLAPSED


def test_keras_trainer_measures_the_spread_of_the_models_outputs():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from lrkit.integrations.keras.trainer import KerasTrainer

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype("float32"), rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    assert KerasTrainer(model, x, y, batch_size=16).output_spread() is None  # no validation data
    trainer = KerasTrainer(model, x, y, batch_size=16, val_data=(x, y))
    assert trainer.output_spread() > 0.05
    dense = model.layers[0]
    dense.bias.assign(np.full(8, -100.0, dtype="float32"))  # every ReLU off: the same output for all
    assert trainer.output_spread() < COLLAPSED


def test_a_model_that_starts_collapsed_is_not_called_dead():
    # a zero-initialised head gives every input the same output before training; at a low LR it
    # still does after a short run: that is no death, and no candidate is rejected for it
    class ZeroHead(DyingNet):
        def output_spread(self):
            return 0.0 if (self.dead or self.lr_sum < 0.05) else 0.8

    lrs = np.geomspace(1e-4, 10, 60)
    losses = np.array([20.0 * math.exp(-i / 30) for i in range(60)])
    r = suggest(lrs, losses, trainer=ZeroHead(), family="adagrad", verify_steps=10, verify_budget=80)
    assert not any(c["rejected"] and "collapsed" in c["rejected"] for c in r.details["candidates"])
