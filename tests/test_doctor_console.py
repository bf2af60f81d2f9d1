"""Where a watch-only callback speaks when the user configured no Python logging: on the
framework's own console (Keras' progress output, Lightning's and Hugging Face's loggers), once.

Each case runs a real framework in a fresh interpreter (pytest's own log capture would count as
configured logging) with a run that blows up at LR 1.0, and reads what the user would see.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

DATA = """
    import numpy as np
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype("float32")[:384]
    y = y[:384].astype("int64")
"""

KERAS = DATA + """
    import keras
    from lrkit.keras import LRDoctorCallback
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, activation="relu") for _ in range(3)]
                             + [keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = LRDoctorCallback()
    model.fit(X, y, batch_size=32, epochs=3, verbose=1, callbacks=[cb])
    assert cb.detections
"""

LIGHTNING = DATA + """
    import torch, lightning.pytorch as pl
    from lrkit.lightning import LRDoctorCallback
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
    ds = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    cb = LRDoctorCallback()
    pl.Trainer(max_epochs=3, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(M(), torch.utils.data.DataLoader(ds, batch_size=32))
    assert cb.detections
"""

HF = DATA + """
    import torch
    from transformers import Trainer, TrainingArguments
    from lrkit.transformers import LRDoctorCallback
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}
    class DS(torch.utils.data.Dataset):
        def __len__(self): return len(X)
        def __getitem__(self, i): return {"x": torch.as_tensor(X[i]), "labels": int(y[i])}
    args = TrainingArguments(output_dir=sys.argv[1], num_train_epochs=3, per_device_train_batch_size=32,
                             learning_rate=1.0, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to=[], disable_tqdm=True, use_cpu=True)
    cb = LRDoctorCallback()
    Trainer(model=Net(), args=args, train_dataset=DS(), callbacks=[cb]).train()
    assert cb.detections
"""


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", "import sys\n" + textwrap.dedent(code), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("framework, code, stream", [
    ("keras", KERAS, "stdout"), ("lightning.pytorch", LIGHTNING, "stderr"), ("transformers", HF, "stderr"),
])
def test_a_watch_only_callback_speaks_on_the_frameworks_console(framework, code, stream, tmp_path):
    pytest.importorskip(framework)
    out = _run(code, tmp_path)
    said = getattr(out, stream)
    lines = [ln for ln in said.splitlines() if "lrkit doctor at step" in ln]
    assert lines, f"no detection on {framework}'s console ({stream}):\n{said[-2000:]}"
    other = out.stderr if stream == "stdout" else out.stdout
    # said once: not a second time by Python's last-resort handler (stderr) or elsewhere
    assert all(ln not in other for ln in lines)
    assert len(lines) == len(set(lines))
    assert "worst problem seen" in said
