"""The chance level: a classifier that blew up and collapsed to predicting the label prior is
diverging, not healthy or flat (offline from a Hugging Face checkpoint's config.json, and live)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrkit.doctor import Doctor
from lrkit.doctor.diagnosis import diagnose
from lrkit.doctor.model_config import chance_loss_from_config, chance_loss_near

LN2 = math.log(2)


def feed(doc, losses):
    d = None
    for i, loss in enumerate(losses):
        d = doc.observe(10 * (i + 1), float(loss), lr=0.05)
    return d


def collapsed(n=40, seed=0):
    """A blow-up in the first logging interval, then back down to ln 2 and stuck there (as the
    Trainer logs a too-high LR on a binary task every 10 steps)."""
    rng = np.random.default_rng(seed)
    head = [2.0, 1.2, 0.98, 0.95, 1.38, 1.17]
    return head + list(LN2 * (1.04 + 0.03 * rng.standard_normal(n - len(head))))


def test_a_run_that_collapsed_to_chance_is_diverging_only_when_the_chance_level_is_known():
    d = feed(Doctor(window=10, chance_loss=LN2), collapsed())
    assert d.verdict == "diverging" and d.step == 10
    assert d.evidence["start_ratio_to_chance"] > 1.5 and abs(d.evidence["level_ratio_to_chance"] - 1) < 0.1
    assert "chance level" in d.message and d.advice[0].startswith("lower the LR")
    assert feed(Doctor(window=10), collapsed()).verdict != "diverging"  # without it: looks like progress
    # live, the Hugging Face callback reads the loss before step 1 (at chance) ahead of the blow-up
    assert feed(Doctor(window=10, chance_loss=LN2), [LN2] + collapsed()).verdict == "diverging"


@pytest.mark.parametrize("seed", range(5))
def test_runs_that_learn_or_never_left_chance_are_not_called_collapsed(seed):
    rng = np.random.default_rng(seed)
    learned = LN2 * np.exp(-np.arange(60) / 10) + 0.01 * rng.random(60)  # from chance down to ~0
    d = feed(Doctor(window=10, chance_loss=LN2), learned)
    assert d.verdict == "healthy"
    too_low = LN2 * (1 + 0.02 * rng.standard_normal(60))  # starts at chance and stays: the LR is too low
    d = feed(Doctor(window=10, chance_loss=LN2), too_low)
    assert d.verdict == "flat"
    noisy_start = np.concatenate([[2.0, 1.5], LN2 * np.exp(-np.arange(58) / 10)])  # high start, then learns
    assert feed(Doctor(window=10, chance_loss=LN2), noisy_start).verdict == "healthy"


def test_chance_loss_is_checked_and_can_be_set_later():
    with pytest.raises(ValueError, match="chance_loss must be None or a finite number > loss_floor=0.5"):
        Doctor(loss_floor=0.5, chance_loss=0.4)
    d = Doctor(window=10)
    with pytest.raises(ValueError, match="chance_loss must be None or a finite number"):
        d.set_chance_loss(float("nan"))
    for i, loss in enumerate(collapsed()[:20]):
        d.observe(10 * (i + 1), loss, lr=0.05)
    d.set_chance_loss(LN2)  # known once training starts (the model's config)
    for i, loss in enumerate(collapsed()[20:]):
        out = d.observe(10 * (21 + i), loss, lr=0.05)
    assert out.verdict == "diverging"
    state = d.state_dict()
    again = Doctor(window=10)
    again.load_state_dict(state)
    assert again.config["chance_loss"] == pytest.approx(LN2)


@pytest.mark.parametrize("config,expected", [
    ({"architectures": ["BertForSequenceClassification"], "num_labels": 2}, LN2),
    ({"architectures": ["ViTForImageClassification"], "id2label": {str(i): str(i) for i in range(10)}}, math.log(10)),
    ({"architectures": ["BertForSequenceClassification"], "num_labels": 1, "problem_type": "regression"}, None),
    ({"architectures": ["BertForSequenceClassification"], "num_labels": 5,
      "problem_type": "multi_label_classification"}, None),
    ({"architectures": ["GPT2LMHeadModel"], "vocab_size": 50257}, None),
    ({"num_labels": 2}, None),
    ({"architectures": ["BertForSequenceClassification"], "problem_type": "single_label_classification"}, LN2),
])
def test_the_chance_level_of_a_configuration(config, expected):
    got = chance_loss_from_config(config)
    assert got == (None if expected is None else pytest.approx(expected))


def trainer_state(path, losses, every=10):
    history = [{"step": every * (i + 1), "loss": loss, "learning_rate": 0.05} for i, loss in enumerate(losses)]
    path.write_text(json.dumps({"log_history": history, "global_step": every * len(losses)}))


def test_diagnose_reads_the_chance_level_from_the_checkpoints_config(tmp_path):
    """A Trainer output directory as the Trainer writes it: checkpoint-N/ with trainer_state.json and
    the model's config.json. Without the config the same log reads healthy."""
    out = tmp_path / "run"
    ck = out / "checkpoint-400"
    ck.mkdir(parents=True)
    trainer_state(ck / "trainer_state.json", collapsed())
    assert diagnose(out).verdict == "healthy"
    (ck / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                "id2label": {"0": "neg", "1": "pos"}}))
    assert chance_loss_near(ck / "trainer_state.json") == pytest.approx(LN2)
    d = diagnose(out)
    assert d.verdict == "diverging" and d.evidence["chance_loss"] == pytest.approx(LN2)
    (ck / "config.json").write_text("{not json")
    assert chance_loss_near(ck / "trainer_state.json") is None and diagnose(out).verdict == "healthy"


def test_the_hf_callback_takes_the_chance_level_from_the_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from lrkit.integrations.transformers.callback import LRDoctorCallback, _chance_loss

    cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    assert _chance_loss(model) == pytest.approx(math.log(3))
    assert _chance_loss(torch.nn.Linear(2, 2)) is None

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            return {"input_ids": torch.tensor([1 + i % 5, 2, 3, 4]), "labels": torch.tensor(i % 3)}

    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                                          report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=1,
                                          save_strategy="no")
    cb = LRDoctorCallback()
    transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb]).train()
    assert cb.doctor.config["chance_loss"] == pytest.approx(math.log(3))


@pytest.mark.parametrize("loss,units,expected", [
    ("sparse_categorical_crossentropy", 10, math.log(10)),
    ("categorical_crossentropy", 3, math.log(3)),
    ("binary_crossentropy", 1, LN2),
    ("mse", 1, None),
])
def test_the_keras_callback_takes_the_chance_level_from_compile(loss, units, expected):
    keras = pytest.importorskip("keras")
    from lrkit.integrations.keras.callback import LRDoctorCallback

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    if loss == "sparse_categorical_crossentropy":
        y = rng.integers(0, units, 64)
    elif loss == "categorical_crossentropy":
        y = np.eye(units, dtype="float32")[rng.integers(0, units, 64)]
    else:
        y = rng.integers(0, 2, (64, 1)).astype("float32")
    act = "sigmoid" if loss == "binary_crossentropy" else ("softmax" if units > 1 else None)
    # zero weights: the untrained model scores chance (a start far above it drops chance: see below)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation=act, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    cb = LRDoctorCallback()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    got = cb.doctor.config["chance_loss"]
    assert got == (None if expected is None else pytest.approx(expected))


def _raw_digits_fit(guard: bool, lr: float, seed: int):
    keras = pytest.importorskip("keras")
    from sklearn.datasets import load_digits

    from lrkit.integrations.keras.callback import LRDoctorCallback

    x, y = load_digits(return_X_y=True)  # raw pixel counts 0-16: the untrained model scores ~6x chance
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype("float32"), y[perm]
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    cb = LRDoctorCallback(guard=guard)
    model.fit(x[:1400], y[:1400], batch_size=16, epochs=8, verbose=0, callbacks=[cb])
    return cb, float(model.evaluate(x[1400:], y[1400:], verbose=0)[1])


@pytest.mark.parametrize("lr,seed", [(3e-4, 0), (1e-3, 1)])
def test_a_healthy_run_that_starts_far_above_chance_is_not_rolled_back(lr, seed):
    # unscaled inputs: the untrained model scores several times chance, and a healthy run falls
    # through chance level on its way down; read against chance it looked "collapsed to chance
    # after a blow-up" and the guard rolled it back (0.94 -> 0.09 accuracy before this was fixed)
    cb, acc = _raw_digits_fit(guard=True, lr=lr, seed=seed)
    assert cb.doctor.config["chance_loss"] is None and cb.doctor.chance_refuted
    assert cb.interventions == []
    _, unguarded = _raw_digits_fit(guard=False, lr=lr, seed=seed)
    assert acc == unguarded and acc > 0.75


def test_a_chance_level_the_untrained_model_refutes_stays_dropped_across_a_rollback():
    from lrkit.doctor import Doctor

    doc = Doctor(window=10, chance_loss=math.log(3))
    before = doc.state_dict()  # a snapshot taken before the first step holds the chance level
    assert not doc.untrained_loss(1.3)  # near chance: kept
    assert doc.config["chance_loss"] == pytest.approx(math.log(3))
    assert doc.untrained_loss(30.8) and doc.config["chance_loss"] is None and doc.chance_refuted
    doc.load_state_dict(before)  # the guard restores the doctor with that snapshot
    assert doc.config["chance_loss"] is None


def test_a_log_whose_first_step_is_far_above_chance_is_not_read_against_chance():
    from lrkit.doctor.diagnosis import doctor_settings
    from lrkit.doctor.logs import read_log

    steps = list(range(1, 121))
    falling = [30.0 * 0.95**s + 0.3 for s in steps]  # an unscaled start falling through chance (1.1)
    records = read_log({"step": steps, "loss": falling})
    records.chance_loss = math.log(3)
    assert "chance_loss" not in doctor_settings(records)
    near = read_log({"step": steps, "loss": [1.2 * 0.99**s for s in steps]})  # starts at chance
    near.chance_loss = math.log(3)
    assert doctor_settings(near)["chance_loss"] == pytest.approx(math.log(3))
    later = read_log({"step": [10 * s for s in steps], "loss": falling})  # first row averages 10 steps
    later.chance_loss = math.log(3)
    assert doctor_settings(later)["chance_loss"] == pytest.approx(math.log(3))  # unchanged: it may hold a blow-up


def test_torch_doctor_drops_a_chance_level_you_gave_when_the_untrained_model_refutes_it():
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    from lrkit.doctor import Doctor
    from lrkit.integrations.torch.doctor import TorchDoctor

    x, y = load_digits(return_X_y=True)  # raw pixel counts: the untrained model scores ~6x chance
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = TorchDoctor(model, opt, doctor=Doctor(chance_loss=math.log(10)))
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        idx = torch.randint(0, 1400, (16,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
    assert watch.doctor.chance_refuted and watch.interventions == []


@pytest.mark.parametrize("accumulation,guard", [(1, False), (4, False), (4, True)])
def test_gradient_accumulation_puts_the_initial_loss_and_chance_on_the_logged_scale(tmp_path, accumulation, guard):
    """transformers 5 passes ``num_items_in_batch`` to a model with ``**kwargs``; a sequence classifier
    that ignores it averages over its own micro-batch, and the logged loss of a step is the sum of its
    micro-batches': ``m`` times the per-example loss. The callback reads the initial loss and the chance
    level on that scale, so an LR too low to move the model is flat, not a 4x blow-up."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from lrkit.integrations.transformers.callback import LRDoctorCallback

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):
            return {"input_ids": torch.tensor([1, 2 + i % 7, 3 + i % 5, 4]), "labels": torch.tensor(i % 2)}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16 // accumulation,
        gradient_accumulation_steps=accumulation, learning_rate=1e-7, report_to=[], use_cpu=True,
        disable_tqdm=True, logging_steps=10, save_strategy="no", seed=0)
    cb = LRDoctorCallback(guard=guard)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])
    trainer.train()
    assert not cb.interventions  # nothing to roll back
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    scale = logged[0] / math.log(2)  # the untrained two-class model scores ~ln 2 per example
    assert scale == pytest.approx(accumulation, rel=0.1)  # the Trainer's own logging, as it is
    assert cb.doctor.config["chance_loss"] == pytest.approx(math.log(2) * accumulation, rel=0.01)
    start = cb.doctor._track.first_window[0]  # the initial reading, step 0
    assert start == pytest.approx(logged[0], rel=0.05)
    assert cb.diagnosis.verdict not in ("diverging", "fluctuating", "nan")
    assert all(d.verdict != "diverging" for d in cb.doctor.history)
    trainer.train()  # a second train() call: the chance level is put on the logged scale once, not again
    assert cb.doctor.config["chance_loss"] == pytest.approx(math.log(2) * accumulation, rel=0.01)
