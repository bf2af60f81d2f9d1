"""The LR guard (pure core): rollback to the last good snapshot, lower LR, bounded retries."""
from __future__ import annotations

import copy
import json
import logging
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S
from lrkit.doctor import Diagnosis, Doctor
from lrkit.doctor.guard import Guard, GuardGaveUp, Intervention
from lrkit.doctor.snapshots import LEVEL

from _toy_trainers import Dying


class LinReg:
    """Mini-batch SGD on least squares, NumPy only (a real Trainer: snapshot/restore/step).

    ``nan_at``: call numbers at which the step's batch is corrupted with a NaN (a transient fault:
    it is keyed on the number of calls, so a replay after a rollback does not hit it again).
    """

    def __init__(self, seed: int = 0, n: int = 256, d: int = 5, batch: int = 32, nan_at=()):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((n, d))
        w_true = rng.standard_normal(d)
        self.y = self.X @ w_true + 0.1 * rng.standard_normal(n)
        self.w = np.zeros(d)
        self.batch = batch
        self.rng = np.random.default_rng(seed + 1)
        self.calls = 0
        self.nan_at = set(nan_at)
        self.H = 2 * self.X.T @ self.X / n  # Hessian of the mean squared error

    def snapshot(self):
        return (self.w.copy(), copy.deepcopy(self.rng.bit_generator.state))

    def restore(self, state):
        self.w = state[0].copy()
        self.rng.bit_generator.state = copy.deepcopy(state[1])

    def evaluate(self):
        r = self.X @ self.w - self.y
        return float(np.mean(r**2))

    def step(self, lr):
        idx = self.rng.integers(0, len(self.y), self.batch)
        X, y = self.X[idx], self.y[idx]
        if self.calls in self.nan_at:
            X = X.copy()
            X[0, 0] = np.nan
        self.calls += 1
        r = X @ self.w - y
        loss = float(np.mean(r**2))
        with np.errstate(all="ignore"):
            self.w = self.w - lr * 2 * X.T @ r / len(y)
        return loss


def run(trainer, lr, steps, guard=None):
    for _ in range(steps):
        if guard is None:
            trainer.step(lr)
        else:
            guard.step(lr)
    return trainer.evaluate()


def test_nan_injection_is_rolled_back_and_run_finishes_like_a_clean_one(caplog):
    clean = run(LinReg(), 0.05, 300)
    lost = run(LinReg(nan_at=[150]), 0.05, 300)
    assert math.isnan(lost)  # the unguarded run never recovers from a NaN weight
    t = LinReg(nan_at=[150])
    g = Guard(t, snapshot_every=20, lr_factor=0.3)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        final = run(t, 0.05, 300, g)
    assert len(g.interventions) == 1
    rec = g.interventions[0]
    assert isinstance(rec, Intervention)
    assert rec.verdict == "nan" and rec.step == 150 and rec.onset == 150
    assert rec.restored_to < 150 and rec.before_onset and rec.retry == 1
    # a first problem out of a healthy run: a bad state, not the LR -- the LR is kept
    assert rec.old_multiplier == 1.0 and rec.new_multiplier == 1.0 and g.lr_multiplier == 1.0
    assert math.isfinite(final) and final < 1.5 * clean  # noise floor is 0.01; both converged
    assert any("lrkit guard: nan at step 150" in r.message and "kept the LR multiplier" in r.message
               for r in caplog.records)
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "lrkit.guard")
    assert rec.to_dict()["verdict"] == "nan"


def test_too_high_lr_diverges_unguarded_and_converges_guarded():
    t0 = LinReg()
    lam = float(np.linalg.eigvalsh(t0.H)[-1])
    lr = 3.0 / lam  # lr * lambda_max = 3 > 2: gradient descent diverges
    with np.errstate(all="ignore"):
        lost = run(LinReg(), lr, 200)
    assert not (math.isfinite(lost) and lost < 1.0)
    t = LinReg()
    g = Guard(t, snapshot_every=10, lr_factor=0.3)
    final = run(t, lr, 200, g)
    clean = run(LinReg(), 0.3 / lam, 200)
    assert 1 <= len(g.interventions) <= 3
    assert g.interventions[0].verdict in ("diverging", "nan")
    assert lr * g.lr_multiplier * lam < 2
    assert final < 1.5 * clean


def test_a_first_fault_keeps_the_lr_and_one_that_comes_back_soon_lowers_it(caplog):
    """Two NaN batches 10 steps apart: the first (out of a healthy run) is forgiven, the second,
    within two snapshot periods of the first rollback, halves the LR (``lr_factor`` when milder) --
    on probation: the run then trains well, and the LR comes back."""
    t = LinReg(nan_at={150, 160})
    g = Guard(t, snapshot_every=20, lr_factor=0.7, max_overhead=None)
    with caplog.at_level(logging.WARNING, logger="lrkit.guard"):
        run(t, 0.05, 300, g)
    first, second = g.interventions
    assert (first.old_multiplier, first.new_multiplier) == (1.0, 1.0)
    assert second.old_multiplier == 1.0 and second.new_multiplier == pytest.approx(0.7)  # milder than a halving
    kept, lowered, back = [r.message for r in caplog.records]
    assert "kept the LR multiplier" in kept and "lowered the LR multiplier 1 -> 0.7" in lowered
    # the lowering was on probation: 40 healthy steps later the LR is back (two NaNs were the data)
    assert "LR multiplier back 0.7 -> 1" in back and g.lr_multiplier == 1.0


def test_faults_far_apart_are_each_forgiven_and_the_run_is_never_slowed():
    """NaN batches 100 steps apart, the run healthy in between: every rollback lands on a newer
    snapshot than the last and keeps the LR; the run ends as well as a clean one."""
    clean = run(LinReg(), 0.05, 400)
    t = LinReg(nan_at={100, 200, 300})
    g = Guard(t, snapshot_every=20, max_overhead=None)
    final = run(t, 0.05, 400, g)
    assert [i.new_multiplier for i in g.interventions] == [1.0, 1.0, 1.0]
    targets = [i.restored_to for i in g.interventions]
    assert targets == sorted(set(targets)) and targets[0] > 60
    assert final < 1.2 * clean


def test_an_lr_that_is_too_high_from_the_start_is_lowered_at_once():
    """A run that blows up before its first healthy snapshot never trained at this LR: the
    rollback to the initial state lowers it (no forgiveness)."""
    t0 = LinReg()
    lam = float(np.linalg.eigvalsh(t0.H)[-1])
    t = LinReg()
    g = Guard(t, snapshot_every=10, lr_factor=0.3, max_overhead=None)
    run(t, 3.0 / lam, 200, g)
    first = g.interventions[0]
    assert first.restored_to == 0 and first.new_multiplier == pytest.approx(0.3)
    assert 3.0 * g.lr_multiplier < 2  # ends below the stability edge


@pytest.mark.parametrize("snapshot_every", [50, 500])
def test_a_nan_batch_before_the_first_snapshot_of_a_healthy_run_keeps_the_lr(snapshot_every):
    """The first snapshot comes after ``snapshot_every`` good steps (50 by default, up to 500 when
    copies are slow): a NaN batch at step 30 of a run that trained well until then goes back to
    the start with the LR kept (a first problem out of a healthy stretch), and at step 10 too
    (under LEVEL good steps: a NaN with no blow-up before it, replayed once for free); either run
    ends as a clean one. Two NaN batches at the start (steps 8 and 14): the second is from the
    untried start again, and cuts."""
    clean = run(LinReg(), 0.05, 300)
    for nan_at in (30, LEVEL - 10):
        t = LinReg(nan_at=[nan_at])
        g = Guard(t, snapshot_every=snapshot_every, lr_factor=0.1, max_overhead=None)
        final = run(t, 0.05, 300, g)
        (rec,) = g.interventions
        assert rec.restored_to == 0 and rec.step == nan_at
        assert rec.retry == (1 if nan_at >= LEVEL else 0)  # the replay at an untried start is free
        assert g.lr_multiplier == 1.0 and final < 1.2 * clean
    t = LinReg(nan_at=[8, 14])
    g = Guard(t, snapshot_every=snapshot_every, lr_factor=0.1, max_overhead=None)
    run(t, 0.05, 300, g)
    assert [(i.restored_to, i.new_multiplier) for i in g.interventions] == [(0, 1.0), (0, pytest.approx(0.1))]


def test_a_hopeless_lr_reaches_the_same_lowest_lr_before_the_guard_gives_up():
    """An LR so high that the loss is NaN from the first steps: the free replay of the first NaN
    does not count against max_retries, so the LR still comes down 10x three times (to 1e-3 of
    itself) before the guard gives up, as it did without the replay."""
    t = LinReg()
    g = Guard(t, snapshot_every=50, lr_factor=0.1, max_overhead=None)
    with pytest.raises(GuardGaveUp):
        run(t, 1e6, 300, g)
    multipliers = [i.new_multiplier for i in g.interventions]
    assert multipliers[0] == 1.0 or multipliers[0] == pytest.approx(0.1)  # a NaN, or a blow-up first
    assert multipliers[-1] == pytest.approx(1e-3)


def test_a_too_high_lr_forgiven_at_the_start_is_still_brought_down_in_a_few_rollbacks():
    """A run that learns for LEVEL steps at an LR past its stability edge and then blows up is
    forgiven once (it looked like a bad batch); blowing up again from the same start lowers the LR
    (a halving on probation, then the factor) until it trains, within max_retries."""
    t0 = LinReg()
    lam = float(np.linalg.eigvalsh(t0.H)[-1])
    t = LinReg()
    g = Guard(t, snapshot_every=200, lr_factor=0.1, max_overhead=None)
    final = run(t, 2.02 / lam, 400, g)  # just past 2/lambda: a slow blow-up, after a good start
    assert [(i.restored_to, i.new_multiplier) for i in g.interventions] == [(0, 1.0), (0, 0.5)]
    assert g.interventions[0].onset >= LEVEL
    assert 2.02 * g.lr_multiplier < 2
    assert final < 0.05


def test_forgive_first_must_be_a_bool():
    with pytest.raises(ValueError, match="forgive_first must be True or False"):
        Guard(LinReg(), forgive_first="yes")


def test_lower_lr_after_a_kept_rollback_amends_the_record():
    t = LinReg(nan_at={50})
    g = Guard(t, snapshot_every=10, lr_factor=0.2, max_overhead=None)
    with pytest.raises(ValueError, match="only right after a rollback that kept the LR"):
        g.lower_lr("no rollback yet")
    run(t, 0.05, 60, g)
    rec = g.lower_lr("measured beyond the stability limit")
    assert g.lr_multiplier == pytest.approx(0.2) and g.interventions == [rec] and rec.new_multiplier == pytest.approx(0.2)
    with pytest.raises(ValueError, match="only right after a rollback that kept the LR"):
        g.lower_lr("twice")


def test_restore_target_precedes_onset_and_is_bitwise():
    t = LinReg()
    g = None
    seen = {}
    orig = t.snapshot

    def recording_snapshot():
        s = orig()
        seen[0 if g is None else g.step_count] = (s[0].copy(), copy.deepcopy(s[1]))
        return s

    t.snapshot = recording_snapshot
    g = Guard(t, snapshot_every=10)
    for _ in range(60):
        g.step(0.05)
    assert g.snapshot_steps[0] == 0 and g.snapshot_steps[-1] == 60  # the initial state, then rolling ones
    assert len(g.snapshot_steps) <= 6  # initial + keep=4 (+ the best, if thinned out of them)
    lam = float(np.linalg.eigvalsh(t.H)[-1])
    while not g.interventions:  # blow it up with a huge LR
        g.step(4.0 / lam)
    rec = g.interventions[0]
    assert rec.verdict in ("diverging", "nan") and rec.verified and rec.restored_to >= 50
    np.testing.assert_array_equal(t.w, seen[rec.restored_to][0])  # bitwise the snapshot
    assert t.rng.bit_generator.state == seen[rec.restored_to][1]


class Scripted:
    """A trainer whose losses are a script; its state is the call counter (to check restores)."""

    def __init__(self, losses):
        self.losses = list(losses)
        self.i = 0
        self.state_id = 0
        self.restored = []

    def snapshot(self):
        self.state_id += 1
        return ("state", self.state_id, self.i)

    def restore(self, s):
        self.restored.append(s)

    def evaluate(self):
        return None

    def step(self, lr):
        v = self.losses[self.i] if self.i < len(self.losses) else float("nan")
        self.i += 1
        return v


def test_bounded_retries_raise_with_state_restored():
    t = Scripted([1.0] * 30)  # then NaN forever
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=5, max_retries=3, lr_factor=0.5)
    with pytest.raises(GuardGaveUp) as exc:
        for _ in range(100):
            g.step(0.1)
    err = exc.value
    assert isinstance(err, RuntimeError)
    assert len(err.interventions) == 3 and [r.retry for r in err.interventions] == [1, 2, 3]
    assert "max_retries=3" in str(err) and "restored to the best snapshot seen (step" in str(err)
    assert len(t.restored) == 4  # three rollbacks and the final restore
    assert t.restored[1:3] == t.restored[:2]  # the same last-good snapshot each time
    assert err.best_by == "train_loss" and err.restored_to == err.best_step == t.restored[-1][2]
    # the first NaN out of a healthy run keeps the LR; the next ones, from the same snapshot, lower it
    assert [r.new_multiplier for r in err.interventions] == pytest.approx([1.0, 0.5, 0.25])
    assert g.lr_multiplier == pytest.approx(0.25)
    assert err.diagnosis.verdict == "nan"


def test_observe_mode_callback_and_doctor_reset():
    got = []
    t = Scripted([])
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=5, on_intervention=got.append)
    for i in range(20):
        assert g.observe(1.0 / (i + 1), lr=0.1) is None
    rec = g.observe(float("inf"), lr=0.1)
    assert isinstance(rec, Intervention) and got == [rec] and g.rolled_back
    assert g.diagnosis.verdict != "nan"  # the doctor is back to its state at the snapshot
    assert g.observe(0.04, lr=0.03) is None and not g.rolled_back
    assert g.step_count == 22  # the clock is not rewound
    summary = g.state_summary()
    assert summary["interventions"][0]["verdict"] == "nan" and summary["step_count"] == 22
    assert summary["lr_multiplier"] == 1.0  # a first problem out of a healthy run keeps the LR
    import json

    json.dumps(summary)  # JSON-ready


def test_disk_storage_pickles_and_cleans_up(tmp_path):
    t = LinReg(nan_at=[40])
    g = Guard(t, snapshot_every=10, storage="disk", storage_dir=tmp_path / "snaps")
    for _ in range(35):
        g.step(0.05)
    (run,) = os.listdir(tmp_path / "snaps")  # one directory per guard
    g._set.store.flush()
    files = sorted(os.listdir(tmp_path / "snaps" / run))
    assert files == ["lock", "manifest.json", "snap-1.pkl", "snap-2.pkl", "snap-3.pkl", "snap-4.pkl"]
    for _ in range(40):
        g.step(0.05)
    assert len(g.interventions) == 1 and math.isfinite(t.evaluate())
    g.close()
    assert os.listdir(tmp_path / "snaps") == []
    with Guard(LinReg(), storage="disk") as g2:
        d = g2.storage_path
        assert os.path.isdir(d)
    assert not os.path.exists(d) and not os.path.exists(os.path.dirname(d))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"snapshot_every": 0}, "snapshot_every must be an int >= 1, got 0"),
        ({"lr_factor": 1.0}, r"lr_factor must be a number in \(0, 1\), got 1.0"),
        ({"lr_factor": float("nan")}, "lr_factor"),
        ({"max_retries": 0}, "max_retries must be an int >= 1, got 0"),
        ({"act_on": ("flat",)}, "act_on must be a non-empty subset"),
        ({"storage": "s3"}, "storage must be 'memory' or 'disk', got 's3'"),
        ({"storage_dir": "/tmp/x"}, "storage_dir is only used with storage='disk'"),
        ({"doctor": object()}, "doctor must be an lrkit.doctor.Doctor"),
        ({"on_intervention": 3}, "on_intervention must be callable"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Guard(LinReg(), **kwargs)


def test_bad_trainer_and_lr():
    with pytest.raises(ValueError, match="must have a callable snapshot"):
        Guard(object())
    g = Guard(LinReg())
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        g.step(float("nan"))


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 30),
    factor=st.floats(0.05, 0.9),
    nan_at=st.integers(5, 120),
    forgive=st.booleans(),
)
def test_property_single_fault_one_rollback(k, factor, nan_at, forgive):
    """Any snapshot period and factor: one transient NaN -> exactly one rollback to a snapshot
    taken before it, at most 6 kept (initial + 4 + best), the multiplier is 1 (a first problem
    after a healthy snapshot is forgiven) or the factor, and the run ends finite."""
    t = LinReg(nan_at=[nan_at])
    # max_overhead=None: the period is k, not stretched by how long this machine took to copy a
    # snapshot next to a step this cheap (that timing once made it 7 for k=1)
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=k, lr_factor=factor, forgive_first=forgive,
              max_overhead=None)
    for i in range(nan_at + 30):
        if i == nan_at:  # the snapshots kept just before the NaN, and which of them the losses after them vouch for
            healthy = [r.label for r in g._pool() if r.healthy(g.tolerance)]
        g.step(0.05)
        assert len(g.snapshot_steps) <= 6
    assert len(g.interventions) == 1
    rec = g.interventions[0]
    assert rec.step == nan_at and rec.restored_to <= nan_at - 1
    # the newest state the losses vouched for; no more than one snapshot period lost when the
    # snapshot a period before the NaN was vouched for (a single noisy loss can fail one at k=1)
    assert rec.restored_to == max(healthy)
    if nan_at - k in healthy:
        assert nan_at - rec.restored_to <= k
    # forgiven: a first problem after a healthy snapshot, one before any that came after a healthy
    # stretch of LEVEL steps from the start, or earlier (a NaN with no blow-up before it: a free replay)
    assert g.lr_multiplier == (1.0 if forgive else pytest.approx(factor))
    assert rec.retry == (0 if forgive and rec.restored_to == 0 and nan_at < LEVEL else 1)
    assert math.isfinite(t.evaluate())


class ScriptDoctor(Doctor):
    """A real Doctor whose verdict at given steps is forced (to test the snapshot choice)."""

    def __init__(self, script):
        super().__init__(window=10)
        self.script = script

    def observe(self, step, loss, **kw):
        d = super().observe(step, loss, **kw)
        if step in self.script:
            verdict, onset = self.script[step]
            return Diagnosis(verdict, onset, step, {}, (), f"forced {verdict}")
        return d


@pytest.mark.parametrize("onset", [0, 45, 60, 95])
def test_an_early_onset_estimate_does_not_move_the_target_past_healthy_snapshots(onset):
    """The doctor's onset is only reported: the newest snapshot verified healthy by the losses
    after it is restored, whatever step the onset names (issue: an onset dated before the LR rise
    sent runs back to step 0)."""
    t = Scripted([1.0 / (1 + 0.01 * i) for i in range(200)])
    g = Guard(t, doctor=ScriptDoctor({100: ("diverging", onset)}), snapshot_every=10)
    for _ in range(101):
        g.step(0.1)
    rec = g.interventions[0]
    assert (rec.step, rec.onset, rec.restored_to, rec.verified) == (100, onset, 100, True)
    assert rec.before_onset == (100 < onset)
    assert t.restored[-1][2] == 100  # the trainer got the state it had before that step


def test_a_slow_rise_is_rolled_back_to_before_it_began():
    """Snapshots taken while the loss was already drifting up (the doctor still said healthy)
    fail their verification: the target is the last one trained at the level the run had reached."""
    losses = [2.0 * math.exp(-i / 20) + 0.1 for i in range(100)]  # converges to ~0.1 by step 100
    losses += [losses[-1] * 1.02 ** k for k in range(1, 101)]  # then rises 2% a step
    t = Scripted(losses)
    g = Guard(t, doctor=ScriptDoctor({160: ("diverging", 20)}), snapshot_every=10)
    for _ in range(161):
        g.step(0.1)
    rec = g.interventions[0]
    # 1.02^k within 25% + noise of the best: k <= 11 -> the snapshot of step 100 or 110 at most
    assert rec.verified and 90 <= rec.restored_to <= 110, rec


def test_lr_raised_mid_run_restores_a_recent_state_and_a_second_blowup_does_not_go_to_zero():
    t = LinReg()
    lam = float(np.linalg.eigvalsh(t.H)[-1])
    g = Guard(t, snapshot_every=20)
    for _ in range(300):  # a long converged (flat) stretch
        g.step(0.3 / lam)
    while not g.interventions:
        g.step(0.3 / lam * 30)  # the LR is raised 30x at step 300: lr * lambda_max = 9
    first = g.interventions[0]
    assert 280 <= first.restored_to <= 300 and first.verified
    while len(g.interventions) < 2 and g.step_count < 1000:
        g.step(0.3 / lam * 300)  # raised again, beyond what one cut fixes
    second = g.interventions[1]
    assert second.restored_to >= first.restored_to  # never back to step 0
    assert math.isfinite(t.evaluate())


def test_giving_up_leaves_the_best_state_and_says_which():
    losses = [2.0 * math.exp(-i / 20) + 0.1 for i in range(120)] + [float("nan")] * 500
    t = Scripted(losses)
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=10, max_retries=2, keep=2)
    with pytest.raises(GuardGaveUp) as exc:
        for _ in range(400):
            g.step(0.1)
    err = exc.value
    assert err.best_by == "train_loss" and 100 <= err.best_step <= 120
    assert err.best_value == pytest.approx(0.1, rel=0.2)
    assert t.restored[-1][2] == err.best_step
    assert f"step {err.best_step}, train_loss" in str(err)


def test_geometric_snapshots_reach_back_over_the_whole_run():
    g = Guard(LinReg(), snapshot_every=10, keep=4)
    for _ in range(1000):
        g.step(0.01)
    steps = g.snapshot_steps
    assert steps[0] == 0 and len(steps) <= 6
    ages = [g.step_count - s for s in steps[1:]]
    assert min(ages) <= 10 and max(ages) >= 100  # recent ones and old ones (a ring of 4 reaches 40)


def test_core_imports_without_frameworks():
    """The guard is pure core: importable and usable with every framework import blocked."""
    import subprocess
    import sys

    code = r'''
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "keras", "jax", "optax", "lightning", "transformers",
                                  "tensorboard", "optuna", "matplotlib", "typer", "rich", "scipy", "sklearn"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import doctest
import lrkit.doctor.guard as g
r = doctest.testmod(g)
assert r.failed == 0 and r.attempted > 0, r
print("ok")
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_slow_progress_after_a_rollback_to_the_start_is_not_a_new_divergence():
    """Rolled back into the doctor's opening stretch with a lower LR, a slow, quiet descent is
    judged from the restored point (it was once judged against the noisy opening at the failed LR:
    "diverging since step 1" and a second rollback)."""
    rng = np.random.default_rng(0)
    opening = [2.0 * math.exp(0.4 * rng.standard_normal()) for _ in range(12)]  # noisy, at the failed LR
    slow = [1.0 * (1 - 0.0002 * k) * math.exp(0.01 * rng.standard_normal()) for k in range(200)]
    t = Scripted(opening + [float("nan")] + slow)
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=3, max_overhead=None)
    for _ in range(len(opening) + 1 + len(slow)):
        g.step(0.1)
    assert len(g.interventions) == 1 and g.interventions[0].verdict == "nan"
    # the doctor's run starts at the first step after the rollback, not at the failed opening
    assert g.doctor.state_dict()["state"]["first_step"] == len(opening) + 1
    assert g.diagnosis.verdict in ("healthy", "flat")


class Killable:
    """Noisy decaying loss; any step inside the bad window [t0, t1) of the guard's clock kills the
    model (loss at chance, 2.3, from then on) until a restore brings an alive state back."""

    def __init__(self, t0, t1, seed=0):
        self.t0, self.t1, self.k, self.dead, self.w = t0, t1, 0, False, 0.0
        self.rng = np.random.default_rng(seed)

    def snapshot(self):
        return (self.w, self.dead)

    def restore(self, state):
        self.w, self.dead = state

    def step(self, lr):
        k, self.k = self.k, self.k + 1
        if self.t0 <= k < self.t1:
            self.dead = True
        if not self.dead:
            self.w += 1.0
        base = 2.3 if self.dead else 0.1 + 2.2 * math.exp(-self.w / 30)
        return base * math.exp(0.05 * self.rng.standard_normal())


def test_a_second_blow_up_right_after_a_rollback_is_caught_even_when_the_doctor_restarted():
    # the rollback lands in the doctor's opening stretch (its state is reset), and the bad window
    # is still open: the model dies again. The guard's own reference (the restored state's level)
    # catches the relapse and rolls back once more, after which the run trains to the end.
    t = Killable(150, 175)
    g = Guard(t, doctor=Doctor(), snapshot_every=25, lr_factor=0.1, max_overhead=None)
    for _ in range(400):
        g.step(0.1)
    assert len(g.interventions) >= 2
    assert g.interventions[1].restored_to <= 150 and "restored state" in g.interventions[1].message
    assert not t.dead and t.w > 200  # alive and trained on after the window


class NoiseFloor:
    """A loss whose floor grows with the LR (SGD's noise floor): ``0.05 * lr / 0.1`` above a
    decaying term; the state is the decay's progress."""

    def __init__(self, seed=0, floor_grows=True):
        self.w, self.rng, self.floor_grows = 0.0, np.random.default_rng(seed), floor_grows

    def snapshot(self):
        return self.w

    def restore(self, state):
        self.w = state

    def step(self, lr):
        self.w += lr
        floor = 0.05 * (lr / 0.1 if self.floor_grows else 1.0)
        return (floor + 2.0 * math.exp(-self.w / 3.0)) * math.exp(0.03 * self.rng.standard_normal())


def test_an_lr_raised_3x_and_held_that_makes_the_loss_worse_is_undone_not_cut_tenfold():
    t = NoiseFloor()
    g = Guard(t, doctor=Doctor(), snapshot_every=25, lr_factor=0.1, max_overhead=None)
    for k in range(400):
        g.step(0.1 if k < 150 else 0.3)  # raised by hand at step 150 and held
    (rec,) = g.interventions
    assert rec.verdict == "diverging" and rec.onset == 150 and rec.restored_to <= 150
    assert rec.evidence["lr_rise"] == pytest.approx(3.0) and rec.new_multiplier == pytest.approx(1 / 3)
    assert "raised 3x at step 150 and held" in rec.message
    # back at the LR that trained: the loss sits at its old floor again
    assert g.diagnosis.verdict == "healthy"


def test_a_held_raise_that_does_not_hurt_is_left_alone():
    t = NoiseFloor(floor_grows=False)  # a higher LR here only trains faster
    g = Guard(t, doctor=Doctor(), snapshot_every=25, max_overhead=None)
    for k in range(400):
        g.step(0.1 if k < 150 else 0.3)
    assert g.interventions == [] and g.diagnosis.verdict == "healthy"


@pytest.mark.parametrize("raise_by", [30, 1000])
def test_a_blow_up_under_a_held_raise_undoes_the_raise_not_a_tenth_of_it(raise_by):
    """Raised at step 213 and held (lr * lambda_max >= 9: a blow-up), 13 steps after the last
    periodic snapshot: the guard snapshots the state before the first step at the raised LR, and
    the rollback goes back to it (no step lost) and undoes the raise."""
    t = LinReg()
    lam = float(np.linalg.eigvalsh(t.H)[-1])
    good = 0.3 / lam
    g = Guard(t, snapshot_every=20, lr_factor=0.1, max_overhead=None)
    for _ in range(213):
        g.step(good)
    assert 213 not in g.snapshot_steps
    g.step(good * raise_by)
    assert 213 in g.snapshot_steps
    while not g.interventions:
        g.step(good * raise_by)
    (rec,) = g.interventions
    assert rec.restored_to == 213 and rec.verified and g.trained_steps == 213
    assert rec.new_multiplier == pytest.approx(1 / raise_by)
    for _ in range(200):  # back at the LR that trained, the run goes on without a second rollback
        g.step(good * raise_by)
    assert len(g.interventions) == 1 and t.evaluate() < 0.05


def test_a_fault_long_after_a_held_raise_gets_the_usual_cut():
    t = LinReg(nan_at={260})
    lam = float(np.linalg.eigvalsh(t.H)[-1])
    g = Guard(t, snapshot_every=20, lr_factor=0.1, max_overhead=None, forgive_first=False)
    for k in range(320):
        g.step(0.15 / lam if k < 100 else 0.3 / lam)  # a 2x raise at step 100 that trains fine
    (rec,) = g.interventions
    assert rec.verdict == "nan" and rec.restored_to > 100  # the snapshot postdates the raise
    assert rec.new_multiplier == pytest.approx(0.1)  # lr_factor, not 1/2: the raise is not the cause


class Generalises(NoiseFloor):
    """The training loss of NoiseFloor without its LR floor (a raised LR trains faster), and a
    validation loss whose gap grows with the LR used since the last snapshot: the harm of the
    raise shows on validation only."""

    def __init__(self, seed=0):
        super().__init__(seed, floor_grows=False)
        self.gap = 0.05

    def snapshot(self):
        return (self.w, self.gap)

    def restore(self, state):
        self.w, self.gap = state

    def step(self, lr):
        self.gap += 0.02 * (lr / 0.1 - 1.0) + 0.01 * (0.05 - self.gap)
        return super().step(lr)

    def val_loss(self):
        return 0.05 + 2.0 * math.exp(-self.w / 3.0) + self.gap


def test_a_held_raise_that_hurts_only_the_validation_loss_is_undone():
    t = Generalises()
    g = Guard(t, doctor=Doctor(), snapshot_every=25, max_overhead=None)
    for k in range(400):
        g.step(0.1 if k < 150 else 0.3, val_loss=t.val_loss() if k % 10 == 0 else None)
    (rec,) = g.interventions
    assert rec.verdict == "diverging" and rec.onset == 150 and rec.restored_to <= 150
    assert rec.evidence["val_loss_ratio_to_before_rise"] > 1.1 and "loss_ratio_to_before_rise" not in rec.evidence
    assert rec.new_multiplier == pytest.approx(1 / 3) and rec.step < 200  # seen on validation within 50 steps
    assert "the validation loss is" in rec.message


def test_a_held_raise_with_validation_that_does_not_hurt_is_left_alone():
    t = Generalises()
    t.step = lambda lr, _step=NoiseFloor.step.__get__(t): _step(lr)  # the gap never grows
    g = Guard(t, doctor=Doctor(), snapshot_every=25, max_overhead=None)
    for k in range(400):
        g.step(0.1 if k < 150 else 0.3, val_loss=t.val_loss() if k % 10 == 0 else None)
    assert g.interventions == [] and g.diagnosis.verdict == "healthy"


def test_state_dict_round_trip_and_bad_input():
    """What a framework checkpoint carries: multiplier, clock, interventions, the doctor's state."""
    t = LinReg(nan_at={60})
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=10, forgive_first=False)
    for _ in range(80):
        g.step(0.05)
    state = g.state_dict()
    json.dumps(state)  # plain JSON types
    g2 = Guard(LinReg(), doctor=Doctor(window=10), snapshot_every=10, take_initial_snapshot=False)
    g2.load_state_dict(state)
    assert g2.lr_multiplier == g.lr_multiplier == pytest.approx(0.1) and g2.step_count == 80
    assert [i.to_dict() for i in g2.interventions] == [i.to_dict() for i in g.interventions]
    assert g2.doctor.state_dict() == g.doctor.state_dict()
    g2.start()
    assert g2.snapshot_steps == [80]  # the restored state is its first snapshot
    with pytest.raises(ValueError, match="load its state before start"):
        g2.load_state_dict(state)
    with pytest.raises(ValueError, match="not a Guard.state_dict"):
        Guard(LinReg(), take_initial_snapshot=False).load_state_dict({"multiplier": 1.0})
    with pytest.raises(ValueError, match="multiplier must be a finite number > 0"):
        Guard(LinReg(), take_initial_snapshot=False).load_state_dict({**state, "multiplier": -1.0})


class Counted(LinReg):
    """LinReg whose state also counts the updates it holds (what a rollback undoes)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.updates = 0

    def snapshot(self):
        return (*super().snapshot(), self.updates)

    def restore(self, state):
        super().restore(state[:2])
        self.updates = state[2]

    def step(self, lr):
        self.updates += 1
        return super().step(lr)


def test_trained_steps_counts_what_the_state_holds_and_a_loop_on_it_replays_what_a_rollback_undid():
    t = Counted(nan_at=[150])
    g = Guard(t, snapshot_every=20)
    for _ in range(300):  # the run's length: the steps a rollback undid are lost
        g.step(0.05)
    (rec,) = g.interventions
    assert g.step_count == 300 and t.updates == g.trained_steps == 300 - (151 - rec.restored_to)
    t = Counted(nan_at=[150])
    g = Guard(t, snapshot_every=20)
    while g.trained_steps < 300:  # the run's training: they are trained again
        g.step(0.05)
    (rec,) = g.interventions
    assert t.updates == g.trained_steps == 300 and g.step_count == 300 + 151 - rec.restored_to
    assert g.state_summary()["trained_steps"] == 300


def test_trained_steps_follow_the_callers_numbering_and_nested_rollbacks():
    t = Counted(nan_at=[40, 90])
    g = Guard(t, snapshot_every=10, forgive_first=False)
    for i in range(1, 151):  # a framework's global step, from 1
        g.observe(t.step(0.05 * g.lr_multiplier), lr=0.05 * g.lr_multiplier, step=i)
    assert len(g.interventions) == 2
    assert t.updates == g.trained_steps and g.step_count == 151
    lost = sum(i.step + 1 - i.restored_to for i in g.interventions)
    assert g.trained_steps == 150 - lost


def test_trained_steps_survive_state_dict_and_an_old_state_counts_no_rollback():
    t = Counted(nan_at={60})
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=10)
    for _ in range(80):
        g.step(0.05)
    state = g.state_dict()
    assert state["trained"] == g.trained_steps < 80
    g2 = Guard(Counted(), doctor=Doctor(window=10), snapshot_every=10, take_initial_snapshot=False)
    g2.load_state_dict(state)
    assert g2.trained_steps == g.trained_steps
    old = {k: v for k, v in state.items() if k != "trained"}  # saved before the count was kept
    g3 = Guard(Counted(), doctor=Doctor(window=10), snapshot_every=10, take_initial_snapshot=False)
    g3.load_state_dict(old)
    assert g3.trained_steps == g3.step_count == 80


class BadShard(LinReg):
    """LinReg whose batches are garbage (inputs x50) for ``length`` guard steps from step ``at``:
    keyed on the step the guard is at, so a rollback does not skip it (a corrupt shard the loader
    keeps serving)."""

    def __init__(self, at, length, **kw):
        super().__init__(**kw)
        self.at, self.length, self.clock = at, length, 0

    def step(self, lr):
        k, self.clock = self.clock, self.clock + 1
        if not self.at <= k < self.at + self.length:
            return super().step(lr)
        idx = self.rng.integers(0, len(self.y), self.batch)
        X, y = 50 * self.X[idx], self.y[idx]
        r = X @ self.w - y
        with np.errstate(all="ignore"):
            self.w = self.w - lr * 2 * X.T @ r / len(y)
        return float(np.mean(r**2))


def test_a_bad_shard_lowers_the_lr_on_probation_and_it_comes_back():
    """A corrupt stretch of 15 batches hits twice (forgiven, then lowered); once the run has trained
    past it and a newer snapshot is healthy, the LR returns to its value before the trouble."""
    t = BadShard(150, 15)
    g = Guard(t, snapshot_every=10, lr_factor=0.1, max_overhead=None)
    while g.step_count < 300:
        t.clock = g.step_count
        g.step(0.05)
    mults = [(i.old_multiplier, i.new_multiplier) for i in g.interventions]
    assert mults[:2] == [(1.0, 1.0), (1.0, pytest.approx(0.5))]  # forgiven, halved (and maybe lowered again)
    assert len(g.recoveries) == 1 and g.recoveries[0] > g.interventions[-1].step
    assert g.lr_multiplier == 1.0
    g2 = Guard(LinReg(), take_initial_snapshot=False)
    g2.load_state_dict(g.state_dict())  # a framework checkpoint carries the probation record
    assert g2.recoveries == g.recoveries and g2.state_dict()["probation"] == g.state_dict()["probation"]


def test_trouble_soon_after_a_recovery_lowers_the_lr_for_good():
    """An LR that diverges a while after each rollback: forgiven, lowered on probation, restored,
    diverges again soon after the recovery -- now lowered for good, no second probation."""
    t = LinReg()
    lam = float(np.linalg.eigvalsh(t.H)[-1])
    script = {}

    class Doc(Doctor):
        def observe(self, step, loss, **kw):
            d = super().observe(step, loss, **kw)
            if step in script:
                return Diagnosis("diverging", step, step, {}, (), "forced")
            return d

    script.update({k: None for k in (100, 112, 160, 330, 336)})
    g = Guard(t, doctor=Doc(window=10), snapshot_every=10, lr_factor=0.1, max_overhead=None)
    for _ in range(400):
        g.step(0.5 / lam)
    mults = [i.new_multiplier / i.old_multiplier for i in g.interventions]
    assert mults[:2] == [1.0, pytest.approx(0.5)]  # forgiven, then halved on probation
    assert len(g.recoveries) == 1 and 160 - 40 <= g.recoveries[0] < 160
    assert mults[2] == pytest.approx(0.1)  # within 4K of the recovery: the LR, for good
    assert g.state_dict()["probation"]["closed"]
    # much later, a lone fault is forgiven again, and a second soon after lowers it with no probation
    assert mults[3:] == [1.0, pytest.approx(0.1)] and len(g.recoveries) == 1
    assert g.lr_multiplier == pytest.approx(0.01)


def test_the_period_stretched_by_costly_snapshots_comes_back_when_they_turn_cheap():
    """The first snapshots of a large model allocate its size (slow); once the rolling set is full
    they are copied into recycled memory (fast): the period is stretched while snapshots are
    costly and returns to snapshot_every when they are cheap, instead of staying stretched."""
    import time as _time

    def burn(seconds):  # CPU time (the guard measures its thread's CPU time, not the wall clock)
        t0 = _time.thread_time()
        while _time.thread_time() - t0 < seconds:
            pass

    class Costly(LinReg):
        def __init__(self):
            super().__init__()
            self.snaps = 0

        def snapshot(self):
            self.snaps += 1
            if self.snaps <= 4:
                burn(0.08)
            return super().snapshot()

        def step(self, lr):
            burn(0.002)
            return super().step(lr)

    t = Costly()
    g = Guard(t, snapshot_every=5, max_overhead=0.01)
    intervals = []
    for _ in range(400):
        g.step(0.05)
        intervals.append(g.snapshot_interval)
    assert max(intervals) > 5 * 3  # stretched while snapshots cost 80 ms against 2 ms steps
    assert t.snaps > 7 and intervals[-1] == 5  # back to snapshot_every once they are cheap


def test_the_period_is_taken_on_the_numbers_the_processes_agree_on():
    """``agree`` stands for the other processes of a distributed run: it is handed (snapshot cost,
    step time) and what it returns decides the period. Cheap snapshots here, but the processes
    agree on 0.5 s each: stretched to its limit; agreeing on what this process measured: not."""
    seen = []

    def costly(values, op):
        seen.append((list(values), op))
        return [0.5, values[1]]

    periods = {}
    for name, agree in (("costly", costly), ("own", lambda values, op: values)):
        g = Guard(LinReg(), snapshot_every=5, max_overhead=0.01, agree=agree)
        for _ in range(60):
            g.step(0.05)
        periods[name] = g.snapshot_interval
    assert periods == {"costly": 50, "own": 5}
    assert seen and all(len(v) == 2 and v[0] >= 0 and op == "mean" for v, op in seen)


def test_agree_must_be_callable():
    with pytest.raises(ValueError, match="agree must be callable"):
        Guard(LinReg(), agree=0.5)


def _rec(label, post, *, best=math.inf, sigma=0.0, lr=None):
    from lrkit.doctor.snapshots import SnapshotRecord

    r = SnapshotRecord(label=label, doctor={}, multiplier=1.0, best=best, sigma=sigma, lr=lr)
    for k, loss in enumerate(post):
        r.record(label + k, loss)
    return r


def test_a_snapshot_after_the_onset_is_judged_against_the_doctors_best_and_its_noise_then():
    """Onset at 10; the snapshot at 30 has only its first loss (1.75) to speak for it. Against its
    own record (best 1.31, noise 0.29 of a run already gone noisy) that passes; against the
    doctor's best level (1.07) with the noise the run had there (0.05) it does not: the rollback
    goes to the state before the onset."""
    from lrkit.doctor.snapshots import choose_target

    pool = [_rec(0, [2.29, 2.2, 2.4]), _rec(30, [1.75, 2.56, 1.59], best=math.log(1.31), sigma=0.29)]
    assert choose_target(pool, 0.1, onset=10)[0].label == 30
    assert choose_target(pool, 0.1, onset=10, reference=(math.log(1.07), 0.05))[0].label == 0
    # a snapshot from before the onset keeps its own judgement
    early = [_rec(0, [2.29]), _rec(5, [1.2, 1.1, 1.15], best=math.log(1.2), sigma=0.05)]
    assert choose_target(early, 0.1, onset=10, reference=(math.log(1.0), 0.01))[0].label == 5


def test_snapshots_taken_above_the_lr_ceiling_are_passed_over_while_another_is_left():
    from lrkit.doctor.snapshots import choose_target

    pool = [_rec(0, [2.3], lr=None), _rec(20, [1.2, 1.1], best=math.log(1.2), sigma=0.05, lr=1.0)]
    assert choose_target(pool, 0.1, onset=40)[0].label == 20
    assert choose_target(pool, 0.1, onset=40, lr_ceiling=0.15)[0].label == 0
    only_high = pool[1:]
    assert choose_target(only_high, 0.1, onset=40, lr_ceiling=0.15)[0].label == 20  # nothing else left


def test_snapshot_records_keep_their_lr_through_the_manifest():
    from lrkit.doctor.snapshots import SnapshotRecord

    r = _rec(7, [1.0], lr=0.03)
    assert SnapshotRecord.from_json(json.loads(json.dumps(r.to_json()))).lr == 0.03
    legacy = r.to_json()
    del legacy["lr"]
    assert SnapshotRecord.from_json(legacy).lr is None


@settings(max_examples=40, deadline=None)
@given(every=st.integers(1, 30), keep=st.integers(3, 6), n=st.integers(5, 300))
def test_thinning_keeps_the_newest_two_and_reaches_back_geometrically(every, keep, n):
    """Snapshots every ``every`` steps, ``keep`` rolling beside the initial one: after each thinning
    the newest two (the newest, and the one a period before it that bounds the work a rollback
    loses when the newest is the bad one) are still there, and with ``keep`` >= 4 (default 4) the
    oldest reaches back to within a factor 3 of its geometric target age K (T/K)^((k-2)/(k-1))
    (with 3, one free slot, its age is a sawtooth)."""
    from lrkit.doctor.snapshots import thin_index

    labels: list[int] = []
    for j in range(1, n + 1):
        step = j * every
        labels.append(step)
        if len(labels) > keep:
            labels.pop(thin_index(labels, now=step + 1, every=every, origin=0))
        assert labels[-1] == step and (j == 1 or labels[-2] == step - every)
        assert labels == sorted(labels) and len(labels) <= keep
    T = n * every + 1
    if n > keep and keep >= 4:
        assert T - labels[0] >= every * (T / every) ** ((keep - 2) / (keep - 1)) / 3


def test_a_run_stuck_since_a_blow_up_goes_back_before_it_and_forgets_its_dead_best():
    """Killed at its second step and stuck at chance after two huge losses: the doctor says
    diverging (stuck) with the onset at the blow-up, a window of flat later. Every snapshot after
    the onset holds the dead network and its flat losses vouch for it (the dead level is the best
    there is): the guard goes back to the initial state and lowers the LR, and the best snapshot
    kept for giving up -- taken while dead -- is dropped, not restored later."""
    t = Dying()
    g = Guard(t, doctor=Doctor(window=10), snapshot_every=5, max_overhead=None)
    for _ in range(120):
        g.step(3.0)
        if g.interventions:
            break
    (rec,) = g.interventions
    assert rec.verdict == "diverging" and rec.evidence.get("stuck") and rec.onset <= 2
    assert rec.restored_to == 0 and g.lr_multiplier < 1.0
    assert all(label <= rec.onset for label in g.snapshot_steps)  # no dead state left to restore
    for _ in range(100):
        g.step(3.0)
    assert not t.dead and len(g.interventions) == 1  # at the lowered LR it learns


# ------------------------------------------------------------ a snapshot before a sudden raise
@pytest.mark.parametrize("raise_at", [163, 170])
def test_a_held_raise_seen_on_validation_goes_back_to_the_raise_not_to_a_state_trained_under_it(raise_at):
    """The raise hurts only the validation loss, seen some steps later: a periodic snapshot taken in
    between (trained at the raised LR, its training loss fine) is passed over for the one before
    the raise."""
    t = Generalises()
    g = Guard(t, doctor=Doctor(), snapshot_every=25, max_overhead=None)
    for k in range(400):
        g.step(0.1 if k < raise_at else 0.3, val_loss=t.val_loss() if k % 10 == 0 else None)
    (rec,) = g.interventions
    assert rec.onset == raise_at and rec.restored_to == raise_at
    assert rec.new_multiplier == pytest.approx(1 / 3)


def snapshot_labels(lr_of, steps, every):
    """Every snapshot step a guard held while a healthy run followed the LRs ``lr_of(k)``."""
    g = Guard(NoiseFloor(floor_grows=False), doctor=Doctor(), snapshot_every=every, max_overhead=None)
    labels = set()
    for k in range(steps):
        g.step(float(lr_of(k)))
        labels |= set(g.snapshot_steps)
    assert g.interventions == []
    return labels


@pytest.mark.parametrize("lr_of, every", [
    (S.warmup(S.cosine(0.3, total_steps=400), warmup_steps=40), 25),
    (lambda k: max(0.001, 0.003 * k) if k < 10 else 0.03, 5),  # first steps double it (Keras' warmup from 0)
    (S.step_decay(0.3, step_size=50, gamma=0.1), 25),
])
def test_smooth_schedules_and_cuts_take_no_extra_snapshot(lr_of, every):
    labels = snapshot_labels(lr_of, 300, every)
    assert all(s % every == 0 for s in labels), sorted(labels)  # only the periodic ones


def test_a_warm_restart_takes_a_snapshot_before_it():
    labels = snapshot_labels(S.warm_restarts(0.3, first_cycle_steps=70, min_lr=0.003), 300, 25)
    assert {70, 140, 210, 280} <= labels


def test_no_raise_snapshot_right_after_a_snapshot_nor_for_an_unknown_or_lower_lr():
    t = NoiseFloor(floor_grows=False)
    g = Guard(t, doctor=Doctor(), snapshot_every=25, max_overhead=None)
    for _ in range(27):
        g.step(0.1)
    assert g.snapshot_steps[-1] == 25
    assert not g.before_step(0.3)  # 2 healthy steps since the snapshot at 25: fewer than max(2, 25 // 5)
    for _ in range(5):
        g.step(0.1)
    assert not g.before_step(None) and not g.before_step(math.nan) and not g.before_step(0.15)
    assert g.before_step(0.2) and g.snapshot_steps[-1] == 32


def test_a_raise_snapshot_is_vouched_for_by_the_losses_that_led_to_it():
    """Every loss from a snapshot before a raise is trained at the raised LR: with the onset at the
    raise, only its own first loss would speak for it, and one noisy loss would fail it. The
    healthy losses of the steps before it join that one; they survive the manifest."""
    from lrkit.doctor.snapshots import SnapshotRecord

    level = math.log(0.4)
    rec = SnapshotRecord(label=158, doctor={}, multiplier=1.0, best=level, sigma=0.05)
    for k, loss in zip(range(158, 170), [1.6] + [0.9] * 11):  # a noisy first loss, then the raise hurts
        rec.record(k, loss)
    assert rec.healthy(0.25, until=158) is False
    rec.pre, rec.pre_steps = [level + 0.01 * (-1) ** i for i in range(8)], list(range(150, 158))
    assert rec.healthy(0.25, until=158) is True
    assert rec.healthy(0.25, until=150) is False  # losses from the onset on do not count for it
    back = SnapshotRecord.from_json(rec.to_json())
    assert (back.pre, back.pre_steps) == (rec.pre, rec.pre_steps)


@settings(max_examples=60, deadline=None)
@given(factors=st.lists(st.floats(0.5, 1.99), min_size=2, max_size=40), lr0=st.floats(1e-6, 10.0))
def test_an_lr_that_never_doubles_in_a_step_is_never_a_sudden_raise(factors, lr0):
    from lrkit.doctor.raise_watch import RaiseWatch

    w, lr = RaiseWatch(), lr0
    for k, f in enumerate(factors):
        w.note(k, 1.0, lr)
        assert not w.sudden(lr * f)
        lr *= f


@settings(max_examples=60, deadline=None)
@given(steady=st.integers(2, 30), drift=st.floats(0.9, 1.05), jump=st.floats(2.0, 1e4), lr0=st.floats(1e-6, 10.0))
def test_a_doubling_after_a_steady_stretch_is_a_sudden_raise(steady, drift, jump, lr0):
    from lrkit.doctor.raise_watch import RaiseWatch

    w, lr = RaiseWatch(), lr0
    for k in range(steady):
        w.note(k, 1.0, lr)
        lr *= drift  # a slow decay or drift: over five steps at most 1.05^4 < 1.5
    assert w.sudden(w.lrs[-1] * jump)
