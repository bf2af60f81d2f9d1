"""Everything lrkit does for PyTorch, in one place.

Example::

    import lrkit.torch as lt
    result = lt.find_lr(model, optimizer, loss_fn, train_loader, train_steps=3000)
    scheduler = lt.to_torch(schedule, optimizer)          # a real LRScheduler
    with lt.TorchDoctor(model, optimizer, guard=True) as doctor: ...
    pilot = lt.autopilot(model, optimizer, loss_fn, train_loader, train_steps=3000)  # no LR to choose
"""
from lrkit.integrations.torch.combined import CombinedOptimizer, combine
from lrkit.integrations.torch.autopilot import AutopilotScheduler, TorchAutopilot, autopilot
from lrkit.integrations.torch.doctor import StabilityProbe, TorchDoctor, grad_norm
from lrkit.integrations.torch.hessian import stability_report
from lrkit.integrations.torch.schedule import LRKitScheduler, to_torch
from lrkit.integrations.torch.state import TorchSnapshot
from lrkit.integrations.torch.trainer import TorchTrainer, find_lr

__all__ = [
    "AutopilotScheduler",
    "CombinedOptimizer",
    "LRKitScheduler",
    "StabilityProbe",
    "TorchAutopilot",
    "TorchDoctor",
    "TorchSnapshot",
    "TorchTrainer",
    "autopilot",
    "combine",
    "find_lr",
    "grad_norm",
    "stability_report",
    "to_torch",
]
