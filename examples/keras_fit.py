"""Keras 3: find the LR, train with an lrkit schedule exported to Keras, watch with the doctor callback.

Run: python examples/keras_fit.py   (any Keras backend; LRKIT_EXAMPLE_SMALL=1 for a short version)
"""
import keras

import lrkit.keras as lk
from lrkit import schedules as S

from _common import BATCH, EPOCHS, FINDER_STEPS, digits

keras.utils.set_random_seed(0)
xt, yt, xv, yv = digits()
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
model.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
steps_per_epoch = -(-len(xt) // BATCH)
total = EPOCHS * steps_per_epoch

# 1. the LR finder (weights, optimizer variables and RNGs come back exactly as they were)
result = lk.find_lr(model, xt, yt, batch_size=BATCH, val_data=(xv, yv), num_iter=FINDER_STEPS,
                    train_steps=total, progress=False)
print(result.summary())

# 2. an lrkit schedule at the suggested peak, as a Keras LearningRateSchedule (saved with the model)
schedule = S.warmup(S.cosine(result.suggestion, total - total // 10), warmup_steps=total // 10)
model.compile(optimizer=keras.optimizers.Adam(lk.to_keras(schedule)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

# 3. the doctor callback (with the guard) watches the run
doctor = lk.LRDoctorCallback(guard=True)
history = model.fit(xt, yt, batch_size=BATCH, epochs=EPOCHS, validation_data=(xv, yv), callbacks=[doctor],
                    verbose=0)
print(f"trained {total} steps at peak LR {result.suggestion:.3g}: val accuracy "
      f"{history.history['val_accuracy'][-1]:.3f}; doctor: {doctor.diagnosis.verdict}")
