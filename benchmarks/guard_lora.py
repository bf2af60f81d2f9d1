"""Snapshots of a LoRA fine-tune: the frozen base model copied in full (lrkit before 2026-12-07)
against left out and fingerprinted (:mod:`lrkit.integrations.torch.frozen`).

Run from the repository root (about a minute on 2 CPU cores):

    .venv/bin/python benchmarks/guard_lora.py            # writes the "guard-lora" section
    .venv/bin/python benchmarks/guard_lora.py --no-write # prints only

The model: the 51.4M-parameter MLP of ``benchmarks/guard_overhead.py`` (4 hidden layers of 3584
units), frozen, with a rank-8 LoRA adapter on each of its five linear layers (``W x + B A x``, A
and B trained: 0.26M parameters) and AdamW on the adapters only, as PEFT sets up a fine-tune. For
each way of snapshotting: the bytes one snapshot holds (:func:`lrkit.doctor.snapshot_set.state_nbytes`),
the memory of the guard's full set in memory (``keep + 2`` = 6 snapshots at the default
``keep=4``), the time the loop waits for a snapshot (the first, into fresh memory, and the median
of the next five, each copied into the memory of the one before, as the guard recycles them), and
that time over 50 training steps (the guard's default period). The restore is checked bitwise
after a few steps. CPU only, one thread; on a GPU the full copies go device-to-host (PCIe) and the
fingerprints are a few hundred values per tensor.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._report import machine, publish  # noqa: E402
from lrkit.doctor.snapshot_set import state_nbytes  # noqa: E402
from lrkit.integrations.torch.frozen import SAMPLE  # noqa: E402
from lrkit.integrations.torch.state import RecyclingState, TorchSnapshot  # noqa: E402

WIDTH, DEPTH, RANK, BATCH, PERIOD, KEEP = 3584, 4, 8, 32, 50, 4


class LoRALinear(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.base = torch.nn.Linear(n_in, n_out).requires_grad_(False)
        self.a = torch.nn.Parameter(torch.randn(RANK, n_in) / n_in ** 0.5)
        self.b = torch.nn.Parameter(torch.zeros(n_out, RANK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(DEPTH):
        layers += [LoRALinear(WIDTH, WIDTH), torch.nn.ReLU()]
    layers.append(LoRALinear(WIDTH, 1))
    return torch.nn.Sequential(*layers)


class Full(RecyclingState):
    """Every parameter copied, as before: the snapshot lrkit took until this change."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt

    def snapshot(self) -> TorchSnapshot:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return TorchSnapshot.take(self.model, [self.opt], grads=False, recycle=spare)


class LeftOut(Full):
    """The guard's snapshot now: frozen parameters outside the optimizer fingerprinted."""

    def snapshot(self) -> TorchSnapshot:
        return self._take(self.model, [self.opt], grads=False)


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, g: torch.Generator) -> None:
    x = torch.randn(BATCH, WIDTH, generator=g)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def measure(kind: type[Full], model: torch.nn.Module, opt: torch.optim.Optimizer, step_time: float) -> dict:
    state = kind(model, opt)
    times, snaps = [], []
    for _ in range(6):
        t0 = time.perf_counter()
        snap = state.snapshot()
        times.append(time.perf_counter() - t0)
        if snaps:
            state.recycle(snaps.pop())  # the guard hands back the one it let go of
        snaps.append(snap)
    nbytes = state_nbytes(snaps[-1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        step(model, opt, g)
    snaps[-1].restore(model, [opt])
    bitwise = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    steady = statistics.median(times[1:])
    return {"bytes": nbytes, "set_bytes": (KEEP + 2) * nbytes, "first": times[0], "steady": steady,
            "overhead": steady / (PERIOD * step_time), "bitwise": bitwise}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model = make_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    step(model, opt, g)  # AdamW's moments exist
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        step(model, opt, g)
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = {"before": measure(Full, model, opt, step_time), "now": measure(LeftOut, model, opt, step_time)}
    elapsed = time.perf_counter() - t_start
    lines = [
        "## Guard snapshots of a LoRA fine-tune (the frozen base copied vs left out)",
        "",
        f"Command: `.venv/bin/python benchmarks/guard_lora.py` ({elapsed:.0f} s). Machine: {machine()}, "
        f"torch {torch.__version__}, 1 thread, CPU only.",
        "",
        f"A {total / 1e6:.1f}M-parameter MLP frozen, with rank-{RANK} LoRA adapters on its five linear layers "
        f"({trained / 1e6:.2f}M parameters trained, AdamW on them only, as PEFT sets a fine-tune up); a training "
        f"step takes {step_time:.2f} s (batch {BATCH}). *Snapshot*: the bytes one holds; *set*: the guard's "
        f"snapshots in memory at the default `keep={KEEP}` (the initial one, the best one and {KEEP} rolling: "
        f"{KEEP + 2} in all); *first*: the time the loop waits for the first snapshot (fresh memory), *steady*: "
        "the median of the next five (each copied into the memory of the one before, as the guard recycles "
        f"them); *overhead*: steady over {PERIOD} steps (the guard's default period); *restore*: bitwise after "
        "three steps.",
        "",
        "| snapshot | snapshot (MB) | set (MB) | first (s) | steady (s) | overhead | restore |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        label = "before: every parameter copied" if name == "before" else \
            "now: frozen parameters outside the optimizer fingerprinted"
        lines.append(f"| {label} | {r['bytes'] / 2**20:.1f} | {r['set_bytes'] / 2**20:.0f} | {r['first']:.3f} | "
                     f"{r['steady']:.4f} | {r['overhead']:.2%} | {'bitwise' if r['bitwise'] else 'DIFFERS'} |")
    b, n = rows["before"], rows["now"]
    lines += [
        "",
        f"Reading it: with the base model copied a snapshot was {b['bytes'] / n['bytes']:.0f}x what it is now. "
        f"Left out, it holds the adapters, their AdamW moments, the RNG states and a fingerprint of {SAMPLE} values per "
        f"frozen tensor, and the guard's set in memory goes from {b['set_bytes'] / 2**30:.2f} GiB to "
        f"{n['set_bytes'] / 2**20:.0f} MB. On a 7B-parameter model in bf16 the same set would hold 6 x 14 GB of "
        "host memory before and the adapters' share of it now. A frozen tensor changed in place (an EMA teacher) "
        "is noticed by its fingerprint at the next snapshot and copied in full from then on "
        "(`tests/test_frozen_snapshots.py`).",
    ]
    publish("guard-lora", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
