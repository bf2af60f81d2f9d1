"""Everything lrkit does for the Hugging Face Trainer, in one place.

Example::

    from lrkit.transformers import LRDoctorCallback
    trainer = transformers.Trainer(..., callbacks=[LRDoctorCallback(guard=True)])
"""
from lrkit.integrations.transformers.callback import LRDoctorCallback

__all__ = ["LRDoctorCallback"]
