"""The early-overfitting restart through a framework's autopilot callback, checked the same way for each."""
from __future__ import annotations

from lrkit.finder.regime import MANY_EPOCHS_FACTOR


def restarts(cb) -> int:
    """How many times the callback's autopilot restarted its run for overfitting."""
    return sum(e.kind == "rollback" and e.data.get("verdict") == "overfitting" for e in cb.events)


def check_planned_and_restarted(run, bound: float) -> None:
    """``run(**callback_kwargs) -> (callback, final validation loss)`` trains a small set for many
    epochs. The autopilot's own plan expects the overfitting (the finder divides its answer,
    lrkit.finder.regime) and makes no restart; at the scale it would take without that (5x) the run
    overfits early, and only the restart keeps its final loss under ``bound`` x the unrestarted one's."""
    own, own_final = run()
    assert own.plan.many_epochs and restarts(own) == 0 and own.plan.peak_lr == own.plan.auto_peak_lr
    high = MANY_EPOCHS_FACTOR * own.plan.auto_peak_lr
    finals = {}
    for restart in (True, False):
        cb, finals[restart] = run(peak_lr=high, restart_on_overfit=restart)
        assert not cb.plan.many_epochs and restarts(cb) == (1 if restart else 0)
    assert finals[True] < bound * finals[False] and own_final < bound * finals[False]
