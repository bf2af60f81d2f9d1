"""Muon in Keras (``keras.optimizers.Muon``) and optax (``optax.contrib.muon``): one optimizer each,
recognised by lrkit.scaling (the AdamW-matched Keras update, Keller Jordan's scaling in optax) and
trained by the frameworks' autopilots with no LR given."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from lrkit import scaling


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target.astype("int64")
    return x[:640], y[:640], x[1400:], y[1400:]


def test_keras_muon_is_the_adamw_matched_family_and_flies_with_the_autopilot():
    keras = pytest.importorskip("keras")
    from lrkit.keras import AutopilotCallback

    assert scaling.optimizer_family(keras.optimizers.Muon()) == "muon_adamw"  # rms_rate=0.2 by default
    assert scaling.optimizer_family(keras.optimizers.Muon(rms_rate=None)) == "muon"
    x, y, xv, yv = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Muon(learning_rate=5.0),  # ignored
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = model.evaluate(xv, yv, verbose=0)
    cb = AutopilotCallback(x, y, batch_size=32, val_data=(xv, yv), restart_on_overfit=False)
    model.fit(x, y, batch_size=32, epochs=6, validation_data=(xv, yv), callbacks=[cb], verbose=0)
    assert cb.plan.family == "muon_adamw" and [e for e in cb.events if e.kind == "rollback"] == []
    assert model.evaluate(xv, yv, verbose=0) < 0.25 * start


def test_optax_muon_is_recognised_by_its_factory_and_flies_with_the_autopilot():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    contrib = pytest.importorskip("optax.contrib")
    import jax.numpy as jnp

    import lrkit.jax as lj

    assert scaling.optimizer_family(contrib.muon) == "muon"
    assert scaling.optimizer_family(functools.partial(contrib.muon, consistent_rms=0.2)) == "muon_adamw"
    x, y, xv, yv = _digits()

    def loss(p, batch):
        xb, yb = batch
        logits = jax.nn.relu(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w1": jax.random.normal(k1, (64, 32)) / 8, "b1": jnp.zeros(32),
              "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32), "b2": jnp.zeros(10)}
    order = np.random.default_rng(0).permutation(np.tile(np.arange(640), 8))
    batches = [(x[order[i:i + 32]], y[order[i:i + 32]]) for i in range(0, len(order), 32)]
    val = [(xv, yv)]
    start = float(loss(params, val[0]))
    pilot = lj.autopilot(loss, params, contrib.muon, batches, val_batches=val)
    assert pilot.plan.family == "muon"
    opt_state = pilot.init(params)
    grad = jax.jit(jax.value_and_grad(loss))
    for step, batch in enumerate(batches):
        value, g = grad(params, batch)
        updates, opt_state = pilot.optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, opt_state = pilot.after_step(step, value, params, opt_state)
    assert [e for e in pilot.events if e.kind == "rollback"] == []
    assert float(loss(params, val[0])) < 0.25 * start
