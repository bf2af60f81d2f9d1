"""``diagnose(log)``: run the :class:`~lrkit.doctor.core.Doctor` over a whole log."""
from __future__ import annotations

import math
from typing import Any

from lrkit.doctor.core import SEVERITY, Diagnosis, Doctor
from lrkit.doctor.logs import LogRecords, read_log

__all__ = ["diagnose", "default_window", "run_doctor"]


def default_window(n: int) -> int:
    """The ``window`` :func:`diagnose` uses for a log of ``n`` loss values: ``clip(n // 8, 5, 50)``.

    Per-step logs (hundreds of points) get the Doctor's default 50; an epoch log of 40 points
    gets 5, so that its checks can run at all.

    Example:
        >>> default_window(1000), default_window(40), default_window(10)
        (50, 5, 5)
    """
    return int(min(50, max(5, n // 8)))


def run_doctor(records: LogRecords, doctor: Doctor) -> Doctor:
    """Feed every row that has a loss to ``doctor`` (with ``lr``, ``grad_norm``, ``val_loss``
    and the other metrics of the same row) and return it."""
    has_loss = records.has("loss")
    cols = {n: records.columns[n] for n in records.names if n not in ("step", "loss")}
    masks = {n: records.has(n) for n in cols}
    steps = records.step
    loss = records.loss
    special = ("lr", "grad_norm", "val_loss")
    for i in range(len(records)):
        if not has_loss[i]:
            continue
        kw: dict[str, Any] = {n: float(cols[n][i]) for n in special if n in cols and masks[n][i]}
        metrics = {n: float(cols[n][i]) for n in cols if n not in special and masks[n][i]}
        doctor.observe(int(steps[i]), float(loss[i]), metrics=metrics or None, **kw)
    return doctor


def diagnose(log: Any, **doctor_kwargs: Any) -> Diagnosis:
    """Diagnose a whole training log: the first, most severe problem with its onset step.

    The log is read with :func:`~lrkit.doctor.logs.read_log` and fed row by row to a
    :class:`~lrkit.doctor.core.Doctor` (``window`` defaults to :func:`default_window` of the
    log's length). The overall verdict is the most severe entry of the doctor's history
    (``nan`` > ``diverging`` > ``fluctuating``; the first one on ties), except ``flat``, which
    counts only if the run is still flat at its end (a slow start that then decreased is not a
    problem). With no problem, the last (healthy) diagnosis is returned.

    Args:
        log: a path (str/Path) to a CSV/JSONL/JSON/TensorBoard file or directory, a Keras
            ``History`` or its ``.history`` dict, a list of dicts, a dict of lists, or
            :class:`~lrkit.doctor.logs.LogRecords`.
        **doctor_kwargs: thresholds passed to :class:`~lrkit.doctor.core.Doctor`.

    Example:
        >>> losses = [2.3 * 0.9 ** t for t in range(30)] + [0.1 * 2 ** t for t in range(10)]
        >>> d = diagnose({"epoch": list(range(40)), "loss": losses, "lr": [0.1] * 40})
        >>> d.verdict, d.step
        ('diverging', 30)
    """
    records = read_log(log)
    n = int(records.has("loss").sum())
    kwargs = dict(doctor_kwargs)
    kwargs.setdefault("window", default_window(n))
    doctor = run_doctor(records, Doctor(**kwargs))
    return overall(doctor)


def overall(doctor: Doctor) -> Diagnosis:
    """The overall verdict of a finished run (see :func:`diagnose`)."""
    found = [h for h in doctor.history if h.verdict != "flat"]
    if doctor.diagnosis.verdict == "flat":
        found.append(doctor.diagnosis)
    if not found:
        return doctor.diagnosis
    worst = max(SEVERITY[h.verdict] for h in found)
    return next(h for h in found if SEVERITY[h.verdict] == worst)
