"""Run a test function on two CPU processes (gloo) and read back what each rank wrote."""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@contextlib.contextmanager
def process_group(rank: int, world: int, tmp: str) -> Iterator[None]:
    """A gloo group for the block. Train in a function called inside it, so that the DDP model
    (its reducer holds gloo work) is gone before the group is: a DDP model that outlives the group
    aborts the process at exit now and then ("terminate called without an active exception", 2 in
    25 runs of a bare DDP loop; 0 in 40 with the model freed first). A collective waits at most 2
    minutes: ranks that fall out of step (the bug a DDP test looks for) fail the test instead of
    hanging it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=2))
    try:
        yield
        gc.collect()  # anything of the group's still in a reference cycle
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, fn: Callable[[int, str], None], world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    with process_group(rank, world, tmp):
        fn(rank, tmp)  # the DDP model lives in fn: freed on its return, before the group


def run_ranks(fn: Callable[[int, str], None], tmp: Path, world: int = 2) -> list[dict[str, Any]]:
    """``fn(rank, str(tmp))`` on ``world`` processes, each in the group (:func:`process_group`) with
    one torch thread; each writes ``tmp/rank{r}.json``, returned in rank order. ``fn`` must be
    importable by name (a module-level function, or a ``functools.partial`` of one)."""
    return _spawn(_rank_main, (fn, world, str(tmp)), tmp, world)


def _spawn(main: Callable[..., None], args: tuple[Any, ...], tmp: Path, world: int) -> list[dict[str, Any]]:
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned ranks inherit it; this process gets its own back
    try:
        mp.spawn(main, args=args, nprocs=world, join=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]


def _env_rank_main(rank: int, fn: Callable[[int, str], dict[str, Any]], world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        result = fn(rank, tmp)  # the DDP model lives in fn: freed on its return, before the group
        gc.collect()
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))


def run_env_ranks(fn: Callable[[int, str], dict[str, Any]], tmp: Path, world: int = 2) -> list[dict[str, Any]]:
    """For a framework that joins the group itself from the environment (the Hugging Face Trainer,
    through Accelerate): ``fn(rank, str(tmp))`` on ``world`` processes with ``RANK``,
    ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` (a free local port) set; the dict each
    returns, in rank order (written after the group is torn down)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return _spawn(_env_rank_main, (fn, world, port, str(tmp)), tmp, world)


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
