"""DDP: the guard takes every decision on what all ranks agree on -- the loss, gradient norm and
validation loss averaged over the ranks, the snapshot period from the ranks' mean costs -- so a
problem one rank sees more of is rolled back on every rank at the same step, to the same snapshot,
with the same LR, and the replicas stay identical. Two CPU processes on gloo."""
from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from _ddp import run_ranks, slow_snapshots  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]

RAISE_STEP = 40
STEPS = 120


def _train(rank: int, tmp: str, *, scale: float, raise_by: float, slow_snapshot: bool, **kwargs) -> None:
    """A tanh MLP regression under DDP; rank 1's shard is ``scale`` times larger in x (non-iid
    shards: its loss level and noise differ), and the LR is raised ``raise_by`` x at RAISE_STEP."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lrkit.integrations.torch import doctor as tdoctor

    if slow_snapshot and rank == 1:  # this rank's host copies are slow (150 ms of CPU a snapshot)
        slow_snapshots(tdoctor._State, 0.15)
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own batches
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    shard = scale if rank == 1 else 1.0
    watch = tdoctor.TorchDoctor(model, opt, **kwargs)
    with watch:
        for k in range(STEPS):
            if k == RAISE_STEP:
                for group in opt.param_groups:
                    group["lr"] *= raise_by
            x = torch.randn(16, 8, generator=g) * shard
            y = x @ w + 0.3 * torch.randn(16, 1, generator=g)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            watch.after_backward(loss)
            opt.step()
            val = float(loss.detach()) if k % 10 == 9 and rank == 0 else None  # one rank validates
            watch.after_step(k, loss, val_loss=val)
        events = [(r.step, r.restored_to, r.new_multiplier, r.verdict) for r in watch.interventions]
        snaps = watch.guard.snapshot_steps
        interval = watch.guard.snapshot_interval
        storage = watch.guard.storage_path
    params = [p.detach().flatten().tolist() for p in model.parameters()]
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(
        {"events": events, "snaps": snaps, "interval": interval, "params": params, "storage": storage}))


def _autopilot_run(rank: int, tmp: str, muon: bool = False) -> None:
    """The autopilot under DDP (its finder on every rank), shards of different scales; rank 1's
    batches blow up 30x for twenty steps mid-run (its loss alone would look diverging). ``muon``:
    torch's Muon for the weight matrices and AdamW for the rest, as one (``lrkit.torch.combine``)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset

    from lrkit.integrations.torch.autopilot import autopilot

    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # any LR: the autopilot sets it
    if muon:
        from lrkit.torch import combine

        opt = combine(torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02),
                      torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=3e-4))
    g = torch.Generator().manual_seed(10 + rank)
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    x = torch.randn(1024, 8, generator=g) * (1 + 2 * rank)
    y = x @ w + 0.3 * torch.randn(1024, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    pilot = autopilot(model, opt, torch.nn.MSELoss(), loader, train_steps=300, progress=False)
    k = 0
    while k < 300:
        for xb, yb in loader:
            if k == 300:
                break
            if rank == 1 and 150 <= k < 170:
                xb = xb * 30.0
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
            pilot.scheduler.step()
            pilot.after_step(loss)
            k += 1
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({
        "peak": pilot.plan.peak_lr, "family": pilot.plan.family, "events": [e.message for e in pilot.events],
        "params": [p.detach().flatten().tolist() for p in model.parameters()]}))


def _watch_only(rank: int, tmp: str) -> None:
    """A doctor that only watches, on rank 0 alone (a common way to monitor a DDP run)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lrkit.integrations.torch.doctor import TorchDoctor

    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    watch = TorchDoctor(model, opt, guard=False) if rank == 0 else None
    g = torch.Generator().manual_seed(rank)
    for k in range(40):
        x = torch.randn(16, 4, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        loss.backward()
        opt.step()
        if watch is not None:
            watch.after_step(k, loss)
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(
        {"verdict": watch.diagnosis.verdict if watch is not None else None}))


needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")


@needs_dist
def test_a_divergence_on_non_iid_shards_is_rolled_back_on_every_rank_alike(tmp_path):
    r0, r1 = run_ranks(functools.partial(
        _train, scale=3.0, raise_by=30.0, slow_snapshot=False, snapshot_every=10, storage="disk",
        storage_dir=f"{tmp_path}/snapshots", run_id="run"), tmp_path)
    assert r0["events"], "the 30x raise must make the guard act"
    assert r0["events"] == r1["events"]  # same steps, same snapshots, same LR multipliers
    assert r0["snaps"] == r1["snaps"]
    assert r0["params"] == r1["params"]  # the replicas stayed identical
    # one run_id, one directory per rank (each resumes its own)
    assert [Path(r["storage"]).name for r in (r0, r1)] == ["run.rank0", "run.rank1"]


@needs_dist
def test_every_rank_snapshots_at_the_same_steps_when_one_copies_slowly(tmp_path):
    r0, r1 = run_ranks(functools.partial(
        _train, scale=1.0, raise_by=1.0, slow_snapshot=True, snapshot_every=5), tmp_path)
    # rank 1's copies alone (150 ms) would stretch its period, rank 0's (microseconds) would not:
    # on the mean cost both stretch it alike
    assert r0["interval"] == r1["interval"] > 5
    assert r0["snaps"] == r1["snaps"]
    assert r0["params"] == r1["params"]


if __name__ == "__main__":  # pragma: no cover - manual run
    sys.exit(pytest.main([__file__, "-q"]))


@needs_dist
@pytest.mark.parametrize("muon", [False, True], ids=["sgd", "muon+adamw"])
def test_the_autopilot_rolls_back_on_every_rank_alike(tmp_path, muon):
    r0, r1 = run_ranks(functools.partial(_autopilot_run, muon=muon), tmp_path)
    assert r0["family"] == ("muon" if muon else "sgd")
    assert r0["peak"] == r1["peak"]  # one plan: the finder decided on the ranks' mean losses
    assert r0["events"], "rank 1's blown-up batches must make the guard act"
    assert r0["events"] == r1["events"]
    assert r0["params"] == r1["params"]


RESUME_STEPS, KILLED_AT = 80, 55


def _resumable(rank: int, tmp: str, *, phase: str, how: str = "") -> None:
    """Phase "kill": train KILLED_AT steps with disk snapshots, then die without closing (as a kill
    would). Phase "resume": rank 1 is a write behind -- its newest snapshot file is unreadable
    (``how="unreadable"``), or the kill came before it wrote its newest snapshot at all (its
    manifest is the one before that snapshot, ``"behind"``); both ranks resume and train to
    RESUME_STEPS."""
    import os
    import shutil

    from torch.nn.parallel import DistributedDataParallel as DDP

    from lrkit.integrations.torch.doctor import TorchDoctor

    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kw = dict(snapshot_every=10, storage="disk", storage_dir=f"{tmp}/snapshots", run_id="run", sync_writes=True)
    run_dir = Path(tmp, "snapshots", f"run.rank{rank}")
    if phase == "resume" and rank == 1:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        newest = max(manifest["snapshots"], key=lambda s: s["label"])
        (run_dir / newest["handle"]).write_bytes(b"cut short")
        if how == "behind":
            shutil.copy(run_dir / "manifest.before", run_dir / "manifest.json")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lrkit.guard").addHandler(handler)
    watch = TorchDoctor(model, opt, resume=phase == "resume", **kw)
    start = watch.start_step
    end = KILLED_AT if phase == "kill" else RESUME_STEPS
    for k in range(start, end):
        g = torch.Generator().manual_seed(1000 * rank + k)  # batch k of this rank's shard, whenever it runs
        x = torch.randn(16, 8, generator=g)
        y = x.sum(1, keepdim=True)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(k, loss)
        if phase == "kill" and k == 45:  # the manifest before the last snapshot (at 50)
            shutil.copy(run_dir / "manifest.json", run_dir / "manifest.before")
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({
        "start": start, "snaps": watch.guard.snapshot_steps, "said": said,
        "params": [p.detach().flatten().tolist() for p in model.parameters()]}))
    if phase == "kill":
        dist.barrier()
        time.sleep(0.2)
        os._exit(0)  # no close(): the snapshots and manifests stay, as after a kill
    watch.close()


@needs_dist
@pytest.mark.parametrize("how", ["unreadable", "behind"])
def test_ranks_resume_from_the_newest_snapshot_all_of_them_can_read(tmp_path, how):
    killed = run_ranks(functools.partial(_resumable, phase="kill"), tmp_path)
    assert killed[0]["snaps"] == killed[1]["snaps"] and max(killed[0]["snaps"]) == 50
    Path(tmp_path, "rendezvous").unlink(missing_ok=True)
    r0, r1 = run_ranks(functools.partial(_resumable, phase="resume", how=how), tmp_path)
    # rank 0 could resume from step 50, rank 1 not (its file is unreadable): both resume from the
    # newest snapshot both can read, and train the same steps on from there
    assert r0["start"] == r1["start"] < 50
    assert r0["params"] == r1["params"]
    # rank 1's manifest a write behind: the two differ, and both resume with the snapshot's own state
    differed = [any("manifests differed" in m for m in r["said"]) for r in (r0, r1)]
    assert differed == ([True, True] if how == "behind" else [False, False])


@needs_dist
def test_a_doctor_that_only_watches_may_run_on_rank_zero_alone(tmp_path):
    r0, r1 = run_ranks(_watch_only, tmp_path)  # no collective waits for rank 1
    assert r0["verdict"] in ("healthy", "converged") and r1["verdict"] is None
