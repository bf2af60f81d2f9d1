"""Flax (linen) with BatchNorm: the autopilot finds the LR, plans the schedule and guards the run, with
the running averages (``batch_stats``) passed as ``model_state``.

Run: python examples/flax_batchnorm.py   (LRKIT_EXAMPLE_SMALL=1 for a short version; needs ``pip install flax``)
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrkit.jax as lj

from _common import BATCH, EPOCHS, digits


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(128)(x)))
        return nn.Dense(10)(x)


net = Net()


def loss_fn(params, state, batch, train):
    """Training steps (train=True) update the running averages; evaluations use them."""
    x, y = batch
    if train:
        logits, state = net.apply({"params": params, **state}, x, train=True, mutable=list(state))
    else:
        logits = net.apply({"params": params, **state}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


xt, yt, xv, yv = digits()
yt, yv = yt.astype(np.int32), yv.astype(np.int32)
batches = [(xt[i:i + BATCH], yt[i:i + BATCH]) for i in range(0, len(xt) - BATCH + 1, BATCH)]
variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, xt.shape[1])), train=False)
params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

# 1. the finder (at most 30% of the run) and the plan: no LR given
pilot = lj.autopilot(loss_fn, params, optax.adamw, batches, epochs=EPOCHS, val_batches=[(xv, yv)],
                     model_state=state)
print(pilot.plan.summary())

# 2. your own loop: the optimizer's LR is set by the autopilot before every step
grad_fn = jax.jit(jax.value_and_grad(lambda p, s, b: loss_fn(p, s, b, True), has_aux=True))
tx = pilot.optimizer
opt_state = pilot.init(params, model_state=state)
for step in range(pilot.plan.train_steps):
    batch = batches[step % len(batches)]
    (loss, state), grads = grad_fn(params, state, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    val = float(loss_fn(params, state, (xv, yv), False)[0]) if (step + 1) % len(batches) == 0 else None
    # 3. the guard: a rollback gives back the params *and* the running averages they were trained with
    params, opt_state, state = pilot.after_step(step, loss, params, opt_state, model_state=state, val_loss=val)

logits = net.apply({"params": params, **state}, xv, train=False)
accuracy = float(np.mean(np.asarray(logits).argmax(1) == yv))
print(f"trained {pilot.plan.train_steps} steps at peak LR {pilot.plan.peak_lr:.3g}: val accuracy {accuracy:.3f}; "
      f"interventions: {len(pilot.events)}; doctor: {pilot.pilot.doctor.diagnosis.verdict}")
