"""Everything lrkit does for the Hugging Face Trainer, in one place.

Example::

    import lrkit.transformers as lt
    trainer = transformers.Trainer(..., callbacks=[lt.LRDoctorCallback(guard=True)])
    result = lt.find_lr(trainer)          # the LR goes into trainer.args.learning_rate
    trainer.train()
    trainer = transformers.Trainer(..., callbacks=[lt.AutopilotCallback()])   # no learning_rate to choose
"""
from lrkit.integrations.transformers.autopilot import AutopilotCallback
from lrkit.integrations.transformers.callback import LRDoctorCallback
from lrkit.integrations.transformers.finder import find_lr

__all__ = ["AutopilotCallback", "LRDoctorCallback", "find_lr"]
