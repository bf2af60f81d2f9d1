"""An Equinox model with BatchNorm (``eqx.nn.State``), written as Equinox users write it: the model
partitioned into its arrays and the rest, a loss that combines them and maps the model over the batch
with ``axis_name="batch"``, ``eqx.nn.inference_mode`` for evaluation. The same ``model_state=``
protocol as Flax's serves it: the finder trains the running statistics with the weights and gives
both back as they went in; the autopilot's rollback restores the statistics with the weights.

BatchNorm in ``mode="batch"``, the one Equinox recommends (its legacy default ``"ema"`` normalises the
training batches with the lagging running statistics too: on this task a 129-step autopilot plan
then peaks 8x below the best peak, against 2-3x in ``"batch"`` mode -- its 5-step candidates see the
lag, which a full run outgrows)."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
eqx = pytest.importorskip("equinox", reason="Equinox is not installed: pip install equinox")
pytest.importorskip("sklearn")

import lrkit.jax as lj  # noqa: E402
from lrkit.finder.result import SCORED_BY_VALIDATION  # noqa: E402
from test_jax_model_state import _digits, fly_with_a_nan, train_at  # noqa: E402


class Net(eqx.Module):
    l1: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(64, 64, key=k1)
        self.bn = eqx.nn.BatchNorm(64, axis_name="batch", momentum=0.9, mode="batch")
        self.l2 = eqx.nn.Linear(64, 10, key=k2)

    def __call__(self, x, state):
        x, state = self.bn(self.l1(x), state)
        return self.l2(jax.nn.relu(x)), state


MODEL, STATE = eqx.nn.make_with_state(Net)(jax.random.PRNGKey(0))
PARAMS, STATIC = eqx.partition(MODEL, eqx.is_inexact_array)


def loss_fn(params, state, batch, train):
    model = eqx.combine(params, STATIC)
    if not train:
        model = eqx.nn.inference_mode(model)
    x, y = batch
    logits, new_state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (new_state if train else state)


def _running_mean(state):
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(state) if np.asarray(a).dtype.kind == "f"]
    return float(np.mean([np.mean(np.abs(a)) for a in leaves if a.shape == (64,)]))


def test_the_finder_trains_the_equinox_statistics_with_the_weights_and_gives_both_back():
    batches, val = _digits()
    before = _running_mean(STATE)
    t = lj.OptaxTrainer(loss_fn, PARAMS, optax.adam, batches, val_batches=val, model_state=STATE)
    snap = t.snapshot()
    for _ in range(20):
        t.step(1e-2)
    assert abs(_running_mean(t.model_state) - before) > 0.1  # the statistics followed the batches
    t.restore(snap)
    assert t.model_state is STATE and t.params is PARAMS

    res = lj.find_lr(loss_fn, PARAMS, optax.adam, batches, val_batches=val, model_state=STATE, train_steps=400,
                     progress=False)
    assert res.details["score"] == SCORED_BY_VALIDATION  # the candidates scored in inference mode
    assert _running_mean(STATE) == before
    # a run at the suggestion, as an Equinox user writes one, ends well trained in inference mode
    p, s = train_at(loss_fn, PARAMS, STATE, batches, res.suggestion, 400, jit=eqx.filter_jit)
    assert float(loss_fn(p, s, val[0], False)[0]) < 0.3


def test_the_autopilot_rolls_back_equinox_weights_and_statistics_together():
    batches, val = _digits()
    params, state = PARAMS, STATE
    pilot = lj.autopilot(loss_fn, params, optax.adam, batches, val_batches=val, model_state=state, epochs=3)
    params, state = fly_with_a_nan(pilot, loss_fn, params, state, batches, _running_mean, jit=eqx.filter_jit)
    assert float(loss_fn(params, state, val[0], False)[0]) < 0.35
