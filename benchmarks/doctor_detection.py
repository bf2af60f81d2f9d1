"""LR doctor detection benchmark: real training runs at good, too-low, too-high, spiked and
NaN-injected learning rates; verdict accuracy, detection delay, false alarms, per-step cost.

Run:  .venv/bin/python benchmarks/doctor_detection.py        (about 1-2 minutes on 2 cores)

Tasks (all tiny, CPU, batch 32, 300 steps, torch at 1 thread):
  digits    scikit-learn digits, MLP 64-64-10, cross-entropy
  cancer    scikit-learn breast_cancer (standardised), logistic regression, BCE
  diabetes  scikit-learn diabetes (standardised X and y), MLP 10-32-1, MSE
  mnist     2,000 images of shared/data/mnist (if present), MLP 784-64-10, cross-entropy
Optimizers: SGD, Adam, RMSprop; seeds 0, 1, 2.

Regimes (the LR is set by the benchmark; the ground-truth label is then checked on the outcome):
  good      the usual default (SGD 0.1, Adam 1e-3, RMSprop 1e-3)           -> healthy
  too_low   good / 1e4                                                    -> flat, if the loss
            moved < 10% of its initial level (the first loss vs the median of the last 50);
            a run that still trained is labelled healthy (by outcome, not intent)
  too_high  good x 300 from the start                                     -> diverging, if the
            smoothed loss (running median of 5) rose above 2x the first loss or the run never got
            below 90% of it; a run that trained anyway is "ambiguous" (shown, not scored)
  spike     good until step 150, then good x 300                         -> diverging with onset
            150, if the smoothed loss after 150 rose above 2x its level before 150; else ambiguous
  nan       good, and a weight set to NaN at step 150 (real propagation)   -> nan, onset 150
Any run whose loss became non-finite by itself is labelled nan (onset: first non-finite step).
"""
from __future__ import annotations

import gzip
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lrkit.doctor import VERDICTS, Doctor, overall  # noqa: E402

torch.set_num_threads(1)
STEPS, BATCH, K = 300, 32, 150
GOOD = {"sgd": 0.1, "adam": 1e-3, "rmsprop": 1e-3}
OPTS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def load_task(name: str):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

    nn, F = torch.nn, torch.nn.functional
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X / 16.0, dtype=torch.float32)
        return X, torch.tensor(y), lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), F.cross_entropy
    if name == "cancer":
        X, y = load_breast_cancer(return_X_y=True)
        X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
        return X, torch.tensor(y, dtype=torch.float32), lambda: nn.Sequential(nn.Linear(30, 1), nn.Flatten(0)), F.binary_cross_entropy_with_logits
    if name == "diabetes":
        X, y = load_diabetes(return_X_y=True)
        X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
        y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
        return X, y, lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0)), F.mse_loss
    if name == "mnist":
        with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") as fh:
            X = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784)[:2000] / 255.0
        with gzip.open(MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
            y = np.frombuffer(fh.read(), np.uint8, offset=8)[:2000].astype(np.int64)
        return (
            torch.tensor(X, dtype=torch.float32),
            torch.tensor(y),
            lambda: nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)),
            F.cross_entropy,
        )
    raise ValueError(name)


def train(task, opt: str, regime: str, seed: int, *, doctor: Doctor | None = None, timing: bool = False):
    """One run; returns losses, grad norms, lrs (and per-step times of training / doctor)."""
    X, y, make, loss_fn = task
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make()
    good = GOOD[opt]
    lr = {"good": good, "too_low": good / 1e4, "too_high": good * 300, "spike": good, "nan": good}[regime]
    optim = OPTS[opt](model.parameters(), lr=lr)
    losses, gns, lrs, t_train, t_doc = [], [], [], [], []
    for step in range(STEPS):
        if regime == "spike" and step == K:
            for g in optim.param_groups:
                g["lr"] = good * 300
        if regime == "nan" and step == K:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        t0 = time.perf_counter()
        idx = torch.randint(0, len(X), (BATCH,), generator=gen)
        optim.zero_grad()
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
        optim.step()
        lval = loss.item()
        t1 = time.perf_counter()
        cur_lr = optim.param_groups[0]["lr"]
        if doctor is not None:
            doctor.observe(step, lval, lr=cur_lr, grad_norm=gn)
        t2 = time.perf_counter()
        losses.append(lval)
        gns.append(gn)
        lrs.append(cur_lr)
        t_train.append(t1 - t0)
        t_doc.append(t2 - t1)
    out = np.array(losses), np.array(gns), np.array(lrs)
    return (*out, np.array(t_train), np.array(t_doc)) if timing else out


def running_median(x: np.ndarray, k: int) -> np.ndarray:
    return np.array([np.median(x[max(0, i - k + 1) : i + 1]) for i in range(len(x))])


def ground_truth(regime: str, loss: np.ndarray) -> tuple[str, int | None]:
    bad = np.nonzero(~np.isfinite(loss))[0]
    if len(bad):
        return "nan", int(bad[0])
    L0 = float(loss[0])  # the loss at the initial weights, before any update
    final = float(np.median(loss[-50:]))
    sm = running_median(loss, 5)
    if regime == "good":
        return "healthy", None
    if regime == "too_low":
        return ("flat", 0) if (L0 - final) / L0 < 0.1 else ("healthy", None)
    if regime == "too_high":
        if sm[1:].max() > 2 * L0 or sm.min() > 0.9 * L0 or final > 0.9 * L0:
            return "diverging", int(np.argmax(sm > 2 * L0)) if sm[1:].max() > 2 * L0 else 0
        return "ambiguous", None
    if regime == "spike":
        before = float(np.median(loss[K - 20 : K]))
        return ("diverging", K) if sm[K:].max() > 2 * before else ("ambiguous", None)
    raise ValueError(regime)


def main() -> str:
    from _report import machine, write_section

    t_start = time.perf_counter()
    tasks = ["digits", "cancer", "diabetes"] + (["mnist"] if MNIST.is_dir() else [])
    loaded = {t: load_task(t) for t in tasks}
    regimes = ["good", "too_low", "too_high", "spike", "nan"]
    rows = []
    for tname in tasks:
        for opt in OPTS:
            for regime in regimes:
                for seed in (0, 1, 2):
                    doc = Doctor()
                    loss, _, _ = train(loaded[tname], opt, regime, seed, doctor=doc)
                    truth, onset = ground_truth(regime, loss)
                    d = overall(doc)
                    rows.append((tname, opt, regime, seed, truth, onset, d))
    # cost: one long good run, doctor per step vs training step
    doc = Doctor()
    *_, t_train, t_doc = train(loaded["digits"], "adam", "good", 0, doctor=doc, timing=True)
    cost_ratio = float(np.median(t_doc) / np.median(t_train))
    elapsed = time.perf_counter() - t_start

    labels = ["healthy", "flat", "fluctuating", "diverging", "nan"]
    scored = [r for r in rows if r[4] != "ambiguous"]
    conf = Counter((r[4], r[6].verdict) for r in scored)
    correct = sum(r[4] == r[6].verdict for r in scored)
    healthy = [r for r in scored if r[4] == "healthy"]
    false_alarms = [r for r in healthy if not r[6].ok]
    problems = [r for r in scored if r[4] != "healthy"]
    missed = [r for r in problems if r[6].ok]
    delays = [r[6].detected_at - r[5] for r in scored if r[4] in ("nan", "diverging") and r[6].verdict == r[4] and r[5] is not None and r[2] in ("spike", "nan")]
    onset_err = [abs(r[6].step - r[5]) for r in scored if r[2] in ("spike", "nan") and r[6].verdict == r[4]]
    amb = [r for r in rows if r[4] == "ambiguous"]

    md = ["## LR doctor: detection on real training runs", ""]
    md.append("Command: `.venv/bin/python benchmarks/doctor_detection.py`  ")
    md.append(f"Machine: {machine()}; torch {torch.__version__} at 1 thread; wall time {elapsed:.0f} s.")
    md.append("")
    md.append(
        f"{len(rows)} runs = {len(tasks)} tasks ({', '.join(tasks)}) x 3 optimizers (SGD, Adam, RMSprop) x "
        f"5 LR regimes (good, too_low = good/1e4, too_high = good x 300, spike = good then x300 at step {K}, "
        f"nan = a weight set to NaN at step {K}) x 3 seeds, {STEPS} steps of batch {BATCH}. Ground truth: the "
        "regime, checked on the outcome (see the module docstring); runs whose outcome contradicts the "
        f"intent without a clear label are *ambiguous* and not scored ({len(amb)} runs). Doctor: default "
        "thresholds, fed loss, LR and gradient norm every step; verdict = `lrkit.doctor.overall` at the end."
    )
    md.append("")
    md.append(f"**Verdict accuracy: {correct}/{len(scored)} = {correct / len(scored):.1%}.** "
              f"**False alarms on healthy runs: {len(false_alarms)}/{len(healthy)}** "
              f"({len(false_alarms) / max(1, len(healthy)):.1%}). Missed problems: {len(missed)}/{len(problems)}.")
    div = [r for r in scored if r[4] == "diverging"]
    high = sum(r[6].verdict in ("diverging", "fluctuating", "nan") for r in div)
    md.append(f"LR-too-high runs (truth diverging) flagged with an LR-too-high verdict (diverging, fluctuating or nan, "
              f"all advising to lower the LR): {high}/{len(div)}.")
    md.append("")
    md.append("Confusion table (rows: ground truth, columns: doctor's verdict):")
    md.append("")
    md.append("| truth \\ verdict | " + " | ".join(labels) + " | runs |")
    md.append("|---|" + "---:|" * (len(labels) + 1))
    for t in labels:
        n = sum(conf[(t, v)] for v in labels)
        if n:
            md.append(f"| {t} | " + " | ".join(str(conf[(t, v)]) for v in labels) + f" | {n} |")
    md.append("")
    if delays:
        md.append(
            f"Steps from onset to detection (spike and NaN-injected runs detected with the right verdict, n={len(delays)}): "
            f"median {np.median(delays):.0f}, max {np.max(delays):.0f}. "
            f"Onset error |reported onset - true onset|: median {np.median(onset_err):.0f}, max {np.max(onset_err):.0f} steps."
        )
        for reg in ("spike", "nan"):
            dd = [r[6].detected_at - r[5] for r in scored if r[2] == reg and r[6].verdict == r[4] and r[5] is not None]
            if dd:
                md.append(f"  - {reg}: median delay {np.median(dd):.0f} steps (n={len(dd)})")
    md.append("")
    md.append(
        f"Per-step cost: `Doctor.observe` median {np.median(t_doc) * 1e6:.0f} us vs a training step median "
        f"{np.median(t_train) * 1e6:.0f} us (digits MLP, Adam, batch 32, same run): ratio {cost_ratio:.2f}. "
        "(The training step here is tiny; for any real model the ratio is far smaller.)"
    )
    if amb:
        md.append("")
        md.append("Ambiguous runs (LR meant to be too high, but the loss never rose 2x above its initial / pre-spike level): " + ", ".join(
            f"{r[0]}/{r[1]}/{r[2]}/s{r[3]} -> {r[6].verdict}" for r in amb))
    wrong = [r for r in scored if r[4] != r[6].verdict]
    if wrong:
        md.append("")
        md.append("Misclassified: " + ", ".join(f"{r[0]}/{r[1]}/{r[2]}/s{r[3]} ({r[4]} -> {r[6].verdict})" for r in wrong))
    text = "\n".join(md)
    write_section("doctor", text)
    return text


if __name__ == "__main__":
    print(main())
