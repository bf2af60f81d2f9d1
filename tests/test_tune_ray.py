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


def test_pbt_changes_the_lr_during_training_and_reports_each_trials_own_history(local_ray, tmp_path):
    # Two trials, reports at steps 25/50/75/100, a perturbation every 2 reports, in step (synch):
    # at step 50 the worse trial takes the better one's weights (and history) and goes on at its LR
    # x0.8 or x1.2; the final report is never exploited, so each trial ends as its own run.
    # Under load Ray (2.60) has been seen to end the exploited trial after its step-75 report, done
    # False and no error (CI, one run in ~40): a trial cut short is reported as such, never padded.
    from lrkit.tune._ray import lr_history

    r = tune_ray_pbt(tmp_path)
    histories = [lr_history(res) for res in r.study]
    assert all(h and len(h) >= 2 and [s for s, _ in h] == [25 * (i + 1) for i in range(len(h))]
               for h in histories), histories
    kept = [h for h in histories if len({lr for _, lr in h}) == 1]
    changed = [h for h in histories if len({lr for _, lr in h}) > 1]
    assert len(kept) == 1 and len(changed) == 1, histories
    (k,), (c,) = kept, changed
    assert c[:2] == k[:2]  # the exploited trial carries the better trial's first half
    assert c[2][1] / k[1][1] in (pytest.approx(0.8), pytest.approx(1.2)) and {lr for _, lr in c[2:]} == {c[2][1]}
    finished = [h for h in histories if h[-1][0] == 100]
    assert finished and r.best_schedule in finished
    assert [t.state for t in r.trials] == ["complete" if h[-1][0] == 100 else "pruned" for h in histories]
    assert math.isfinite(r.best_value)


def tune_ray_pbt(tmp_path):
    from lrkit.tune import tune_ray

    return tune_ray(digits, train_steps=100, num_samples=2, scheduler="pbt", perturbation_interval=2, eval_every=25,
                    finder=False, low=1e-4, high=1e-2, storage_path=str(tmp_path))
