"""The informational signs: ``converged`` (Keras EarlyStopping's patience/min_delta, checked
against the real callback) and ``overfitting`` (validation loss up while the training loss falls).
They are never a rollback and never hide (nor are hidden by) a problem."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lrkit.doctor import INFORMATIONAL, SEVERITY, VERDICTS, Diagnosis, Doctor, Guard, diagnose

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def keras_stop_epoch(values, patience, min_delta, mode):
    """The epoch at which the real keras.callbacks.EarlyStopping stops (None: never)."""
    keras = pytest.importorskip("keras")

    class Model:
        stop_training = False

    cb = keras.callbacks.EarlyStopping(monitor="val_m", patience=patience, min_delta=min_delta, mode=mode)
    cb.set_model(Model())
    cb.on_train_begin()
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, {"val_m": float(v)})
        if cb.model.stop_training:
            return epoch
    return None


def first_converged(values, patience, min_delta, name):
    doc = Doctor(window=5, converge_monitor=name, converge_patience=patience, converge_min_delta=min_delta)
    for epoch, v in enumerate(values):
        d = doc.observe(epoch, 1.0, metrics={name: float(v)})
        if d.converged:
            return epoch
    return None


@SETTINGS
@given(
    values=st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=30),  # Keras compares float32 values
    patience=st.integers(0, 6),
    min_delta=st.sampled_from([0.0, 0.01, 0.1]),
    mode=st.sampled_from(["min", "max"]),
)
def test_converged_fires_exactly_when_keras_early_stopping_stops(values, patience, min_delta, mode):
    name = "val_error" if mode == "min" else "val_accuracy"
    assert first_converged(values, patience, min_delta, name) == keras_stop_epoch(values, patience, min_delta, mode)


def test_converged_names_the_best_evaluation_and_clears_on_improvement():
    doc = Doctor(window=5, converge_patience=3)
    vals = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.72, 0.5]
    ds = [doc.observe(e, 1.0 / (e + 1), val_loss=v) for e, v in enumerate(vals)]
    d = ds[5]
    assert d.verdict == "converged" and d.ok and d.converged and d.step == 2 and d.detected_at == 5
    assert d.evidence["converged_best"] == 0.7 and d.evidence["converged_wait"] == 3
    assert d.advice[0].startswith("stop training")
    assert not ds[7].converged and ds[7].verdict == "healthy"  # improved again
    assert [h.verdict for h in doc.history] == ["converged"]


def test_hugging_face_eval_loss_is_read_as_the_validation_loss():
    doc = Doctor(window=5, converge_patience=2)
    for e, v in enumerate([1.0, 0.8, 0.9, 0.95]):
        d = doc.observe(e, 1.0 / (e + 1), metrics={"eval_loss": v, "eval_runtime": 3.0})
    assert d.converged and d.step == 1 and d.message.startswith("The validation loss has not improved")


def test_overfitting_when_validation_rises_while_training_falls():
    n = 30
    train = 2.0 * 0.85 ** np.arange(n)
    val = np.concatenate([1.5 * 0.8 ** np.arange(10), 1.5 * 0.8**9 * 1.08 ** np.arange(1, n - 9)])
    d = diagnose({"epoch": list(range(n)), "loss": train.tolist(), "val_loss": val.tolist()})
    assert d.verdict == "overfitting" and d.ok and d.overfitting
    assert d.step == 10  # the first evaluation after the best (epoch 9)
    assert d.evidence["overfit_val_ratio_to_best"] > 1.1 and d.evidence["overfit_train_ratio"] < 1


@SETTINGS
@given(seed=st.integers(0, 1000), noise=st.floats(0.0, 0.05))
def test_validation_that_keeps_improving_is_neither(seed, noise):
    rng = np.random.default_rng(seed)
    n = 40
    train = 2.0 * 0.9 ** np.arange(n)
    val = (1.0 * 0.93 ** np.arange(n)) * np.exp(noise * rng.standard_normal(n))
    doc = Doctor(window=5)
    for e in range(n):
        d = doc.observe(e, float(train[e]), val_loss=float(val[e]))
        assert not d.overfitting
    assert d.verdict == "healthy"


def test_a_plateau_of_both_losses_is_not_overfitting():
    n = 40
    doc = Doctor(window=5)
    for e in range(n):
        d = doc.observe(e, 0.5 + 0.01 * (e % 2), val_loss=0.6 + 0.1 * (e % 3 == 0))
        assert not d.overfitting


def test_informational_verdicts_rank_below_problems_and_stay_in_notes():
    doc = Doctor(window=5, converge_patience=2)
    for e in range(12):
        d = doc.observe(e, 2.0 * 0.8**e, lr=0.3, val_loss=1.0, metrics={"val_accuracy": 0.2 if e % 2 else 0.9})
    assert d.verdict == "fluctuating" and not d.ok
    assert d.converged and d.notes == ("converged",) and "converged_wait" in d.evidence
    assert json.loads(json.dumps(d.to_dict()))["notes"] == ["converged"]
    assert set(INFORMATIONAL) == {"converged", "overfitting"} and not set(INFORMATIONAL) & set(VERDICTS)
    assert SEVERITY["converged"] == SEVERITY["overfitting"] == SEVERITY["healthy"]
    with pytest.raises(ValueError, match="notes must be among"):
        Diagnosis("healthy", None, None, notes=("bored",))


def test_state_dict_round_trip_keeps_the_informational_signs():
    vals = [1.0, 0.8, 0.7, 0.75, 0.82, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    a = Doctor(window=5, converge_patience=4)
    seq_a = [a.observe(e, 0.9**e, val_loss=v) for e, v in enumerate(vals)]
    b = Doctor(window=5, converge_patience=4)
    seq_b = [b.observe(e, 0.9**e, val_loss=v) for e, v in enumerate(vals[:5])]
    c = Doctor(window=5, converge_patience=4)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    seq_b += [c.observe(e, 0.9**e, val_loss=v) for e, v in enumerate(vals) if e >= 5]
    assert [d.to_dict() for d in seq_a] == [d.to_dict() for d in seq_b]
    assert seq_a[-1].overfitting and seq_a[-1].converged


class _Trainer:
    """A one-parameter model trained by the guard: snapshot/restore its weight."""

    def __init__(self):
        self.w = 1.0
        self.restores = 0

    def snapshot(self):
        return self.w

    def restore(self, state):
        self.w = state
        self.restores += 1


def test_the_guard_never_acts_on_informational_verdicts():
    with pytest.raises(ValueError, match="act_on"):
        Guard(_Trainer(), act_on=("converged",))
    trainer = _Trainer()
    g = Guard(trainer, doctor=Doctor(window=5, converge_patience=2), snapshot_every=5)
    assert "converged" not in g.act_on and "overfitting" not in g.act_on
    vals = [1.0, 0.8, 0.7] + [0.7 * 1.1**k for k in range(1, 30)]
    for e, v in enumerate(vals):
        assert g.observe(0.9**e, val_loss=v) is None
    assert g.diagnosis.overfitting and g.diagnosis.converged and trainer.restores == 0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"converge_patience": -1}, r"converge_patience must be an int >= 0, got -1"),
        ({"converge_min_delta": -0.1}, r"converge_min_delta must be a number >= 0, got -0.1"),
        ({"converge_monitor": ""}, r"converge_monitor must be None .the validation loss. or the name of a validation metric"),
        ({"overfit_tol": 0}, r"overfit_tol must be a number > 0, got 0"),
    ],
)
def test_bad_informational_settings_name_the_parameter(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Doctor(**kwargs)
