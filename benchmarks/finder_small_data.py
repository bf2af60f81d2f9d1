"""The finder on small training sets trained for many epochs (a regime the finder benchmark lacks).

Run:  ``.venv/bin/python -m benchmarks.finder_small_data``  (``--workers K``, ``--no-write``).

The nine tasks of ``benchmarks/autopilot_overfit.py`` (30-65 epochs over 100-420 training examples,
its split: the three SGD-momentum tasks the autopilot's overfitting rule was designed on, and six
written after it), measured exactly as ``benchmarks/finder_regret.py`` measures its own tasks: the
same oracle (a 20-point log grid of constant LRs, mean final validation loss over six seeds), the
same methods (lrkit's ``find_lr(..., train_steps=T)``, its rule alone, the range-test rules,
the optimizer's default LR, Prodigy), the same regret. The finder's many-epoch regime
(:mod:`lrkit.finder.regime`) was designed with the three development tasks among others; the six
held-out ones were only run to report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from benchmarks._report import machine, publish
from benchmarks.autopilot_overfit import DESIGN_TASKS, HELDOUT_TASKS
from benchmarks.finder_regret import (METHODS, RESULTS, SEEDS, _half_tables, _summary_row, oracle, run_task)
from benchmarks.finder_tasks import initial_val_loss

OUT = RESULTS / "finder_small_data.json"
ORACLE_CACHE = RESULTS / "finder_small_data_oracle.json"
MAKERS = {m.__name__: m for m in DESIGN_TASKS + HELDOUT_TASKS}


def _one(name: str, cached: dict | None) -> tuple[str, dict, dict, float]:
    torch.set_num_threads(1)
    t0 = time.time()
    task = MAKERS[name]()
    cap = initial_val_loss(task)
    cache = {name: cached} if cached else {}
    orc = oracle(task, cap, cache)
    row = run_task(task, cap)
    out = {"oracle_lr": orc["best_lr"], "oracle_val": orc["best_val"], "cap": cap, "methods": {}}
    for m, r in row.items():
        mean_val = sum(r["vals"]) / len(r["vals"])
        out["methods"][m] = {"regret": (mean_val - orc["best_val"]) / orc["best_val"], "lrs": r["lrs"],
                             "vals": r["vals"], "diverged": r["diverged"],
                             "cost": max(r["cost"]), "details": r.get("details", [])}  # as finder_regret
    return name, out, orc, time.time() - t0


def render(out: dict, seconds: float) -> str:
    dev = [m.__name__ for m in DESIGN_TASKS]
    held = [m.__name__ for m in HELDOUT_TASKS]
    lines = [
        "## Finder: small training sets trained for many epochs (a regime the finder benchmark lacks)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.finder_small_data` ({seconds / 60:.1f} min of runs, the oracle "
        f"included; cached in `benchmarks/results/finder_small_data_oracle.json`).  ",
        f"Machine: {machine()}. Seeds {list(SEEDS)}.",
        "",
        "The nine tasks of the autopilot's overfitting benchmark (30-65 epochs over 100-420 training examples; its "
        "split: development = the three it was designed on, held-out = six written after), measured as the "
        "finder benchmark measures its own: constant-LR oracle on a 20-point grid, `find_lr(..., train_steps=T)`, "
        "regret of the mean final validation loss. The finder's verification runs end within the first epochs, "
        "before the validation minimum such runs pass later; since 2026-12-06, told the run's shape (as "
        "`find_lr` reads it from a sized loader), lrkit divides its answer by a further 5 for runs of at least 25 "
        "passes over a small set (at most 1000 examples) the model can fit (`lrkit.finder.regime`, designed on the development half of the "
        "finder table and the three development tasks here). Before that, on the same runs otherwise: held-out "
        "lrkit 16% / 166% (iris/SGD-momentum 166%, 4.9x the oracle's LR; its answers 0.9-25x the oracle's), "
        "development 73% / 105% (7-18x). Held-out after (above): five tasks closer, two moved the wrong way "
        "(wine/RMSprop 6% -> 41%, at 0.18x; its best LR sat at the undivided answer).",
        "",
        "| half | method | median regret | worst regret | diverged | mean cost | max cost |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for half, names in (("held-out", held), ("development", dev)):
        for m in METHODS:
            lines.append(f"| {half} | {m} | {_summary_row(out, names, m)} |")
    lines.append("")
    lines += _half_tables(out, held, "Held-out")
    lines += _half_tables(out, dev, "Development")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--render-only", action="store_true", help="re-render BENCHMARKS.md from the saved results")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads(OUT.read_text())
        md = render(saved["tasks"], saved["seconds"])
        publish("finder-small-data", md, write=not args.no_write)
        return saved["tasks"]
    RESULTS.mkdir(exist_ok=True)
    cache = json.loads(ORACLE_CACHE.read_text()) if ORACLE_CACHE.exists() else {}
    out, seconds = {}, 0.0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        jobs = [pool.submit(_one, n, cache.get(n)) for n in MAKERS]
        for job in jobs:
            name, row, orc, sec = job.result()
            out[name], cache[name], seconds = row, orc, seconds + sec
            print(f"{name} ({sec:.0f}s): " + " ".join(f"{m}={v['regret']:+.3f}" for m, v in row["methods"].items()),
                  flush=True)
    ORACLE_CACHE.write_text(json.dumps(cache, indent=1))
    OUT.write_text(json.dumps({"seconds": seconds, "tasks": out}, indent=1, default=lambda o: None))
    md = render(out, seconds)
    publish("finder-small-data", md, write=not args.no_write)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
