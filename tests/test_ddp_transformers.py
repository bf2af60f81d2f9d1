"""The Hugging Face ``Trainer`` under DDP (two CPU processes, gloo), ``LRDoctorCallback(guard=True)``.

The Trainer's logged loss is gathered over the ranks already; what a rank sees alone is each step's
loss from the forward hook (``skip_spikes``), the initial loss and its own timings. The callback
decides on the ranks' mean of each, so a bad shard on one rank is skipped on both, a NaN on one
rank is rolled back on both at the same step, both snapshot at the same steps although one copies
slowly, and the replicas stay identical."""
from __future__ import annotations

import functools

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _ddp import run_env_ranks, slow_snapshots  # noqa: E402
from test_doctor_integrations_transformers import Data  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]

SHARD = range(40, 46)  # rank 1's forward passes that see garbage


class Tiny(torch.nn.Module):
    """A tanh MLP returning ``{"loss": ...}``; forward passes in ``garbage`` get inputs x50 and
    targets x30, the one numbered ``nan_at`` a NaN input."""

    def __init__(self, garbage=(), nan_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.calls, self.garbage, self.nan_at, self.seen = 0, set(garbage), nan_at, []

    def forward(self, x, y):
        if self.training and torch.is_grad_enabled():  # the replica every training pass starts from
            self.seen.append(float(sum(p.detach().double().sum() for p in self.parameters())))
        if self.calls in self.garbage:
            x, y = x * 50.0, y * 30.0
        if self.calls == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        self.calls += 1
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


def _run(rank: int, out: str, *, scenario: str) -> dict:
    from lrkit.integrations.transformers import callback as hf

    if scenario == "shard" and rank == 1:  # this rank's host copies are slow (150 ms of CPU a snapshot)
        slow_snapshots(hf._State, 0.15)
    args = transformers.TrainingArguments(
        output_dir=out, use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no", max_steps=100,
        logging_steps=1, learning_rate=0.05, per_device_train_batch_size=16, lr_scheduler_type="constant",
        optim="sgd", disable_tqdm=True, seed=0)
    model = Tiny(garbage=SHARD if scenario == "shard" and rank == 1 else (),
                 nan_at=50 if scenario == "nan" and rank == 1 else None)
    cb = hf.LRDoctorCallback(guard=True, snapshot_every=5)
    seen = []

    class Snapshots(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(list(cb.guard.snapshot_steps))

    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb, Snapshots()])
    trainer.train()
    return {
        "world_size": args.world_size,
        "events": [(r.step, r.restored_to, r.new_multiplier) for r in cb.interventions],
        "skipped": cb.guard.skipped_steps, "snapshots": seen, "interval": cb.guard.snapshot_interval,
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
    }


def _run_autopilot(rank: int, out: str, logging_steps: int = 1) -> dict:
    from lrkit.integrations.transformers.autopilot import AutopilotCallback

    args = transformers.TrainingArguments(
        output_dir=out, use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no", max_steps=120,
        logging_steps=logging_steps, per_device_train_batch_size=16, optim="sgd", disable_tqdm=True, seed=0)
    model = Tiny()
    cb = AutopilotCallback(progress=False)
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    return {"world_size": args.world_size, "peak": cb.plan.peak_lr, "events": [e.message for e in cb.events],
            "seen": model.seen, "params": [p.detach().flatten().tolist() for p in model.parameters()],
            "observed": len(cb.pilot.history)}


def _run_finder(rank: int, out: str) -> dict:
    import lrkit.transformers

    args = transformers.TrainingArguments(
        output_dir=out, use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no", max_steps=100,
        per_device_train_batch_size=16, optim="sgd", disable_tqdm=True, seed=0)
    model = Tiny()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data())
    result = lrkit.transformers.find_lr(trainer, progress=False)
    return {"suggestion": result.suggestion, "lr": args.learning_rate, "batch_size": result.batch_size,
            "seen": model.seen, "restored": all(torch.equal(a, b) for a, b in zip(before, model.parameters()))}


needs_dist = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available in this build")


@needs_dist
def test_a_bad_shard_on_one_rank_is_skipped_on_both_and_both_snapshot_alike(tmp_path):
    r0, r1 = run_env_ranks(functools.partial(_run, scenario="shard"), tmp_path)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["skipped"] and r0["skipped"] == r1["skipped"]  # rank 0's own losses there were normal
    assert r0["events"] == r1["events"] == []
    # rank 1's copies alone (150 ms) would stretch its period, rank 0's would not: both stretch it alike
    assert r0["interval"] == r1["interval"] > 5
    assert r0["snapshots"] == r1["snapshots"]
    assert r0["params"] == r1["params"]


@needs_dist
def test_a_nan_on_one_rank_is_rolled_back_on_both_alike(tmp_path):
    r0, r1 = run_env_ranks(functools.partial(_run, scenario="nan"), tmp_path)
    assert r0["events"] and r0["events"] == r1["events"]
    assert r0["params"] == r1["params"]
    assert all(v == v for p in r0["params"] for v in p)  # finite


@needs_dist
@pytest.mark.parametrize("logging_steps", [1, 500])
def test_the_autopilot_plans_once_for_both_ranks_and_its_finder_trains_as_ddp_does(tmp_path, logging_steps):
    """Also with the Trainer's default logging_steps=500, where the guard reads each step's loss
    from the model's output itself: the ranks' mean, so both take the same decisions."""
    r0, r1 = run_env_ranks(functools.partial(_run_autopilot, logging_steps=logging_steps), tmp_path)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["peak"] == r1["peak"]  # one plan: the finder decided on the ranks' mean losses
    # the finder averaged the gradients over the ranks (as the Trainer's DDP wrapper does after it):
    # both replicas saw the same parameters at every training pass, the finder's included
    assert len(r0["seen"]) > 120 and r0["seen"] == r1["seen"]
    assert r0["events"] == r1["events"]
    assert r0["params"] == r1["params"]
    assert r0["observed"] == r1["observed"] == 120  # every step reached the guard, logged or read


@needs_dist
def test_find_lr_on_a_trainer_suggests_the_same_lr_on_both_ranks_for_their_joint_batch(tmp_path):
    r0, r1 = run_env_ranks(_run_finder, tmp_path)
    assert r0["suggestion"] == r1["suggestion"] == r0["lr"] == r1["lr"]
    assert r0["batch_size"] == r1["batch_size"] == 32  # 16 a rank, two ranks
    assert len(r0["seen"]) > 20 and r0["seen"] == r1["seen"]  # gradients averaged: one replica
    assert r0["restored"] and r1["restored"]
