"""Everything lrkit does for PyTorch Lightning, in one place.

Example::

    from lrkit.lightning import AutopilotCallback, LRDoctorCallback
    trainer = lightning.Trainer(callbacks=[LRDoctorCallback(guard=True)])
    trainer = lightning.Trainer(max_steps=3000, callbacks=[AutopilotCallback()])  # no LR to choose
"""
from lrkit.integrations.lightning.autopilot import AutopilotCallback
from lrkit.integrations.lightning.callback import LRDoctorCallback

__all__ = ["AutopilotCallback", "LRDoctorCallback"]
