"""DDP: two CPU processes on gloo ramp the same LR, see the same (rank-averaged) loss and stop together."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from _ddp import run_ranks  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]


def _run(rank: int, tmp: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset

    from lrkit.integrations.torch.trainer import find_lr

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # every rank has its own shard, of a different scale
    x = torch.randn(64, 4, generator=g) * (1 + 2 * rank)
    y = x.sum(dim=1, keepdim=True)
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    local: list[float] = []
    
    def step_fn(m, batch):
        xb, yb = batch
        loss = torch.nn.functional.mse_loss(m(xb), yb)
        local.append(float(loss.detach()))
        return loss
    
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = find_lr(model, opt, None, dl, step_fn=step_fn, start_lr=1e-5, end_lr=1e3, num_iter=60,
                  progress=False, verify=False)
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and len(opt.state) == 0
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({
        "lrs": res.lrs.tolist(), "losses": res.losses.tolist(), "local": local, "restored": same,
        "stopped_early": res.stopped_early, "batch_size": res.batch_size,
    }))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_two_ranks_stop_together(tmp_path):
    r0, r1 = run_ranks(_run, tmp_path)
    assert r0["lrs"] == r1["lrs"]  # the same ramp, stopped at the same step
    assert r0["losses"] == r1["losses"]  # the same (all-reduced) loss on every rank
    assert r0["stopped_early"] and r1["stopped_early"]
    n = len(r0["lrs"])
    assert 2 <= n < 60
    # each rank saw a different local loss; what the finder recorded is their mean
    assert r0["local"][:n] != r1["local"][:n]
    for i in range(n):
        assert r0["losses"][i] == pytest.approx((r0["local"][i] + r1["local"][i]) / 2, rel=1e-6)
    assert r0["restored"] and r1["restored"]
    assert r0["batch_size"] == 32  # 16 per rank x 2 ranks



def _average(rank: int, tmp: str) -> None:
    from lrkit.integrations.torch.dist import average_gradients

    p, q, r = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    p.grad = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0])
    q.grad = None if rank == 0 else torch.tensor([2.0, 2.0])  # an unused parameter on rank 0
    average_gradients([p, q, r])  # r: no gradient anywhere
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(
        {"p": p.grad.tolist(), "q": q.grad.tolist(), "r": r.grad is None}))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_average_gradients_averages_as_ddp_would(tmp_path):
    r0, r1 = run_ranks(_average, tmp_path)
    assert r0 == r1 == {"p": [2.0, 3.0], "q": [1.0, 1.0], "r": True}


def test_average_gradients_is_checked():
    from lrkit.integrations.torch.trainer import TorchTrainer

    model = torch.nn.Linear(2, 1)
    data = [(torch.zeros(1, 2), torch.zeros(1, 1))]
    with pytest.raises(ValueError, match="average_gradients must be True or False"):
        TorchTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), data,
                     average_gradients="yes")
    opts = [torch.optim.SGD([model.weight], lr=0.1), torch.optim.SGD([model.bias], lr=0.1)]
    with pytest.raises(ValueError, match="average_gradients works with one optimizer"):
        TorchTrainer(model, opts, None, data, step_fn=lambda m, b, o: 0.0, average_gradients=True)


if __name__ == "__main__":  # pragma: no cover - manual run
    sys.exit(pytest.main([__file__, "-q"]))
