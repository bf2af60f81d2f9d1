"""A real training check: the finder's suggestion on the built-in digits MLP trains well."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

from lrkit.examples.digits import digits_task, train  # noqa: E402
from lrkit.integrations.torch.trainer import find_lr  # noqa: E402

pytestmark = pytest.mark.torch


def test_task_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = digits_task(seed=3), digits_task(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert len(a.train_loader.dataset) == 1437 and len(a.val_loader.dataset) == 360
    x = a.x_train.numpy()
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)  # standardised with training statistics
    r1, r2 = train(a, 1e-3, steps=15), train(b, 1e-3, steps=15)
    assert r1["train_losses"] == r2["train_losses"]
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        digits_task(batch_size=0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd', got 'lion'"):
        digits_task(optimizer="lion")
    task = digits_task()
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0"):
        train(task, 0, steps=5)
    with pytest.raises(ValueError, match="schedule must be None, 'constant', 'one_cycle'"):
        train(task, 1e-3, steps=5, schedule="triangle")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_suggestion_trains_well(optimizer):
    task = digits_task(optimizer=optimizer, seed=0)
    before = [p.detach().clone() for p in task.model.parameters()]
    res = find_lr(task.model, task.optimizer, task.loss_fn, task.train_loader, val_loader=task.val_loader,
                  num_iter=100, progress=False)  # default: verify candidates with short cold-start runs
    assert res.method.startswith("verified")
    assert res.details["verify_steps_used"] > 0
    assert res.details["range_test_steps"] in (len(res.lrs), len(res.lrs) + 1)
    assert all(torch.equal(p, q) for p, q in zip(task.model.parameters(), before))
    lr = res.suggestion
    assert res.lrs[0] < lr < res.lrs[-1]
    steps = 150
    out = train(task, lr, steps=steps)
    assert not out["diverged"]
    first, last = np.mean(out["train_losses"][:10]), np.mean(out["train_losses"][-10:])
    assert last < 0.3 * first  # the loss decreases clearly within a small budget
    assert out["val_accuracy"] > 0.9
    # and it is competitive with a small grid over 4 decades (within 3x of the best val loss)
    grid = [train(task, g, steps=steps)["val_loss"] for g in np.geomspace(1e-4, 1, 9)]
    best = min(v for v in grid if math.isfinite(v))
    assert out["val_loss"] < 3 * best, (lr, out["val_loss"], grid)
    # a 100x too small LR from the same start is clearly worse: the check has teeth
    assert train(task, lr / 100, steps=steps)["val_loss"] > 2 * out["val_loss"]


def test_train_with_schedule_callable():
    task = digits_task()
    seen = []

    def sched(step):
        seen.append(step)
        return 3e-3 * (1 - step / 20)

    out = train(task, 3e-3, steps=20, schedule=sched)
    assert seen == list(range(20)) and len(out["train_losses"]) == 20


def test_train_reports_divergence():
    out = train(digits_task(optimizer="sgd"), 1e4, steps=30)
    assert out["diverged"] and out["val_loss"] == math.inf


@pytest.mark.parametrize("schedule", ["one_cycle", "warmup_cosine"])
def test_train_with_lrkit_schedules(schedule):
    from lrkit import schedules as S

    task = digits_task()
    steps = 40
    expected = (S.one_cycle(max_lr=1e-2, total_steps=steps) if schedule == "one_cycle"
                else S.warmup(S.cosine(base_lr=1e-2, total_steps=steps - 4), warmup_steps=4))
    seen = []
    out_ref = train(task, 1e-2, steps=steps, schedule=lambda t: seen.append(expected(t)) or expected(t))
    out = train(task, 1e-2, steps=steps, schedule=schedule)
    assert out["train_losses"] == out_ref["train_losses"]  # the string builds exactly that schedule
    assert max(seen) == pytest.approx(1e-2) and seen[0] < 1e-2 / 2
