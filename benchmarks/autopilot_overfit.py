"""The autopilot's early-overfitting restart on the runs it was designed on (a design set, not held out).

Run:  ``.venv/bin/python -m benchmarks.autopilot_overfit``  (``--no-write``).

Three small-data tasks with SGD + momentum 0.9, where the full run makes 30-40 passes over the
training set and the finder's 10-13-step verification runs cannot see the overfitting that follows
(its answer was 8-15x the best constant LR there): wine (130 training examples), breast cancer (419),
diabetes regression (342), inputs standardised. They are not tasks of ``benchmarks/finder_tasks.py``
and belong to neither half of its split: they are the evidence the rule
(:mod:`lrkit.autopilot.overfit`) was designed on, reported here so that the design can be re-run,
not as a test of it. Protocol as ``benchmarks/autopilot.py`` (the same oracle: the best peak LR of
the autopilot's schedule on a log grid, mean over seeds 0-5; validation every tenth of the run):
the autopilot with the restart (``restart_on_overfit=True``, the default) and without it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch
from torch import nn

from benchmarks._report import machine, write_section
from benchmarks.autopilot import RESULTS, SEEDS, _capped, oracle
from benchmarks.finder_tasks import Task, TensorTrainer, _mlp, _split, _t, initial_val_loss
from lrkit.autopilot import fly

OUT = RESULTS / "autopilot_overfit.json"
ORACLE_CACHE = RESULTS / "autopilot_overfit_oracle.json"

logging.getLogger("lrkit.autopilot").setLevel(logging.ERROR)


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


def _sgdm(p, lr):
    return torch.optim.SGD(p, lr=lr, momentum=0.9)


def wine_mlp_sgdm() -> Task:
    from sklearn.datasets import load_wine
    d = load_wine()
    xtr, ytr, xva, yva = _split(_standardised(d.data), d.target, 48, seed=21)
    return Task("wine_mlp_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(13, 32, 3), _sgdm, nn.functional.cross_entropy, budget=300, batch_size=16, grid=(1e-4, 10.0))


def cancer_mlp_sgdm() -> Task:
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    xtr, ytr, xva, yva = _split(_standardised(d.data), d.target, 150, seed=22)
    return Task("cancer_mlp_sgdm", "sgd_momentum", _t(xtr), _t(ytr, torch.long), _t(xva), _t(yva, torch.long),
                _mlp(30, 64, 2), _sgdm, nn.functional.cross_entropy, budget=400, batch_size=32, grid=(1e-4, 10.0))


def _mse(out, y):
    return nn.functional.mse_loss(out.squeeze(-1), y)


def diabetes_mlp_sgdm() -> Task:
    from sklearn.datasets import load_diabetes
    d = load_diabetes()
    xtr, ytr, xva, yva = _split(_standardised(d.data), (d.target - 150) / 75.0, 100, seed=24)
    return Task("diabetes_mlp_sgdm", "sgd_momentum", _t(xtr), _t(ytr), _t(xva), _t(yva), _mlp(10, 32, 1), _sgdm,
                _mse, budget=400, batch_size=32, grid=(1e-5, 10.0))


DESIGN_TASKS = [wine_mlp_sgdm, cancer_mlp_sgdm, diabetes_mlp_sgdm]


def _autopilot(task: Task, seed: int, restart: bool) -> tuple[float, int | None, float]:
    trainer = TensorTrainer(task, seed, lr=1e-3)
    flight = fly(trainer, family=task.family, train_steps=task.budget, seed=seed, restart_on_overfit=restart)
    restarts = [e.step for e in flight.pilot.events if e.kind == "rollback" and e.data.get("verdict") == "overfitting"]
    return trainer.val_loss(), (restarts[0] if restarts else None), flight.pilot.plan.peak_lr


def run() -> dict:
    cache = json.loads(ORACLE_CACHE.read_text()) if ORACLE_CACHE.exists() else {}
    out = {}
    for make in DESIGN_TASKS:
        task = make()
        cap = initial_val_loss(task)
        orc = oracle(task, cap, cache)
        ORACLE_CACHE.write_text(json.dumps(cache, indent=1))
        rows = {"oracle_lr": orc["best_lr"], "oracle_val": orc["best_val"], "budget": task.budget}
        for name, restart in (("restart", True), ("no_restart", False)):
            vals, fired, peaks = [], [], []
            for seed in SEEDS:
                val, step, peak = _autopilot(task, seed, restart)
                vals.append(_capped(val, cap))
                fired.append(step)
                peaks.append(peak)
            rows[name] = {"vals": vals, "fired": fired, "peaks": peaks,
                          "regret": float(np.mean(vals)) / orc["best_val"] - 1}
        out[task.name] = rows
        print(task.name, {k: round(v["regret"], 3) for k, v in rows.items() if isinstance(v, dict)}, flush=True)
    return out


def render(out: dict, seconds: float) -> str:
    lines = [
        "## Autopilot: the early-overfitting restart on its design runs (not held out)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.autopilot_overfit` ({seconds / 60:.1f} min, the oracle included; "
        f"cached in `benchmarks/results/autopilot_overfit_oracle.json`).  ",
        f"Machine: {machine()}. Seeds {list(SEEDS)}.",
        "",
        "Three small-data SGD-momentum tasks outside the benchmark's split (the module docstring of "
        "`benchmarks/autopilot_overfit.py` says why): the evidence `lrkit.autopilot.overfit` was designed on, "
        "re-run, not a test of it. Regret against the autopilot table's oracle (best peak of the same schedule); "
        "'restarts': the runs the rule restarted and the step it did.",
        "",
        "| task | run (steps) | oracle peak (val) | autopilot peak / oracle | with restart | without | restarts |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in out.items():
        peaks = np.array(r["restart"]["peaks"]) / r["oracle_lr"]
        fired = [s for s in r["restart"]["fired"] if s is not None]
        lines.append(
            f"| {name} | {r['budget']} | {r['oracle_lr']:.2g} ({r['oracle_val']:.3g}) | "
            f"{float(np.exp(np.mean(np.log(peaks)))):.2g} | {100 * r['restart']['regret']:.1f}% | "
            f"{100 * r['no_restart']['regret']:.1f}% | {len(fired)} of {len(SEEDS)}"
            + (f" (steps {', '.join(str(s) for s in fired)})" if fired else "") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    out = run()
    seconds = time.time() - t0
    RESULTS.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"seconds": seconds, "tasks": out}, indent=1))
    md = render(out, seconds)
    print(md)
    if not args.no_write:
        write_section("autopilot-overfit", md)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
