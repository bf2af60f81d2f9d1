"""Ray Tune as a backend, on a local Ray instance: ASHA with lrkit's sampler, and PBT changing the LR."""
from __future__ import annotations

import math

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lrkit[ray]'")
pytest.importorskip("ray.tune", reason="Ray Tune is not installed: pip install 'lrkit[ray]'")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow


def _digits():
    from lrkit.tune._torch import builtin_target

    return builtin_target  # importable by name: Ray workers unpickle it


digits = _digits()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_asha_with_lrkit_strategy(local_ray, tmp_path):
    from lrkit.tune import tune_ray

    r = tune_ray(digits, train_steps=60, num_samples=4, scheduler="asha", storage_path=str(tmp_path))
    assert len(r.trials) == 4 and r.strategy == "ray-asha"
    assert r.trials[0].lr == pytest.approx(r.prior["center"])  # lrkit's line search starts at the finder's LR
    assert r.best_lr is not None and r.best_value < 2.3  # better than an untrained model (log 10)
    assert all(t.state in ("complete", "pruned") for t in r.trials)
    assert r.run_equivalents <= 4 + r.prior["cost_steps"] / 60


def test_pbt_changes_the_lr_during_training(local_ray, tmp_path):
    from lrkit.tune import tune_ray

    r = tune_ray(digits, train_steps=100, num_samples=2, scheduler="pbt", perturbation_interval=2, eval_every=25,
                 finder=False, low=1e-4, high=1.0, storage_path=str(tmp_path))
    histories = [list(res.metrics_dataframe["lr"]) for res in r.study]
    assert any(len(set(h)) > 1 for h in histories)  # PBT moved an LR while a trial was running
    assert r.best_schedule is not None and r.best_schedule[-1][0] == 100
    assert math.isfinite(r.best_value)
