"""Schedule speed: the torch export's ``.step()`` vs torch's native schedulers, and vectorised
evaluation of 10**6 steps for every constructor.

Run: ``.venv/bin/python benchmarks/bench_schedules.py`` (about a minute); it writes the
``schedules`` section of BENCHMARKS.md.

* ``.step()`` cost: median over several repeats of the mean time per call over a run of
  calls, for 1 and 100 param groups (plain float LRs, SGD), lrkit's ``to_torch`` export vs the
  equivalent native scheduler (``cosine`` vs ``CosineAnnealingLR``, ``one_cycle`` vs
  ``OneCycleLR``). The optimizer step itself is not included (it is the same for both).
* Vectorised evaluation: ``schedule(np.arange(10**6))``, median of 5 runs.
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CALLS = 2000
REPEATS = 7
TOTAL = 10**6


def per_step_us(sched) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            sched.step()
        times.append((time.perf_counter() - t0) / CALLS * 1e6)
    return statistics.median(times)


def main() -> None:
    import torch

    from _report import machine, write_section
    from _export_cases import every_constructor

    from lrkit import schedules as S
    from lrkit.integrations.torch.schedule import to_torch

    torch.set_num_threads(1)
    native = torch.optim.lr_scheduler
    started = time.perf_counter()

    def optimizer(groups: int):
        ps = [torch.zeros(1, requires_grad=True) for _ in range(groups)]
        return torch.optim.SGD([{"params": [p]} for p in ps], lr=0.1)

    pairs = [
        ("cosine", lambda o: to_torch(S.cosine(0.1, TOTAL), o),
         "CosineAnnealingLR", lambda o: native.CosineAnnealingLR(o, TOTAL)),
        ("one_cycle", lambda o: to_torch(S.one_cycle(0.1, TOTAL), o),
         "OneCycleLR", lambda o: native.OneCycleLR(o, 0.1, total_steps=TOTAL, cycle_momentum=False)),
    ]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when step() runs without optimizer.step()
        for ours_name, ours, theirs_name, theirs in pairs:
            for groups in (1, 100):
                a = per_step_us(ours(optimizer(groups)))
                b = per_step_us(theirs(optimizer(groups)))
                rows.append(f"| lrkit `{ours_name}` vs torch `{theirs_name}` | {groups} | "
                            f"{a:.2f} | {b:.2f} | {b / a:.1f}x |")

    steps = np.arange(10**6, dtype=np.float64)
    evals = []
    for name, s in every_constructor().items():
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            s(steps)
            times.append(time.perf_counter() - t0)
        evals.append((name, statistics.median(times) * 1e3))
    elapsed = time.perf_counter() - started

    md = [
        "## Schedules: torch export step cost and vectorised evaluation",
        "",
        "Command: `.venv/bin/python benchmarks/bench_schedules.py`",
        "",
        f"Machine: {machine()}; torch {torch.__version__} at 1 thread; NumPy {np.__version__}; "
        f"wall time {elapsed:.0f} s.",
        "",
        f"Time per `scheduler.step()` in µs (median of {REPEATS} runs of {CALLS} calls; SGD, "
        "float LRs; the optimizer step is not timed). lrkit evaluates the schedule in NumPy "
        "blocks of 2048 steps and then only assigns each group's LR.",
        "",
        "| schedulers | param groups | lrkit µs/step | torch µs/step | torch / lrkit |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Vectorised evaluation `schedule(np.arange(10**6))` (median of 5 runs; the schedules are "
        "those of `tests/_export_cases.py`, nested ones include their inner schedules):",
        "",
        "| constructor | ms per 10^6 steps |",
        "|---|---:|",
        *[f"| `{n}` | {ms:.1f} |" for n, ms in evals],
    ]
    text = "\n".join(md)
    print(text)
    write_section("schedules", text)


if __name__ == "__main__":
    main()
