"""Run a test worker on two CPU processes (gloo) and read back what each rank wrote."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp


def run_ranks(worker: Callable[[int, int, str], None], tmp: Path, world: int = 2) -> list[dict[str, Any]]:
    """``worker(rank, world, str(tmp))`` on ``world`` processes; each writes ``tmp/rank{r}.json``."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned ranks inherit it; this process gets its own back
    try:
        mp.spawn(worker, args=(world, str(tmp)), nprocs=world, join=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]
