"""A JAX model with state outside its params (Flax linen's BatchNorm ``batch_stats``), as Flax users
write it: the finder trains the running averages with the params, evaluates with them, restores
both; the autopilot's rollback puts back the averages the restored params were trained with."""
from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
nn = pytest.importorskip("flax.linen", reason="Flax is not installed: pip install flax")
pytest.importorskip("sklearn")
import jax.numpy as jnp  # noqa: E402

import lrkit.jax as lj  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402
from lrkit.finder.result import SCORED_BY_VALIDATION  # noqa: E402


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(64)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x))


NET = Net()


def loss_fn(params, state, batch, train):
    x, y = batch
    if train:
        logits, new_state = NET.apply({"params": params, **state}, x, train=True, mutable=list(state))
    else:
        logits, new_state = NET.apply({"params": params, **state}, x, train=False), state
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state


def outputs_fn(params, state, batch):
    return NET.apply({"params": params, **state}, batch[0], train=False)


def _digits(batch=32):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32") * 4.0 + 3.0  # an offset and scale BatchNorm takes out
    y = d.target.astype("int32")
    idx = np.random.default_rng(0).permutation(len(x))
    tr, va = idx[:1400], idx[1400:]
    batches = [(x[tr[i:i + batch]], y[tr[i:i + batch]]) for i in range(0, 1400 - batch + 1, batch)]
    return batches, [(x[va], y[va])]


def _init():
    v = NET.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)), train=False)
    return v["params"], {"batch_stats": v["batch_stats"]}


def train_at(loss_fn, params, state, batches, lr, steps, jit=jax.jit):
    """A run of ``steps`` at ``lr`` (Adam) written as users write one, keeping the model state; the
    final ``(params, state)``. ``jit``: ``jax.jit``, or Equinox's ``eqx.filter_jit``."""
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    step = jit(jax.value_and_grad(lambda p, s, b: loss_fn(p, s, b, True), has_aux=True))
    for i in range(steps):
        (_, state), g = step(params, state, batches[i % len(batches)])
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def fly_with_a_nan(pilot, loss_fn, params, state, batches, stat, jit=jax.jit, at=60):
    """The autopilot's loop as users write it, the weights and the model state's float arrays poisoned
    with NaN at step ``at``: checks that the guard rolled back to a state the run had (not a copy)
    whose ``stat(state)`` is finite; returns the final ``(params, state)``."""
    opt_state = pilot.init(params, model_state=state)
    step = jit(jax.value_and_grad(lambda p, s, b: loss_fn(p, s, b, True), has_aux=True))
    seen = {}
    for i in range(pilot.plan.train_steps):
        batch = batches[i % len(batches)]
        (loss, state), g = step(params, state, batch)
        updates, opt_state = pilot.optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        seen[id(state)] = state
        if i == at:  # a NaN mid-run: weights and running statistics both poisoned
            params = jax.tree_util.tree_map(lambda a: a * jnp.nan, params)
            state = jax.tree_util.tree_map(lambda a: a * jnp.nan if a.dtype.kind == "f" else a, state)
            loss = jnp.nan
        params, opt_state, state = pilot.after_step(i, loss, params, opt_state, batch=batch, model_state=state)
        if i == at:
            assert [e.kind for e in pilot.events] == ["rollback"]
            assert id(state) in seen and seen[id(state)] is state  # a state the run had, not a copy
            assert math.isfinite(stat(state))
    return params, state


def _mean_stats(state):
    return float(np.mean(np.abs(np.asarray(state["batch_stats"]["BatchNorm_0"]["mean"]))))


def test_the_trainer_steps_the_running_averages_evaluates_with_them_and_restores_them():
    batches, val = _digits()
    params, state = _init()
    t = lj.OptaxTrainer(loss_fn, params, optax.adam, batches, val_batches=val, model_state=state)
    snap = t.snapshot()
    assert _mean_stats(t.model_state) == 0.0
    for _ in range(30):
        t.step(1e-2)
    assert _mean_stats(t.model_state) > 0.5  # the averages follow the batches (inputs offset by 3)
    # evaluation runs the model with train=False on the trainer's own running averages
    expected = float(loss_fn(t.params, t.model_state, val[0], False)[0])
    assert t.evaluate() == pytest.approx(expected, rel=1e-5)
    assert t.evaluate() < 0.5 * math.log(10)
    t.restore(snap)
    assert t.model_state is state and t.params is params


def test_find_lr_with_batchnorm_state_suggests_an_lr_that_trains_and_leaves_the_state_as_it_was():
    batches, val = _digits()
    params, state = _init()
    res = lj.find_lr(loss_fn, params, optax.adam, batches, val_batches=val, model_state=state,
                     outputs_fn=outputs_fn, train_steps=400, progress=False)
    assert res.details["score"] == SCORED_BY_VALIDATION  # the candidates, in eval mode
    assert _mean_stats(state) == 0.0  # the caller's state untouched (nothing donated or mutated)
    # a run at the suggestion, keeping the state as Flax users do, ends trained in eval mode (from 2.3
    # untrained; how well moves with the machine's floating point: the 13-step candidates are noisy, and
    # one machine's suggestion ended at 0.49 where another's ended under 0.25 -- the finder's quality is
    # measured in benchmarks/, not here)
    p, s = train_at(loss_fn, params, state, batches, res.suggestion, 400)
    assert float(loss_fn(p, s, val[0], False)[0]) < 0.7


def test_the_autopilot_rolls_back_params_and_running_averages_together():
    batches, val = _digits()
    params, state = _init()
    pilot = lj.autopilot(loss_fn, params, optax.adam, batches, val_batches=val, model_state=state,
                         outputs_fn=outputs_fn, epochs=3)
    params, state = fly_with_a_nan(pilot, loss_fn, params, state, batches, _mean_stats)
    assert float(loss_fn(params, state, val[0], False)[0]) < 0.3


def test_model_state_misuse_is_named():
    batches, val = _digits()
    params, state = _init()
    with pytest.raises(ValueError, match="has_aux=True and model_state"):
        lj.OptaxTrainer(loss_fn, params, optax.adam, batches, model_state=state, has_aux=True)

    def no_state(p, s, b, train):
        return loss_fn(p, s, b, train)[0]

    with pytest.raises(ValueError, match=r"must return \(loss, new_model_state\)"):
        lj.OptaxTrainer(no_state, params, optax.adam, batches, model_state=state).step(1e-3)

    def other_state(p, s, b, train):
        return loss_fn(p, s, b, train)[0], {"other": jnp.zeros(1)}

    with pytest.raises(ValueError, match="another structure"):
        lj.OptaxTrainer(other_state, params, optax.adam, batches, model_state=state).step(1e-3)
    pilot = lj.autopilot(loss_fn, params, optax.adam, batches, model_state=state, epochs=3, peak_lr=1e-3)
    opt_state = pilot.init(params)  # started without the state ...
    with pytest.raises(AutopilotError, match="pass it to init"):
        for i in range(200):  # ... then given it: the first rollback cannot restore one
            bad = jax.tree_util.tree_map(lambda a: a * jnp.nan, params)
            pilot.after_step(i, jnp.nan, bad, opt_state, model_state=state)


def test_tune_optax_trains_every_trial_with_its_running_averages():
    from lrkit.tune import tune_optax

    batches, val = _digits()

    def target():
        params, state = _init()
        return {"loss_fn": loss_fn, "params": params, "optimizer": optax.adam, "batches": batches,
                "val_batches": val, "model_state": state}

    r = tune_optax(target, train_steps=80, n_trials=2, strategy="grid", values=[1e-2, 1e-6])
    by_lr = {t.lr: t.value for t in r.trials}
    # scored in eval mode on the averages each trial trained: 1e-2 learns, 1e-6 stays near chance
    assert r.best_lr == pytest.approx(1e-2) and by_lr[1e-2] < 0.5 < by_lr[1e-6]


def test_flax_nnx_split_state_batchnorm_and_dropout_rngs_thread_through_the_finder():
    nnx = pytest.importorskip("flax.nnx")

    class NnxNet(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.bn = nnx.Linear(64, 64, rngs=rngs), nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
            self.drop, self.l2 = nnx.Dropout(0.1, rngs=rngs), nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))

    graphdef, params, rest = nnx.split(NnxNet(nnx.Rngs(0)), nnx.Param, ...)

    def nnx_loss(params, rest, batch, train):
        m = nnx.merge(graphdef, params, rest, copy=True)  # copy: Flax >= 0.11.2 under jax.grad
        m.train() if train else m.eval()
        loss = optax.softmax_cross_entropy_with_integer_labels(m(batch[0]), batch[1]).mean()
        return loss, nnx.split(m, nnx.Param, ...)[2]

    def rng_count(state):
        return int(np.asarray(state["drop"]["rngs"]["count"][...]))

    batches, val = _digits()
    t = lj.OptaxTrainer(nnx_loss, params, optax.adam, batches, val_batches=val, model_state=rest)
    snap = t.snapshot()
    for _ in range(5):
        t.step(1e-2)
    assert rng_count(t.model_state) == rng_count(rest) + 5  # each training step drew a dropout key
    t.evaluate()
    assert rng_count(t.model_state) == rng_count(rest) + 5  # evaluation (eval mode) draws none, keeps none
    t.restore(snap)
    assert t.model_state is rest
    res = lj.find_lr(nnx_loss, params, optax.adam, batches, val_batches=val, model_state=rest, train_steps=400,
                     progress=False)
    assert res.details["score"] == SCORED_BY_VALIDATION and 1e-4 < res.suggestion < 1.0


def test_lrkit_find_takes_a_flax_target_with_its_model_state(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    f = tmp_path / "flax_task.py"
    here = Path(__file__).resolve().parent
    f.write_text(f"""
import sys

import optax

sys.path.insert(0, {str(here)!r})
from test_jax_model_state import _digits, _init, loss_fn


def task():  # the model, loss and data of this file's tests, as a task file for the CLI
    batches, val = _digits()
    params, state = _init()
    return {{"framework": "optax", "loss_fn": loss_fn, "params": params, "optimizer": optax.adam,
            "model_state": state, "val_batches": val, "batches": batches}}
""")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "lrkit", "find", f"{f}:task", "--json", "--train-steps", "300"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert payload["details"]["family"] == "adam" and payload["details"]["score"] == SCORED_BY_VALIDATION
    assert 1e-5 < payload["suggestion"] < 1.0
