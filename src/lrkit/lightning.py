"""Everything lrkit does for PyTorch Lightning, in one place.

Example::

    from lrkit.lightning import AutopilotCallback, LRDoctorCallback, LRFinder
    trainer = lightning.Trainer(callbacks=[LRFinder(), LRDoctorCallback(guard=True)])
    trainer.fit(model)      # model.lr is set to the finder's suggestion before the first step
    trainer = lightning.Trainer(max_steps=3000, callbacks=[AutopilotCallback()])  # no LR to choose
"""
from lrkit.integrations.lightning.autopilot import AutopilotCallback
from lrkit.integrations.lightning.callback import LRDoctorCallback
from lrkit.integrations.lightning.finder import LRFinder

__all__ = ["AutopilotCallback", "LRDoctorCallback", "LRFinder"]
