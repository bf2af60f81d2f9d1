"""Rerun every benchmark that writes a section of BENCHMARKS.md (``make bench``).

Each benchmark is run as its own process, in order, with the command its section quotes, so a
failure in one is reported and the others still run. The finder benchmark reuses cached oracle
grids in ``benchmarks/results/`` (pass ``--no-cache`` to recompute them; that takes much longer).

Run:  ``.venv/bin/python benchmarks/run_all.py [--only schedules,finder,doctor,guard] [--no-cache]``
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCHMARKS: dict[str, list[str]] = {
    "schedules": ["benchmarks/bench_schedules.py"],
    "finder": ["-m", "benchmarks.finder_regret"],
    "finder-horizon": ["-m", "benchmarks.finder_horizon"],
    "doctor": ["benchmarks/doctor_detection.py"],
    "doctor-real": ["benchmarks/doctor_real_runs.py"],
    "diagnose-long": ["benchmarks/diagnose_long.py"],
    "guard": ["benchmarks/guard.py", "--steps", "300", "--seeds", "4", "--tasks", "digits,diabetes,mnist"],
    "guard-overhead": ["benchmarks/guard_overhead.py", "--steps", "400"],
    "autopilot": ["-m", "benchmarks.autopilot"],
    "tune": ["-m", "benchmarks.tune_regret"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS),
                    help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--no-cache", action="store_true", help="recompute the finder's oracle grids")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    failed = []
    for name in names:
        cmd = [sys.executable, *BENCHMARKS[name]]
        if name == "finder" and args.no_cache:
            cmd.append("--no-cache")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
