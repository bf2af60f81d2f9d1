"""lrkit's keras adapters (the public door is :mod:`lrkit.keras`)."""
