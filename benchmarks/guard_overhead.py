"""Guard overhead on a model of real size (>= 50M parameters), side by side with the guard off.

Run from the repository root (a few minutes on 2 CPU cores):

    .venv/bin/python benchmarks/guard_overhead.py            # writes the "guard-overhead" section
    .venv/bin/python benchmarks/guard_overhead.py --steps 20 --quick   # prints only

Design (paired, so that the load of a shared machine hits both sides alike): two copies of the
same MLP (4 hidden layers of 3584 units, 51.4M parameters, SGD with momentum, batch 32, MSE on a
fixed random teacher) train side by side in one process, one step each in turn (the order
alternating), one plain and one under ``TorchDoctor(guard=True)``. The guard's overhead is the
guarded side's total step time (forward, backward, ``after_backward``, ``optimizer.step``,
``after_step`` with its doctor, snapshots and disk writes) over the plain side's, minus 1.

Settings compared (the guard's side):

* ``before``: what lrkit did before this change: a synchronous copy of the parameters, their
  gradients and the optimizer state every 25 steps, no cost-based spacing;
* ``memory``: ``TorchDoctor(guard=True)`` defaults: ``snapshot_every=50``, snapshots without the
  spent gradients, ``max_overhead=0.01`` (the period stretches when a snapshot costs more than 1%
  of the time it covers);
* ``memory, every 10``: the same with ``snapshot_every=10`` (the stretch at work);
* ``disk``: ``storage="disk"``: each snapshot is pickled, fsync-ed and renamed on a background
  thread while training goes on.

Besides the paired wall-clock figure, the snapshot's own cost (the time the loop waits for it) and
the doctor's per-step cost are measured directly, and the amortised overhead of a 1000-step run is
computed from them: ``(n_snapshots * snapshot_cost + steps * doctor_cost) / (steps * step_time)``.
No GPU here: on CUDA the copies go to pinned memory without blocking (``TorchSnapshot.take(...,
non_blocking=True)``), which is not measured.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._report import machine, write_section  # noqa: E402
from lrkit.doctor.guard import Guard  # noqa: E402
from lrkit.integrations.torch.doctor import TorchDoctor  # noqa: E402
from lrkit.integrations.torch.state import TorchSnapshot  # noqa: E402

WIDTH, DEPTH, BATCH = 3584, 4, 32
RESULTS = ROOT / "benchmarks" / "results" / "guard_overhead.json"


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(WIDTH, 16))
    return torch.nn.Sequential(*layers)


class _Before:
    """The snapshot lrkit took before: parameters, gradients and optimizer state, synchronously."""

    def __init__(self, model, opt):
        self.model, self.opt = model, opt

    def snapshot(self):
        return TorchSnapshot.take(self.model, [self.opt])

    def restore(self, s):
        s.restore(self.model, [self.opt])


def run(setting: str, steps: int, seed: int = 0) -> dict:
    plain, guarded = make_model(seed), make_model(seed)
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (plain, guarded)]
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(WIDTH, 16, generator=gen) / WIDTH**0.5
    tmp = tempfile.TemporaryDirectory(prefix="lrkit-bench-")
    watch = guard = None
    if setting == "before":
        guard = Guard(_Before(guarded, opts[1]), snapshot_every=25, max_overhead=None)
    else:
        kw = {"snapshot_every": 10} if setting == "memory, every 10" else {}
        if setting == "disk":
            kw.update(storage="disk", storage_dir=tmp.name)
        watch = TorchDoctor(guarded, opts[1], **kw)
        guard = watch.guard
    snap_times: list[float] = []
    take = guard._take

    def timed_take(*a, **k):
        t0 = time.perf_counter()
        take(*a, **k)
        snap_times.append(time.perf_counter() - t0)

    guard._take = timed_take
    t_plain = t_guard = 0.0
    doctor_time = 0.0
    warmup = 3  # not timed: first-touch allocations of gradients and momentum buffers
    for step in range(steps + warmup):
        if step == warmup:
            t_plain = t_guard = doctor_time = 0.0
            snap_times.clear()
        x = torch.randn(BATCH, WIDTH, generator=gen)
        y = x @ teacher
        order = (0, 1) if step % 2 == 0 else (1, 0)
        for side in order:
            model, opt = (plain, guarded)[side], opts[side]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            if side == 1 and watch is not None:
                watch.after_backward(loss)
            opt.step()
            if side == 1:
                t1 = time.perf_counter()
                if watch is not None:
                    watch.after_step(step, loss)
                else:
                    guard.observe(float(loss.detach()), lr=1e-3)
                doctor_time += time.perf_counter() - t1
            dt = time.perf_counter() - t0
            if side == 0:
                t_plain += dt
            else:
                t_guard += dt
    if watch is not None and guard._store is not None:
        guard._store.flush()
    n_params = sum(p.numel() for p in guarded.parameters())
    snap_cost = statistics.median(snap_times) if snap_times else float("nan")
    step_time = t_plain / steps
    doctor_cost = (doctor_time - sum(snap_times)) / steps
    period = guard.snapshot_interval
    amortised = (1000 / period * snap_cost + 1000 * doctor_cost) / (1000 * step_time)
    out = {
        "setting": setting,
        "steps": steps,
        "params": n_params,
        "step_s": step_time,
        "paired_overhead": t_guard / t_plain - 1.0,
        "snapshots": len(snap_times),
        "snapshot_s": snap_cost,
        "doctor_ms": 1000 * doctor_cost,
        "period": period,
        "amortised_1000": amortised,
    }
    if watch is not None:
        watch.close()
    tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="print only")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lrkit.guard").setLevel(logging.ERROR)
    rows = []
    t0 = time.perf_counter()
    for setting in ("before", "memory", "memory, every 10", "disk"):
        r = run(setting, a.steps)
        rows.append(r)
        print(json.dumps(r), flush=True)
    elapsed = time.perf_counter() - t0
    if a.quick:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "elapsed_s": elapsed, "machine": machine()}, indent=1))
    p = rows[0]["params"] / 1e6
    lines = [
        "## Guard overhead on a 51M-parameter model (guard off vs on)",
        "",
        f"Command: `.venv/bin/python benchmarks/guard_overhead.py --steps {a.steps}` ({elapsed:.0f} s). "
        f"Machine: {machine()}, torch {torch.__version__}, 1 thread, CPU only (shared with other jobs: the "
        "two sides run interleaved in one process so that the load hits both alike).",
        "",
        f"An MLP of {p:.1f}M parameters (4 x {WIDTH} hidden, batch {BATCH}, SGD momentum), trained side by "
        "side with a plain copy of itself. *Paired overhead*: the guarded side's step time over the plain "
        f"side's, minus 1, over {a.steps} steps (one snapshot or two: noisy). *Snapshot*: the time the loop "
        "waits for one. *Amortised, 1000 steps*: (snapshots x snapshot time + steps x doctor time) / "
        "(steps x step time), with the period in force.",
        "",
        "| setting | step (s) | snapshot (s) | doctor per step (ms) | snapshot period | paired overhead | amortised, 1000 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['step_s']:.3f} | {r['snapshot_s']:.3f} | {r['doctor_ms']:.2f} | {r['period']} | "
            f"{r['paired_overhead']:+.1%} | {r['amortised_1000']:.2%} |"
        )
    lines += [
        "",
        "`before`: a synchronous copy of parameters, gradients and optimizer state every 25 steps (lrkit "
        "until this change). `memory`: `TorchDoctor(guard=True)` defaults (every 50 steps, no spent "
        "gradients, period stretched so snapshots stay under 1% of the time). `memory, every 10`: "
        "`snapshot_every=10`, stretched by the measured cost. `disk`: `storage=\"disk\"`, pickled, fsync-ed "
        "and renamed on a background thread. Not run on a GPU: there the copies are non-blocking into "
        "pinned memory (`TorchSnapshot.take(..., non_blocking=True)`), and a step is ~50x shorter, so the "
        "cost-based period matters more.",
    ]
    write_section("guard-overhead", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
