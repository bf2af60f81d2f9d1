"""Gradient accumulation in optax (``optax.MultiSteps``), as its users write it: the finder, the
autopilot and tune count one step per optimizer update (k micro-batches), as they do for PyTorch's
``accumulation_steps``. A run on k micro-batches per update is the run on their concatenation."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
pytest.importorskip("sklearn")
import jax.numpy as jnp  # noqa: E402

import lrkit.jax as lj  # noqa: E402
from lrkit.integrations.jax import accumulation, inject  # noqa: E402
from lrkit.integrations.jax.accumulation import micro_batches_per_update, update_completed  # noqa: E402

K = 4
MICRO = 8


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target.astype("int32")


def init_params(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"w1": jax.random.normal(k1, (64, 32)) * 0.125, "b1": jnp.zeros(32),
            "w2": jax.random.normal(k2, (32, 10)) * 0.125, "b2": jnp.zeros(10)}


def model(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(params, batch[0]), batch[1]).mean()


def micro_and_big(n_big):
    """``n_big`` batches of K * MICRO examples, and the same examples as K micro-batches each, in order."""
    x, y = _digits()
    rng = np.random.default_rng(0)
    big, micro = [], []
    while len(big) < n_big:
        idx = rng.permutation(1400)
        for i in range(0, 1400 - K * MICRO + 1, K * MICRO):
            if len(big) == n_big:
                break
            sel = idx[i:i + K * MICRO]
            big.append((x[sel], y[sel]))
            micro += [(x[sel[j:j + MICRO]], y[sel[j:j + MICRO]]) for j in range(0, K * MICRO, MICRO)]
    return micro, big, [(x[1400:], y[1400:])]


def accumulated(lr):
    return optax.MultiSteps(optax.adam(lr), every_k_schedule=K)


@pytest.mark.parametrize("module", [accumulation, inject], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_module_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_micro_batches_per_update_reads_the_schedule_and_leaves_nothing_behind():
    params = {"w": jnp.zeros(3)}
    assert micro_batches_per_update(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=5), params) == 5
    assert micro_batches_per_update(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=lambda step: 2), params) == 2
    assert micro_batches_per_update(optax.adam(0.1), params) == 1
    assert float(params["w"].sum()) == 0.0


def test_update_completed_follows_the_micro_steps():
    tx = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=3)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    seen = []
    for _ in range(6):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        seen.append(update_completed(state))
    assert seen == [False, False, True, False, False, True]
    assert update_completed(optax.adam(0.1).init(params))  # no accumulation: every call updates


def test_one_trainer_step_is_k_micro_batches_and_equals_the_step_on_their_concatenation():
    micro, big, _ = micro_and_big(3)
    params = init_params()
    acc = lj.OptaxTrainer(loss_fn, params, accumulated, micro)
    plain = lj.OptaxTrainer(loss_fn, params, optax.adam, big)
    assert acc.micro_batches == K and plain.micro_batches == 1
    for lr in (1e-3, 1e-2, 3e-2):
        np.testing.assert_allclose(acc.step(lr), plain.step(lr), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(acc.params), jax.tree_util.tree_leaves(plain.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
    assert acc._position == 3 * K
    assert acc.data_shape()["steps_per_epoch"] == len(micro) / K
    assert acc.data_shape()["examples"] == len(micro) * MICRO


def test_an_accumulating_transformation_is_accepted_and_its_family_read():
    tx = optax.MultiSteps(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), every_k_schedule=K)
    micro, _, _ = micro_and_big(2)
    trainer = lj.OptaxTrainer(loss_fn, init_params(), tx, micro)
    assert trainer.family == "adam" and trainer.micro_batches == K
    snap = trainer.snapshot()
    trainer.step(1e-2)
    assert trainer._position == K
    trainer.restore(snap)
    assert trainer._position == 0


def test_find_lr_with_multisteps_answers_as_on_the_concatenated_batches():
    micro, big, val = micro_and_big(300)
    params = init_params()
    before = [np.asarray(leaf).copy() for leaf in jax.tree_util.tree_leaves(params)]
    acc = lj.find_lr(loss_fn, params, accumulated, micro, val_batches=val, train_steps=300, family="adam")
    plain = lj.find_lr(loss_fn, params, optax.adam, big, val_batches=val, train_steps=300, family="adam")
    assert acc.batch_size == K * MICRO == plain.batch_size
    assert acc.details["run_shape"] == pytest.approx(plain.details["run_shape"])
    assert abs(math.log10(acc.suggestion / plain.suggestion)) < 0.05
    assert acc.details["cost_steps"] == plain.details["cost_steps"]
    for a, b in zip(before, jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def _run(pilot, params, batches, val, *, poison_at=None, every=20 * K):
    tx = pilot.optimizer
    state = pilot.init(params)
    grad = jax.jit(jax.value_and_grad(loss_fn))
    update = jax.jit(tx.update)
    boundaries = []
    for i, batch in enumerate(batches):
        loss, grads = grad(params, batch)
        if i == poison_at:
            grads = jax.tree_util.tree_map(lambda g: g * jnp.nan, grads)
            loss = jnp.nan
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        val_loss = float(loss_fn(params, val[0])) if (i + 1) % every == 0 else None
        params, state = pilot.after_step(i, loss, params, state, val_loss=val_loss, batch=batch)
        boundaries.append(pilot.next_step)
    return params, state, boundaries


def test_autopilot_counts_updates_and_trains_as_on_the_concatenated_batches():
    micro, big, val = micro_and_big(200)
    params = init_params()
    acc = lj.autopilot(loss_fn, params, accumulated, micro, val_batches=val, family="adam")
    plain = lj.autopilot(loss_fn, params, optax.adam, big, val_batches=val, family="adam")
    assert acc.plan.train_steps == plain.plan.train_steps == 200  # len(micro) // K updates
    assert acc.plan.peak_lr == pytest.approx(plain.plan.peak_lr, rel=0.01)
    p_acc, s_acc, steps = _run(acc, params, micro, val)
    assert steps[:2 * K] == [0, 0, 0, 1, 1, 1, 1, 2]  # the step counter moves once per update
    assert acc.next_step == 200 and int(s_acc.inner_state.gradient_step) == 200
    p_plain, _, _ = _run(plain, params, big, val, every=20)
    final, reference = float(loss_fn(p_acc, val[0])), float(loss_fn(p_plain, val[0]))
    assert final < 0.3 * math.log(10) and final == pytest.approx(reference, rel=0.01)


def test_autopilot_rolls_back_a_nan_at_the_update_boundary():
    micro, _, val = micro_and_big(120)
    params = init_params()
    pilot = lj.autopilot(loss_fn, params, accumulated, micro, val_batches=val, family="adam")
    poison = 70 * K + 1  # the second micro-batch of update 70
    p, state, steps = _run(pilot, params, micro, val, poison_at=poison)
    rollbacks = [e for e in pilot.events if e.kind == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0].step == 70
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(p))
    assert int(state.inner_state.mini_step) == 0
    assert math.isfinite(float(loss_fn(p, val[0])))


def test_autopilot_resumes_an_accumulating_run_on_the_same_update():
    micro, _, val = micro_and_big(60)
    params = init_params()
    pilot = lj.autopilot(loss_fn, params, accumulated, micro, val_batches=val, family="adam")
    p, state, _ = _run(pilot, params, micro[:30 * K], val)
    saved = pilot.state_dict()
    assert saved["next_step"] == 30
    again = lj.autopilot(loss_fn, params, accumulated, micro, val_batches=val, family="adam", resume=saved)
    assert again.next_step == 30 and again.finder is None
    assert again.lr(30) == pytest.approx(pilot.lr(30))


def test_tune_optax_trains_every_trial_in_updates_of_k_micro_batches():
    """tune's optax convenience trains each trial with the same trainer: a trial of N steps is N
    updates, and on micro-batches it scores as on their concatenation."""
    from lrkit.tune import tune_optax

    micro, big, val = micro_and_big(40)
    values = [1e-4, 3e-3, 3e-1]

    def target(batches, factory):
        return lambda: {"loss_fn": loss_fn, "params": init_params(), "optimizer": factory, "batches": batches,
                        "val_batches": val}

    acc = tune_optax(target(micro, accumulated), train_steps=40, n_trials=3, strategy="grid", values=values)
    plain = tune_optax(target(big, optax.adam), train_steps=40, n_trials=3, strategy="grid", values=values)
    by_lr = lambda r: {round(t.lr, 6): t.value for t in r.trials}  # noqa: E731
    assert by_lr(acc) == pytest.approx(by_lr(plain), rel=1e-3)
    assert acc.best_lr == pytest.approx(plain.best_lr)
