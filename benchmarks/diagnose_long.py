"""``lrkit diagnose`` on very long logs: wall time and peak memory, read in blocks vs every row.

Run:  ``.venv/bin/python benchmarks/diagnose_long.py`` (``--rows 1000000,2000000``, ``--no-write``).

For each size a per-step CSV (step, loss, lr) is generated -- a decaying, noisy loss that blows up
over the last 10% of the run -- and ``lrkit diagnose`` is run on it as a user would, once as is
(a log of more than 100,000 losses is read in blocks of rows, :mod:`lrkit.doctor._coarse`) and
once with ``--exact`` (every row through the doctor), each in its own process, side by side.
Reported: wall time, peak resident memory of the process (``wait4``'s ``ru_maxrss``), the file
size, and both verdicts with their onsets.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import machine, publish  # noqa: E402

LRKIT = [sys.executable, "-m", "lrkit", "diagnose"]


def make_log(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = 2.0 * np.exp(-t / (n / 6)) + 0.3 + 0.03 * rng.standard_normal(n)
    at = int(0.9 * n)
    loss[at:] *= np.exp((t[at:] - at) / (n / 60))
    with open(path, "w") as fh:
        fh.write("step,loss,lr\n")
        for a in range(0, n, 200_000):
            b = min(n, a + 200_000)
            np.savetxt(fh, np.c_[t[a:b], loss[a:b], np.full(b - a, 1e-3)], delimiter=",", fmt=["%d", "%.5f", "%.6g"])


def measure(args: list[str]) -> tuple[float, float, str]:
    """Wall time, peak RSS (MB) and the verdict line of one run, in a process of its own."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    out = p.stdout.read()
    err = p.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise RuntimeError(err[-2000:])
    lines = out.splitlines()
    verdict = lines[0].split(": ", 1)[-1] if lines else "?"
    onset = next((ln.strip() for ln in lines if ln.strip().startswith("onset")), "")
    return seconds, usage.ru_maxrss / 1024, verdict + (f", {onset}" if onset else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1000000,2000000")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows_list = [int(r) for r in a.rows.split(",")]
    lines = ["| rows | file | mode | wall time | peak memory | verdict |", "|---:|---:|---|---:|---:|---|"]
    with tempfile.TemporaryDirectory(prefix="lrkit-long-") as d:
        for n in [100] + rows_list:  # 100 rows: the process's own footprint (Python, NumPy, lrkit)
            path = Path(d) / f"run-{n}.csv"
            make_log(path, n)
            size = path.stat().st_size / 2**20
            for mode, extra in (("blocks (default)", []), ("every row (`--exact`)", ["--exact"]))[: 1 if n == 100 else 2]:
                seconds, mb, verdict = measure(LRKIT + [str(path)] + extra)
                lines.append(f"| {n:,} | {size:.0f} MB | {mode} | {seconds:.1f} s | {mb:.0f} MB | {verdict} |")
                print(lines[-1], flush=True)
    md = "\n".join([
        "## Diagnosing very long logs (blocks of rows vs every row)",
        "",
        f"Command: `.venv/bin/python benchmarks/diagnose_long.py`. Machine: {machine()}. A generated per-step CSV "
        "(step, loss, lr): a noisy decaying loss that blows up over the last 10% of the run; `lrkit diagnose` on it "
        "as is and with `--exact`, each in its own process (wall time includes starting Python and reading the file; "
        "peak memory is the process's resident set; the 100-row log shows what the process takes by itself).",
        "",
        *lines,
        "",
        "A log of more than 100,000 losses is read in blocks of `k = ceil(n / 100,000)` rows "
        "(`lrkit.doctor._coarse`): onsets are dated to within a block (the output says so), a NaN at its exact step; "
        "`--exact` feeds every row.",
    ])
    publish("diagnose-long", md, write=not a.no_write)


if __name__ == "__main__":
    main()
