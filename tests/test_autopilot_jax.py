"""lrkit.jax.autopilot: injected LR, functional rollback, resume, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import lrkit.integrations.jax.trainer as jax_trainer  # noqa: E402
import lrkit.jax as lj  # noqa: E402
from lrkit.autopilot import AutopilotError  # noqa: E402


def _loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _setup(n_steps=150):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 1)).astype("float32")
    xs = rng.normal(size=(n_steps * 16 + 256, 8)).astype("float32")
    ys = (xs @ w + 0.1 * rng.normal(size=(len(xs), 1))).astype("float32")
    batches = [(xs[i * 16:(i + 1) * 16], ys[i * 16:(i + 1) * 16]) for i in range(n_steps)]
    val = [(xs[-256:], ys[-256:])]
    params = {"w": jnp.zeros((8, 1)), "b": jnp.zeros(1)}
    return params, batches, val


def _run(pilot, params, opt_state, batches, start=0, nan_at=None, trace=None):
    grad = jax.jit(jax.value_and_grad(_loss))
    for step in range(start, len(batches)):
        if trace is not None:
            trace.append(float(opt_state.hyperparams["learning_rate"]))
        loss, g = grad(params, batches[step])
        updates, opt_state = pilot.optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        if step == nan_at:
            params = jax.tree_util.tree_map(lambda p: p * jnp.nan, params)
            loss = jnp.nan
        params, opt_state = pilot.after_step(step, loss, params, opt_state)
    return params, opt_state


def test_trains_with_the_injected_lr_and_rolls_back_a_nan():
    params, batches, val = _setup()
    pilot = lj.autopilot(_loss, params, optax.adam, batches, val_batches=val)
    assert pilot.plan.train_steps == 150 and pilot.plan.family == "adam"
    opt_state = pilot.init(params)
    assert float(opt_state.hyperparams["learning_rate"]) == pytest.approx(pilot.plan.schedule(0), rel=1e-6)
    trace = []
    params, _ = _run(pilot, params, opt_state, batches, nan_at=100, trace=trace)
    assert [e.kind for e in pilot.events] == ["rollback"] and "bad batch" in pilot.events[0].message
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree_util.tree_leaves(params))
    assert float(_loss(params, val[0])) < 0.05
    # the plan's schedule up to the rollback; after it, rewound to where the restored state was
    # trained (the LR kept: a first problem)
    rb = pilot.events[0].data
    np.testing.assert_allclose(trace[:101], pilot.plan.schedule(np.arange(101)), rtol=1e-5)
    np.testing.assert_allclose(trace, [pilot.lr(t) for t in range(150)], rtol=1e-5)
    assert pilot.pilot.position(101) == rb["restored_to"] and trace[101] > trace[100]


def test_resume_runs_no_finder_and_continues_exactly(monkeypatch):
    params0, batches, val = _setup(120)
    pilot = lj.autopilot(_loss, params0, optax.sgd, batches, val_batches=val)
    at_start = pilot.state_dict()
    full = []
    p_full, _ = _run(pilot, params0, pilot.init(params0), batches, trace=full)

    p2 = lj.autopilot(_loss, params0, optax.sgd, batches, resume=at_start)
    trace = []
    params, opt_state = _run(p2, params0, p2.init(params0), batches[:60], trace=trace)
    saved = json.loads(json.dumps(p2.state_dict()))

    def no_finder(*a, **k):
        raise AssertionError("the finder ran again on resume")

    monkeypatch.setattr(jax_trainer, "find_lr_optax", no_finder)
    p3 = lj.autopilot(_loss, params0, optax.sgd, batches, resume=saved)
    assert p3.next_step == 60
    params, _ = _run(p3, params, opt_state, batches, start=60, trace=trace)
    assert trace == pytest.approx(full, rel=1e-7)
    np.testing.assert_allclose(params["w"], p_full["w"], rtol=1e-6)


def test_refuses_learning_rate_free_factories_and_unknown_length():
    params, batches, _ = _setup(40)
    with pytest.raises(AutopilotError, match="learning-rate-free"):
        lj.autopilot(_loss, params, optax.contrib.prodigy, batches)
    with pytest.raises(AutopilotError, match="Schedule-Free"):
        lj.autopilot(_loss, params, optax.contrib.schedule_free_adamw, batches)
    with pytest.raises(AutopilotError, match="pass train_steps=N"):
        lj.autopilot(_loss, params, optax.adam, iter(batches))
    with pytest.raises(AutopilotError, match="optax factory"):
        lj.autopilot(_loss, params, optax.adam(1e-3), batches)
    with pytest.raises(AutopilotError, match="epochs=2 was given but the data has no len"):
        lj.autopilot(_loss, params, optax.adam, iter(batches), epochs=2)
    with pytest.raises(AutopilotError, match="epochs must be a whole number >= 1, got 0"):
        lj.autopilot(_loss, params, optax.adam, batches, epochs=0)



def test_the_family_follows_a_partials_momentum_or_is_named():
    """``functools.partial(optax.sgd, momentum=0.9)`` is SGD with momentum (its name alone says
    "sgd": the plan was made for plain SGD); a lambda or a chain says nothing: ``family=`` names it
    (finder and plan), and a bad or learning-rate-free one is refused."""
    import functools

    params, batches, _ = _setup(60)
    assert lj.autopilot(_loss, params, functools.partial(optax.sgd, momentum=0.9), batches).plan.family == \
        "sgd_momentum"
    assert lj.autopilot(_loss, params, optax.sgd, batches).plan.family == "sgd"
    chain = lambda learning_rate: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate))  # noqa: E731
    with pytest.warns(UserWarning, match="family of <lambda> is unknown"):
        assert lj.autopilot(_loss, params, chain, batches).plan.family == "unknown"
    named = lj.autopilot(_loss, params, chain, batches, family="adamw")
    assert named.plan.family == named.finder.details["family"] == "adamw"
    with pytest.raises(AutopilotError, match="family must be None .* got 'adamm'"):
        lj.autopilot(_loss, params, chain, batches, family="adamm")
    with pytest.raises(AutopilotError, match="learning-rate-free"):
        lj.autopilot(_loss, params, chain, batches, family="lr_free")

def test_epochs_count_passes_over_the_batches_as_the_torch_autopilot_does():
    params, batches, _ = _setup(40)
    assert lj.autopilot(_loss, params, optax.adam, batches, epochs=3).plan.train_steps == 3 * len(batches)
    assert lj.autopilot(_loss, params, optax.adam, batches, train_steps=70, epochs=3).plan.train_steps == 70


def test_an_output_spread_the_user_reports_reaches_the_guard():
    from lrkit.collapse import output_spread

    params, batches, val = _setup()
    pilot = lj.autopilot(_loss, params, optax.adam, batches, val_batches=val, restart_on_overfit=False)
    assert pilot.pilot.restart_on_overfit is False   # passed through (this test reports no validation)
    opt_state = pilot.init(params)
    grad = jax.jit(jax.value_and_grad(_loss))
    rolled_at = None
    for step in range(len(batches)):
        loss, g = grad(params, batches[step])
        updates, opt_state = pilot.optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = None
        if step % 25 == 0:
            x = val[0][0]
            # a fault from step 50 on: the model answers every input with the same output
            outputs = np.asarray(x @ params["w"] + params["b"]) if step < 50 or rolled_at else np.ones((len(x), 1))
            metrics = {"output_spread": output_spread(outputs)}
        params, opt_state = pilot.after_step(step, loss, params, opt_state, metrics=metrics)
        if pilot.events and rolled_at is None:
            rolled_at = step
    died = [e for e in pilot.events if "network died" in e.message]
    assert died and rolled_at == 75  # the second collapsed reading
    assert died[0].data["restored_to"] <= 25  # a state from no later than the last live reading


def _mlp(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def _xent(params, batch):
    x, y = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_mlp(params, x), y))


def _wine_mlp():
    from _wine import unscaled_wine

    x, y = unscaled_wine()  # an LR too high kills the ReLUs in a few steps
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(13, 32)) / np.sqrt(13), dtype=jnp.float32),
              "b1": jnp.zeros(32), "w2": jnp.asarray(rng.normal(size=(32, 3)) / np.sqrt(32), dtype=jnp.float32),
              "b2": jnp.zeros(3)}
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)] * 20  # 8 per epoch, 20 epochs
    return params, batches, [(x[130:], y[130:])]


@pytest.mark.parametrize("every", [25, 0])
def test_a_network_that_dies_is_rolled_back(every):
    from lrkit.collapse import COLLAPSED, sampled_spread

    params, batches, val = _wine_mlp()
    pilot = lj.autopilot(_xent, params, optax.adam, batches, val_batches=val, peak_lr=3.0,
                         outputs_fn=lambda p, b: _mlp(p, b[0]), check_outputs_every=every)
    opt_state = pilot.init(params)
    grad = jax.jit(jax.value_and_grad(_xent))
    for step, batch in enumerate(batches):
        loss, g = grad(params, batch)
        updates, opt_state = pilot.optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        params, opt_state = pilot.after_step(step, loss, params, opt_state, batch=batch)
    died = [e for e in pilot.events if "network died" in e.message]
    spread = sampled_spread(_mlp(params, val[0][0]))
    if every:  # rolled back to a live state with a lower LR
        assert died and "lowered the LR" in died[0].message
        assert spread > COLLAPSED
    else:  # unmeasured, the same run ends dead
        assert not died and spread <= COLLAPSED


def test_outputs_fn_without_batches_says_so_once(caplog):
    params, batches, val = _wine_mlp()
    pilot = lj.autopilot(_xent, params, optax.adam, batches[:40], val_batches=val,
                         outputs_fn=lambda p, b: _mlp(p, b[0]))
    opt_state = pilot.init(params)
    with caplog.at_level("WARNING", logger="lrkit.autopilot"):
        for step in range(3):
            params, opt_state = pilot.after_step(step, 1.0, params, opt_state)
    assert sum("no batch= came with the step" in r.getMessage() for r in caplog.records) == 1


def test_bad_outputs_arguments_are_named():
    params, batches, val = _wine_mlp()
    with pytest.raises(ValueError, match="check_outputs_every must be an int >= 0"):
        lj.autopilot(_xent, params, optax.adam, batches, check_outputs_every=-1)
    with pytest.raises(AutopilotError, match="outputs_fn must be None or callable"):
        lj.autopilot(_xent, params, optax.adam, batches, outputs_fn=3)


def test_disk_snapshots_roll_back_as_references_do_and_go_when_closed(tmp_path):
    """storage="disk" pickles the (device) arrays to files: the same rollback, the same run."""
    import os

    params, batches, val = _setup()
    finals = {}
    for storage in ("memory", "disk"):
        where = {"storage_dir": tmp_path} if storage == "disk" else {}
        pilot = lj.autopilot(_loss, params, optax.adam, batches, val_batches=val, storage=storage, **where)
        out, _ = _run(pilot, params, pilot.init(params), batches, nan_at=100)
        if storage == "disk":
            assert any(n.endswith(".pkl") for n in os.listdir(pilot.pilot.guard.storage_path))
        pilot.close()
        finals[storage] = ([e.step for e in pilot.events if e.kind == "rollback"], out)
    assert finals["memory"][0] == finals["disk"][0] == [100]
    for a, b in zip(jax.tree_util.tree_leaves(finals["memory"][1]), jax.tree_util.tree_leaves(finals["disk"][1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.listdir(tmp_path) == []
    with pytest.raises(AutopilotError, match="storage must be 'memory' or 'disk'"):
        lj.autopilot(_loss, params, optax.adam, batches, storage="tmp")
