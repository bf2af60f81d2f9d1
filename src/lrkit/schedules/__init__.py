"""Learning-rate schedules as pure functions of the optimizer step (NumPy only)."""
from lrkit.schedules.base import Schedule

__all__ = ["Schedule"]
