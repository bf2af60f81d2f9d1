"""A log with too few training losses read from its validation losses (lrkit.doctor.val_only): real
Trainer runs at its default logging, and the rules on their own."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lrkit.doctor import diagnose, diagnose_runs, read_log

BERT = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}}


def _trainer_state(folder, evals, losses=()):
    """A checkpoint folder as the Trainer writes it: trainer_state.json (one evaluation per epoch of
    64 steps, training losses at the steps given) and the model's config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"eval_loss": v, "epoch": float(e + 1), "step": 64 * (e + 1)} for e, v in enumerate(evals)]
    history += [{"loss": v, "epoch": s / 64, "step": s, "learning_rate": 1e-3} for s, v in losses]
    history.sort(key=lambda r: r["step"])
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 64 * len(evals), "log_history": history}))
    (folder / "config.json").write_text(json.dumps(BERT))
    return folder / "trainer_state.json"


def test_a_trainer_state_without_a_training_loss_is_read_not_refused(tmp_path):
    path = _trainer_state(tmp_path / "checkpoint-192", [0.40, 0.21, 0.15])
    records = read_log(path)
    assert records.has("loss").sum() == 0 and records.has("val_loss").sum() == 3
    d = diagnose(path)
    assert d.verdict == "healthy" and d.message.startswith("no training loss in this log; its 3 validation")
    assert d.advice[0].startswith("log the training loss more often")


def test_other_logs_without_a_loss_are_still_refused(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,val_loss\n0,1.0\n1,0.9\n")
    with pytest.raises(ValueError, match="no loss column"):
        read_log(p)


@pytest.mark.parametrize("evals, why", [
    ([3.54, 0.77, 1.10], "chance level"),          # four times chance at the first evaluation
    ([0.91, 0.74, 0.72], "collapsed"),             # worse than chance, then back only to chance
    ([1.01, 0.83, 0.76, 0.72, 0.69, 0.74, 0.71, 0.70, 0.69, 0.70], "collapsed"),
])
def test_a_validation_loss_above_chance_is_an_lr_too_high(tmp_path, evals, why):
    d = diagnose(_trainer_state(tmp_path / "ck", evals))
    assert d.verdict == "diverging" and why in d.message, d.message
    assert d.message.startswith("Read from the validation loss") and d.advice[0].startswith("lower the LR")
    assert d.advice[-1].startswith("log the training loss more often")


def test_a_validation_loss_that_does_not_move_is_flat(tmp_path):
    evals = [0.6931, 0.6930, 0.6930, 0.6929, 0.6929, 0.6928, 0.6928, 0.6927, 0.6927, 0.6926]
    d = diagnose(_trainer_state(tmp_path / "ck", evals, losses=[(500, 0.6931)]))
    assert d.verdict == "flat" and d.advice[1].startswith("raise the LR"), d.message
    # evaluated from step 64 on: a run stopped before its first evaluation reads the same; the range test first
    assert d.advice[0].startswith("run an LR range test") and "10 evaluations (steps 64-640)" in d.message
    assert "The evaluations start at step 64" in d.message


@pytest.mark.parametrize("evals", [
    [0.69, 0.43, 0.12, 0.06, 0.04, 0.03, 0.029, 0.027, 0.026, 0.026],   # learning
    [0.52, 0.31, 0.22, 0.20, 0.21, 0.24, 0.27, 0.31, 0.33, 0.36],       # overfitting after its best
    [0.6931, 0.6930, 0.6931, 0.6932],                                    # too few to tell too low from anything
    [0.61, 0.53, 0.55, 0.54, 0.51, 0.52, 0.53, 0.55, 0.52, 0.51, 0.50, 0.50],  # converged in its first epochs:
])                                                                       # it jitters (Lightning, Adam 0.01, diabetes)
def test_a_learning_or_overfitting_run_is_not_a_problem(tmp_path, evals):
    assert diagnose(_trainer_state(tmp_path / "ck", evals, losses=[(500, 0.3)])).ok


def test_a_nan_validation_loss_is_nan(tmp_path):
    d = diagnose(_trainer_state(tmp_path / "ck", [0.6, float("nan"), 0.5]))
    assert d.verdict == "nan" and d.step == 128


def test_without_a_chance_level_only_the_series_speaks(tmp_path):
    path = _trainer_state(tmp_path / "ck", [3.54, 0.77, 1.10])
    (tmp_path / "ck" / "config.json").unlink()
    assert diagnose(path).ok  # a regression's loss may be anything: three evaluations say nothing


def _run_trainer(tmp_path, lr: float):
    """The Trainer at its defaults (logging_steps=500, an evaluation and a checkpoint per epoch):
    a tiny BERT from its config, 3 epochs of 64 steps."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    from real_runs import tokens

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    def rows(n, seed):  # a list of dict rows is a dataset to the Trainer
        ids, y = tokens(n, seed=seed)
        return [{"input_ids": torch.from_numpy(i), "labels": torch.tensor(label)} for i, label in zip(ids, y)]

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32, num_labels=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=16, learning_rate=lr,
        eval_strategy="epoch", save_strategy="epoch", save_only_model=True, report_to=[], disable_tqdm=True,
        use_cpu=True, seed=0)
    transformers.Trainer(model=transformers.BertForSequenceClassification(cfg), args=args,
                         train_dataset=rows(1024, 100), eval_dataset=rows(256, 200)).train()
    return tmp_path


@pytest.mark.parametrize("lr, verdict", [(1.0, "diverging"), (1e-3, "healthy")])
def test_a_trainer_at_its_default_logging(tmp_path, lr, verdict):
    """192 steps under logging_steps=500: no training loss in any trainer_state.json. `lrkit diagnose`
    refused these folders ("no loss column") before."""
    out = _run_trainer(tmp_path, lr)
    state = json.loads((out / "checkpoint-192" / "trainer_state.json").read_text())
    assert not any("loss" in r for r in state["log_history"])  # the Trainer's own default
    d = diagnose(out / "checkpoint-192")
    assert d.verdict == verdict, d.message
    found = diagnose_runs(out)
    assert {type(v).__name__ for v in found.values()} == {"Diagnosis"}
    cli = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", str(out / "checkpoint-192")],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and verdict.upper() in cli.stdout, cli.stdout + cli.stderr
    assert math.isfinite(d.evidence.get("validation_evaluations", 3.0))


def test_a_trainer_tensorboard_log_with_no_training_loss_yet(tmp_path):
    """report_to="tensorboard" writes eval/loss per epoch and, under logging_steps=500, no train/loss."""
    pytest.importorskip("tensorboard")
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    with SummaryWriter(str(tmp_path / "hf")) as w:
        for epoch, value in enumerate([0.52, 0.31, 0.22]):
            w.add_scalar("eval/loss", value, 64 * (epoch + 1))
    records = read_log(tmp_path / "hf")
    assert records.has("loss").sum() == 0 and records.has("val_loss").sum() == 3
    assert diagnose(records).ok
    with SummaryWriter(str(tmp_path / "mine")) as w:  # not a Trainer's: its training loss has another name
        w.add_scalar("Loss/test", 0.5, 0)
        w.add_scalar("objective", 0.7, 0)
    with pytest.raises(ValueError, match="no loss tag"):
        read_log(tmp_path / "mine")


def test_a_chance_level_the_untrained_loss_refutes_is_not_used(tmp_path):
    """An untrained loss far above chance (unscaled inputs, an overconfident head) makes chance no
    reference for the run: nor for its validation losses."""
    path = _trainer_state(tmp_path / "ck", [3.54, 0.77, 1.10], losses=[(1, 40.0)])
    assert diagnose(path).ok


def test_a_validation_loss_below_the_training_losss_floor_is_not_read_as_a_log():
    """loss_floor bounds the training loss; a validation series under it was a ValueError traceback."""
    log = {"step": [10, 20, 30, 40, 50, 60], "loss": [None] * 5 + [1.0],
           "eval_loss": [0.4, 0.3, 0.2, 0.1, 0.05, 0.04]}
    assert diagnose(log, loss_floor=0.2).ok


def test_a_malformed_trainer_state_is_one_clear_error(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [3, {"eval_loss": 0.5, "step": 1}]}))
    with pytest.raises(ValueError, match=r"trainer_state\.json\[0\]: expected a dict per row, got int"):
        read_log(tmp_path / "trainer_state.json")
