"""Schedules shared by the export tests (one per constructor)."""
from __future__ import annotations

from lrkit import schedules as S


def every_constructor() -> dict[str, S.Schedule]:
    """One schedule built by each constructor (nested ones wrap others)."""
    cos = S.cosine(0.1, 900, min_lr=0.001)
    return {
        "constant": S.constant(0.03),
        "step_decay": S.step_decay(0.1, 300, 0.5),
        "multistep": S.multistep(0.1, [500, 1500, 2500], 0.3),
        "exponential": S.exponential(0.1, 0.5, decay_steps=700),
        "polynomial": S.polynomial(0.1, 2000, end_lr=0.001, power=2.0),
        "inverse_time": S.inverse_time(0.1, 100, 0.5, staircase=True),
        "linear": S.linear(0.0, 0.1, 1500),
        "cosine": S.cosine(0.1, 2500, min_lr=0.001),
        "warm_restarts": S.warm_restarts(0.1, 200, cycle_mult=2, min_lr=1e-4),
        "cyclic": S.cyclic(0.001, 0.1, 150, mode="triangular2"),
        "one_cycle": S.one_cycle(0.1, 2800, pct_start=0.25),
        "warmup": S.warmup(cos, 100),
        "inverse_sqrt": S.inverse_sqrt(0.01, 400),
        "warmup_stable_decay": S.warmup_stable_decay(0.1, 3000, 200, 600, decay="1-sqrt"),
        "piecewise_constant": S.piecewise_constant([1000, 2000], [0.1, 0.01, 0.001]),
        "piecewise_linear": S.piecewise_linear([0, 100, 2900], [0.0, 0.1, 0.001]),
        "join": S.join([S.linear(0.0, 0.1, 100), cos], [100]),
        "scale": S.scale(cos, 0.5),
        "multiply": S.multiply(cos, S.cyclic(0.5, 1.0, 100)),
        "clip": S.clip(S.exponential(0.1, 0.999), min_lr=0.01),
        "epochwise": S.epochwise(S.step_decay(0.1, 2, 0.5), steps_per_epoch=250),
    }
