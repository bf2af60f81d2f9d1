"""JAX/optax: find the LR, train with an lrkit schedule exported to optax, feed the doctor yourself.

Run: python examples/jax_optax.py   (LRKIT_EXAMPLE_SMALL=1 for a short version)
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrkit
import lrkit.jax as lj
from lrkit import schedules as S

from _common import BATCH, EPOCHS, FINDER_STEPS, digits

xt, yt, xv, yv = digits()
batches = [(xt[i:i + BATCH], yt[i:i + BATCH]) for i in range(0, len(xt) - BATCH + 1, BATCH)]
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
params = {"w1": jax.random.normal(k1, (64, 128)) * 0.125, "b1": jnp.zeros(128),
          "w2": jax.random.normal(k2, (128, 10)) * 0.09, "b2": jnp.zeros(10)}


def logits(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


total = EPOCHS * len(batches)
# 1. the LR finder (your params are not touched)
result = lj.find_lr(loss_fn, params, optax.adam, batches, val_batches=[(xv, yv)], num_iter=FINDER_STEPS,
                    train_steps=total, progress=False)
print(result.summary())

# 2. an lrkit schedule at the suggested peak, as a jit-able optax schedule
schedule = S.warmup(S.cosine(result.suggestion, total - total // 10), warmup_steps=total // 10)
optimizer = optax.adam(lj.to_optax(schedule))
state = optimizer.init(params)


@jax.jit
def train_step(params, state, batch, step):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


# 3. the doctor reads the loss and the LR of every step
doctor = lrkit.Doctor()
step = 0
for epoch in range(EPOCHS):
    for batch in batches:
        params, state, loss = train_step(params, state, batch, step)
        doctor.observe(step, float(loss), lr=schedule(step))
        step += 1
accuracy = float(np.mean(np.asarray(logits(params, xv)).argmax(1) == yv))
print(f"trained {step} steps at peak LR {result.suggestion:.3g}: val accuracy {accuracy:.3f}; "
      f"doctor: {doctor.diagnosis.verdict}")
