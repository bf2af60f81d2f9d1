"""The classic rules against the real libraries: torch-lr-finder and Lightning run for real."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from lrkit.finder._rules import classic_suggestions, ema_bias_corrected

torch = pytest.importorskip("torch")


def _regression(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def test_steepest_equals_torch_lr_finder_plot_suggestion(monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.data import DataLoader, TensorDataset
    from torch_lr_finder import LRFinder

    x, y = _regression()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)

    def history(smooth_f):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1e-5)
        finder = LRFinder(model, opt, torch.nn.MSELoss())
        finder.range_test(loader, start_lr=1e-5, end_lr=0.3, num_iter=60, smooth_f=smooth_f, diverge_th=1e12)
        return finder

    raw_finder = history(0.0)                 # smooth_f=0: the raw losses
    smooth_finder = history(0.05)             # the library's default smoothing, same batches
    raw = np.array(raw_finder.history["loss"])
    lrs = np.array(raw_finder.history["lr"])
    assert np.array_equal(lrs, np.array(smooth_finder.history["lr"]))
    ax, their_lr = smooth_finder.plot(suggest_lr=True)
    plt.close("all")
    ours = classic_suggestions(lrs, raw)["steepest"]
    assert ours == their_lr
    # and the same on a curve that diverges at the end
    raw_div = np.concatenate([raw, raw[-1] * np.geomspace(1.5, 50, 10)])
    lrs_div = np.concatenate([lrs, lrs[-1] * np.geomspace(1.2, 3, 10)])
    smooth_finder.history = {"lr": lrs_div.tolist(), "loss": []}
    for i, loss in enumerate(raw_div):  # the library's own recurrence, fed through its history
        prev = smooth_finder.history["loss"]
        prev.append(loss if i == 0 else 0.05 * loss + 0.95 * prev[-1])
    _, their_lr = smooth_finder.plot(suggest_lr=True)
    plt.close("all")
    assert classic_suggestions(lrs_div, raw_div)["steepest"] == their_lr


@pytest.mark.slow
def test_steepest_lightning_equals_lightning_lr_find(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.tuner import Tuner
    from torch.utils.data import DataLoader, TensorDataset

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, y = _regression(1, 512)
    raw: list[float] = []

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(5, 1)
            self.lr = 1e-3

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            raw.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y), batch_size=8)

    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    found = Tuner(trainer).lr_find(Model(), min_lr=1e-5, max_lr=0.5, num_training=40, early_stop_threshold=None)
    smoothed = np.array(found.results["loss"])
    raw_arr = np.array(raw[: len(smoothed)])
    # Lightning's smoothing is a bias-corrected EMA whose correction is one step ahead (offset 2)
    np.testing.assert_allclose(ema_bias_corrected(raw_arr, 0.98, offset=2), smoothed, rtol=1e-12)
    lrs = np.array(found.results["lr"])
    assert classic_suggestions(lrs, raw_arr)["steepest_lightning"] == found.suggestion()
    # and Lightning's rule on other curves, through its own suggestion() code
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = int(rng.integers(13, 120))
        lrs = np.geomspace(1e-6, 1.0, n)
        curve = 3 - np.tanh(np.log10(lrs) + rng.uniform(1, 5)) + 0.1 * rng.standard_normal(n)
        found.results = {"lr": lrs.tolist(), "loss": ema_bias_corrected(curve, 0.98, offset=2).tolist()}
        assert classic_suggestions(lrs, curve)["steepest_lightning"] == pytest.approx(found.suggestion(), rel=1e-12)
