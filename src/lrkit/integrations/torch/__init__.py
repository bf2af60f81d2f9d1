"""lrkit's torch adapters (the public door is :mod:`lrkit.torch`)."""
