"""One metric's history as the run went on, across resumes from earlier checkpoints.

A run killed and resumed from a checkpoint older than its last logged step logs those steps again:
PyTorch's ``SummaryWriter`` in the same log directory (a new event file), ``mlflow.start_run(run_id=...)``,
the Hugging Face ``Trainer``'s ``resume_from_checkpoint``. In time order the metric's step then
goes back; what the first attempt logged from that step on is not the run's history any more (the
resumed attempt replaces it, and may stop before reaching the first attempt's last step).
TensorBoard's and MLflow's histories are read so, tag by tag in time order. A CSV or JSON-lines log
appended to by the resumed run is read so where its rows disagree -- a step logged again with
another value after the steps went back (``lrkit.doctor.records``); rows that only go back to add
other columns (validation rows written after the training rows) merge by step as before, and
steps that start again from the log's first one, with other values, are two runs in one file (an
error that says so).

Example:
    >>> first = [(t, t, 1.0) for t in range(6)]            # (time, step, value): logged up to step 5
    >>> again = [(100 + t, t, 2.0) for t in (3, 4)]        # resumed from its checkpoint of step 3
    >>> [(step, value) for _, step, value in as_resumed(first + again)]
    [(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
"""
from __future__ import annotations

from typing import Iterable, TypeVar

__all__ = ["as_resumed"]

V = TypeVar("V")


def as_resumed(entries: Iterable[tuple[float, int, V]]) -> list[tuple[float, int, V]]:
    """``(time, step, value)`` entries of one metric in time order (ties by step), without those a
    later step going back replaced: each time the step goes back to ``s``, the entries before it
    with step ``>= s`` are dropped. A step logged again at the same step is kept (the caller keeps
    the latest)."""
    kept: list[tuple[float, int, V]] = []
    for entry in sorted(entries, key=lambda e: (e[0], e[1])):
        if kept and entry[1] < kept[-1][1]:
            kept = [e for e in kept if e[1] < entry[1]]
        kept.append(entry)
    return kept
