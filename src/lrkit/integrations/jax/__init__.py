"""lrkit's jax adapters (the public door is :mod:`lrkit.jax`)."""
