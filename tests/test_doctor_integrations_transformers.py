"""LRDoctorCallback with a real transformers.Trainer on a tiny torch module."""
from __future__ import annotations

import logging
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lrkit.doctor import Doctor  # noqa: E402
from lrkit.integrations.transformers import LRDoctorCallback  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self, nan_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, x, y):
        if self.calls == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        self.calls += 1
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


class Data(torch.utils.data.Dataset):
    def __init__(self, n=512):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.randn(5, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def train(tmp_path, lr, cb, *, steps=30, nan_at=None, nan_filter=False, optim="sgd"):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", learning_rate=lr, per_device_train_batch_size=16, lr_scheduler_type="constant",
        optim=optim, disable_tqdm=True, logging_nan_inf_filter=nan_filter, seed=0,
    )
    model = Tiny(nan_at)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb])
    trainer.train()
    return trainer


def test_healthy_run_reads_loss_lr_and_grad_norm(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    trainer = train(tmp_path, 0.05, cb)
    assert cb.diagnosis.verdict == "healthy" and cb.detections == [] and cb.stopped_by is None
    assert cb.doctor.n_observations == 30
    assert cb.diagnosis.evidence["lr"] == pytest.approx(0.05)
    assert trainer.state.global_step == 30
    # the trainer's own logs are untouched: no lrkit keys
    assert all(not any(k.startswith("lrkit") for k in h) for h in trainer.state.log_history)


def test_nan_stops_training_when_asked(tmp_path, caplog):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan", "diverging"))
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        trainer = train(tmp_path, 0.05, cb, nan_at=12)
    assert cb.stopped_by is not None and cb.stopped_by.verdict == "nan"
    assert trainer.state.global_step == cb.stopped_by.step < 30  # stopped right after the NaN step
    assert any("stopping training" in r.getMessage() for r in caplog.records)


def test_nan_without_stop_is_only_reported(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10))
    trainer = train(tmp_path, 0.05, cb, nan_at=12)
    assert trainer.state.global_step == 30
    assert cb.detections[0].verdict == "nan"


def test_too_high_lr_diverging_stops(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan", "diverging"))
    trainer = train(tmp_path, 3.0, cb, steps=60)
    assert cb.stopped_by is not None and cb.stopped_by.verdict in ("diverging", "nan")
    assert trainer.state.global_step < 60


def test_nan_filter_is_warned_and_grad_norm_still_catches_it(tmp_path):
    cb = LRDoctorCallback(doctor=Doctor(window=10), stop_on=("nan",))
    with pytest.warns(UserWarning, match="logging_nan_inf_filter=True"):
        train(tmp_path, 0.05, cb, nan_at=12, nan_filter=True)
    assert cb.stopped_by is not None and cb.stopped_by.verdict == "nan"
    assert "grad_norm" in cb.stopped_by.evidence and math.isnan(cb.stopped_by.evidence["grad_norm"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="stop_on must be a tuple of verdicts"):
        LRDoctorCallback(stop_on=("healthy",))
    with pytest.raises(ValueError, match="doctor must be an lrkit.doctor.Doctor"):
        LRDoctorCallback(doctor=3)
