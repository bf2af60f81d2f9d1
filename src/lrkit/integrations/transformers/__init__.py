"""lrkit's transformers adapters (the public door is :mod:`lrkit.transformers`)."""
