"""Lightning DDP (two CPU processes, gloo, ``ddp_spawn``). A bad shard on one rank only: the
callback decides on the loss averaged over the ranks, so both skip the same steps. Non-iid shards
and an LR raised 30x: both ranks roll back at the same steps, to the same snapshots. The autopilot
callback: one plan on both ranks, the same interventions. Every time the replicas stay identical."""
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


def _fit(module, callbacks, max_steps, tmp_path, monkeypatch):
    """``module`` on two ``ddp_spawn`` CPU ranks; what each rank's recorder wrote."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASTER_PORT", "0")  # Lightning's ddp_spawn picks a free port: restored after the test
    monkeypatch.delenv("MASTER_PORT")
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=2, strategy="ddp_spawn",
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _data())
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_both_ranks_skip_a_shard_only_one_of_them_sees(tmp_path, monkeypatch):
    cb = LRDoctorCallback(guard=True, snapshot_every=20)  # skip_spikes: on with the guard
    r0, r1 = _fit(ShardOnRankOne(), [cb, Record(cb, str(tmp_path))], 70, tmp_path, monkeypatch)
    assert r0["skipped"] == r1["skipped"] == list(SHARD)
    assert r0["rollbacks"] == r1["rollbacks"] == 0
    assert r0["around"][str(SHARD.start)] == r0["around"][str(SHARD.stop)]  # nothing applied across the shard
    assert r0["around"] == r1["around"]  # the replicas stayed identical


RAISE_STEP = 40


class NonIidShards(pl.LightningModule):
    """Rank 1's inputs are 3x larger (its loss level and noise differ from rank 0's); the LR is
    raised 30x at RAISE_STEP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_rank == 1:
            x, y = 3.0 * x, 3.0 * y
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == RAISE_STEP:
            for group in self.optimizers().optimizer.param_groups:
                group["lr"] *= 30.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RecordGuard(pl.Callback):
    def __init__(self, doctor, out):
        self.doctor, self.out = doctor, out

    def on_train_end(self, trainer, module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "events": [(r.step, r.restored_to, r.new_multiplier) for r in self.doctor.interventions],
            "snaps": self.doctor.guard.snapshot_steps,
            "params": [p.detach().flatten().tolist() for p in module.parameters()]}))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_a_divergence_on_non_iid_shards_is_rolled_back_on_every_rank_alike(tmp_path, monkeypatch):
    cb = LRDoctorCallback(guard=True, snapshot_every=10)
    r0, r1 = _fit(NonIidShards(), [cb, RecordGuard(cb, str(tmp_path))], 120, tmp_path, monkeypatch)
    assert r0["events"], "the 30x raise must make the guard act"
    assert r0["events"] == r1["events"]
    assert r0["snaps"] == r1["snaps"]
    assert r0["params"] == r1["params"]


class AutopilotShards(pl.LightningModule):
    """No LR given (the autopilot's); rank 1's inputs blow up 30x for ten steps mid-run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        self.finder_params = []  # the parameters at each of the finder's steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == 0:  # the finder runs before the first step
            self.finder_params.append(float(sum(p.detach().double().sum() for p in self.parameters())))
        if self.global_rank == 1 and self.trainer.training and 100 <= self.global_step < 110:
            x = 30.0 * x
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)  # ignored: the autopilot sets it


class RecordPilot(pl.Callback):
    def __init__(self, pilot, out):
        self.pilot, self.out = pilot, out

    def on_train_end(self, trainer, module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "peak": self.pilot.plan.peak_lr, "events": [e.message for e in self.pilot.events],
            "finder_params": module.finder_params,
            "params": [p.detach().flatten().tolist() for p in module.parameters()]}))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_the_autopilot_plans_and_rolls_back_alike_on_every_rank(tmp_path, monkeypatch):
    from lrkit.integrations.lightning.autopilot import AutopilotCallback

    pilot = AutopilotCallback(progress=False)
    r0, r1 = _fit(AutopilotShards(), [pilot, RecordPilot(pilot, str(tmp_path))], 200, tmp_path, monkeypatch)
    assert r0["peak"] == r1["peak"]  # one plan: the finder decided on the ranks' mean losses
    # the finder trained through DDP (gradients averaged over the ranks): the replicas stayed
    # identical through it, as they will in the run (each on its own shard, without it)
    assert len(r0["finder_params"]) > 20 and r0["finder_params"] == r1["finder_params"]
    assert r0["events"], "rank 1's blown-up batches must make the guard act"
    assert r0["events"] == r1["events"]
    assert r0["params"] == r1["params"]


class FinderShards(pl.LightningModule):
    """A module with an ``lr`` for ``lrkit.lightning.LRFinder``; records its parameters at every
    step of the range test (before the fit's first step)."""

    def __init__(self, lr=1e-4):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.finder_params = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == 0:
            self.finder_params.append(float(sum(p.detach().double().sum() for p in self.parameters())))
        if self.global_rank == 1:
            x, y = 2.0 * x, 2.0 * y  # shards of different scales
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class RecordFinder(pl.Callback):
    def __init__(self, finder, out):
        self.finder, self.out = finder, out

    def on_train_end(self, trainer, module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "suggestion": self.finder.result.suggestion, "lr": module.hparams.lr,
            "finder_params": module.finder_params,
            "params": [p.detach().flatten().tolist() for p in module.parameters()]}))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_the_lr_finder_callback_suggests_the_same_lr_on_every_rank(tmp_path, monkeypatch):
    from lrkit.lightning import LRFinder

    finder = LRFinder(num_iter=40, verify_steps=3, progress=False)
    r0, r1 = _fit(FinderShards(), [finder, RecordFinder(finder, str(tmp_path))], 30, tmp_path, monkeypatch)
    assert r0["suggestion"] == r1["suggestion"] == r0["lr"] == r1["lr"]
    # through DDP: the replicas stayed identical during the range test (its own shard each, without)
    assert len(r0["finder_params"]) > 20 and r0["finder_params"] == r1["finder_params"]
    assert r0["params"] == r1["params"]
