"""kill -9 in the middle of a study, for real: the study resumes with no finished trial lost or repeated."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

SRC = str(Path(__file__).resolve().parents[1] / "src")
VALUES = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]

WORKER = textwrap.dedent("""
    import math, sys, time
    from pathlib import Path
    from lrkit.tune import tune

    url, log = sys.argv[1], Path(sys.argv[2])

    def objective(lr, trial):
        with log.open("a") as f:
            f.write(f"start {lr!r}\\n")
        for step in range(1, 6):
            time.sleep(0.15)
            trial.report(abs(math.log10(lr) + 2.5) + 1.0 / step, step)
        with log.open("a") as f:
            f.write(f"done {lr!r}\\n")
        return abs(math.log10(lr) + 2.5)

    r = tune(objective, n_trials=6, strategy="grid", values=%r, storage=url, study_name="k9",
             train_steps=5, pruner="none", heartbeat_interval=1, grace_period=2)
    print("best", r.best_lr, r.n_trials)
""" % (VALUES,))


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_mid_trial_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    log = tmp_path / "log.txt"
    proc = _run([url, str(log)])
    deadline = time.time() + 60
    while time.time() < deadline:  # wait for 2 finished trials and a third one under way
        lines = log.read_text().splitlines() if log.exists() else []
        if sum(x.startswith("done") for x in lines) >= 2 and lines[-1].startswith("start"):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the worker never got going: {proc.communicate()[1][-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    done_before = [x.split()[1] for x in before if x.startswith("done")]
    study = optuna.load_study(study_name="k9", storage=url)
    running = [t for t in study.trials if t.state.name == "RUNNING"]
    assert len(running) == 1  # the killed trial, as left
    # the trial the kill hit (the log's last "start", or one the storage began just before the kill)
    killed = repr(running[0].params["lr"])

    time.sleep(2.5)  # past the grace period: the dead worker's trial is stale
    out, err = _run([url, str(log)]).communicate(timeout=120)
    assert "best 0.001 6" in out, err[-2000:]
    lines = log.read_text().splitlines()[len(before):]
    started_after = [x.split()[1] for x in lines if x.startswith("start")]
    assert started_after[0] == killed  # the trial that was killed is run again first
    assert not set(done_before) & set(started_after)  # no finished trial is repeated
    study = optuna.load_study(study_name="k9", storage=url)
    complete = sorted(t.params["lr"] for t in study.trials if t.state.name == "COMPLETE")
    assert complete == VALUES  # none lost
    assert [t.state.name for t in study.trials].count("FAIL") == 1  # the killed one, superseded


def test_a_trial_has_a_heartbeat_before_its_objective_runs(tmp_path, monkeypatch):
    """Optuna's heartbeat thread may not have run yet when the objective starts (a loaded machine):
    a worker killed then would leave a RUNNING trial with no heartbeat, never found stale and never
    tried again. lrkit records the first heartbeat itself: here the thread never records one, and
    the trial still goes stale once its worker is silent for the grace period."""
    from optuna.storages import _heartbeat

    from lrkit.tune import tune

    monkeypatch.setattr(_heartbeat.HeartbeatThread, "_record_heartbeat", staticmethod(lambda *a: None))
    seen = []

    def objective(lr, trial):
        storage = trial.study._storage
        time.sleep(2.2)  # silent past the grace period (1 s; SQLite's clock counts whole seconds)
        seen.append(trial._trial_id in storage._get_stale_trial_ids(trial.study._study_id))
        return lr

    tune(objective, n_trials=1, strategy="grid", values=[1e-3], storage=f"sqlite:///{tmp_path / 's.db'}",
         study_name="hb", train_steps=1, pruner="none", heartbeat_interval=1, grace_period=1)
    assert seen == [True]
