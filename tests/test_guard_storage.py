"""The guard's disk storage: kill -9 + resume, two guards in one directory, corrupt snapshots."""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrkit.doctor import Doctor
from lrkit.doctor.guard import Guard
from lrkit.doctor.storage import DiskStore, StorageInUse

sys.path.insert(0, str(Path(__file__).parent))
from test_doctor_guard import Counted, LinReg  # noqa: E402

WORKER = Path(__file__).parent / "_guard_worker.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def _spawn(storage_dir, run_id, steps, every, ballast=0, sleep=0.0, out=None, sync=False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(storage_dir), run_id, str(steps), str(every), str(ballast), str(sleep),
         str(out)] + (["sync"] if sync else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _run_to_end(storage_dir, run_id, steps, every, out, ballast=0, sync=False):
    p = _spawn(storage_dir, run_id, steps, every, ballast=ballast, out=out, sync=sync)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    return stdout.splitlines()[0].split(), json.loads(Path(out).read_text())


def test_kill_9_mid_run_then_resume_continues_bitwise(tmp_path):
    """A run killed with SIGKILL and started again with the same run_id resumes from its newest
    snapshot (at most one period and the write in flight lost) and ends exactly as an uninterrupted run."""
    _, ref = _run_to_end(tmp_path / "ref", "ref", 300, 10, tmp_path / "ref.json")
    p = _spawn(tmp_path / "store", "exp", 300, 10, sleep=0.004, out=tmp_path / "out.json")
    killed_at = None
    for line in p.stdout:
        if line.startswith("step") and int(line.split()[1]) >= 150:
            killed_at = int(line.split()[1])
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL and killed_at is not None
    run_dir = tmp_path / "store" / "exp"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["run_id"] == "exp" and manifest["multiplier"] == 1.0
    assert all("doctor" in s and "label" in s for s in manifest["snapshots"])
    start, out = _run_to_end(tmp_path / "store", "exp", 300, 10, tmp_path / "out.json")
    resumed_from = int(start[1])
    # background writes: at most one period plus the write in flight is lost; the worker may run a
    # few steps past the line we read before the signal lands
    assert killed_at - 20 <= resumed_from <= killed_at + 10
    assert out["w"] == ref["w"]  # bitwise: weights, RNG and doctor state came back
    assert not run_dir.exists()  # the finished run cleaned up


def test_kill_9_with_sync_writes_loses_nothing_past_the_newest_snapshot(tmp_path):
    """``sync_writes=True``: once a step returns, the snapshot it took is on disk, so a kill right
    after a snapshot resumes from that very snapshot (at most one period is ever lost)."""
    p = _spawn(tmp_path, "sync", 10_000, 5, ballast=16, out=tmp_path / "out.json", sync=True)
    newest = None
    for line in p.stdout:
        parts = line.split()
        if parts[0] == "step" and int(parts[1]) >= 30 and int(parts[2]) == int(parts[1]) + 1:
            newest = int(parts[2])  # this step's observation just took a 16 MB snapshot
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL and newest is not None
    start, _ = _run_to_end(tmp_path, "sync", newest + 3, 5, tmp_path / "out.json", ballast=16)
    assert int(start[1]) == newest


@pytest.mark.slow
def test_kill_9_mid_write_leaves_only_complete_snapshots(tmp_path):
    """Killed while writing 32 MB snapshots (one per step): every snapshot file left is complete
    and loads, the manifest names only files that exist, and the run resumes each time."""
    rng = random.Random(0)
    for round_ in range(3):
        p = _spawn(tmp_path, "big", 10_000, 1, ballast=32, out=tmp_path / "out.json")
        seen = 0
        for line in p.stdout:
            if line.startswith("step"):
                seen += 1
                if seen >= 3:
                    break
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        run_dir = tmp_path / "big"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        for snap in manifest["snapshots"]:
            assert (run_dir / snap["handle"]).exists(), snap["handle"]
        for f in run_dir.glob("snap-*.pkl"):
            with open(f, "rb") as fh:
                state = pickle.load(fh)  # complete: atomic rename, never a truncated file
            assert state[2].size == 32 * 131072
    start, out = _run_to_end(tmp_path, "big", int(manifest["clock"]) + 5, 1, tmp_path / "out.json", ballast=32)
    assert start[1] != "None" and np.all(np.isfinite(out["w"]))
    assert not (tmp_path / "big").exists()


def test_two_guards_in_one_directory_never_see_each_others_snapshots(tmp_path):
    def run(seed, nan_at, store):
        t = LinReg(seed=seed, nan_at=[nan_at])
        kw = {"storage": "disk", "storage_dir": store} if store else {}
        return t, Guard(t, doctor=Doctor(window=10), snapshot_every=10, max_overhead=None, **kw)

    ref = []
    for seed, nan_at in ((0, 60), (1, 75)):
        t, g = run(seed, nan_at, None)
        for _ in range(120):
            g.step(0.05)
        ref.append((t.w.copy(), [i.restored_to for i in g.interventions]))
    (ta, ga), (tb, gb) = run(0, 60, tmp_path), run(1, 75, tmp_path)
    assert ga.storage_path != gb.storage_path
    for _ in range(120):  # interleaved, as two processes would
        ga.step(0.05)
        gb.step(0.05)
    for (t, g), (w, restored) in zip(((ta, ga), (tb, gb)), ref):
        assert [i.restored_to for i in g.interventions] == restored and len(restored) == 1
        np.testing.assert_array_equal(t.w, w)  # its own snapshots only
    ga.close()
    assert os.path.isdir(gb.storage_path)  # closing one leaves the other alone
    gb.close()
    assert os.listdir(tmp_path) == []


def test_the_same_run_id_twice_is_refused_while_the_first_is_live(tmp_path):
    g = Guard(LinReg(), storage="disk", storage_dir=tmp_path, run_id="exp")
    with pytest.raises(StorageInUse, match=r"exp is in use by another guard \(pid \d+\)"):
        Guard(LinReg(), storage="disk", storage_dir=tmp_path, run_id="exp")
    g.close()
    with Guard(LinReg(), storage="disk", storage_dir=tmp_path, run_id="exp"):
        pass  # free again


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_corrupt_or_missing_snapshot_falls_back_to_the_next_good_one(tmp_path, caplog, damage):
    t = LinReg(nan_at=[95])
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=10, storage="disk", storage_dir=tmp_path,
              max_overhead=None)
    for _ in range(95):
        g.step(0.05)
    g._set.store.flush()
    newest = g._set.rolling[-1]
    assert newest.label == 90
    path = Path(g.storage_path) / newest.handle
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.unlink()
    with caplog.at_level(logging.ERROR, logger="lrkit.guard"):
        g.step(0.05)  # the NaN batch: a rollback
    rec = g.interventions[0]
    assert rec.restored_to == 80 and np.all(np.isfinite(t.w))
    msg = "corrupt" if damage == "truncate" else "missing"
    assert any(str(path) in r.getMessage() and msg in r.getMessage() for r in caplog.records)
    for _ in range(50):
        g.step(0.05)
    assert np.isfinite(t.evaluate())
    g.close()


def test_resume_restores_multiplier_doctor_and_interventions(tmp_path):
    """In-process: a guard that was never closed (as after kill -9) is found again by a new one."""
    t = Counted(nan_at=[45])
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=10, storage="disk", storage_dir=tmp_path,
              run_id="r1", max_overhead=None, forgive_first=False)
    for _ in range(80):
        g.step(0.05)
    g._set.store.flush()
    assert len(g.interventions) == 1
    # simulate the death of the process: release the lock and forget the guard without cleanup
    g._set.store._finalizer.detach()
    g._set.store._pool.shutdown(wait=True)
    g._set.store._lock.release()
    doctor_state = g._set.rolling[-1].doctor
    t2 = Counted()
    g2 = Guard(t2, doctor=Doctor(window=10), snapshot_every=10, storage="disk", storage_dir=tmp_path,
               run_id="r1", resume=True, max_overhead=None)
    assert g2.resumed_from == g._set.rolling[-1].label == g2.step_count
    # the steps of training the restored state holds: its label less what the rollback undid
    assert g2.trained_steps == g._set.rolling[-1].trained_steps == t2.updates < g2.step_count
    assert g2.lr_multiplier == g.lr_multiplier == pytest.approx(0.1)
    assert [i.to_dict() for i in g2.interventions] == [i.to_dict() for i in g.interventions]
    assert g2.doctor.state_dict() == doctor_state
    g2.close()


def test_bad_storage_arguments():
    with pytest.raises(ValueError, match="run_id must be a non-empty name"):
        Guard(LinReg(), storage="disk", run_id="../x")
    with pytest.raises(ValueError, match="resume=True needs storage='disk' and a run_id"):
        Guard(LinReg(), resume=True)
    with pytest.raises(ValueError, match="run_id is only used with storage='disk'"):
        Guard(LinReg(), run_id="x")
    with pytest.raises(ValueError, match="sync_writes is only used with storage='disk'"):
        Guard(LinReg(), sync_writes=True)
    with pytest.raises(ValueError, match="sync_writes must be True or False"):
        Guard(LinReg(), storage="disk", sync_writes="yes")


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    store = DiskStore(tmp_path, run_id="a", background=False)
    key = store.put(np.arange(10))
    store.write_manifest({"clock": 3})
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["lock", "manifest.json", key]
    np.testing.assert_array_equal(store.get(key), np.arange(10))
    store.close()
    assert not (tmp_path / "a").exists()


def test_torch_snapshot_survives_pickling_bitwise():
    torch = pytest.importorskip("torch")
    from lrkit.integrations.torch.state import TorchSnapshot

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[2].to(torch.bfloat16)  # a dtype NumPy lacks
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model[2](model[1](model[0](torch.randn(8, 3))).to(torch.bfloat16)).float().sum().backward()
    opt.step()
    saved = [t.detach().clone() for t in model.state_dict().values()]
    snap = pickle.loads(pickle.dumps(TorchSnapshot.take(model, [opt], grads=False, non_blocking=True),
                                     protocol=pickle.HIGHEST_PROTOCOL))
    assert snap.pending is None  # CPU: nothing left in flight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    opt.step()
    snap.restore(model, [opt])
    for before, after in zip(saved, model.state_dict().values()):
        assert before.dtype == after.dtype and torch.equal(before, after)


def test_a_killed_anonymous_run_in_a_storage_dir_is_swept_by_the_next_store(tmp_path):
    """An anonymous run (no run_id) can never be resumed: when a guard killed with kill -9 left its
    directory in a storage_dir, the next store opened there removes it. A named run is kept for its
    resume, and a live anonymous run is left alone."""
    def killed(run_id=None):
        store = DiskStore(tmp_path, run_id=run_id)
        store.put(np.arange(3))
        store.flush()
        store._finalizer.detach()  # as after kill -9: no cleanup, the lock released by the kernel
        store._pool.shutdown(wait=True)
        store._lock.release()
        old = time.time() - 120
        os.utime(store.dir, (old, old))
        return Path(store.dir)

    dead, named = killed(), killed("exp1")
    live = DiskStore(tmp_path)
    os.utime(live.dir, (time.time() - 120,) * 2)
    fresh = DiskStore(tmp_path)
    assert not dead.exists() and named.exists() and Path(live.dir).exists()
    live.close()
    fresh.close()
    resumed = DiskStore(tmp_path, run_id="exp1")  # the named run is there to resume
    assert resumed.manifest() is None and any(named.glob("snap-*.pkl"))
    resumed.close()


def _adam_bn_model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, opt


def _train_step(torch, model, opt):
    opt.zero_grad()
    model(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()


def test_a_recycled_snapshot_lends_its_memory_and_saves_the_new_state_bitwise():
    torch = pytest.importorskip("torch")
    from lrkit.integrations.torch.state import TorchSnapshot

    model, opt = _adam_bn_model(torch)
    _train_step(torch, model, opt)
    old = TorchSnapshot.take(model, [opt], grads=False)
    old_ptrs = {n: t.tensor.data_ptr() for n, t in old.model_tensors.items()}
    _train_step(torch, model, opt)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected_moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    snap = TorchSnapshot.take(model, [opt], grads=False, recycle=old)
    assert {n: t.tensor.data_ptr() for n, t in snap.model_tensors.items()} == old_ptrs  # no new memory
    assert snap.optimizers[0]["state"][0]["exp_avg"].tensor.data_ptr() == \
        old.optimizers[0]["state"][0]["exp_avg"].tensor.data_ptr()
    for _ in range(3):
        _train_step(torch, model, opt)
    snap.restore(model, [opt])
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    for p, m in zip(model.parameters(), expected_moments):
        assert torch.equal(opt.state[p]["exp_avg"], m)


def test_a_recycled_snapshot_of_another_shape_is_not_written_into():
    torch = pytest.importorskip("torch")
    from lrkit.integrations.torch.state import TorchSnapshot

    small = torch.nn.Linear(3, 4)
    other = TorchSnapshot.take(small, [], grads=False)
    before = other.model_tensors["weight"].tensor.clone()
    big = torch.nn.Linear(5, 4)
    snap = TorchSnapshot.take(big, [], grads=False, recycle=other)
    assert snap.model_tensors["weight"].tensor.shape == (4, 5)
    assert torch.equal(other.model_tensors["weight"].tensor, before)
    # the bias fits (same shape and dtype): it is reused, and holds the new model's values
    assert snap.model_tensors["bias"].tensor.data_ptr() == other.model_tensors["bias"].tensor.data_ptr()
    assert torch.equal(snap.model_tensors["bias"].tensor, big.bias.detach())


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_guarded_snapshots_reuse_the_memory_of_dropped_ones_and_roll_back_exactly(tmp_path, storage):
    """Once the rolling set is full, each new snapshot is copied into one the guard let go of
    (dropped from memory, or durable on disk); a rollback still restores its target bitwise."""
    torch = pytest.importorskip("torch")
    from lrkit.torch import TorchDoctor

    model, opt = _adam_bn_model(torch)
    watch = TorchDoctor(model, opt, snapshot_every=2, keep=2, storage=storage,
                        storage_dir=tmp_path if storage == "disk" else None, max_overhead=None)
    state = watch.guard.trainer
    reused = []
    take = state.snapshot

    def counting_take():
        reused.append(state._spare is not None)
        return take()

    state.snapshot = counting_take
    history = {}
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        x = torch.randn(8, 3, generator=gen)
        if step == 36:
            x[0, 0] = float("nan")  # a corrupt batch: the guard rolls back
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        watch.after_backward(loss)
        opt.step()
        watch.after_step(step, loss)
        if watch.interventions:
            break
        history[watch.guard.step_count] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if storage == "disk":
            watch.guard._set.store.flush()  # the writer thread hands the state back once it is durable
    assert sum(reused) >= 10, reused  # steady state: every snapshot reuses a released one
    [rollback] = watch.interventions
    assert rollback.restored_to >= 30
    for k, v in model.state_dict().items():
        assert torch.equal(v, history[rollback.restored_to][k]), k
    watch.close()
    assert state._spare is None  # closing lets go of the kept memory


class _Ballast:
    """A trainer whose state is one array of `n` float64 and that says how much memory is free."""

    def __init__(self, n, free):
        self.w, self.free = np.zeros(n), free

    def snapshot(self):
        return {"w": self.w.copy(), "step": 3}

    def restore(self, state):
        self.w = state["w"].copy()

    def memory_available(self):
        return self.free


def test_guard_warns_once_when_its_memory_snapshots_would_take_half_the_free_memory(caplog):
    size = 8 * 1000
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        g = Guard(_Ballast(1000, free=10 * size), keep=4)  # 6 copies > half of 10
        for _ in range(120):
            g.observe(1.0)
    said = [r.getMessage() for r in caplog.records if "snapshots kept in memory" in r.getMessage()]
    assert len(said) == 1 and g.memory_warning in said[0]
    assert "up to 6 copies" in said[0] and "storage='disk'" in said[0]
    assert Guard(_Ballast(1000, free=12 * size), keep=4).memory_warning is None  # 6 copies <= half of 12
    assert Guard(_Ballast(1000, free=10 * size), keep=2).memory_warning is None  # 4 copies
    with Guard(_Ballast(1000, free=10 * size), keep=4, storage="disk") as on_disk:
        assert on_disk.memory_warning is None


def test_state_nbytes_counts_arrays_once_through_containers_and_objects():
    from lrkit.doctor.snapshot_set import state_nbytes

    class Snap:
        def __init__(self, a):
            self.model = {"w": a, "same": a}
            self.optimizers = [(np.ones(3, np.float32), "adam")]

    a = np.zeros((10, 10))
    assert state_nbytes(Snap(a)) == a.nbytes + 12
    assert state_nbytes([1, "x", None]) == 0
    torch = pytest.importorskip("torch")
    from lrkit.integrations.torch.state import TorchSnapshot

    model = torch.nn.Linear(100, 10)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 100)).sum().backward()
    opt.step()
    snap = TorchSnapshot.take(model, [opt])
    params = sum(p.numel() * 4 for p in model.parameters())
    # weights, gradients and Adam's two moments (+ the RNG states)
    assert 4 * params <= state_nbytes(snap) <= 4 * params + 20_000
