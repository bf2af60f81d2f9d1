"""Issue 7, item 3: watchers that speak -- each detection logged once, detections and worst kept,
a summary naming the worst problem at the end, and bad values as evidence, never a crash."""
import logging
import math

import numpy as np
import pytest

from lrkit.doctor import Doctor
from lrkit.doctor.watch import SpeakingWatch


class _Watch(SpeakingWatch):
    def __init__(self, **kw):
        self.doctor, self.guard = Doctor(window=5, **kw), None


def _messages(caplog, name="lrkit.doctor"):
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_each_detection_is_logged_once_and_the_worst_outlives_recovery(caplog):
    w = _Watch()
    losses = [2.0 * 0.9**t for t in range(30)] + [50.0, 80.0, 120.0, 200.0] + [2.0 * 0.9**t for t in range(30, 90)]
    with caplog.at_level(logging.INFO, logger="lrkit.doctor"):
        for t, loss in enumerate(losses):
            w._watch_observe(t, loss, lr=0.5)
        w._watch_speak_summary()
    assert w.detections and w.worst.verdict in ("diverging", "fluctuating")
    lines = _messages(caplog)
    assert len(lines) == len(w.detections) + 1  # one line per detection, one summary
    for d, line in zip(w.detections, lines):
        assert line.startswith(f"lrkit doctor at step {d.detected_at}: {d.verdict.upper()}")
    (div,) = [line for line in lines if ": DIVERGING (from step" in line and "worst" not in line]
    assert "Advice: lower the LR about 10x, from 0.5 to 0.05" in div
    assert "worst problem seen" in lines[-1] and w.worst.verdict.upper() in lines[-1]
    assert "worst problem" in w.summary()


def test_non_finite_and_refused_values_are_evidence_not_a_crash(caplog):
    w = _Watch()
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        for t in range(6):
            w._watch_observe(t, 2.0 - 0.1 * t, lr=float("nan") if t == 2 else -1.0 if t == 3 else 0.1,
                             metrics={"val_accuracy": float("inf")} if t == 4 else None)
        w._watch_observe(6, -3.0, lr=0.1)  # below the loss floor: refused by the doctor, skipped
        w._watch_observe(7, -4.0, lr=0.1)  # the same refusal is not logged twice
        w._watch_observe(8, float("nan"), lr=0.1)
    assert w.doctor.n_observations >= 6  # the six steps before the refused ones were all taken
    refused = [m for m in _messages(caplog) if "skipped" in m]
    assert len(refused) == 1 and "loss_floor" in refused[0]
    assert [d.verdict for d in w.detections] == ["nan"] and w.worst.step == 8


def test_a_nan_lr_is_never_reported_as_the_last_good_one(caplog):
    w = _Watch()
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        for t in range(10):
            w._watch_observe(t, 2.0 - 0.1 * t, lr=0.0375)
        w._watch_observe(10, float("nan"), lr=float("nan"))  # the LR itself broke, then the loss
    (d,) = w.detections
    assert d.verdict == "nan" and "0.0375" not in d.message and "0.0375" not in " ".join(d.advice)
    assert "lr" not in d.evidence
    assert not any("0.0375" in m for m in _messages(caplog))
    w._watch_observe(11, 1.0, lr=0.01)  # a finite LR again is quoted again
    assert w.doctor._track.lr == 0.01


def test_healthy_summary_is_info(caplog):
    w = _Watch()
    with caplog.at_level(logging.INFO, logger="lrkit.doctor"):
        for t in range(40):
            w._watch_observe(t, 2.0 * 0.95**t + 0.1, lr=0.1)
        w._watch_speak_summary()
    assert w.detections == [] and w.worst.verdict == "healthy"
    (rec,) = [r for r in caplog.records if r.name == "lrkit.doctor"]
    assert rec.levelno == logging.INFO and "no problem seen after 40 observations." in rec.getMessage()
    short = _Watch()  # a run too short for the flat and fluctuating signs (window 5: they take 10) says so
    for t in range(3):
        short._watch_observe(t, 2.0 * 0.95**t, lr=0.1)
    assert short.summary().startswith("lrkit doctor: no problem seen after 3 observations (too few to judge a flat "
                                      "or fluctuating loss, which takes 10: only a NaN or a blow-up could show).")


# ----------------------------------------------------------------------------- real frameworks
def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype("float32")
    return X[:512], y[:512].astype("int64")


def test_keras_watch_only_speaks_about_a_blow_up(caplog):
    keras = pytest.importorskip("keras")
    from lrkit.keras import LRDoctorCallback

    X, y = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, activation="relu") for _ in range(3)]
                             + [keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = LRDoctorCallback()
    with caplog.at_level(logging.INFO, logger="lrkit.doctor"):
        model.fit(X, y, batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    assert cb.detections, "the blow-up was not recorded"
    assert cb.worst.verdict in ("diverging", "nan", "fluctuating")
    lines = _messages(caplog)
    assert any(line.startswith("lrkit doctor at step") for line in lines)
    assert "worst problem seen" in lines[-1]


def test_lightning_watch_only_speaks_and_keeps_the_worst(caplog):
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.lightning import LRDoctorCallback

    X, y = _digits()

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                           torch.nn.ReLU(), torch.nn.Linear(64, 10))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1.0)

    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)),
                                     batch_size=32)
    cb = LRDoctorCallback(log_verdict=False)
    trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with caplog.at_level(logging.INFO, logger="lrkit.doctor"):
        trainer.fit(M(), dl)
    assert cb.detections and cb.worst.verdict in ("diverging", "nan", "fluctuating")
    lines = _messages(caplog)
    assert sum(line.startswith("lrkit doctor at step") for line in lines) == len(cb.detections)
    assert "worst problem seen" in lines[-1]


def test_hf_callback_survives_a_nan_learning_rate():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from lrkit.transformers import LRDoctorCallback

    transformers.logging.set_verbosity_error()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(3, 32, size=(96, 8)))
    labels = torch.from_numpy(rng.integers(0, 2, size=96))

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 96

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=16, num_labels=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: math.nan if s >= 6 else 1.0)
    args = TrainingArguments(output_dir="/tmp/lrkit-test-hf-nan-lr", num_train_epochs=1, per_device_train_batch_size=8,
                             logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True)
    cb = LRDoctorCallback()
    Trainer(model=model, args=args, train_dataset=DS(), optimizers=(opt, sched), callbacks=[cb]).train()
    assert cb.worst.verdict == "nan" and "nan" in [d.verdict for d in cb.detections]


# ----------------------------------------------------------------------------- on_converged / on_overfitting
def _keras_digits_model(keras, lr):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("action", ["stop", "lower_lr"])
def test_keras_acts_on_converged(caplog, action):
    keras = pytest.importorskip("keras")
    from lrkit.keras import LRDoctorCallback

    X, y = _digits()
    model = _keras_digits_model(keras, 3e-3)
    cb = LRDoctorCallback(doctor=Doctor(converge_patience=2), on_converged=action)
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        hist = model.fit(X[:384], y[:384], validation_data=(X[384:], y[384:]), batch_size=64, epochs=40, verbose=0,
                         callbacks=[cb])
    lines = [m for m in _messages(caplog) if f"(on_converged='{action}')" in m]
    assert len(lines) >= 1 and any(d.verdict == "converged" or d.converged for d in cb.detections + [cb.diagnosis])
    if action == "stop":
        assert len(hist.epoch) < 40 and "stopping training" in lines[0]
    else:
        assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(3e-3 * 0.1 ** len(lines))


def test_actions_are_checked():
    keras = pytest.importorskip("keras")
    from lrkit.keras import LRDoctorCallback

    with pytest.raises(ValueError, match="on_converged must be 'stop', 'lower_lr' or None, got 'halt'"):
        LRDoctorCallback(on_converged="halt")
    with pytest.raises(ValueError, match=r"plateau_factor must be a number in \(0, 1\), got 2"):
        LRDoctorCallback(on_overfitting="lower_lr", plateau_factor=2)
    assert keras is not None


def test_hf_doctor_is_sized_for_the_number_of_logs():
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from lrkit.doctor.diagnosis import settings_for_rows
    from lrkit.integrations.transformers.callback import _expected_logs

    state = SimpleNamespace(max_steps=192)
    assert _expected_logs(SimpleNamespace(logging_strategy="steps", logging_steps=10), state) == 19
    assert _expected_logs(SimpleNamespace(logging_strategy="steps", logging_steps=0.1), state) == 10
    assert _expected_logs(SimpleNamespace(logging_strategy="epoch", num_train_epochs=3.0), state) == 3
    assert settings_for_rows(19) == {"window": 5, "short": 1, "patience": 2, "check_every": 1, "flat_steps": 5}
    assert settings_for_rows(192) == {"window": 24}


@pytest.mark.parametrize("action", ["stop", "lower_lr"])
def test_torch_doctor_acts_on_converged(caplog, action):
    torch = pytest.importorskip("torch")
    from lrkit.torch import TorchDoctor

    X, y = _digits()
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    watch = TorchDoctor(model, opt, guard=False, doctor=Doctor(converge_patience=2), on_converged=action,
                        schedulers=[sched])
    loss_fn = torch.nn.CrossEntropyLoss()
    epochs = 0
    with caplog.at_level(logging.WARNING, logger="lrkit.doctor"):
        for epoch in range(40):
            for i in range(0, 384, 64):
                loss = loss_fn(model(X[i:i + 64]), y[i:i + 64])
                opt.zero_grad()
                loss.backward()
                watch.after_backward(loss)
                opt.step()
                sched.step()
                step = epoch * 6 + i // 64
                val = None
                if i == 320:
                    with torch.no_grad():
                        val = float(loss_fn(model(X[384:]), y[384:]))
                watch.after_step(step, loss, val_loss=val)
            epochs += 1
            if watch.should_stop:
                break
    lines = [m for m in _messages(caplog) if f"(on_converged='{action}')" in m]
    assert len(lines) >= 1
    if action == "stop":
        assert watch.should_stop and epochs < 40 and "stopping training" in lines[0]
    else:
        assert not watch.should_stop
        assert opt.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.1 ** len(lines))  # the scheduler follows


def test_torch_doctor_checks_its_actions():
    torch = pytest.importorskip("torch")
    from lrkit.torch import TorchDoctor

    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="TorchDoctor: on_converged must be 'stop', 'lower_lr' or None, got 'halt'"):
        TorchDoctor(model, torch.optim.SGD(model.parameters(), lr=0.1), on_converged="halt")
