"""The finder benchmark's tasks with their optimizer swapped for another one (shared by
:mod:`benchmarks.finder_lion` and :mod:`benchmarks.finder_muon`).

Each task of :mod:`benchmarks.finder_tasks` (data, model, loss, run length, schedule, clipping)
keeps its half of the fixed split and gets :attr:`Swap.make_optimizer` in place of its optimizer.

* **Oracle.** ``Swap.grid_points`` LRs over ``Swap.grid`` (log-spaced) x :data:`SEEDS`; a run's
  final validation loss is capped at the untrained model's (as in :mod:`benchmarks.finder_regret`).
* **Methods**, per seed: ``lrkit`` -- the finder as the README runs it (``train_steps`` = the
  task's run); ``lrkit_factor1`` -- the same code with the family's entry of
  :data:`lrkit.finder.search.SIGN_UPDATE_FACTOR` removed (the finder without it, in the same run);
  ``default`` -- ``Swap.default_lr``; ``valley`` (fastai) and ``steepest`` (torch-lr-finder) on a
  100-step range test over the family's :func:`lrkit.scaling.lr_range`.
* **Regret** = final validation loss / the oracle's best mean - 1; median and worst over the
  tasks (per task its worse seed).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from benchmarks._report import halves
from benchmarks.finder_regret import _capped, lrkit_answer
from benchmarks.finder_tasks import DEV, Task, TensorTrainer, available_tasks, initial_val_loss, train
from lrkit import scaling
from lrkit.finder import search
from lrkit.finder._rules import classic_suggestions
from lrkit.finder.range_test import run_range_test

SEEDS = (0, 1)
RANGE_ITERS = 100
METHODS = ("lrkit", "lrkit_factor1", "default", "valley", "steepest")


@dataclasses.dataclass(frozen=True)
class Swap:
    """The optimizer put in every task: its lrkit family, ``make_optimizer(params, lr)``, the
    oracle's grid and the reference's default LR."""

    family: str
    make_optimizer: Callable[[list, float], torch.optim.Optimizer]
    grid: tuple[float, float]
    grid_points: int
    default_lr: float


def swapped(task: Task, swap: Swap) -> Task:
    """``task`` with ``swap``'s optimizer, family and oracle grid (data, model and run unchanged)."""
    return dataclasses.replace(task, family=swap.family, make_optimizer=swap.make_optimizer, grid=swap.grid)


def _finder(task: Task, seed: int) -> tuple[float, str]:
    """The finder as ``find_lr(..., train_steps=task.budget)`` runs it: (lr, method)."""
    sug, _ = lrkit_answer(task, seed)
    return float(sug.lr), sug.method


def _choices(task: Task, seed: int, swap: Swap) -> dict[str, tuple[float | None, str]]:
    start_lr, end_lr = scaling.lr_range(swap.family)
    rec = run_range_test(TensorTrainer(task, seed, lr=start_lr), start_lr=start_lr, end_lr=end_lr,
                         num_iter=RANGE_ITERS)
    rules = classic_suggestions(rec.lrs, rec.losses, num_iter=RANGE_ITERS)
    choice = {"lrkit": _finder(task, seed), "default": (swap.default_lr, "rule of thumb"),
              "valley": (rules["valley"], "range test"), "steepest": (rules["steepest"], "range test")}
    saved = dict(search.SIGN_UPDATE_FACTOR)
    search.SIGN_UPDATE_FACTOR.pop(swap.family, None)  # the same finder without the family's factor
    try:
        choice["lrkit_factor1"] = _finder(task, seed)
    finally:
        search.SIGN_UPDATE_FACTOR.clear()
        search.SIGN_UPDATE_FACTOR.update(saved)
    return choice


def one(name: str, swap: Swap) -> tuple[str, dict, float]:
    """Task ``name`` with ``swap``'s optimizer: the oracle's grid and every method's runs."""
    torch.set_num_threads(1)
    t0 = time.time()
    (task,), _ = available_tasks([name])
    task = swapped(task, swap)
    cap = initial_val_loss(task)
    grid = np.geomspace(swap.grid[0], swap.grid[1], swap.grid_points)
    table = [float(np.mean([_capped(train(task, float(lr), s)[0], cap) for s in SEEDS])) for lr in grid]
    best = int(np.argmin(table))
    methods: dict[str, dict] = {m: {"lrs": [], "vals": [], "diverged": 0, "how": []} for m in METHODS}
    for seed in SEEDS:
        for m, (lr, how) in _choices(task, seed, swap).items():
            entry = methods[m]
            entry["how"].append(how)
            if lr is None:
                entry["lrs"].append(None)
                entry["vals"].append(cap)
                entry["diverged"] += 1
                continue
            val, div = train(task, float(lr), seed)
            entry["lrs"].append(float(lr))
            entry["vals"].append(_capped(val, cap))
            entry["diverged"] += int(div)
    for entry in methods.values():
        entry["regret"] = [v / table[best] - 1 for v in entry["vals"]]
    row = {"half": "dev" if name in DEV else "heldout", "best_lr": float(grid[best]), "best_val": table[best],
           "grid": grid.tolist(), "mean_val": table, "methods": methods}
    return name, row, time.time() - t0


def tables(out: dict) -> list[str]:
    """Per half: the methods' median and worst regret, then lrkit's LRs and regret per task."""
    lines: list[str] = []
    for title, names in halves(out):
        lines += [f"### {title}: {len(names)} tasks", "", "| method | median regret | worst regret | diverged |",
                  "|---|---|---|---|"]
        for m in METHODS:
            worst = [max(out[n]["methods"][m]["regret"]) for n in names]
            div = sum(out[n]["methods"][m]["diverged"] for n in names)
            lines.append(f"| {m} | {100 * np.median(worst):.1f}% | {100 * max(worst):.0f}% | {div} |")
        lines += ["", "| task | oracle LR | lrkit LRs | lrkit regret | factor 1 regret |", "|---|---|---|---|---|"]
        for n in names:
            r = out[n]["methods"]
            lrs = ", ".join("-" if v is None else f"{v:.2g}" for v in r["lrkit"]["lrs"])
            lines.append(f"| {n} | {out[n]['best_lr']:.2g} | {lrs} | {100 * max(r['lrkit']['regret']):.0f}% | "
                         f"{100 * max(r['lrkit_factor1']['regret']):.0f}% |")
        lines.append("")
    return lines


def line(name: str, row: dict, sec: float) -> str:
    """The progress line printed as a task ends."""
    m = row["methods"]
    return (f"{name} ({sec:.0f}s): best {row['best_lr']:.3g} lrkit {m['lrkit']['lrs']} "
            + " ".join(f"{k}={max(v['regret']):+.3f}" for k, v in m.items()))
