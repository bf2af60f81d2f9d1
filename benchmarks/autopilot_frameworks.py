"""The autopilot through the frameworks, as their users run it: regret against both schedules' oracles.

Usage::

    python -m benchmarks.autopilot_frameworks [--half dev|heldout] [--workers 2] [--no-write]

The tasks of ``benchmarks/framework_tasks.py`` (the Hugging Face ``Trainer``, Lightning and Keras
``fit`` with their defaults) are trained with the framework's autopilot callback and no LR
(``AutopilotCallback()``); the reference is the better of two oracles: the best LR of the task's
own schedule (the quarter-decade grid of ``finder_frameworks``) and the best peak of the
autopilot's schedule (the callback with ``peak_lr=`` fixed, quarter decades from 1 decade below to
2 above the first oracle's LR). Beside it: lrkit's finder with the framework's own schedule and
the framework's default LR (both from ``finder_frameworks``). Regret = (mean validation loss -
reference) / reference over seeds 0-2; cost = finder steps / training steps. Runs are cached with
the finder benchmark's (``benchmarks/results/finder_frameworks.json``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from benchmarks import finder_frameworks as ff
from benchmarks._report import machine

#: the peaks of the autopilot's oracle, in quarter decades from the task schedule's oracle LR
PEAK_STEPS = range(-4, 9)


def _constant_oracle(name: str, cache: dict[str, Any]) -> float:
    from benchmarks.framework_tasks import TASKS

    grid = ff._grid(*TASKS[name].grid)
    means = [float(np.mean([ff._loss(cache[ff._key(name, "grid", s, lr)], name) for s in ff.SEEDS])) for lr in grid]
    return grid[int(np.argmin(means))]


def _peaks(name: str, cache: dict[str, Any]) -> list[float]:
    centre = _constant_oracle(name, cache)
    return [float(centre * 10 ** (k / 4)) for k in PEAK_STEPS]


def _autopilot_jobs(names: list[str], cache: dict[str, Any]) -> list[tuple[str, str, int, float | None]]:
    jobs: list[tuple[str, str, int, float | None]] = []
    for name in names:
        for seed in ff.SEEDS:
            jobs += [(name, "autopilot_peak", seed, p) for p in _peaks(name, cache)]
            jobs.append((name, "autopilot", seed, None))
    return jobs


def score(names: list[str], cache: dict[str, Any]) -> dict[str, Any]:
    table = ff.score(names, cache)  # the task schedule's oracle, lrkit's finder, the defaults
    for name in names:
        row = table[name]
        peaks = _peaks(name, cache)
        means = [float(np.mean([ff._loss(cache[ff._key(name, "autopilot_peak", s, p)], name) for s in ff.SEEDS]))
                 for p in peaks]
        best = int(np.argmin(means))
        row["ap_oracle"], row["ap_oracle_lr"] = means[best], peaks[best]
        ref = min(row["oracle"], row["ap_oracle"])
        outs = [cache[ff._key(name, "autopilot", s, None)] for s in ff.SEEDS]
        val = float(np.mean([ff._loss(o, name) for o in outs]))
        row["autopilot"] = {
            "regret": (val - ref) / ref, "val": val,
            "ratio": float(np.exp(np.mean(np.log([o["lr"] for o in outs])))) / peaks[best],
            "cost": max(o.get("finder_steps", 0) / o["train_steps"] for o in outs),
            "rollbacks": sum(int(o.get("rollbacks", 0)) for o in outs)}
        for m in ("lrkit", "default"):
            row[m]["regret_ref"] = (row[m]["val"] - ref) / ref
        row["ref"] = ref
    return table


def render(halves: dict[str, dict[str, Any]], seconds: float, n_runs: int) -> str:
    from benchmarks.framework_tasks import DEV, HELDOUT

    pct = ff._pct
    lines = [
        "## Autopilot through the frameworks: the Hugging Face Trainer, Lightning and Keras fit, as users run them",
        "",
        "Command: `.venv/bin/python -m benchmarks.autopilot_frameworks` (after `benchmarks.finder_frameworks`, whose "
        f"runs it reuses; {seconds / 120:.0f} min from cold with 2 worker processes for its {n_runs} runs, cached in "
        "`benchmarks/results/finder_frameworks.json`).  ",
        f"Machine: {machine()}, torch at 1 thread per process. Seeds {list(ff.SEEDS)}.",
        "",
        "The tasks and their split are the finder-through-the-frameworks ones (development "
        f"{', '.join(f'`{n}`' for n in DEV)}; held-out {', '.join(f'`{n}`' for n in HELDOUT)}), trained with "
        "the framework's `AutopilotCallback()` and no LR (the Lightning module returns its optimizer alone; the "
        "Trainer logs at its default `logging_steps=500`, so on these 192-360-step runs its guard and plateau "
        "rule see no training loss: finder and schedule only). Reference = the better of two oracles: the best "
        "LR of the task's own schedule (quarter-decade grid) and the best peak of the autopilot's schedule "
        "(`AutopilotCallback(peak_lr=...)`, quarter decades from 1 decade below to 2 above the first). "
        "finder = lrkit's finder with the task's own schedule, default = the framework's default LR (both "
        "from the finder table above). Regret = (mean final validation cross-entropy - reference) / reference; "
        "cost = the finder's steps / training steps (worst seed).",
        "",
        "| half | method | tasks | median regret | worst regret | finder cost (max) | rollbacks |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for half in ("heldout", "dev"):
        if half not in halves:
            continue
        rows = halves[half].values()
        label = "held-out (headline)" if half == "heldout" else "development"
        for m, key in (("autopilot", "regret"), ("lrkit", "regret_ref"), ("default", "regret_ref")):
            reg = [r[m][key] for r in rows]
            cost = pct(max(r[m]["cost"] for r in rows))
            rb = str(sum(r[m].get("rollbacks", 0) for r in rows)) if m == "autopilot" else "-"
            name = {"lrkit": "finder + task's schedule"}.get(m, m)
            lines.append(f"| {label} | {name} | {len(reg)} | {pct(float(np.median(reg)))} | {pct(max(reg))} | "
                         f"{cost} | {rb} |")
    lines += ["", "Per task (regret against the reference; the autopilot's peak / its schedule's best peak):", "",
              "| task | half | task schedule's oracle LR (val) | autopilot schedule's best peak (val) | autopilot "
              "| finder + task's schedule | default |", "|---|---|---:|---:|---:|---:|---:|"]
    for half in ("heldout", "dev"):
        for name, r in halves.get(half, {}).items():
            lines.append(
                f"| {name} | {'held-out' if half == 'heldout' else 'dev'} | {r['oracle_lr']:.2g} ({r['oracle']:.3g}) | "
                f"{r['ap_oracle_lr']:.2g} ({r['ap_oracle']:.3g}) | {pct(r['autopilot']['regret'])} "
                f"({r['autopilot']['ratio']:.2g}x) | {pct(r['lrkit']['regret_ref'])} | {pct(r['default']['regret_ref'])} |")
    lines += ["", NOTES]
    return "\n".join(lines)


NOTES = (
    "Reading (2026-12-05). The first development run found the autopilot refusing a trainable model: the tiny "
    "BERT under gradient accumulation, whose 6-step candidate runs show no progress at any LR, raised "
    "`NotTrainable` on one seed; with the finder's fix (see the finder table) and the check that a loss some LR "
    "makes worse depends on the weights, that task went 45% -> 0.1%. It also showed the Trainer's default "
    "`logging_steps=500` leaving the Hugging Face guard blind on every run shorter than 500 steps: the callback "
    "now reads each step's loss from the model's output when the logs would be too few for the doctor's window. "
    "Runs, every one reported: 3 seeds (held-out 40% / 140%), 3 seeds after that change (48% / 140%), then 5 "
    "seeds, the table above (single tasks moved by tens of percent with one seed). Through the frameworks the "
    "autopilot is behind lrkit's own finder with the task's schedule and far ahead of the default LRs (see the "
    "correction of 2026-12-07 at the end for what this reading said before). On the small-data wine MLP the "
    "full run overfits (11x the best peak before the many-epoch regime below). A guard miss, reported by the 5-seed run: on seed 0 of the held-out BERT the plan's peak "
    "(0.0146) was 8x too high, the run learned to 0.37 and rose back to chance; the guard rolled back 15 steps "
    "and kept the LR (a first problem reads as a bad batch), the run learned for ten noisy steps (per-batch "
    "losses of a 16-example batch, 0.2-1.0) and went back to chance, and neither the relapse watch (its "
    "reference ended by a snapshot verified in the dip; a level of 2x the restored best, 0.7 against 0.37, is "
    "not reached on a two-class task) nor the restarted doctor saw it: 0.57 unguarded, 0.70 guarded. Since "
    "2026-12-05 the relapse watch also calls a relapse a level that has given back 70% of the progress the run "
    "had made (from its start, or from the level it failed to, down to the restored best; never under 2 sd of "
    "a level's noise), lasts at least 40 steps when that is its test, and is armed again when a lowered LR is "
    "brought back (`lrkit.doctor.relapse`). Designed on a simulated two-class run outside the benchmark (a loss "
    "falling from chance with per-batch log-noise 0.5, killed back to chance at an LR too high: 3 of 8 seeds "
    "ended dead, now none; a one-off fault in the same runs is rolled back once, never read as a relapse, "
    "`tests/test_doctor_relapse.py`); the guard's fault benchmark and the autopilot's fault table are unchanged "
    "(a first version that kept every watch 40 steps called two healthy digits runs relapsed after a NaN "
    "fault: a train loss near zero is 2x its best by noise alone, so the longer watch is only for runs whose "
    "whole progress is under 2.7x). Rerun once to report (autopilot runs only; the peak grid is cached): that "
    "BERT seed 0 ends at 0.387 after 3 rollbacks (the relapse caught, the LR halved twice), the task 28% -> "
    "6.3%, every other run identical; held-out median 28% -> 25%. Then the watch's reference became the run's "
    "best since the rollback where that is lower and the give-back test still the one in use (designed on the "
    "same simulation: a snapshot saved while its running level lagged a fast-falling loss had a best of 0.59 "
    "where the restored run reached 0.33, so back at chance read as 1.2x; a first version that rebased every "
    "watch called healthy digits runs relapsed in the autopilot's fault table, +5.3% -> +19.6%, and was "
    "narrowed before this run): that seed 0.329 after 2 rollbacks, the task 2.4%, every other run identical. "
    "Rerun once more after two changes to the doctor (a flat noisy run's progress measured from its first loss "
    "or the median of its first three, the lower; a level above the first window's with the noise fallen 3x "
    "read as a collapse a window after it; both designed on simulations outside every benchmark, "
    "tests/test_doctor_relapse.py and test_doctor_core.py): that seed 0.353 after 3 rollbacks (task 2.4% -> 4.0%), every other run "
    "identical; rerun after a third (a fall of the noise alone, at 1.5x the best: stuck, not flat): the same. "
    "Rerun after the noise at a best level set in the first window was re-estimated from more of the losses up "
    "to it (simulated healthy noisy runs, tests/test_doctor_core.py): that seed 0.329 after 2 rollbacks again "
"(task 4.0% -> 2.4%), every other run identical. Rerun (2026-12-06) after the autopilot learnt to restart a "
    "run that overfits early (`lrkit.autopilot.overfit`: the last three validation losses 5% above the best and "
    "2.5x their own noise above it, "
    "the training loss 20% lower or fitting the training set, in the first half of the run; designed outside "
    "every benchmark, `benchmarks/autopilot_overfit.py`): it restarted every seed of the development Keras "
    "wine/SGD-momentum run (validated each epoch; the finder's peak 11x the best one, the run 30+ epochs on "
    "130 examples), 68% -> -1.2%, and no other run (every other figure identical); development median 66% -> 32%. "
    "Rerun (2026-12-06) after the finder learnt the many-epoch regime (`lrkit.finder.regime`: told the run's "
    "shape, it divides its answer by a further 5 for at least 25 passes over a small set (at most 1000 examples) the model can fit, and the "
    "autopilot's plan then makes no restart): that Keras wine run is in the regime (40 passes over 130 "
    "examples), its peak 11x -> 2.2x the best one, -1.2% -> 8.3% (the restart had served it better; the "
    "choice was made on the small-data development tasks, where it did the other way), no other task in the "
    "regime, every other run identical; development median 32% -> 36%, held-out unchanged. "
    "Rerun (2026-12-06, on a new machine) after the plateau rule learnt to read at most one validation loss "
    "per twentieth of the run, averaging closer ones (`lrkit.autopilot.policy.plateau_gap`; found through "
    "Lightning validating every 0.1 epoch, where it halved the LR 13-22 times in a run): only the Keras wine run "
    "validates that often (each of 40 epochs, now read in pairs), 8.3% -> 12% (a limit of 40 readings would "
    "have kept it and left 1-2 cuts in the Lightning runs, 4% worse there). The code from before the "
    "change, run on this machine beside it, gives every other figure of the table as it stands; the figures "
    "that moved since the last table (held-out BERT 2.4% -> 28%, Lightning MLP 70% -> 29%, the held-out worst "
    "70% -> 31%, rollbacks) moved with the machine's floating point, not with lrkit. "
    "The validation losses are 0.03-0.07 on the digits tasks and their curves over the peak broad and noisy. "
    "Corrected 2026-12-07: until then the reference grid's runs (`AutopilotCallback(peak_lr=...)`) ran with the "
    "autopilot's guard, plateau rule and restart on: a peak far too high blew up in its first steps, was rolled "
    "back and lowered to the autopilot's own scale, so the grid's upper half measured the autopilot itself, "
    "and the best of those near-copies' noisy means stood as the oracle (Keras Adam: 'best peak' 0.56, all five "
    "seeds rolled back; the Trainer's SGD: 100, likewise). This table read the autopilot's schedule as "
    "peaking 1-2 decades above the constant-LR optimum and blamed the peak rule; both were artefacts. The grid "
    "now runs the schedule alone (`framework_tasks._static`: guard, plateau and restart off, as the core "
    "autopilot table's oracle trains); the best peaks are 0.56 (Trainer SGD, 0.56x the constant optimum) and 0.01 "
    "(Keras Adam, 1.8x), the autopilot's own runs are unchanged (cached), and the held-out figures moved from "
    "29% / 31% to the table's. Its misses now: the Lightning MLP and CNN (peak 2.4-2.6x the best, validation "
    "cross-entropies of 0.03-0.05 where that costs 29-91%), the held-out BERT (one seed's peak 8x too high, see "
    "above) and the unscaled Lightning SGD (0.37x). "
    "Then (2026-12-07) the Hugging Face callback's finder was found scoring its candidates by their last two "
    "training losses although the Trainer had an `eval_dataset`: a Trainer hands its callbacks no eval "
    "dataloader before its first evaluation, so `kwargs['eval_dataloader']` was always None in "
    "`on_train_begin` (`lrkit.transformers.find_lr(trainer)` had used `trainer.get_eval_dataloader()` all "
    "along). Seen in the held-out BERT's seed 0 above: its 6-step candidates on 16-example batches ranked "
    "0.026 best on noise (0.65 against 0.69 at chance), the plan peaked at 0.0146 and the run ended at chance. "
    "The callback now finds its Trainer among the callers of `on_train_begin` "
    "(`lrkit.integrations.transformers.autopilot.owning_trainer`) and scores on its validation batches, as the "
    "standalone finder does. Scored that way the BERT's candidates all sat at chance on two seeds of ten, and "
    "the autopilot refused the model as untrainable, although its range-test loss rose 34-56% at high LRs: "
    "`check_trainable` now counts a curve that rises 10% above its start as a loss that answers the weights, "
    "as it already counted a candidate that got worse (unit test in tests/test_autopilot_core.py). Rerun of "
    "the autopilot's runs (the peak grid cached): held-out BERT 28% -> 0.0% (every seed's peak 0.002), the "
    "Trainer's SGD MLP 8.5% -> -5.0%, held-out median 18% -> 3.6%, worst unchanged (the Lightning MLP); "
    "development: the BERT under accumulation 0.4% -> 0.1%, every other task unchanged. Re-run on 2026-12-07 "
    "with the finder's lowest-point rule (`lrkit.finder.rule.lowest_point`; AUTOPILOT_VERSION 19): every "
    "figure of both halves unchanged.")


def main(argv: list[str] | None = None) -> int:
    a, halves, chosen = ff.parse(argv, __doc__)
    names = [n for h in chosen for n in halves[h]]
    cache = ff.run(names, a.workers)  # the finder benchmark's runs first: the peaks are centred on its oracle
    jobs = _autopilot_jobs(names, cache)
    cache = ff.run(names, a.workers, jobs=jobs)
    keys = [ff._key(*j) for j in jobs]
    seconds = sum(cache[k].get("seconds", 0.0) for k in keys)
    scored = {h: score(halves[h], cache) for h in chosen}
    return ff.publish_halves(a, "autopilot-frameworks", render(scored, seconds, len(keys)))


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "torch")
    raise SystemExit(main())
