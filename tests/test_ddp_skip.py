"""DDP: two CPU processes on gloo, a bad shard on one rank only. Every rank decides on the loss
averaged over the ranks, so both skip the same steps and the replicas stay identical."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from _ddp import run_ranks  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]

SHARD = range(60, 66)
STEPS = 90


def _run(rank: int, tmp: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lrkit.integrations.torch.doctor import TorchDoctor

    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own batches
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    local, around = [], {}
    with TorchDoctor(model, opt, snapshot_every=20) as watch:  # skip_spikes: on with the guard
        for k in range(STEPS):
            x = torch.randn(32, 8, generator=g)
            y = (x @ w).argmax(1)
            if rank == 1 and k in SHARD:  # garbage on this rank only
                x, y = x * 50.0, y[torch.randperm(32, generator=g)]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            local.append(float(loss.detach()))
            watch.after_backward(loss)
            opt.step()
            watch.after_step(k, loss)
            if k in (SHARD.start - 1, SHARD.stop - 1, STEPS - 1):
                around[k] = [p.detach().flatten().tolist() for p in model.parameters()]
        skipped, rollbacks = watch.guard.skipped_steps, len(watch.interventions)
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(
        {"skipped": skipped, "rollbacks": rollbacks, "around": {str(k): v for k, v in around.items()},
         "local": local}))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_both_ranks_skip_a_shard_only_one_of_them_sees(tmp_path):
    r0, r1 = run_ranks(_run, tmp_path)
    # rank 0's own losses in the shard were normal; rank 1's were the spikes
    assert min(r1["local"][k] for k in SHARD) > 20 * max(r0["local"][k] for k in SHARD)
    assert r0["skipped"] == r1["skipped"] == list(SHARD)
    assert r0["rollbacks"] == r1["rollbacks"] == 0
    before, after = str(SHARD.start - 1), str(SHARD.stop - 1)
    assert r0["around"][before] == r0["around"][after]  # nothing applied across the shard
    assert r0["around"] == r1["around"]  # the replicas stayed identical


if __name__ == "__main__":  # pragma: no cover - manual run
    sys.exit(pytest.main([__file__, "-q"]))
