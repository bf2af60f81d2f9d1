"""FSDP2 (``fully_shard``) on two CPU processes (gloo): parameters and optimizer moments are
DTensors, which snapshots copy through their local shard (the device mesh kept). A snapshot restores
every rank's shard and moments exactly, a recycled snapshot too (a DTensor has no storage of its
own to reuse: that crashed the guard's second snapshot), and the guard rolls a NaN back on both
ranks alike."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from _ddp import run_ranks  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]
needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _sharded():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def _batches(rank):
    g = torch.Generator().manual_seed(10 + rank)
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    while True:
        x = torch.randn(16, 8, generator=g)
        yield x, x @ w + 0.1 * torch.randn(16, 1, generator=g)


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def _local(model, opt):
    """This rank's shards of the parameters and moments, cloned."""
    params = [p.to_local().clone() for p in model.parameters()]
    moments = [v.to_local().clone() if hasattr(v, "to_local") else v.clone()
               for s in opt.state.values() for v in s.values()]
    return params + moments


def _snapshot_run(rank: int, tmp: str) -> None:
    from lrkit.integrations.torch.state import TorchSnapshot

    model, opt = _sharded()
    data = _batches(rank)
    for _ in range(3):
        _step(model, opt, *next(data))
    first = TorchSnapshot.take(model, [opt])
    for _ in range(4):
        _step(model, opt, *next(data))
    at = _local(model, opt)
    second = TorchSnapshot.take(model, [opt], recycle=first)  # reuses what the first one held
    for _ in range(4):
        _step(model, opt, *next(data))
    second.restore(model, [opt])
    exact = all(torch.equal(a, b) for a, b in zip(at, _local(model, opt)))
    kinds = sorted({type(p).__name__ for p in model.parameters()})
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({"exact": exact, "kinds": kinds}))


def _guard_run(rank: int, tmp: str) -> None:
    from lrkit.integrations.torch.doctor import TorchDoctor

    model, opt = _sharded()
    data = _batches(rank)
    watch = TorchDoctor(model, opt, guard=True, snapshot_every=10)
    with watch:
        for k in range(80):
            x, y = next(data)
            if k == 50:
                x = x * math.nan
            watch.after_step(k, _step(model, opt, x, y))
        events = [(i.step, i.restored_to, i.verdict) for i in watch.interventions]
    finite = all(bool(torch.isfinite(p.to_local()).all()) for p in model.parameters())
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({"events": events, "finite": finite}))


@needs_dist
def test_a_recycled_snapshot_restores_every_ranks_shards_and_moments_exactly(tmp_path):
    r0, r1 = run_ranks(_snapshot_run, tmp_path)
    assert r0["kinds"] == ["DTensor"]
    assert r0["exact"] and r1["exact"]


@needs_dist
def test_the_guard_rolls_a_nan_back_on_both_ranks(tmp_path):
    r0, r1 = run_ranks(_guard_run, tmp_path)
    assert r0["events"] == r1["events"] and [e[0] for e in r0["events"]] == [50] and r0["events"][0][2] == "nan"
    assert 40 <= r0["events"][0][1] <= 50
    assert r0["finite"] and r1["finite"]
