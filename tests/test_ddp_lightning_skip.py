"""Lightning DDP (two CPU processes, gloo, ``ddp_spawn``): a bad shard on one rank only. The
callback decides on the loss averaged over the ranks, so both skip the same steps and the
replicas stay identical."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
import torch.distributed as dist  # noqa: E402

from lrkit.integrations.lightning.callback import LRDoctorCallback  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]

SHARD = range(40, 46)


class ShardOnRankOne(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.around = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_rank == 1 and self.global_step in SHARD:
            x = x * 50.0
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step in (SHARD.start, SHARD.stop):
            self.around[self.global_step] = [p.detach().flatten().tolist() for p in self.parameters()]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Record(pl.Callback):
    """Each rank writes what its copy of the doctor callback did."""

    def __init__(self, doctor, out):
        self.doctor, self.out = doctor, out

    def on_train_end(self, trainer, module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "skipped": self.doctor.guard.skipped_steps, "rollbacks": len(self.doctor.interventions),
            "around": {str(k): v for k, v in module.around.items()}}))


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 5, generator=g)
    y = X @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_both_ranks_skip_a_shard_only_one_of_them_sees(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASTER_PORT", "0")  # Lightning's ddp_spawn picks a free port: restored after the test
    monkeypatch.delenv("MASTER_PORT")
    cb = LRDoctorCallback(guard=True, snapshot_every=20)  # skip_spikes: on with the guard
    trainer = pl.Trainer(max_steps=70, accelerator="cpu", devices=2, strategy="ddp_spawn", enable_progress_bar=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[cb, Record(cb, str(tmp_path))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ShardOnRankOne(), _data())
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == list(SHARD)
    assert r0["rollbacks"] == r1["rollbacks"] == 0
    assert r0["around"][str(SHARD.start)] == r0["around"][str(SHARD.stop)]  # nothing applied across the shard
    assert r0["around"] == r1["around"]  # the replicas stayed identical
