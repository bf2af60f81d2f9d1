"""A flat run whose weights moved far is not advised to raise its LR (``weight_change``, measured by
the live torch callbacks), and advice on a scheduled run scales the peak LR, not the decayed one."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrkit.collapse import WEIGHT_CHANGE, relative_change
from lrkit.doctor import Doctor, diagnose
from lrkit.doctor.signs.flat import MOVED
from lrkit.integrations.torch.outputs import SpreadProbe, WeightSample


def _at_chance(doc: Doctor, moved: float | None, n: int = 120, lr=lambda t: 5e-3) -> object:
    """A two-class run sitting at ln 2 with small batch noise, ``weight_change`` every 25 steps."""
    rng = np.random.default_rng(0)
    d = None
    for t in range(n):
        metrics = {WEIGHT_CHANGE: moved * min(1.0, t / 50)} if moved is not None and t % 25 == 0 else None
        d = doc.observe(t, math.log(2) * (1 + 0.01 * rng.standard_normal()), lr=lr(t), metrics=metrics)
    return d


def test_a_flat_run_whose_weights_moved_far_is_not_told_to_raise_its_lr():
    d = _at_chance(Doctor(window=20), moved=0.8)
    assert d.verdict == "flat" and d.evidence[WEIGHT_CHANGE] == pytest.approx(0.8)
    assert d.advice[0] == "do not raise the LR: lower the LR about 3x, from 0.005 to 0.00167 if the loss stays at this level"
    assert "the weights have moved 80% of their size" in d.message
    # a run whose weights barely moved is slow: raise it, as before
    slow = _at_chance(Doctor(window=20), moved=MOVED / 10)
    assert slow.verdict == "flat" and WEIGHT_CHANGE not in slow.evidence
    assert slow.advice[0].startswith("raise the LR about 10x")
    # without the measurement (an offline log), nothing changes
    assert _at_chance(Doctor(window=20), moved=None).advice == slow.advice


def test_the_reading_survives_a_checkpoint_of_the_doctor():
    doc = Doctor(window=20)
    _at_chance(doc, moved=0.8, n=60)
    again = Doctor(window=20)
    again.load_state_dict(doc.state_dict())
    d, rng = None, np.random.default_rng(1)
    for t in range(60, 120):  # no measurement after the resume: the last one stands
        d = again.observe(t, math.log(2) * (1 + 0.01 * rng.standard_normal()), lr=5e-3)
    assert d.verdict == "flat" and d.evidence[WEIGHT_CHANGE] == pytest.approx(0.8)


def test_advice_on_a_decayed_schedule_scales_the_peak():
    # linear decay to ~0 (the Hugging Face Trainer's default): the last LR is 1/200 of the one set
    d = _at_chance(Doctor(window=20), moved=None, n=200, lr=lambda t: 1e-5 * (1 - t / 200))
    assert d.verdict == "flat"
    assert d.advice[0] == "raise the LR about 10x, from its peak 1e-05 to 0.0001 (the schedule has it at 5e-08 now)"
    # a cut (a guard's rollback, a step schedule) starts the peak again: the advice is about the LR since
    cut = _at_chance(Doctor(window=20), moved=None, n=200, lr=lambda t: 1e-5 if t < 20 else 1e-6)
    assert cut.advice[0] == "raise the LR about 10x, from 1e-06 to 1e-05"
    # a constant LR reads as before
    const = diagnose({"loss": [2.3 + 0.01 * (-1) ** i for i in range(60)], "lr": [1e-6] * 60})
    assert const.advice[0] == "raise the LR about 10x, from 1e-06 to 1e-05"


def test_weight_sample_measures_relative_change_of_the_trainable_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    model[0].requires_grad_(False)  # frozen: not in the sample
    w = WeightSample(model, size=500)
    start = torch.cat([p.detach().reshape(-1) for p in model[2].parameters()]).numpy().copy()
    assert w.change() == 0.0
    with torch.no_grad():
        model[0].weight.mul_(5.0)  # a frozen tensor changed: not counted
        model[2].weight.add_(0.1 * torch.randn_like(model[2].weight))
    now = torch.cat([p.detach().reshape(-1) for p in model[2].parameters()]).numpy()
    # an evenly spread sample of 500 of the 2010 trainable values estimates the whole change
    assert w.change() == pytest.approx(relative_change(start, now), rel=0.15)
    zero = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    assert WeightSample(zero).change() is None  # started at zero: nothing to be relative to


def test_the_probe_reports_weight_change_only_when_asked():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    plain, weights = SpreadProbe(model, every=2), SpreadProbe(model, every=2, weights=True)
    x = torch.randn(8, 4)
    seen = []
    for step in range(4):
        _ = model(x)
        with torch.no_grad():
            model.weight.add_(0.1)
        seen.append((plain.take(step), weights.take(step)))
    assert all(WEIGHT_CHANGE not in a for a, _ in seen)
    assert [WEIGHT_CHANGE in b for _, b in seen] == [True, False, True, False]
    assert seen[2][1][WEIGHT_CHANGE] > seen[0][1][WEIGHT_CHANGE] > 0
    plain.close(), weights.close()


# ---------------------------------------------------------------------------- the Hugging Face Trainer
transformers = pytest.importorskip("transformers")


def _tiny_bert_run(tmp_path, lr: float):
    """A two-layer BERT from a config (no download) on a marker-token task, the Trainer's own AdamW and
    linear decay, logging every 10 steps; returns the callback and the highest LR the Trainer logged."""
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from lrkit.transformers import LRDoctorCallback

    rng = np.random.default_rng(1)
    ids = rng.integers(10, 64, size=(512, 16))
    y = rng.integers(0, 2, size=512)
    ids[y == 1, rng.integers(1, 16, size=int((y == 1).sum()))] = 7  # positive: holds the marker token
    ids[:, 0] = 2

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"input_ids": torch.as_tensor(ids[i]), "labels": torch.as_tensor(y[i])}

    torch.manual_seed(1)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=32, num_labels=2))
    cb = LRDoctorCallback()
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=16,
                             learning_rate=lr, logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
                             use_cpu=True, seed=1)
    transformers.logging.set_verbosity_error()
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[cb])
    trainer.train()
    return cb, max(r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r)


def _peak(advice: str) -> float:
    """The LR an advice line names as the run's peak."""
    return float(advice.split("from its peak ")[1].split()[0])


def test_a_transformer_stuck_at_chance_at_too_high_an_lr_is_not_told_to_raise_it(tmp_path):
    # AdamW at 2e-2 on a tiny BERT (it learns at 3e-4 to 3e-3): at chance to the end, its weights far
    # from their start; it read flat with "raise the LR about 3x, from 0.000313" (the decayed LR)
    cb, peak = _tiny_bert_run(tmp_path, 2e-2)
    d = cb.diagnosis
    assert not d.advice[0].startswith("raise"), d
    assert d.verdict == "diverging" or d.evidence.get(WEIGHT_CHANGE, 0) >= MOVED, d
    assert _peak(d.advice[0]) == pytest.approx(peak, rel=1e-2), d  # the first logged LR, not the last


def test_a_transformer_at_too_low_an_lr_is_told_to_raise_its_peak(tmp_path):
    cb, peak = _tiny_bert_run(tmp_path, 1e-5)
    d = cb.diagnosis
    assert d.verdict == "flat" and WEIGHT_CHANGE not in d.evidence, d
    assert d.advice[0].startswith("raise the LR about 10x, from its peak") and _peak(d.advice[0]) == pytest.approx(
        peak, rel=1e-2), d


# ---------------------------------------------------------------------------- every live callback reads it
def _moved_readings(doctor) -> list[tuple[int, float]]:
    return [(s, m[WEIGHT_CHANGE]) for s, _, m in doctor.seen if WEIGHT_CHANGE in m]


def test_the_keras_callback_reads_how_far_the_weights_moved():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from _recording import RecordingDoctor
    from lrkit.keras import LRDoctorCallback

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    doc = RecordingDoctor()
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[LRDoctorCallback(doctor=doc, check_outputs_every=16)])
    seen = _moved_readings(doc)
    assert [s for s, _ in seen] == [0, 16, 32, 48]  # before the first step, then every 16 (no inputs needed)
    assert seen[0][1] == 0.0 and seen[-1][1] > seen[1][1] > 0


def test_the_lightning_callback_reads_how_far_the_weights_moved(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from _recording import RecordingDoctor
    from lrkit.lightning import LRDoctorCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_step(self, batch, _):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, :1] > 0).float()), batch_size=16)
    doc = RecordingDoctor()
    pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path,
               callbacks=[LRDoctorCallback(doctor=doc, check_outputs_every=16)]).fit(Module(), data)
    seen = _moved_readings(doc)
    # read with the optimizer steps 0, 16, 32, 48, after each one's update
    assert [s for s, _ in seen] == [0, 16, 32, 48] and 0 < seen[0][1] < seen[1][1] < seen[-1][1], seen


def test_torch_doctor_reads_how_far_the_weights_moved():
    from _recording import RecordingDoctor
    from lrkit.torch import TorchDoctor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    doc = RecordingDoctor()
    watch = TorchDoctor(model, opt, doctor=doc, check_outputs_every=16)
    g = torch.Generator().manual_seed(0)
    for step in range(64):
        x = torch.randn(16, 8, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), (x[:, :1] > 0).float())
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
    seen = _moved_readings(doc)
    assert [s for s, _ in seen] == [0, 16, 32, 48] and 0 < seen[0][1] < seen[1][1] < seen[-1][1], seen


def test_a_final_evaluation_logged_after_the_last_training_loss_is_read():
    # the Hugging Face Trainer logs its last training loss at step 190 and the epoch's evaluation at 192,
    # Lightning's WandbLogger the last validation in a call of its own: it went with no row and was lost
    from lrkit.doctor.diagnosis import run_doctor
    from lrkit.doctor.logs import read_log

    def seen(log):  # the validation losses the doctor was given (the flat sign keeps them)
        return [round(math.exp(v), 6) for v in run_doctor(read_log(log), Doctor(window=5)).signs["flat"].vals]

    assert seen({"step": [0, 10, 20, 22, 23], "loss": [2.0, 1.5, 1.2, None, None],
                 "val_loss": [None, 1.6, None, 1.3, 1.25]}) == [1.6, 1.25]  # with the last loss: the latest
    assert seen({"step": [0, 10, 20, 22], "loss": [2.0, 1.5, 1.2, None],
                 "val_loss": [None, None, 1.1, 1.3]}) == [1.1]  # the row's own value wins
