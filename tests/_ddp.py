"""Run a test worker on two CPU processes (gloo) and read back what each rank wrote."""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch.distributed as dist
import torch.multiprocessing as mp


def init(rank: int, world: int, tmp: str) -> None:
    """Join the gloo group of the ranks spawned on ``tmp``. A collective waits at most 2 minutes:
    ranks that fall out of step (the bug a DDP test looks for) fail the test instead of hanging it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=2))


@contextlib.contextmanager
def process_group(rank: int, world: int, tmp: str) -> Iterator[None]:
    """A gloo group for the block. Train in a function called inside it, so that the DDP model
    (its reducer holds gloo work) is gone before the group is: a DDP model that outlives the group
    aborts the process at exit now and then ("terminate called without an active exception", 2 in
    25 runs of a bare DDP loop; 0 in 40 with the model freed first)."""
    init(rank, world, tmp)
    try:
        yield
        gc.collect()  # anything of the group's still in a reference cycle
        dist.barrier()
    finally:
        dist.destroy_process_group()


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


def slow_snapshots(cls: type, seconds: float) -> None:
    """Make ``cls.snapshot`` burn ``seconds`` of this thread's CPU time first (a rank whose host
    copies are slow; the guard measures a snapshot's cost in CPU time). For a spawned rank only."""
    take = cls.snapshot

    def slow(self: Any) -> Any:
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass
        return take(self)

    cls.snapshot = slow
