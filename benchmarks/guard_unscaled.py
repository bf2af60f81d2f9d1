"""The Keras guard on healthy runs with unscaled inputs: does it leave them alone?

Keras' ``LRDoctorCallback`` reads a classifier's chance level from ``compile()``. With raw features
the untrained model scores many times chance, and a healthy run falling through chance on its way
down looked "collapsed to chance after a blow-up" to the doctor: the guard rolled it back. Since
2026-12-05 the callback checks that premise on the first step's loss
(:meth:`lrkit.doctor.Doctor.untrained_loss`). This benchmark trains MLPs with Adam on three raw
scikit-learn datasets at five LRs (1e-4 .. 1e-2, all of which train), each run three ways in one
process: unguarded, guarded with chance taken as before (``kept``, the premise unchecked) and
guarded as shipped. Split once by seed: seed 0 is the development half, seed 1 the held-out half
(both were seen while finding the problem: see the section's text). A run is
*harmed* when its guarded validation accuracy ends more than 0.02 below its unguarded twin's.

    .venv/bin/python -m benchmarks.guard_unscaled
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

from benchmarks._report import machine, write_section  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "guard_unscaled.json"
DATASETS = ("digits", "wine", "breast_cancer")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
HALVES = {"development": 0, "held-out": 1}  # the seed of each half
HARM = 0.02


def _data(name: str):
    from sklearn import datasets

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)  # raw features, never scaled
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].astype("float32"), y[perm]
    n = int(0.8 * len(x))
    return x[:n], y[:n], x[n:], y[n:]


def run(name: str, lr: float, seed: int, mode: str) -> dict:
    """``mode``: ``"off"`` (no guard), ``"kept"`` (guard, chance never checked) or ``"shipped"``."""
    import keras

    from lrkit.doctor import Doctor
    from lrkit.keras import LRDoctorCallback

    class ChanceKept(Doctor):  # the callback as it was: the untrained model's loss not consulted
        def untrained_loss(self, value: float) -> bool:
            return False

    x, y, xv, yv = _data(name)
    keras.utils.set_random_seed(seed)
    k = int(y.max()) + 1
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(k)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    cb = LRDoctorCallback(guard=mode != "off", doctor=ChanceKept() if mode == "kept" else None)
    model.fit(x, y, batch_size=16, epochs=30, callbacks=[cb], verbose=0)
    _, acc = model.evaluate(xv, yv, verbose=0)
    return {"acc": float(acc), "rollbacks": len(cb.interventions), "first_loss": float(cb.history[0][1]),
            "chance_dropped": bool(cb.doctor.chance_refuted)}


def render(res: dict, seconds: float) -> str:
    lines = [
        "## Guard on healthy runs with unscaled inputs (Keras)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.guard_unscaled` ({seconds / 60:.1f} min). Machine: {machine()}.",
        "",
        "MLPs (one hidden layer of 32 ReLUs) trained with Adam for 30 epochs on raw scikit-learn features "
        f"({', '.join(DATASETS)}; never scaled: the untrained model scores 6-280x chance) at LRs "
        f"{', '.join(f'{v:g}' for v in LRS)}, all of which train; each run unguarded, guarded with the "
        "chance level taken from `compile()` unchecked (`kept`: the callback until 2026-12-05) and guarded "
        f"as shipped (the untrained model's first loss checked against it). Harmed = guarded validation "
        f"accuracy more than {HARM} below the unguarded twin's. Split by seed: 0 = development, 1 = held-out; "
        "but the exploration that found the problem ran both seeds, so the held-out half is not unseen "
        "here: the fix (chance dropped when the untrained model scores 1.5x it or more) is the sign's own "
        "threshold, not tuned on these runs, and the real-framework-runs benchmark above was unchanged by it.",
        "",
        "| half | runs | `kept`: harmed | `kept`: rollbacks | `kept`: worst accuracy change | shipped: harmed "
        "| shipped: rollbacks | shipped: worst accuracy change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for half in HALVES:
        rows = [r for r in res["runs"] if r["half"] == half]
        cells = [half, str(len(rows))]
        for mode in ("kept", "shipped"):
            d = [r[mode]["acc"] - r["off"]["acc"] for r in rows]
            cells += [str(sum(v < -HARM for v in d)), str(sum(r[mode]["rollbacks"] for r in rows)), f"{min(d):+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Since 2026-12-06 (a new machine: the same pinned torch, other builds of the rest, so other "
              "trajectories; the unguarded runs moved by up to 0.017 in accuracy) the held-out digits run at 0.01 "
              "memorises its training set (loss 4e-6) and then spikes, as Adam does there: the guard rolls it back "
              "twice, and it ends at 0.978 against 0.969 unguarded. Before the relapse watch needed the level to rise "
              "by the doctor's `min_rise` times the starting loss (`lrkit.doctor.relapse`), it read that run's 1e-4 "
              "after the second rollback as a 25x relapse three times, gave up and raised out of `fit` -- this "
              "benchmark crashed on it, which is how it was found.",
              "", "Per-run accuracies, rollbacks and first losses: `benchmarks/results/guard_unscaled.json`."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    runs = []
    for half, seed in HALVES.items():
        for name in DATASETS:
            for lr in LRS:
                row = {"half": half, "dataset": name, "lr": lr, "seed": seed}
                for mode in ("off", "kept", "shipped"):
                    row[mode] = run(name, lr, seed, mode)
                print(f"{half:12s} {name:14s} lr={lr:g} off={row['off']['acc']:.3f} kept={row['kept']['acc']:.3f} "
                      f"({row['kept']['rollbacks']}) shipped={row['shipped']['acc']:.3f} ({row['shipped']['rollbacks']})",
                      flush=True)
                runs.append(row)
    seconds = time.perf_counter() - t0
    res = {"runs": runs, "seconds": seconds}
    text = render(res, seconds)
    print(text)
    if a.no_write:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    write_section("guard-unscaled", text)


if __name__ == "__main__":
    main()
