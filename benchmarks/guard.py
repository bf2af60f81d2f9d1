"""Guard benchmark: clean vs NaN-injected vs too-high-LR runs, each unguarded and guarded.

Run from the repository root:

    .venv/bin/python benchmarks/guard.py            # writes the "guard" section of BENCHMARKS.md
    .venv/bin/python benchmarks/guard.py --quick    # fewer steps and one seed, prints only

Tasks (small, real): scikit-learn digits (MLP classifier), scikit-learn diabetes (MLP regression),
and MNIST (MLP on the 10k test-set images, split 8k/2k) when ``../shared/data/mnist`` exists.
Every run is ``TorchTrainer`` + SGD(momentum 0.9) for a fixed number of steps; the guarded runs
wrap the trainer in ``lrkit.doctor.guard.Guard`` (default ``Doctor()``, ``snapshot_every=25``,
``lr_factor=0.1``). Conditions:

* ``clean``: the task's good LR;
* ``nan``: the good LR, and after one step (at 40% of the run) a weight is set to NaN -- a
  transient fault (a bit flip, an fp16 overflow in an update): the unguarded run is poisoned;
* ``high LR``: 30x the good LR.

A run is *lost* when its final validation loss is not finite or not below the validation loss
at initialisation. Guard overhead: the guard's own time per step (doctor + snapshots, i.e. the
guarded loop's time minus the time inside ``trainer.step``) as a fraction of the mean
``trainer.step`` time, on the clean runs.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._report import machine, write_section  # noqa: E402
from lrkit.doctor import Doctor  # noqa: E402
from lrkit.doctor.guard import Guard, GuardGaveUp  # noqa: E402
from lrkit.integrations.torch.trainer import TorchTrainer  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(task: str):
    """(X_train, y_train, X_val, y_val, n_in, n_out, loss_fn, good_lr)."""
    if task == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X / 16.0, dtype=torch.float32)
        y = torch.tensor(y)
        return X[:1400], y[:1400], X[1400:], y[1400:], 64, 10, torch.nn.functional.cross_entropy, 0.1
    if task == "diabetes":
        from sklearn.datasets import load_diabetes

        X, y = load_diabetes(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        y = (y - y.mean()) / y.std()
        X = torch.tensor(X, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.float32)[:, None]
        return X[:350], y[:350], X[350:], y[350:], 10, 1, torch.nn.functional.mse_loss, 0.03
    if task == "mnist":
        X = _idx(MNIST / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
        y = _idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        X, y = torch.tensor(X), torch.tensor(y)
        return X[:8000], y[:8000], X[8000:], y[8000:], 784, 10, torch.nn.functional.cross_entropy, 0.05
    raise ValueError(f"unknown task {task!r}")


class Timed:
    """Wraps a Trainer, timing its step(); sets a weight to NaN after call number ``nan_at``."""

    def __init__(self, trainer, nan_at=-1):
        self.t = trainer
        self.step_time = 0.0
        self.steps = 0
        self.nan_at = nan_at

    def snapshot(self):
        return self.t.snapshot()

    def restore(self, s):
        self.t.restore(s)

    def evaluate(self):
        return self.t.evaluate()

    def step(self, lr):
        t0 = time.perf_counter()
        loss = self.t.step(lr)
        self.step_time += time.perf_counter() - t0
        if self.steps == self.nan_at:
            with torch.no_grad():
                next(self.t.model.parameters()).view(-1)[0] = float("nan")
        self.steps += 1
        return loss


def run(task: str, condition: str, guarded: bool, seed: int, steps: int) -> dict:
    Xtr, ytr, Xva, yva, n_in, n_out, base_loss, good_lr = load(task)
    torch.manual_seed(seed)
    hidden = 128 if task == "mnist" else 32
    act = torch.nn.Tanh() if task == "diabetes" else torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), act, torch.nn.Linear(hidden, n_out))
    opt = torch.optim.SGD(model.parameters(), lr=good_lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=64, shuffle=True, generator=g)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xva, yva), batch_size=1024)
    nan_at = int(0.4 * steps) if condition == "nan" else -1
    trainer = Timed(TorchTrainer(model, opt, base_loss, train, val_loader=val, max_val_batches=None), nan_at)
    init_val = trainer.evaluate()
    lr = good_lr * (30.0 if condition == "high LR" else 1.0)
    guard = Guard(trainer, doctor=Doctor(), snapshot_every=25, lr_factor=0.1) if guarded else None
    gave_up = False
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        for _ in range(steps):
            if guard is None:
                trainer.step(lr)
            else:
                try:
                    guard.step(lr)
                except GuardGaveUp:
                    gave_up = True
                    break
    wall = time.perf_counter() - t0
    final = trainer.evaluate()
    lost = not (math.isfinite(final) and final < init_val)
    return {
        "final": final,
        "init": init_val,
        "lost": lost,
        "interventions": len(guard.interventions) if guard else 0,
        "gave_up": gave_up,
        "overhead": (wall - trainer.step_time) / trainer.step_time if trainer.step_time else math.nan,
        "step_ms": 1000 * trainer.step_time / max(trainer.steps, 1),
        "multiplier": guard.lr_multiplier if guard else 1.0,
    }


def fmt(x: float) -> str:
    return "NaN" if not math.isfinite(x) else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="150 steps, one seed, print only")
    ap.add_argument("--steps", type=int, default=400)
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lrkit.guard").setLevel(logging.ERROR)
    steps = 150 if a.quick else a.steps
    seeds = [0] if a.quick else [0, 1]
    tasks = ["digits", "diabetes"] + (["mnist"] if MNIST.is_dir() else [])
    rows = []
    overheads, snap_ratio = [], []
    t_start = time.perf_counter()
    for task in tasks:
        for cond in ("clean", "nan", "high LR"):
            for guarded in (False, True):
                res = [run(task, cond, guarded, s, steps) for s in seeds]
                if guarded and cond == "clean":
                    overheads += [r["overhead"] for r in res]
                rows.append((task, cond, guarded, res))
                finals = ", ".join(fmt(r["final"]) for r in res)
                print(f"{task:9s} {cond:8s} {'guarded' if guarded else 'plain':8s} final val loss [{finals}] "
                      f"lost {sum(r['lost'] for r in res)}/{len(res)} interventions "
                      f"{[r['interventions'] for r in res]}", flush=True)
    elapsed = time.perf_counter() - t_start
    # snapshot cost vs one step (the part of the overhead that scales with the model)
    for task in tasks:
        Xtr, ytr, Xva, yva, n_in, n_out, base_loss, good_lr = load(task)
        hidden = 128 if task == "mnist" else 32
        model = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))
        opt = torch.optim.SGD(model.parameters(), lr=good_lr, momentum=0.9)
        tr = TorchTrainer(model, opt, base_loss, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=64))
        tr.step(good_lr)
        t0 = time.perf_counter()
        for _ in range(50):
            tr.step(good_lr)
        t_step = (time.perf_counter() - t0) / 50
        t0 = time.perf_counter()
        for _ in range(50):
            tr.snapshot()
        snap_ratio.append((task, (time.perf_counter() - t0) / 50 / t_step))

    lines = [
        "## Guard: rollback + lower LR",
        "",
        f"Command: `.venv/bin/python benchmarks/guard.py` ({steps} steps per run, seeds {seeds}; "
        f"{elapsed:.0f} s in all). Machine: {machine()}, torch {torch.__version__}, 1 thread.",
        "",
        "Loss cells: final validation loss per seed (lost runs in **bold**); interventions: guard "
        "rollbacks per seed. Guard: default `Doctor()`, `snapshot_every=25`, `lr_factor=0.1`. "
        f"`nan`: after step {int(0.4 * steps)} one weight is set to NaN (a transient fault); "
        "`high LR`: 30x the task's good LR. "
        "Lost = final validation loss not finite or not below its value at initialisation.",
        "",
        "| task | condition | unguarded: final val loss | guarded: final val loss | interventions | lost (unguarded → guarded) |",
        "|---|---|---|---|---|---|",
    ]
    by = {(t, c, g): r for t, c, g, r in rows}
    for task in tasks:
        for cond in ("clean", "nan", "high LR"):
            plain, guard = by[(task, cond, False)], by[(task, cond, True)]

            def cell(res):
                return ", ".join(f"**{fmt(r['final'])}**" if r["lost"] else fmt(r["final"]) for r in res)

            inter = ", ".join(str(r["interventions"]) + (" (gave up)" if r["gave_up"] else "") for r in guard)
            lost = f"{sum(r['lost'] for r in plain)}/{len(plain)} → {sum(r['lost'] for r in guard)}/{len(guard)}"
            lines.append(f"| {task} | {cond} | {cell(plain)} | {cell(guard)} | {inter} | {lost} |")
    lines += [
        "",
        f"Guard overhead per step on the clean runs (doctor + snapshots, outside `trainer.step`), as a "
        f"fraction of a training step: median {statistics.median(overheads):.1%}, max {max(overheads):.1%}. "
        "One snapshot (CPU copy of model, optimizer and RNG states) costs, in training steps: "
        + ", ".join(f"{t} {r:.2f}" for t, r in snap_ratio)
        + " (taken once every 25 healthy steps). These models are tiny, so a step is short and the "
        "doctor's fixed per-step cost (tens of microseconds) weighs more than it would on a real model.",
    ]
    md = "\n".join(lines)
    print(md)
    if not a.quick:
        write_section("guard", md)


if __name__ == "__main__":
    main()
