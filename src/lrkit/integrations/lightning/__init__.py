"""lrkit's lightning adapters (the public door is :mod:`lrkit.lightning`)."""
