"""Train a digits classifier with JAX/optax without choosing a learning rate.

The autopilot runs the finder on your loss function and batches (your params are not touched),
injects the LR into ``optax.adamw`` and, after every step, returns the params and optimizer state
to go on with (the last good ones after a rollback) with the next step's LR set. Run::

    python examples/autopilot_jax.py            # 600 steps
    python examples/autopilot_jax.py --steps 150
"""
from __future__ import annotations

import argparse
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import lrkit.jax as lj


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (64, 64)) * 0.125, "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, 10)) * 0.125, "b2": jnp.zeros(10)}


def model(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def loss_fn(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(params, x), y).mean()


def outputs_fn(params, batch):  # the outputs, so that a network the LR kills is seen (and rolled back)
    return model(params, batch[0])


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the run")
    ap.add_argument("--report", metavar="DIR", help="write DIR/report.html (self-contained) at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), d.target.astype("int32")
    rng = np.random.default_rng(0)
    batches = []
    while len(batches) < args.steps:
        idx = rng.permutation(1400)
        batches += [(x[idx[i:i + 32]], y[idx[i:i + 32]]) for i in range(0, 1400 - 31, 32)]
    batches = batches[:args.steps]
    val = [(x[1400:], y[1400:])]
    params = init_params(jax.random.PRNGKey(0))

    pilot = lj.autopilot(loss_fn, params, optax.adamw, batches, val_batches=val,   # train_steps = len(batches)
                         outputs_fn=outputs_fn)
    tx = pilot.optimizer
    opt_state = pilot.init(params)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    every = max(1, args.steps // 10)
    for step, batch in enumerate(batches):
        loss, grads = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        val_loss = float(loss_fn(params, val[0])) if (step + 1) % every == 0 else None
        params, opt_state = pilot.after_step(step, loss, params, opt_state, val_loss=val_loss, batch=batch)
    final = float(loss_fn(params, val[0]))
    print(pilot.report())
    if args.report:  # the plan, the run as flown, every intervention
        from lrkit.report.autopilot_report import write_autopilot_report

        print(f"report: {write_autopilot_report(pilot, args.report, seed=0)}")
    print(f"final validation loss {final:.4f} after {args.steps} steps (+{pilot.plan.finder_cost_steps} finder steps)")
    return final


if __name__ == "__main__":
    main()
