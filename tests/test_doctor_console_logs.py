"""``lrkit diagnose`` on what a console printed (lrkit.doctor.console_logs): the Hugging Face
Trainer's dicts and Keras fit's epoch lines, captured from real runs in a subprocess, the way a
SLURM ``.out`` file or ``python train.py > train.log`` keeps them."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lrkit.doctor import LogFormatError, diagnose, read_log
from lrkit.doctor.console_logs import console_rows

TESTS = Path(__file__).resolve().parent


def captured(tmp_path: Path, script: str, name: str) -> Path:
    """Run ``script`` in a fresh interpreter with stdout and stderr into one file, as a shell redirect does."""
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "KERAS_BACKEND": "torch"}
    with open(out, "w") as fh:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], stdout=fh, stderr=subprocess.STDOUT,
                           env=env, timeout=300)
    assert r.returncode == 0, out.read_text()[-2000:]
    return out


KERAS = """
    import sys
    import torch; torch.set_num_threads(1)
    import keras
    from sklearn.datasets import load_digits
    d = load_digits(); x = (d.data / 16.0).astype("float32"); y = d.target
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
    m.compile(keras.optimizers.SGD({lr}), "sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x[:1500], y[:1500], validation_data=(x[1500:], y[1500:]), epochs=8, batch_size=32, verbose={verbose})
    print("HISTORY", repr(h.history["loss"]), file=sys.stderr)
"""


@pytest.mark.parametrize("verbose", [1, 2])
def test_keras_fit_console(tmp_path, verbose):
    pytest.importorskip("keras")
    out = captured(tmp_path, KERAS.format(lr=0.05, verbose=verbose), f"fit{verbose}.out")
    history = eval(next(line for line in out.read_text().splitlines() if line.startswith("HISTORY"))[8:])
    recs = read_log(out)
    assert recs.step_column == "epoch" and recs.step.tolist() == list(range(8))
    assert recs.loss.tolist() == pytest.approx(history, rel=1e-3)  # printed to 4 decimals
    assert recs.has("val_loss").all() and recs.has("val_accuracy").all()
    assert diagnose(recs).verdict == "healthy"


def test_keras_fit_console_of_a_run_blown_up_in_its_first_epoch(tmp_path):
    pytest.importorskip("keras")
    out = captured(tmp_path, KERAS.format(lr=30.0, verbose=2), "high.out")
    r = subprocess.run([sys.executable, "-m", "lrkit", "diagnose", str(out), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["verdict"] == "diverging" and d["advice"][0].startswith("lower the LR")


TRAINER = """
    import torch; torch.set_num_threads(1)
    from transformers import Trainer, TrainingArguments
    from _hf_digits import Clf, Rows, digits
    x, y = digits()
    args = TrainingArguments(output_dir={out!r}, max_steps=60, learning_rate={lr}, per_device_train_batch_size=32,
                             logging_steps=5, eval_strategy="steps", eval_steps=20, report_to="none", use_cpu=True,
                             save_strategy="no")
    t = Trainer(model=Clf(), args=args, train_dataset=Rows(x[:1400], y[:1400]), eval_dataset=Rows(x[1400:], y[1400:]))
    t.train()
    print("STATE", [(h["step"], h.get("loss"), h.get("eval_loss")) for h in t.state.log_history])
"""


def test_trainer_console(tmp_path):
    pytest.importorskip("transformers")
    out = captured(tmp_path, TRAINER.format(out=str(tmp_path / "o"), lr=3e-3), "train.out")
    text = out.read_bytes().decode("utf-8")
    assert "\r" in text and "{'loss': " in text  # tqdm's bars and the dicts share lines
    state = eval(next(line for line in text.splitlines() if line.startswith("STATE"))[6:])
    recs = read_log(out)
    assert recs.step_column == "row" and len(recs) == 12  # a row per logging point (every 5 steps)
    losses = [loss for _, loss, _ in state if loss is not None]
    assert recs.loss.tolist() == pytest.approx(losses, rel=1e-3)  # printed to 4 significant digits
    evals = [e for _, _, e in state if e is not None]
    assert recs.val_loss[recs.has("val_loss")].tolist() == pytest.approx(evals, rel=1e-3)
    assert recs.step[recs.has("val_loss")].tolist() == [3, 7, 11]  # with the training log of steps 20, 40, 60
    assert recs.has("grad_norm").all() and recs.renamed["lr"] == "learning_rate"
    assert diagnose(recs).verdict == "healthy"


def test_trainer_console_with_a_nan(tmp_path):
    text = ("{'loss': 2.3, 'grad_norm': 0.5, 'learning_rate': 0.1, 'epoch': 0.1}\n"
            "{'loss': 2.1, 'grad_norm': 0.6, 'learning_rate': 0.1, 'epoch': 0.2}\n"
            "{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': 0.1, 'epoch': 0.3}\n")
    p = tmp_path / "slurm-1.out"
    p.write_text(text)
    d = diagnose(p)
    assert d.verdict == "nan" and d.step == 2


def test_not_a_console_log():
    assert console_rows("Epoch 1/3\nno metrics here\n", "x") is None
    assert console_rows("{'lr': 0.1}\n", "x") is None  # a dict, but no epoch and no loss
    with pytest.raises(LogFormatError, match="unknown log format.*console output of a Hugging Face Trainer or Keras fit"):
        read_log_text("just words\n")


def read_log_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".out", delete=False) as fh:
        fh.write(text)
    try:
        return read_log(fh.name)
    finally:
        os.unlink(fh.name)


def test_a_nan_printed_by_keras(tmp_path):
    p = tmp_path / "fit.log"
    p.write_text("Epoch 1/2\n10/10 - 0s - 2ms/step - loss: 2.3000\nEpoch 2/2\n10/10 - 0s - 2ms/step - loss: nan\n")
    recs = read_log(p)
    assert recs.loss[0] == 2.3 and math.isnan(recs.loss[1])
    assert diagnose(recs).verdict == "nan"


# ----------------------------------------------------------------------------- lines a script printed
TORCH_LOOP = """
    import torch
    torch.manual_seed(0); torch.set_num_threads(1)
    from _hf_digits import digits
    x, y = digits()
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(net.parameters(), lr={lr})
    n = 1500 // 30
    for epoch in range(4):
        perm = torch.randperm(1500)
        for i in range(n):
            idx = perm[i * 30:(i + 1) * 30]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(); loss.backward(); opt.step()
            if (i + 1) % 5 == 0:  # as the PyTorch tutorials print it
                print(f"Epoch [{{epoch + 1}}/4], Step [{{i + 1}}/{{n}}], Loss: {{loss.item():.4f}}")
"""


def test_a_plain_pytorch_loop_as_the_tutorials_print_it(tmp_path):
    pytest.importorskip("torch")
    good = read_log(captured(tmp_path, TORCH_LOOP.format(lr=0.1), "good.log"))
    assert good.step_column == "step" and len(good) == 40
    assert good.step.tolist()[:3] == [55, 60, 65] and all(b > a for a, b in zip(good.step, good.step[1:]))
    assert diagnose(good).verdict == "healthy"
    high = diagnose(captured(tmp_path, TORCH_LOOP.format(lr=1e4), "high.log"))
    assert high.verdict in ("nan", "diverging") and high.advice[0].startswith("lower the LR")


def test_nanogpt_lines(tmp_path):
    p = tmp_path / "train.log"
    lines = []
    for it in range(0, 300, 10):
        if it % 100 == 0:
            lines.append(f"step {it}: train loss {4.3 * 0.995 ** it:.4f}, val loss {4.35 * 0.995 ** it:.4f}")
        lines.append(f"iter {it}: loss {4.28 * 0.995 ** it:.4f}, time 40.12ms, mfu 10.01%")
    p.write_text("\n".join(lines) + "\n")
    recs = read_log(p)
    assert recs.step.tolist() == list(range(0, 300, 10)) and recs.renamed["loss"] == "loss"
    assert recs.val_loss[recs.has("val_loss")].tolist() == pytest.approx([4.35 * 0.995 ** s for s in (0, 100, 200)],
                                                                       rel=1e-3)
    assert diagnose(recs).verdict == "healthy"


def test_printed_lines_whose_counters_do_not_increase_are_numbered(tmp_path):
    p = tmp_path / "run.txt"
    p.write_text("".join(f"run {r} | step {s} | loss {2.3 - 0.1 * s - 0.01 * r:.3f} | lr 0.01\n"
                         for r in range(2) for s in range(6)))
    recs = read_log(p)
    assert recs.step_column == "row" and len(recs) == 12 and recs.lr.tolist() == [0.01] * 12


def test_prose_with_a_loss_in_it_is_not_a_log(tmp_path):
    assert console_rows("we saw loss 3 times\nthe rest is text\n", "x") is None
    with pytest.raises(LogFormatError, match="unknown log format"):
        read_log_text("we saw loss 3 times\nthe rest is text\n")
