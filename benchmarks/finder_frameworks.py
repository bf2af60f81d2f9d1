"""The finder through the frameworks, as their users run it: regret against a grid oracle.

Usage::

    python -m benchmarks.finder_frameworks [--half dev|heldout] [--workers 2] [--no-write]

Each task of ``benchmarks/framework_tasks.py`` is trained with a Hugging Face ``Trainer``, a
Lightning ``Trainer`` or Keras ``model.fit`` at every point of a quarter-decade LR grid (the
oracle: the best mean validation loss over the seeds) and with the LR that each method chooses
first: lrkit's finder entry point for that framework, Lightning's own ``Tuner.lr_find`` (Lightning
tasks), and the framework's default LR. Regret = (mean validation loss at the method's LR - oracle)
/ oracle; a non-finite loss counts as the untrained model's (ln of the number of classes). Runs
are cached in ``benchmarks/results/finder_frameworks.json`` (the lrkit runs under
``LRKIT_VERSION``: bump it when the finder changes). The held-out half is the headline; run it
only to report.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import machine, publish

RESULTS = Path(__file__).parent / "results" / "finder_frameworks.json"
SEEDS = (0, 1, 2, 3, 4)
#: the lrkit runs are cached under this; bump it when the finder changes
LRKIT_VERSION = 8
METHODS = ("lrkit", "lightning_tuner", "default")
CLASSES = {"hf_bert_adamw": 2, "hf_bert_adamw_accum4": 2, "keras_wine_sgdm": 3}


def _grid(lo: float, hi: float) -> list[float]:
    n = int(round((hi - lo) * 4)) + 1
    return [float(10 ** (lo + i / 4)) for i in range(n)]


#: the autopilot runs (``autopilot_frameworks.py``) are cached under this; bump it when it changes
AUTOPILOT_VERSION = 19


def _key(task: str, method: str, seed: int, lr: float | None) -> str:
    if method == "grid":
        return f"{task}|{method}|{seed}|{lr:.6g}"
    if method == "autopilot_peak":  # v2: the schedule alone (framework_tasks._static)
        return f"{task}|{method}-v2|{seed}|{lr:.6g}"
    if method == "lrkit":
        return f"{task}|lrkit-v{LRKIT_VERSION}|{seed}"
    if method == "autopilot":
        return f"{task}|autopilot-v{AUTOPILOT_VERSION}|{seed}"
    return f"{task}|{method}|{seed}"


def _job(task: str, method: str, seed: int, lr: float | None) -> tuple[str, dict[str, Any]]:
    """One run in a worker process (one thread; the frameworks' chatter swallowed)."""
    import torch

    from benchmarks.framework_tasks import TASKS

    torch.set_num_threads(1)
    t = TASKS[task]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if method == "grid":
            out = t.train(seed, lr=lr)
        elif method == "autopilot_peak":  # the autopilot's schedule at a fixed peak: its oracle's grid
            out = t.train(seed, method="autopilot", peak=lr)
        elif method == "default":
            out = t.train(seed, lr=t.default_lr)
        else:
            out = t.train(seed, method=method)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return _key(task, method, seed, lr), out


def _current(key: str) -> bool:
    """False for a run cached under an older ``LRKIT_VERSION`` or ``AUTOPILOT_VERSION`` (never read again)."""
    method = key.split("|")[1] if key.count("|") >= 2 else ""
    for name, version in (("lrkit", LRKIT_VERSION), ("autopilot", AUTOPILOT_VERSION)):
        if method.startswith(f"{name}-v"):
            return method == f"{name}-v{version}"
    return True


def _load() -> dict[str, Any]:
    """The cached runs, those of older versions dropped (the file keeps only what is read)."""
    cache = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    return {k: v for k, v in cache.items() if _current(k)}


def _jobs(names: list[str]) -> list[tuple[str, str, int, float | None]]:
    from benchmarks.framework_tasks import TASKS

    jobs = []
    for name in names:
        t = TASKS[name]
        for seed in SEEDS:
            jobs += [(name, "grid", seed, lr) for lr in _grid(*t.grid)]
            jobs += [(name, m, seed, None) for m in METHODS if m != "lightning_tuner" or t.framework == "lightning"]
    return jobs


def run(names: list[str], workers: int, jobs: list[tuple[str, str, int, float | None]] | None = None) -> dict[str, Any]:
    """Train every job of ``names`` not in the cache (``jobs``: these instead) on ``workers`` processes."""
    cache = _load()
    jobs = _jobs(names) if jobs is None else jobs
    todo = [j for j in jobs if _key(j[0], j[1], j[2], j[3]) not in cache]
    print(f"{len(todo)} runs to train ({len(jobs) - len(todo)} cached)", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_job, *j) for j in todo]
        for i, f in enumerate(futures):
            key, out = f.result()
            cache[key] = out
            if (i + 1) % 20 == 0 or i + 1 == len(futures):
                print(f"  {i + 1}/{len(futures)}", file=sys.stderr)
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return cache


def _loss(out: dict[str, Any], task: str) -> float:
    v = out["val_loss"]
    return float(v) if v is not None and math.isfinite(v) else math.log(CLASSES.get(task, 10))


def score(names: list[str], cache: dict[str, Any]) -> dict[str, Any]:
    """Per task: the oracle and every method's regret, chosen LR / oracle LR and cost."""
    from benchmarks.framework_tasks import TASKS

    table: dict[str, Any] = {}
    for name in names:
        t = TASKS[name]
        grid = _grid(*t.grid)
        means = [float(np.mean([_loss(cache[_key(name, "grid", s, lr)], name) for s in SEEDS])) for lr in grid]
        best = int(np.argmin(means))
        oracle, oracle_lr = means[best], grid[best]
        row: dict[str, Any] = {"oracle": oracle, "oracle_lr": oracle_lr}
        for m in METHODS:
            if m == "lightning_tuner" and t.framework != "lightning":
                continue
            outs = [cache[_key(name, m, s, None)] for s in SEEDS]
            val = float(np.mean([_loss(o, name) for o in outs]))
            lrs = [o["lr"] for o in outs]
            cost = [o.get("finder_steps", 0) / o["train_steps"] for o in outs]
            row[m] = {"regret": (val - oracle) / oracle, "ratio": float(np.exp(np.mean(np.log(lrs)))) / oracle_lr,
                      "lrs": lrs, "cost": max(cost), "val": val,
                      "details": sorted({str(o.get("method_detail")) for o in outs if o.get("method_detail")})}
        table[name] = row
    return table


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if abs(x) >= 0.095 else f"{100 * x:.1f}%"


NOTES = (
    "Reading (2026-12-05). Built to test the finder the way the brief asks -- through the frameworks' own "
    "trainers, at their default sizes -- it found a bug on its first development run: on the Trainer with "
    "gradient accumulation (a tiny BERT trained from scratch, 192 steps: its 6-step candidate runs are too "
    "short to show progress; the loss sits at chance until ~1e-4 and then drops) every candidate was rejected "
    "and the finder answered a grid ratio below the lowest one -- 3.5e-7 on one seed, nearly four decades below "
    "the oracle's LR, a run that never learned (45% over the seeds). A candidate that merely fails to improve "
    "is no sign of an LR too high: now only candidates that diverged, died or ended 10% above their start count "
    "as too high (`lrkit.finder.suggest.got_worse`), and when no candidate makes progress the answer is the "
    "optimizer family's rule of thumb kept a grid step below the first that got worse "
    "(`rejected_all_answer`): 45% -> 0.2% there. (A first version kept the range-test rule's answer between "
    "the highest flat candidate and the lowest worse one, with a 2% threshold; the autopilot table below showed "
    "it failing on another seed, where a transformer's first steps rose 1-5% at every LR and the flat curve's "
    "rule said 1e-7.) The same evidence keeps the autopilot from refusing such a model as untrainable: a loss "
    "that some LR makes worse depends on the weights (`lrkit.autopilot.plan.check_trainable`). No run of the "
    "finder's own benchmark reaches these paths (all its answers are verified): its figures are unchanged. "
    "History of the held-out half, every run reported: 3 seeds, 22% / 139% (the BERT without accumulation "
    "45%, unverified, 5.4x); 3 seeds after the change designed on the development task, -0.4% / 139% (that "
    "BERT 0.0%); then 5 seeds, the table above, because single tasks moved by tens of percent with one seed "
    "(the validation cross-entropies of the digits tasks are 0.03-0.07, where a few overconfident mistakes "
    "count). What is left, development: plain SGD on raw pixel counts (0.38x: the short-run optimum, ~0.045, "
    "sits where the full run's does, just under the cliff where the network dies, and the short-run factor "
    "halves it -- the unscaled logistic regression of the finder's benchmark is the same regime) and a "
    "small-data MLP (130 wine samples, 360 steps of SGD with momentum: the full run overfits at LRs a "
    "short run finds best; 17x and 53% until the finder learnt the many-epoch regime on 2026-12-06, "
    "`lrkit.finder.regime`, 3.5x and 13% since, every other run identical). Held-out: a constant-LR Adam MLP whose validation loss jumps several-fold between "
    "0.0056 and 0.01 (a late instability no short run sees; one seed in a few picks past it). Lightning's own "
    "`Tuner.lr_find` answers 5e-5 on some seeds and under 1e-5 on the raw pixels (its steepest slope is taken "
    "against the LR, not log LR; see the finder section), and the frameworks' default LRs are off by up to 4 "
    "decades (the Trainer's 5e-5 for SGD). "
    "Since 2026-12-07 `lrkit.lightning.LRFinder` scores its verification runs on the fit's first validation "
    "loader (it had never read one, unlike the Lightning autopilot's finder: `on_fit_start` comes before "
    "Lightning loads the fit's data; found reading the code), and a finder without validation data on a fixed "
    "sample of training batches (see 'The finder without a validation set'). Re-run (the Lightning runs "
    "changed; the Trainer's and Keras' runs, which had validation data, are identical): development, the "
    "OneCycle CNN 5.0% -> -0.2% and the unscaled SGD 24% -> 20% (median 9.0% -> 6.5%, worst 24% -> 20%); "
    "held-out, the Adam MLP 75% -> 179% (1.2x -> 1.3x the oracle's LR; its worst seed answered 0.0156 against "
    "0.011, and one seed's LR moved from 0.00684 to 0.00691 and its run from 0.027 to 0.141: the cliff above "
    "0.0056, not the pick, sets this task's figure), median unchanged (1.7%). Re-run on 2026-12-07 with the "
    "finder's lowest-point rule (`lrkit.finder.rule.lowest_point`; lrkit's runs under LRKIT_VERSION 8): "
    "every figure of both halves unchanged."
)


def _summary(table: dict[str, Any], method: str) -> tuple[str, str, str, int]:
    rows = [r[method] for r in table.values() if method in r]
    reg = [r["regret"] for r in rows]
    return _pct(float(np.median(reg))), _pct(max(reg)), _pct(max(r["cost"] for r in rows)), len(rows)


def render(halves: dict[str, dict[str, Any]], seconds: float, n_runs: int) -> str:
    """The BENCHMARKS.md section; ``seconds``: the summed training time of the ``n_runs`` runs scored."""
    from benchmarks.framework_tasks import DEV, HELDOUT, TASKS

    lines = [
        "## Finder through the frameworks: the Hugging Face Trainer, Lightning and Keras fit, as users run them",
        "",
        "Command: `.venv/bin/python -m benchmarks.finder_frameworks` (`--half heldout` for the headline, "
        f"`--half dev` for the tasks designed on; {seconds / 120:.0f} min from cold with 2 worker processes, "
        f"{n_runs} runs; they are cached in `benchmarks/results/finder_frameworks.json`).  ",
        f"Machine: {machine()}, torch at 1 thread per process. Seeds {list(SEEDS)}.",
        "",
        "Each task (`benchmarks/framework_tasks.py`) is built and trained the way that framework's users do "
        "it, with its defaults (the Trainer's AdamW or `optim=\"sgd\"` and its linear decay; Lightning's "
        "`fit` with a validation loader, a constant LR or a `OneCycleLR(max_lr=self.lr)` from "
        "`configure_optimizers`; Keras `fit`). lrkit = its entry point for that framework as the README "
        "shows it: `lrkit.transformers.find_lr(trainer)` (which reads the run's length, batches and loss "
        "from the Trainer and writes `args.learning_rate`), `callbacks=[lrkit.lightning.LRFinder()]`, "
        "`lrkit.keras.find_lr(model, x, y, batch_size=, val_data=, train_steps=)`; lightning_tuner = "
        "Lightning's own `Tuner(trainer).lr_find(...)` with its defaults (writes `module.lr`); default = "
        "the framework's default LR (Trainer 5e-5, Keras Adam 1e-3 and SGD 0.01, Adam 1e-3). Regret = "
        "(mean final validation cross-entropy at the method's LR - oracle) / oracle, oracle = the best "
        "mean of a quarter-decade LR grid trained the same way; cost = finder steps / training steps "
        "(the worst seed). The split (`framework_tasks.split_names`: SHA-256 rank) is fixed in the code: "
        f"development {', '.join(f'`{n}`' for n in DEV)}; held-out {', '.join(f'`{n}`' for n in HELDOUT)}.",
        "",
        "| half | method | tasks | median regret | worst regret | finder cost (max) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for half in ("heldout", "dev"):
        if half not in halves:
            continue
        for m in METHODS:
            if not any(m in r for r in halves[half].values()):
                continue
            med, worst, cost, n = _summary(halves[half], m)
            label = "held-out (headline)" if half == "heldout" else "development"
            lines.append(f"| {label} | {m} | {n} | {med} | {worst} | {cost} |")
    lines += ["", "Per task (regret; chosen LR / oracle LR, geometric mean over the seeds):", "",
              "| task | half | oracle LR (val) | " + " | ".join(METHODS) + " |",
              "|---|---|---:|" + "---:|" * len(METHODS)]
    for half in ("heldout", "dev"):
        for name, r in halves.get(half, {}).items():
            cells = [f"{_pct(r[m]['regret'])} ({r[m]['ratio']:.2g}x)" if m in r else "-" for m in METHODS]
            lines.append(f"| {name} | {'held-out' if half == 'heldout' else 'dev'} | {r['oracle_lr']:.2g} "
                         f"({r['oracle']:.3g}) | " + " | ".join(cells) + " |")
    notes = [f"{name}: lrkit {', '.join(r['lrkit']['details'])}" for half in halves.values()
             for name, r in half.items() if r["lrkit"]["details"]]
    if notes:
        lines += ["", "How lrkit answered: " + "; ".join(notes) + "."]
    del TASKS
    lines += ["", NOTES]
    return "\n".join(lines)


def parse(argv: list[str] | None, doc: str) -> tuple[argparse.Namespace, dict[str, list[str]], list[str]]:
    """The command line both framework benchmarks take: ``(args, halves, chosen halves)``."""
    from benchmarks.framework_tasks import DEV, HELDOUT

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--half", choices=("dev", "heldout"), default=None, help="one half only (default both)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    a = p.parse_args(argv)
    return a, {"dev": list(DEV), "heldout": list(HELDOUT)}, [a.half] if a.half else ["heldout", "dev"]


def publish_halves(a: argparse.Namespace, section: str, text: str) -> int:
    """Print the section; write it into BENCHMARKS.md when both halves ran and writing is on."""
    publish(section, text, write=not a.no_write and a.half is None)
    return 0


def main(argv: list[str] | None = None) -> int:
    a, halves, chosen = parse(argv, __doc__)
    names = [n for h in chosen for n in halves[h]]
    cache = run(names, a.workers)
    keys = [_key(*j) for j in _jobs(names)]
    seconds = sum(cache[k].get("seconds", 0.0) for k in keys)
    scored = {h: score(halves[h], cache) for h in chosen}
    return publish_halves(a, "finder-frameworks", render(scored, seconds, len(keys)))


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "torch")
    raise SystemExit(main())
