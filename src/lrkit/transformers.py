"""Everything lrkit does for the Hugging Face Trainer, in one place.

Example::

    import lrkit.transformers as lt
    trainer = transformers.Trainer(..., callbacks=[lt.LRDoctorCallback(guard=True)])
    result = lt.find_lr(trainer)          # the LR goes into trainer.args.learning_rate
    trainer.train()
"""
from lrkit.integrations.transformers.callback import LRDoctorCallback
from lrkit.integrations.transformers.finder import find_lr

__all__ = ["LRDoctorCallback", "find_lr"]
