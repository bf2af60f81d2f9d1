"""A guarded NumPy run for the kill -9 tests (run as a subprocess by tests/test_guard_storage.py).

Usage: python _guard_worker.py STORAGE_DIR RUN_ID STEPS SNAPSHOT_EVERY BALLAST_MB SLEEP_S OUT_JSON [sync]

Prints ``start <resumed_from>`` and then ``step <n> <newest snapshot step>`` after every step
(flushed); writes the final weights to OUT_JSON and closes the guard. ``sync``: ``sync_writes=True``.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time

import numpy as np

from lrkit.doctor import Doctor
from lrkit.doctor.guard import Guard


class LinReg:
    """Mini-batch SGD on least squares; ``ballast`` makes each snapshot large (slow to write)."""

    def __init__(self, ballast_mb: int, seed: int = 0, n: int = 256, d: int = 5):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((n, d))
        self.y = self.X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
        self.w = np.zeros(d)
        self.rng = np.random.default_rng(seed + 1)
        self.ballast = np.ones(ballast_mb * 131072)  # 8 bytes each

    def snapshot(self):
        return (self.w.copy(), copy.deepcopy(self.rng.bit_generator.state), self.ballast.copy())

    def restore(self, state):
        self.w = state[0].copy()
        self.rng.bit_generator.state = copy.deepcopy(state[1])

    def step(self, lr):
        idx = self.rng.integers(0, len(self.y), 32)
        X, y = self.X[idx], self.y[idx]
        r = X @ self.w - y
        self.w = self.w - lr * 2 * X.T @ r / len(y)
        return float(np.mean(r**2))


def main() -> None:
    storage_dir, run_id, steps, every, ballast, sleep, out = sys.argv[1:8]
    sync = sys.argv[8:9] == ["sync"]
    logging.basicConfig(level=logging.WARNING)
    t = LinReg(int(ballast))
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=int(every), storage="disk", storage_dir=storage_dir,
              run_id=run_id, resume=True, max_overhead=None, sync_writes=sync)
    print("start", g.resumed_from, g.lr_multiplier, flush=True)
    while g.step_count < int(steps):
        g.step(0.05)
        print("step", g.step_count - 1, max(g.snapshot_steps), flush=True)
        if float(sleep):
            time.sleep(float(sleep))
    with open(out, "w") as fh:
        json.dump({"w": t.w.tolist(), "interventions": len(g.interventions)}, fh)
    g.close()


if __name__ == "__main__":
    main()
