"""Several workers starting on one fresh shared study run ONE range test between them: the first
claims it and stores its prior with the study, the others wait for it and search alike."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from lrkit.tune import _convenience
from lrkit.tune.prior import Prior

SRC = str(Path(__file__).resolve().parents[1] / "src")

WORKER = """
    import sys
    from lrkit.tune import tune_torch
    from lrkit.tune._torch import builtin_target
    ran = []
    r = tune_torch(lambda: builtin_target(0), train_steps=60, n_trials=1, storage=sys.argv[1], study_name="shared",
                   on_finder=lambda res: ran.append(res.suggestion))
    print("FINDER" if ran else "REUSED", r.prior["center"], flush=True)
"""


def test_two_workers_on_a_fresh_study_run_one_range_test(tmp_path):
    pytest.importorskip("torch")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=url, study_name="shared")  # the study exists, empty (as `lrkit tune` makes it)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), url], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    lines = [out.split() for out, _ in outs]
    assert sorted(line[0] for line in lines) == ["FINDER", "REUSED"], lines
    assert lines[0][1] == lines[1][1]  # both searched around the same centre
    study = optuna.load_study(study_name="shared", storage=url)
    assert study.user_attrs["lrkit_prior"]["center"] == float(lines[0][1])


def test_a_stale_claim_is_taken_over(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    study.set_user_attr("lrkit_prior_claim", {"worker": "dead:1", "time": time.time() - 10})
    monkeypatch.setattr(_convenience, "CLAIM_TIMEOUT", 5.0)
    monkeypatch.setattr(_convenience, "CLAIM_SETTLE", 0.05)
    made = []

    def make():
        made.append(1)
        return Prior(1e-3, 0.5, 1e-6, 1.0, "finder", 40)

    prior = _convenience.shared_prior(url, "s", "minimize", make)
    assert made == [1] and prior.center == 1e-3
    assert _convenience.shared_prior(url, "s", "minimize", make).center == 1e-3 and made == [1]  # stored: reused
    assert _convenience.shared_prior(None, None, "minimize", make).center == 1e-3 and made == [1, 1]  # nothing to share
