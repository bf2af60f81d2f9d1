"""Everything lrkit does for PyTorch Lightning, in one place.

Example::

    from lrkit.lightning import LRDoctorCallback
    trainer = lightning.Trainer(callbacks=[LRDoctorCallback(guard=True)])
"""
from lrkit.integrations.lightning.callback import LRDoctorCallback

__all__ = ["LRDoctorCallback"]
