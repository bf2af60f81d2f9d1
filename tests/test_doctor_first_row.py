"""A coarse log whose first row holds a blow-up (lrkit.doctor.first_row): real Trainer and Keras runs,
their healthy twins, and the shapes on their own."""
from __future__ import annotations

import numpy as np
import pytest

from lrkit.doctor import diagnose, read_log


def _hf_run(tmp_path, optim: str, lr: float):
    """A Trainer run of the digits MLP (custom module: no config.json, chance unknown), logged every 10 steps."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch
    from _hf_digits import Clf, Rows, digits

    torch.set_num_threads(1)
    x, y = digits()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=200, learning_rate=lr, optim=optim, per_device_train_batch_size=32,
        logging_steps=10, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=Clf(), args=args, train_dataset=Rows(x[:1400], y[:1400]))
    trainer.train()
    trainer.save_state()
    return read_log(tmp_path / "trainer_state.json")


@pytest.mark.parametrize("optim, lr", [("adamw_torch", 10.0), ("sgd", 1e6)])
def test_trainer_run_blown_up_in_its_first_interval_then_recovering(tmp_path, optim, lr):
    """AdamW at LR 10 logs ~7000 for its first 10 steps, then comes back to chance with spikes;
    SGD at 1e6 logs 1e9, then swings between 1e4 and 1e8. Both read healthy before."""
    records = _hf_run(tmp_path, optim, lr)
    loss = records.loss[records.has("loss")]
    assert loss[0] > 100 * np.median(loss[1:])  # the blow-up is inside the first logged row
    d = diagnose(records)
    assert d.verdict == "diverging" and d.step == 10, d.message
    assert "first logged interval" in d.message and d.advice[0].startswith("lower the LR about 3x, from")


def test_trainer_run_at_a_good_lr_is_healthy(tmp_path):
    d = diagnose(_hf_run(tmp_path, "adamw_torch", 3e-3))
    assert d.verdict == "healthy", d.message


def _keras_regression(tmp_path, lr: float, standardise_targets: bool):
    keras = pytest.importorskip("keras")
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = (data.data * 10).astype("float32")
    y = data.target.astype("float32")
    if standardise_targets:
        y = (y - y.mean()) / y.std()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(lr), "mse")
    log = tmp_path / f"diabetes_{lr}.csv"
    model.fit(x[:353], y[:353], validation_data=(x[353:], y[353:]), epochs=20, batch_size=32, verbose=0,
              callbacks=[keras.callbacks.CSVLogger(str(log))])
    return log


def test_keras_fit_blown_up_in_its_first_epoch_then_recovering(tmp_path):
    """Adam at LR 3 on standardised targets: epoch means of ~5e4, then back to ~2 (a good LR ends near 0.45)."""
    d = diagnose(_keras_regression(tmp_path, 3.0, standardise_targets=True))
    assert d.verdict == "diverging" and d.step == 0, d.message
    assert d.advice[0] == "lower the LR about 3x"  # a CSVLogger log has no LR column


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_keras_fit_on_raw_targets_is_not_a_blow_up(tmp_path, lr):
    """Raw diabetes targets (~150): the first epoch's mean is far above the rest because the untrained
    model is, not because anything blew up."""
    d = diagnose(_keras_regression(tmp_path, lr, standardise_targets=False))
    assert "first logged interval" not in d.message, d.message


def _rows(first: float, rest) -> dict[str, list[float]]:
    return {"epoch": list(range(1 + len(rest))), "loss": [first, *rest]}


def test_a_fast_healthy_fall_with_noise_is_healthy():
    rng = np.random.default_rng(0)
    rest = 0.6 * np.exp(-0.15 * np.arange(25)) * np.exp(rng.normal(0, 0.15, 25))
    assert diagnose(_rows(2.3, rest)).verdict == "healthy"


def test_a_spike_after_a_blown_first_row_is_diverging():
    rest = [8.6, 3.6, 2.4, 6.6, 2.36, 2.32, 2.34, 2.34, 2.35, 2.33, 2.31, 2.32]
    d = diagnose(_rows(803.0, rest))
    assert d.verdict == "diverging" and d.evidence["spike_step"] == 4 and d.evidence["spike_ratio"] > 2.5


def test_a_spike_while_a_schedule_raises_the_lr_is_the_schedules():
    rest = [8.6, 3.6, 2.4, 6.6, 2.36, 2.32, 2.34, 2.34, 2.35, 2.33, 2.31, 2.32]
    log = {**_rows(803.0, rest), "lr": [0.1] * 4 + [0.3] + [0.1] * 8}
    assert "spike_step" not in diagnose(log).evidence


def test_a_second_row_above_a_blown_first_is_diverging_unless_warming_up():
    rest = [1200.0, 300.0, 40.0, 9.0, 4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 1.8]
    d = diagnose(_rows(1000.0, rest))
    assert d.verdict == "diverging" and d.evidence["second_to_first_ratio"] == pytest.approx(1.2)
    warm = {**_rows(1000.0, rest), "lr": [1e-3, 3e-3] + [3e-3] * 10}
    assert "second_to_first_ratio" not in diagnose(warm).evidence


def test_a_nan_stays_nan():
    rest = [8.6, 3.6, 2.4, 6.6, float("nan"), 2.32, 2.34, 2.34]
    assert diagnose(_rows(803.0, rest)).verdict == "nan"


# -- stalled since the first row: a first row 1.5-4x the rest, then nothing improved (train and validation)
# Keras' TensorBoard epoch logs of Adam at LR 0.5 on the digits (TensorFlow, seeds 0-2): dead in epoch 1
DEAD_ADAM = [
    ([4.465, 2.156, 2.381, 2.344, 2.346, 2.348, 2.349, 2.350, 2.351, 2.351, 2.352, 2.352],
     [2.251, 2.290, 2.337, 2.345, 2.344, 2.346, 2.347, 2.348, 2.349, 2.350, 2.351, 2.351]),
    ([3.90, 2.35, 2.36, 2.36, 2.36, 2.36, 2.36, 2.36, 2.36, 2.36, 2.36, 2.36],
     [2.33, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34, 2.34]),
    ([5.34, 2.13, 2.14, 2.14, 2.11, 2.07, 2.15, 2.08, 2.08, 2.08, 2.08, 2.08],
     [2.13, 2.11, 2.20, 2.11, 2.13, 2.10, 2.11, 2.11, 2.11, 2.11, 2.11, 2.11]),
]


def _epochs(loss, val, lr=None):
    log = {"epoch": list(range(len(loss))), "loss": list(loss), "val_loss": list(val)}
    return log if lr is None else {**log, "lr": list(lr)}


@pytest.mark.parametrize("loss, val", DEAD_ADAM)
def test_a_run_that_improved_nothing_after_a_lifted_first_row_is_stuck(loss, val):
    d = diagnose(_epochs(loss, val, lr=[0.5] * len(loss)))
    assert d.verdict == "diverging" and d.step == 0, (d.verdict, d.message)
    assert d.evidence["stuck"] == 1.0 and d.evidence["val_relative_progress_since"] < 0.05
    assert d.advice[0] == "lower the LR about 10x, from 0.5 to 0.05"
    assert "nothing improved after it" in d.message


def test_without_the_validation_losses_a_lifted_first_row_alone_says_nothing():
    """The training losses alone do not tell a network killed in its first epoch from one that learned
    all it could in it: the validation losses must agree that nothing improved."""
    loss, _ = DEAD_ADAM[0]
    assert "first logged interval" not in diagnose({"epoch": list(range(len(loss))), "loss": loss}).message


def test_a_model_that_still_gains_a_few_percent_is_not_stalled():
    """Keras on TensorFlow, a linear model on 51,000 synthetic rows, Adam 1e-3: nearly converged in its first
    epoch (0.96, then 0.534 ... 0.515), its validation loss 7% down from its first evaluation."""
    loss = [0.961, 0.534, 0.521, 0.518, 0.517, 0.516, 0.516, 0.515, 0.515, 0.515, 0.515, 0.515]
    val = [0.540, 0.515, 0.509, 0.507, 0.506, 0.506, 0.505, 0.505, 0.505, 0.505, 0.505, 0.505]
    d = diagnose(_epochs(loss, val, lr=[1e-3] * 12))
    assert d.ok, d.message


def test_a_run_whose_lr_was_cut_early_is_not_stalled_but_one_under_a_linear_decay_is():
    """A schedule that cut the LR after the first epoch stops any run: that is no evidence of an LR too high.
    A linear decay to 0 over the run (the Trainer's default) leaves its first half at a comparable LR."""
    loss, val = DEAD_ADAM[0]
    d = diagnose(_epochs(loss, val, lr=[0.5] + [0.01] * (len(loss) - 1)))
    assert "nothing improved after it" not in d.message
    decay = 0.5 * (1 - np.arange(len(loss)) / len(loss))
    d = diagnose(_epochs(loss, val, lr=decay))
    assert d.verdict == "diverging" and "nothing improved after it" in d.message, d.message


def test_a_run_that_overfits_after_its_first_epoch_is_not_stalled():
    """The validation loss best at its first evaluation, but the training loss keeps falling: overfitting."""
    loss = [1.19, 0.25, 0.14, 0.10, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04, 0.04, 0.03]
    val = [0.30, 0.31, 0.33, 0.34, 0.36, 0.38, 0.39, 0.41, 0.42, 0.44, 0.45, 0.47]
    assert "nothing improved after it" not in diagnose(_epochs(loss, val, lr=[1e-2] * 12)).message
