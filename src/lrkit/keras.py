"""Everything lrkit does for Keras 3, in one place.

Example::

    import lrkit.keras as lk
    result = lk.find_lr(model, x, y, batch_size=32, train_steps=3000)
    lr = lk.to_keras(schedule)                         # a LearningRateSchedule
    model.fit(x, y, callbacks=[lk.LRDoctorCallback(guard=True)])
    model.fit(x, y, epochs=10, callbacks=[lk.AutopilotCallback(x, y, batch_size=32)])  # no LR to choose
"""
from lrkit.integrations.keras.autopilot import AutopilotCallback
from lrkit.integrations.keras.callback import LRDoctorCallback
from lrkit.integrations.keras.schedule import LRKitSchedule, PlateauCallback, to_keras
from lrkit.integrations.keras.trainer import KerasSnapshot, KerasTrainer, find_lr_keras

find_lr = find_lr_keras

__all__ = [
    "AutopilotCallback",
    "KerasSnapshot",
    "KerasTrainer",
    "LRDoctorCallback",
    "LRKitSchedule",
    "PlateauCallback",
    "find_lr",
    "find_lr_keras",
    "to_keras",
]
