"""The JAX autopilot with Flax NNX, as NNX's users train: a stateful model (BatchNorm, Dropout) and
``nnx.Optimizer`` built on ``pilot.optimizer``, one ``nnx.jit`` step. The finder reads the model
through ``nnx.split``/``nnx.merge``; the schedule reaches the optimizer at every step, and a NaN is
rolled back into the model and the optimizer (``nnx.update``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
nnx = pytest.importorskip("flax.nnx", reason="Flax is not installed: pip install flax")
pytest.importorskip("sklearn")

import lrkit.jax as lj  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402

STEPS = 240


class Net(nnx.Module):
    def __init__(self, rngs):
        self.l1, self.bn = nnx.Linear(64, 64, rngs=rngs), nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
        self.drop, self.l2 = nnx.Dropout(0.1, rngs=rngs), nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target.astype("int32")
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 1400 - 31, 32)]
    return (batches * 8)[:STEPS], [(x[1400:], y[1400:])]


def xent(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch[0]), batch[1]).mean()


@nnx.jit
def train_step(model, optimizer, batch, poison):
    loss, grads = nnx.value_and_grad(xent)(model, batch)
    optimizer.update(model, jax.tree_util.tree_map(lambda g: g * poison, grads))
    return loss * poison


def functional(model):
    """``(params, rest, loss_fn)``: the finder's functional view of an NNX model."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, batch, train):
        m = nnx.merge(graphdef, params, rest, copy=True)
        m.train() if train else m.eval()
        return xent(m, batch), nnx.split(m, nnx.Param, ...)[2]

    return params, rest, loss_fn


def run(poison_at=None):
    batches, val = digits()
    model = Net(nnx.Rngs(0))
    params, rest, loss_fn = functional(model)
    pilot = lj.autopilot(loss_fn, params, optax.adamw, batches, val_batches=val, model_state=rest)
    optimizer = nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)
    pilot.init_nnx(model, optimizer)
    lrs = []
    for step, batch in enumerate(batches):
        lrs.append(float(optimizer.opt_state.hyperparams["learning_rate"][...]))
        model.train()
        loss = train_step(model, optimizer, batch, np.float32(math.nan if step == poison_at else 1.0))
        pilot.after_nnx_step(step, loss, model, optimizer)
    model.eval()
    return pilot, lrs, float(xent(model, val[0])), model


def test_the_schedule_reaches_the_nnx_optimizer_at_every_step():
    pilot, lrs, final, _ = run()
    assert lrs == pytest.approx([pilot.lr(s) for s in range(STEPS)], rel=1e-6)
    assert lrs[0] < lrs[STEPS // 4] and max(lrs) == pytest.approx(pilot.plan.peak_lr, rel=1e-6)  # warmup, peak
    assert pilot.events == [] and final < 0.5 and pilot.next_step == STEPS


def test_a_nan_is_rolled_back_into_the_model_and_the_optimizer():
    pilot, lrs, final, model = run(poison_at=120)
    assert [e.kind for e in pilot.events] == ["rollback"]
    weights = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    assert weights and all(np.isfinite(np.asarray(w)).all() for w in weights)
    assert math.isfinite(final) and final < 0.6


def test_an_optimizer_not_built_on_the_pilots_is_refused():
    batches, val = digits()
    model = Net(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pilot = lj.autopilot(lambda p, r, b, t: (xent(nnx.merge(graphdef, p, r, copy=True), b), r), params,
                         optax.adamw, batches[:60], model_state=rest, family="adamw")
    with pytest.raises(AutopilotError, match=r"nnx.Optimizer\(model, pilot.optimizer, wrt=nnx.Param\)"):
        pilot.init_nnx(model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param))


@pytest.mark.parametrize("every", [25, 0])
def test_a_network_that_dies_is_rolled_back_with_outputs_fn(every):
    # the functional test's unscaled wine at an LR that kills the ReLUs, here as an NNX model: the
    # outputs are measured on the step's batch through outputs_fn(params, rest, batch)
    from _wine import unscaled_wine
    from lrkit.collapse import COLLAPSED, sampled_spread

    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(13, 32, rngs=rngs), nnx.Linear(32, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    x, y = unscaled_wine()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)] * 20
    model = Mlp(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def outputs(params, rest, batch):
        return nnx.merge(graphdef, params, rest, copy=True)(batch[0])

    def loss_fn(params, rest, batch, train):
        return xent(nnx.merge(graphdef, params, rest, copy=True), batch), rest

    pilot = lj.autopilot(loss_fn, params, optax.adam, batches, val_batches=[(x[130:], y[130:])], model_state=rest,
                         peak_lr=3.0, outputs_fn=outputs, check_outputs_every=every)
    optimizer = nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)
    pilot.init_nnx(model, optimizer)
    for step, batch in enumerate(batches):
        loss = train_step(model, optimizer, batch, np.float32(1.0))
        pilot.after_nnx_step(step, loss, model, optimizer, batch=batch)
    died = [e for e in pilot.events if "network died" in e.message]
    spread = sampled_spread(model(x[130:]))
    if every:  # rolled back to a live state with a lower LR
        assert died and "lowered the LR" in died[0].message
        assert spread > COLLAPSED
    else:  # unmeasured, the same run ends dead
        assert not died and spread <= COLLAPSED


def test_multisteps_micro_batches_are_watched_as_one_step_per_update():
    # optax.MultiSteps(k=4) over micro-batches of 8: one step per update, the schedule advancing per update
    batches, val = digits()
    micro = [(x[i:i + 8], y[i:i + 8]) for x, y in batches for i in range(0, 32, 8)]
    model = Net(nnx.Rngs(0))
    params, rest, loss_fn = functional(model)
    pilot = lj.autopilot(loss_fn, params, lambda lr: optax.MultiSteps(optax.adamw(lr), 4), micro, val_batches=val,
                         model_state=rest, family="adamw")
    assert pilot.plan.train_steps == STEPS
    optimizer = nnx.Optimizer(model, pilot.optimizer, wrt=nnx.Param)
    pilot.init_nnx(model, optimizer)
    lrs = []
    for step, batch in enumerate(micro):
        lrs.append(float(optimizer.opt_state.hyperparams["learning_rate"][...]))
        model.train()
        loss = train_step(model, optimizer, batch, np.float32(1.0))
        pilot.after_nnx_step(step, loss, model, optimizer)
    assert pilot.next_step == STEPS and pilot.events == []
    assert lrs == pytest.approx([pilot.lr(s // 4) for s in range(4 * STEPS)], rel=1e-6)
    model.eval()
    assert float(xent(model, val[0])) < 0.5
